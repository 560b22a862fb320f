"""Garbage collection against a running server: what nothing references
goes after the grace period, what is referenced stays intact, and a push
that runs during collection is never left with a missing blob."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import time

from tests.helpers import (
    OCI_MANIFEST,
    image_manifest,
    push_blob,
    push_image,
    push_manifest,
    sha256,
    unique_repo,
)
from tests.test_signatures import attach_cosign_signature, simple_signing_payload

# Collection races pushes here as fast as they go: rate limits would only
# slow the pushes down.
SETTINGS = {
    "uploads": {"idle_seconds": 1},
    "gc": {"grace_seconds": 1},
    "rate_limits": {"enabled": False},
}


def gc(server, *flags: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "quaylock.cli.main", "gc", "--data", str(server.data),
         "--config", str(server.data.parent / "config.yaml"), *flags],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[" in result.stderr  # the progress bar
    return json.loads(result.stdout.splitlines()[-1])


def blob_file(server, digest: str):
    hex_ = digest.split(":", 1)[1]
    return server.data / "blobs" / "sha256" / hex_[:2] / hex_


def query(server, sql: str) -> list[tuple]:
    """Read the server's metadata database directly."""
    db = sqlite3.connect(server.data / "metadata.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def referenced_blobs_intact(server) -> int:
    """Every blob a manifest references exists, with the bytes its digest
    names; returns how many were checked."""
    rows = query(
        server,
        "SELECT DISTINCT child_digest FROM manifest_references WHERE kind = 'blob'",
    )
    for (digest,) in rows:
        data = blob_file(server, digest).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return len(rows)


def test_collection_takes_what_nothing_references_after_the_grace_period(make_server):
    server = make_server(SETTINGS)
    repo = unique_repo("gc")
    with server.client() as client:
        kept = push_image(client, repo, tag="v1", seed="kept")
        gone = push_image(client, repo, tag=None, seed="gone")
        stray = push_blob(client, repo, b"uploaded, never used")
        # A signature of the tagged image: untagged, but about a live one.
        payload = simple_signing_payload(kept["digest"], f"example.test/{repo}:v1")
        attach_cosign_signature(client, repo, kept["digest"], payload, "c2ln")
    time.sleep(1.5)

    planned = gc(server, "--dry-run")
    assert planned["dry_run"] is True
    assert planned["manifests_deleted"] == 1
    assert client_sees(server, repo, gone["digest"]) == 200  # nothing deleted yet

    done = gc(server)
    assert done["manifests_deleted"] == 1
    assert done["blob_links_deleted"] >= 3  # gone's config and layers, the stray blob
    assert done["blobs_deleted"] >= 3
    assert done["bytes_freed"] > 0
    assert client_sees(server, repo, gone["digest"]) == 404
    assert client_sees(server, repo, kept["digest"]) == 200
    with server.client() as client:
        assert client.head(f"/v2/{repo}/blobs/{stray}").status_code == 404
        assert not blob_file(server, stray).exists()
        for blob in (kept["config"], *kept["layers"]):
            assert client.get(f"/v2/{repo}/blobs/{sha256(blob)}").content == blob
        tags = client.get(f"/v2/{repo}/tags/list").json()["tags"]
        assert any(t.endswith(".sig") for t in tags)  # the signature stays
    assert referenced_blobs_intact(server) >= 3
    assert gc(server)["manifests_deleted"] == 0


def client_sees(server, repo: str, digest: str) -> int:
    with server.client() as client:
        return client.head(
            f"/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
        ).status_code


def test_the_grace_period_keeps_what_was_just_uploaded(make_server):
    server = make_server({"uploads": {"idle_seconds": 60}, "gc": {"grace_seconds": 60}})
    repo = unique_repo("gc")
    with server.client() as client:
        digest = push_blob(client, repo, b"for a manifest still to come")
    report = gc(server)
    assert report["blob_links_deleted"] == 0 and report["blobs_deleted"] == 0
    with server.client() as client:
        assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200


def test_a_push_during_collection_is_never_left_with_a_missing_blob(make_server):
    server = make_server(SETTINGS)
    repo = unique_repo("gcrace")
    shared = b"a layer every image shares"
    stop = threading.Event()
    outcomes = {"pushed": 0, "refused": 0}

    def push_many() -> None:
        with server.client() as client:
            i = 0
            while not stop.is_set() and i < 400:
                i += 1
                config = json.dumps({"os": "linux", "n": i}).encode()
                own = f"layer {i}".encode() * 50
                for blob in (config, own, shared):
                    push_blob(client, repo, blob)
                body = image_manifest(config, [own, shared])
                # Untagged every other time, so collection takes those too.
                reference = f"t{i}" if i % 2 else sha256(body)
                response = push_manifest(client, repo, reference, body)
                if response.status_code == 201:
                    outcomes["pushed"] += 1
                else:
                    # Collection took a blob between its upload and this
                    # push: the push is refused, never stored half-made.
                    assert response.status_code == 400, response.text
                    assert "MANIFEST_BLOB_UNKNOWN" in response.text
                    outcomes["refused"] += 1

    pusher = threading.Thread(target=push_many)
    pusher.start()
    rounds = 0
    deadline = time.monotonic() + 12
    try:
        while time.monotonic() < deadline:
            gc(server, "--grace-seconds", "1")
            rounds += 1
    finally:
        stop.set()
        pusher.join(60)
    print(f"{rounds} collections during {outcomes}")
    assert rounds >= 3 and outcomes["pushed"] > 10, (rounds, outcomes)
    checked = referenced_blobs_intact(server)
    assert checked > 0
    # Every tagged image pulls whole.
    with server.client() as client:
        for tag in client.get(f"/v2/{repo}/tags/list").json()["tags"]:
            manifest = client.get(f"/v2/{repo}/manifests/{tag}",
                                  headers={"Accept": OCI_MANIFEST}).json()  # fmt: skip
            for layer in [manifest["config"], *manifest["layers"]]:
                blob = client.get(f"/v2/{repo}/blobs/{layer['digest']}")
                assert blob.status_code == 200, (tag, layer["digest"])
                assert sha256(blob.content) == layer["digest"]


def test_the_server_collects_on_its_schedule(make_server):
    server = make_server({**SETTINGS, "server": {"workers": 2},
                          "gc": {"grace_seconds": 1, "interval_seconds": 1}})  # fmt: skip
    repo = unique_repo("gcsched")
    with server.client() as client:
        gone = push_image(client, repo, tag=None, seed="scheduled")
    deadline = time.monotonic() + 20
    while client_sees(server, repo, gone["digest"]) == 200:
        assert time.monotonic() < deadline, "nothing collected in 20 s"
        time.sleep(0.5)
    # The worker logs the summary once the collecting process has exited,
    # a moment after its deletions show.
    while "garbage collected" not in server.log():
        assert time.monotonic() < deadline, "no summary logged"
        time.sleep(0.2)


def test_uploading_a_blob_again_renews_its_grace_period(make_server):
    server = make_server(SETTINGS)
    repo = unique_repo("gcagain")
    data = b"pushed twice, a while apart"
    with server.client() as client:
        digest = push_blob(client, repo, data)
        time.sleep(1.5)
        assert push_blob(client, repo, data) == digest  # a client that skips HEAD
    gc(server)
    with server.client() as client:
        assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200


def test_a_blob_whose_bytes_are_lost_answers_blob_unknown(make_server):
    server = make_server(SETTINGS)
    repo = unique_repo("lost")
    with server.client() as client:
        digest = push_blob(client, repo, b"soon lost on disk")
        blob_file(server, digest).unlink()
        for method, headers in (
            ("GET", {}),
            ("HEAD", {}),
            ("GET", {"range": "bytes=0-3"}),
        ):
            answer = client.request(
                method, f"/v2/{repo}/blobs/{digest}", headers=headers
            )
            assert answer.status_code == 404, (method, headers)
            if method == "GET":
                assert answer.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_gc_refuses_a_grace_shorter_than_an_upload_session(make_server):
    server = make_server({"uploads": {"idle_seconds": 60}, "gc": {"grace_seconds": 60}})
    result = subprocess.run(
        [sys.executable, "-m", "quaylock.cli.main", "gc", "--data", str(server.data),
         "--config", str(server.data.parent / "config.yaml"), "--grace-seconds", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "below uploads.idle_seconds (60)" in result.stderr


def test_retention_keeps_the_newest_tags_and_never_a_protected_one(make_server):
    repo = unique_repo("keep")
    server = make_server({
        **SETTINGS,
        "tags": {"rules": [{"repositories": ["**"], "protected": ["latest"],
                            "immutable": ["v1"]}]},
        "gc": {"grace_seconds": 1, "retention": [
            {"repositories": [repo], "tags": r"v[0-9]+|latest|nightly-.*", "keep": 2},
        ]},
    })  # fmt: skip
    with server.client() as client:
        images = {}
        # Oldest first: v1 (immutable), latest (protected), v2, dev, v3, v4.
        for tag in ("v1", "latest", "v2", "dev", "v3", "v4"):
            images[tag] = push_image(client, repo, tag=tag, seed=tag)
            time.sleep(0.02)  # distinct push times
    time.sleep(1.5)

    planned = gc(server, "--dry-run")
    assert (planned["tags_deleted"], planned["tags_kept_by_tag_rules"]) == (1, 2)
    assert planned["tags_to_delete"] == [f"{repo}:v2"]
    done = gc(server)
    # v4 and v3 are the newest two; v2 goes; v1 and latest stay by the tag
    # rules; dev matches no retention pattern.
    assert (done["tags_deleted"], done["tags_kept_by_tag_rules"]) == (1, 2)
    assert done["manifests_deleted"] == 1
    with server.client() as client:
        tags = client.get(f"/v2/{repo}/tags/list").json()["tags"]
        assert sorted(tags) == ["dev", "latest", "v1", "v3", "v4"]
        assert client_sees(server, repo, images["v2"]["digest"]) == 404
        assert client_sees(server, repo, images["v3"]["digest"]) == 200
    assert referenced_blobs_intact(server) > 0
    logged = query(
        server, "SELECT subject, tag, detail FROM audit_log WHERE action = 'tag.delete'"
    )
    assert logged == [("gc", "v2", "gc.retention[0] keeps newer tags")]


def test_a_stray_blob_file_with_no_row_is_collected(make_server):
    # What an upload leaves when its blob was stored but could not be linked
    # (a crash, or a full disk, between the two): a file the database does
    # not know. Collection must still find it.
    server = make_server(SETTINGS)
    repo = unique_repo("stray")
    with server.client() as client:
        kept = push_image(client, repo, tag="v1", seed="stray")
    data = b"stored, never linked"
    digest = sha256(data)
    path = blob_file(server, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    time.sleep(1.5)
    assert gc(server, "--dry-run")["stray_files_deleted"] == 1
    assert path.exists()
    done = gc(server)
    assert done["stray_files_deleted"] == 1
    assert not path.exists()
    with server.client() as client:
        layer = kept["layers"][0]
        assert client.get(f"/v2/{repo}/blobs/{sha256(layer)}").content == layer
    assert referenced_blobs_intact(server) >= 3


def test_a_dry_run_does_not_make_the_next_collection_skip(make_server):
    server = make_server(SETTINGS)
    assert "skipped" not in gc(server, "--dry-run", "--interval", "86400")
    # Only a collection that collected counts as the last one.
    assert not (server.data / "gc.last").exists()
    assert "skipped" not in gc(server, "--interval", "86400")
    again = subprocess.run(
        [sys.executable, "-m", "quaylock.cli.main", "gc", "--data", str(server.data),
         "--config", str(server.data.parent / "config.yaml"), "--interval", "86400"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(again.stdout) == {
        "skipped": "collected less than an interval ago"
    }
