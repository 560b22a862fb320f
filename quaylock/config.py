"""Configuration: one YAML file, then environment overrides, then flags.

Every setting has a default that is safe on one machine, so `quaylock serve`
runs with no file at all. An environment variable overrides one setting:
``QUAYLOCK_<SECTION>__<KEY>`` (for example ``QUAYLOCK_LIMITS__MANIFEST_MAX_BYTES``),
or ``QUAYLOCK_<KEY>`` for a top-level key (``QUAYLOCK_LISTEN``). Values from
the environment are parsed as YAML scalars, so ``true`` and ``42`` work.

Unknown keys are an error, not a silent no-op: a typo in a limit must not
leave the limit unset.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quaylock.policy.clients import networks


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


@dataclass
class LogConfig:
    level: str = "info"
    # "json" for machines, "text" for people at a terminal.
    format: str = "json"
    # One line per request; the benchmark turns it off to match Distribution.
    requests: bool = True


@dataclass
class TLSConfig:
    cert: str = ""
    key: str = ""


@dataclass
class StorageConfig:
    driver: str = "filesystem"
    # Folder for blobs and upload sessions; defaults to <data>/.
    root: str = ""
    # The free-disk floor: below the larger of these, uploads are refused
    # (507 with Retry-After) while pulls go on.
    min_free_bytes: int = 1024 * 1024 * 1024
    min_free_percent: int = 5


@dataclass
class MetadataConfig:
    # sqlite:///path/to/file.db; defaults to <data>/metadata.db.
    url: str = ""


GiB = 1024 * 1024 * 1024


@dataclass
class LimitsConfig:
    # Largest manifest accepted on push; pull refuses nothing smaller.
    manifest_max_bytes: int = 4 * 1024 * 1024
    # Largest blob, whether pushed in one request or in chunks.
    blob_max_bytes: int = 16 * GiB
    # Largest single chunk (PATCH, or the body of the closing PUT or of a
    # monolithic POST); 0: as large as a blob may be.
    chunk_max_bytes: int = 0
    # Most layers in an image manifest, and most children in an index.
    manifest_max_layers: int = 1024
    index_max_children: int = 1024
    # Largest body on a request that uploads nothing (GET, HEAD, DELETE).
    body_max_bytes: int = 64 * 1024
    # Per repository pattern: [{repositories: [...], blob_max_bytes: ...}];
    # the first entry that matches sets the size limits it names.
    overrides: list = field(default_factory=list)
    # Largest `n` honoured on tags list, catalog and referrers.
    page_max_entries: int = 1000
    # Default page size when the client gives no `n`.
    page_default_entries: int = 100


# The limits an entry of limits.overrides may set.
SIZE_LIMITS = (
    "manifest_max_bytes",
    "blob_max_bytes",
    "chunk_max_bytes",
    "manifest_max_layers",
    "index_max_children",
)


@dataclass(frozen=True)
class SizeLimits:
    """The size limits that apply in one repository, and the setting each
    came from (for messages: "limits.overrides[0].blob_max_bytes")."""

    values: dict
    sources: dict

    def __getattr__(self, name: str) -> int:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def size_limits(limits: LimitsConfig, repository: str) -> SizeLimits:
    """The size limits for `repository`: the defaults, with the first
    matching entry of `limits.overrides` laid over them."""
    from quaylock.policy.access import matches  # noqa: PLC0415 - import cycle

    values = {name: getattr(limits, name) for name in SIZE_LIMITS}
    sources = {name: f"limits.{name}" for name in SIZE_LIMITS}
    for i, override in enumerate(limits.overrides):
        if any(matches(p, repository) for p in override["repositories"]):
            for name in SIZE_LIMITS:
                if name in override:
                    values[name] = override[name]
                    sources[name] = f"limits.overrides[{i}].{name}"
            break
    if not values["chunk_max_bytes"]:
        values["chunk_max_bytes"] = values["blob_max_bytes"]
        sources["chunk_max_bytes"] = sources["blob_max_bytes"]
    return SizeLimits(values, sources)


@dataclass
class QuotasConfig:
    # Stored bytes each repository, namespace (a repository name's first
    # part) and user may hold; 0: no quota.
    repository_max_bytes: int = 0
    namespace_max_bytes: int = 0
    user_max_bytes: int = 0
    # Other values by name: [{namespaces: ["ml"], max_bytes: ...}], or
    # repositories: [...] or users: [...]; the first match of its kind wins.
    overrides: list = field(default_factory=list)


QUOTA_SCOPES = {
    "repositories": "repository",
    "namespaces": "namespace",
    "users": "user",
}


def quota_for(quotas: QuotasConfig, scope: str, name: str) -> tuple[int, str]:
    """The quota of `name` in `scope` (repository, namespace or user), and
    the setting it comes from; 0 means none."""
    from quaylock.policy.access import matches  # noqa: PLC0415 - import cycle

    for i, override in enumerate(quotas.overrides):
        key = next(k for k in QUOTA_SCOPES if k in override)
        if QUOTA_SCOPES[key] == scope and any(matches(p, name) for p in override[key]):
            return override["max_bytes"], f"quotas.overrides[{i}]"
    return getattr(quotas, f"{scope}_max_bytes"), f"quotas.{scope}_max_bytes"


@dataclass
class GCConfig:
    # What is younger than this stays: a blob uploaded for a manifest not
    # pushed yet, an image pushed by digest to be tagged. At least
    # uploads.idle_seconds.
    grace_seconds: int = 24 * 3600
    # Collect every this many seconds from the server itself; 0: only when
    # `quaylock gc` runs.
    interval_seconds: int = 0
    # Retention rules (`RetentionRule`), applied by each collection before
    # it looks for unreferenced manifests.
    retention: list = field(default_factory=list)


@dataclass
class RetentionRule:
    """Keep the newest `keep` tags matching `tags` (a regular expression,
    matched against the whole tag) in each repository matching
    `repositories`; collection deletes the older ones, by when each was
    last pushed or moved. A tag that the tag rules make immutable or
    protected is never deleted, nor one that moved since collection listed
    it."""

    repositories: list = field(default_factory=list)
    tags: str = ""
    keep: int = 10


@dataclass
class UploadsConfig:
    # Open upload sessions one subject may hold (with authentication on),
    # and one client address.
    max_sessions_per_subject: int = 64
    max_sessions_per_address: int = 256
    # Bytes staged in all open sessions together, and in one subject's
    # (with authentication on), so that one user cannot take all of it.
    staged_max_bytes: int = 64 * GiB
    staged_max_bytes_per_subject: int = 16 * GiB
    # A session untouched this long expires; its bytes are purged.
    idle_seconds: int = 3600
    # How often each worker looks for expired sessions.
    purge_interval_seconds: int = 60


@dataclass
class ServerConfig:
    workers: int = 1
    # Seconds given to in-flight requests on shutdown.
    shutdown_grace_seconds: int = 30
    # Seconds a client may take to send its request headers; also how long
    # an idle keep-alive connection stays open (Granian has one timer).
    header_read_timeout_seconds: int = 30
    # Largest request head (request line and headers) accepted; 431 above.
    max_header_bytes: int = 65536
    # Open connections, all workers together (each worker takes its share);
    # past it new connections wait in the listen backlog.
    max_connections: int = 4096
    # Requests one worker handles at once, from everyone (503 past it) and
    # from one client address (429 past it).
    max_requests_in_flight: int = 1024
    max_requests_in_flight_per_address: int = 256
    # Seconds a request body may go without a byte, and the least average
    # rate (bytes a second, 0: none) it must keep once that long has
    # passed. A stalled upload would otherwise hold its reservations (of
    # staging space, disk headroom and quota) for as long as its
    # connection stays open.
    body_timeout_seconds: int = 60
    body_min_bytes_per_second: int = 1024
    # Reverse proxies (addresses or CIDR ranges) whose forwarding header
    # names the client; from anyone else it is ignored.
    trusted_proxies: list = field(default_factory=list)
    # Which header the trusted proxies set: "x-forwarded-for" or
    # "forwarded". Only that one is read: a proxy passes the other through
    # from the client, who could write anything in it.
    forwarded_header: str = "x-forwarded-for"


def _loopback() -> list:
    return ["127.0.0.1/32", "::1/128"]


@dataclass
class MetricsConfig:
    # Addresses (CIDR ranges) that may read /metrics without credentials,
    # such as the Prometheus server; anyone else needs an admin's.
    allow: list = field(default_factory=_loopback)


@dataclass
class RateClass:
    """The rate limit of one class of requests, per subject (or per client
    address for requests without credentials)."""

    # Requests a minute, sustained; 0: no limit.
    per_minute: int = 0
    # Requests allowed at once, on top of the sustained rate (the bucket).
    burst: int = 0


RATE_CLASSES = ("read", "write", "token", "listing")


@dataclass
class RateLimitsConfig:
    enabled: bool = True
    # Where the counters live: "memory" (shared by this server's worker
    # processes) or "redis" (shared by replicas too).
    backend: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # GET and HEAD of manifests, blobs, referrers and /v2/.
    read: RateClass = field(default_factory=lambda: RateClass(6000, 1000))
    # Uploads, manifest pushes, deletes and admin changes.
    write: RateClass = field(default_factory=lambda: RateClass(6000, 1000))
    # Logins at /v2/token, always per client address.
    token: RateClass = field(default_factory=lambda: RateClass(600, 100))
    # Catalog and tags list: a page counts as one request per
    # `listing_entries_per_request` entries asked for.
    listing: RateClass = field(default_factory=lambda: RateClass(600, 100))
    listing_entries_per_request: int = 100
    # Other limits for some subjects or addresses: entries of `subjects`
    # (as in auth.rules) or `addresses` (CIDR ranges), `class` (one of
    # RATE_CLASSES, or "*"), `per_minute` and `burst`. The first match
    # applies.
    overrides: list = field(default_factory=list)


@dataclass
class AuthRule:
    """One grant: these subjects may do these actions on these repositories."""

    subjects: list = field(default_factory=list)
    repositories: list = field(default_factory=list)
    actions: list = field(default_factory=list)


@dataclass
class AuthConfig:
    # "token" (the Docker token flow, with Basic on /v2/token), "basic"
    # (Basic on every request) or "none" (closed test networks only).
    mode: str = "token"
    # The audience of issued tokens and the `service` of the challenge.
    service: str = "quaylock"
    # Token endpoint URL for the challenge; empty: this server's /v2/token.
    realm: str = ""
    # The `iss` of issued tokens.
    issuer: str = "quaylock"
    token_ttl_seconds: int = 300
    refresh_ttl_seconds: int = 30 * 24 * 3600
    # Tokens from other issuers: PEM public keys or a JWKS file, by path.
    trusted_issuers: list = field(default_factory=list)
    # Grants beyond the defaults (each user owns <user>/..., admins own all).
    rules: list = field(default_factory=list)
    # Failed logins before an address or an account-at-address is locked.
    lockout_failures: int = 10
    lockout_seconds: int = 300


@dataclass
class TagRule:
    """Rules for the tags of the repositories matching `repositories`.

    Tag patterns are regular expressions matched against the whole tag.
    """

    repositories: list = field(default_factory=lambda: ["**"])
    # Which tags may exist at all; empty: any tag the grammar allows.
    allow: list = field(default_factory=list)
    # Once such a tag exists it never moves or goes (a re-push is a no-op).
    immutable: list = field(default_factory=list)
    # Only subjects with the tag-admin right create, move or delete these.
    protected: list = field(default_factory=list)
    # A new tag that looks like a protected or release tag: deny, hold (an
    # admin approves or rejects it), alert (allow, but log and notify), off.
    lookalike: str = "deny"
    # Tags an admin allowed although they look like another.
    lookalike_allow: list = field(default_factory=list)


def _default_tag_rules() -> list:
    return [TagRule(protected=["latest"])]


@dataclass
class TagsConfig:
    rules: list = field(default_factory=_default_tag_rules)
    # A new repository that looks like an existing one: deny, hold, alert, off.
    repository_lookalike: str = "alert"
    repository_lookalike_allow: list = field(default_factory=list)
    # Names a new one is compared with, at most: the oldest repositories,
    # and a repository's most recently moved tags. Bounds the guard's work
    # (about 1.3 µs a name) on stores of any size.
    lookalike_max_names: int = 10_000


@dataclass
class SignaturePolicy:
    """Signatures required in the repositories matching `repositories`."""

    repositories: list = field(default_factory=lambda: ["**"])
    # tag: moving a matching tag needs a valid signature on the digest;
    # pull: pulling a manifest needs one; audit: only record the status.
    mode: str = "audit"
    # For mode tag: the tags (regular expressions) whose moves need one.
    tags: list = field(default_factory=lambda: [".*"])
    # Trust roots: PEM public keys for cosign; CA certificates for notation.
    cosign_keys: list = field(default_factory=list)
    notation_roots: list = field(default_factory=list)


@dataclass
class SignaturesConfig:
    policies: list = field(default_factory=list)


@dataclass
class Webhook:
    url: str = ""
    # HMAC-SHA256 key for the X-Quaylock-Signature header; read from a file
    # so it stays out of the configuration.
    secret_file: str = ""
    # Actions to send (WEBHOOK_EVENTS): tag.create, tag.move, tag.delete,
    # manifest.delete, push, refused, alert, held, hold.approve, hold.reject.
    events: list = field(
        default_factory=lambda: [
            "tag.create",
            "tag.move",
            "tag.delete",
            "refused",
            "alert",
            "held",
            "hold.approve",
            "hold.reject",
        ]
    )
    timeout_seconds: int = 5


@dataclass
class Config:
    listen: str = "127.0.0.1:5000"
    data: str = "./data"
    deletes: bool = True
    log: LogConfig = field(default_factory=LogConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    uploads: UploadsConfig = field(default_factory=UploadsConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)
    gc: GCConfig = field(default_factory=GCConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tags: TagsConfig = field(default_factory=TagsConfig)
    signatures: SignaturesConfig = field(default_factory=SignaturesConfig)
    webhooks: list = field(default_factory=list)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def storage_root(self) -> Path:
        return Path(self.storage.root or self.data).resolve()

    @property
    def metadata_url(self) -> str:
        if self.metadata.url:
            return self.metadata.url
        return f"sqlite:///{Path(self.data).resolve() / 'metadata.db'}"


def split_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[v6]:PORT``) into its parts.

    Raises:
        ConfigError: the text has no port or a port out of range.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def load(path: str | os.PathLike | None = None, env=None) -> Config:
    """Build the configuration from `path` (optional) and the environment.

    Raises:
        ConfigError: a key is unknown or a value has the wrong type.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    _apply_env(raw, env)
    config = _build(Config, raw, "")
    _check(config)
    return config


