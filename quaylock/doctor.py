"""`quaylock doctor`: audit a configuration, its files and a running registry.

Each check returns `Finding`s: what is wrong, how bad it is, and the exact
setting or command that fixes it. The severities follow one rule, so that a
deployment can be gated on them (the command exits 1 on any high finding):

- high: a stranger on the network can write to the registry, read a secret
  or a credential in transit, or the registry does not answer as it should;
- medium: a defence that bounds the damage is off (quotas, size limits, rate
  limits, a protected ``latest``), the store is readable by other local
  users, or the registry tells strangers more than it must;
- low: hygiene, or a risk that depends on what surrounds the registry (a
  proxy, cron, a closed network), which doctor cannot see.

The checks read; they never change a file or a setting. `check_running`
makes five GET requests and follows no redirect.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import ipaddress
import re
import socket
import sqlite3
import ssl
import stat
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from quaylock.config import RATE_CLASSES, Config, LimitsConfig

HIGH, MEDIUM, LOW = "high", "medium", "low"
SEVERITIES = (HIGH, MEDIUM, LOW)


@dataclass(frozen=True)
class Finding:
    """One thing an auditor would flag, and how to put it right."""

    severity: str  # HIGH, MEDIUM or LOW
    code: str  # stable and greppable: "auth-off-public"
    message: str  # what is wrong, with the values that make it wrong
    fix: str  # the setting or command that puts it right

    def as_json(self) -> dict:
        return asdict(self)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or ``localhost``) is on this machine only.
    Other names are not resolved: doctor takes them as reachable."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


# Configuration


def check_config(config: Config) -> list[Finding]:
    """Findings about the settings alone: who may reach and write to the
    registry, and which defences are off."""
    return [
        *_exposure(config),
        *_anonymous_writes(config),
        *_flood_defences(config),
        *_size_limits(config.limits),
        *_tag_defences(config),
    ]


def _exposure(config: Config) -> list[Finding]:
    """Authentication and TLS against the address the server listens on."""
    findings = []
    public = not is_loopback(config.host)
    if config.auth.mode == "none" and public:
        findings.append(Finding(
            HIGH, "auth-off-public",
            f"authentication is off (auth.mode: none) and the registry listens "
            f"on {config.listen}: anyone who reaches it may push, overwrite and "
            "delete",
            "set auth.mode: token (the default), or listen on 127.0.0.1 only",
        ))  # fmt: skip
    elif config.auth.mode == "none":
        findings.append(Finding(
            LOW, "auth-off-loopback",
            f"authentication is off (auth.mode: none) on {config.listen}: every "
            "local user and process may push, overwrite and delete",
            "set auth.mode: token unless this is a test registry",
        ))  # fmt: skip
    if public and not config.tls.cert and not config.server.trusted_proxies:
        findings.append(Finding(
            HIGH, "tls-off-public",
            f"no TLS (tls.cert and tls.key unset) on {config.listen}: passwords "
            "and tokens cross the network in clear text",
            "set tls.cert and tls.key to a PEM certificate chain and its key, or "
            "end TLS at a proxy and list it in server.trusted_proxies",
        ))  # fmt: skip
    elif public and not config.tls.cert:
        findings.append(Finding(
            LOW, "tls-at-proxy",
            f"no TLS on {config.listen}; server.trusted_proxies says TLS ends at "
            f"a proxy ({', '.join(config.server.trusted_proxies)}), so the hop "
            "from the proxy to quaylock is in clear text",
            "listen only where the proxy reaches (127.0.0.1 for a proxy on this "
            "host), or set tls.cert and tls.key for that hop too",
        ))  # fmt: skip
    if _everyone(config.metrics.allow):
        findings.append(Finding(
            MEDIUM, "metrics-allow-everyone",
            f"metrics.allow ({', '.join(config.metrics.allow)}) lets every "
            "address read /metrics without credentials",
            "list only your Prometheus server's address in metrics.allow",
        ))  # fmt: skip
    if _everyone(config.server.trusted_proxies):
        findings.append(Finding(
            MEDIUM, "trusted-proxies-everyone",
            "server.trusted_proxies trusts every address: any client names its "
            "own address in the forwarding header, and so escapes rate limits "
            "and login lockouts, or passes as loopback for /metrics",
            "list only your proxies' addresses in server.trusted_proxies",
        ))  # fmt: skip
    return findings


def _everyone(patterns: list) -> bool:
    """Whether a list of addresses and CIDR ranges holds a /0."""
    for pattern in patterns:
        try:
            if ipaddress.ip_network(pattern, strict=False).prefixlen == 0:
                return True
        except ValueError:
            continue  # config.load refused it already
    return False


# Actions that change what a repository holds; "*" is all of them.
WRITE_ACTIONS = frozenset({"push", "delete", "tag-admin", "*"})


def _anonymous_writes(config: Config) -> list[Finding]:
    """Rules that let anyone write. A rule for `anonymous` grants everyone,
    signed in or not (policy/access.py), so one such rule is enough."""
    findings = []
    for i, rule in enumerate(config.auth.rules):
        writes = sorted(WRITE_ACTIONS & set(rule.actions))
        if "anonymous" in rule.subjects and writes:
            findings.append(Finding(
                HIGH, "anonymous-push",
                f"auth.rules[{i}] grants {', '.join(writes)} on "
                f"{', '.join(rule.repositories)} to anonymous: anyone, signed in "
                "or not, may change those repositories",
                f"grant only pull to anonymous in auth.rules[{i}]; give writers a "
                "rule of their own (user:NAME, group:NAME or robot:NAME)",
            ))  # fmt: skip
    return findings


def _flood_defences(config: Config) -> list[Finding]:
    """Rate limits and quotas."""
    findings = []
    rates = config.rate_limits
    if not rates.enabled:
        findings.append(Finding(
            MEDIUM, "rate-limits-off",
            "rate limits are off (rate_limits.enabled: false): one client can "
            "crowd out every other",
            "set rate_limits.enabled: true (the default)",
        ))  # fmt: skip
    else:
        for name in RATE_CLASSES:
            if not getattr(rates, name).per_minute:
                findings.append(Finding(
                    LOW, "rate-limit-class-off",
                    f"rate_limits.{name}.per_minute is 0: {name} requests are "
                    "not rate limited",
                    f"set rate_limits.{name}.per_minute and "
                    f"rate_limits.{name}.burst",
                ))  # fmt: skip
    quotas = config.quotas
    if not (
        quotas.repository_max_bytes
        or quotas.namespace_max_bytes
        or quotas.user_max_bytes
        or any(override["max_bytes"] for override in quotas.overrides)
    ):
        findings.append(Finding(
            MEDIUM, "no-quotas",
            "no quota is set (quotas.repository_max_bytes, namespace_max_bytes "
            "and user_max_bytes are 0, no override sets one): one user can fill "
            "the store",
            "set quotas.namespace_max_bytes and quotas.user_max_bytes (for "
            "example 107374182400, 100 GiB); raise them for big namespaces in "
            "quotas.overrides",
        ))  # fmt: skip
    return findings


# quaylock's size limits cannot be switched off (the byte limits must be at
# least 1; chunk_max_bytes 0 means "as blob_max_bytes"), so a limit counts as
# off when it is set so high that it bounds nothing: past this many times
# its default.
SIZE_LIMIT_FACTOR = 16
_DEFAULT_LIMITS = LimitsConfig()
_SIZE_LIMITS = (
    "manifest_max_bytes", "blob_max_bytes", "body_max_bytes",
    "manifest_max_layers", "index_max_children",
)  # fmt: skip


def _size_limits(limits: LimitsConfig) -> list[Finding]:
    """Size limits set too high to bound anything, in the section or in
    one of its overrides."""
    settings = [(f"limits.{name}", getattr(limits, name)) for name in _SIZE_LIMITS]
    settings.append(("limits.chunk_max_bytes", limits.chunk_max_bytes))
    for i, override in enumerate(limits.overrides):
        settings += [
            (f"limits.overrides[{i}].{name}", value)
            for name, value in override.items()
            if name != "repositories"
        ]
    findings = []
    for setting, value in settings:
        name = setting.rpartition(".")[2]
        # An unset chunk limit follows blob_max_bytes, checked on its own.
        default = getattr(_DEFAULT_LIMITS, name) or _DEFAULT_LIMITS.blob_max_bytes
        if value > default * SIZE_LIMIT_FACTOR:
            findings.append(Finding(
                MEDIUM, "size-limit-off",
                f"{setting} is {value}, more than {SIZE_LIMIT_FACTOR} times its "
                f"default ({default}): it bounds nothing, and one upload can "
                "take the disk or the memory it guards",
                f"set {setting} to the largest you expect (the default is "
                f"{default}); give big repositories their own value in "
                "limits.overrides",
            ))  # fmt: skip
    return findings


def _tag_defences(config: Config) -> list[Finding]:
    """A protected `latest` everywhere, and a signature policy."""
    findings = []
    rules = config.tags.rules
    if not any(_protects_latest_everywhere(rule) for rule in rules):
        findings.append(Finding(
            MEDIUM, "latest-unprotected",
            "no tag rule protects latest in every repository (a rule with "
            "repositories [\"**\"] whose protected patterns match latest): "
            "anyone who may push may move latest",
            "add to tags.rules: {repositories: [\"**\"], protected: [\"latest\"]}",
        ))  # fmt: skip
    policies = config.signatures.policies
    if rules and not policies:
        findings.append(Finding(
            LOW, "no-signature-policy",
            "tag rules say who may move a tag, but no signature policy "
            "(signatures.policies) says what it may point at: a stolen admin "
            "credential moves latest to anything",
            "add a signatures.policies entry with mode: tag for your release "
            "repositories, and the cosign_keys or notation_roots that sign them",
        ))  # fmt: skip
    elif policies and all(policy.mode == "audit" for policy in policies):
        findings.append(Finding(
            LOW, "signatures-audit-only",
            "every signature policy is mode: audit: unsigned images are counted "
            "and logged, never refused",
            "set mode: tag (or pull) on the policies of repositories you release "
            "from",
        ))  # fmt: skip
    return findings


def _protects_latest_everywhere(rule) -> bool:
    """An immutable `latest` is protected too: nobody moves it at all."""
    return "**" in rule.repositories and any(
        re.fullmatch(pattern, "latest") for pattern in rule.protected + rule.immutable
    )


# Files


# How long ago a `quaylock gc` from cron may have run for collection to count
# as scheduled (`quaylock gc` stamps <data>/gc.last when it ends).
GC_STAMP_MAX_AGE_SECONDS = 7 * 24 * 3600


def check_files(config: Config) -> list[Finding]:
    """Findings about the files the configuration names or the server
    writes: who may read them, which are missing, which should be gone."""
    data = Path(config.data).resolve()
    findings = []
    # Files the configuration names: secrets, certificates, trust roots.
    if config.tls.key:
        findings += _required_file(Path(config.tls.key), "tls.key", secret=True)
        findings += _required_file(Path(config.tls.cert), "tls.cert")
        findings += _certificate(config.tls.cert, config.tls.key)
    for i, hook in enumerate(config.webhooks):
        findings += _required_file(
            Path(hook.secret_file), f"webhooks[{i}].secret_file", secret=True
        )
    for i, policy in enumerate(config.signatures.policies):
        for j, path in enumerate(policy.cosign_keys):
            where = f"signatures.policies[{i}].cosign_keys[{j}]"
            findings += _required_file(Path(path), where)
        for j, path in enumerate(policy.notation_roots):
            where = f"signatures.policies[{i}].notation_roots[{j}]"
            findings += _required_file(Path(path), where)

    # The data folder, as `quaylock serve` lays it out (operations.md).
    if not data.is_dir():
        findings.append(Finding(
            LOW, "data-missing",
            f"no data folder at {data}: the files the server writes were not "
            "checked",
            "give the folder the server uses with --data DIR, or run doctor "
            "again after the first start",
        ))  # fmt: skip
    else:
        store_paths = [data, config.storage_root]
        if config.metadata_url.startswith("sqlite:///"):
            database = config.metadata_url[len("sqlite:///") :]
            store_paths += [Path(database + suffix) for suffix in ("", "-wal", "-shm")]
        for path in dict.fromkeys(store_paths):  # storage root may be data
            findings += _permissions(path, secret=False)
        keys = data / "keys"
        for path in [keys, *sorted(keys.glob("*"))]:
            findings += _permissions(path, secret=True)
        findings += _schema(config)
        password = data / "admin-password"
        findings += _permissions(password, secret=True)
        if password.exists():
            findings.append(Finding(
                MEDIUM, "admin-password-file",
                f"{password} still holds the first admin password",
                f"log in as admin, run `quaylock user passwd admin --data {data}`, "
                f"then `rm {password}`",
            ))  # fmt: skip
    findings += _collection(config)
    named = [config.tls.key, config.tls.cert, *(h.secret_file for h in config.webhooks)]
    for policy in config.signatures.policies:
        named += [*policy.cosign_keys, *policy.notation_roots]
    findings += _open_parents(
        [data, Path(config.storage_root), *map(Path, filter(None, named))]
    )
    return findings


def _open_parents(paths: list[Path]) -> list[Finding]:
    """Folders above `paths` where anyone may create and rename entries (no
    sticky bit): a local user could swap the file, a key or a trust root,
    however private the file itself is."""
    findings, seen = [], set()
    for path in paths:
        for parent in Path(path).resolve().parents:
            if parent in seen:
                continue
            seen.add(parent)
            try:
                mode = stat.S_IMODE(parent.stat().st_mode)
            except OSError:
                continue
            if mode & 0o002 and not mode & stat.S_ISVTX:
                findings.append(Finding(
                    HIGH, "world-writable",
                    f"folder {parent} is mode {mode:04o}, without the sticky bit: "
                    f"every local user may rename and replace {path} beneath it",
                    f"chmod o-w {parent} (or chmod +t {parent})",
                ))  # fmt: skip
    return findings


# A certificate that ends sooner than this is said to need renewing.
CERTIFICATE_RENEW_DAYS = 30


def tls_problem(cert: str, key: str) -> str | None:
    """Why a server could not serve TLS with this certificate and key (the
    same check `serve` makes before it starts), or None."""
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one
        return f"cannot use certificate {cert} with key {key}: {exc}"
    return None


def _certificate(cert: str, key: str) -> list[Finding]:
    """The certificate and key work together, and the certificate is in
    its validity period with some to spare."""
    if not (Path(cert).exists() and Path(key).exists()):
        return []  # file-missing says so
    if problem := tls_problem(cert, key):
        return [Finding(
            HIGH, "tls-unusable", problem + ": `serve` refuses to start",
            "set tls.cert to the PEM certificate chain that tls.key belongs to",
        )]  # fmt: skip
    from cryptography import x509  # noqa: PLC0415

    try:
        leaf = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except (OSError, ValueError):
        return []  # loaded by ssl above, so another encoding: not judged
    now = time.time()
    ends = leaf.not_valid_after_utc.timestamp()
    if ends <= now or leaf.not_valid_before_utc.timestamp() > now:
        return [Finding(
            HIGH, "tls-expired",
            f"the certificate {cert} is valid from {leaf.not_valid_before_utc:%Y-%m-%d} "
            f"to {leaf.not_valid_after_utc:%Y-%m-%d}: clients refuse it now",
            "renew it, then restart the registry",
        )]  # fmt: skip
    days = int((ends - now) // 86400)
    if days < CERTIFICATE_RENEW_DAYS:
        return [Finding(
            MEDIUM, "tls-expiring",
            f"the certificate {cert} expires in {days} days "
            f"({leaf.not_valid_after_utc:%Y-%m-%d})",
            "renew it and restart the registry before then",
        )]  # fmt: skip
    return []


def _required_file(path: Path, setting: str, secret: bool = False) -> list[Finding]:
    """A file the configuration names: it must exist; a secret must be
    private, and public material (a certificate, a public key) must at
    least not be writable by everyone, who could swap a trust root."""
    if not path.exists():
        return [Finding(
            HIGH, "file-missing",
            f"{setting} names {path}, which does not exist: the server cannot "
            "use it",
            f"put the file at {path}, or correct {setting}",
        )]  # fmt: skip
    findings = _permissions(path, secret)
    if secret:
        return findings
    return [f for f in findings if f.code == "world-writable"]


def _permissions(path: Path, secret: bool) -> list[Finding]:
    """Group or other permissions on a store or secret path; nothing when
    the path does not exist. quaylock creates folders 0700 and files 0600."""
    try:
        info = path.stat()
    except OSError:
        return []
    mode = stat.S_IMODE(info.st_mode)
    folder = stat.S_ISDIR(info.st_mode)
    fix = f"chmod {'700' if folder else '600'} {path}"
    what = "folder" if folder else "file"
    if mode & 0o002:
        return [Finding(
            HIGH, "world-writable",
            f"{what} {path} is mode {mode:04o}: every local user may change it",
            fix,
        )]  # fmt: skip
    if secret and mode & 0o077:
        return [Finding(
            HIGH, "secret-readable",
            f"{what} {path} holds a key or password and is mode {mode:04o}: "
            "other local users may read it (expected 0600, or 0700 for a folder)",
            fix,
        )]  # fmt: skip
    if mode & 0o077:
        return [Finding(
            MEDIUM, "store-readable",
            f"{what} {path} is mode {mode:04o}: other local users may read the "
            "registry's store (expected 0700 for a folder, 0600 for a file)",
            fix,
        )]  # fmt: skip
    return []


def _schema(config: Config) -> list[Finding]:
    """The store's schema against this quaylock's: a newer one will not
    start, an older one is migrated when it does."""
    from quaylock.metadata.schema import SCHEMA_VERSION, StoreError  # noqa: PLC0415
    from quaylock.metadata.store import stored_schema_version  # noqa: PLC0415

    try:
        found = stored_schema_version(config.metadata_url)
    except (ValueError, OSError, sqlite3.Error, StoreError) as exc:
        return [Finding(
            HIGH, "store-unreadable", f"the metadata store cannot be read: {exc}",
            "check metadata.url and the database file",
        )]  # fmt: skip
    if found is not None and found > SCHEMA_VERSION:
        return [Finding(
            HIGH, "schema-too-new",
            f"the store's schema is version {found}, this quaylock knows up to "
            f"{SCHEMA_VERSION}: `serve` refuses to start on it",
            "install the quaylock that migrated it, or restore the backup taken "
            "before that upgrade",
        )]  # fmt: skip
    if found is not None and found < SCHEMA_VERSION:
        return [Finding(
            LOW, "migration-due",
            f"the store's schema is version {found}; `serve` migrates it to "
            f"{SCHEMA_VERSION} when it starts, which cannot be undone",
            "take a backup (operations.md, Backup), then `quaylock migrate` with "
            "the server stopped",
        )]  # fmt: skip
    return []


def _collection(config: Config) -> list[Finding]:
    """Deletes free nothing until garbage collection runs: from the server
    (gc.interval_seconds) or from cron, which leaves <data>/gc.last."""
    if not config.deletes or config.gc.interval_seconds:
        return []
    stamp = Path(config.data) / "gc.last"
    try:
        if time.time() - stamp.stat().st_mtime < GC_STAMP_MAX_AGE_SECONDS:
            return []
    except OSError:
        pass
    return [Finding(
        LOW, "deletes-without-gc",
        "deletes are on (deletes: true) but the server never collects garbage "
        "(gc.interval_seconds: 0) and no `quaylock gc` ran in the last 7 days: "
        "deleted images keep their disk space and count against quotas",
        "set gc.interval_seconds: 86400, or run `quaylock gc --interval 86400` "
        "daily from cron",
    )]  # fmt: skip


# A running registry

# Headers that name software; Docker-Distribution-API-Version names the
# protocol, which the spec requires, so it is not one of them.
_SOFTWARE_HEADERS = ("server", "x-powered-by", "x-aspnet-version", "x-runtime", "via")
_HEADER_VERSION = re.compile(r"\d+\.\d+")
_BODY_VERSION = re.compile(
    r"(?i)\b(?:quaylock|granian|python|cpython|uvicorn|hypercorn|gunicorn|"
    r"starlette|nginx|apache|openssl)[ /v-]*\d+\.\d+(?:\.\d+)*"
    r"|\"(?:version|server_version)\"\s*:\s*\"[^\"]{1,40}\"|\bversion=\"[^\"]{1,40}\""
)
_BODY_MAX_BYTES = 64 * 1024
# An error answer: a repository and tag that no registry has.
ERROR_PROBE = "/v2/nonexistent/manifests/x"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list  # (lower-case name, value)
    body: bytes
    client_address: str  # the address the server saw the request from


# How long all the probes of --url may take together: a registry, or
# whatever is in front of it, that answers a byte at a time must not hold a
# deployment gate for ever.
PROBES_SECONDS = 30.0


def check_running(
    url: str,
    cafile: str | None = None,
    timeout: float = 5.0,
    total: float = PROBES_SECONDS,
) -> list[Finding]:
    """Findings about the registry that answers at `url`: health, what it
    tells an anonymous stranger, who may read /metrics.

    Raises:
        ValueError: `url` is not an http:// or https:// URL with a host.
    """
    findings = url_findings(url)
    parts = urllib.parse.urlsplit(url)
    get = _getter(parts, cafile, timeout, time.monotonic() + total)

    try:
        health = get("/healthz")
    except ssl.SSLCertVerificationError as exc:
        return [*findings, Finding(
            HIGH, "tls-unverified",
            f"the certificate of {url} does not verify: {exc.verify_message}",
            "serve a certificate clients trust, or give doctor the CA that "
            "signed it with --cafile FILE",
        )]  # fmt: skip
    except (OSError, http.client.HTTPException) as exc:
        return [*findings, Finding(
            HIGH, "unreachable",
            f"GET {url}/healthz failed: {exc}",
            "start the registry, or give doctor the URL it serves at",
        )]  # fmt: skip

    answers = {"/healthz": health}
    for path in ("/readyz", "/v2/", ERROR_PROBE, "/metrics"):
        try:
            answers[path] = get(path)
        except (OSError, http.client.HTTPException) as exc:
            findings.append(Finding(
                HIGH, "probe-failed",
                f"GET {url}{path} failed: {exc or type(exc).__name__}",
                "a registry that answers /healthz answers this too: check the "
                "server's log, and whatever is in front of it",
            ))  # fmt: skip

    # Health: the process, then the stores behind it.
    for path, code in (("/healthz", "not-healthy"), ("/readyz", "not-ready")):
        answer = answers.get(path)
        if answer is not None and answer.status != 200:
            body = answer.body[:300].decode(errors="replace")
            findings.append(Finding(
                HIGH, code, f"GET {path} answers {answer.status}: {body}",
                "see which store the body names; check the data folder, the "
                "disk and the server's log",
            ))  # fmt: skip

    # What a stranger learns: the API root, an error answer, open metrics.
    shown = {p: answers[p] for p in ("/v2/", ERROR_PROBE) if p in answers}
    metrics = answers.get("/metrics")
    if metrics is not None and metrics.status == 200:
        shown["/metrics"] = metrics
    findings += disclosure_findings(shown)
    if metrics is not None:
        findings += metrics_findings(metrics.status, metrics.client_address)
    return findings


def url_findings(url: str) -> list[Finding]:
    """Findings from the URL alone: plain HTTP beyond loopback.

    Raises:
        ValueError: `url` is not an http:// or https:// URL with a host.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"--url: expected http://HOST:PORT or https://..., got {url!r}"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return [Finding(
            HIGH, "plain-http",
            f"{url} is plain HTTP beyond loopback: passwords and tokens cross "
            "the network in clear text",
            "serve HTTPS: set tls.cert and tls.key, or end TLS at a proxy, and "
            "give doctor the https:// URL",
        )]  # fmt: skip
    return []


