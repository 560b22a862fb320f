"""The one table from registry errors to HTTP status and OCI error code.

The body is the spec's error envelope (distribution-spec "Error Codes"):
``{"errors": [{"code": ..., "message": ..., "detail": ...}]}``.
"""

from __future__ import annotations

import json

from quaylock import errors as e

# class: (HTTP status, OCI code). The first thirteen codes are the
# distribution-spec's; RANGE_INVALID and PAGINATION_NUMBER_INVALID are
# Distribution's, which clients already know.
ERROR_TABLE: dict[type[e.RegistryError], tuple[int, str]] = {
    e.BlobUnknown: (404, "BLOB_UNKNOWN"),
    e.BlobUploadInvalid: (400, "BLOB_UPLOAD_INVALID"),
    e.BlobUploadUnknown: (404, "BLOB_UPLOAD_UNKNOWN"),
    e.DigestInvalid: (400, "DIGEST_INVALID"),
    e.ManifestBlobUnknown: (400, "MANIFEST_BLOB_UNKNOWN"),
    e.ManifestInvalid: (400, "MANIFEST_INVALID"),
    e.ManifestSchemaUnsupported: (415, "MANIFEST_INVALID"),
    e.ManifestUnknown: (404, "MANIFEST_UNKNOWN"),
    e.NameInvalid: (400, "NAME_INVALID"),
    e.NameUnknown: (404, "NAME_UNKNOWN"),
    e.SizeInvalid: (400, "SIZE_INVALID"),
    e.TooLarge: (413, "SIZE_INVALID"),
    e.Unauthorized: (401, "UNAUTHORIZED"),
    e.Denied: (403, "DENIED"),
    e.InUse: (409, "DENIED"),
    e.Held: (403, "DENIED"),
    e.TooManyRequests: (429, "TOOMANYREQUESTS"),
    e.Unsupported: (415, "UNSUPPORTED"),
    e.MethodNotAllowed: (405, "UNSUPPORTED"),
    e.RangeInvalid: (416, "RANGE_INVALID"),
    e.TagInvalid: (400, "TAG_INVALID"),
    e.PaginationInvalid: (400, "PAGINATION_NUMBER_INVALID"),
    e.BadRequest: (400, "BAD_REQUEST"),
    e.Conflict: (409, "CONFLICT"),
    e.NotFound: (404, "NOT_FOUND"),
    e.Unavailable: (503, "UNAVAILABLE"),
    e.InsufficientStorage: (507, "UNAVAILABLE"),
    e.RequestTimeout: (408, "REQUEST_TIMEOUT"),
}

# Codes the distribution-spec defines; a test checks the table covers them.
SPEC_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    }
)

_DEFAULT_MESSAGES = {
    "BLOB_UNKNOWN": "blob unknown to registry",
    "BLOB_UPLOAD_INVALID": "blob upload invalid",
    "BLOB_UPLOAD_UNKNOWN": "blob upload unknown to registry",
    "DIGEST_INVALID": "provided digest did not match uploaded content",
    "MANIFEST_BLOB_UNKNOWN": "manifest references a blob unknown to registry",
    "MANIFEST_INVALID": "manifest invalid",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "NAME_INVALID": "invalid repository name",
    "NAME_UNKNOWN": "repository name not known to registry",
    "SIZE_INVALID": "provided length did not match content length",
    "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "UNSUPPORTED": "the operation is unsupported",
    "TOOMANYREQUESTS": "too many requests",
    "RANGE_INVALID": "invalid content range",
    "TAG_INVALID": "manifest tag did not match URI",
    "PAGINATION_NUMBER_INVALID": "invalid number of results requested",
    "NOT_FOUND": "no such route",
    "UNAVAILABLE": "service unavailable",
}


def status_and_code(error: e.RegistryError) -> tuple[int, str]:
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return 500, "UNKNOWN"


def error_body(error: e.RegistryError) -> tuple[int, bytes]:
    """Return the status and the JSON body for `error`."""
    status, code = status_and_code(error)
    entry = {
        "code": code,
        "message": error.message or _DEFAULT_MESSAGES.get(code, code.lower()),
    }
    if error.detail is not None:
        entry["detail"] = error.detail
    return status, json.dumps({"errors": [entry]}).encode()


def internal_error_body() -> bytes:
    return b'{"errors":[{"code":"UNKNOWN","message":"internal server error"}]}'
