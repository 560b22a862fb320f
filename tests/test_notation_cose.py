"""Notation signatures in the COSE envelope: verification
(`quaylock.policy.notation_cose`), the strict CBOR reader under it
(`quaylock.policy.cbor`), and a tag policy that a COSE signature satisfies on
a running registry.

No notation binary is packaged for Debian, so envelopes are built here to
the Notary Project COSE specification with the test PKI of
test_signatures.py (a root, an intermediate and a code-signing leaf, for
ECDSA P-256, P-384 and RSA-2048 keys), with a small CBOR encoder.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives import serialization

from quaylock.policy import cbor
from quaylock.policy.notation_cose import COSE_ALGS, verify_notation_cose
from quaylock.policy.signatures import NOTATION_ARTIFACT_TYPE, NOTATION_COSE
from tests.helpers import (
    EMPTY_JSON,
    OCI_MANIFEST,
    error_code,
    push_blob,
    push_image,
    push_manifest,
    sha256,
    unique_repo,
)
from tests.test_signatures import (
    DIGEST,
    LEAF_ALGORITHMS,
    NOTATION_EXPIRY,
    NOTATION_PAYLOAD,
    NOTATION_SCHEME,
    NOTATION_SIGNING_TIME,
    NOW,
    jws_sign,
    make_ca,
    new_pki,
)

ALG_NUMBERS = {name: number for number, name in COSE_ALGS.items()}


@pytest.fixture(scope="module", params=sorted(LEAF_ALGORITHMS))
def pki(request):
    return new_pki(request.param)


# A CBOR encoder for building envelopes (definite lengths, as notation writes).


class Tag:
    def __init__(self, tag: int, value):
        self.tag, self.value = tag, value


def head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise ValueError(value)


def encode(value) -> bytes:
    if isinstance(value, bool) or value is None:
        return {False: b"\xf4", True: b"\xf5", None: b"\xf6"}[value]
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(encode(v) for v in value)
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(
            encode(k) + encode(v) for k, v in value.items()
        )
    if isinstance(value, Tag):
        return head(6, value.tag) + encode(value.value)
    raise TypeError(type(value))


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def cose_envelope(
    pki,
    digest: str,
    *,
    size: int = 1234,
    signing_time: dt.datetime | None = None,
    expiry: dt.datetime | None = None,
    header: dict | None = None,
    alg: str | None = None,
    chain=None,
    payload: bytes | None = None,
    tag: int = 18,
) -> bytes:
    """A COSE_Sign1_Tagged envelope as notation signs one."""
    if payload is None:
        payload = json.dumps(
            {"targetArtifact": {"mediaType": OCI_MANIFEST, "digest": digest,
                                "size": size}}
        ).encode()  # fmt: skip
    protected = {
        1: ALG_NUMBERS[alg or pki.alg],
        2: [NOTATION_SCHEME],
        3: NOTATION_PAYLOAD,
        NOTATION_SCHEME: "notary.x509",
        NOTATION_SIGNING_TIME: Tag(1, int((signing_time or NOW).timestamp())),
    }
    if expiry is not None:
        protected[NOTATION_EXPIRY] = Tag(1, int(expiry.timestamp()))
        protected[2].append(NOTATION_EXPIRY)
    protected.update(header or {})
    protected_raw = encode(protected)
    to_sign = encode(["Signature1", protected_raw, b"", payload])
    signature = jws_sign(pki.leaf.key, pki.alg, to_sign)
    unprotected = {
        33: [der(c) for c in (chain or pki.chain)],
        "io.cncf.notary.signingAgent": "quaylock-tests/1.0",
    }
    return encode(Tag(tag, [protected_raw, unprotected, payload, signature]))


def parts(envelope: bytes) -> list:
    return cbor.decode(envelope).value


def rebuilt(envelope: bytes, index: int, value) -> bytes:
    items = parts(envelope)
    items[index] = value
    return encode(Tag(18, [items[0], items[1], items[2], items[3]]))


# Verification


def test_cose_signature_verifies_with_ca_root(pki, tmp_path):
    verdict = verify_notation_cose(
        cose_envelope(pki, DIGEST), DIGEST, [pki.trust_root(tmp_path)]
    )
    assert verdict.verified, verdict.reason
    assert verdict.signer == pki.leaf.cert.subject.rfc4514_string()
    assert "COSE" in verdict.reason


def test_cose_signature_fails_with_another_ca(pki, tmp_path):
    stranger = make_ca("someone else's root")
    path = tmp_path / "other.pem"
    path.write_bytes(stranger.cert.public_bytes(serialization.Encoding.PEM))
    from quaylock.policy.signatures import load_trust_root

    other = load_trust_root("notation-x509", "wabbit-networks", str(path))
    verdict = verify_notation_cose(cose_envelope(pki, DIGEST), DIGEST, [other])
    assert not verdict.verified
    assert "trust roots wabbit-networks" in verdict.reason


def test_cose_signature_fails_for_another_digest(pki, tmp_path):
    other = sha256(b"another manifest")
    verdict = verify_notation_cose(
        cose_envelope(pki, DIGEST), other, [pki.trust_root(tmp_path)]
    )
    assert not verdict.verified
    assert f"signature is for manifest {DIGEST}" in verdict.reason


def test_cose_signature_fails_when_payload_is_swapped(pki, tmp_path):
    other = sha256(b"another manifest")
    forged = rebuilt(cose_envelope(pki, DIGEST), 2, parts(cose_envelope(pki, other))[2])
    verdict = verify_notation_cose(forged, other, [pki.trust_root(tmp_path)])
    assert not verdict.verified
    assert "does not verify" in verdict.reason


def test_cose_signature_fails_when_protected_header_is_swapped(pki, tmp_path):
    expired = cose_envelope(pki, DIGEST, expiry=NOW - dt.timedelta(minutes=1))
    later = parts(cose_envelope(pki, DIGEST, expiry=NOW + dt.timedelta(days=1)))[0]
    verdict = verify_notation_cose(
        rebuilt(expired, 0, later), DIGEST, [pki.trust_root(tmp_path)]
    )
    assert not verdict.verified
    assert "does not verify" in verdict.reason


def test_cose_signature_past_its_expiry_fails(pki, tmp_path):
    envelope = cose_envelope(pki, DIGEST, expiry=NOW - dt.timedelta(minutes=1))
    verdict = verify_notation_cose(envelope, DIGEST, [pki.trust_root(tmp_path)])
    assert not verdict.verified
    assert "expired" in verdict.reason


def test_cose_alg_that_does_not_match_the_key_is_refused(pki, tmp_path):
    wrong = "PS256" if pki.alg.startswith("ES") else "ES256"
    verdict = verify_notation_cose(
        cose_envelope(pki, DIGEST, alg=wrong), DIGEST, [pki.trust_root(tmp_path)]
    )
    assert not verdict.verified
    assert "does not match the signing key" in verdict.reason


@pytest.mark.parametrize(
    "change, words",
    [
        ({1: -8}, "alg -8 is not one notation allows"),  # EdDSA
        ({1: 5}, "alg 5 is not one notation allows"),  # HMAC 256/256
        ({3: "application/json"}, "content type"),
        ({2: [NOTATION_SCHEME, "x-unknown"]}, "unsupported critical header 'x-unknown'"),
        ({2: ["io.cncf.notary.expiry"]}, "crit does not list"),
        ({NOTATION_SCHEME: "notary.x509.signingAuthority"}, "is not supported"),
        ({NOTATION_SIGNING_TIME: "2024-01-01T00:00:00Z"}, "is not an epoch time"),
        ({NOTATION_EXPIRY: Tag(1, 4102444800)}, "is present but not listed in crit"),
        ({"io.cncf.notary.verificationPlugin": "x",
          2: [NOTATION_SCHEME, "io.cncf.notary.verificationPlugin"]},
         "requires a verification plugin"),
    ],
)  # fmt: skip
def test_cose_header_problems_are_named(pki, tmp_path, change, words):
    envelope = cose_envelope(pki, DIGEST, header=change)
    verdict = verify_notation_cose(envelope, DIGEST, [pki.trust_root(tmp_path)])
    assert not verdict.verified
    assert words in verdict.reason


def test_cose_envelope_shapes_that_are_refused(pki, tmp_path):
    good = cose_envelope(pki, DIGEST)
    roots = [pki.trust_root(tmp_path)]
    items = parts(good)
    cases = {
        "untagged": (encode(items), "not a COSE_Sign1_Tagged"),
        "other tag": (cose_envelope(pki, DIGEST, tag=98), "not a COSE_Sign1_Tagged"),
        "three items": (encode(Tag(18, items[:3])), "array of four items"),
        "detached payload": (rebuilt(good, 2, None), "payload is detached"),
        "no chain": (rebuilt(good, 1, {}), "x5chain is missing"),
        "chain not bytes": (rebuilt(good, 1, {33: ["text"]}), "is not a byte string"),
        "garbage cert": (
            rebuilt(good, 1, {33: [b"\x30\x00"]}),
            "not a DER certificate",
        ),
        "trailing bytes": (good + b"\x00", "bytes follow the item"),
        "not cbor": (b'{"payload": 1}', "not CBOR we accept"),
    }
    for name, (envelope, words) in cases.items():
        verdict = verify_notation_cose(envelope, DIGEST, roots)
        assert not verdict.verified, name
        assert words in verdict.reason, (name, verdict.reason)


def test_cose_chain_longer_than_the_limit_is_refused(pki, tmp_path):
    envelope = cose_envelope(pki, DIGEST, chain=[pki.leaf.cert] * 9)
    verdict = verify_notation_cose(envelope, DIGEST, [pki.trust_root(tmp_path)])
    assert not verdict.verified
    assert "at most 8" in verdict.reason


# The CBOR reader


@pytest.mark.parametrize(
    "data, words",
    [
        (b"\x9f\x01\xff", "indefinite length"),
        (b"\x5f\x41\x00\xff", "indefinite length"),
        (b"\xa2\x01\x01\x01\x02", "map key 1 at byte 3 is repeated"),
        (b"\xa1\x41\x00\x01", "is not an integer or text"),
        (b"\xf9\x3c\x00", "simple value or float"),
        (b"\xf7", "simple value or float"),
        (b"\x62\xc3\x28", "is not UTF-8"),
        (b"\x5a\xff\xff\xff\xff", "runs past the end"),
        (b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00", "claims 4294967296 items"),
        (b"\x81" * 40 + b"\x00", "nesting deeper than 16"),
        (b"\x1c", "reserved additional information"),
        (b"", "runs past the end"),
    ],
)
def test_cbor_reader_refuses_what_it_does_not_accept(data, words):
    with pytest.raises(cbor.CBORError, match=words):
        cbor.decode(data)


def test_cbor_reader_reads_what_notation_writes():
    value = {1: -38, "k": [b"\x00\x01", "text", True, None, Tag(1, 1667411812)]}
    decoded = cbor.decode(encode(value))
    assert decoded[1] == -38
    assert decoded["k"][:4] == [b"\x00\x01", "text", True, None]
    assert decoded["k"][4] == cbor.Tagged(1, 1667411812)
    big = 2**64 - 1
    assert cbor.decode(encode(big)) == big
    assert cbor.decode(encode(-big - 1)) == -big - 1


# On a running registry


@pytest.mark.parametrize(
    "change",
    [{1: [0]}, {1: {"a": 1}}, {1: Tag(1, [])}, {2: [[NOTATION_SCHEME]]}],
    ids=["alg-list", "alg-map", "alg-tagged", "crit-nested"],
)
def test_cose_header_of_the_wrong_types_is_refused_not_raised(pki, tmp_path, change):
    envelope = cose_envelope(pki, DIGEST, header=change)
    verdict = verify_notation_cose(envelope, DIGEST, [pki.trust_root(tmp_path)])
    assert not verdict.verified


def cose_signature_manifest(image: dict, envelope: bytes, note: str = "") -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": NOTATION_ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_JSON, "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": NOTATION_COSE, "digest": sha256(envelope),
                    "size": len(envelope)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image["digest"],
                    "size": len(image["manifest"])},
        "annotations": {"note": note},
    }).encode()  # fmt: skip


def push_cose_signature(
    client, repository: str, image: dict, envelope: bytes, note: str = ""
) -> str:
    push_blob(client, repository, envelope)
    push_blob(client, repository, b"{}")
    signature = cose_signature_manifest(image, envelope, note)
    stored = push_manifest(client, repository, sha256(signature), signature)
    assert stored.status_code == 201, stored.text
    return sha256(signature)


def cose_policy_server(make_server, tmp_path, pki):
    """A server whose `latest` tags under signed/ move only to manifests
    with a notation signature chained to `pki`'s root."""
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root.cert.public_bytes(serialization.Encoding.PEM))
    return make_server({"signatures": {"policies": [
        {"repositories": ["signed/**"], "mode": "tag", "tags": ["latest"],
         "notation_roots": [str(root)]},
    ]}})  # fmt: skip


