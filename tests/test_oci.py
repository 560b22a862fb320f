"""Grammars of names, tags and digests (distribution-spec "Pulling manifests")."""

from __future__ import annotations

import pytest

from quaylock import oci
from quaylock.errors import DigestInvalid, NameInvalid, TagInvalid, Unsupported


@pytest.mark.parametrize(
    "name",
    ["a", "library/ubuntu", "a-b/c_d/e.f", "a__b", "a---b", "x" * 255, "0/1/2/3"],
)
def test_valid_names(name):
    assert oci.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "a/", "/a", "a//b", "-a", "a-", "a..b", "a/../b", "..", "a___b", "a b",
     "x" * 256, "a\x00b", "é"],
)  # fmt: skip
def test_invalid_names(name):
    with pytest.raises(NameInvalid):
        oci.check_name(name)


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_x", "A" * 128, "1-rc.2_b"])
def test_valid_tags(tag):
    assert oci.check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "A" * 129, "a/b", "a:b", "a+b"])
def test_invalid_tags(tag):
    with pytest.raises(TagInvalid):
        oci.check_tag(tag)


def test_digest_round_trip():
    digest = oci.Digest.of(b"hello")
    assert oci.Digest.parse(str(digest)) == digest
    assert str(digest).startswith("sha256:") and len(digest.hex) == 64
    assert len(oci.Digest.of(b"hello", "sha512").hex) == 128


@pytest.mark.parametrize(
    "text, error",
    [
        ("sha256", DigestInvalid),
        ("sha256:" + "A" * 64, DigestInvalid),
        ("sha256:" + "a" * 63, DigestInvalid),
        ("sha512:" + "a" * 64, DigestInvalid),
        ("sha256:../../etc/passwd", DigestInvalid),
        ("md5:" + "a" * 32, Unsupported),
        ("blake3:" + "a" * 64, Unsupported),
    ],
)
def test_bad_digests(text, error):
    with pytest.raises(error):
        oci.Digest.parse(text)
