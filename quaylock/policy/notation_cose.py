"""Notation signatures in the COSE envelope (``application/cose``): a
COSE_Sign1_Tagged item (RFC 9052) whose protected header carries the Notary
Project's signed attributes and whose unprotected header carries the
certificate chain (x5chain, label 33).

The checks after parsing are the JWS envelope's (`policy.signatures`): the
algorithm must be the one the signing key implies, the chain must lead to a
configured notation trust root and meet the certificate requirements, the
payload must name the exact manifest, and the times must hold.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from quaylock.policy import cbor
from quaylock.policy.signatures import (
    _EXPIRY,
    _SIGNING_TIME,
    MAX_CHAIN_LENGTH,
    MAX_ENVELOPE_BYTES,
    NOTATION_PAYLOAD,
    TrustRoot,
    Verdict,
    _check_leaf_signature,
    _check_notary_attributes,
    _check_target,
    _check_trusted_chain,
    _check_validity,
    _notation_verified,
    _refused,
    _Reject,
)

COSE_SIGN1_TAG = 18
EPOCH_TIME_TAG = 1
_ALG, _CRIT, _CONTENT_TYPE, _X5CHAIN = 1, 2, 3, 33
# COSE algorithm numbers (IANA) that notation allows, by their JWS names.
COSE_ALGS = {
    -7: "ES256",
    -35: "ES384",
    -36: "ES512",
    -37: "PS256",
    -38: "PS384",
    -39: "PS512",
}


def verify_notation_cose(
    envelope: bytes,
    subject_digest: str,
    roots: Sequence[TrustRoot],
    *,
    now: dt.datetime | None = None,
) -> Verdict:
    """Verify one notation COSE envelope over `subject_digest` (arguments as
    for `verify_notation_jws`)."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        protected_raw, protected, unprotected, payload, signature = _parse(envelope)
        alg, signing_time, expiry = _check_header(protected)
        chain = _x5chain(protected, unprotected)
        signed = b"".join(
            (
                cbor.array_head(4),
                cbor.tstr("Signature1"),
                cbor.bstr_head(len(protected_raw)),
                protected_raw,
                cbor.bstr_head(0),
                cbor.bstr_head(len(payload)),
                payload,
            )
        )
        _check_leaf_signature(alg, chain[0], signed, signature)
        root_name = _check_trusted_chain(chain, roots)
        _check_target(payload, subject_digest)
        _check_validity(chain, signing_time, expiry, now)
    except _Reject as error:
        return _refused(error)
    return _notation_verified(
        chain, subject_digest, root_name, "notation signature (COSE)"
    )


def _parse(envelope: bytes) -> tuple[bytes, dict, dict, bytes, bytes]:
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise _Reject(
            f"envelope is {len(envelope)} bytes; the limit is {MAX_ENVELOPE_BYTES}"
        )
    try:
        item = cbor.decode(envelope)
    except cbor.CBORError as error:
        raise _Reject(f"envelope is not CBOR we accept: {error}") from None
    if not isinstance(item, cbor.Tagged) or item.tag != COSE_SIGN1_TAG:
        raise _Reject("envelope is not a COSE_Sign1_Tagged item (tag 18)")
    parts = item.value
    if not isinstance(parts, list) or len(parts) != 4:
        raise _Reject("COSE_Sign1 must be an array of four items")
    protected_raw, unprotected, payload, signature = parts
    if not isinstance(protected_raw, bytes) or not protected_raw:
        raise _Reject("protected header is not a non-empty byte string")
    if not isinstance(unprotected, dict):
        raise _Reject("unprotected header is not a map")
    if not isinstance(payload, bytes):
        raise _Reject("payload is detached or not a byte string")
    if not isinstance(signature, bytes):
        raise _Reject("signature is not a byte string")
    try:
        protected = cbor.decode(protected_raw)
    except cbor.CBORError as error:
        raise _Reject(f"protected header is not CBOR we accept: {error}") from None
    if not isinstance(protected, dict):
        raise _Reject("protected header is not a map")
    return protected_raw, protected, unprotected, payload, signature


def _check_header(header: dict) -> tuple[str, dt.datetime, dt.datetime | None]:
    """Check the signed attributes; return the algorithm (as a JWS name),
    the signing time and the expiry."""
    number = header.get(_ALG)
    alg = COSE_ALGS.get(number) if isinstance(number, int) else None
    if alg is None:
        raise _Reject(f"alg {header.get(_ALG)!r} is not one notation allows")
    if header.get(_CONTENT_TYPE) != NOTATION_PAYLOAD:
        raise _Reject(
            f"content type {header.get(_CONTENT_TYPE)!r} is not {NOTATION_PAYLOAD}"
        )

    crit = header.get(_CRIT)
    if not isinstance(crit, list) or not crit:
        raise _Reject("crit is missing or empty")
    if not all(isinstance(name, (int, str)) for name in crit):
        raise _Reject("crit holds something other than header labels")
    _check_notary_attributes(header, crit)
    signing_time = _epoch_time(header[_SIGNING_TIME], _SIGNING_TIME)
    expiry = _epoch_time(header[_EXPIRY], _EXPIRY) if _EXPIRY in header else None
    return alg, signing_time, expiry


def _epoch_time(value, name: str) -> dt.datetime:
    # RFC 8949 §3.4.2: tag 1 over whole seconds (fractions SHOULD NOT be
    # used, and this decoder takes no floats).
    if not isinstance(value, cbor.Tagged) or value.tag != EPOCH_TIME_TAG:
        raise _Reject(f"{name} is not an epoch time (tag 1)")
    seconds = value.value
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise _Reject(f"{name} is not a whole number of seconds")
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise _Reject(f"{name} is out of range") from None


def _x5chain(protected: dict, unprotected: dict) -> list[x509.Certificate]:
    # The chain is unprotected normally; the spec lets it be protected.
    ders = protected.get(_X5CHAIN, unprotected.get(_X5CHAIN))
    if isinstance(ders, bytes):
        ders = [ders]  # a single certificate may be given bare
    if not isinstance(ders, list) or not ders:
        raise _Reject("x5chain is missing or empty: no certificate chain")
    if len(ders) > MAX_CHAIN_LENGTH:
        raise _Reject(
            f"x5chain has {len(ders)} certificates; at most {MAX_CHAIN_LENGTH}"
        )
    chain = []
    for index, der in enumerate(ders):
        if not isinstance(der, bytes):
            raise _Reject(f"x5chain[{index}] is not a byte string")
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError as error:
            raise _Reject(
                f"x5chain[{index}] is not a DER certificate: {error}"
            ) from None
    return chain
