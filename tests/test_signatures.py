"""Signature verification (`quaylock.policy.signatures`) on real signatures.

Three sources of signatures, each checked both ways (a good signature
verifies; another key, another manifest, or a changed payload does not):

- skopeo. Debian 12's skopeo 1.9 has sigstore compiled out ("Debian-local
  change: sigstore disabled") but still reads and writes sigstore
  attachments: a test attaches a signature in the form containers/image
  writes, lets that skopeo copy it to another repository, and verifies the
  ``.sig`` manifest it wrote. Debian 13's skopeo 1.18 (unpacked into
  .tools/ by scripts/test-deps) signs for real with a sigstore key.
- cosign-style signatures made with `cryptography` (ECDSA P-256 and P-384,
  RSA, Ed25519) in the simple-signing format, stored under the ``.sig`` tag
  and as an OCI 1.1 referrer, read back from quaylock.
- notation JWS envelopes built here to the Notary Project specification (no
  notation binary is packaged for Debian): a test CA, an intermediate, and a
  code-signing leaf; pushed as a signature manifest with a `subject` and
  found again through the referrers API.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quaylock.errors import DigestInvalid
from quaylock.policy.signatures import (
    COSIGN_ARTIFACT_TYPE,
    COSIGN_SIGNATURE_ANNOTATION,
    NOTATION_ARTIFACT_TYPE,
    NOTATION_JWS,
    NOTATION_PAYLOAD,
    SIMPLE_SIGNING,
    TrustRoot,
    TrustRootError,
    load_trust_root,
    signature_candidates,
    signature_layers,
    verify_cosign_signature,
    verify_notation_jws,
)
from tests.conftest import Server
from tests.helpers import (
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_MANIFEST,
    push_blob,
    push_image,
    push_manifest,
    sha256,
    unique_repo,
)
from tests.test_interop import Skopeo, build_image, docker_ref

NOTATION_SIGNING_TIME = "io.cncf.notary.signingTime"
NOTATION_EXPIRY = "io.cncf.notary.expiry"
NOTATION_SCHEME = "io.cncf.notary.signingScheme"


# Helpers: cosign-style signatures


def simple_signing_payload(digest: str, reference: str) -> bytes:
    """The payload as containers/image writes it (Go's json.Marshal of maps:
    sorted keys, no spaces), with its creator and timestamp."""
    payload = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": {"creator": "quaylock-tests", "timestamp": 1767225600},
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def sign_payload(private_key, payload: bytes) -> str:
    """Sign as cosign and containers/image do; return the base64 signature."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        signature = private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    elif isinstance(private_key, rsa.RSAPrivateKey):
        signature = private_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = private_key.sign(payload)
    return base64.b64encode(signature).decode()


def public_pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_public_key(path: Path, private_key) -> Path:
    path.write_bytes(public_pem(private_key))
    return path


def cosign_root(tmp_path: Path, private_key, name: str) -> TrustRoot:
    path = write_public_key(tmp_path / f"{name}.pub", private_key)
    return load_trust_root("cosign-key", name, str(path))


def signature_manifest(
    client: httpx.Client,
    repository: str,
    layers: list[tuple[bytes, str]],
    **extra,
) -> bytes:
    """Push payloads, and a config naming them, the way containers/image
    builds a sigstore attachment; return the manifest (not yet pushed)."""
    descriptors = []
    for payload, signature in layers:
        push_blob(client, repository, payload)
        descriptors.append(
            {
                "mediaType": SIMPLE_SIGNING,
                "digest": sha256(payload),
                "size": len(payload),
                "annotations": {COSIGN_SIGNATURE_ANNOTATION: signature},
            }
        )
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": [d["digest"] for d in descriptors],
            },
        }
    ).encode()
    push_blob(client, repository, config)
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": sha256(config),
            "size": len(config),
        },
        "layers": descriptors,
        **extra,
    }
    return json.dumps(body).encode()


def attach_cosign_signature(
    client: httpx.Client,
    repository: str,
    subject: str,
    payload: bytes,
    signature: str,
) -> None:
    """Store a signature under the subject's ``sha256-<hex>.sig`` tag."""
    manifest = signature_manifest(client, repository, [(payload, signature)])
    tag = signature_candidates(subject)
    response = push_manifest(client, repository, tag, manifest)
    assert response.status_code == 201, response.text


def fetch_cosign_signatures(
    client: httpx.Client, repository: str, subject: str
) -> list[tuple[bytes, str]]:
    """Read back (payload, signature) pairs from the ``.sig`` manifest, as a
    verifier would: manifest by tag, then each payload blob."""
    tag = signature_candidates(subject)
    response = client.get(
        f"/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
    )
    assert response.status_code == 200, response.text
    return fetch_layers(client, repository, response.content)


