"""The ASGI application: routing, error bodies, response sending, request log.

A request goes down once: match the route, check the name, run the
handler, turn any RegistryError into the spec's error body (one place:
`api.errors`), send, log one line.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from quaylock import config as config_mod
from quaylock import log, oci
from quaylock.api import admin, blobs, listings, manifests, status, token, uploads
from quaylock.api.errors import error_body, internal_error_body
from quaylock.api.http import ClientDisconnected, Request, Response
from quaylock.errors import (
    BlobUploadUnknown,
    Denied,
    InsufficientStorage,
    MethodNotAllowed,
    NotFound,
    PaginationInvalid,
    RegistryError,
    RequestTimeout,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from quaylock.metadata.store import open_store
from quaylock.metrics import Metrics
from quaylock.policy.access import AccessPolicy
from quaylock.policy.accounts import Accounts
from quaylock.policy.auth import Authenticator
from quaylock.policy.buckets import (
    Leases,
    LocalBuckets,
    RedisBuckets,
    SharedBuckets,
)
from quaylock.policy.clients import ClientAddresses, address_key, networks
from quaylock.policy.clients import address_in as _address_in
from quaylock.policy.limiter import LoginLimiter
from quaylock.policy.ratelimit import RateLimiter
from quaylock.policy.ratelimit import headers as rate_headers
from quaylock.policy.tokens import KeyRing, TokenService
from quaylock.services.registry import Registry
from quaylock.storage import paths
from quaylock.storage.drivers.filesystem import FilesystemDriver

API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")
JSON_ERROR = (b"content-type", b"application/json")
# How much of an unread body we swallow so the client can read our error.
DRAIN_MAX_BYTES = 8 * 1024 * 1024
DRAIN_TIMEOUT_SECONDS = 5.0
# Requests in flight an address may always have, however busy the worker.
_LEAST_SHARE = 4


# What a route is, which decides how a request to it is let in:
# - REGISTRY: the registry API; the authenticator checks the action the
#   method needs, and the handler gets the registry;
# - LOGIN: the token endpoint, which checks its own credentials; its
#   handler gets the authenticator;
# - ADMIN: the admin API, whose handlers check for an admin themselves and
#   get the authenticator and registry (api/admin.py);
# - PUBLIC: health checks, open to anyone, never rate limited;
# - OPERATOR: metrics, open to `metrics.allow` addresses, else to admins;
#   counted as reads.
REGISTRY, LOGIN, ADMIN, PUBLIC, OPERATOR = (
    "registry", "login", "admin", "public", "operator"
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Route:
    template: str
    pattern: re.Pattern
    handlers: dict
    kind: str
    # For REGISTRY routes, the action each method needs (policy.auth):
    # pull, push, delete, "login" or "catalog".
    needs: dict
    # Catalog and tags list count as listings, weighed by page size.
    listing: bool = False

    def rate_class(self, method: str) -> str | None:
        """Which rate limit a request counts against (config.RATE_CLASSES);
        None for the health checks."""
        if self.kind == PUBLIC:
            return None
        if self.kind == LOGIN:
            return "token"
        if self.listing:
            return "listing"
        return _by_method(method)


def _by_method(method: str) -> str:
    """The rate class of a request that is no login and no listing."""
    return "read" if method in ("GET", "HEAD") else "write"


_READ = {"GET": "pull", "HEAD": "pull"}
_WRITE = {"POST": "push", "PATCH": "push", "PUT": "push", "GET": "push", "HEAD": "push"}


def _route(
    template: str, regex: str, needs: dict, *, kind: str = REGISTRY,
    listing: bool = False, **handlers,
) -> Route:  # fmt: skip
    return Route(template, re.compile(regex), handlers, kind, needs, listing)


# Order matters where patterns overlap: uploads before blobs/<digest>.
ROUTES = [
    _route(
        "/v2/{name}/manifests/{reference}",
        r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)",
        {**_READ, "PUT": "push", "DELETE": "delete"},
        GET=manifests.get_manifest,
        HEAD=manifests.get_manifest,
        PUT=manifests.put_manifest,
        DELETE=manifests.delete_manifest,
    ),
    _route(
        "/v2/{name}/blobs/uploads/",
        r"/v2/(?P<name>.+)/blobs/uploads/?",
        _WRITE,
        POST=uploads.start_blob_upload,
    ),
    _route(
        "/v2/{name}/blobs/uploads/{upload_id}",
        r"/v2/(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]+)",
        {**_WRITE, "DELETE": "push"},
        GET=uploads.get_blob_upload,
        HEAD=uploads.get_blob_upload,
        PATCH=uploads.patch_blob_upload,
        PUT=uploads.put_blob_upload,
        DELETE=uploads.cancel_blob_upload,
    ),
    _route(
        "/v2/{name}/blobs/{digest}",
        r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)",
        {**_READ, "DELETE": "delete"},
        GET=blobs.get_blob,
        HEAD=blobs.get_blob,
        DELETE=blobs.delete_blob,
    ),
    _route(
        "/v2/{name}/tags/list",
        r"/v2/(?P<name>.+)/tags/list",
        _READ,
        listing=True,
        GET=listings.list_tags,
        HEAD=listings.list_tags,
    ),
    _route(
        "/v2/{name}/referrers/{digest}",
        r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)",
        _READ,
        GET=listings.list_referrers,
        HEAD=listings.list_referrers,
    ),
]
_LOGIN = {"GET": "login", "HEAD": "login"}
# Methods that upload nothing: their bodies are held to limits.body_max_bytes.
_NO_UPLOAD_METHODS = frozenset({"GET", "HEAD", "DELETE"})


def _probe(handler) -> dict:
    """GET and HEAD, as health checkers use either."""
    return {"GET": handler, "HEAD": handler}


EXACT_ROUTES = {
    "/v2/": _route(
        "/v2/", r"/v2/", _LOGIN, GET=listings.api_version, HEAD=listings.api_version
    ),
    "/v2": _route(
        "/v2/", r"/v2", _LOGIN, GET=listings.api_version, HEAD=listings.api_version
    ),
    "/v2/_catalog": _route(
        "/v2/_catalog",
        r"/v2/_catalog",
        {"GET": "catalog"},
        listing=True,
        GET=listings.catalog,
    ),
    "/v2/token": _route(
        "/v2/token",
        r"/v2/token",
        {},
        kind=LOGIN,
        GET=token.get_token,
        POST=token.post_token,
    ),
    "/metrics": _route("/metrics", r"/metrics", {}, kind=OPERATOR, GET=status.metrics),
    "/healthz": _route(
        "/healthz", r"/healthz", {}, kind=PUBLIC, **_probe(status.healthz)
    ),
    "/readyz": _route("/readyz", r"/readyz", {}, kind=PUBLIC, **_probe(status.readyz)),
}


def _admin_route(template: str, regex: str, **handlers) -> Route:
    return _route(template, regex, {}, kind=ADMIN, **handlers)


# The admin API (api/admin.py): handlers check for an admin themselves.
ADMIN_ROUTES = [
    _admin_route(
        "/admin/v1/users",
        r"/admin/v1/users",
        GET=admin.list_users,
        POST=admin.create_user,
    ),
    _admin_route(
        "/admin/v1/users/{user}",
        r"/admin/v1/users/(?P<user>[a-z0-9._-]{1,64})",
        PATCH=admin.update_user,
        DELETE=admin.delete_user,
    ),
    _admin_route(
        "/admin/v1/robots",
        r"/admin/v1/robots",
        GET=admin.list_robots,
        POST=admin.create_robot,
    ),
    _admin_route(
        "/admin/v1/tag-rules",
        r"/admin/v1/tag-rules",
        GET=admin.list_tag_rules,
        POST=admin.add_tag_rule,
    ),
    _admin_route(
        "/admin/v1/tag-rules/{rule}",
        r"/admin/v1/tag-rules/(?P<rule>[0-9]{1,18})",
        DELETE=admin.delete_tag_rule,
    ),
    _admin_route(
        "/admin/v1/allowed-names",
        r"/admin/v1/allowed-names",
        GET=admin.list_allowed_names,
        POST=admin.add_allowed_name,
        DELETE=admin.delete_allowed_name,
    ),
    _admin_route(
        "/admin/v1/holds",
        r"/admin/v1/holds",
        GET=admin.list_holds,
    ),
    _admin_route(
        "/admin/v1/holds/{hold}",
        r"/admin/v1/holds/(?P<hold>[0-9]{1,18})",
        POST=admin.decide_hold,
    ),
    _admin_route("/admin/v1/version", r"/admin/v1/version", GET=admin.version),
    _admin_route("/admin/v1/sbom", r"/admin/v1/sbom", GET=admin.sbom),
    _admin_route(
        "/admin/v1/signatures",
        r"/admin/v1/signatures",
        GET=admin.signature_status,
    ),
    _admin_route(
        "/admin/v1/robots/{robot}",
        r"/admin/v1/robots/(?P<robot>(?:robot\$)?[a-z0-9._-]{1,64})",
        DELETE=admin.revoke_robot,
    ),
]


@functools.lru_cache(maxsize=8192)
def _checked_name(name: str) -> str:
    return oci.check_name(name)


# Every route template, for the request metrics; requests that match none
# count as "unmatched".
ROUTE_TEMPLATES = (
    *dict.fromkeys(
        r.template for r in (*ROUTES, *EXACT_ROUTES.values(), *ADMIN_ROUTES)
    ),
    "unmatched",
)
_ROUTE_INDEX = {template: i for i, template in enumerate(ROUTE_TEMPLATES)}

# The defence a refusal counts under, by class, unless it names its own.
_REFUSAL_REASONS = (
    (Unauthorized, "auth"),
    (TooLarge, "size"),
    (InsufficientStorage, "disk"),
    (RequestTimeout, "timeout"),
    (TooManyRequests, "rate_limit"),
    (Denied, "policy"),
)


def match(path: str) -> tuple[Route, dict[str, str]] | None:
    route = EXACT_ROUTES.get(path)
    if route is not None:
        return route, {}
    if path.startswith("/admin/"):
        for route in ADMIN_ROUTES:
            found = route.pattern.fullmatch(path)
            if found is not None:
                return route, found.groupdict()
        return None
    if not path.startswith("/v2/"):
        return None
    for route in ROUTES:
        found = route.pattern.fullmatch(path)
        if found is not None:
            return route, found.groupdict()
    return None


class App:
    """The registry as an ASGI 3 application.

    Args:
        registry: the service layer every request goes to.
        log_requests: write one access line per request.
    """

    def __init__(
        self,
        registry: Registry,
        auth: Authenticator | None = None,
        log_requests: bool = True,
        rates: RateLimiter | None = None,
    ):
        self.registry = registry
        self.auth = auth
        self.rates = rates
        self.log_requests = log_requests
        self._admin = admin.Services(auth, registry) if auth is not None else None
        if auth is not None:
            auth.accounts.on_event = registry._emit
        self._purger: asyncio.Task | None = None
        self._collector: asyncio.Task | None = None
        config = registry.config
        # A stalled body must end before its upload session could expire
        # under it (uploads.idle_seconds): the session would count as idle
        # for the session limits while it is still in use.
        self._body_timeout = float(
            min(config.server.body_timeout_seconds, config.uploads.idle_seconds)
        )
        self._body_min_rate = config.server.body_min_bytes_per_second
        self.clients = ClientAddresses(
            networks(config.server.trusted_proxies), config.server.forwarded_header
        )
        self._operator_networks = networks(config.metrics.allow)
        # Requests in flight in this worker, in all and by client address.
        self._in_flight = 0
        self._in_flight_by_address: dict[str, int] = {}

    async def _collect_garbage(self) -> None:
        """Run `quaylock gc` every `gc.interval_seconds`, as a process of its
        own so that the scan never holds up requests; its lock lets one
        worker's run go ahead and the others skip."""
        interval = self.registry.config.gc.interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "quaylock.cli.main", "gc",
                    "--interval", str(interval),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    out, _ = await asyncio.wait_for(
                        process.communicate(), max(interval, 3600)
                    )
                except TimeoutError:
                    process.kill()
                    await process.wait()
                    log.logger.error("garbage collection ran too long and was stopped")
                    continue
                summary = out.decode(errors="replace").strip().splitlines()
                if process.returncode != 0:
                    log.logger.error("garbage collection failed")
                elif summary and "skipped" not in summary[-1]:
                    log.event(log.logger, 20, "garbage collected", detail=summary[-1])
            except Exception:  # noqa: BLE001 - try again next interval
                log.logger.exception("garbage collection could not start")

    async def _purge_uploads(self) -> None:
        """Remove expired upload sessions and their bytes, every
        `uploads.purge_interval_seconds`, in every worker (deleting a
        session is atomic, so workers never purge one twice)."""
        interval = self.registry.config.uploads.purge_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.registry.uploads.purge_expired()
            except (InsufficientStorage, Unavailable) as exc:
                # The database cannot be written now (a full disk): the next
                # pass tries again; a traceback would say nothing more.
                log.event(
                    log.logger, 30, "purging expired uploads waits", detail=str(exc)
                )
            except Exception:  # noqa: BLE001 - keep purging on the next pass
                log.logger.exception("purging expired uploads failed")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._purger = asyncio.create_task(self._purge_uploads())
                if self.registry.config.gc.interval_seconds:
                    self._collector = asyncio.create_task(self._collect_garbage())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in (self._purger, self._collector):
                    if task is not None:
                        task.cancel()
                self.registry.metrics.flush()
                self.registry.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, scope, receive, send) -> None:
        started = time.perf_counter()
        route, status = None, 500
        request = Request(scope, receive, {})
        request.body_timeout = self._body_timeout
        request.body_min_rate = self._body_min_rate
        if self.clients.trusts(request.client):
            request.client = self.clients.forwarded(request.client, request.headers)
        bytes_out = 0
        sent_start = False
        in_flight = None

        async def tracked_send(message):
            nonlocal sent_start
            sent_start = True
            await send(message)

        try:
            found = match(scope["path"])
            if found is None:
                raise NotFound(f"no route for {scope['path'][:100]!r}")
            route, params = found
            request.params = params
            handler = route.handlers.get(scope["method"])
            if handler is None:
                raise MethodNotAllowed(
                    f"{scope['method']} is not allowed on {route.template}"
                )
            if scope["method"] in _NO_UPLOAD_METHODS:
                declared = request.content_length()
                limit = self.registry.config.limits.body_max_bytes
                if declared is not None and declared > limit:
                    raise TooLarge(
                        f"a {scope['method']} request carries no upload, but its "
                        f"body is {declared} bytes; the limit is {limit} bytes "
                        "(limits.body_max_bytes)",
                        detail={"limit": limit, "size": declared},
                    )
            if "name" in params:
                _checked_name(params["name"])
            if "upload_id" in params and not paths.is_upload_id(params["upload_id"]):
                raise BlobUploadUnknown(
                    f"upload {params['upload_id'][:64]!r} is not open"
                )
            rate_class = route.rate_class(scope["method"])
            if rate_class is not None:
                in_flight = self._enter(request.client)
            response = await self._let_in(route, handler, request, rate_class)
            status = response.status
            if request.rate is not None:
                response.headers.extend(
                    (k.encode(), v.encode())
                    for k, v in rate_headers(request.rate).items()
                )
            bytes_out = await self._send(scope, tracked_send, response)
        except RegistryError as exc:
            if (
                request.rate is None
                and self.rates is not None
                and not (route is not None and route.kind == PUBLIC)
                and not isinstance(exc, TooManyRequests)
            ):
                # Refused before it was charged (no such route, a bad name):
                # it still counts for the address.
                try:
                    await self._admit(_by_method(scope["method"]), request, None)
                except TooManyRequests as refused:
                    exc = refused
            if request.rate is not None:
                # A refusal after the request was charged (a 401, say)
                # still tells the client how much it has left.
                for name, value in rate_headers(request.rate).items():
                    exc.headers.setdefault(name, value)
            status, bytes_out = await self._refuse(scope, send, request, route, exc)
        except ClientDisconnected:
            status = 499
        except Exception as exc:
            if (
                isinstance(exc, OSError)
                and exc.errno == errno.ENOSPC
                and not sent_start
            ):
                # The disk filled under a write (the floor makes it rare);
                # the failed step cleaned up after itself: say why.
                status, bytes_out = await self._refuse(
                    scope, send, request, route, _disk_full()
                )
            else:
                log.logger.exception(
                    "unhandled error", extra={"fields": {"route": _template(route)}}
                )
                if not sent_start:
                    status = 500
                    await self._send(
                        scope, send,
                        Response(500, [JSON_ERROR], body=internal_error_body()),
                    )  # fmt: skip
        finally:
            if in_flight is not None:
                self._leave(in_flight)
        self.registry.metrics.observe(
            _ROUTE_INDEX[route.template if route is not None else "unmatched"],
            scope["method"], status, time.perf_counter() - started,
            request.bytes_in, bytes_out,
        )  # fmt: skip
        if self.log_requests:
            self._log(scope, route, request, status, started, bytes_out)

    def _enter(self, client: str) -> str:
        """Count a request in flight in this worker; return the key to
        `_leave` with.

        Raises:
            Unavailable: the worker handles `server.max_requests_in_flight`.
            TooManyRequests: this address has its share in flight already.
        """
        server = self.registry.config.server
        key = address_key(client)
        if self._in_flight >= server.max_requests_in_flight:
            raise _in_flight_refusal(Unavailable(
                f"the server is handling {self._in_flight} requests, its most "
                f"(server.max_requests_in_flight); retry in a moment"
            ))  # fmt: skip
        mine = self._in_flight_by_address.get(key, 0)
        if mine >= server.max_requests_in_flight_per_address:
            raise _in_flight_refusal(TooManyRequests(
                f"client {key} has {mine} requests in flight, its most "
                "(server.max_requests_in_flight_per_address); wait for some "
                "to finish"
            ))  # fmt: skip
        # Past half the worker's most, every address gets an even share of
        # it, so that a few addresses holding slow requests cannot take all
        # of it from the others.
        if self._in_flight >= server.max_requests_in_flight // 2:
            addresses = len(self._in_flight_by_address) + (mine == 0)
            share = max(_LEAST_SHARE, server.max_requests_in_flight // (2 * addresses))
            if mine >= share:
                raise _in_flight_refusal(TooManyRequests(
                    f"the server is busy ({self._in_flight} requests in flight): "
                    f"each of the {addresses} clients in flight may have {share}, "
                    f"and client {key} has {mine} (server.max_requests_in_flight); "
                    "wait for some to finish"
                ))  # fmt: skip
        self._in_flight += 1
        self._in_flight_by_address[key] = mine + 1
        self.registry.metrics.in_flight(1)
        return key

    def _leave(self, key: str) -> None:
        self.registry.metrics.in_flight(-1)
        self._in_flight -= 1
        left = self._in_flight_by_address[key] - 1
        if left:
            self._in_flight_by_address[key] = left
        else:
            del self._in_flight_by_address[key]

    async def _operator(self, request: Request) -> None:
        """Let `metrics.allow` addresses in, and admins from anywhere else.

        Raises:
            Unauthorized: no admin credentials.
            Denied: not an admin, or authentication is off.
        """
        if self._operator_networks and _address_in(
            request.client, self._operator_networks
        ):
            return
        if self._admin is None:
            raise Denied(
                f"{request.client} is not in metrics.allow, and without "
                "authentication there is no admin to ask instead"
            )
        await admin.require_admin(self._admin, request)

    async def _let_in(
        self, route: Route, handler, request: Request, rate_class: str | None
    ) -> Response:
        """Authenticate and rate-limit a request as its route's kind wants,
        then hand it to `handler`.

        Logins and requests without credentials are charged to the client
        address before any work is done (a password check); requests with
        credentials to their subject once known, or to the address when the
        credentials fail or the subject is refused the repository.
        """
        limit = rate_class is not None and self.rates is not None
        if limit and (
            route.kind != REGISTRY
            or self.auth is None
            or "authorization" not in request.headers
        ):
            await self._admit(rate_class, request, None)
        if limit and route.kind in (ADMIN, OPERATOR) and _basic(request):
            # A password checked here is a login like one at /v2/token, and
            # counts as one: else any account could have passwords checked
            # as fast as reads are allowed.
            await self._admit("token", request, None)
        if route.kind == PUBLIC:
            return await handler(self.registry, request)
        if route.kind == OPERATOR:
            await self._operator(request)
            return await handler(self.registry, request)
        if route.kind == LOGIN:
            if self.auth is None:
                raise NotFound("authentication is off: there is no token endpoint")
            return await handler(self.auth, request)
        if route.kind == ADMIN:
            if self._admin is None:
                raise NotFound("authentication is off: there is no admin API")
            return await handler(self._admin, request)
        if self.auth is not None:
            params = request.params
            try:
                request.subject = await self.auth.check(
                    request.headers,
                    request.client,
                    _host(request.scope, request),
                    request.scope.get("scheme", "http"),
                    route.needs[request.method],
                    params.get("name"),
                )
            except (Unauthorized, Denied):
                if limit and request.rate is None:
                    await self._admit(rate_class, request, None)
                raise
            if limit and request.rate is None:
                await self._admit(rate_class, request, request.subject)
            request.may_pull = self.auth.pull_check(request.subject)
            if "name" in params:
                request.rights = self.auth.policy.allowed(
                    request.subject, params["name"]
                )
        return await handler(self.registry, request)

    async def _admit(self, rate_class: str, request: Request, subject) -> None:
        """Charge the request to its rate-limit bucket (policy.ratelimit);
        the verdict goes to `request.rate`.

        Raises:
            TooManyRequests: the bucket is empty.
        """
        cost = 1
        if rate_class == "listing":
            try:
                n = self.registry.page_size(request.query.get("n"))
            except PaginationInvalid:
                n = 0  # the handler refuses it; here it only sets the cost
            n = n or self.registry.page_size(None)
            per = self.registry.config.rate_limits.listing_entries_per_request
            cost = max(1, -(-n // per))
        request.rate = await self.rates.admit(rate_class, subject, request.client, cost)

    async def _refuse(
        self, scope, send, request: Request, route: Route | None, exc: RegistryError
    ) -> tuple[int, int]:
        """Answer with `exc`'s error body; return the status and bytes sent."""
        reason = exc.reason or next(
            (name for kind, name in _REFUSAL_REASONS if isinstance(exc, kind)), None
        )
        if isinstance(exc, Unauthorized) and "authorization" not in request.headers:
            # The challenge every client gets first, not a refusal.
            reason = None
        if reason is not None:
            self.registry.metrics.inc("quaylock_refusals_total", reason=reason)
        await request.drain(DRAIN_MAX_BYTES, DRAIN_TIMEOUT_SECONDS)
        if isinstance(exc, MethodNotAllowed) and route is not None:
            # RFC 9110 §15.5.6: a 405 names the methods that are allowed.
            exc.headers["allow"] = ", ".join(self._allowed(route))
        if isinstance(exc, Unauthorized) and "www-authenticate" not in exc.headers:
            # RFC 9110 §11.6.1: every 401 carries a challenge.
            exc.headers["www-authenticate"] = (
                self.auth._challenge(
                    _host(scope, request), scope.get("scheme", "http"), None
                ).headers["www-authenticate"]
                if self.auth is not None
                else 'Basic realm="quaylock"'
            )
        status, body = error_body(exc)
        headers = [
            JSON_ERROR,
            *((k.encode(), v.encode()) for k, v in exc.headers.items()),
        ]
        return status, await self._send(
            scope, send, Response(status, headers, body=body)
        )

    def _allowed(self, route: Route) -> list[str]:
        methods = list(route.handlers)
        if not self.registry.config.deletes:
            methods = [m for m in methods if m != "DELETE"]
        return methods

    async def _send(self, scope, send, response: Response) -> int:
        headers = response.headers
        headers.append(API_VERSION)
        if response.path is not None or response.stream is not None:
            length = response.length
        elif response.length is not None:
            length = response.length
        else:
            length = len(response.body)
        headers.append((b"content-length", str(length).encode()))
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": headers,
            }
        )

        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return 0
        if response.path is not None:
            if "http.response.pathsend" in scope.get("extensions", {}):
                await send({"type": "http.response.pathsend", "path": response.path})
                return length or 0
            response.stream = _file_chunks(response.path)
        if response.stream is not None:
            sent = 0
            async for chunk in response.stream:
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": True}
                )
                sent += len(chunk)
            await send({"type": "http.response.body", "body": b""})
            return sent
        await send({"type": "http.response.body", "body": response.body})
        return len(response.body)

    def _log(self, scope, route, request, status, started, bytes_out) -> None:
        # 503 and 507 with Retry-After are refusals by design (staging
        # space, the disk floor): worth a warning, not an alert.
        if status in (503, 507):
            level = logging.WARNING
        else:
            level = logging.ERROR if status >= 500 else logging.INFO
        params = request.params
        log.event(
            log.access,
            level,
            "request",
            request_id=secrets.token_hex(8),
            method=scope["method"],
            route=_template(route),
            repository=params.get("name"),
            reference=params.get("reference") or params.get("digest"),
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            bytes_in=request.bytes_in,
            bytes_out=bytes_out,
            client=request.client,
            subject=request.subject.label if request.subject is not None else None,
        )


