"""The OCI nouns: names, tags, digests and media types, and their grammars.

Everything that reaches a store passes one of the checks here first, so that
no repository name, tag or digest outside the spec's grammar is ever used as
a key or a path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from quaylock.errors import DigestInvalid, NameInvalid, TagInvalid, Unsupported

# distribution-spec "Pulling manifests": path components of lower-case
# alphanumerics joined by '.', '_', '__' or runs of '-', separated by '/'.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# A tag is at most 128 characters and does not start with '.' or '-'.
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")

# The spec allows 255 characters for host and name together; we keep the
# name itself under that, as Distribution does.
NAME_MAX_LENGTH = 255

# Digest algorithms we compute and verify, with the length of their hex.
ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
EMPTY_JSON = "application/vnd.oci.empty.v1+json"

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_MANIFESTS = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_MEDIA_TYPES = IMAGE_MANIFESTS | INDEX_MANIFESTS


def check_name(name: str) -> str:
    """Return `name` if it is a valid repository name.

    Raises:
        NameInvalid: the name is too long or outside the spec's grammar.
    """
    if len(name) > NAME_MAX_LENGTH:
        raise NameInvalid(
            f"repository name is {len(name)} characters long; "
            f"the limit is {NAME_MAX_LENGTH}"
        )
    if not NAME_RE.fullmatch(name):
        raise NameInvalid(
            f"invalid repository name {name[:80]!r}: use lower-case letters, "
            "digits and single separators (. _ __ -), with '/' between parts"
        )
    return name


# Whole numbers in headers and queries: ASCII digits only (str.isdigit also
# takes '²'), and few enough of them to fit 64 bits.
_NUMBER_RE = re.compile(r"[0-9]{1,18}")


def is_number(text: str) -> bool:
    return _NUMBER_RE.fullmatch(text) is not None


def is_tag(reference: str) -> bool:
    return TAG_RE.fullmatch(reference) is not None


def check_tag(tag: str) -> str:
    """Return `tag` if it is a valid tag.

    Raises:
        TagInvalid: the tag is outside the spec's grammar.
    """
    if not is_tag(tag):
        raise TagInvalid(
            f"invalid tag {tag[:80]!r}: up to 128 letters, digits, '_', '.' "
            "or '-', not starting with '.' or '-'"
        )
    return tag


@dataclass(frozen=True, slots=True)
class Digest:
    """A content digest such as ``sha256:<64 hex>``."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self):
        return hashlib.new(self.algorithm)

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse and check a digest string.

        Raises:
            DigestInvalid: the text is not a digest, or not a well-formed one
                for its algorithm.
            Unsupported: the algorithm is well-formed but not one we verify.
        """
        match = _DIGEST_RE.fullmatch(text)
        if match is None:
            raise DigestInvalid(f"invalid digest {text[:140]!r}")
        algorithm, hex_ = match.groups()
        if algorithm not in ALGORITHMS:
            raise Unsupported(
                f"digest algorithm {algorithm!r} is not supported; "
                f"use one of {', '.join(ALGORITHMS)}"
            )
        if len(hex_) != ALGORITHMS[algorithm] or not _is_lower_hex(hex_):
            raise DigestInvalid(
                f"invalid {algorithm} digest: expected "
                f"{ALGORITHMS[algorithm]} lower-case hex characters"
            )
        return cls(algorithm, hex_)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


_HEX = frozenset("0123456789abcdef")


def _is_lower_hex(text: str) -> bool:
    return all(c in _HEX for c in text)


def is_digest(reference: str) -> bool:
    return ":" in reference