def fetch_layers(
    client: httpx.Client, repository: str, manifest: bytes
) -> list[tuple[bytes, str]]:
    pairs = []
    for layer in signature_layers(manifest):
        assert layer.kind == "cosign"
        blob = client.get(f"/v2/{repository}/blobs/{layer.digest}")
        assert blob.status_code == 200, blob.text
        assert sha256(blob.content) == layer.digest
        pairs.append((blob.content, layer.signature_b64))
    return pairs


def tampered(payload: bytes) -> bytes:
    """The same claims with one byte changed: the creator's name."""
    changed = payload.replace(b"quaylock-tests", b"quaylock-tesTs")
    assert changed != payload
    return changed


# skopeo: sigstore attachments


def enable_sigstore_attachments(skopeo: Skopeo, server: Server) -> None:
    """registries.d entry that makes containers/image read and write
    ``.sig`` attachments for this registry."""
    config = skopeo.global_flags[skopeo.global_flags.index("--registries.d") + 1]
    Path(config, "quaylock.yaml").write_text(
        f"docker:\n  {server.host}:\n    use-sigstore-attachments: true\n"
    )


@pytest.mark.interop
def test_skopeo_sigstore_signature_verifies_only_for_its_key_and_image(
    make_server, tmp_path
):
    server = make_server()
    skopeo = Skopeo(tmp_path / "skopeo", tool="skopeo13")
    enable_sigstore_attachments(skopeo, server)
    keys = tmp_path / "keys"
    keys.mkdir()
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple")
    for name in ("signer", "other"):
        skopeo(
            "generate-sigstore-key",
            "--output-prefix", str(keys / name),
            "--passphrase-file", str(passphrase),
        )  # fmt: skip
    image = build_image(tmp_path / "image")
    repository = unique_repo("sig-skopeo")

    skopeo.copy(
        image.reference, docker_ref(server, repository, "v1"),
        "--sign-by-sigstore-private-key", str(keys / "signer.private"),
        "--sign-passphrase-file", str(passphrase),
    )  # fmt: skip

    with server.client() as client:
        ((payload, signature),) = fetch_cosign_signatures(
            client, repository, image.manifest_digest
        )
        other_image = push_image(client, repository, tag="other", seed="replay")
    signer = load_trust_root("cosign-key", "signer", str(keys / "signer.pub"))
    other = load_trust_root("cosign-key", "other", str(keys / "other.pub"))
    subject = image.manifest_digest
    assert verify_cosign_signature(
        payload, signature, subject, repository, [signer]
    ).verified
    assert not verify_cosign_signature(
        payload, signature, subject, repository, [other]
    ).verified
    assert not verify_cosign_signature(
        payload, signature, other_image["digest"], repository, [signer]
    ).verified
    assert not verify_cosign_signature(
        tampered_reference(payload), signature, subject, repository, [signer]
    ).verified


def tampered_reference(payload: bytes) -> bytes:
    document = json.loads(payload)
    document["critical"]["identity"]["docker-reference"] += "-changed"
    return json.dumps(document, separators=(",", ":")).encode()


@pytest.mark.interop
def test_skopeo_copies_sigstore_attachment_that_still_verifies(make_server, tmp_path):
    server = make_server()
    skopeo = Skopeo(tmp_path / "skopeo")
    enable_sigstore_attachments(skopeo, server)
    image = build_image(tmp_path / "image")
    source, target = unique_repo("sig-source"), unique_repo("sig-target")
    skopeo.copy(image.reference, docker_ref(server, source, "v1"))
    signer_key = ec.generate_private_key(ec.SECP256R1())
    payload = simple_signing_payload(
        image.manifest_digest, f"{server.host}/{source}:v1"
    )
    with server.client() as client:
        attach_cosign_signature(
            client, source, image.manifest_digest, payload,
            sign_payload(signer_key, payload),
        )  # fmt: skip

    # skopeo reads the attachment from `source` and writes its own .sig
    # manifest (and config) into `target`.
    skopeo.copy(docker_ref(server, source, "v1"), docker_ref(server, target, "v1"))

    with server.client() as client:
        tags = client.get(f"/v2/{target}/tags/list").json()["tags"]
        assert signature_candidates(image.manifest_digest) in tags
        ((copied_payload, signature),) = fetch_cosign_signatures(
            client, target, image.manifest_digest
        )
    assert copied_payload == payload
    signer = cosign_root(tmp_path, signer_key, "signer")
    other = cosign_root(tmp_path, ec.generate_private_key(ec.SECP256R1()), "other")
    subject = image.manifest_digest
    verdict = verify_cosign_signature(
        copied_payload, signature, subject, None, [signer]
    )
    assert verdict.verified, verdict.reason
    assert verdict.signer == "signer"
    assert verify_cosign_signature(
        copied_payload, signature, subject, source, [signer]
    ).verified
    # The payload still names the repository it was signed for.
    elsewhere = verify_cosign_signature(
        copied_payload, signature, subject, target, [signer]
    )
    assert not elsewhere.verified
    assert source in elsewhere.reason
    assert not verify_cosign_signature(
        copied_payload, signature, subject, None, [other]
    ).verified


