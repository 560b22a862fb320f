"""An upload flood under the limits, against a real server: one user opens
sessions and streams uploads as fast as it can for 30 seconds, while
another pushes and pulls a real image with skopeo. The second succeeds,
the server's memory stays bounded, and the free-disk floor holds."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from tests.test_auth_clients import (
    PASSWORD,
    add_user,
    creds,
    dir_files,
    expected_dir_files,
)
from tests.test_interop import Skopeo, build_image, docker_ref
from tests.test_server import rss_kib
from tests.test_upload_sessions import bearer

pytestmark = [pytest.mark.interop, pytest.mark.slow]

FLOOD_SECONDS = 30
MiB = 1024 * 1024


def free_bytes(path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_an_upload_flood_under_the_limits_leaves_room_for_a_real_push(
    make_server, tmp_path
):
    tmp_path.mkdir(exist_ok=True)
    # A floor 1 GiB below what is free now, so that the flood can reach it.
    floor = free_bytes(tmp_path) - 1024 * MiB
    assert floor > 0, "not enough free disk for this test"
    server = make_server({
        "auth": {"mode": "token"},
        "limits": {"chunk_max_bytes": 8 * MiB},
        "uploads": {"max_sessions_per_subject": 8, "max_sessions_per_address": 1000,
                    "staged_max_bytes": 512 * MiB,
                    "staged_max_bytes_per_subject": 128 * MiB},
        "storage": {"min_free_bytes": floor, "min_free_percent": 0},
    })  # fmt: skip
    add_user(server, "alice")
    add_user(server, "bob")  # bob floods
    flood_repo = "bob/flood"
    headers = bearer(server, ("bob", PASSWORD["bob"]), flood_repo)
    (worker,) = server.worker_pids()
    baseline = rss_kib(worker)
    stop = threading.Event()
    seen = {"statuses": {}, "peak_rss": baseline, "lowest_free": free_bytes(tmp_path)}

    def flood() -> None:
        chunk = os.urandom(MiB)
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            while not stop.is_set():
                started = client.post(f"/v2/{flood_repo}/blobs/uploads/")
                status = started.status_code
                seen["statuses"][status] = seen["statuses"].get(status, 0) + 1
                if status != 202:
                    time.sleep(0.05)
                    continue
                # Chunks of 8 MiB until a limit answers; sessions are left
                # open, so the session and staging limits come into play.
                location = started.headers["location"]
                for _ in range(64):
                    if stop.is_set():
                        break
                    sent = client.patch(location, content=chunk * 8)
                    code = sent.status_code
                    seen["statuses"][code] = seen["statuses"].get(code, 0) + 1
                    if code != 202:
                        break
                    location = sent.headers["location"]

    def watch() -> None:
        while not stop.is_set():
            seen["peak_rss"] = max(seen["peak_rss"], rss_kib(worker))
            seen["lowest_free"] = min(seen["lowest_free"], free_bytes(tmp_path))
            time.sleep(0.1)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    threads.append(threading.Thread(target=watch))
    began = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)  # let the flood fill the limits first
        alice = creds("alice", PASSWORD["alice"])
        skopeo = Skopeo(tmp_path / "skopeo")
        image = build_image(tmp_path / "image")
        reference = docker_ref(server, "alice/app", "v1")
        skopeo.copy(image.reference, reference, "--dest-creds", alice)
        pulled = tmp_path / "pulled"
        skopeo.copy(reference, f"dir:{pulled}", "--src-creds", alice)
        assert dir_files(pulled) == expected_dir_files(image)
        time.sleep(max(0.0, began + FLOOD_SECONDS - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    statuses = seen["statuses"]
    print(f"flood answers {statuses}; worker RSS {baseline // 1024} -> "
          f"{seen['peak_rss'] // 1024} MiB; lowest free {seen['lowest_free'] // MiB} MiB, "
          f"floor {floor // MiB} MiB")  # fmt: skip
    # The flood was held back by its limits, not served without end.
    assert statuses.get(202, 0) > 0
    assert set(statuses) - {202, 429, 503, 507} == set(), statuses
    assert statuses.get(429, 0) + statuses.get(503, 0) + statuses.get(507, 0) > 0
    # Memory stays bounded: streaming never holds a body.
    assert seen["peak_rss"] - baseline < 64 * 1024, "worker grew by 64 MiB or more"
    # The floor holds, give or take the chunks in flight when it was reached
    # (4 clients x 8 MiB) and what else writes to this disk.
    assert seen["lowest_free"] > floor - 64 * MiB
