"""Signature policy against real signing tools.

The signers are Debian 13's skopeo 1.18 (`--sign-by-sigstore-private-key`,
which stores a sigstore attachment under ``sha256-<hex>.sig``) and Debian
13's cosign 2.5 (`cosign sign --key`, offline: no transparency log), both
unpacked into .tools/ by scripts/test-deps. quaylock must accept a tag move
only to a digest one of them signed with a trusted key, and skopeo with a
``sigstoreSigned`` policy must accept what quaylock serves.

Each test starts its own server with a `tag` or `pull` policy over
``signed/**`` that names ``latest`` and ``v.*``.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from quaylock.policy.signatures import signature_candidates
from tests.conftest import Server, require_tool
from tests.helpers import error_code, push_blob, push_manifest, sha256, unique_repo
from tests.test_auth_clients import PASSWORD, add_user, creds
from tests.test_interop import (
    OCI_MANIFEST,
    TOOL_TIMEOUT,
    Layout,
    Skopeo,
    build_image,
    docker_ref,
    run,
)

pytestmark = pytest.mark.interop

PASSPHRASE = "correct horse battery staple"


# Helpers


def variant(directory: Path, label: str) -> Layout:
    """The test image with one more label: same layers, another digest."""
    image = build_image(directory)
    umoci = require_tool("umoci")
    run([umoci, "config", "--image", f"{directory}:{image.tag}",
         "--config.label", f"org.example.variant={label}"])  # fmt: skip
    run([umoci, "gc", "--layout", str(directory)])
    return image


class Cosign:
    """cosign with its home, keys and password inside the test's tmp_path."""

    def __init__(self, home: Path):
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.path = require_tool("cosign")
        self.env = {
            **os.environ,
            "HOME": str(home),
            "COSIGN_PASSWORD": PASSPHRASE,
            "COSIGN_EXPERIMENTAL": "1",
        }

    def key_pair(self, name: str) -> tuple[Path, Path]:
        """A new ECDSA P-256 key pair: (private, public)."""
        directory = self.home / name
        directory.mkdir()
        subprocess.run(
            [self.path, "generate-key-pair"],
            cwd=directory, env=self.env, capture_output=True, check=True,
            timeout=TOOL_TIMEOUT,
        )  # fmt: skip
        return directory / "cosign.key", directory / "cosign.pub"

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.path, *args], env=self.env, capture_output=True,
            timeout=TOOL_TIMEOUT,
        )  # fmt: skip

    def sign(self, key: Path, image: str, referrers: bool = False) -> None:
        mode = ["--registry-referrers-mode=oci-1-1"] if referrers else []
        result = self(
            "sign", "--key", str(key), "--tlog-upload=false", "--yes",
            "--allow-insecure-registry", "--allow-http-registry", *mode, image,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode(errors="replace")

    def verify(self, key: Path, image: str, referrers: bool = False):
        mode = ["--experimental-oci11"] if referrers else []
        return self(
            "verify", "--key", str(key), "--insecure-ignore-tlog",
            "--allow-insecure-registry", "--allow-http-registry", *mode, image,
        )  # fmt: skip


def policy_server(make_server, mode: str, *keys: Path) -> Server:
    return make_server(
        {
            "signatures": {
                "policies": [
                    {"repositories": ["signed/**"], "mode": mode,
                     "tags": ["latest", "v.*"],
                     "cosign_keys": [str(k) for k in keys]}
                ]
            }
        }
    )  # fmt: skip


def sigstore_skopeo(home: Path, server: Server, public_key: Path | None = None):
    """Debian 13's skopeo, reading and writing sigstore attachments on this
    server; with `public_key`, it accepts only images under ``signed/``
    that carry a sigstore signature by that key."""
    skopeo = Skopeo(home, tool="skopeo13")
    registries_d = Path(
        skopeo.global_flags[skopeo.global_flags.index("--registries.d") + 1]
    )
    (registries_d / "quaylock.yaml").write_text(
        f"docker:\n  {server.host}:\n    use-sigstore-attachments: true\n"
    )
    if public_key is not None:
        policy = Path(skopeo.global_flags[skopeo.global_flags.index("--policy") + 1])
        policy.write_text(json.dumps({
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {f"{server.host}/signed": [{
                "type": "sigstoreSigned",
                "keyPath": str(public_key),
                "signedIdentity": {"type": "matchRepository"},
            }]}},
        }))  # fmt: skip
    return skopeo


