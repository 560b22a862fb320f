"""Upload routes: end-4a/4b (POST), end-5 (PATCH), end-6 (PUT), end-11
(mount), end-13 (GET status) and DELETE of a session.

Every answer about a session carries its Location, its Range (bytes
``0-<last>`` received; ``0-0`` when nothing is, as Distribution and clients
expect) and Docker-Upload-UUID.
"""

from __future__ import annotations

from quaylock.api.http import Request, Response, actor_of, header
from quaylock.errors import DigestInvalid, RangeInvalid
from quaylock.metadata.store import UploadRecord
from quaylock.oci import Digest
from quaylock.policy.clients import address_key
from quaylock.services.registry import Registry
from quaylock.services.uploads import Owner, parse_content_range


def owner_of(request: Request) -> Owner:
    """The session owner: the subject (with authentication on) and the
    client address."""
    subject = request.subject
    return Owner(
        subject=subject.label if subject is not None else "anonymous",
        # IPv6 clients count by their /64, which one host usually holds.
        client=address_key(request.client),
        per_subject=subject is not None,
    )


def _session_headers(name: str, upload_id: str, size: int) -> list[tuple[bytes, bytes]]:
    return [
        header("location", f"/v2/{name}/blobs/uploads/{upload_id}"),
        header("range", f"0-{max(size - 1, 0)}"),
        header("docker-upload-uuid", upload_id),
    ]


def _blob_created(name: str, digest: Digest) -> Response:
    return Response(
        201,
        [
            header("location", f"/v2/{name}/blobs/{digest}"),
            header("docker-content-digest", str(digest)),
        ],
    )


async def start_blob_upload(registry: Registry, request: Request) -> Response:
    name = request.params["name"]
    query = request.query
    await registry.check_new_repository(name, actor_of(request))

    # end-11: mount from another repository; on failure, a new session.
    mount = query.get("mount")
    if mount is not None:
        digest = Digest.parse(mount)
        owner = owner_of(request)
        mounted = await registry.mount_blob(
            name, digest, query.get("from"), request.may_pull,
            owner.subject if owner.per_subject else None,
        )  # fmt: skip
        if mounted is not None:
            return _blob_created(name, digest)
    # end-4b: the whole blob in this one request.
    elif "digest" in query:
        digest = Digest.parse(query["digest"])
        await registry.uploads.put_monolithic(
            name, digest, request.body_chunks, request.content_length(),
            owner_of(request),
        )  # fmt: skip
        return _blob_created(name, digest)

    record = await registry.uploads.start(name, owner_of(request))
    return Response(202, _session_headers(name, record.upload_id, 0))


async def _session(registry: Registry, request: Request) -> UploadRecord:
    return await registry.uploads.get(
        request.params["name"], request.params["upload_id"], owner_of(request)
    )


async def get_blob_upload(registry: Registry, request: Request) -> Response:
    record = await _session(registry, request)
    return Response(
        204, _session_headers(record.repository, record.upload_id, record.size)
    )


async def patch_blob_upload(registry: Registry, request: Request) -> Response:
    record = await _session(registry, request)
    content_range = None
    if "content-range" in request.headers:
        content_range = parse_content_range(request.headers["content-range"])
    try:
        size = await registry.uploads.append(
            record, request.body_chunks, content_range, request.content_length()
        )
    except RangeInvalid as exc:
        current = await registry.uploads.get(record.repository, record.upload_id)
        for key, value in _session_headers(
            record.repository, record.upload_id, current.size
        ):
            exc.headers[key.decode()] = value.decode()
        raise
    return Response(202, _session_headers(record.repository, record.upload_id, size))


async def put_blob_upload(registry: Registry, request: Request) -> Response:
    record = await _session(registry, request)
    if "digest" not in request.query:
        raise DigestInvalid(
            "the digest query parameter is required to finish an upload"
        )
    digest = Digest.parse(request.query["digest"])
    content_range = None
    if "content-range" in request.headers:
        content_range = parse_content_range(request.headers["content-range"])
    length = request.content_length()
    body = None if length == 0 else request.body_chunks
    await registry.uploads.finish(record, digest, body, content_range, length)
    return _blob_created(record.repository, digest)


async def cancel_blob_upload(registry: Registry, request: Request) -> Response:
    record = await _session(registry, request)
    await registry.uploads.cancel(record)
    return Response(204)