def disclosure_findings(answers: dict) -> list[Finding]:
    """Versions and software names in answers to anonymous requests, by
    path: a version tells an attacker which advisories apply."""
    revealed: dict[tuple[str, str], list[str]] = {}
    for path, answer in answers.items():
        for name, value in answer.headers:
            if name in _SOFTWARE_HEADERS or (
                "version" in name and name != "docker-distribution-api-version"
            ):
                severity = MEDIUM if _HEADER_VERSION.search(value) else LOW
                revealed.setdefault((severity, f"{name}: {value}"), []).append(path)
        text = answer.body[:_BODY_MAX_BYTES].decode(errors="replace")
        for match in dict.fromkeys(m.group(0) for m in _BODY_VERSION.finditer(text)):
            revealed.setdefault((MEDIUM, f"body: {match}"), []).append(path)

    findings = []
    for (severity, what), paths in revealed.items():
        where = ", ".join(f"GET {path}" for path in paths)
        if severity == MEDIUM:
            findings.append(Finding(
                MEDIUM, "version-disclosed",
                f"{where} reveal a version to anyone: {what}",
                "remove the version: strip the header or body at the proxy in "
                "front (nginx: proxy_hide_header), or report it to quaylock",
            ))  # fmt: skip
        else:
            findings.append(Finding(
                LOW, "software-named",
                f"{where} name the server software, without a version: {what}",
                "strip the header at the proxy in front if you would rather not "
                "say (nginx: proxy_hide_header Server); quaylock cannot turn "
                "Granian's Server header off",
            ))  # fmt: skip
    return findings