def _host(scope, request: Request) -> str:
    host = request.headers.get("host")
    if host and _HOST_RE.fullmatch(host):
        return host
    server = scope.get("server") or ("127.0.0.1", 80)
    return f"{server[0]}:{server[1]}"


# A Host header we may echo in a challenge: a name or address and a port.
_HOST_RE = re.compile(
    r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?"
)


def _in_flight_refusal(error: RegistryError) -> RegistryError:
    """`error`, counted as an in-flight refusal, to retry in a second."""
    error.reason = "in_flight"
    error.headers["Retry-After"] = "1"
    return error


def _basic(request: Request) -> bool:
    """Whether the request carries a name and password."""
    return request.headers.get("authorization", "")[:6].lower() == "basic "


def _disk_full() -> InsufficientStorage:
    error = InsufficientStorage(
        "the registry's disk is full; uploads resume when space is freed, pulls go on"
    )
    error.headers["Retry-After"] = "60"
    return error


def _template(route: Route | None) -> str | None:
    return route.template if route is not None else None


async def _file_chunks(path: str):
    with open(path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, 1024 * 1024):
            yield chunk


def build_app(config: config_mod.Config) -> App:
    """Open the stores named by `config` and return the application."""
    root = config.storage_root
    os.makedirs(root, mode=0o700, exist_ok=True)
    if config.storage.driver != "filesystem":
        raise config_mod.ConfigError(
            f"storage.driver: {config.storage.driver!r} is not available; use filesystem"
        )
    driver = FilesystemDriver(str(root))
    store = open_store(config.metadata_url)
    metrics = Metrics(Path(config.data).resolve() / "metrics", ROUTE_TEMPLATES)
    buckets = build_buckets(config)
    return App(
        Registry(config, driver, store, metrics),
        auth=build_authenticator(config, store, buckets),
        log_requests=config.log.requests,
        rates=build_rate_limiter(config, buckets),
    )