@pytest.mark.interop
def test_skopeo_pushed_image_signature_replayed_onto_another_image_is_refused(
    make_server, tmp_path
):
    server = make_server()
    skopeo = Skopeo(tmp_path / "skopeo")
    image = build_image(tmp_path / "image")
    repository = unique_repo("sig-replay")
    skopeo.copy(image.reference, docker_ref(server, repository, "v1"))
    signer_key = ec.generate_private_key(ec.SECP256R1())
    payload = simple_signing_payload(
        image.manifest_digest, f"{server.host}/{repository}:v1"
    )
    signature = sign_payload(signer_key, payload)

    # An attacker copies the genuine signature layer to another image's tag.
    with server.client() as client:
        other = push_image(client, repository, tag="evil", seed="evil")
        attach_cosign_signature(client, repository, other["digest"], payload, signature)
        ((replayed, replayed_signature),) = fetch_cosign_signatures(
            client, repository, other["digest"]
        )

    signer = cosign_root(tmp_path, signer_key, "signer")
    verdict = verify_cosign_signature(
        replayed, replayed_signature, other["digest"], repository, [signer]
    )
    assert not verdict.verified
    assert image.manifest_digest in verdict.reason
    assert verify_cosign_signature(
        replayed, replayed_signature, image.manifest_digest, repository, [signer]
    ).verified


# cosign-style signatures made with `cryptography`