def skopeo_keys(skopeo: Skopeo, directory: Path, *names: str) -> Path:
    """Sigstore key pairs <name>.private / <name>.pub; returns the
    passphrase file."""
    directory.mkdir()
    passphrase = directory / "passphrase"
    passphrase.write_text(PASSPHRASE)
    for name in names:
        skopeo(
            "generate-sigstore-key", "--output-prefix", str(directory / name),
            "--passphrase-file", str(passphrase),
        )  # fmt: skip
    return passphrase


def failed_copy(skopeo: Skopeo, source: str, destination: str, *flags: str) -> str:
    """Run a copy that must fail; return what skopeo printed."""
    result = subprocess.run(
        [skopeo.path, *skopeo.global_flags, "copy", "--src-tls-verify=false",
         "--dest-tls-verify=false", *flags, source, destination],
        capture_output=True, env=skopeo.env, timeout=TOOL_TIMEOUT,
    )  # fmt: skip
    assert result.returncode != 0, "the copy was expected to fail"
    return result.stderr.decode(errors="replace")


def tag_target(client: httpx.Client, repository: str, tag: str) -> str | None:
    response = client.head(
        f"/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
    )
    return response.headers.get("docker-content-digest")


def move_tag(client: httpx.Client, repository: str, tag: str, digest: str):
    """Point `tag` at the manifest `digest`, as a client re-tagging does."""
    body = client.get(
        f"/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
    ).content
    return push_manifest(client, repository, tag, body)


# skopeo: sign on push, verify on pull


def test_skopeo_signed_digest_may_take_latest_and_others_may_not(make_server, tmp_path):
    keys = tmp_path / "keys"
    home = tmp_path / "skopeo"
    # The server needs the public key before it starts, so make keys first
    # with a skopeo that talks to no server.
    passphrase = skopeo_keys(Skopeo(tmp_path / "keygen", tool="skopeo13"), keys,
                             "signer", "stranger")  # fmt: skip
    server = policy_server(make_server, "tag", keys / "signer.pub")
    skopeo = sigstore_skopeo(home, server)
    repository = unique_repo("signed/app")
    signed = build_image(tmp_path / "signed")
    by_stranger = variant(tmp_path / "stranger", "stranger")
    unsigned = variant(tmp_path / "unsigned", "unsigned")

    def push(image: Layout, tag: str, key: str | None) -> None:
        sign = ["--sign-by-sigstore-private-key", str(keys / f"{key}.private"),
                "--sign-passphrase-file", str(passphrase)] if key else []  # fmt: skip
        skopeo.copy(image.reference, docker_ref(server, repository, tag), *sign)

    push(signed, "build-1", "signer")
    push(by_stranger, "build-2", "stranger")
    push(unsigned, "build-3", None)

    # Re-tagging the signed digest as latest (skopeo copies the image and
    # its attachment) is accepted.
    skopeo.copy(
        docker_ref(server, repository, "build-1"),
        docker_ref(server, repository, "latest"),
    )
    with server.client() as client:
        assert tag_target(client, repository, "latest") == signed.manifest_digest

    for image, tag in ((by_stranger, "build-2"), (unsigned, "build-3")):
        printed = failed_copy(
            skopeo,
            docker_ref(server, repository, tag),
            docker_ref(server, repository, "latest"),
        )
        assert "signatures.policies[0]" in printed, printed
        assert image.manifest_digest in printed, printed
        with server.client() as client:
            assert tag_target(client, repository, "latest") == signed.manifest_digest
            refused = move_tag(client, repository, "v1.0", image.manifest_digest)
            assert refused.status_code == 403, refused.text
            assert error_code(refused) == "DENIED"

    # A client that trusts only the signer's key pulls latest from quaylock,
    # and refuses the stranger's and the unsigned image.
    puller = sigstore_skopeo(tmp_path / "puller", server, keys / "signer.pub")
    pulled = tmp_path / "pulled"
    puller.copy(docker_ref(server, repository, "latest"), f"oci:{pulled}:latest",
                "--remove-signatures")  # fmt: skip
    assert Layout(pulled, "latest").manifest_digest == signed.manifest_digest
    for tag in ("build-2", "build-3"):
        printed = failed_copy(
            puller, docker_ref(server, repository, tag), f"oci:{pulled}:{tag}",
            "--remove-signatures",
        )  # fmt: skip
        assert "Source image rejected" in printed, printed