def build_buckets(config: config_mod.Config):
    """Where rate limits and failed logins are counted (policy.buckets):
    this process's memory with one worker, a table every worker maps with
    several, Redis with `rate_limits.backend: redis`."""
    # One worker keeps its buckets in its own memory; several share a
    # memory-mapped table (a lock per take, which costs system calls).
    if config.server.workers == 1:
        buckets = LocalBuckets()
    else:
        buckets = SharedBuckets(Path(config.data).resolve() / "ratelimit.table")
    if config.rate_limits.backend == "redis":
        buckets = RedisBuckets(config.rate_limits.redis_url, fallback=buckets)
    return buckets


def build_rate_limiter(config: config_mod.Config, buckets) -> RateLimiter | None:
    """The rate limiter for `config.rate_limits`, or None when they are off."""
    if not config.rate_limits.enabled:
        return None
    if not isinstance(buckets, LocalBuckets):
        # Shared buckets cost a lock or a round trip per take: lease.
        buckets = Leases(buckets)
    return RateLimiter(config.rate_limits, buckets)


def build_authenticator(
    config: config_mod.Config, store, buckets
) -> Authenticator | None:
    """The request checker for `config.auth`, or None when auth is off."""
    if config.auth.mode == "none":
        return None
    limiter = LoginLimiter(
        config.auth.lockout_failures, config.auth.lockout_seconds, buckets
    )
    keys = KeyRing(Path(config.data).resolve() / "keys")
    tokens = TokenService(config.auth, keys)
    accounts = Accounts(store, limiter)
    return Authenticator(config.auth, accounts, tokens, AccessPolicy(config.auth.rules))


def create_app() -> App:
    """Factory for the server: configuration from QUAYLOCK_CONFIG_FILE and the
    environment (the `serve` command sets both)."""
    config = config_mod.load(os.environ.get("QUAYLOCK_CONFIG_FILE") or None)
    log.configure(config.log.level, config.log.format)
    return build_app(config)