KEY_MAKERS = {
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa-3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


@pytest.fixture(scope="module", params=sorted(KEY_MAKERS))
def key_pair(request):
    """A signing key and, for the negative checks, a stranger's of the same
    kind."""
    make = KEY_MAKERS[request.param]
    return make(), make()


@pytest.fixture
def signed_image(server, client, key_pair, tmp_path):
    """A pushed image with a cosign signature under its `.sig` tag, read
    back from the registry."""
    signer_key, _ = key_pair
    repository = unique_repo("sig-cosign")
    image = push_image(client, repository, seed=repository)
    payload = simple_signing_payload(image["digest"], f"{server.host}/{repository}:v1")
    attach_cosign_signature(
        client, repository, image["digest"], payload, sign_payload(signer_key, payload)
    )
    ((stored, signature),) = fetch_cosign_signatures(
        client, repository, image["digest"]
    )
    return repository, image["digest"], stored, signature


def test_cosign_signature_verifies_with_signer_key(signed_image, key_pair, tmp_path):
    repository, digest, payload, signature = signed_image
    root = cosign_root(tmp_path, key_pair[0], "release-key")

    verdict = verify_cosign_signature(payload, signature, digest, repository, [root])

    assert verdict.verified, verdict.reason
    assert verdict.signer == "release-key"


def test_cosign_signature_fails_with_untrusted_key(signed_image, key_pair, tmp_path):
    repository, digest, payload, signature = signed_image
    stranger = cosign_root(tmp_path, key_pair[1], "stranger")

    verdict = verify_cosign_signature(
        payload, signature, digest, repository, [stranger]
    )

    assert not verdict.verified
    assert verdict.signer is None
    assert "does not verify" in verdict.reason


def test_cosign_signature_fails_for_another_digest(
    signed_image, key_pair, client, tmp_path
):
    repository, _, payload, signature = signed_image
    other = push_image(client, repository, tag="other", seed="other")
    root = cosign_root(tmp_path, key_pair[0], "release-key")

    verdict = verify_cosign_signature(
        payload, signature, other["digest"], repository, [root]
    )

    assert not verdict.verified
    assert other["digest"] in verdict.reason


def test_cosign_signature_fails_for_tampered_payload(
    signed_image, key_pair, client, tmp_path
):
    repository, digest, payload, signature = signed_image
    # The changed payload is stored and served like any blob; only the
    # signature can tell.
    changed = tampered(payload)
    attach_cosign_signature(client, repository, digest, changed, signature)
    ((served, served_signature),) = fetch_cosign_signatures(client, repository, digest)
    root = cosign_root(tmp_path, key_pair[0], "release-key")

    verdict = verify_cosign_signature(
        served, served_signature, digest, repository, [root]
    )

    assert served == changed
    assert not verdict.verified


def test_cosign_signature_fails_for_another_repository(
    signed_image, key_pair, tmp_path
):
    repository, digest, payload, signature = signed_image
    root = cosign_root(tmp_path, key_pair[0], "release-key")

    verdict = verify_cosign_signature(
        payload, signature, digest, "someone/else", [root]
    )

    assert not verdict.verified
    assert repository in verdict.reason


def test_cosign_signature_any_trusted_root_may_verify(signed_image, key_pair, tmp_path):
    repository, digest, payload, signature = signed_image
    roots = [
        cosign_root(tmp_path, key_pair[1], "stranger"),
        cosign_root(tmp_path, key_pair[0], "release-key"),
    ]

    verdict = verify_cosign_signature(payload, signature, digest, repository, roots)

    assert verdict.verified
    assert verdict.signer == "release-key"


def test_cosign_referrer_in_oci_1_1_form_verifies(server, client, tmp_path):
    # cosign --registry-referrers-mode=oci-1-1: no tag; the signature
    # manifest names the image as its subject.
    repository = unique_repo("sig-referrer")
    image = push_image(client, repository, seed=repository)
    signer_key = ec.generate_private_key(ec.SECP256R1())
    payload = simple_signing_payload(image["digest"], f"{server.host}/{repository}")
    manifest = signature_manifest(
        client, repository, [(payload, sign_payload(signer_key, payload))],
        artifactType=COSIGN_ARTIFACT_TYPE,
        subject={
            "mediaType": OCI_MANIFEST,
            "digest": image["digest"],
            "size": len(image["manifest"]),
        },
    )  # fmt: skip
    pushed = push_manifest(client, repository, sha256(manifest), manifest)
    assert pushed.status_code == 201, pushed.text

    listed = client.get(
        f"/v2/{repository}/referrers/{image['digest']}",
        params={"artifactType": COSIGN_ARTIFACT_TYPE},
    ).json()["manifests"]
    (descriptor,) = listed
    found = client.get(
        f"/v2/{repository}/manifests/{descriptor['digest']}",
        headers={"Accept": OCI_MANIFEST},
    ).content
    ((stored, signature),) = fetch_layers(client, repository, found)
    root = cosign_root(tmp_path, signer_key, "release-key")

    verdict = verify_cosign_signature(
        stored, signature, image["digest"], repository, [root]
    )

    assert verdict.verified, verdict.reason


DIGEST = sha256(b"the signed manifest")


def signed_document(document: dict, tmp_path: Path) -> tuple[bytes, str, TrustRoot]:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = json.dumps(document).encode()
    return payload, sign_payload(key, payload), cosign_root(tmp_path, key, "k")


def test_cosign_payload_with_unknown_critical_member_is_refused(tmp_path):
    # A validly signed claim we do not understand must not pass as one we
    # do (containers-signature(5), "critical").
    document = json.loads(simple_signing_payload(DIGEST, "example.com/app:v1"))
    document["critical"]["image"]["only-on-arm64"] = True
    payload, signature, root = signed_document(document, tmp_path)

    verdict = verify_cosign_signature(payload, signature, DIGEST, None, [root])

    assert not verdict.verified
    assert "only-on-arm64" in verdict.reason


def test_cosign_payload_of_another_type_is_refused(tmp_path):
    document = json.loads(simple_signing_payload(DIGEST, "example.com/app:v1"))
    document["critical"]["type"] = "atomic container signature"
    payload, signature, root = signed_document(document, tmp_path)

    assert not verify_cosign_signature(
        payload, signature, DIGEST, None, [root]
    ).verified


def test_cosign_payload_with_duplicate_digest_member_is_refused(tmp_path):
    # Two parsers could pick different members; refuse the ambiguity.
    key = ec.generate_private_key(ec.SECP256R1())
    payload = (
        '{"critical":{"identity":{"docker-reference":"a/b"},'
        f'"image":{{"docker-manifest-digest":"{DIGEST}",'
        f'"docker-manifest-digest":"{sha256(b"other")}"}},'
        '"type":"cosign container image signature"},"optional":null}'
    ).encode()

    verdict = verify_cosign_signature(
        payload,
        sign_payload(key, payload),
        DIGEST,
        None,
        [cosign_root(tmp_path, key, "k")],
    )

    assert not verdict.verified
    assert "twice" in verdict.reason


def test_cosign_payload_with_null_optional_and_no_reference_verifies(tmp_path):
    # cosign writes "optional": null, and an empty reference names nothing.
    document = json.loads(simple_signing_payload(DIGEST, ""))
    document["optional"] = None
    payload, signature, root = signed_document(document, tmp_path)

    assert verify_cosign_signature(payload, signature, DIGEST, "a/b", [root]).verified


@pytest.mark.parametrize(
    "reference",
    [
        "registry.example.com:5000/team/app:v1",
        "localhost/team/app",
        "team/app@sha256:" + "0" * 64,
        "127.0.0.1:5000/team/app:v1@sha256:" + "0" * 64,
    ],
)
def test_cosign_reference_host_and_tag_are_ignored(reference, tmp_path):
    document = json.loads(simple_signing_payload(DIGEST, reference))
    payload, signature, root = signed_document(document, tmp_path)

    verdict = verify_cosign_signature(payload, signature, DIGEST, "team/app", [root])

    assert verdict.verified, verdict.reason


def test_cosign_signature_that_is_not_base64_is_refused(tmp_path):
    document = json.loads(simple_signing_payload(DIGEST, "a/b"))
    payload, _, root = signed_document(document, tmp_path)

    verdict = verify_cosign_signature(payload, "not base64!", DIGEST, None, [root])

    assert not verdict.verified
    assert "base64" in verdict.reason


def test_cosign_signature_without_cosign_roots_is_refused(tmp_path):
    document = json.loads(simple_signing_payload(DIGEST, "a/b"))
    payload, signature, _ = signed_document(document, tmp_path)

    verdict = verify_cosign_signature(payload, signature, DIGEST, None, [])

    assert not verdict.verified
    assert "no cosign-key trust root" in verdict.reason


def test_signature_tag_is_digest_with_dash_and_sig_suffix():
    digest = "sha256:" + "ab" * 32

    assert signature_candidates(digest) == "sha256-" + "ab" * 32 + ".sig"


def test_signature_tag_refuses_what_no_tag_can_hold():
    with pytest.raises(ValueError, match="128"):
        signature_candidates("sha512:" + "ab" * 64)
    with pytest.raises(DigestInvalid):
        signature_candidates("sha256:../../etc")


# Trust roots


def test_trust_root_loads_several_public_keys_from_one_file(tmp_path):
    pem = b"".join(public_pem(make()) for make in KEY_MAKERS.values())
    (tmp_path / "all.pub").write_bytes(pem)

    root = load_trust_root("cosign-key", "team", str(tmp_path / "all.pub"))

    assert root.kind == "cosign-key"
    assert len(root.keys) == len(KEY_MAKERS)


def test_trust_root_refuses_a_private_key(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "oops.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    with pytest.raises(TrustRootError, match="private key"):
        load_trust_root("cosign-key", "oops", str(path))


def test_trust_root_refuses_short_rsa_key(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)

    with pytest.raises(TrustRootError, match="too short"):
        load_trust_root(
            "cosign-key", "weak", str(write_public_key(tmp_path / "w", key))
        )


def test_trust_root_directory_reads_pem_and_der_and_refuses_symlinks(tmp_path):
    store = tmp_path / "acme"
    store.mkdir()
    first, second = make_ca("First CA"), make_ca("Second CA")
    (store / "first.pem").write_bytes(
        first.cert.public_bytes(serialization.Encoding.PEM)
    )
    (store / "second.cer").write_bytes(
        second.cert.public_bytes(serialization.Encoding.DER)
    )
    (store / "notes.txt").write_text("not a certificate")
    (store / "nested").mkdir()

    root = load_trust_root("notation-x509", "acme", str(store))

    assert {c.subject for c in root.certs} == {first.cert.subject, second.cert.subject}
    os.symlink(store / "first.pem", store / "link.pem")
    with pytest.raises(TrustRootError, match="symbolic link"):
        load_trust_root("notation-x509", "acme", str(store))


def test_trust_root_of_unknown_kind_is_refused(tmp_path):
    with pytest.raises(TrustRootError, match="kind"):
        load_trust_root("gpg", "x", str(tmp_path))


# notation: a test PKI and JWS envelopes built to the specification

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Issued:
    key: object
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "quaylock tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_key(kind: str):
    if kind == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curve = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}[kind]
    return ec.generate_private_key(curve)


def _sign_hash(issuer_key) -> hashes.HashAlgorithm:
    curve = getattr(issuer_key, "curve", None)
    return hashes.SHA384() if curve and curve.key_size == 384 else hashes.SHA256()


def make_ca(
    common_name: str, issuer: Issued | None = None, key_kind: str = "ec-p256"
) -> Issued:
    """A CA certificate as the spec wants it: critical basic constraints
    with cA, critical key usage with keyCertSign."""
    key = _new_key(key_kind)
    issuer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), True)
    )
    return Issued(key, builder.sign(issuer_key, _sign_hash(issuer_key)))