def _check(config: Config) -> None:
    """Checks that a type alone cannot express."""
    split_listen(config.listen)
    if config.log.format not in ("json", "text"):
        raise ConfigError(
            f"log.format: expected json or text, got {config.log.format!r}"
        )
    if config.log.level not in LOG_LEVELS:
        raise ConfigError(
            f"log.level: expected one of {', '.join(LOG_LEVELS)}, got {config.log.level!r}"
        )
    if config.server.workers < 1:
        raise ConfigError("server.workers: expected at least 1")
    if config.limits.page_max_entries < 1:
        raise ConfigError("limits.page_max_entries: expected at least 1")
    if config.storage.min_free_percent > 99:
        raise ConfigError("storage.min_free_percent: expected 0 to 99")
    for name in ("manifest_max_bytes", "blob_max_bytes", "body_max_bytes"):
        if getattr(config.limits, name) < 1:
            raise ConfigError(f"limits.{name}: expected at least 1")
    config.limits.overrides = [
        _limit_override(i, raw) for i, raw in enumerate(config.limits.overrides)
    ]
    config.quotas.overrides = [
        _quota_override(i, raw) for i, raw in enumerate(config.quotas.overrides)
    ]
    config.gc.retention = [
        _retention_rule(i, raw) for i, raw in enumerate(config.gc.retention)
    ]
    if config.gc.grace_seconds < config.uploads.idle_seconds:
        raise ConfigError(
            "gc.grace_seconds: expected at least uploads.idle_seconds "
            f"({config.uploads.idle_seconds}), or collection could take a blob "
            "that an open upload session is about to use"
        )
    config.rate_limits.overrides = [
        _rate_override(i, raw) for i, raw in enumerate(config.rate_limits.overrides)
    ]
    if config.rate_limits.backend not in ("memory", "redis"):
        raise ConfigError(
            "rate_limits.backend: expected memory or redis, got "
            f"{config.rate_limits.backend!r}"
        )
    if config.rate_limits.listing_entries_per_request < 1:
        raise ConfigError(
            "rate_limits.listing_entries_per_request: expected at least 1"
        )
    for name in RATE_CLASSES:
        rate = getattr(config.rate_limits, name)
        if rate.per_minute and not rate.burst:
            raise ConfigError(
                f"rate_limits.{name}.burst: expected at least 1 with per_minute set"
            )
    _check_networks(config.metrics.allow, "metrics.allow")
    if config.server.forwarded_header not in ("x-forwarded-for", "forwarded"):
        raise ConfigError(
            "server.forwarded_header: expected x-forwarded-for or forwarded, got "
            f"{config.server.forwarded_header!r}"
        )
    _check_networks(config.server.trusted_proxies, "server.trusted_proxies")
    for name in (
        "max_connections", "max_requests_in_flight",
        "max_requests_in_flight_per_address", "header_read_timeout_seconds",
    ):  # fmt: skip
        if getattr(config.server, name) < 1:
            raise ConfigError(f"server.{name}: expected at least 1")
    if not 8192 <= config.server.max_header_bytes <= 1024 * 1024:
        raise ConfigError("server.max_header_bytes: expected 8192 to 1048576")
    if config.server.body_timeout_seconds < 1:
        raise ConfigError("server.body_timeout_seconds: expected at least 1")
    if config.server.body_min_bytes_per_second < 0:
        raise ConfigError("server.body_min_bytes_per_second: expected 0 or more")
    if config.uploads.idle_seconds < 1 or config.uploads.purge_interval_seconds < 1:
        raise ConfigError(
            "uploads.idle_seconds and uploads.purge_interval_seconds: expected at least 1"
        )
    if bool(config.tls.cert) != bool(config.tls.key):
        raise ConfigError("tls: set both cert and key, or neither")
    if config.auth.mode not in AUTH_MODES:
        raise ConfigError(
            f"auth.mode: expected one of {', '.join(AUTH_MODES)}, got {config.auth.mode!r}"
        )
    config.auth.rules = [_rule(i, r) for i, r in enumerate(config.auth.rules)]
    for i, issuer in enumerate(config.auth.trusted_issuers):
        if not isinstance(issuer, dict) or not {"issuer", "keys"} <= set(issuer):
            raise ConfigError(
                f"auth.trusted_issuers[{i}]: expected a mapping with issuer and keys"
            )

    config.tags.rules = [_tag_rule(i, r) for i, r in enumerate(config.tags.rules)]
    if config.tags.lookalike_max_names < 1:
        raise ConfigError("tags.lookalike_max_names: expected at least 1")
    if config.tags.repository_lookalike not in LOOKALIKE_MODES:
        raise ConfigError(
            "tags.repository_lookalike: expected one of "
            f"{', '.join(LOOKALIKE_MODES)}, got {config.tags.repository_lookalike!r}"
        )

    config.signatures.policies = [
        _signature_policy(i, p) for i, p in enumerate(config.signatures.policies)
    ]

    config.webhooks = [_webhook(i, w) for i, w in enumerate(config.webhooks)]


