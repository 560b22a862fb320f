"""Fixtures that run real quaylock servers on loopback.

Every API and interoperability test talks to a `quaylock serve` process over
a real socket, as a client would; nothing stands in for the server.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    host: str  # host:port, as registry clients want it
    data: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def worker_pids(self) -> list[int]:
        """The Granian worker processes (children of the server)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except OSError:
            return []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(
    tmp: Path,
    settings: dict | None = None,
    env: dict | None = None,
    ca: Path | None = None,
) -> Server:
    """Start `quaylock serve` in `tmp` and wait until /v2/ answers (over TLS,
    trusting `ca`, when `ca` is given)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = tmp / "config.yaml"
    settings = dict(settings or {})
    # Tests of the registry itself run without authentication; the tests of
    # authentication pass their own `auth` settings.
    settings.setdefault("auth", {"mode": "none"})
    config.write_text(yaml.safe_dump(settings))
    log_path = tmp / "server.log"
    command = [
        sys.executable, "-m", "quaylock.cli.main", "serve",
        "--listen", f"127.0.0.1:{port}",
        "--data", str(tmp / "data"),
        "--config", str(config),
    ]  # fmt: skip
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("QUAYLOCK_")}
    process_env.update(env or {})
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=process_env
        )
    server = Server(process, f"127.0.0.1:{port}", tmp / "data", log_path)
    # /healthz: not rate-limited, so the probe costs the tests no requests.
    probe = f"https://{server.host}/healthz" if ca else f"{server.url}/healthz"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"quaylock exited early:\n{server.log()}")
        try:
            verify = ssl.create_default_context(cafile=str(ca)) if ca else True
            if httpx.get(probe, timeout=1, verify=verify).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"quaylock did not answer in 20 s:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """One registry shared by tests that do not depend on each other's data
    (each uses its own repository names)."""
    srv = start_server(tmp_path_factory.mktemp("registry"))
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path):
    """Start registries with their own settings; stops them after the test."""
    started: list[Server] = []

    def make(
        settings: dict | None = None, env: dict | None = None, ca: Path | None = None
    ):
        srv = start_server(tmp_path / f"srv{len(started)}", settings, env, ca)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def client(server) -> httpx.Client:
    with server.client() as c:
        yield c


# Tools that scripts/test-deps unpacks into the project rather than installs.
PROJECT_TOOLS = Path(__file__).resolve().parent.parent / ".tools" / "bin"


def require_tool(name: str) -> str:
    """Return the path of a program the test drives; fail (not skip) when absent,
    since `make test` installs it."""
    path = shutil.which(name, path=f"{PROJECT_TOOLS}{os.pathsep}{os.environ['PATH']}")
    if path is None:
        pytest.fail(
            f"{name} is not installed; run `make test-deps` (scripts/test-deps)"
        )
    return path


_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def snapshot() -> Path:
    """The PyPA snapshot: QUAYLOCK_ADVISORIES, else the Makefile's places."""
    if configured := os.environ.get("QUAYLOCK_ADVISORIES"):
        if not Path(configured).is_dir():
            pytest.fail(f"QUAYLOCK_ADVISORIES={configured} is not a folder")
        return Path(configured)
    origin = subprocess.run(
        ["git", "config", "remote.origin.url"],
        cwd=_ROOT, capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    candidates = [_ROOT / "../shared/advisories/pypa"]
    if origin:
        candidates.append(Path(origin) / "../shared/advisories/pypa")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    pytest.fail(
        "no PyPA advisory snapshot in "
        + " or ".join(str(c) for c in candidates)
        + ": set QUAYLOCK_ADVISORIES=path to one"
    )
