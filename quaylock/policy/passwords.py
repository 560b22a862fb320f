"""Password and secret hashing.

Passwords are hashed with scrypt (memory-hard; from OpenSSL through the
standard library), with the parameters stored in the hash so they can be
raised later without breaking old hashes. bcrypt hashes imported from an
htpasswd file are verified with the bcrypt package and replaced by a scrypt
hash at the first successful login.

Robot secrets are 256-bit random tokens, which no dictionary reaches, so a
plain SHA-256 of them is enough and costs nothing per request.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

import bcrypt

# N=2^15, r=8: 32 MiB and about 0.1 s a hash on one core.
_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Compare in constant time; any malformed hash is a mismatch."""
    if stored.startswith("scrypt$"):
        try:
            _, n, r, p, salt, digest = stored.split("$")
            actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(actual, _unb64(digest))
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        try:
            # bcrypt uses $2b$; $2y$ (Apache's htpasswd) is the same algorithm.
            return bcrypt.checkpw(password.encode(), ("$2b$" + stored[4:]).encode())
        except ValueError:
            return False
    return False


def needs_upgrade(stored: str) -> bool:
    return not stored.startswith(f"scrypt${_N}${_R}${_P}$")


@functools.cache
def dummy_hash() -> str:
    """Verified against when the user does not exist, so that an unknown
    name costs the same time as a wrong password."""
    return hash_password(secrets.token_urlsafe(16))


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


def verify_secret(secret: str, stored: str) -> bool:
    return hmac.compare_digest(hash_secret(secret).encode(), stored.encode())


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