LOOKALIKE_MODES = ("deny", "hold", "alert", "off")


def _webhook(i: int, raw) -> Webhook:
    where = f"webhooks[{i}]"
    hook = _entry(Webhook, raw, where)
    if not hook.url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url: expected an http:// or https:// URL")
    if not hook.secret_file:
        raise ConfigError(
            f"{where}.secret_file: events are signed; name a file with the key"
        )
    unknown = [e for e in hook.events if e not in WEBHOOK_EVENTS]
    if not isinstance(hook.events, list) or unknown:
        raise ConfigError(
            f"{where}.events: expected a list of {', '.join(WEBHOOK_EVENTS)}"
        )
    return hook


WEBHOOK_EVENTS = (
    "tag.create", "tag.move", "tag.delete", "manifest.delete", "push",
    "refused", "alert", "held", "hold.approve", "hold.reject",
)  # fmt: skip


def _quota_override(i: int, raw) -> dict:
    where = f"quotas.overrides[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    kinds = [k for k in QUOTA_SCOPES if k in raw]
    if len(kinds) != 1 or set(raw) != {kinds[0], "max_bytes"}:
        raise ConfigError(
            f"{where}: expected max_bytes and one of {', '.join(QUOTA_SCOPES)}"
        )
    _check_patterns(raw[kinds[0]], f"{where}.{kinds[0]}")
    value = raw["max_bytes"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where}.max_bytes: expected a whole number >= 0")
    return dict(raw)