def _key_usage(**flags) -> x509.KeyUsage:
    names = (
        "digital_signature content_commitment key_encipherment data_encipherment "
        "key_agreement key_cert_sign crl_sign encipher_only decipher_only"
    ).split()
    return x509.KeyUsage(**{name: flags.get(name, False) for name in names})


def make_leaf(
    issuer: Issued,
    key_kind: str,
    *,
    eku: tuple | None = (ExtendedKeyUsageOID.CODE_SIGNING,),
) -> Issued:
    """A code-signing leaf: critical key usage for digital signatures only,
    extended key usage codeSigning unless `eku` says otherwise (None: no
    extended key usage at all)."""
    key = _new_key(key_kind)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("quaylock release signer"))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_key_usage(digital_signature=True), True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), False)
    return Issued(key, builder.sign(issuer.key, _sign_hash(issuer.key)))


@dataclass
class PKI:
    root: Issued
    intermediate: Issued
    leaf: Issued
    alg: str

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.leaf.cert, self.intermediate.cert, self.root.cert]

    def trust_root(self, tmp_path: Path, name: str = "acme-rockets") -> TrustRoot:
        path = tmp_path / f"{name}.pem"
        path.write_bytes(self.root.cert.public_bytes(serialization.Encoding.PEM))
        return load_trust_root("notation-x509", name, str(path))


