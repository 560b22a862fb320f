"""The error table covers the spec's codes and builds the spec's body."""

from __future__ import annotations

import json

from quaylock import errors
from quaylock.api.errors import ERROR_TABLE, SPEC_CODES, error_body


def test_every_spec_code_has_a_row():
    assert SPEC_CODES <= {code for _, code in ERROR_TABLE.values()}


def test_every_registry_error_class_has_a_row():
    classes = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.RegistryError)
    ]
    missing = [
        c.__name__
        for c in classes
        if c is not errors.RegistryError and c not in ERROR_TABLE
    ]
    assert missing == []


def test_error_body_shape():
    status, body = error_body(
        errors.TooLarge("too big: limit 10", detail={"limit": 10})
    )
    assert status == 413
    assert json.loads(body) == {
        "errors": [
            {
                "code": "SIZE_INVALID",
                "message": "too big: limit 10",
                "detail": {"limit": 10},
            }
        ]
    }