def _check_patterns(patterns, where: str) -> None:
    """Raises:
    ConfigError: `patterns` is not a non-empty list of printable text."""
    if (
        not isinstance(patterns, list)
        or not patterns
        or not all(isinstance(p, str) and p.isprintable() for p in patterns)
    ):
        raise ConfigError(f"{where}: expected a non-empty list of patterns")


def _check_networks(value, where: str) -> None:
    """Raises ConfigError unless `value` is a list of addresses or CIDR
    ranges."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of addresses")
    try:
        networks(value)
    except ValueError as exc:
        raise ConfigError(
            f"{where}: expected addresses or CIDR ranges ({exc})"
        ) from None


def _rate_override(i: int, raw) -> dict:
    where = f"rate_limits.overrides[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    kinds = [k for k in ("subjects", "addresses") if k in raw]
    allowed = {*kinds, "class", "per_minute", "burst"}
    if len(kinds) != 1 or not set(raw) <= allowed or "per_minute" not in raw:
        raise ConfigError(
            f"{where}: expected subjects or addresses (one of them), per_minute, "
            "burst, and optionally class"
        )
    _check_patterns(raw[kinds[0]], f"{where}.{kinds[0]}")
    if kinds[0] == "addresses":
        _check_networks(raw["addresses"], f"{where}.addresses")
    rate_class = raw.get("class", "*")
    if kinds[0] == "subjects" and rate_class == "token":
        raise ConfigError(
            f"{where}: logins count per client address, before anyone is "
            "known: select them by addresses, not subjects"
        )
    if rate_class not in (*RATE_CLASSES, "*"):
        raise ConfigError(
            f"{where}.class: expected one of {', '.join(RATE_CLASSES)} or *, "
            f"got {rate_class!r}"
        )
    for key in ("per_minute", "burst"):
        value = raw.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}.{key}: expected a whole number >= 0")
    if raw["per_minute"] and not raw.get("burst"):
        raise ConfigError(f"{where}.burst: expected at least 1 with per_minute set")
    return {**raw, "class": rate_class}


def _retention_rule(i: int, raw) -> RetentionRule:
    where = f"gc.retention[{i}]"
    rule = _entry(RetentionRule, raw, where)
    _check_patterns(rule.repositories, f"{where}.repositories")
    if not isinstance(rule.tags, str) or not rule.tags:
        raise ConfigError(f"{where}.tags: expected a regular expression")
    _check_tag_pattern(rule.tags, f"{where}.tags")
    if not isinstance(rule.keep, int) or isinstance(rule.keep, bool) or rule.keep < 1:
        raise ConfigError(f"{where}.keep: expected a whole number >= 1")
    return rule


def _limit_override(i: int, raw) -> dict:
    where = f"limits.overrides[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - {"repositories", *SIZE_LIMITS})
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; use repositories and any of "
            f"{', '.join(SIZE_LIMITS)}"
        )
    _check_patterns(raw.get("repositories"), f"{where}.repositories")
    for name in SIZE_LIMITS:
        value = raw.get(name)
        if name in raw and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise ConfigError(f"{where}.{name}: expected a whole number >= 0")
    return dict(raw)


SIGNATURE_MODES = ("tag", "pull", "audit")


def _signature_policy(i: int, raw) -> SignaturePolicy:
    where = f"signatures.policies[{i}]"
    policy = _entry(SignaturePolicy, raw, where)
    if policy.mode not in SIGNATURE_MODES:
        raise ConfigError(
            f"{where}.mode: expected one of {', '.join(SIGNATURE_MODES)}, got {policy.mode!r}"
        )
    if not policy.cosign_keys and not policy.notation_roots:
        raise ConfigError(f"{where}: give cosign_keys or notation_roots (or both)")
    return policy


def _tag_rule(i: int, raw) -> TagRule:
    return tag_rule(raw, f"tags.rules[{i}]")


def tag_rule(raw, where: str) -> TagRule:
    """A tag rule from the configuration file or the admin API.

    Raises:
        ConfigError: naming the key under `where` that is wrong.
    """
    rule = _entry(TagRule, raw, where)
    for key in ("repositories", "allow", "immutable", "protected", "lookalike_allow"):
        value = getattr(rule, key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}.{key}: expected a list of strings")
        for text in value:
            # isprintable also refuses lone surrogates, which no store can encode.
            if not text.isprintable() or len(text) > _PATTERN_MAX_CHARS:
                raise ConfigError(
                    f"{where}.{key}: {text[:40]!r} must be printable text of at "
                    f"most {_PATTERN_MAX_CHARS} characters"
                )

    if not rule.repositories:
        raise ConfigError(f"{where}.repositories: expected at least one pattern")
    for key in ("allow", "immutable", "protected"):
        for pattern in getattr(rule, key):
            _check_tag_pattern(pattern, f"{where}.{key}")
    if rule.lookalike not in LOOKALIKE_MODES:
        raise ConfigError(
            f"{where}.lookalike: expected one of {', '.join(LOOKALIKE_MODES)}, got {rule.lookalike!r}"
        )
    return rule


def _check_tag_pattern(pattern: str, where: str) -> None:
    """Refuse a tag pattern that is no regular expression, or that could
    backtrack badly.

    Raises:
        ConfigError: naming `where`.
    """
    if not pattern.isprintable() or len(pattern) > _PATTERN_MAX_CHARS:
        raise ConfigError(
            f"{where}: {pattern[:40]!r} must be printable text of at most "
            f"{_PATTERN_MAX_CHARS} characters"
        )
    try:
        compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ConfigError(
            f"{where}: {pattern!r} is not a regular expression: {exc}"
        ) from None
    if (problem := _backtracking_risk(compiled)) is not None:
        raise ConfigError(f"{where}: {pattern!r} {problem}")


# Tag rule patterns: length, and repeats of variable length they may hold.
_PATTERN_MAX_CHARS = 256
_PATTERN_MAX_OPEN_REPEATS = 4
_PATTERN_MAX_VARIABLE_PARTS = 6


def _backtracking_risk(compiled: re.Pattern) -> str | None:
    r"""Why `compiled` could take exponential or high-polynomial time on a
    128-character tag, or None. Python's engine backtracks: a repeat inside
    a repeat ((a+)+) or a repeated alternation ((a|aa)*) is exponential, and
    many unbounded repeats ((.*)(.*)(.*)...) are polynomial of high degree.
    All are refused; patterns such as v?[0-9]+\.[0-9]+\.[0-9]+ pass."""
    from re import _constants as c  # noqa: PLC0415 - stdlib internals
    from re import _parser

    try:
        tree = _parser.parse(compiled.pattern, compiled.flags)
    except Exception:  # noqa: BLE001 - compiled already; be conservative
        return "cannot be checked for backtracking"
    variable = optional = 0
    repeat_ops = {c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)}

    def walk(items, inside_repeat: bool) -> str | None:
        nonlocal variable, optional
        for op, arg in items:
            if op in repeat_ops:
                low, high, body = arg
                repeats = high is c.MAXREPEAT or high > 1
                if repeats and inside_repeat:
                    return "nests a repeat inside a repeat (exponential backtracking)"
                # .{0,128} backtracks like .* on a tag of 128 characters;
                # an optional (x?) only doubles the ways, so it counts apart.
                if high is c.MAXREPEAT or (high > low and high > 1):
                    variable += 1
                elif high > low:
                    optional += 1
                found = walk(body, inside_repeat or repeats)
            elif op == c.SUBPATTERN:
                found = walk(arg[-1], inside_repeat)
            elif op == getattr(c, "ATOMIC_GROUP", None):
                found = walk(arg, inside_repeat)
            elif op == c.BRANCH and inside_repeat:
                found = "repeats an alternation (exponential backtracking)"
            elif op == c.BRANCH:
                found = next(
                    (f for f in (walk(b, inside_repeat) for b in arg[1]) if f), None
                )
            elif op in (c.ASSERT, c.ASSERT_NOT):
                found = walk(arg[1], inside_repeat)
            elif op == c.GROUPREF_EXISTS:
                found = walk(arg[1], inside_repeat) or (
                    walk(arg[2], inside_repeat) if arg[2] else None
                )
            else:
                found = None
            if found:
                return found
        return None

    problem = walk(tree, False)
    if problem is None and variable > _PATTERN_MAX_OPEN_REPEATS:
        problem = (
            f"has {variable} repeats of variable length; at most "
            f"{_PATTERN_MAX_OPEN_REPEATS} (each adds a power to the backtracking time)"
        )
    if problem is None and variable + optional > _PATTERN_MAX_VARIABLE_PARTS:
        # Measured worst case at the limit (.*.*.*.*a?a?! on 128 characters):
        # about 0.3 s; each part more multiplies it.
        problem = (
            f"has {variable + optional} repeated or optional parts; at most "
            f"{_PATTERN_MAX_VARIABLE_PARTS}, of which {_PATTERN_MAX_OPEN_REPEATS} repeats"
        )
    return problem


AUTH_MODES = ("token", "basic", "none")


def _entry(cls, raw, where: str):
    """One mapping of a list section (a rule, a policy, a webhook) as `cls`."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    return _build(cls, raw, where + ".")