LEAF_ALGORITHMS = {"ec-p256": "ES256", "ec-p384": "ES384", "rsa-2048": "PS256"}


def new_pki(kind: str) -> PKI:
    """A root, an intermediate and a code-signing leaf with a `kind` key."""
    root = make_ca("quaylock test root")
    intermediate = make_ca("quaylock test intermediate", issuer=root)
    leaf = make_leaf(intermediate, kind)
    return PKI(root, intermediate, leaf, LEAF_ALGORITHMS[kind])


@pytest.fixture(scope="module", params=sorted(LEAF_ALGORITHMS))
def pki(request) -> PKI:
    return new_pki(request.param)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rfc3339(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def jws_sign(key, alg: str, signing_input: bytes) -> bytes:
    """RFC 7518: PS* is RSASSA-PSS with a salt as long as the hash; ES* is
    ECDSA with r and s as fixed-length big-endian integers."""
    algorithm = {
        "256": hashes.SHA256(),
        "384": hashes.SHA384(),
        "512": hashes.SHA512(),
    }[alg[2:]]
    if alg.startswith("PS"):
        pss = padding.PSS(
            mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size
        )
        return key.sign(signing_input, pss, algorithm)
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(algorithm)))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def notation_envelope(
    pki: PKI,
    digest: str,
    *,
    size: int = 1234,
    signing_time: dt.datetime | None = None,
    expiry: dt.datetime | None = None,
    header: dict | None = None,
    chain: list[x509.Certificate] | None = None,
) -> bytes:
    """A flattened JWS JSON envelope, as notation signs one."""
    payload = json.dumps(
        {"targetArtifact": {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}}
    ).encode()
    protected = {
        "alg": pki.alg,
        "cty": NOTATION_PAYLOAD,
        NOTATION_SCHEME: "notary.x509",
        NOTATION_SIGNING_TIME: rfc3339(signing_time or NOW),
        "crit": [NOTATION_SCHEME],
    }
    if expiry is not None:
        protected[NOTATION_EXPIRY] = rfc3339(expiry)
        protected["crit"].append(NOTATION_EXPIRY)
    protected.update(header or {})
    protected_b64 = b64url(json.dumps(protected).encode())
    payload_b64 = b64url(payload)
    signature = jws_sign(
        pki.leaf.key, pki.alg, f"{protected_b64}.{payload_b64}".encode()
    )
    envelope = {
        "payload": payload_b64,
        "protected": protected_b64,
        "header": {
            "x5c": [
                base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
                for cert in (chain or pki.chain)
            ],
            "io.cncf.notary.signingAgent": "quaylock-tests/1.0",
        },
        "signature": b64url(signature),
    }
    return json.dumps(envelope).encode()


def with_envelope(envelope: bytes, **changes) -> bytes:
    document = json.loads(envelope)
    document.update(changes)
    return json.dumps(document).encode()


def push_notation_signature(
    client: httpx.Client, repository: str, image: dict, envelope: bytes
) -> None:
    """The signature manifest notation pushes to an OCI 1.1 registry."""
    push_blob(client, repository, envelope)
    push_blob(client, repository, b"{}")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": NOTATION_ARTIFACT_TYPE,
            "config": {"mediaType": EMPTY_JSON, "digest": sha256(b"{}"), "size": 2},
            "layers": [
                {
                    "mediaType": NOTATION_JWS,
                    "digest": sha256(envelope),
                    "size": len(envelope),
                }
            ],
            "subject": {
                "mediaType": OCI_MANIFEST,
                "digest": image["digest"],
                "size": len(image["manifest"]),
            },
            "annotations": {"io.cncf.notary.x509chain.thumbprint#S256": "[]"},
        }
    ).encode()
    response = push_manifest(client, repository, sha256(manifest), manifest)
    assert response.status_code == 201, response.text


