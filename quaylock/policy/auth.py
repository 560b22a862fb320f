"""Authentication and authorisation of each request.

`Authenticator.check` runs before every handler that touches a repository:
it finds the request's subject from its credentials, then decides whether
that subject may take the route's action on the route's repository. It
never looks at whether the repository exists, so a caller that may not
see a repository gets the same answer for one that exists and one that
does not.

Answers, by case (Docker token auth specification, "Token Authentication"):

- no credentials and the action is not open to anonymous: 401 with a
  ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` challenge;
- a valid token that lacks the action, for a subject who holds it: 401 with
  ``error="insufficient_scope"``, so the client fetches a wider token;
- credentials that are wrong, expired or revoked: 401 ``invalid_token``;
- a subject who may not take the action at all: 403 ``DENIED``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

from quaylock.config import AuthConfig
from quaylock.errors import Denied, Unauthorized
from quaylock.policy.access import ALL_ACTIONS, AccessPolicy
from quaylock.policy.accounts import ANONYMOUS, Accounts, Subject
from quaylock.policy.tokens import Access, Claims, InvalidToken, TokenService

# The scope a client must ask for, by the action a route needs.
_SCOPE_ACTIONS = {"pull": "pull", "push": "pull,push", "delete": "delete"}
# Seconds a checked Basic credential is remembered (Basic mode sends it with
# every request; rehashing each time would cost 0.1 s a request).
_BASIC_CACHE_SECONDS = 60
_BASIC_CACHE_MAX = 10_000


@dataclass(slots=True)
class Identity:
    subject: Subject
    # The token's grants when the request came with our bearer token.
    claims: Claims | None = None


class Authenticator:
    """Applies the `auth` settings to requests.

    Args:
        config: the `auth` section.
        accounts: users and robots.
        tokens: token signing and verification (unused in basic mode).
        policy: the access rules.
    """

    def __init__(
        self,
        config: AuthConfig,
        accounts: Accounts,
        tokens: TokenService,
        policy: AccessPolicy,
    ):
        self.config = config
        self.accounts = accounts
        self.tokens = tokens
        self.policy = policy
        self._basic: OrderedDict[str, tuple[str, float, str | None]] = OrderedDict()

    async def check(
        self,
        headers: dict,
        address: str,
        host: str,
        scheme: str,
        need: str,
        repository: str | None,
    ) -> Subject:
        """Return the subject if it may take `need` on `repository`.

        `need` is pull, push or delete, or "login" (any authenticated
        subject: /v2/) or "catalog".

        Raises:
            Unauthorized: with the challenge header set.
            Denied: the subject may not do this.
            TooManyRequests: Basic mode, too many failed logins.
        """
        identity = await self._identify(headers, address, host, scheme)
        subject = identity.subject
        if need == "login":
            if subject.kind == "anonymous":
                raise self._challenge(host, scheme, None)
            return subject
        if need == "catalog":
            if self.policy.may_list_catalog(subject):
                return subject
            if subject.kind == "anonymous":
                raise self._challenge(host, scheme, "registry:catalog:*")
            raise _refused(Denied(f"{subject.label} may not list the catalog"))

        assert repository is not None
        allowed = self.policy.allowed(subject, repository)
        granted = allowed
        if identity.claims is not None and identity.claims.ours:
            granted = allowed & token_actions(identity.claims, repository)
        if need in granted:
            return subject
        scope = f"repository:{repository}:{_SCOPE_ACTIONS[need]}"
        if need in allowed or subject.kind == "anonymous":
            error = "insufficient_scope" if identity.claims is not None else None
            raise self._challenge(host, scheme, scope, error)
        raise _refused(Denied(f"{subject.label} may not {need} {repository}"))

    def pull_check(self, subject: Subject):
        """A check of `subject`'s pull right by repository name, for
        handlers that touch a second repository (mount) or list many."""
        return lambda repository: "pull" in self.policy.allowed(subject, repository)

    def allowed_actions(self, subject: Subject, access: Access) -> frozenset[str]:
        """The part of a requested scope that `subject` may have."""
        if access.type == "registry":
            if access.name == "catalog" and self.policy.may_list_catalog(subject):
                return frozenset({"*"})
            if access.name == "admin" and subject.kind == "user" and subject.admin:
                return frozenset({"*"})
            return frozenset()
        asked = ALL_ACTIONS if "*" in access.actions else access.actions
        return asked & self.policy.allowed(subject, access.name)

    async def _identify(
        self, headers: dict, address: str, host: str, scheme: str
    ) -> Identity:
        header = headers.get("authorization")
        if not header:
            return Identity(ANONYMOUS)
        kind, _, value = header.partition(" ")
        kind = kind.lower()
        value = value.strip()
        if kind == "bearer" and self.config.mode == "token":
            return self._from_token(value, host, scheme)
        if kind == "basic" and self.config.mode == "basic":
            name, password = decode_basic(value)
            return Identity(await self._from_basic(name, password, address))
        raise self._challenge(
            host, scheme, None, "invalid_token", "unsupported credentials"
        )

    def _from_token(self, token: str, host: str, scheme: str) -> Identity:
        try:
            claims = self.tokens.verify(token)
        except InvalidToken:
            raise self._challenge(
                host, scheme, None, "invalid_token", "invalid token"
            ) from None
        if not claims.ours:
            grants = tuple(
                (a.name, a.actions) for a in claims.access if a.type == "repository"
            )
            return Identity(
                Subject("user", claims.subject, token_access=grants), claims
            )
        if not claims.subject:
            return Identity(ANONYMOUS, claims)
        subject = self.accounts.subject(claims.subject)
        if subject is None:
            raise self._challenge(
                host,
                scheme,
                None,
                "invalid_token",
                "the token's subject is no longer active",
            )
        return Identity(subject, claims)

    async def _from_basic(self, name: str, password: str, address: str) -> Subject:
        key = hashlib.sha256(f"{name}\0{password}".encode()).hexdigest()
        cached = self._basic.get(key)
        if cached is not None and cached[1] > time.monotonic():
            # Valid only while the password is the one that was checked.
            if self.accounts.credential_version(name) == cached[2]:
                subject = self.accounts.subject(name)
                if subject is not None:
                    return subject
        subject = await self.accounts.authenticate(name, password, address)
        self._basic[key] = (
            subject.name,
            time.monotonic() + _BASIC_CACHE_SECONDS,
            self.accounts.credential_version(name),
        )
        while len(self._basic) > _BASIC_CACHE_MAX:
            self._basic.popitem(last=False)
        return subject

    def realm(self, host: str, scheme: str) -> str:
        return self.config.realm or f"{scheme}://{host}/v2/token"

    def _challenge(
        self,
        host: str,
        scheme: str,
        scope: str | None,
        error: str | None = None,
        message: str = "authentication required",
    ) -> Unauthorized:
        if self.config.mode == "basic":
            value = 'Basic realm="quaylock"'
        else:
            value = f'Bearer realm="{self.realm(host, scheme)}",service="{self.config.service}"'
            if scope:
                value += f',scope="{scope}"'
            if error:
                value += f',error="{error}"'
        exc = Unauthorized(message)
        exc.headers["www-authenticate"] = value
        return exc


def token_actions(claims: Claims, repository: str) -> frozenset[str]:
    actions: set[str] = set()
    for access in claims.access:
        if access.type == "repository" and access.name == repository:
            actions |= access.actions
    return frozenset(ALL_ACTIONS if "*" in actions else actions)


def decode_basic(value: str) -> tuple[str, str]:
    """Split Basic credentials.

    Raises:
        Unauthorized: not base64 of ``name:password``.
    """
    try:
        text = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("malformed Basic credentials") from None
    name, sep, password = text.partition(":")
    if not sep:
        raise Unauthorized("malformed Basic credentials")
    return name, password


def _refused(error: Denied) -> Denied:
    """An access refusal, counted as auth rather than policy."""
    error.reason = "auth"
    return error
