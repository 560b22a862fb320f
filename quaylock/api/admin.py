"""The admin HTTP API: users and robot accounts, for admins only.

    GET    /admin/v1/users              list users
    POST   /admin/v1/users              {"name", "password", "admin"?, "groups"?}
    PATCH  /admin/v1/users/<name>       {"password"?, "admin"?, "disabled"?, "groups"?}
    DELETE /admin/v1/users/<name>       delete the user, revoke its robots
    GET    /admin/v1/robots             list robots (never their secrets)
    POST   /admin/v1/robots             {"name", "owner", "repositories", "actions",
                                         "expires_in_seconds"?} -> {"name", "secret"}
    DELETE /admin/v1/robots/<name>      revoke at once
    GET    /admin/v1/signatures?repository=R&digest=D
                                        signature status of a manifest under
                                        the policy for R (policy.signatures)

Callers authenticate with Basic credentials of an admin user, or with a
bearer token of ours for an admin user that holds the scope
``registry:admin:*`` (so a leaked pull token of an admin manages nothing). Robots never act as
admins here, whatever their owner is. With authentication off the API is
off too: there would be no one to tell admins from others.
"""

from __future__ import annotations

import json

from quaylock import oci

from quaylock.api.http import JSON, Request, Response
from quaylock.errors import BadRequest, Denied, Unauthorized
from quaylock.policy.accounts import Subject
from quaylock.policy.auth import Authenticator, decode_basic
from quaylock.policy.tokens import InvalidToken

_BODY_MAX_BYTES = 64 * 1024


async def _admin(auth: Authenticator, request: Request) -> Subject:
    header = request.headers.get("authorization", "")
    kind, _, value = header.partition(" ")
    subject = None
    if kind.lower() == "basic":
        name, password = decode_basic(value.strip())
        address = (request.scope.get("client") or ("", 0))[0]
        subject = await auth.accounts.authenticate(name, password, address)
    elif kind.lower() == "bearer":
        try:
            claims = auth.tokens.verify(value.strip())
        except InvalidToken:
            raise Unauthorized("invalid token") from None
        admin_scope = any(
            a.type == "registry" and a.name == "admin" for a in claims.access
        )
        if claims.ours and admin_scope:
            subject = auth.accounts.subject(claims.subject)
    if subject is None:
        raise Unauthorized("admin credentials required")
    if subject.kind != "user" or not subject.admin:
        raise Denied(f"{subject.label} is not an admin")
    request.subject = subject
    return subject


async def _body(request: Request) -> dict:
    raw = await request.body(_BODY_MAX_BYTES)
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _json(status: int, value) -> Response:
    return Response(status, [JSON], body=json.dumps(value).encode())


def _field(body: dict, name: str, kind, required: bool = False):
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{name} has the wrong type")
    return value


def _strings(body: dict, name: str, required: bool = False) -> list[str] | None:
    value = _field(body, name, list, required)
    if value is not None and not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of strings")
    return value


def _password(body: dict, required: bool = False) -> str | None:
    password = _field(body, "password", str, required)
    if password is not None and len(password) < 8:
        raise BadRequest("password needs at least 8 characters")
    return password


async def list_users(auth: Authenticator, request: Request) -> Response:
    await _admin(auth, request)
    return _json(200, auth.accounts.list_users())


async def create_user(auth: Authenticator, request: Request) -> Response:
    await _admin(auth, request)
    body = await _body(request)
    password = _password(body, required=True)
    await auth.accounts.add_user(
        _field(body, "name", str, required=True),
        password,
        bool(_field(body, "admin", bool)),
        _strings(body, "groups") or [],
    )
    return _json(201, {"name": body["name"]})


async def update_user(auth: Authenticator, request: Request) -> Response:
    await _admin(auth, request)
    name = request.params["user"]
    body = await _body(request)
    if (password := _password(body)) is not None:
        await auth.accounts.set_password(name, password)
    if (admin := _field(body, "admin", bool)) is not None:
        await auth.accounts.set_admin(name, admin)
    if (disabled := _field(body, "disabled", bool)) is not None:
        await auth.accounts.set_disabled(name, disabled)
    if (groups := _strings(body, "groups")) is not None:
        await auth.accounts.set_groups(name, groups)
    return _json(200, {"name": name})


async def delete_user(auth: Authenticator, request: Request) -> Response:
    subject = await _admin(auth, request)
    if request.params["user"] == subject.name:
        raise Denied("an admin cannot delete itself")
    await auth.accounts.delete_user(request.params["user"])
    return Response(204)


async def list_robots(auth: Authenticator, request: Request) -> Response:
    await _admin(auth, request)
    return _json(200, auth.accounts.list_robots())


async def create_robot(auth: Authenticator, request: Request) -> Response:
    await _admin(auth, request)
    body = await _body(request)
    actions = _strings(body, "actions", required=True)
    unknown = [a for a in actions if a not in ("pull", "push", "delete")]
    if unknown:
        raise BadRequest(f"unknown action {unknown[0]!r}")
    name = _field(body, "name", str, required=True)
    secret = await auth.accounts.add_robot(
        name,
        _field(body, "owner", str, required=True),
        [
            {
                "repositories": _strings(body, "repositories", required=True),
                "actions": actions,
            }
        ],
        _field(body, "expires_in_seconds", int),
    )
    return _json(201, {"name": f"robot${name}", "secret": secret})


async def revoke_robot(auth: Authenticator, request: Request) -> Response:
    await _admin(auth, request)
    await auth.accounts.revoke_robot(request.params["robot"])
    return Response(204)


async def signature_status(auth: Authenticator, request: Request) -> Response:
    await _admin(auth, request)
    registry = request.scope["quaylock.registry"]
    repository = request.query.get("repository", "")
    digest = request.query.get("digest", "")
    oci.check_name(repository)
    oci.Digest.parse(digest)
    found = registry.signing.policy_for(repository)
    if found is None:
        return _json(200, {"repository": repository, "digest": digest, "policy": None})
    index, policy, roots = found
    verdict = await registry.signing.status(repository, digest, roots)
    return _json(
        200,
        {
            "repository": repository,
            "digest": digest,
            "policy": f"signatures.policies[{index}]",
            "mode": policy.mode,
            "verified": verdict.verified,
            "signer": verdict.signer,
            "reason": verdict.reason,
        },
    )