def fetch_notation_envelopes(
    client: httpx.Client, repository: str, subject: str
) -> list[bytes]:
    """Find notation signatures through the referrers API and read their
    envelopes, as `notation verify` does."""
    listed = client.get(
        f"/v2/{repository}/referrers/{subject}",
        params={"artifactType": NOTATION_ARTIFACT_TYPE},
    )
    assert listed.status_code == 200, listed.text
    envelopes = []
    for descriptor in listed.json()["manifests"]:
        manifest = client.get(
            f"/v2/{repository}/manifests/{descriptor['digest']}",
            headers={"Accept": OCI_MANIFEST},
        ).content
        for layer in signature_layers(manifest):
            assert layer.kind == "notation-jws"
            envelopes.append(
                client.get(f"/v2/{repository}/blobs/{layer.digest}").content
            )
    return envelopes


def test_notation_signature_from_registry_verifies_with_ca_root(pki, client, tmp_path):
    repository = unique_repo("sig-notation")
    image = push_image(client, repository, seed=repository)
    push_notation_signature(
        client, repository, image,
        notation_envelope(pki, image["digest"], size=len(image["manifest"])),
    )  # fmt: skip

    (envelope,) = fetch_notation_envelopes(client, repository, image["digest"])
    verdict = verify_notation_jws(envelope, image["digest"], [pki.trust_root(tmp_path)])

    assert verdict.verified, verdict.reason
    assert verdict.signer == pki.leaf.cert.subject.rfc4514_string()
    assert "acme-rockets" in verdict.reason


def test_notation_signature_fails_with_another_ca(pki, tmp_path):
    envelope = notation_envelope(pki, DIGEST)
    stranger = make_ca("someone else's root")
    path = tmp_path / "other.pem"
    path.write_bytes(stranger.cert.public_bytes(serialization.Encoding.PEM))
    other = load_trust_root("notation-x509", "wabbit-networks", str(path))

    verdict = verify_notation_jws(envelope, DIGEST, [other])

    assert not verdict.verified
    assert "does not lead to a certificate of trust roots wabbit-networks" in (
        verdict.reason
    )