# cosign: sign by digest, in the tag scheme and as an OCI 1.1 referrer


@pytest.mark.parametrize("referrers", [False, True], ids=["sig-tag", "referrer"])
def test_cosign_signed_digest_may_take_latest_and_verifies_from_quaylock(
    make_server, tmp_path, referrers
):
    cosign = Cosign(tmp_path / "cosign")
    signer, signer_pub = cosign.key_pair("signer")
    stranger, _ = cosign.key_pair("stranger")
    server = policy_server(make_server, "tag", signer_pub)
    skopeo = Skopeo(tmp_path / "skopeo")
    repository = unique_repo("signed/cosign")
    good = build_image(tmp_path / "good")
    other = variant(tmp_path / "other", "other")
    for image, tag in ((good, "build-1"), (other, "build-2")):
        skopeo.copy(image.reference, docker_ref(server, repository, tag))

    with server.client() as client:
        refused = move_tag(client, repository, "latest", good.manifest_digest)
        assert refused.status_code == 403, "unsigned digest took latest"
        assert "no signature found" in refused.json()["errors"][0]["message"]

        cosign.sign(signer, f"{server.host}/{repository}@{good.manifest_digest}",
                    referrers)  # fmt: skip
        cosign.sign(stranger, f"{server.host}/{repository}@{other.manifest_digest}",
                    referrers)  # fmt: skip
        if referrers:
            listed = client.get(
                f"/v2/{repository}/referrers/{good.manifest_digest}"
            ).json()["manifests"]
            assert len(listed) == 1, listed
            tags = client.get(f"/v2/{repository}/tags/list").json()["tags"]
            assert signature_candidates(good.manifest_digest) not in tags

        accepted = move_tag(client, repository, "latest", good.manifest_digest)
        assert accepted.status_code == 201, accepted.text
        refused = move_tag(client, repository, "latest", other.manifest_digest)
        assert refused.status_code == 403, "a stranger's signature counted"
        assert tag_target(client, repository, "latest") == good.manifest_digest

    # cosign agrees, reading the signature back from quaylock.
    reference = f"{server.host}/{repository}:latest"
    checked = cosign.verify(signer_pub, reference, referrers)
    assert checked.returncode == 0, checked.stderr.decode(errors="replace")
    claims = json.loads(checked.stdout.splitlines()[-1])
    assert claims[0]["critical"]["image"]["docker-manifest-digest"] == (
        good.manifest_digest
    )


@dataclass
class Signed:
    """A tag-policy server trusting one cosign key, with images pushed and
    the first of them signed by that key."""

    server: Server
    cosign: Cosign
    public_key: Path
    repository: str
    images: list[Layout]

    def reference(self, image: Layout) -> str:
        return f"{self.server.host}/{self.repository}@{image.manifest_digest}"


def signed_first(make_server, tmp_path: Path, prefix: str, *images: Layout) -> Signed:
    cosign = Cosign(tmp_path / "keys")
    key, public = cosign.key_pair("signer")
    # The server's trust root is the key cosign makes, so start it after.
    server = policy_server(make_server, "tag", public)
    repository = unique_repo(prefix)
    skopeo = Skopeo(tmp_path / "skopeo")
    for i, image in enumerate(images):
        skopeo.copy(image.reference, docker_ref(server, repository, f"build-{i}"))
    signed = Signed(server, cosign, public, repository, list(images))
    cosign.sign(key, signed.reference(images[0]))
    return signed


def test_cosign_signature_replayed_onto_another_digest_is_refused(
    make_server, tmp_path
):
    good = build_image(tmp_path / "good")
    evil = variant(tmp_path / "evil", "evil")
    signed = signed_first(make_server, tmp_path, "signed/replay", good, evil)
    server, repository = signed.server, signed.repository

    with server.client() as client:
        genuine = client.get(
            f"/v2/{repository}/manifests/{signature_candidates(good.manifest_digest)}",
            headers={"Accept": OCI_MANIFEST},
        ).content
        # The genuine signature manifest of `good`, stored as if it signed `evil`.
        stored = push_manifest(
            client, repository, signature_candidates(evil.manifest_digest), genuine
        )
        assert stored.status_code == 201, stored.text
        refused = move_tag(client, repository, "latest", evil.manifest_digest)
        assert refused.status_code == 403, "a replayed signature counted"
        message = refused.json()["errors"][0]["message"]
        assert f"signature is for manifest {good.manifest_digest}" in message, message
    # cosign, asked about `evil`, refuses the replay too.
    checked = signed.cosign.verify(signed.public_key, signed.reference(evil))
    assert checked.returncode != 0


