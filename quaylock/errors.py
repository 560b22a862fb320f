"""The errors the registry reports to clients.

Services raise these; `quaylock.api.errors` maps each class to an HTTP status
and an OCI error code in one table. Drivers raise their own errors
(`quaylock.storage.driver.DriverError`), which services translate.

    RegistryError
    ├── BlobUnknown              a blob is not in the repository
    ├── BlobUploadInvalid        an upload request cannot be applied
    ├── BlobUploadUnknown        no such upload session
    ├── DigestInvalid            a digest is malformed or does not match content
    ├── ManifestBlobUnknown      a manifest refers to a blob or manifest not here
    ├── ManifestInvalid          a manifest fails validation
    │   └── ManifestSchemaUnsupported  schema 1 and other refused formats
    ├── ManifestUnknown          no manifest for that tag or digest
    ├── NameInvalid              a repository name outside the grammar
    ├── NameUnknown              no such repository
    ├── SizeInvalid              a length does not match the content
    ├── TooLarge                 a body is above a configured limit
    ├── RangeInvalid             a chunk is out of order or overlaps
    ├── TagInvalid               a tag outside the grammar
    ├── PaginationInvalid        `n` or `last` cannot be used
    ├── Unauthorized             authentication is required
    ├── Denied                   the subject may not do this
    │   ├── InUse                delete of content a manifest still refers to
    │   └── Held                 a look-alike name waits for an admin
    ├── TooManyRequests          a rate limit refused the request
    ├── Unsupported              an operation or algorithm we do not offer
    ├── MethodNotAllowed         the route exists, the method does not
    ├── BadRequest               an admin API body or field that cannot be used
    ├── Conflict                 an account of that name exists already
    ├── NotFound                 no such route
    ├── Unavailable              a store cannot serve now
    ├── RequestTimeout           a body stalled or came too slowly
    └── InsufficientStorage      the disk is at its free-space floor
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error a client may see.

    Args:
        message: what was wrong, and the limit where a limit was hit.
        detail: optional JSON-serialisable detail for the error body.
    """

    def __init__(self, message: str = "", detail: object = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers: dict[str, str] = {}
        # Which defence refused the request, for `quaylock_refusals_total`
        # (metrics.REFUSAL_REASONS); None: the class's own (api.app).
        self.reason: str | None = None


class BlobUnknown(RegistryError):
    pass


class BlobUploadInvalid(RegistryError):
    pass


class BlobUploadUnknown(RegistryError):
    pass


class DigestInvalid(RegistryError):
    pass


class ManifestBlobUnknown(RegistryError):
    pass


class ManifestInvalid(RegistryError):
    pass


class ManifestSchemaUnsupported(ManifestInvalid):
    pass


class ManifestUnknown(RegistryError):
    pass


class NameInvalid(RegistryError):
    pass


class NameUnknown(RegistryError):
    pass


class SizeInvalid(RegistryError):
    pass


class TooLarge(RegistryError):
    pass


class RangeInvalid(RegistryError):
    pass


class TagInvalid(RegistryError):
    pass


class PaginationInvalid(RegistryError):
    pass


class Unauthorized(RegistryError):
    pass


class Denied(RegistryError):
    pass


class InUse(Denied):
    pass


class Held(Denied):
    """A new tag or repository name looks like an existing one, and its rule
    says "hold": an admin must approve it (`quaylock tag holds`)."""


class TooManyRequests(RegistryError):
    pass


class Unsupported(RegistryError):
    pass


class MethodNotAllowed(RegistryError):
    pass


class BadRequest(RegistryError):
    pass


class Conflict(RegistryError):
    pass


class NotFound(RegistryError):
    pass


class Unavailable(RegistryError):
    pass


class RequestTimeout(RegistryError):
    """A request body stalled, or arrived slower than the server allows."""


class InsufficientStorage(RegistryError):
    """Free disk space is below `storage.min_free_*`: uploads wait."""