def metrics_findings(status: int, client_address: str) -> list[Finding]:
    """/metrics must answer a stranger 401; from loopback, where the default
    metrics.allow lets everyone in, doctor cannot tell."""
    if status == 200 and not is_loopback(client_address):
        return [Finding(
            MEDIUM, "metrics-open",
            f"GET /metrics answers 200 without credentials to {client_address}, "
            "the address doctor asked from",
            "list only your Prometheus server in metrics.allow, and check that "
            "a proxy in front is not making every client look like loopback",
        )]  # fmt: skip
    return []


def _getter(
    parts: urllib.parse.SplitResult, cafile: str | None, timeout: float,
    deadline: float,
):  # fmt: skip
    """A function that GETs a path from the registry at `parts`, anonymously,
    on a connection of its own, and reads at most _BODY_MAX_BYTES; each
    socket wait is held to `timeout`, all of them together to `deadline`
    (time.monotonic()).

    The function raises OSError or http.client.HTTPException as http.client
    does, and TimeoutError past the deadline."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    context = ssl.create_default_context(cafile=cafile) if cafile else None

    def fetch(path: str, opened: list) -> Answer:
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname, port, timeout=timeout,
                context=context or ssl.create_default_context(),
            )  # fmt: skip
        else:
            connection = http.client.HTTPConnection(
                parts.hostname, port, timeout=timeout
            )
        opened.append(connection)
        try:
            connection.request("GET", parts.path.rstrip("/") + path)
            client_address = connection.sock.getsockname()[0]
            response = connection.getresponse()
            body = response.read(_BODY_MAX_BYTES)
            headers = [(name.lower(), value) for name, value in response.getheaders()]
            return Answer(response.status, headers, body, client_address)
        finally:
            connection.close()

    def get(path: str) -> Answer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no time left for this probe")
        opened: list = []
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            return pool.submit(fetch, path, opened).result(timeout=left)
        except concurrent.futures.TimeoutError:
            for connection in opened:
                # A shut-down socket wakes the fetch's wait, with an error.
                with contextlib.suppress(OSError, AttributeError):
                    connection.sock.shutdown(socket.SHUT_RDWR)
            raise TimeoutError(
                "no whole answer in the time left for the probes"
            ) from None
        finally:
            pool.shutdown(wait=False)

    return get


# Dependencies


def check_dependencies(advisories: Path) -> tuple[str, list[Finding]]:
    """The advisory folder's date line, and a HIGH finding for each
    installed distribution with a known vulnerability.

    Raises:
        AdvisoryError: the folder is missing, or an advisory in it is broken.
    """
    from quaylock.supply.audit import audit_installed  # noqa: PLC0415 - --deps only

    date_line, vulnerabilities = audit_installed(advisories)
    findings = []
    for vulnerability in vulnerabilities:
        name = vulnerability.package
        fixed = list(vulnerability.fixed)
        fix = (
            f"upgrade {name} to {' or '.join(fixed)} or newer: pin it in "
            "requirements.in, then `make lock`"
            if fixed
            else f"no fixed version of {name} is known: remove or replace it"
        )
        findings.append(Finding(
            HIGH, "known-vulnerable-dependency",
            f"known-vulnerable dependency: {name} {vulnerability.version} "
            f"({vulnerability.advisory_id}: {vulnerability.summary})",
            fix,
        ))  # fmt: skip
    return date_line, findings


def check_sbom() -> list[Finding]:
    """Whether the SBOM that `make sbom` wrote still describes what is
    installed (it is what admins get from /admin/v1/sbom)."""
    from quaylock import about  # noqa: PLC0415

    sbom, why = about.read_sbom()
    if sbom is None:
        return [Finding(LOW, "sbom-missing", why, "run `make sbom`")]
    differences = about.sbom_drift(sbom, about.installed())
    if not differences:
        return []
    shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
    return [Finding(
        LOW, "sbom-stale",
        f"the SBOM at {about.sbom_path()} no longer matches what is installed: {shown}",
        "run `make sbom` after every install or upgrade",
    )]  # fmt: skip
