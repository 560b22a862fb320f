"""The token endpoint of the Docker token flow: ``/v2/token``.

GET with optional Basic credentials (docker, podman, skopeo, containerd)
and the OAuth2 POST form with the ``password`` and ``refresh_token``
grants (docker login with identity tokens) both answer with a JSON token
whose grants are what was asked for and what the subject may do, the
smaller of the two. Anonymous callers get a token too, holding whatever
anonymous may do (often nothing).
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl

from quaylock.api.http import JSON, Request, Response
from quaylock.errors import BadRequest, Unauthorized, Unsupported
from quaylock.policy.accounts import ANONYMOUS, Subject
from quaylock.policy.auth import Authenticator, decode_basic
from quaylock.policy.tokens import Access, InvalidToken, parse_scope

_FORM_MAX_BYTES = 64 * 1024


def _client_address(request: Request) -> str:
    return request.client


def _rfc3339(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _grant(auth: Authenticator, subject: Subject, asked: list[Access]) -> list[Access]:
    granted = []
    for access in asked:
        actions = auth.allowed_actions(subject, access)
        if actions:
            granted.append(Access(access.type, access.name, actions))
    return granted


def _token_body(
    auth: Authenticator, subject: Subject, asked: list[Access], refresh: bool
):
    granted = _grant(auth, subject, asked)
    token, ttl, issued = auth.tokens.issue(subject.name, subject.kind, granted)
    body = {
        "token": token,
        "access_token": token,
        "expires_in": ttl,
        "issued_at": _rfc3339(issued),
    }
    if refresh and subject.kind != "anonymous":
        body["refresh_token"] = auth.tokens.issue_refresh(subject.name, subject.kind)
    return body


def _json(body: dict) -> Response:
    return Response(
        200,
        [JSON, (b"cache-control", b"no-store")],
        body=json.dumps(body).encode(),
    )


async def get_token(auth: Authenticator, request: Request) -> Response:
    if auth.config.mode != "token":
        raise Unsupported("the token endpoint is off: auth.mode is not token")
    subject = ANONYMOUS
    header = request.headers.get("authorization", "")
    if header:
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            raise Unauthorized("the token endpoint takes Basic credentials")
        name, password = decode_basic(value.strip())
        subject = await auth.accounts.authenticate(
            name, password, _client_address(request)
        )
    scopes = " ".join(v for k, v in request.query_pairs() if k == "scope")
    refresh = request.query.get("offline_token") == "true"
    return _json(_token_body(auth, subject, parse_scope(scopes), refresh))


async def post_token(auth: Authenticator, request: Request) -> Response:
    if auth.config.mode != "token":
        raise Unsupported("the token endpoint is off: auth.mode is not token")
    raw = await request.body(_FORM_MAX_BYTES)
    form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    grant = form.get("grant_type")
    if grant == "password":
        subject = await auth.accounts.authenticate(
            form.get("username", ""), form.get("password", ""), _client_address(request)
        )
        refresh = form.get("access_type") == "offline"
    elif grant == "refresh_token":
        try:
            claims = auth.tokens.verify(form.get("refresh_token", ""), refresh=True)
        except InvalidToken:
            raise Unauthorized("invalid refresh token") from None
        found = auth.accounts.subject(claims.subject) if claims.ours else None
        if found is None:
            raise Unauthorized("invalid refresh token")
        subject, refresh = found, False
    else:
        # RFC 6749 §5.2: unsupported_grant_type is a 400.
        raise BadRequest(
            f"unsupported_grant_type: {str(grant)[:40]!r}; use password or refresh_token"
        )
    body = _token_body(auth, subject, parse_scope(form.get("scope", "")), refresh)
    body["scope"] = form.get("scope", "")
    if grant == "refresh_token":
        body["refresh_token"] = form["refresh_token"]
    return _json(body)
