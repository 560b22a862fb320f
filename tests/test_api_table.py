"""One row per endpoint and error of the distribution-spec (end-1 to end-13).

Each row runs against a freshly seeded repository on a real server: a small
image tagged `v1`. The row's id names the spec endpoint and the status it
expects, so a failure reads as "end-7 PUT manifest, missing blob, 400".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    error_code,
    image_manifest,
    push_blob,
    push_image,
    push_manifest,
    sha256,
    unique_repo,
)

MISSING = sha256(b"never pushed")
LOOSE = b"a blob no manifest names"


@dataclass
class Seed:
    repo: str
    image: dict

    @property
    def manifest(self) -> str:
        return self.image["digest"]

    @property
    def layer(self) -> str:
        return sha256(self.image["layers"][0])

    @property
    def config(self) -> bytes:
        return self.image["config"]

    @property
    def loose(self) -> str:
        """A blob in the repository that no manifest refers to."""
        return sha256(LOOSE)


@dataclass
class Case:
    id: str
    method: str
    path: Callable[[Seed], str] | str
    status: int
    code: str | None = None
    headers: dict = field(default_factory=dict)
    body: Callable[[Seed], bytes] | bytes | None = None
    params: Callable[[Seed], dict] | dict | None = None
    # Runs after seeding, before the request: (client, seed) -> anything.
    setup: Callable | None = None


def _v(value, seed):
    return value(seed) if callable(value) else value


def _missing_layer_manifest(s: Seed) -> bytes:
    return image_manifest(s.config, [b"a layer nobody pushed"])


def _index(children: list[tuple[str, int]]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d, "size": n} for d, n in children
            ],
        }
    ).encode()


CT_MANIFEST = {"content-type": OCI_MANIFEST}

CASES = [
    Case("end-1 GET /v2/ 200", "GET", "/v2/", 200),
    Case("end-2 GET blob 200", "GET", lambda s: f"/v2/{s.repo}/blobs/{s.layer}", 200),
    Case("end-2 HEAD blob 200", "HEAD", lambda s: f"/v2/{s.repo}/blobs/{s.layer}", 200),
    Case("end-2 GET blob missing 404", "GET", lambda s: f"/v2/{s.repo}/blobs/{MISSING}",
         404, "BLOB_UNKNOWN"),
    Case("end-2 GET blob bad digest 400", "GET", lambda s: f"/v2/{s.repo}/blobs/sha256:xyz",
         400, "DIGEST_INVALID"),
    Case("end-2 GET blob unknown algorithm 415", "GET",
         lambda s: f"/v2/{s.repo}/blobs/md5:{'a' * 32}", 415, "UNSUPPORTED"),
    Case("end-2 GET blob range 206", "GET", lambda s: f"/v2/{s.repo}/blobs/{s.layer}", 206,
         headers={"range": "bytes=0-9"}),
    Case("end-2 GET blob range past end 416", "GET",
         lambda s: f"/v2/{s.repo}/blobs/{s.layer}", 416, "RANGE_INVALID",
         headers={"range": "bytes=999999-"}),
    Case("end-2 GET blob in other repository 404", "GET",
         lambda s: f"/v2/{s.repo}-other/blobs/{s.layer}", 404, "BLOB_UNKNOWN"),
    Case("end-3 GET manifest by tag 200", "GET", lambda s: f"/v2/{s.repo}/manifests/v1", 200),
    Case("end-3 GET manifest by digest 200", "GET",
         lambda s: f"/v2/{s.repo}/manifests/{s.manifest}", 200),
    Case("end-3 HEAD manifest 200", "HEAD", lambda s: f"/v2/{s.repo}/manifests/v1", 200),
    Case("end-3 GET manifest unknown tag 404", "GET",
         lambda s: f"/v2/{s.repo}/manifests/nope", 404, "MANIFEST_UNKNOWN"),
    Case("end-3 GET manifest invalid reference 404", "GET",
         lambda s: f"/v2/{s.repo}/manifests/.INVALID", 404, "MANIFEST_UNKNOWN"),
    Case("end-3 HEAD manifest unknown 404", "HEAD",
         lambda s: f"/v2/{s.repo}/manifests/{MISSING}", 404),
    Case("end-4a POST upload 202", "POST", lambda s: f"/v2/{s.repo}/blobs/uploads/", 202),
    Case("end-4b POST monolithic 201", "POST", lambda s: f"/v2/{s.repo}/blobs/uploads/", 201,
         params={"digest": sha256(b"mono")}, body=b"mono"),
    Case("end-4b POST monolithic wrong digest 400", "POST",
         lambda s: f"/v2/{s.repo}/blobs/uploads/", 400, "DIGEST_INVALID",
         params={"digest": sha256(b"other")}, body=b"mono"),
    Case("end-4b POST monolithic sha512 201", "POST", lambda s: f"/v2/{s.repo}/blobs/uploads/",
         201, params={"digest": "sha512:" + __import__("hashlib").sha512(b"x").hexdigest()},
         body=b"x"),
    Case("end-5 PATCH unknown upload 404", "PATCH",
         lambda s: f"/v2/{s.repo}/blobs/uploads/{'A' * 32}", 404, "BLOB_UPLOAD_UNKNOWN",
         body=b"abc"),
    Case("end-6 PUT unknown upload 404", "PUT",
         lambda s: f"/v2/{s.repo}/blobs/uploads/{'A' * 32}", 404, "BLOB_UPLOAD_UNKNOWN",
         params={"digest": MISSING}),
    Case("end-7 PUT manifest by tag 201", "PUT", lambda s: f"/v2/{s.repo}/manifests/v2", 201,
         headers=CT_MANIFEST, body=lambda s: s.image["manifest"]),
    Case("end-7 PUT manifest by digest 201", "PUT",
         lambda s: f"/v2/{s.repo}/manifests/{s.manifest}", 201,
         headers=CT_MANIFEST, body=lambda s: s.image["manifest"]),
    Case("end-7 PUT manifest digest mismatch 400", "PUT",
         lambda s: f"/v2/{s.repo}/manifests/{MISSING}", 400, "DIGEST_INVALID",
         headers=CT_MANIFEST, body=lambda s: s.image["manifest"]),
    Case("end-7 PUT manifest malformed digest 400", "PUT",
         lambda s: f"/v2/{s.repo}/manifests/sha256:baddigeststring", 400, "DIGEST_INVALID",
         headers=CT_MANIFEST, body=lambda s: s.image["manifest"]),
    Case("end-7 PUT manifest invalid JSON 400", "PUT", lambda s: f"/v2/{s.repo}/manifests/x",
         400, "MANIFEST_INVALID", headers=CT_MANIFEST, body=b"{not json"),
    Case("end-7 PUT manifest missing blob 400", "PUT", lambda s: f"/v2/{s.repo}/manifests/x",
         400, "MANIFEST_BLOB_UNKNOWN", headers=CT_MANIFEST, body=_missing_layer_manifest),
    Case("end-7 PUT index missing child 400", "PUT", lambda s: f"/v2/{s.repo}/manifests/x",
         400, "MANIFEST_BLOB_UNKNOWN", headers={"content-type": OCI_INDEX},
         body=_index([(MISSING, 10)])),
    Case("end-7 PUT index of existing child 201", "PUT", lambda s: f"/v2/{s.repo}/manifests/multi",
         201, headers={"content-type": OCI_INDEX},
         body=lambda s: _index([(s.manifest, len(s.image["manifest"]))])),
    Case("end-7 PUT manifest media type mismatch 400", "PUT",
         lambda s: f"/v2/{s.repo}/manifests/x", 400, "MANIFEST_INVALID",
         headers={"content-type": OCI_INDEX}, body=lambda s: s.image["manifest"]),
    Case("end-7 PUT schema 1 manifest 415", "PUT", lambda s: f"/v2/{s.repo}/manifests/x", 415,
         "MANIFEST_INVALID",
         headers={"content-type": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
         body=b'{"schemaVersion": 1, "name": "x", "tag": "x", "fsLayers": []}'),
    Case("end-7 PUT manifest invalid tag 400", "PUT",
         lambda s: f"/v2/{s.repo}/manifests/-bad", 400, "TAG_INVALID",
         headers=CT_MANIFEST, body=lambda s: s.image["manifest"]),
    Case("end-7 PUT manifest over 4 MiB 413", "PUT", lambda s: f"/v2/{s.repo}/manifests/big",
         413, "SIZE_INVALID", headers=CT_MANIFEST, body=b" " * (4 * 1024 * 1024 + 1)),
    Case("end-8a GET tags list 200", "GET", lambda s: f"/v2/{s.repo}/tags/list", 200),
    Case("end-8b GET tags list n=1 200", "GET", lambda s: f"/v2/{s.repo}/tags/list", 200,
         params={"n": "1"}),
    Case("end-8a GET tags list unknown repository 404", "GET",
         lambda s: f"/v2/{s.repo}-nope/tags/list", 404, "NAME_UNKNOWN"),
    Case("end-8b GET tags list n=abc 400", "GET", lambda s: f"/v2/{s.repo}/tags/list", 400,
         "PAGINATION_NUMBER_INVALID", params={"n": "abc"}),
    Case("end-9 DELETE manifest by digest 202", "DELETE",
         lambda s: f"/v2/{s.repo}/manifests/{s.manifest}", 202),
    Case("end-9 DELETE tag 202", "DELETE", lambda s: f"/v2/{s.repo}/manifests/v1", 202),
    Case("end-9 DELETE manifest unknown 404", "DELETE",
         lambda s: f"/v2/{s.repo}/manifests/{MISSING}", 404, "MANIFEST_UNKNOWN"),
    Case("end-10 DELETE blob 202", "DELETE", lambda s: f"/v2/{s.repo}/blobs/{s.loose}", 202),
    Case("end-10 DELETE blob a manifest uses 409", "DELETE",
         lambda s: f"/v2/{s.repo}/blobs/{s.layer}", 409, "DENIED"),
    Case("end-9 DELETE manifest an index uses 409", "DELETE",
         lambda s: f"/v2/{s.repo}/manifests/{s.manifest}", 409, "DENIED",
         setup=lambda c, s: push_manifest(
             c, s.repo, "multi", _index([(s.manifest, len(s.image["manifest"]))]), OCI_INDEX)),
    Case("end-10 DELETE blob unknown 404", "DELETE",
         lambda s: f"/v2/{s.repo}/blobs/{MISSING}", 404, "BLOB_UNKNOWN"),
    Case("end-11 POST mount from repository 201", "POST",
         lambda s: f"/v2/{s.repo}-copy/blobs/uploads/", 201,
         params=lambda s: {"mount": s.layer, "from": s.repo}),
    Case("end-11 POST mount without from 201", "POST",
         lambda s: f"/v2/{s.repo}-copy/blobs/uploads/", 201, params=lambda s: {"mount": s.layer}),
    Case("end-11 POST mount of unknown blob falls back 202", "POST",
         lambda s: f"/v2/{s.repo}-copy/blobs/uploads/", 202,
         params=lambda s: {"mount": MISSING, "from": s.repo}),
    Case("end-11 POST mount from wrong repository falls back 202", "POST",
         lambda s: f"/v2/{s.repo}-copy/blobs/uploads/", 202,
         params=lambda s: {"mount": s.layer, "from": f"{s.repo}-nowhere"}),
    Case("end-12a GET referrers 200", "GET", lambda s: f"/v2/{s.repo}/referrers/{s.manifest}",
         200),
    Case("end-12b GET referrers with artifactType 200", "GET",
         lambda s: f"/v2/{s.repo}/referrers/{s.manifest}", 200,
         params={"artifactType": "application/x-test"}),
    Case("end-12 GET referrers unknown repository 200", "GET",
         lambda s: f"/v2/{s.repo}-nope/referrers/{MISSING}", 200),
    Case("end-12 GET referrers bad digest 400", "GET",
         lambda s: f"/v2/{s.repo}/referrers/sha256:zz", 400, "DIGEST_INVALID"),
    Case("end-13 GET upload unknown 404", "GET",
         lambda s: f"/v2/{s.repo}/blobs/uploads/{'B' * 32}", 404, "BLOB_UPLOAD_UNKNOWN"),
    Case("catalog GET 200", "GET", "/v2/_catalog", 200),
    Case("catalog GET n=-1 400", "GET", "/v2/_catalog", 400, "PAGINATION_NUMBER_INVALID",
         params={"n": "-1"}),
    Case("name upper-case 400", "GET", "/v2/Upper/tags/list", 400, "NAME_INVALID"),
    Case("name with double slash 400", "GET", "/v2/a//b/tags/list", 400, "NAME_INVALID"),
    Case("name starting with separator 400", "GET", "/v2/-a/tags/list", 400, "NAME_INVALID"),
    Case("name of 256 characters 400", "GET", f"/v2/{'a' * 256}/tags/list", 400,
         "NAME_INVALID"),
    Case("unknown route 404", "GET", "/v2/x/unknown", 404, "NOT_FOUND"),
    Case("method not allowed 405", "POST", lambda s: f"/v2/{s.repo}/manifests/v1", 405,
         "UNSUPPORTED"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_endpoint(case: Case, client):
    repo = unique_repo("table")
    seed = Seed(repo, push_image(client, repo))
    push_blob(client, repo, LOOSE)
    if case.setup is not None:
        case.setup(client, seed)
    response = client.request(
        case.method,
        _v(case.path, seed),
        headers=case.headers,
        content=_v(case.body, seed),
        params=_v(case.params, seed),
    )
    assert response.status_code == case.status, response.text
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    if case.code is not None and case.method != "HEAD":
        assert error_code(response) == case.code, response.text
        assert response.json()["errors"][0]["message"]