def test_a_hostile_signature_neither_fails_the_request_nor_hides_a_good_one(
    make_server, tmp_path, pki
):
    server = cose_policy_server(make_server, tmp_path, pki)
    repository = unique_repo("signed/hostile")
    with server.client() as client:
        image = push_image(client, repository, tag=None, seed=repository)
        hostile = cose_envelope(pki, image["digest"], header={1: [0]})
        push_cose_signature(client, repository, image, hostile)
        refused = push_manifest(client, repository, "latest", image["manifest"])
        assert refused.status_code == 403, refused.text
        assert "alg [0] is not one notation allows" in refused.text

        good = cose_envelope(pki, image["digest"], size=len(image["manifest"]))
        push_cose_signature(client, repository, image, good)
        moved = push_manifest(client, repository, "latest", image["manifest"])
        assert moved.status_code == 201, moved.text


def test_cose_signature_lets_a_tag_move_under_a_tag_policy(make_server, tmp_path, pki):
    server = cose_policy_server(make_server, tmp_path, pki)
    repository = unique_repo("signed/cose")
    with server.client() as client:
        image = push_image(client, repository, tag=None, seed=repository)
        refused = push_manifest(client, repository, "latest", image["manifest"])
        assert refused.status_code == 403
        assert error_code(refused) == "DENIED"

        envelope = cose_envelope(pki, image["digest"], size=len(image["manifest"]))
        push_cose_signature(client, repository, image, envelope)
        moved = push_manifest(client, repository, "latest", image["manifest"])
        assert moved.status_code == 201, moved.text