def test_notation_signature_fails_for_another_digest(pki, tmp_path):
    envelope = notation_envelope(pki, DIGEST)
    other = sha256(b"another manifest")

    verdict = verify_notation_jws(envelope, other, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert DIGEST in verdict.reason


def test_notation_signature_fails_when_payload_is_altered(pki, tmp_path):
    other = sha256(b"another manifest")
    envelope = notation_envelope(pki, DIGEST)
    # Swap in a payload naming another manifest, keep the signature.
    forged_payload = json.loads(notation_envelope(pki, other))["payload"]
    forged = with_envelope(envelope, payload=forged_payload)

    verdict = verify_notation_jws(forged, other, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "does not verify" in verdict.reason


def test_notation_signature_fails_when_protected_header_is_altered(pki, tmp_path):
    # Lift a later expiry into the signed header of an expired signature.
    envelope = notation_envelope(pki, DIGEST, expiry=NOW - dt.timedelta(minutes=1))
    later = json.loads(
        notation_envelope(pki, DIGEST, expiry=NOW + dt.timedelta(days=1))
    )["protected"]
    forged = with_envelope(envelope, protected=later)

    verdict = verify_notation_jws(forged, DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "does not verify" in verdict.reason


def test_notation_signature_past_its_expiry_is_refused(pki, tmp_path):
    envelope = notation_envelope(pki, DIGEST, expiry=NOW + dt.timedelta(hours=1))
    root = pki.trust_root(tmp_path)

    assert verify_notation_jws(envelope, DIGEST, [root]).verified
    verdict = verify_notation_jws(
        envelope, DIGEST, [root], now=NOW + dt.timedelta(hours=2)
    )
    assert not verdict.verified
    assert "expired" in verdict.reason


def test_notation_signature_after_leaf_certificate_expiry_is_refused(pki, tmp_path):
    envelope = notation_envelope(pki, DIGEST)

    verdict = verify_notation_jws(
        envelope, DIGEST, [pki.trust_root(tmp_path)], now=NOW + dt.timedelta(days=60)
    )

    assert not verdict.verified
    assert "is not valid now" in verdict.reason


def test_notation_signing_time_outside_certificate_validity_is_refused(pki, tmp_path):
    envelope = notation_envelope(pki, DIGEST, signing_time=NOW - dt.timedelta(days=3))

    verdict = verify_notation_jws(envelope, DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "at the signing time" in verdict.reason


def test_notation_alg_that_does_not_match_the_key_is_refused(pki, tmp_path):
    # Algorithm substitution: the key, not the header, decides.
    other_alg = "ES512" if pki.alg != "ES512" else "ES256"
    envelope = notation_envelope(pki, DIGEST, header={"alg": other_alg})

    verdict = verify_notation_jws(envelope, DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "does not match the signing key" in verdict.reason


def test_notation_unknown_critical_header_is_refused(pki, tmp_path):
    envelope = notation_envelope(
        pki, DIGEST,
        header={
            "io.example.mustUnderstand": "yes",
            "crit": [NOTATION_SCHEME, "io.example.mustUnderstand"],
        },
    )  # fmt: skip

    verdict = verify_notation_jws(envelope, DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "io.example.mustUnderstand" in verdict.reason


def test_notation_signature_needing_a_plugin_is_refused(pki, tmp_path):
    plugin = "io.cncf.notary.verificationPlugin"
    envelope = notation_envelope(
        pki,
        DIGEST,
        header={plugin: "com.example.nv2", "crit": [NOTATION_SCHEME, plugin]},
    )

    verdict = verify_notation_jws(envelope, DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "plugin" in verdict.reason


def test_notation_signing_authority_scheme_is_refused(pki, tmp_path):
    envelope = notation_envelope(
        pki, DIGEST, header={NOTATION_SCHEME: "notary.x509.signingAuthority"}
    )

    verdict = verify_notation_jws(envelope, DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "not supported" in verdict.reason


def test_notation_chain_out_of_order_is_refused(pki, tmp_path):
    envelope = notation_envelope(
        pki, DIGEST, chain=[pki.leaf.cert, pki.root.cert, pki.intermediate.cert]
    )

    verdict = verify_notation_jws(envelope, DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "is not issued by" in verdict.reason


def test_notation_chain_without_its_root_is_refused(pki, tmp_path):
    # The spec wants the whole chain, root included, in x5c.
    envelope = notation_envelope(
        pki, DIGEST, chain=[pki.leaf.cert, pki.intermediate.cert]
    )

    verdict = verify_notation_jws(envelope, DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "self-signed root" in verdict.reason


def test_notation_leaf_for_tls_servers_is_refused(tmp_path):
    root = make_ca("quaylock test root")
    leaf = make_leaf(root, "ec-p256", eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    pki = PKI(root, root, leaf, "ES256")
    envelope = notation_envelope(pki, DIGEST, chain=[leaf.cert, root.cert])

    verdict = verify_notation_jws(envelope, DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "serverAuth" in verdict.reason


def test_notation_leaf_without_extended_key_usage_verifies(tmp_path):
    # The extended key usage is optional; only some purposes are forbidden.
    root = make_ca("quaylock test root")
    leaf = make_leaf(root, "ec-p256", eku=None)
    pki = PKI(root, root, leaf, "ES256")
    envelope = notation_envelope(pki, DIGEST, chain=[leaf.cert, root.cert])

    verdict = verify_notation_jws(envelope, DIGEST, [pki.trust_root(tmp_path)])

    assert verdict.verified, verdict.reason


def test_notation_general_serialization_is_refused(pki, tmp_path):
    flat = json.loads(notation_envelope(pki, DIGEST))
    general = {
        "payload": flat["payload"],
        "signatures": [{k: flat[k] for k in ("protected", "header", "signature")}],
    }

    verdict = verify_notation_jws(
        json.dumps(general).encode(), DIGEST, [pki.trust_root(tmp_path)]
    )

    assert not verdict.verified
    assert "flattened" in verdict.reason


def test_notation_envelope_with_extra_member_is_refused(pki, tmp_path):
    envelope = with_envelope(notation_envelope(pki, DIGEST), unprotected={})

    verdict = verify_notation_jws(envelope, DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "unexpected unprotected" in verdict.reason


def test_notation_envelope_that_is_not_json_is_refused(pki, tmp_path):
    verdict = verify_notation_jws(b"\x84\xa1", DIGEST, [pki.trust_root(tmp_path)])

    assert not verdict.verified
    assert "not JSON" in verdict.reason


def test_notation_trust_in_an_intermediate_is_honoured(pki, tmp_path):
    # Pinning an intermediate is discouraged but allowed by the trust
    # store spec: the chain must lead to a certificate in the store.
    path = tmp_path / "intermediate.pem"
    path.write_bytes(pki.intermediate.cert.public_bytes(serialization.Encoding.PEM))
    pinned = load_trust_root("notation-x509", "pinned", str(path))

    verdict = verify_notation_jws(notation_envelope(pki, DIGEST), DIGEST, [pinned])

    assert verdict.verified, verdict.reason


def test_signature_layers_ignores_ordinary_image_layers(client):
    repository = unique_repo("sig-layers")
    image = push_image(client, repository, seed=repository)

    assert signature_layers(image["manifest"]) == []
    assert signature_layers(b"not json") == []
