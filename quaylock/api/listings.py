"""Listing routes: end-1 (/v2/), end-8 (tags list), the catalog and end-12
(referrers).

Pages follow the spec: at most `n` entries, sorted lexically, starting after
`last`, with an RFC 8288 Link header to the next page when there is one.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from quaylock.api.http import JSON, Request, Response, header
from quaylock.oci import OCI_INDEX, Digest
from quaylock.services.registry import Page, Registry


async def api_version(registry: Registry, request: Request) -> Response:
    return Response(200, [JSON], body=b"{}")


def _page_response(path: str, key: str, page: Page, extra: dict) -> Response:
    body = json.dumps({**extra, key: page.items}, separators=(",", ":")).encode()
    headers = [JSON]
    if page.next_last is not None:
        query = urlencode({"n": page.limit, "last": page.next_last})
        headers.append(header("link", f'<{path}?{query}>; rel="next"'))
    return Response(200, headers, body=body)


async def list_tags(registry: Registry, request: Request) -> Response:
    name = request.params["name"]
    query = request.query
    page = await registry.list_tags(name, query.get("n"), query.get("last"))
    return _page_response(f"/v2/{name}/tags/list", "tags", page, {"name": name})


async def catalog(registry: Registry, request: Request) -> Response:
    query = request.query
    page = await registry.list_repositories(
        query.get("n"), query.get("last"), request.may_pull
    )
    return _page_response("/v2/_catalog", "repositories", page, {})


async def list_referrers(registry: Registry, request: Request) -> Response:
    name = request.params["name"]
    digest = Digest.parse(request.params["digest"])
    artifact_type = request.query.get("artifactType") or None
    body, next_last = await registry.referrers(
        name, digest, artifact_type, request.query.get("last") or None
    )
    headers = [header("content-type", OCI_INDEX)]
    if artifact_type is not None:
        headers.append((b"oci-filters-applied", b"artifactType"))
    if next_last is not None:
        # distribution-spec "Listing Referrers": further pages by Link header.
        query = {"last": next_last}
        if artifact_type is not None:
            query["artifactType"] = artifact_type
        url = f"/v2/{name}/referrers/{digest}?{urlencode(query)}"
        headers.append(header("link", f'<{url}>; rel="next"'))
    return Response(200, headers, body=body)