def test_cosign_signature_with_tampered_payload_is_refused(make_server, tmp_path):
    image = build_image(tmp_path / "image")
    signed = signed_first(make_server, tmp_path, "signed/tamper", image)
    server, repository = signed.server, signed.repository
    tag = signature_candidates(image.manifest_digest)

    with server.client() as client:
        manifest = json.loads(
            client.get(
                f"/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
            ).content
        )
        (layer,) = manifest["layers"]
        payload = json.loads(
            client.get(f"/v2/{repository}/blobs/{layer['digest']}").content
        )
        # Same digest, same signature; one claim added after signing.
        payload["optional"] = {"creator": "someone else"}
        changed = json.dumps(payload, separators=(",", ":")).encode()
        push_blob(client, repository, changed)
        layer.update(digest=sha256(changed), size=len(changed))
        stored = push_manifest(client, repository, tag, json.dumps(manifest).encode())
        assert stored.status_code == 201, stored.text

        refused = move_tag(client, repository, "latest", image.manifest_digest)
        assert refused.status_code == 403, "a tampered payload counted"
        assert "signature" in refused.json()["errors"][0]["message"]
    checked = signed.cosign.verify(signed.public_key, signed.reference(image))
    assert checked.returncode != 0


def test_pull_policy_serves_consumers_only_what_cosign_signed(make_server, tmp_path):
    cosign = Cosign(tmp_path / "keys")
    key, public = cosign.key_pair("signer")
    server = make_server({
        "auth": {"mode": "token", "rules": [
            {"subjects": ["user:alice"], "repositories": ["signed/**"],
             "actions": ["pull", "push"]},
            {"subjects": ["user:bob"], "repositories": ["signed/**"],
             "actions": ["pull"]},
        ]},
        "signatures": {"policies": [
            {"repositories": ["signed/**"], "mode": "pull",
             "cosign_keys": [str(public)]},
        ]},
    })  # fmt: skip
    alice = creds("alice", add_user(server, "alice"))
    bob = creds("bob", add_user(server, "bob"))
    repository = unique_repo("signed/pull")
    signed = build_image(tmp_path / "signed")
    unsigned = variant(tmp_path / "unsigned", "unsigned")
    skopeo = Skopeo(tmp_path / "skopeo")
    skopeo.copy(signed.reference, docker_ref(server, repository, "v1"),
                "--dest-creds", alice)  # fmt: skip
    skopeo.copy(unsigned.reference, docker_ref(server, repository, "v2"),
                "--dest-creds", alice)  # fmt: skip
    # The publisher, who may push, signs: cosign reads the manifest first.
    login = cosign("login", server.host, "-u", "alice", "-p", PASSWORD["alice"])
    assert login.returncode == 0, login.stderr.decode(errors="replace")
    cosign.sign(key, f"{server.host}/{repository}@{signed.manifest_digest}")

    out = tmp_path / "out"
    skopeo.copy(docker_ref(server, repository, "v1"), f"oci:{out}:v1",
                "--src-creds", bob)  # fmt: skip
    assert Layout(out, "v1").manifest_digest == signed.manifest_digest
    printed = failed_copy(skopeo, docker_ref(server, repository, "v2"),
                          f"oci:{out}:v2", "--src-creds", bob)  # fmt: skip
    assert "signatures.policies[0]" in printed, printed
    assert "no valid signature" in printed, printed
    # The publisher still reads its unsigned image, to sign it later.
    skopeo.copy(docker_ref(server, repository, "v2"), f"oci:{out}:v2",
                "--src-creds", alice)  # fmt: skip
    # The signature itself stays pullable for the consumer, or no client
    # could check it: cosign verifies as bob.
    relogin = cosign("login", server.host, "-u", "bob", "-p", PASSWORD["bob"])
    assert relogin.returncode == 0, relogin.stderr.decode(errors="replace")
    checked = cosign.verify(public, f"{server.host}/{repository}:v1")
    assert checked.returncode == 0, checked.stderr.decode(errors="replace")
