"""Signature policy on a running registry: tag moves and pulls that need a
valid cosign signature, with signatures made and attached the way cosign
and containers/image store them."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import error_code, push_image, push_manifest, unique_repo
from tests.test_signatures import (
    attach_cosign_signature,
    sign_payload,
    simple_signing_payload,
    tampered,
    write_public_key,
)


@pytest.fixture
def signer():
    return ec.generate_private_key(ec.SECP256R1())


def start(make_server, tmp_path, signer, mode: str):
    key = write_public_key(tmp_path / "signer.pub", signer)
    return make_server(
        {
            "signatures": {
                "policies": [
                    {"repositories": ["signed/**"], "mode": mode,
                     "tags": ["latest", "v.*"], "cosign_keys": [str(key)]}
                ]
            }
        }
    )  # fmt: skip


def sign(client, repo, digest, key, payload=None):
    payload = payload or simple_signing_payload(digest, f"example.test/{repo}:v1")
    attach_cosign_signature(client, repo, digest, payload, sign_payload(key, payload))


def test_tag_moves_only_to_a_signed_digest(make_server, tmp_path, signer):
    server = start(make_server, tmp_path, signer, "tag")
    with server.client() as client:
        repo = unique_repo("signed")
        image = push_image(client, repo, tag=None)
        refused = push_manifest(client, repo, "latest", image["manifest"])
        assert refused.status_code == 403
        assert error_code(refused) == "DENIED"
        assert "signatures.policies[0]" in refused.json()["errors"][0]["message"]
        # Tags the policy does not name move freely.
        assert push_manifest(client, repo, "dev", image["manifest"]).status_code == 201
        sign(client, repo, image["digest"], signer)
        assert (
            push_manifest(client, repo, "latest", image["manifest"]).status_code == 201
        )


def test_signature_by_an_untrusted_key_does_not_count(make_server, tmp_path, signer):
    server = start(make_server, tmp_path, signer, "tag")
    stranger = ec.generate_private_key(ec.SECP256R1())
    with server.client() as client:
        repo = unique_repo("signed")
        image = push_image(client, repo, tag=None)
        sign(client, repo, image["digest"], stranger)
        assert push_manifest(client, repo, "v1", image["manifest"]).status_code == 403


def test_signature_of_another_digest_replayed_does_not_count(
    make_server, tmp_path, signer
):
    server = start(make_server, tmp_path, signer, "tag")
    with server.client() as client:
        repo = unique_repo("signed")
        good = push_image(client, repo, tag=None, seed="good")
        evil = push_image(client, repo, tag=None, seed="evil")
        # A genuine signature of `good`, stored as if it signed `evil`.
        payload = simple_signing_payload(good["digest"], f"example.test/{repo}:v1")
        attach_cosign_signature(
            client, repo, evil["digest"], payload, sign_payload(signer, payload)
        )
        assert push_manifest(client, repo, "v2", evil["manifest"]).status_code == 403


def test_tampered_payload_does_not_count(make_server, tmp_path, signer):
    server = start(make_server, tmp_path, signer, "tag")
    with server.client() as client:
        repo = unique_repo("signed")
        image = push_image(client, repo, tag=None)
        payload = simple_signing_payload(image["digest"], f"example.test/{repo}:v1")
        signature = sign_payload(signer, payload)
        attach_cosign_signature(
            client, repo, image["digest"], tampered(payload), signature
        )
        assert push_manifest(client, repo, "v3", image["manifest"]).status_code == 403


def test_pull_mode_refuses_unsigned_manifests_but_serves_signatures(
    make_server, tmp_path, signer
):
    server = start(make_server, tmp_path, signer, "pull")
    with server.client() as client:
        repo = unique_repo("signed")
        image = push_image(client, repo, tag="v1")
        refused = client.get(f"/v2/{repo}/manifests/v1")
        assert refused.status_code == 403
        assert "no valid signature" in refused.json()["errors"][0]["message"]
        sign(client, repo, image["digest"], signer)
        assert client.get(f"/v2/{repo}/manifests/v1").status_code == 200
        assert client.get(f"/v2/{repo}/manifests/{image['digest']}").status_code == 200
        sig_tag = "sha256-" + image["digest"].split(":")[1] + ".sig"
        assert client.get(f"/v2/{repo}/manifests/{sig_tag}").status_code == 200


def test_repositories_outside_the_policy_are_untouched(make_server, tmp_path, signer):
    server = start(make_server, tmp_path, signer, "pull")
    with server.client() as client:
        repo = unique_repo("plain")
        push_image(client, repo, tag="latest")
        assert client.get(f"/v2/{repo}/manifests/latest").status_code == 200


def test_admin_api_reports_signature_status(make_server, tmp_path, signer):
    key = write_public_key(tmp_path / "signer.pub", signer)
    server = make_server(
        {
            "auth": {"mode": "token"},
            "signatures": {
                "policies": [
                    {"repositories": ["admin/**"], "mode": "audit", "cosign_keys": [str(key)]}
                ]
            },
        },
        env={"QUAYLOCK_ADMIN_PASSWORD": "admin-pass-123"},
    )
    admin = ("admin", "admin-pass-123")
    with server.client() as client:
        token = client.get(
            "/v2/token",
            params={"service": "quaylock", "scope": "repository:admin/app:pull,push"},
            auth=admin,
        ).json()["token"]
        client.headers["authorization"] = f"Bearer {token}"
        image = push_image(client, "admin/app", tag="latest")
        del client.headers["authorization"]
        query = {"repository": "admin/app", "digest": image["digest"]}
        before = client.get("/admin/v1/signatures", params=query, auth=admin).json()
        assert before["verified"] is False and before["mode"] == "audit"
        client.headers["authorization"] = f"Bearer {token}"
        sign(client, "admin/app", image["digest"], signer)
        del client.headers["authorization"]
        after = client.get("/admin/v1/signatures", params=query, auth=admin).json()
        assert after["verified"] is True
        assert after["policy"] == "signatures.policies[0]"