def test_junk_signatures_do_not_bury_a_real_one(make_server, tmp_path):
    pki = new_pki("ec-p256")
    server = cose_policy_server(make_server, tmp_path, pki)
    repository = unique_repo("signed/junk")
    with server.client() as client:
        image = push_image(client, repository, tag=None, seed=repository)
        good = cose_envelope(pki, image["digest"], size=len(image["manifest"]))
        good_digest = push_cose_signature(client, repository, image, good)
        # Anyone who may push can add signature artifacts that never verify.
        # These all list before the real one (digest order) and their layers
        # add up to more than one check reads: the real one must still be
        # found, because small layers are checked first.
        pushed, attempt = 0, 0
        while pushed < 6:
            attempt += 1
            junk = bytes([attempt % 256]) * ((1 << 20) - 64) + b"%d" % attempt
            if sha256(cose_signature_manifest(image, junk, str(attempt))) > good_digest:
                continue
            push_cose_signature(client, repository, image, junk, str(attempt))
            pushed += 1
        listed = client.get(f"/v2/{repository}/referrers/{image['digest']}").json()
        digests = [m["digest"] for m in listed["manifests"]]
        assert digests[-1] == good_digest and len(digests) == 7
        moved = push_manifest(client, repository, "latest", image["manifest"])
        assert moved.status_code == 201, moved.text
