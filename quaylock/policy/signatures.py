"""Signature verification: is this manifest signed by someone we trust?

The registry's signature policy (checked on push-to-tag and on pull) asks
one question of each signature it finds for a manifest: was it made by a key
or certificate authority the operator trusts, over exactly this manifest?
This module answers it for cosign signatures and for Notary Project
(notation) JWS envelopes. It does no I/O of its own apart from
`load_trust_root`: callers fetch the signature manifests and blobs and pass
their bytes in, and get a `Verdict` back, always with a reason, so that a
denial can be logged with the rule that fired.

The formats, in our words
=========================

cosign and containers/image ("simple signing")
----------------------------------------------
The signed thing is a small JSON document, the *payload*, kept as a blob of
media type ``application/vnd.dev.cosign.simplesigning.v1+json``::

    {"critical": {"identity": {"docker-reference": "host/repo:tag"},
                  "image": {"docker-manifest-digest": "sha256:<hex>"},
                  "type": "cosign container image signature"},
     "optional": {"creator": "...", "timestamp": 1700000000}}

``optional`` may be null (cosign writes null when there is nothing to add).
The signature is detached: it covers the payload bytes exactly as stored,
and the payload names the manifest by digest, so the chain is
signature -> payload -> manifest digest -> manifest. No algorithm is written
down anywhere; the verifier's key decides it. What cosign and
containers/image produce and verify:

- ECDSA (the P-256 keys ``cosign generate-key-pair`` makes): SHA-256 over
  the payload, signature DER-encoded. For P-384 and P-521 keys we also accept
  the curve's own hash (SHA-384, SHA-512), which newer sigstore code uses.
- RSA: PKCS #1 v1.5 with SHA-256.
- Ed25519: the plain scheme over the payload bytes.

The signature, base64 (standard alphabet, padded), sits in the annotation
``dev.cosignproject.cosign/signature`` of the layer descriptor that points
at the payload blob.

Where signatures live:

- *Tag scheme* (cosign's default, and the only place containers/image,
  i.e. skopeo and podman, read and write "sigstore attachments"): an OCI
  image manifest in the subject's repository tagged ``sha256-<hex>.sig``
  (the subject digest with ``:`` turned into ``-``, then ``.sig``). Each
  signature is one layer; a config of type
  ``application/vnd.oci.image.config.v1+json`` lists the payload digests as
  its diff ids. Adding a signature rewrites the manifest under the same tag.
- *OCI 1.1 referrers* (cosign's ``--registry-referrers-mode=oci-1-1``): the
  same layers in a manifest whose ``artifactType`` is
  ``application/vnd.dev.cosign.artifact.sig.v1+json`` and whose ``subject``
  names the image; it is found through the referrers API instead of a tag.

containers/image writes ``creator`` and ``timestamp`` into ``optional``;
cosign leaves it null unless asked. Keyless signatures add a Fulcio
certificate (``dev.sigstore.cosign/certificate``, ``.../chain``) and a Rekor
bundle (``dev.sigstore.cosign/bundle``) to the annotations; those need the
sigstore public-good trust roots and are not verified here.

Notary Project signatures (notation)
------------------------------------
The signed thing is the *descriptor* of the target manifest, wrapped as
``{"targetArtifact": {"mediaType", "digest", "size", ...}}`` (media type
``application/vnd.cncf.notary.payload.v1+json``), inside an envelope that
also carries signed attributes and the signer's certificate chain. The
envelope is a blob, the single layer of a signature manifest whose
``artifactType`` (or, on OCI 1.0 registries, ``config.mediaType``) is
``application/vnd.cncf.notary.signature`` and whose ``subject`` is the
signed manifest; it is found through the referrers API. The layer's media
type says which envelope:

- ``application/jose+json``: JWS (RFC 7515), JSON serialization, flattened
  (one signature): ``payload`` and ``protected`` are base64url (no padding)
  of the payload and of the protected header; ``header`` holds unsigned
  attributes; ``signature`` is base64url of the signature over the ASCII
  string ``<protected>.<payload>``. No other top-level member is allowed.
- ``application/cose``: COSE_Sign1 (RFC 8152) in CBOR, the same attributes
  under CBOR labels. Not verified here: reading it needs a CBOR decoder.

The protected header carries ``alg``; ``cty`` (the payload media type
above); ``io.cncf.notary.signingScheme`` (``notary.x509``, or
``notary.x509.signingAuthority`` for signing services);
``io.cncf.notary.signingTime`` (RFC 3339; claimed by the signer, so not a
trusted time); optionally ``io.cncf.notary.expiry``; and ``crit``, which
must list the signing scheme and every other critical attribute present.
``alg`` must be the one the signing key dictates: PS256/PS384/PS512 (RSA-PSS,
salt as long as the hash) for RSA 2048/3072/4096, ES256/ES384/ES512 for
ECDSA P-256/P-384/P-521 (the signature being the raw r and s, each padded to
the curve size). The unsigned ``header`` carries ``x5c``: the chain as
base64 DER certificates, signing (leaf) certificate first, root last.

Trust comes from a *trust store*: named collections of root CA
certificates (notation keeps each in a directory). A signature is trusted
when its chain leads to a certificate in the named store the policy names.

What we check
=============

`verify_cosign_signature`:

1. the signature verifies over the payload bytes with a key of a
   ``cosign-key`` trust root (the payload is read only after that);
2. the payload has exactly the members the format defines in ``critical``
   (unknown critical members are refused, as containers-signature(5)
   requires) and the cosign type;
3. ``docker-manifest-digest`` is exactly the subject's digest, so a
   signature cannot be replayed onto another manifest;
4. where the payload names a ``docker-reference`` and the caller names a
   repository, the reference's repository path (host and tag or digest
   dropped) is that repository. cosign itself ignores this field; we use it
   so that a signature made for one repository does not vouch for a copy
   elsewhere.

`verify_notation_jws`, following the specification's verification steps:

1. the envelope is flattened JWS JSON, its protected header has the
   required members with supported values and no critical attribute we do
   not understand (a verification plugin, for one);
2. ``alg`` matches the leaf certificate's key, and the signature verifies
   with that key (integrity);
3. the chain is ordered, each certificate is issued by the next, it ends in
   a self-signed root, and one of its certificates is in a ``notation-x509``
   trust root (authenticity); each certificate meets the specification's
   requirements: CA certificates with critical basic constraints, cA and
   keyCertSign; the leaf with a critical key usage for digital signatures
   only, no extended key usage but code signing, RSA of 2048 bits or more or
   ECDSA of 256 or more; no SHA-1 signatures;
4. ``targetArtifact.digest`` is exactly the subject's digest;
5. every certificate is valid now (we verify no timestamp countersignature,
   so the verification time stands in for it) and at the claimed signing
   time, and the expiry, if any, has not passed.

Revocation (CRL, OCSP), RFC 3161 timestamp countersignatures, the
``notary.x509.signingAuthority`` scheme and trusted-identity (subject)
filters of a notation trust policy are not checked; a signature that needs
them is refused or verified without them as described at each step.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID

from quaylock.oci import Digest, is_tag

COSIGN_KEY = "cosign-key"
NOTATION_X509 = "notation-x509"
TRUST_ROOT_KINDS = frozenset({COSIGN_KEY, NOTATION_X509})

# cosign: media and annotation names (sigstore/cosign specs/SIGNATURE_SPEC.md).
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
COSIGN_TYPE = "cosign container image signature"

# Notary Project: media types and header names (specs/signature-*.md).
NOTATION_ARTIFACT_TYPE = "application/vnd.cncf.notary.signature"
NOTATION_JWS = "application/jose+json"
NOTATION_COSE = "application/cose"
NOTATION_PAYLOAD = "application/vnd.cncf.notary.payload.v1+json"
_SCHEME = "io.cncf.notary.signingScheme"
_SIGNING_TIME = "io.cncf.notary.signingTime"
_AUTHENTIC_TIME = "io.cncf.notary.authenticSigningTime"
_EXPIRY = "io.cncf.notary.expiry"
_PLUGIN_HEADERS = (
    "io.cncf.notary.verificationPlugin",
    "io.cncf.notary.verificationPluginMinVersion",
)

# Bounds on untrusted input: a real payload is a few hundred bytes and a
# real envelope a few tens of KiB; chains are three or four certificates.
MAX_PAYLOAD_BYTES = 64 << 10
MAX_ENVELOPE_BYTES = 1 << 20
MAX_CHAIN_LENGTH = 8

# notation: the `alg` each signing key dictates (Algorithm Selection).
_RSA_ALG = {2048: "PS256", 3072: "PS384", 4096: "PS512"}
_EC_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_ALG_HASH = {
    "PS256": hashes.SHA256,
    "PS384": hashes.SHA384,
    "PS512": hashes.SHA512,
    "ES256": hashes.SHA256,
    "ES384": hashes.SHA384,
    "ES512": hashes.SHA512,
}

# notation leaf certificates must not be usable for these purposes.
_FORBIDDEN_EKU = frozenset(
    {
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
        ExtendedKeyUsageOID.TIME_STAMPING,
    }
)

# Files a trust-root directory may hold (notation reads .pem, .crt, .cer).
_TRUST_FILE_SUFFIXES = (".pem", ".crt", ".cer", ".pub")
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)


class TrustRootError(ValueError):
    """A trust root file or directory cannot be used as one."""


@dataclass(frozen=True)
class TrustRoot:
    """Keys or CA certificates the operator trusts, under a name.

    ``cosign-key`` roots hold public keys; ``notation-x509`` roots hold the
    CA certificates of one named trust store. The sequences are stored as
    tuples so that a root cannot change once loaded.
    """

    kind: str
    name: str
    keys: tuple = field(default=())
    certs: tuple = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in TRUST_ROOT_KINDS:
            raise TrustRootError(
                f"trust root {self.name!r} has kind {self.kind!r}; "
                f"use one of {', '.join(sorted(TRUST_ROOT_KINDS))}"
            )
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "certs", tuple(self.certs))


@dataclass(frozen=True)
class Verdict:
    """The outcome for one signature: whether it verified, who signed it (the
    trust root's name for cosign, the leaf certificate's subject for
    notation), and why, in a sentence fit for a log line."""

    verified: bool
    signer: str | None
    reason: str


class _Reject(Exception):
    """One check failed; the message is the Verdict's reason."""


