"""The admin HTTP API, for admins only: accounts, tag rules, look-alike
names, and signature status.

    GET    /admin/v1/users              list users
    POST   /admin/v1/users              {"name", "password", "admin"?, "groups"?}
    PATCH  /admin/v1/users/<name>       {"password"?, "admin"?, "disabled"?, "groups"?}
    DELETE /admin/v1/users/<name>       delete the user, revoke its robots
    GET    /admin/v1/robots             list robots (never their secrets)
    POST   /admin/v1/robots             {"name", "owner", "repositories", "actions",
                                         "expires_in_seconds"?} -> {"name", "secret"}
    DELETE /admin/v1/robots/<name>      revoke at once
    GET    /admin/v1/tag-rules          configured rules, then stored ones
    POST   /admin/v1/tag-rules          a rule, as in tags.rules -> {"id"}
    DELETE /admin/v1/tag-rules/<id>     remove a stored rule
    GET    /admin/v1/allowed-names      names allowed although they look like others
    POST   /admin/v1/allowed-names      {"kind": "tag"|"repository", "repository"?, "name"}
    DELETE /admin/v1/allowed-names?kind=K&repository=R&name=N
    GET    /admin/v1/holds?state=S      held look-alike names (default pending)
    POST   /admin/v1/holds/<id>         {"decision": "approve"|"reject"}
    GET    /admin/v1/signatures?repository=R&digest=D
                                        signature status of a manifest under
                                        the policy for R (policy.signatures)

Callers authenticate with Basic credentials of an admin user, or with a
bearer token of ours for an admin user that holds the scope
``registry:admin:*`` (so a leaked pull token of an admin manages nothing).
Robots never act as admins here, whatever their owner is. With
authentication off the API is off too: there would be no one to tell admins
from others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlencode

from quaylock import oci
from quaylock.api.http import JSON, Request, Response, actor_of, header
from quaylock.errors import BadRequest, Denied, NotFound, Unauthorized, Unavailable
from quaylock.policy.accounts import ACTOR, Subject
from quaylock.policy.auth import Authenticator, decode_basic
from quaylock.policy.tokens import InvalidToken
from quaylock.services.registry import Registry


@dataclass(frozen=True, slots=True)
class Services:
    """What admin handlers act on."""

    auth: Authenticator
    registry: Registry


_BODY_MAX_BYTES = 64 * 1024


async def require_admin(services: Services, request: Request) -> Subject:
    """The admin a request comes from.

    Raises:
        Unauthorized: no credentials, or wrong ones.
        Denied: the subject is no admin.
    """
    auth = services.auth
    header = request.headers.get("authorization", "")
    kind, _, value = header.partition(" ")
    subject = None
    if kind.lower() == "basic":
        name, password = decode_basic(value.strip())
        address = request.client
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
    ACTOR.set(actor_of(request))
    return subject


async def _body(request: Request) -> dict:
    raw = await request.body(_BODY_MAX_BYTES)
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _listed(services: Services, request: Request, path: str, lister) -> Response:
    """One page of a list, by name: `n` (capped like the catalog's) and
    `last`, with a Link header to the next page as the catalog does."""
    size = services.registry.page_size(request.query.get("n"))
    last = request.query.get("last") or ""
    items = lister(size + 1, last)
    response = _json(200, items[:size])
    if len(items) > size and size:
        query = urlencode({"n": size, "last": items[size - 1]["name"]})
        response.headers.append(header("link", f'<{path}?{query}>; rel="next"'))
    return response


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


async def list_users(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    return _listed(
        services, request, "/admin/v1/users", services.auth.accounts.list_users
    )


async def create_user(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    auth = services.auth
    body = await _body(request)
    password = _password(body, required=True)
    await auth.accounts.add_user(
        _field(body, "name", str, required=True),
        password,
        bool(_field(body, "admin", bool)),
        _strings(body, "groups") or [],
    )
    return _json(201, {"name": body["name"]})


async def update_user(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    auth = services.auth
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


async def delete_user(services: Services, request: Request) -> Response:
    subject = await require_admin(services, request)
    auth = services.auth
    if request.params["user"] == subject.name:
        raise Denied("an admin cannot delete itself")
    await auth.accounts.delete_user(request.params["user"])
    return Response(204)


async def list_robots(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    return _listed(
        services, request, "/admin/v1/robots", services.auth.accounts.list_robots
    )


async def create_robot(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    auth = services.auth
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


async def revoke_robot(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    auth = services.auth
    await auth.accounts.revoke_robot(request.params["robot"])
    return Response(204)


async def signature_status(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    registry = services.registry
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


# Tag rules, allowed names, held names (services.tag_admin)


async def list_tag_rules(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    return _json(200, services.registry.tag_admin.rules())


async def add_tag_rule(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    body = await _body(request)
    rule_id = await services.registry.tag_admin.add_rule(body, actor_of(request))
    return _json(201, {"id": rule_id, "label": f"tag rule {rule_id}"})


async def delete_tag_rule(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    await services.registry.tag_admin.delete_rule(
        int(request.params["rule"]), actor_of(request)
    )
    return Response(204)


async def list_allowed_names(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    return _json(200, services.registry.tag_admin.allowed())


def _name_fields(values) -> tuple[str, str, str]:
    kind, repository, name = (values.get(k) for k in ("kind", "repository", "name"))
    if not isinstance(kind, str) or not isinstance(name, str):
        raise BadRequest("kind and name are required strings")
    if kind == "tag" and not isinstance(repository, str):
        raise BadRequest("repository is required for a tag name")
    return kind, repository or "", name


async def add_allowed_name(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    kind, repository, name = _name_fields(await _body(request))
    await services.registry.tag_admin.allow(kind, repository, name, actor_of(request))
    if kind == "repository":
        repository = ""
    return _json(201, {"kind": kind, "repository": repository, "name": name})


async def delete_allowed_name(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    kind, repository, name = _name_fields(request.query)
    await services.registry.tag_admin.disallow(
        kind, repository, name, actor_of(request)
    )
    return Response(204)


async def list_holds(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    state = request.query.get("state", "pending")
    size = services.registry.page_size(request.query.get("n"))
    before = request.query.get("last")
    if before is not None and not (before.isdigit() and len(before) <= 18):
        raise BadRequest(f"last must be a hold id, got {before[:20]!r}")
    holds = services.registry.tag_admin.holds(
        None if state == "all" else state,
        size + 1,
        int(before) if before is not None else None,
    )
    response = _json(200, [hold.as_json() for hold in holds[:size]])
    if len(holds) > size and size:
        query = urlencode({"state": state, "n": size, "last": holds[size - 1].id})
        link = f'</admin/v1/holds?{query}>; rel="next"'
        response.headers.append(header("link", link))
    return response


async def decide_hold(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    decision = _field(await _body(request), "decision", str, required=True)
    tag_admin = services.registry.tag_admin
    hold_id = int(request.params["hold"])
    if decision == "approve":
        hold = await tag_admin.approve(hold_id, actor_of(request))
    elif decision == "reject":
        hold = await tag_admin.reject(hold_id, actor_of(request))
    else:
        raise BadRequest(f"decision must be approve or reject, got {decision[:20]!r}")
    return _json(200, hold.as_json())


# What is installed (quaylock.about)


async def version(services: Services, request: Request) -> Response:
    await require_admin(services, request)
    from quaylock import about  # noqa: PLC0415 - admins only, seldom

    store = services.registry.store
    return _json(200, about.report(store.schema_version()))


async def sbom(services: Services, request: Request) -> Response:
    """The CycloneDX SBOM that `make sbom` wrote for this installation."""
    await require_admin(services, request)
    from quaylock import about  # noqa: PLC0415 - admins only, seldom

    document, why = about.read_sbom()
    if document is None:
        raise NotFound(why) if not about.sbom_path().exists() else Unavailable(why)
    body = json.dumps(document).encode()
    kind = header("content-type", "application/vnd.cyclonedx+json")
    return Response(200, [kind], body=body)