ACTIONS = ("pull", "push", "delete", "tag-admin", "*")


def _rule(i: int, raw) -> AuthRule:
    where = f"auth.rules[{i}]"
    rule = _entry(AuthRule, raw, where)
    for key in ("subjects", "repositories", "actions"):
        value = getattr(rule, key)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) for v in value)
        ):
            raise ConfigError(f"{where}.{key}: expected a non-empty list of strings")
    unknown = [a for a in rule.actions if a not in ACTIONS]
    if unknown:
        raise ConfigError(f"{where}.actions: unknown action {unknown[0]!r}")
    for subject in rule.subjects:
        kind = subject.partition(":")[0]
        if subject != "anonymous" and kind not in ("user", "group", "robot"):
            raise ConfigError(
                f"{where}.subjects: {subject!r} must be anonymous, user:NAME, "
                "group:NAME or robot:NAME ('*' matches any name)"
            )
    return rule


LOG_LEVELS = ("debug", "info", "warning", "error")


# Environment variables of ours that are not settings.
NOT_SETTINGS = frozenset({"QUAYLOCK_CONFIG_FILE", "QUAYLOCK_ADMIN_PASSWORD"})


def _apply_env(raw: dict, env) -> None:
    for name, value in env.items():
        if not name.startswith("QUAYLOCK_") or name in NOT_SETTINGS:
            continue
        keys = name[len("QUAYLOCK_") :].lower().split("__")
        target = raw
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{name}: {key} is not a section")
        try:
            target[keys[-1]] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            raise ConfigError(
                f"{name}: {value[:60]!r} is not a YAML value; quote text that "
                "holds ':' or '[' (for example '\"[::1]:5000\"')"
            ) from None


def _build(cls, raw: Any, where: str, base: Any = None):
    """`cls` from the mapping `raw`; keys it leaves out keep `base`'s
    values (a section's defaults), or the class's."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {where + unknown[0]!r}")
    values = {}
    for name, value in raw.items():
        f = fields[name]
        key = where + name
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if base is not None:
            default = getattr(base, name)
        if dataclasses.is_dataclass(default):
            values[name] = _build(type(default), value or {}, key + ".", default)
        else:
            values[name] = _coerce(default, value, key)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def _coerce(default: Any, value: Any, key: str) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ConfigError(f"{key}: expected a whole number >= 0, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"{key}: expected text, got {value!r}")
    if isinstance(default, list):
        if isinstance(value, list):
            return value
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    return value
