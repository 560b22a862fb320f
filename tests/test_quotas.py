"""Quotas on stored bytes per repository, namespace and user, on a running
server: refused uploads leave nothing and use nothing, blobs count once per
repository and per namespace, mounts count like uploads, deletes give bytes
back, and uploads racing for the last bytes of a quota cannot pass it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import (
    error_code,
    image_manifest,
    push_blob,
    push_image,
    push_manifest,
    sha256,
    unique_repo,
)
from tests.test_auth_clients import PASSWORD, add_robot, add_user
from tests.test_limits import staged_files, stream
from tests.test_upload_sessions import bearer

KIB = 1024


def usage(server) -> dict[tuple[str, str], int]:
    result = subprocess.run(
        [sys.executable, "-m", "quaylock.cli.main", "quota", "--data", str(server.data),
         "--config", str(server.data.parent / "config.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return {(r["scope"], r["name"]): r["bytes"] for r in rows}


def denied(response, words: str) -> None:
    assert response.status_code == 403, response.text
    assert error_code(response) == "DENIED"
    assert words in response.json()["errors"][0]["message"]


@pytest.mark.parametrize("how", ["post", "patch", "put", "streamed"])
def test_an_upload_past_the_repository_quota_leaves_nothing(make_server, how):
    server = make_server({"quotas": {"repository_max_bytes": 100 * KIB}})
    repo = unique_repo("quota")
    with server.client() as client:
        push_blob(client, repo, b"a" * (60 * KIB))
        data = b"b" * (50 * KIB)
        if how == "post":
            response = client.post(f"/v2/{repo}/blobs/uploads/",
                                   params={"digest": sha256(data)}, content=data)  # fmt: skip
        else:
            location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
            body = stream(data) if how == "streamed" else data
            if how == "put":
                response = client.put(location, params={"digest": sha256(data)},
                                      content=body)  # fmt: skip
            else:
                response = client.patch(location, content=body)
        denied(response, f"repository {repo} would pass its quota of {100 * KIB} bytes")
        assert "(quotas.repository_max_bytes): it stores 61440 bytes" in response.text
        # Its own reservation is not reported as someone else's.
        assert "other uploads in progress reserve 0" in response.text
        assert client.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
    assert staged_files(server) == []
    assert usage(server)[("repository", repo)] == 60 * KIB


def test_blobs_count_once_per_namespace_and_deletes_give_bytes_back(make_server):
    server = make_server({"quotas": {"namespace_max_bytes": 100 * KIB}})
    data = b"shared" * 10 * KIB  # 60 KiB
    with server.client() as client:
        digest = push_blob(client, "team/one", data)
        # The same blob in another repository of the namespace: no new bytes.
        assert push_blob(client, "team/two", data) == digest
        mounted = client.post("/v2/team/three/blobs/uploads/",
                              params={"mount": digest, "from": "team/one"})  # fmt: skip
        assert mounted.status_code == 201
        used = usage(server)
        assert used[("namespace", "team")] == len(data)
        assert used[("repository", "team/two")] == len(data)
        # 60 KiB more would pass the namespace's 100 KiB.
        other = b"o" * (60 * KIB)
        refused = client.post("/v2/team/four/blobs/uploads/",
                              params={"digest": sha256(other)}, content=other)  # fmt: skip
        denied(refused, "namespace team would pass its quota of 102400 bytes")
        for repo in ("team/one", "team/two", "team/three"):
            assert client.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
        assert usage(server).get(("namespace", "team"), 0) == 0
        done = client.post("/v2/team/four/blobs/uploads/",
                           params={"digest": sha256(other)}, content=other)  # fmt: skip
        assert done.status_code == 201


def test_a_mount_counts_like_an_upload(make_server):
    server = make_server({"quotas": {"overrides": [
        {"repositories": ["small/**"], "max_bytes": 10 * KIB}]}})  # fmt: skip
    data = b"m" * (20 * KIB)
    with server.client() as client:
        digest = push_blob(client, "big/source", data)
        refused = client.post("/v2/small/target/blobs/uploads/",
                              params={"mount": digest, "from": "big/source"})  # fmt: skip
        denied(refused, "repository small/target would pass its quota of 10240 bytes")
        assert "quotas.overrides[0]" in refused.text
        assert client.head(f"/v2/small/target/blobs/{digest}").status_code == 404


def test_user_quota_follows_who_pushed(make_server):
    server = make_server({"auth": {"mode": "token"},
                          "quotas": {"user_max_bytes": 50 * KIB}})  # fmt: skip
    add_user(server, "alice")
    headers = bearer(server, ("alice", PASSWORD["alice"]), "alice/app")
    with server.client(headers=headers) as client:
        push_blob(client, "alice/app", b"1" * (40 * KIB))
        data = b"2" * (20 * KIB)
        refused = client.post("/v2/alice/app/blobs/uploads/",
                              params={"digest": sha256(data)}, content=data)  # fmt: skip
        denied(refused, "user alice would pass its quota of 51200 bytes")
    assert usage(server)[("user", "alice")] == 40 * KIB


@pytest.mark.parametrize("streamed", [False, True], ids=["length", "streamed"])
def test_sixteen_parallel_uploads_never_pass_the_namespace_quota(make_server, streamed):
    blob = 256 * KIB
    quota = 4 * blob + blob // 2  # room for four, not five
    server = make_server({"quotas": {"namespace_max_bytes": quota}})

    def upload(i: int) -> int:
        data = bytes([i]) * blob
        with server.client() as client:
            location = client.post(f"/v2/race/r{i}/blobs/uploads/").headers["location"]
            return client.put(
                location, params={"digest": sha256(data)},
                content=stream(data, 64 * KIB) if streamed else data,
            ).status_code  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(upload, range(16), timeout=120))
    assert set(statuses) <= {201, 403}, statuses
    # Bodies reserve as they arrive (a declared length is only checked
    # first): under contention some are refused while others' reservations
    # are still open, so fewer than four may win, never more.
    assert 1 <= statuses.count(201) <= 4, statuses
    stored = usage(server)[("namespace", "race")]
    assert stored == statuses.count(201) * blob <= quota
    assert staged_files(server) == []


def test_an_upload_of_a_blob_the_namespace_holds_reserves_nothing_there(make_server):
    server = make_server({"quotas": {"namespace_max_bytes": 100 * KIB}})
    small = b"held already"
    big = 2 * 1024 * KIB  # far past the namespace quota
    with server.client() as client:
        digest = push_blob(client, "ns/a", small)
        location = client.post("/v2/ns/b/blobs/uploads/").headers["location"]
        started = threading.Event()

        def trickle():
            started.set()
            for _ in range(6):
                time.sleep(0.5)
                yield b"x"

        def slow_put():
            # The body ends short of its declared length on purpose (only
            # the open reservation matters here); the client library then
            # refuses to finish the request.
            with server.client() as slow, contextlib.suppress(Exception):
                slow.put(location, params={"digest": digest}, content=trickle(),
                         headers={"content-length": str(big)})  # fmt: skip

        thread = threading.Thread(target=slow_put)
        thread.start()
        started.wait(10)
        time.sleep(1)
        # The slow upload claims a digest the namespace holds: it must not
        # hold a megabyte-sized reservation against the namespace meanwhile.
        other = b"o" * (50 * KIB)
        done = client.post("/v2/ns/c/blobs/uploads/",
                           params={"digest": sha256(other)}, content=other)  # fmt: skip
        assert done.status_code == 201, done.text
        thread.join(30)


def test_manifests_count_once_per_namespace_and_deletes_give_bytes_back(make_server):
    server = make_server({"quotas": {"namespace_max_bytes": 10 * 1024 * KIB}})
    with server.client() as client:
        image = push_image(client, "shop/one", tag="v1", seed="m")
        blobs = len(image["config"]) + sum(map(len, image["layers"]))
        manifest = len(image["manifest"])
        assert usage(server)[("repository", "shop/one")] == blobs + manifest
        # The same image in a second repository of the namespace.
        assert push_image(client, "shop/two", tag="v1", seed="m") == image
        used = usage(server)
        assert used[("repository", "shop/two")] == blobs + manifest
        assert used[("namespace", "shop")] == blobs + manifest
        # Pushed again under another tag: the manifest is there already.
        response = push_manifest(client, "shop/two", "v2", image["manifest"])
        assert response.status_code == 201
        assert usage(server)[("repository", "shop/two")] == blobs + manifest
        deleted = client.delete(f"/v2/shop/one/manifests/{image['digest']}")
        assert deleted.status_code == 202
        used = usage(server)
        assert used[("repository", "shop/one")] == blobs
        assert used[("namespace", "shop")] == blobs + manifest  # shop/two holds it
        deleted = client.delete(f"/v2/shop/two/manifests/{image['digest']}")
        assert deleted.status_code == 202
        assert usage(server)[("namespace", "shop")] == blobs


def test_a_manifest_past_the_quota_is_refused_and_not_stored(make_server):
    config, layer = b'{"os":"linux"}', b"L" * (8 * KIB)
    manifest = image_manifest(config, [layer])
    blobs = len(config) + len(layer)
    # Room for the blobs and not for the manifest that lists them.
    quota = blobs + len(manifest) - 1
    server = make_server({"quotas": {"repository_max_bytes": quota}})
    repo = unique_repo("mquota")
    with server.client() as client:
        push_blob(client, repo, config)
        push_blob(client, repo, layer)
        refused = push_manifest(client, repo, "v1", manifest)
        denied(refused, f"repository {repo} would pass its quota of {quota} bytes")
        assert f"this one needs {len(manifest)} more" in refused.text
        assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404
        assert client.get(f"/v2/{repo}/manifests/{sha256(manifest)}").status_code == 404
    assert usage(server)[("repository", repo)] == blobs


def test_a_robot_counts_against_its_owners_user_quota(make_server):
    server = make_server({"auth": {"mode": "token"},
                          "quotas": {"user_max_bytes": 50 * KIB}})  # fmt: skip
    add_user(server, "alice")
    robot, secret = add_robot(server, "builder", "alice", "alice/app", "pull", "push")
    with server.client(headers=bearer(server, ("alice", PASSWORD["alice"]),
                                      "alice/app")) as client:  # fmt: skip
        push_blob(client, "alice/app", b"1" * (30 * KIB))
    with server.client(headers=bearer(server, (robot, secret), "alice/app")) as client:
        data = b"2" * (30 * KIB)
        refused = client.post("/v2/alice/app/blobs/uploads/",
                              params={"digest": sha256(data)}, content=data)  # fmt: skip
        # A robot cannot buy its owner a second quota.
        denied(refused, "user alice would pass its quota of 51200 bytes")
        push_blob(client, "alice/app", b"3" * (10 * KIB))
    used = usage(server)
    assert used[("user", "alice")] == 40 * KIB
    assert ("user", robot) not in used


def test_a_held_blob_deleted_while_its_upload_streams_is_charged_at_the_end(
    make_server,
):
    # The upload claims a digest the repository holds, so it reserves
    # nothing; the blob is deleted and the room filled while it streams.
    # Finishing must not add the blob past the quota.
    quota = 1000 * KIB
    server = make_server({"quotas": {"repository_max_bytes": quota}})
    repo = unique_repo("held")
    held = b"A" * (600 * KIB)
    digest = sha256(held)
    half_sent, room_filled = threading.Event(), threading.Event()
    result = {}

    def body():
        yield held[: len(held) // 2]
        half_sent.set()
        room_filled.wait(30)
        yield held[len(held) // 2 :]

    def upload():
        with server.client() as slow:
            location = slow.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
            result["response"] = slow.put(
                location, params={"digest": digest}, content=body(),
                headers={"content-length": str(len(held))},
            )  # fmt: skip

    with server.client() as client:
        assert push_blob(client, repo, held) == digest
        thread = threading.Thread(target=upload)
        thread.start()
        assert half_sent.wait(30)
        time.sleep(0.3)  # the first half reaches the server
        assert client.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
        push_blob(client, repo, b"B" * (900 * KIB))
        room_filled.set()
        thread.join(60)
        denied(result["response"], f"repository {repo} would pass its quota")
        assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    assert usage(server)[("repository", repo)] == 900 * KIB <= quota
    assert staged_files(server) == []