def _refused(error: _Reject) -> Verdict:
    return Verdict(False, None, str(error))


# Trust roots


def load_trust_root(kind: str, name: str, path: str) -> TrustRoot:
    """Load a trust root from a PEM file, or a directory of them.

    ``cosign-key`` files hold PEM public keys (ECDSA P-256, P-384 or P-521,
    RSA of 2048 bits or more, Ed25519). ``notation-x509`` files hold CA
    certificates, PEM or DER, as notation's trust store does. A directory is
    read like a notation named store: its regular files ending in .pem,
    .crt, .cer or .pub, not its subdirectories; symbolic links are refused.

    Raises:
        TrustRootError: unknown kind, unreadable or empty path, a private key
            (a trust root holds public material only), or a key or
            certificate of a kind we do not verify.
    """
    if kind not in TRUST_ROOT_KINDS:
        raise TrustRootError(
            f"trust root {name!r} has kind {kind!r}; "
            f"use one of {', '.join(sorted(TRUST_ROOT_KINDS))}"
        )
    files = _trust_files(name, Path(path))
    if kind == COSIGN_KEY:
        keys = [key for file in files for key in _read_public_keys(name, file)]
        if not keys:
            raise TrustRootError(f"trust root {name!r}: no public key in {path}")
        return TrustRoot(kind, name, keys=keys)
    certs = [cert for file in files for cert in _read_certificates(name, file)]
    if not certs:
        raise TrustRootError(f"trust root {name!r}: no certificate in {path}")
    return TrustRoot(kind, name, certs=certs)


