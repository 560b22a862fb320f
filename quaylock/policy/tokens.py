"""Bearer tokens of the Docker token flow: signing, verifying, keys.

Tokens are JWTs signed with ES256. The signing key is made on first start
under ``<data>/keys/`` (mode 0600); `rotate_key` adds a newer one, which
signs from then on, while older keys still verify until an operator
removes their files. Each token names its key by `kid`.

A token is accepted only if:

- its algorithm is the one its key is for (ES256 for ours; the external
  issuer's key type for theirs): ``alg: none`` and an HMAC signed with a
  public key are refused because the verifier never takes the algorithm
  from the token;
- its signature verifies with a key we hold for its `kid` (or its issuer);
- its audience is this registry's service and its issuer is one we trust;
- it has not expired (30 s leeway for clock skew) and is not used early;
- for our own tokens: its subject still exists, is not disabled, and (for a
  robot) is neither revoked nor expired; so revocation takes effect at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from quaylock.config import AuthConfig

LEEWAY_SECONDS = 30
_PEM_RE = re.compile(rb"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----", re.S)
_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Access:
    """One grant of a token: a resource and the actions allowed on it."""

    type: str  # "repository" or "registry"
    name: str
    actions: frozenset[str]


@dataclass(frozen=True, slots=True)
class Claims:
    issuer: str
    subject: str
    kind: str
    access: tuple[Access, ...]
    expires_at: float
    ours: bool


class InvalidToken(Exception):
    """The token cannot be used; the message says why (for the log only)."""


def parse_scope(text: str) -> list[Access]:
    """Parse a space-separated list of ``type:name:actions`` scopes.

    Unknown or malformed scopes are dropped, as the token spec allows.
    """
    result = []
    for item in text.split():
        kind, _, rest = item.partition(":")
        name, _, actions = rest.rpartition(":")
        kind = kind.split("(", 1)[0]  # "repository(plugin)" is a repository
        if kind in ("repository", "registry") and name and actions:
            result.append(Access(kind, name, frozenset(actions.split(","))))
    return result


def _kid(public_key) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:32]


class KeyRing:
    """Our signing keys, newest last, from ``<data>/keys/token-*.pem``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.keys: dict[str, object] = {}
        self.signing_kid = ""
        self.load()

    def load(self) -> None:
        self.keys.clear()
        files = (
            sorted(self.directory.glob("token-*.pem"))
            if self.directory.exists()
            else []
        )
        for path in files:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            kid = _kid(key.public_key())
            self.keys[kid] = key
            self.signing_kid = kid

    def ensure(self) -> None:
        """Make the first key when there is none."""
        if not self.keys:
            self.rotate()

    def rotate(self) -> str:
        """Add a new signing key; return its kid."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        name = f"token-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}.pem"
        fd = os.open(self.directory / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        self.load()
        return self.signing_kid


class TrustedIssuer:
    """Public keys of an outside token service (Distribution's `token` auth
    with `rootcertbundle`, or a JWKS document)."""

    def __init__(self, issuer: str, keys_path: str):
        self.issuer = issuer
        self.keys: dict[str, tuple[object, str]] = {}
        data = Path(keys_path).read_bytes()
        if data.lstrip().startswith(b"{"):
            for jwk in json.loads(data)["keys"]:
                key = jwt.PyJWK(jwk)
                self.keys[jwk.get("kid", "")] = (key.key, key.algorithm_name)
        else:
            for pem in _PEM_RE.findall(data):
                public = _load_public(pem)
                self.keys[_kid(public)] = (public, _algorithm_for(public))


def _load_public(pem: bytes):
    if b"CERTIFICATE" in pem:
        from cryptography import x509

        return x509.load_pem_x509_certificate(pem).public_key()
    return serialization.load_pem_public_key(pem)


def _algorithm_for(public_key) -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {256: "ES256", 384: "ES384", 521: "ES512"}[public_key.curve.key_size]
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError(f"unsupported key type {type(public_key).__name__}")


class TokenService:
    """Issues and verifies tokens.

    Args:
        config: the `auth` settings.
        keys: our signing keys.
    """

    def __init__(self, config: AuthConfig, keys: KeyRing):
        self.config = config
        self.keys = keys
        self.issuers = [
            TrustedIssuer(item["issuer"], item["keys"])
            for item in config.trusted_issuers
        ]
        self._cache: OrderedDict[str, Claims] = OrderedDict()

    def issue(
        self, subject: str, kind: str, access: list[Access], ttl: int | None = None
    ) -> tuple[str, int, float]:
        """Return (token, lifetime in seconds, issued-at time)."""
        now = time.time()
        ttl = ttl or self.config.token_ttl_seconds
        claims = {
            "iss": self.config.issuer,
            "sub": subject,
            "aud": self.config.service,
            "iat": int(now),
            "nbf": int(now) - 1,
            "exp": int(now) + ttl,
            "jti": secrets.token_urlsafe(16),
            "kind": kind,
            "access": [
                {"type": a.type, "name": a.name, "actions": sorted(a.actions)}
                for a in access
            ],
        }
        token = self._sign(claims)
        return token, ttl, now

    def issue_refresh(self, subject: str, kind: str) -> str:
        now = int(time.time())
        return self._sign(
            {
                "iss": self.config.issuer,
                "sub": subject,
                "aud": self.config.service,
                "iat": now,
                "exp": now + self.config.refresh_ttl_seconds,
                "jti": secrets.token_urlsafe(16),
                "kind": kind,
                "typ": "refresh",
            }
        )

    def _sign(self, claims: dict) -> str:
        key = self.keys.keys[self.keys.signing_kid]
        return jwt.encode(
            claims, key, algorithm="ES256", headers={"kid": self.keys.signing_kid}
        )

    def verify(self, token: str, refresh: bool = False) -> Claims:
        """Check a token as the module docstring says.

        Raises:
            InvalidToken: any check failed.
        """
        cached = self._cache.get(token)
        if cached is not None and not refresh:
            if cached.expires_at + LEEWAY_SECONDS > time.time():
                return cached
            del self._cache[token]
        try:
            header = jwt.get_unverified_header(token)
            payload = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        issuer = payload.get("iss")
        kid = header.get("kid", "")
        if issuer == self.config.issuer and kid in self.keys.keys:
            key, algorithm, ours = self.keys.keys[kid].public_key(), "ES256", True
        else:
            key, algorithm, ours = self._external_key(issuer, kid)
        try:
            verified = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.config.service,
                issuer=issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token rejected: {exc}") from None
        if (verified.get("typ") == "refresh") != refresh:
            raise InvalidToken("wrong kind of token for this use")
        claims = Claims(
            issuer=issuer,
            subject=str(verified.get("sub", "")),
            kind=str(verified.get("kind", "user")) if ours else "external",
            access=tuple(_access(verified.get("access"))),
            expires_at=float(verified["exp"]),
            ours=ours,
        )
        if not refresh:
            self._cache[token] = claims
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        return claims

    def _external_key(self, issuer, kid):
        for trusted in self.issuers:
            if trusted.issuer == issuer:
                if kid in trusted.keys:
                    key, algorithm = trusted.keys[kid]
                    return key, algorithm, False
                if len(trusted.keys) == 1:
                    key, algorithm = next(iter(trusted.keys.values()))
                    return key, algorithm, False
        raise InvalidToken(
            f"no trusted key for issuer {str(issuer)[:80]!r} and kid {kid!r}"
        )


def _access(value) -> list[Access]:
    if not isinstance(value, list):
        return []
    result = []
    for item in value:
        if not isinstance(item, dict):
            continue
        actions = item.get("actions")
        if (
            isinstance(item.get("type"), str)
            and isinstance(item.get("name"), str)
            and isinstance(actions, list)
        ):
            result.append(
                Access(item["type"], item["name"], frozenset(map(str, actions)))
            )
    return result
