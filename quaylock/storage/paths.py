"""Where the filesystem driver keeps bytes.

    <root>/
    ├── blobs/
    │   ├── sha256/
    │   │   └── ab/
    │   │       └── ab12…ef          one file a blob, named by its hex digest
    │   └── sha512/…
    └── uploads/
        └── <upload_id>              staged bytes of one upload session

Only digests and upload ids that passed their grammar check ever reach these
functions; repository names never become paths, so no name can reach outside
the root.
"""

from __future__ import annotations

import os
import re

_UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def blob_path(root: str, digest: str) -> str:
    algorithm, _, hex_ = digest.partition(":")
    return os.path.join(root, "blobs", algorithm, hex_[:2], hex_)


def uploads_dir(root: str) -> str:
    return os.path.join(root, "uploads")


def upload_path(root: str, upload_id: str) -> str:
    # One file a session, renamed into blobs/ on commit: no directory to
    # create and remove per upload (on ext4, creating inodes next to freshly
    # deleted ones was a fifth of a small push's CPU time).
    if not _UPLOAD_ID_RE.fullmatch(upload_id):
        raise ValueError(f"bad upload id {upload_id!r}")
    return os.path.join(root, "uploads", upload_id)


def is_upload_id(text: str) -> bool:
    return _UPLOAD_ID_RE.fullmatch(text) is not None
