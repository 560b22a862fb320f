"""Small client-side helpers the API tests share: push blobs and manifests
the way registry clients do, over a real socket."""

from __future__ import annotations

import hashlib
import json
import uuid

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY_JSON = "application/vnd.oci.empty.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unique_repo(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    """POST then PUT ?digest=, the two-step push most clients use."""
    digest = sha256(data)
    started = client.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    done = client.put(
        started.headers["location"],
        params={"digest": digest},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return digest


def descriptor(media_type: str, data: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def image_manifest(config: bytes, layers: list[bytes], **extra) -> bytes:
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
        **extra,
    }
    return json.dumps(body).encode()


def push_manifest(
    client: httpx.Client,
    repo: str,
    reference: str,
    content: bytes,
    media_type: str = OCI_MANIFEST,
) -> httpx.Response:
    return client.put(
        f"/v2/{repo}/manifests/{reference}",
        content=content,
        headers={"content-type": media_type},
    )


def push_image(
    client: httpx.Client, repo: str, tag: str | None = "v1", seed: str = ""
) -> dict:
    """Push a small image (config + two layers) and return its parts."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layers = [f"layer-one {seed}".encode() * 100, f"layer-two {seed}".encode() * 300]
    for blob in (config, *layers):
        push_blob(client, repo, blob)
    manifest = image_manifest(config, layers)
    response = push_manifest(client, repo, tag or sha256(manifest), manifest)
    assert response.status_code == 201, response.text
    return {
        "config": config,
        "layers": layers,
        "manifest": manifest,
        "digest": sha256(manifest),
    }


def error_code(response: httpx.Response) -> str | None:
    try:
        return response.json()["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
