"""The two registries under test, and what they cost while a phase runs.

Each server runs in a process group of its own (``start_new_session``), so
that stopping it ends its whole tree and nothing else: quaylock is a Granian
parent with worker children, Distribution one Go process.

`PhaseMonitor` watches a server's process tree during one phase:

- memory: the sum of VmRSS over every process in the tree, sampled every
  50 ms, and the peak of those sums; and, as a bound from above that no
  sampling can miss, the sum of each process's VmHWM after resetting it at
  the start of the phase (``clear_refs`` value 5, proc(5));
- CPU: utime + stime from ``/proc/<pid>/stat`` summed over the tree, as a
  delta over the phase. Threads are included, since a process's counters
  cover all of its threads.

A server with authentication on (quaylock with ``auth.mode: token``) starts
with ``QUAYLOCK_ADMIN_PASSWORD`` set to a password made for that start, and
`Server.authorization` fetches a bearer token from its ``/v2/token`` with
those Basic credentials, as docker, podman or skopeo would. Distribution
runs without authentication; its `authorization` is None.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import yaml
from client import Connection, ProtocolError, UnexpectedStatus

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
SAMPLE_SECONDS = 0.05

DISTRIBUTION_CONFIG = """\
# CNCF Distribution for the side-by-side benchmark, written by bench/servers.py.
# The settings match bench/quaylock.yaml: no access log, errors only, deletes
# on. The in-memory blob descriptor cache is the one Debian's and upstream's
# stock config.yml enable, so Distribution runs as it ships.
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A registry process on 127.0.0.1, with its own data folder.

    Args:
        name: "quaylock" or "distribution", as the report names it.
        workdir: a folder of its own for data, config and log.
    """

    name = ""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.data = workdir / "data"
        self.log_path = workdir / "server.log"
        self.port = free_port()
        self.host = "127.0.0.1"
        self.process: subprocess.Popen | None = None
        # Basic credentials for the token endpoint, and the token service's
        # name; None when the server runs without authentication.
        self.credentials: tuple[str, str] | None = None
        self.service = ""

    def token(self, scopes: list[str] | tuple[str, ...]) -> str | None:
        """Fetch a bearer token for `scopes` (``repository:NAME:ACTIONS``,
        ``registry:catalog:*``) from ``/v2/token`` with Basic credentials;
        None when the server has no authentication.

        Raises:
            RuntimeError: the token grants less than `scopes` asked for.
            UnexpectedStatus: the token endpoint refused.
        """
        if self.credentials is None:
            return None
        query = urlencode([("service", self.service), *(("scope", s) for s in scopes)])
        basic = base64.b64encode(":".join(self.credentials).encode()).decode()
        conn = Connection(self.host, self.port, timeout=60)
        try:
            answer = conn.request(
                "GET", f"/v2/token?{query}", {"Authorization": f"Basic {basic}"}
            )
        finally:
            conn.close()
        token = json.loads(answer.body)["token"]
        granted = len(_token_claims(token).get("access") or [])
        if granted != len(scopes):
            raise RuntimeError(
                f"{self.name}: asked for {list(scopes)}, the token grants "
                f"{granted} of them"
            )
        return token

    def authorization(self, scopes: list[str] | tuple[str, ...]) -> str | None:
        """The ``Authorization`` value for a client that needs `scopes`, or
        None when the server has no authentication."""
        token = self.token(scopes)
        return None if token is None else f"Bearer {token}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("QUAYLOCK_")}

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until ``/v2/`` answers 200.

        Raises:
            RuntimeError: it exited, or did not answer in `timeout` seconds.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log()}")
            if self._answers():
                try:
                    self._check_login()
                except Exception:
                    self.stop()
                    raise
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer in {timeout} s:\n{self.log()}")

    def _answers(self) -> bool:
        # With authentication on, /v2/ answers 401 and a challenge to a
        # caller without credentials: that is an answer too.
        expect = (200, 401) if self.credentials else 200
        conn = Connection(self.host, self.port, timeout=1)
        try:
            conn.request("GET", "/v2/", expect=expect)
            return True
        except (OSError, ProtocolError, UnexpectedStatus):
            return False
        finally:
            conn.close()

    def _check_login(self) -> None:
        """With authentication on: a token with no scope must open /v2/, so
        a wrong password or a broken token flow fails here, not mid-run."""
        if self.credentials is None:
            return
        conn = Connection(self.host, self.port, 10, self.authorization([]))
        try:
            conn.request("GET", "/v2/")
        finally:
            conn.close()

    def stop(self) -> None:
        """End the server's process group (ours alone) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        pgid = self.process.pid  # the session leader's pid is its group id
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            self.process.wait(10)
        # Granian workers may outlive their parent by a moment.
        _signal_group(pgid, signal.SIGKILL)

    def wipe(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        return self.process.pid


class Quaylock(Server):
    name = "quaylock"

    def __init__(
        self,
        workdir: Path,
        executable: str,
        config: Path,
        workers: int,
        source: Path | None = None,
    ):
        super().__init__(workdir)
        self.executable = executable
        self.config = config
        self.workers = workers
        # A folder holding a `quaylock` package to run instead of the
        # installed one (a commit exported by `run.py --rev`).
        self.source = source
        self.auth_mode, service = quaylock_auth(config)
        if self.auth_mode == "token":
            # The first start creates user admin with this password.
            self.credentials = ("admin", secrets.token_urlsafe(24))
            self.service = service
        elif self.auth_mode != "none":
            raise ValueError(
                f"{config}: the benchmark drives auth.mode token or none, "
                f"not {self.auth_mode!r}"
            )

    def environment(self) -> dict[str, str]:
        env = super().environment()
        if self.source is not None:
            # Ahead of the editable install, in the parent and in every
            # Granian worker, which inherit the environment.
            env["PYTHONPATH"] = str(self.source)
        if self.credentials is not None:
            env["QUAYLOCK_ADMIN_PASSWORD"] = self.credentials[1]
        return env

    def command(self) -> list[str]:
        return [
            self.executable, "serve",
            "--listen", f"{self.host}:{self.port}",
            "--data", str(self.data),
            "--config", str(self.config),
            "--workers", str(self.workers),
        ]  # fmt: skip


class Distribution(Server):
    name = "distribution"

    def __init__(self, workdir: Path, executable: str):
        super().__init__(workdir)
        self.executable = executable
        self.config = workdir / "config.yml"

    def command(self) -> list[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = DISTRIBUTION_CONFIG.format(root=self.data, port=self.port)
        self.config.write_text(text)
        return [self.executable, "serve", str(self.config)]


def quaylock_auth(config: Path) -> tuple[str, str]:
    """The `auth.mode` and `auth.service` a quaylock config file sets, with
    quaylock's defaults (token, quaylock) for what it leaves out. The
    benchmark strips QUAYLOCK_* from the server's environment, so the file
    is all there is."""
    settings = yaml.safe_load(config.read_text()) or {}
    auth = settings.get("auth") or {}
    return str(auth.get("mode", "token")), str(auth.get("service", "quaylock"))


def _token_claims(token: str) -> dict:
    """The claims of a JWT, unverified: only to compare the grants with
    what was asked for (the server checks the signature)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# Process tree accounting


def tree_pids(root: int) -> list[int]:
    """The root and every descendant, found through each task's children."""
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    queue += [int(p) for p in f.read().split()]
            except OSError:
                pass
    return found


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def hwm_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0.0
    # The command name may hold spaces and parentheses: split after the last.
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5) (utime, stime) are 12 and 13 past state.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds every core has spent not idle since boot (proc(5)
    ``/proc/stat``: user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class PhaseMonitor:
    """Peak memory and CPU time of one server's process tree during a phase.

    Use as a context manager around the phase; read the figures after.
    """

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.peak_rss = 0
        self.hwm = None
        self.cpu = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, daemon=True)
        self._cpu_start: dict[int, float] = {}
        self._hwm_reset = False

    def __enter__(self):
        pids = tree_pids(self.root_pid)
        # A list, not a generator: every process's peak must be reset.
        self._hwm_reset = all([reset_hwm(pid) for pid in pids])  # noqa: C419
        self._cpu_start = {pid: cpu_seconds(pid) for pid in pids}
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        pids = tree_pids(self.root_pid)
        self.cpu = sum(cpu_seconds(pid) - self._cpu_start.get(pid, 0.0) for pid in pids)
        if self._hwm_reset:
            self.hwm = sum(hwm_bytes(pid) for pid in pids)

    def _sample(self) -> None:
        total = sum(rss_bytes(pid) for pid in tree_pids(self.root_pid))
        self.peak_rss = max(self.peak_rss, total)
        self.samples += 1

    def _sample_loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()
