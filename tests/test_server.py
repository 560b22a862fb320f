"""The server as an operator sees it: memory under a large upload, shutdown
mid-upload, TLS, the request log, hostile paths, schema versions."""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import free_port, start_server
from tests.helpers import push_image, sha256, unique_repo

MiB = 1024 * 1024


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def pattern_block(index: int) -> bytes:
    """1 MiB of bytes that differ per block, made without holding the blob."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return seed * (MiB // len(seed))


@pytest.mark.slow
def test_chunked_push_of_1_gib_keeps_server_memory_flat(make_server):
    server = make_server({"log": {"requests": False}})
    [worker] = server.worker_pids()
    baseline = rss_kib(worker)
    repo = unique_repo("big")
    chunk_mib, chunks = 64, 16
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(worker))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    hasher = hashlib.sha256()
    try:
        with server.client() as client:
            location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
            for c in range(chunks):
                blocks = [pattern_block(c * chunk_mib + i) for i in range(chunk_mib)]

                def body(blocks=blocks):
                    for block in blocks:
                        hasher.update(block)
                        yield block

                start = c * chunk_mib * MiB
                response = client.patch(
                    location,
                    content=body(),
                    headers={
                        "content-range": f"{start}-{start + chunk_mib * MiB - 1}",
                        "content-length": str(chunk_mib * MiB),
                    },
                )
                assert response.status_code == 202, response.text
                location = response.headers["location"]
            digest = "sha256:" + hasher.hexdigest()
            done = client.put(location, params={"digest": digest})
            assert done.status_code == 201, done.text
            head = client.head(f"/v2/{repo}/blobs/{digest}")
            assert head.headers["content-length"] == str(chunks * chunk_mib * MiB)
            tail = client.get(
                f"/v2/{repo}/blobs/{digest}", headers={"range": f"bytes=-{MiB}"}
            )
            assert tail.content == pattern_block(chunks * chunk_mib - 1)
    finally:
        stop.set()
        sampler.join()
    growth_mib = (peak[0] - baseline) / 1024
    print(f"worker RSS baseline {baseline // 1024} MiB, peak {peak[0] // 1024} MiB")
    assert growth_mib < 32, (
        f"server memory grew by {growth_mib:.0f} MiB for a 1 GiB upload"
    )
    assert peak[0] / 1024 < 100


def test_shutdown_mid_chunk_keeps_the_session_whole(tmp_path):
    settings = {"server": {"shutdown_grace_seconds": 1}}
    server = start_server(tmp_path / "a", settings)
    data = b"".join(pattern_block(i) for i in range(4))
    repo = unique_repo("stop")
    try:
        with server.client() as client:
            location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
            first = client.patch(
                location, content=data[:MiB], headers={"content-range": f"0-{MiB - 1}"}
            )
            assert first.status_code == 202

        # A second chunk that never finishes arriving.
        conn = http.client.HTTPConnection(server.host)
        conn.putrequest("PATCH", location)
        conn.putheader("Content-Range", f"{MiB}-{4 * MiB - 1}")
        conn.putheader("Content-Length", str(3 * MiB))
        conn.endheaders()
        conn.send(data[MiB : 2 * MiB + 12345])
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        conn.close()
    finally:
        server.stop()

    again = start_server(tmp_path / "a", settings)
    try:
        with again.client() as client:
            status = client.get(location)
            assert status.status_code == 204
            assert status.headers["range"] == f"0-{MiB - 1}"
            rest = client.patch(
                location,
                content=data[MiB:],
                headers={"content-range": f"{MiB}-{4 * MiB - 1}"},
            )
            assert rest.status_code == 202, rest.text
            done = client.put(location, params={"digest": sha256(data)})
            assert done.status_code == 201, done.text
            assert client.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data
    finally:
        again.stop()


def test_tls_from_configured_certificate(make_server, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = make_server({"tls": {"cert": str(cert), "key": str(key)}}, ca=cert)
    context = ssl.create_default_context(cafile=str(cert))
    response = httpx.get(f"https://{server.host}/v2/", verify=context)
    assert response.status_code == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


def test_one_log_line_per_request_without_query_or_credentials(make_server):
    server = make_server()
    with server.client() as client:
        repo = unique_repo("log")
        client.get(
            f"/v2/{repo}/tags/list",
            params={"n": "1", "token": "s3cr3t-query"},
            headers={"authorization": "Basic c2VjcmV0LXBhc3N3b3Jk"},
        )
    time.sleep(0.3)
    lines = [
        json.loads(line) for line in server.log().splitlines() if line.startswith("{")
    ]
    requests = [line for line in lines if line.get("msg") == "request"]
    [entry] = [line for line in requests if line["repository"] == repo]
    assert entry["route"] == "/v2/{name}/tags/list"
    assert entry["status"] == 404
    assert entry["method"] == "GET"
    assert {"request_id", "duration_ms", "bytes_in", "bytes_out"} <= set(entry)
    text = server.log()
    assert "s3cr3t-query" not in text
    assert "c2VjcmV0LXBhc3N3b3Jk" not in text


@pytest.mark.parametrize(
    "path",
    [
        "/v2/../../etc/passwd",
        "/v2/a/../../b/tags/list",
        "/v2/a/%2e%2e/b/tags/list",
        "/v2/a%2Fb/tags/list",
        "/v2/a/blobs/sha256:..%2F..%2Fx",
        "/v2/%00/tags/list",
        "/v2/a/manifests/..%2F..%2Fetc",
        "/v2/" + "a/" * 200 + "tags/list",
    ],
)
def test_hostile_paths_get_a_4xx(server, path):
    conn = http.client.HTTPConnection(server.host, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert 400 <= response.status < 500, (response.status, body)


def test_store_from_a_newer_quaylock_is_refused(tmp_path):
    server = start_server(tmp_path / "s")
    with server.client() as client:
        push_image(client, "keep/me")
    server.stop()
    db = sqlite3.connect(tmp_path / "s" / "data" / "metadata.db")
    db.execute("UPDATE schema_version SET version = 999")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="upgrade quaylock"):
        start_server(tmp_path / "s")


def _serve(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quaylock.cli.main", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_second_server_on_a_busy_port_refuses_to_start(server, tmp_path):
    result = _serve("--listen", server.host, "--data", str(tmp_path / "d"))
    assert result.returncode == 2
    assert f"cannot use {server.host}" in result.stderr
    assert "Traceback" not in result.stderr
    # The first server still answers alone.
    assert httpx.get(f"{server.url}/v2/").status_code == 200


def test_bad_setting_stops_the_start_with_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("log:\n  level: verbose\n")
    result = _serve("--config", str(config), "--data", str(tmp_path / "d"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "quaylock: configuration error: log.level: expected one of debug, info, "
        "warning, error, got 'verbose'"
    ]


def test_ipv6_listen_flag(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "quaylock.cli.main", "serve",
         "--listen", f"[::1]:{port}", "--data", str(tmp_path / "d")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                response = httpx.get(f"http://[::1]:{port}/v2/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        # Authentication is on by default: the answer is a challenge.
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer realm=")
    finally:
        process.terminate()
        process.wait(15)


def test_json_logs_are_json_from_start_to_stop(tmp_path):
    srv = start_server(tmp_path / "j")
    httpx.get(f"{srv.url}/v2/")
    srv.stop()
    lines = [line for line in srv.log().splitlines() if line.strip()]
    assert len(lines) >= 3
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_auth_off_warns_at_every_start(make_server):
    server = make_server({"auth": {"mode": "none"}})
    warnings = [
        json.loads(line)
        for line in server.log().splitlines()
        if line.startswith("{") and '"warning"' in line
    ]
    assert any("authentication is off" in w["msg"] for w in warnings)
