"""Connections per client address: the nftables rule of docs/operations.md,
tried on a real server in network namespaces of this test's own.

The application never sees a connection that sends nothing, so one address
with enough silent connections fills `server.max_connections` however the
registry is written; the limit per address belongs in front of it. This
test shows both: without the rule, an attacker's silent connections keep
another client out; with the rule (the docs' own text, the count lowered),
the attacker gets its share and the other client gets in.

Three namespaces, joined by veth pairs: the server's (10.231.1.1 and
10.231.2.1), the attacker's (10.231.1.2) and another client's (10.231.2.2).
Needs root, `ip` and `nft` (scripts/test-deps installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PORT = 5000  # inside the server's namespace, as the docs' rule says
SERVER_A, ATTACKER = "10.231.1.1", "10.231.1.2"
SERVER_B, OTHER = "10.231.2.1", "10.231.2.2"
# Per address in the test's copy of the rule, and the server's total.
PER_ADDRESS, MAX_CONNECTIONS = 8, 32


def documented_rule(count: int) -> str:
    """The nftables ruleset of docs/operations.md, allowing `count`."""
    text = (ROOT / "docs" / "operations.md").read_text()
    (ruleset,) = re.findall(r"```\n(table inet quaylock \{.*?\n\})\n```", text, re.S)
    assert "ct count over 64" in ruleset and f"dport {PORT}" in ruleset
    return ruleset.replace("ct count over 64", f"ct count over {count}")


def sh(*command: str, namespace: str | None = None, **kwargs):
    if namespace is not None:
        command = ("ip", "netns", "exec", namespace, *command)
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture
def namespaces():
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("nft")):
        pytest.fail("needs root, ip and nft: run as CI does (scripts/test-deps)")
    tag = f"ql{os.getpid()}"
    server, attacker, other = f"{tag}s", f"{tag}a", f"{tag}o"
    for name in (server, attacker, other):
        sh("ip", "netns", "add", name)
    try:
        for peer, (mine, theirs) in ((attacker, (SERVER_A, ATTACKER)),
                                     (other, (SERVER_B, OTHER))):  # fmt: skip
            inside = f"v{peer[-1]}"
            sh("ip", "-n", server, "link", "add", inside, "type", "veth",
               "peer", "name", "v0", "netns", peer)  # fmt: skip
            sh("ip", "-n", server, "addr", "add", f"{mine}/24", "dev", inside)
            sh("ip", "-n", peer, "addr", "add", f"{theirs}/24", "dev", "v0")
            sh("ip", "-n", server, "link", "set", inside, "up")
            sh("ip", "-n", peer, "link", "set", "v0", "up")
        for name in (server, attacker, other):
            sh("ip", "-n", name, "link", "set", "lo", "up")
        yield server, attacker, other
    finally:
        for name in (server, attacker, other):
            subprocess.run(["ip", "netns", "del", name], check=False)


# Opens `count` connections to the server and sends nothing on them; prints
# how many the server's side accepted, then holds them until stdin closes.
_HOLDER = """
import socket, sys
held, refused = [], 0
for _ in range({count}):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(({address!r}, {port}))
        held.append(s)
    except OSError:
        refused += 1
        s.close()
print(len(held), refused, flush=True)
sys.stdin.read()
"""


def hold(namespace: str, count: int) -> tuple[subprocess.Popen, int, int]:
    """Silent connections from `namespace`; (process, held, refused)."""
    code = _HOLDER.format(count=count, address=SERVER_A, port=PORT)
    process = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", code],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    held, refused = map(int, process.stdout.readline().split())
    return process, held, refused


def health_from(namespace: str, timeout: float) -> str:
    """What /healthz answers another client within `timeout` seconds."""
    code = (
        "import http.client, sys\n"
        f"c = http.client.HTTPConnection({SERVER_B!r}, {PORT}, timeout={timeout})\n"
        "try:\n"
        "    c.request('GET', '/healthz'); print(c.getresponse().status)\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
    )
    return sh(
        sys.executable, "-c", code, namespace=namespace, timeout=60
    ).stdout.strip()


def test_a_per_address_rule_in_front_keeps_one_address_from_all_connections(
    namespaces, tmp_path
):
    server, attacker, other = namespaces
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "auth": {"mode": "none"},
        "server": {"max_connections": MAX_CONNECTIONS,
                   "header_read_timeout_seconds": 30},
    }))  # fmt: skip
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    registry = subprocess.Popen(
        ["ip", "netns", "exec", server, sys.executable, "-m", "quaylock.cli.main",
         "serve", "--listen", f"0.0.0.0:{PORT}", "--data", str(tmp_path / "data"),
         "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while health_from(other, 1) != "200":
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)

        # Without the rule: twice the server's connections from one address,
        # all accepted by the kernel; the other client waits behind them.
        flood, held, refused = hold(attacker, 2 * MAX_CONNECTIONS)
        try:
            assert (held, refused) == (2 * MAX_CONNECTIONS, 0)
            assert health_from(other, 3) == "TimeoutError"
        finally:
            flood.communicate("")

        # With the docs' rule: the attacker keeps PER_ADDRESS connections,
        # the rest are refused, and the other client gets in at once.
        sh("nft", "-f", "-", namespace=server, input=documented_rule(PER_ADDRESS))
        flood, held, refused = hold(attacker, 2 * MAX_CONNECTIONS)
        try:
            assert (held, refused) == (PER_ADDRESS, 2 * MAX_CONNECTIONS - PER_ADDRESS)
            started = time.monotonic()
            assert health_from(other, 3) == "200"
            print(f"\nhealthz with the rule, under the flood: "
                  f"{(time.monotonic() - started) * 1000:.0f} ms")  # fmt: skip
        finally:
            flood.communicate("")
    finally:
        registry.terminate()
        try:
            registry.wait(15)
        except subprocess.TimeoutExpired:
            registry.kill()
            registry.wait(5)
        log.close()