def _trust_files(name: str, path: Path) -> list[Path]:
    # The trust store spec refuses symlinks, so that a trusted file cannot
    # be swapped by whoever controls a link target.
    if path.is_symlink():
        raise TrustRootError(f"trust root {name!r}: {path} is a symbolic link")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TrustRootError(f"trust root {name!r}: {path} does not exist")
    files = []
    for entry in sorted(path.iterdir()):
        if entry.suffix.lower() not in _TRUST_FILE_SUFFIXES:
            continue
        if entry.is_symlink():
            raise TrustRootError(f"trust root {name!r}: {entry} is a symbolic link")
        if entry.is_file():
            files.append(entry)
    return files


def _read(name: str, file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as error:
        raise TrustRootError(
            f"trust root {name!r}: cannot read {file}: {error}"
        ) from error


def _read_public_keys(name: str, file: Path) -> list:
    data = _read(name, file)
    keys = []
    for block in _PEM_BLOCK.finditer(data):
        label = block.group(1).decode()
        if "PRIVATE" in label:
            raise TrustRootError(
                f"trust root {name!r}: {file} holds a private key; "
                "give the public key only"
            )
        if label not in ("PUBLIC KEY", "RSA PUBLIC KEY"):
            raise TrustRootError(
                f"trust root {name!r}: {file} holds a {label} block, not a PUBLIC KEY"
            )
        try:
            key = serialization.load_pem_public_key(block.group(0))
        except (ValueError, UnsupportedAlgorithm) as error:
            raise TrustRootError(
                f"trust root {name!r}: bad public key in {file}: {error}"
            ) from error
        problem = _cosign_key_problem(key)
        if problem:
            raise TrustRootError(f"trust root {name!r}: {file}: {problem}")
        keys.append(key)
    return keys


def _cosign_key_problem(key) -> str | None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _EC_ALG:
            return f"ECDSA curve {key.curve.name} is not supported"
        return None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            return f"RSA key of {key.key_size} bits is too short (2048 minimum)"
        return None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return None
    return f"{type(key).__name__} keys are not supported"


def _read_certificates(name: str, file: Path) -> list[x509.Certificate]:
    data = _read(name, file)
    if b"-----BEGIN" in data:
        if b"PRIVATE KEY-----" in data:
            raise TrustRootError(
                f"trust root {name!r}: {file} holds a private key; "
                "give certificates only"
            )
        loader, what = x509.load_pem_x509_certificates, "PEM"
    else:
        loader, what = (lambda d: [x509.load_der_x509_certificate(d)]), "DER"
    try:
        return list(loader(data))
    except ValueError as error:
        raise TrustRootError(
            f"trust root {name!r}: bad {what} certificate in {file}: {error}"
        ) from error


# cosign


def signature_candidates(subject_digest: str) -> str:
    """Return the tag under which cosign and containers/image keep the
    signatures of `subject_digest`: ``sha256:<hex>`` -> ``sha256-<hex>.sig``.

    Raises:
        DigestInvalid: `subject_digest` is not a digest.
        Unsupported: its algorithm is not one we verify.
        ValueError: the tag would be past the spec's 128 characters (a
            sha512 digest), so no signature can be stored under it.
    """
    digest = Digest.parse(subject_digest)
    tag = f"{digest.algorithm}-{digest.hex}.sig"
    if not is_tag(tag):
        raise ValueError(
            f"the signature tag for a {digest.algorithm} digest would be "
            f"{len(tag)} characters; tags stop at 128"
        )
    return tag


def verify_cosign_signature(
    payload: bytes,
    signature_b64: str,
    subject_digest: str,
    repository: str | None,
    roots: Sequence[TrustRoot],
) -> Verdict:
    """Verify one cosign (simple signing) signature of `subject_digest`.

    Args:
        payload: the payload blob's bytes, exactly as stored.
        signature_b64: the layer's ``dev.cosignproject.cosign/signature``.
        subject_digest: the manifest the signature must be for.
        repository: the repository the manifest is in; when given, a
            ``docker-reference`` in the payload must name it. None skips
            that check.
        roots: trust roots; only those of kind ``cosign-key`` are used.
    """
    try:
        signer = _verify_cosign_bytes(payload, signature_b64, roots)
        reference = _check_simple_signing(payload, subject_digest)
        if repository is not None and reference:
            _check_reference(reference, repository)
    except _Reject as error:
        return _refused(error)
    return Verdict(
        True, signer, f"cosign signature of {subject_digest} by trust root {signer}"
    )


def _verify_cosign_bytes(
    payload: bytes, signature_b64: str, roots: Sequence[TrustRoot]
) -> str:
    """Return the name of the trust root whose key made the signature."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _Reject(
            f"signature payload is {len(payload)} bytes; "
            f"the limit is {MAX_PAYLOAD_BYTES}"
        )
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _Reject(f"signature annotation is not base64: {error}") from error
    cosign_roots = [root for root in roots if root.kind == COSIGN_KEY]
    if not cosign_roots:
        raise _Reject("no cosign-key trust root is configured")
    for root in cosign_roots:
        for key in root.keys:
            if _cosign_signature_verifies(key, signature, payload):
                return root.name
    names = ", ".join(root.name for root in cosign_roots)
    raise _Reject(
        f"signature does not verify with any key of trust roots {names} "
        "(untrusted signer, or payload changed after signing)"
    )


def _cosign_signature_verifies(key, signature: bytes, payload: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            # cosign and containers/image hash with SHA-256 whatever the
            # curve; newer sigstore code uses the curve's own hash.
            algorithms = [hashes.SHA256()]
            if key.curve.name == "secp384r1":
                algorithms.append(hashes.SHA384())
            elif key.curve.name == "secp521r1":
                algorithms.append(hashes.SHA512())
            for algorithm in algorithms:
                try:
                    key.verify(signature, payload, ec.ECDSA(algorithm))
                    return True
                except InvalidSignature:
                    continue
            return False
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            return True
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, payload)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def _check_simple_signing(payload: bytes, subject_digest: str) -> str:
    """Check the signed payload names `subject_digest`; return its
    docker-reference ("" when it names none).

    Parsing follows containers-signature(5): members of `critical` and of
    its objects are exactly the defined ones, so that a signature whose
    critical claims we do not understand is never taken for one we do.
    """
    document = _strict_json(payload, "signature payload")
    critical, optional = _exact_members(
        document, ("critical", "optional"), "signature payload"
    )
    if optional is not None and not isinstance(optional, dict):
        raise _Reject("signature payload: optional is neither an object nor null")
    kind, image, identity = _exact_members(
        critical, ("type", "image", "identity"), "critical"
    )
    if kind != COSIGN_TYPE:
        raise _Reject(f"signature payload has type {kind!r}, not {COSIGN_TYPE!r}")
    (signed_digest,) = _exact_members(
        image, ("docker-manifest-digest",), "critical.image"
    )
    (reference,) = _exact_members(identity, ("docker-reference",), "critical.identity")
    if not isinstance(signed_digest, str) or not isinstance(reference, str):
        raise _Reject("signature payload: digest and reference must be strings")
    if signed_digest != subject_digest:
        raise _Reject(
            f"signature is for manifest {signed_digest[:80]}, not {subject_digest}"
        )
    return reference


def _check_reference(reference: str, repository: str) -> None:
    signed = _reference_repository(reference)
    if signed != repository:
        raise _Reject(
            f"signature names repository {signed[:200]!r} "
            f"({reference[:200]!r}), not {repository!r}"
        )


def _reference_repository(reference: str) -> str:
    """The repository path of a docker reference: ``host:5000/a/b:tag`` or
    ``a/b@sha256:...`` -> ``a/b``.

    The first component is a host, as in docker/distribution's reference
    grammar, when it has a '.' or ':' or is ``localhost``.
    """
    name = reference.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest
    return name


# Notary Project (notation) JWS


def verify_notation_jws(
    envelope: bytes,
    subject_digest: str,
    roots: Sequence[TrustRoot],
    *,
    now: dt.datetime | None = None,
) -> Verdict:
    """Verify one notation JWS envelope (``application/jose+json``) over
    `subject_digest`.

    Args:
        envelope: the envelope blob's bytes.
        subject_digest: the manifest the signature must be for.
        roots: trust roots; only those of kind ``notation-x509`` are used.
        now: the verification time (timezone-aware); the current time when
            None.
    """
    now = now or dt.datetime.now(dt.UTC)
    try:
        parts = _parse_jws(envelope)
        header = _check_protected_header(parts.protected)
        chain = _parse_x5c(parts.unprotected)
        _check_jws_signature(parts, header["alg"], chain[0])
        root_name = _check_trusted_chain(chain, roots)
        _check_target(parts.payload, subject_digest)
        _check_times(chain, header, now)
    except _Reject as error:
        return _refused(error)
    return _notation_verified(chain, subject_digest, root_name, "notation signature")


def _notation_verified(
    chain: list[x509.Certificate], subject_digest: str, root_name: str, what: str
) -> Verdict:
    """The verdict for a notation envelope that passed every check."""
    signer = chain[0].subject.rfc4514_string()
    return Verdict(
        True,
        signer,
        f"{what} of {subject_digest} by {signer!r}, chained to trust root {root_name}",
    )


@dataclass
class _JWS:
    protected_b64: str
    payload_b64: str
    protected: dict
    payload: bytes
    unprotected: dict
    signature: bytes


def _parse_jws(envelope: bytes) -> _JWS:
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise _Reject(
            f"envelope is {len(envelope)} bytes; the limit is {MAX_ENVELOPE_BYTES}"
        )
    document = _strict_json(envelope, "envelope")
    if isinstance(document, dict) and "signatures" in document:
        raise _Reject(
            "envelope uses general JWS serialization; notation uses flattened"
        )
    payload_b64, protected_b64, unprotected, signature_b64 = _exact_members(
        document, ("payload", "protected", "header", "signature"), "envelope"
    )
    for name, value in (
        ("payload", payload_b64),
        ("protected", protected_b64),
        ("signature", signature_b64),
    ):
        if not isinstance(value, str):
            raise _Reject(f"envelope {name} is not a string")
    if not isinstance(unprotected, dict):
        raise _Reject("envelope header is not an object")
    protected = _strict_json(_b64url(protected_b64, "protected"), "protected header")
    if not isinstance(protected, dict):
        raise _Reject("protected header is not an object")
    return _JWS(
        protected_b64=protected_b64,
        payload_b64=payload_b64,
        protected=protected,
        payload=_b64url(payload_b64, "payload"),
        unprotected=unprotected,
        signature=_b64url(signature_b64, "signature"),
    )


def _check_protected_header(header: dict) -> dict:
    """Check the signed attributes; return them."""
    alg = header.get("alg")
    if alg not in _ALG_HASH:
        raise _Reject(f"alg {alg!r} is not one notation allows")
    if header.get("cty") != NOTATION_PAYLOAD:
        raise _Reject(f"cty {header.get('cty')!r} is not {NOTATION_PAYLOAD}")

    crit = header.get("crit")
    if not isinstance(crit, list) or not all(isinstance(c, str) for c in crit):
        raise _Reject("crit is missing or not a list of header names")
    _check_notary_attributes(header, crit)
    for name in (_SIGNING_TIME, _EXPIRY):
        if name in header:
            _rfc3339(header[name], name)
    return header


def _check_notary_attributes(header: dict, crit: list) -> None:
    """The Notary Project's signed attributes, in either envelope.

    Critical attributes: the scheme always, expiry and authentic time when
    present, and nothing we do not understand (RFC 7515 §4.1.11, RFC 9052
    §3.1). Only the notary.x509 scheme, which needs a signing time:
    notary.x509.signingAuthority needs a signing-authority trust store and
    an authentic signing time, which we do not offer yet.
    """
    if _SCHEME not in crit:
        raise _Reject(f"crit does not list {_SCHEME}")
    for name in (_EXPIRY, _AUTHENTIC_TIME):
        if name in header and name not in crit:
            raise _Reject(f"{name} is present but not listed in crit")
    for name in crit:
        if name in _PLUGIN_HEADERS:
            raise _Reject(f"signature requires a verification plugin ({name})")
        if name not in (_SCHEME, _EXPIRY, _AUTHENTIC_TIME):
            raise _Reject(f"unsupported critical header {name!r}")
        if name not in header:
            raise _Reject(f"crit lists {name}, which the header lacks")
    scheme = header.get(_SCHEME)
    if scheme != "notary.x509":
        raise _Reject(f"signing scheme {scheme!r} is not supported")
    if _SIGNING_TIME not in header:
        raise _Reject(f"{_SIGNING_TIME} is required by notary.x509")


def _parse_x5c(unprotected: dict) -> list[x509.Certificate]:
    x5c = unprotected.get("x5c")
    if not isinstance(x5c, list) or not x5c:
        raise _Reject("x5c is missing or empty: no certificate chain")
    if len(x5c) > MAX_CHAIN_LENGTH:
        raise _Reject(f"x5c has {len(x5c)} certificates; at most {MAX_CHAIN_LENGTH}")
    chain = []
    for index, text in enumerate(x5c):
        try:
            # RFC 7515 §4.1.6: standard base64, not base64url.
            der = base64.b64decode(text, validate=True)
            chain.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError, TypeError) as error:
            raise _Reject(f"x5c[{index}] is not a DER certificate: {error}") from error
    return chain


def _check_jws_signature(parts: _JWS, alg: str, leaf: x509.Certificate) -> None:
    signing_input = f"{parts.protected_b64}.{parts.payload_b64}".encode("ascii")
    _check_leaf_signature(alg, leaf, signing_input, parts.signature)


def _check_leaf_signature(
    alg: str, leaf: x509.Certificate, signed: bytes, signature: bytes
) -> None:
    """Check `signature` over `signed` by the leaf's key, with `alg` (a JWS
    name; COSE's numbers map onto these) matching that key."""
    try:
        key = leaf.public_key()
    except (UnsupportedAlgorithm, ValueError) as error:
        raise _Reject(f"signing certificate key cannot be used: {error}") from None
    if isinstance(key, rsa.RSAPublicKey):
        expected = _RSA_ALG.get(key.key_size)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        expected = _EC_ALG.get(key.curve.name)
    else:
        expected = None
    if expected is None:
        raise _Reject(f"signing certificate key {_describe_key(key)} is not allowed")
    # The key decides the algorithm; a header naming another one is an
    # algorithm-substitution attempt (signature-envelope-jws.md).
    if alg != expected:
        raise _Reject(f"alg {alg} does not match the signing key ({expected})")

    algorithm = _ALG_HASH[alg]()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pss = padding.PSS(
                mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size
            )
            key.verify(signature, signed, pss, algorithm)
        else:
            key.verify(_der_from_raw(signature, key), signed, ec.ECDSA(algorithm))
    except InvalidSignature as error:
        raise _Reject(
            "envelope signature does not verify with the signing certificate "
            "(payload or protected header changed after signing)"
        ) from error


def _der_from_raw(signature: bytes, key: ec.EllipticCurvePublicKey) -> bytes:
    # RFC 7518 §3.4: JWS carries r and s as two fixed-length big-endian
    # integers, where cryptography wants DER.
    size = (key.curve.key_size + 7) // 8
    if len(signature) != 2 * size:
        raise _Reject(f"ECDSA signature is {len(signature)} bytes; {2 * size} expected")
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    return encode_dss_signature(r, s)


def _check_trusted_chain(
    chain: list[x509.Certificate], roots: Sequence[TrustRoot]
) -> str:
    """Check the chain's links and certificates; return the name of the
    trust root holding one of its certificates."""
    notation_roots = [root for root in roots if root.kind == NOTATION_X509]
    if not notation_roots:
        raise _Reject("no notation-x509 trust root is configured")

    # Each certificate is issued by the next, and the last is a root.
    for child, parent in itertools.pairwise(chain):
        _check_issued_by(child, parent)
    root = chain[-1]
    _check_issued_by(root, root, what="is not a self-signed root")

    # Authenticity: a certificate of the chain is one the operator trusts.
    name = _trusted_by(chain, notation_roots)
    if name is None:
        names = ", ".join(r.name for r in notation_roots)
        raise _Reject(
            f"certificate chain of {chain[0].subject.rfc4514_string()!r} "
            f"does not lead to a certificate of trust roots {names}"
        )

    # Certificate requirements (signature-specification.md). A chain of
    # one self-signed certificate is held to the leaf's requirements only.
    _check_leaf(chain[0])
    for depth, ca in enumerate(chain[1:]):
        _check_ca(ca, below=depth)
    for cert in chain:
        if isinstance(_signature_hash(cert), hashes.SHA1):
            raise _Reject(f"{_who(cert)} is signed with SHA-1")
    return name


def _check_issued_by(
    child: x509.Certificate,
    parent: x509.Certificate,
    what: str = "",
) -> None:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as error:
        problem = what or f"is not issued by {_who(parent)}"
        raise _Reject(f"{_who(child)} {problem}: {error or 'bad signature'}") from error


def _trusted_by(
    chain: list[x509.Certificate], roots: Iterable[TrustRoot]
) -> str | None:
    presented = {cert.fingerprint(hashes.SHA256()) for cert in chain}
    for root in roots:
        for trusted in root.certs:
            if trusted.fingerprint(hashes.SHA256()) in presented:
                return root.name
    return None


def _check_leaf(cert: x509.Certificate) -> None:
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.value.ca:
        raise _Reject(f"signing certificate {_who(cert)} is a CA certificate")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.critical:
        raise _Reject(f"signing certificate {_who(cert)} lacks a critical key usage")
    ku = usage.value
    if not ku.digital_signature:
        raise _Reject(f"signing certificate {_who(cert)} may not sign (key usage)")
    extra = (
        ku.key_encipherment
        or ku.data_encipherment
        or ku.key_agreement
        or ku.key_cert_sign
        or ku.crl_sign
    )
    if extra:
        raise _Reject(
            f"signing certificate {_who(cert)} has key usages besides digital signature"
        )
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None:
        forbidden = _FORBIDDEN_EKU.intersection(eku.value)
        if forbidden:
            names = ", ".join(sorted(oid._name for oid in forbidden))
            raise _Reject(
                f"signing certificate {_who(cert)} has extended key usage {names}"
            )
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise _Reject(f"signing certificate {_who(cert)} has a short RSA key")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        raise _Reject(f"signing certificate {_who(cert)} has a short EC key")


def _check_ca(cert: x509.Certificate, below: int) -> None:
    """Check a CA certificate with `below` CA certificates between it and
    the leaf."""
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.critical or not constraints.value.ca:
        raise _Reject(f"{_who(cert)} lacks critical basic constraints with cA")
    path_length = constraints.value.path_length
    if path_length is not None and path_length < below:
        raise _Reject(
            f"{_who(cert)} allows {path_length} CA certificates below it, "
            f"the chain has {below}"
        )
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.critical or not usage.value.key_cert_sign:
        raise _Reject(f"{_who(cert)} lacks a critical key usage with keyCertSign")


def _check_target(payload: bytes, subject_digest: str) -> None:
    document = _strict_json(payload, "notation payload")
    if not isinstance(document, dict):
        raise _Reject("notation payload is not an object")
    target = document.get("targetArtifact")
    if not isinstance(target, dict):
        raise _Reject("notation payload has no targetArtifact")
    digest, media_type, size = (
        target.get("digest"),
        target.get("mediaType"),
        target.get("size"),
    )
    if not isinstance(digest, str) or not isinstance(media_type, str):
        raise _Reject("targetArtifact lacks a digest or a media type")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _Reject("targetArtifact lacks a size")
    if digest != subject_digest:
        raise _Reject(f"signature is for manifest {digest[:80]}, not {subject_digest}")


def _check_times(chain: list[x509.Certificate], header: dict, now: dt.datetime) -> None:
    signing_time = _rfc3339(header[_SIGNING_TIME], _SIGNING_TIME)
    expiry = _rfc3339(header[_EXPIRY], _EXPIRY) if _EXPIRY in header else None
    _check_validity(chain, signing_time, expiry, now)


def _check_validity(
    chain: list[x509.Certificate],
    signing_time: dt.datetime,
    expiry: dt.datetime | None,
    now: dt.datetime,
) -> None:
    if expiry is not None and now >= expiry:
        raise _Reject(f"signature expired at {expiry:%Y-%m-%dT%H:%M:%SZ}")
    # Without a verified timestamp, the spec asks every certificate to be
    # valid at verification time; and all must have been valid when it
    # claims to have signed.
    for when, label in ((now, "now"), (signing_time, "at the signing time")):
        for cert in chain:
            if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
                raise _Reject(
                    f"{_who(cert)} is not valid {label} "
                    f"({cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
                    f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
                )


# Signature manifests


@dataclass(frozen=True)
class SignatureLayer:
    """A layer of a signature manifest that holds a signature: a cosign
    payload (with its signature annotation) or a notation envelope."""

    kind: str  # "cosign", "notation-jws" or "notation-cose"
    digest: str
    size: int
    signature_b64: str | None = None  # cosign only


def signature_layers(manifest: bytes) -> list[SignatureLayer]:
    """Return the signature-bearing layers of a signature manifest: a cosign
    ``.sig`` manifest, a cosign OCI 1.1 referrer, or a notation signature.

    Layers of other types are left out, as is anything that is not an image
    manifest; the caller fetches each layer's blob and verifies it.
    """
    try:
        document = json.loads(manifest)
    except (ValueError, RecursionError):
        return []
    layers = document.get("layers") if isinstance(document, dict) else None
    if not isinstance(layers, list):
        return []
    config = document.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    notation = NOTATION_ARTIFACT_TYPE in (document.get("artifactType"), config_type)
    found = []
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        media_type, digest, size = (
            layer.get("mediaType"),
            layer.get("digest"),
            layer.get("size"),
        )
        if not isinstance(digest, str) or not isinstance(size, int):
            continue
        annotations = layer.get("annotations") or {}
        signature = (
            annotations.get(COSIGN_SIGNATURE_ANNOTATION)
            if isinstance(annotations, dict)
            else None
        )
        if media_type == SIMPLE_SIGNING and isinstance(signature, str):
            found.append(SignatureLayer("cosign", digest, size, signature))
        elif notation and media_type == NOTATION_JWS:
            found.append(SignatureLayer("notation-jws", digest, size))
        elif notation and media_type == NOTATION_COSE:
            found.append(SignatureLayer("notation-cose", digest, size))
    return found


# Small helpers


def _strict_json(data: bytes, what: str):
    """Parse JSON, refusing duplicate members and non-finite numbers, which
    two parsers could read two ways (containers-signature(5))."""

    def no_duplicates(pairs):
        result = {}
        for key, value in pairs:
            if key in result:
                raise _Reject(f"{what} has member {key!r} twice")
            result[key] = value
        return result

    def no_constant(name):
        raise _Reject(f"{what} has the non-JSON number {name}")

    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=no_duplicates,
            parse_constant=no_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _Reject(f"{what} is not JSON: {error}") from error


def _exact_members(document, names: tuple[str, ...], what: str) -> list:
    if not isinstance(document, dict):
        raise _Reject(f"{what} is not an object")
    if set(document) != set(names):
        unexpected = sorted(set(document) - set(names))
        missing = sorted(set(names) - set(document))
        raise _Reject(
            f"{what} must have exactly {', '.join(names)}"
            + (f"; unexpected {', '.join(unexpected)}" if unexpected else "")
            + (f"; missing {', '.join(missing)}" if missing else "")
        )
    return [document[name] for name in names]


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url(text: str, what: str) -> bytes:
    # RFC 7515 §2: base64url without padding; anything else is refused
    # rather than repaired, so one envelope has one reading.
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise _Reject(f"envelope {what} is not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _rfc3339(value, name: str) -> dt.datetime:
    if not isinstance(value, str) or "T" not in value.upper():
        raise _Reject(f"{name} is not an RFC 3339 time")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise _Reject(f"{name} is not an RFC 3339 time: {value[:40]!r}") from error
    if parsed.tzinfo is None:
        raise _Reject(f"{name} has no time zone: {value[:40]!r}")
    return parsed


def _extension(cert: x509.Certificate, kind):
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None
    except ValueError as error:  # a malformed or duplicated extension
        raise _Reject(f"{_who(cert)} has a bad extension: {error}") from error


def _signature_hash(cert: x509.Certificate):
    try:
        return cert.signature_hash_algorithm
    except UnsupportedAlgorithm as error:
        raise _Reject(f"{_who(cert)} uses an unknown signature algorithm") from error


def _who(cert: x509.Certificate) -> str:
    return f"certificate {cert.subject.rfc4514_string()[:200]!r}"


def _describe_key(key) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    return type(key).__name__


__all__ = [
    "COSIGN_KEY",
    "NOTATION_X509",
    "SignatureLayer",
    "TrustRoot",
    "TrustRootError",
    "Verdict",
    "load_trust_root",
    "signature_candidates",
    "signature_layers",
    "verify_cosign_signature",
    "verify_notation_jws",
]
