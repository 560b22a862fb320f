"""Parsing and validation of manifests on push.

A pushed manifest is accepted only when it is one of the four manifest
formats clients push today (OCI image manifest and index, Docker schema 2
manifest and manifest list), its JSON is well formed, the media type in its
body agrees with the request's Content-Type, and every descriptor in it is
well formed. Whether the blobs it names exist is checked by the metadata
store, inside the transaction that stores it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from quaylock import oci
from quaylock.errors import (
    DigestInvalid,
    ManifestInvalid,
    ManifestSchemaUnsupported,
    Unsupported,
)
from quaylock.metadata.store import Reference

# Non-distributable layers (Windows base layers) are fetched from elsewhere
# and never pushed, so their blobs need not exist here.
_FOREIGN_LAYERS = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


@dataclass(slots=True)
class ParsedManifest:
    media_type: str
    references: list[Reference]
    artifact_type: str | None = None
    subject: str | None = None
    annotations: dict | None = None
    # Layers of an image manifest, or children of an index, as listed.
    layers: int = 0
    children: int = 0


def parse_manifest(content: bytes, content_type: str | None) -> ParsedManifest:
    """Check a pushed manifest and list what it refers to.

    Args:
        content: the request body, as pushed (its digest is of these bytes).
        content_type: the request's Content-Type, without parameters.

    Raises:
        ManifestInvalid: the JSON or a descriptor is malformed, or the media
            types disagree.
        ManifestSchemaUnsupported: a Docker schema 1 manifest.
    """
    if content_type in oci.DOCKER_SCHEMA1:
        raise _schema1()
    body = _strict_json(content)
    if not isinstance(body, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    version = body.get("schemaVersion")
    if version == 1:
        raise _schema1()
    if type(version) is not int or version != 2:
        raise ManifestInvalid("manifest schemaVersion must be the integer 2")

    media_type = _media_type(body, content_type)
    if media_type in oci.INDEX_MANIFESTS:
        parsed = _parse_index(body, media_type)
    else:
        parsed = _parse_image(body, media_type)

    subject = body.get("subject")
    if subject is not None:
        parsed.subject = _descriptor(subject, "subject").digest
    parsed.annotations = _annotations(body, "annotations")
    return parsed


def _strict_json(content: bytes) -> object:
    """Parse JSON as strict clients (Go's encoding/json) will read it back:
    UTF-8 without a byte-order mark, no NaN or Infinity, no repeated keys.
    A manifest that other clients parse differently from us is refused,
    since what a signature covers must mean one thing."""
    if content.startswith(b"\xef\xbb\xbf"):
        raise ManifestInvalid("manifest must be UTF-8 without a byte-order mark")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestInvalid(
            f"manifest is not UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    try:
        return json.loads(
            text, parse_constant=_no_constant, object_pairs_hook=_no_repeats
        )
    except RecursionError:
        raise ManifestInvalid("manifest JSON is nested too deeply") from None
    except ValueError as exc:
        raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _no_repeats(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {repeated[:60]!r} appears twice in one object")
    return result


def _annotations(holder: dict, where: str) -> dict | None:
    annotations = holder.get("annotations")
    if annotations is None:
        return None
    if not isinstance(annotations, dict) or not all(
        isinstance(v, str) for v in annotations.values()
    ):
        raise ManifestInvalid(f"{where} must map strings to strings")
    return annotations


def _schema1() -> ManifestSchemaUnsupported:
    return ManifestSchemaUnsupported(
        "Docker schema 1 manifests are not accepted; push with a client that "
        "writes schema 2 or OCI manifests"
    )


def _media_type(body: dict, content_type: str | None) -> str:
    declared = body.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    header = content_type if content_type in oci.MANIFEST_MEDIA_TYPES else None
    if declared and header and declared != header:
        raise ManifestInvalid(
            f"mediaType {declared!r} in the manifest does not match "
            f"Content-Type {header!r}"
        )
    media_type = declared or header
    if media_type is None:
        # OCI lets mediaType be absent; infer it from the shape.
        if "manifests" in body:
            media_type = oci.OCI_INDEX
        elif "config" in body:
            media_type = oci.OCI_MANIFEST
        else:
            raise ManifestInvalid(
                f"unknown manifest media type {content_type!r}; expected one "
                f"of {', '.join(sorted(oci.MANIFEST_MEDIA_TYPES))}"
            )
    if media_type not in oci.MANIFEST_MEDIA_TYPES:
        raise ManifestInvalid(
            f"unsupported manifest media type {media_type!r}; expected one "
            f"of {', '.join(sorted(oci.MANIFEST_MEDIA_TYPES))}"
        )
    return media_type


@dataclass(slots=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int


def _descriptor(value: object, where: str) -> _Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where}: a descriptor must be an object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where}: mediaType is missing")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{where}: digest is missing")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where}: size must be a whole number >= 0")
    try:
        oci.Digest.parse(digest)
    except (DigestInvalid, Unsupported) as exc:
        raise ManifestInvalid(f"{where}: {exc.message}") from None
    _annotations(value, f"{where}.annotations")
    return _Descriptor(media_type, digest, size)


def _parse_image(body: dict, media_type: str) -> ParsedManifest:
    config = _descriptor(body.get("config"), "config")
    layers = body.get("layers")
    if not isinstance(layers, list):
        raise ManifestInvalid("layers must be a list")
    parsed = ParsedManifest(media_type, [Reference(config.digest, "blob", config.size)])
    for i, layer in enumerate(layers):
        d = _descriptor(layer, f"layers[{i}]")
        if d.media_type in _FOREIGN_LAYERS:
            continue
        parsed.references.append(Reference(d.digest, "blob", d.size))
    parsed.artifact_type = _artifact_type(body) or config.media_type
    parsed.layers = len(layers)
    return parsed


def _parse_index(body: dict, media_type: str) -> ParsedManifest:
    manifests = body.get("manifests")
    if not isinstance(manifests, list):
        raise ManifestInvalid("manifests must be a list")
    parsed = ParsedManifest(media_type, [])
    for i, child in enumerate(manifests):
        d = _descriptor(child, f"manifests[{i}]")
        parsed.references.append(Reference(d.digest, "manifest", d.size))
    parsed.artifact_type = _artifact_type(body)
    parsed.children = len(manifests)
    return parsed


def _artifact_type(body: dict) -> str | None:
    value = body.get("artifactType")
    if value is not None and not isinstance(value, str):
        raise ManifestInvalid("artifactType must be a string")
    return value or None
