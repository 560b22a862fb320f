"""Manifest routes: end-3 (GET/HEAD), end-7 (PUT), end-9 (DELETE)."""

from __future__ import annotations

from quaylock import oci
from quaylock.api.http import Request, Response, actor_of, header
from quaylock.config import size_limits
from quaylock.errors import ManifestUnknown
from quaylock.services.registry import Registry


async def get_manifest(registry: Registry, request: Request) -> Response:
    reference = request.params["reference"]
    if not (oci.is_tag(reference) or oci.is_digest(reference)):
        # The conformance suite expects a miss, not a 400, for a bad name.
        raise ManifestUnknown(
            f"manifest {reference[:80]!r} is not a valid tag or digest"
        )
    if oci.is_digest(reference):
        reference = str(oci.Digest.parse(reference))
    manifest = await registry.get_manifest(request.params["name"], reference)
    # A `pull` signature policy guards consumers. Those who may push here
    # can read what they pushed, or no signer could read what it signs.
    if request.rights is None or "push" not in request.rights:
        await registry.signing.require_for_pull(request.params["name"], manifest)
    headers = [
        header("content-type", manifest.media_type),
        header("docker-content-digest", manifest.digest),
        header("etag", f'"{manifest.digest}"'),
    ]
    if request.method == "HEAD":
        return Response(200, headers, length=manifest.size)
    return Response(200, headers, body=manifest.content)


async def put_manifest(registry: Registry, request: Request) -> Response:
    name = request.params["name"]
    limits = size_limits(registry.config.limits, name)
    content = await request.body(
        limits.manifest_max_bytes, limits.sources["manifest_max_bytes"]
    )
    manifest = await registry.put_manifest(
        name,
        request.params["reference"],
        request.content_type(),
        content,
        actor_of(request),
    )
    headers = [
        header("location", f"/v2/{name}/manifests/{manifest.digest}"),
        header("docker-content-digest", manifest.digest),
    ]
    if manifest.subject:
        # distribution-spec "Pushing Manifests with Subject".
        headers.append(header("oci-subject", manifest.subject))
    return Response(201, headers)


async def delete_manifest(registry: Registry, request: Request) -> Response:
    await registry.delete_manifest(
        request.params["name"], request.params["reference"], actor_of(request)
    )
    return Response(202)
