"""The workloads, each run the same way against both registries.

A phase has an untimed `prepare` step (pushing what it needs, checking that
the server answers what the load will ask) and a timed `run` step. Loads come
from two kinds of client:

- Python client processes (`run_clients`), one keep-alive connection each,
  for pushes, pulls and HEADs, whose every answer is checked (status, and for
  pulls the sha256 of the bytes). Each client is a forked process, so eight
  clients are not held back by one interpreter lock. All clients connect
  first and are then released together; the phase lasts from the earliest
  start to the latest finish.
- wrk, for the GET phases that need thousands of requests a second and
  latency percentiles. wrk cannot read an answer to HEAD that carries a
  Content-Length (it waits for a body), so HEAD stays in Python.

Every load is bounded: a fixed count of operations, or a fixed duration for
wrk, and a deadline after which the phase fails.

Against a server with authentication on (quaylock with ``--defences``),
every client authenticates as a production client does: it fetches a bearer
token for the scopes its phase needs (the phase's repository with
``pull,push,delete``; ``registry:catalog:*`` for the catalog) from
``/v2/token`` with Basic credentials, untimed, and sends it with every
request. Each Python client process fetches its own; wrk gets one token per
run, as a ``-H`` header on every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import subprocess
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from client import Connection, upload_target, with_digest
from servers import Server

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCTET = {"Content-Type": "application/octet-stream"}

# Seconds one socket operation may take, and one client phase in all.
SOCKET_TIMEOUT = 120.0
PHASE_TIMEOUT = 900.0
WRK_SCRIPT = Path(__file__).with_name("wrk_report.lua")
# wrk threads: one per core is wrk's own advice; this box shares its cores
# with the server, so never more than two.
WRK_THREADS = 2

REPO_SMALL_ONE = "bench/small-one"
REPO_SMALL_EIGHT = "bench/small-eight"
REPO_LARGE = "bench/large"
REPO_HUGE = "bench/huge"
REPO_MANIFESTS = "bench/manifests"
CATALOG_SCOPE = "registry:catalog:*"


def repository_scopes(*repositories: str) -> tuple[str, ...]:
    """Token scopes for full use of `repositories`."""
    return tuple(f"repository:{name}:pull,push,delete" for name in repositories)


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; `QUICK` is the smoke test's."""

    small_blobs: int = 200
    small_bytes: int = 4 * KIB
    large_blobs: int = 3
    large_bytes: int = 256 * MIB
    huge_bytes: int = GIB
    chunk_bytes: int = 8 * MIB
    manifests: int = 1000
    heads: int = 20_000
    wrk_seconds: int = 5
    get_connections: tuple[int, ...] = (1, 16, 64)
    list_connections: int = 8


QUICK = Sizes(
    small_blobs=20,
    large_bytes=4 * MIB,
    huge_bytes=8 * MIB,
    chunk_bytes=1 * MIB,
    manifests=50,
    heads=400,
    wrk_seconds=1,
)


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    path: Path | None = None
    data: bytes = b""


@dataclass
class Fixture:
    """Content generated once and pushed to both servers in every round
    (each round starts from empty storage, so nothing is deduplicated)."""

    small_one: list[Blob]
    small_eight: list[Blob]
    large: list[Blob]
    huge: Blob
    config: Blob
    layer: Blob
    # (tag, manifest body); the bodies differ by one annotation.
    manifests: list[tuple[str, bytes]]


def make_fixture(sizes: Sizes, folder: Path) -> Fixture:
    """Write the large blobs to `folder` and build the small ones in memory."""
    folder.mkdir(parents=True, exist_ok=True)

    def small(count: int) -> list[Blob]:
        return [_in_memory(os.urandom(sizes.small_bytes)) for _ in range(count)]

    large = [
        _random_file(folder / f"large-{i}", sizes.large_bytes)
        for i in range(sizes.large_blobs)
    ]
    huge = _random_file(folder / "huge", sizes.huge_bytes)
    config = _in_memory(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ).encode()
    )
    layer = _in_memory(os.urandom(sizes.small_bytes))
    manifests = []
    for i in range(sizes.manifests):
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config.digest,
                "size": config.size,
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}
            ],
            "annotations": {"org.example.bench.index": str(i)},
        }
        manifests.append((f"tag-{i:05d}", json.dumps(body, indent=2).encode()))
    return Fixture(
        small(sizes.small_blobs),
        small(sizes.small_blobs),
        large,
        huge,
        config,
        layer,
        manifests,
    )


def _in_memory(data: bytes) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data), data=data)


def _random_file(path: Path, size: int) -> Blob:
    hasher = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(8 * MIB, left))
            hasher.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return Blob("sha256:" + hasher.hexdigest(), size, path=path)


# Client processes


@dataclass
class Outcome:
    """What a timed step did: `units` of work (blobs, bytes, requests) in
    `wall_s` seconds, plus latency figures for wrk runs."""

    units: float
    wall_s: float
    extra: dict = field(default_factory=dict)


Job = Callable[[Connection], float]
# A factory of context managers that measure the server while a load runs.
Watch = Callable[[], AbstractContextManager]


def run_clients(
    server: Server, jobs: list[Job], watch: Watch, scopes: tuple[str, ...] = ()
) -> Outcome:
    """Run each job in a process of its own, on a connection of its own;
    release them together and return the work done over the elapsed time.

    Each client first fetches its bearer token for `scopes` (when the server
    has authentication on) and connects. `watch` is entered once every
    client is ready and left when all have finished, so it sees the load and
    not the setup (a login hashes a password: tenths of a second of server
    CPU that a long-lived client pays once).

    Raises:
        RuntimeError: a client failed (its traceback is in the message) or
            the phase passed `PHASE_TIMEOUT`.
    """
    ctx = multiprocessing.get_context("fork")
    # Clients wait at `ready` once set up, then at `go` once watched.
    ready = ctx.Barrier(len(jobs) + 1)
    go = ctx.Barrier(len(jobs) + 1)
    processes, pipes = [], []
    for job in jobs:
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_client_main, args=(job, server, scopes, ready, go, sender)
        )
        process.start()
        sender.close()
        processes.append(process)
        pipes.append(receiver)

    deadline = time.monotonic() + PHASE_TIMEOUT
    results = []
    try:
        ready.wait(timeout=60)
        with watch():
            go.wait(timeout=60)
            for pipe in pipes:
                if not pipe.poll(max(deadline - time.monotonic(), 0)):
                    raise RuntimeError(f"a client did not finish in {PHASE_TIMEOUT} s")
                results.append(pipe.recv())
    except BaseException as exc:
        for process in processes:
            if process.is_alive():
                process.terminate()
        # A client that failed to start breaks the barrier; say why it did.
        reasons = [p.recv()[1] for p in pipes if p.poll(0)]
        if reasons:
            raise RuntimeError(f"{server.name}: client failed:\n{reasons[0]}") from exc
        raise
    finally:
        for process in processes:
            process.join(30)

    errors = [r[1] for r in results if r[0] == "error"]
    if errors:
        raise RuntimeError(f"{server.name}: client failed:\n{errors[0]}")
    started = min(r[1] for r in results)
    ended = max(r[2] for r in results)
    return Outcome(sum(r[3] for r in results), ended - started)


def _client_main(
    job: Job, server: Server, scopes: tuple[str, ...], ready, go, sender
) -> None:
    conn = None
    try:
        conn = Connection(
            server.host, server.port, SOCKET_TIMEOUT, server.authorization(scopes)
        )
        conn.connect()
        ready.wait(timeout=60)
        go.wait(timeout=60)
        started = time.monotonic()
        units = job(conn)
        sender.send(("ok", started, time.monotonic(), units))
    except BaseException:
        sender.send(("error", traceback.format_exc()))
        # Wake the others (and the harness) now rather than at the timeout.
        ready.abort()
        go.abort()
    finally:
        if conn is not None:
            conn.close()


def push_small_job(repository: str, blobs: list[Blob]) -> Job:
    """POST for a session, then PUT ?digest= with the bytes: what clients do
    for small blobs (Distribution 2.8 has no one-request POST ?digest=)."""

    def job(conn: Connection) -> float:
        for blob in blobs:
            started = conn.request(
                "POST", f"/v2/{repository}/blobs/uploads/", expect=202
            )
            target = with_digest(
                upload_target(started.headers["location"]), blob.digest
            )
            conn.request("PUT", target, OCTET, blob.data, expect=201)
        return len(blobs)

    return job


def push_chunked_job(repository: str, blobs: list[Blob], chunk_bytes: int) -> Job:
    """A chunked upload per blob: PATCH with Content-Range per chunk, read
    from the blob's file into one reused buffer, then PUT ?digest=."""

    def job(conn: Connection) -> float:
        buffer = bytearray(chunk_bytes)
        for blob in blobs:
            answer = conn.request(
                "POST", f"/v2/{repository}/blobs/uploads/", expect=202
            )
            target = upload_target(answer.headers["location"])
            with open(blob.path, "rb", buffering=0) as f:
                offset = 0
                while offset < blob.size:
                    length = min(chunk_bytes, blob.size - offset)
                    headers = {
                        **OCTET,
                        "Content-Range": f"{offset}-{offset + length - 1}",
                    }
                    answer = conn.send_file(
                        "PATCH", target, headers, f, length, buffer, expect=202
                    )
                    target = upload_target(answer.headers["location"])
                    offset += length
            conn.request("PUT", with_digest(target, blob.digest), expect=201)
        return sum(blob.size for blob in blobs)

    return job


def push_manifests_job(repository: str, manifests: list[tuple[str, bytes]]) -> Job:
    def job(conn: Connection) -> float:
        headers = {"Content-Type": OCI_MANIFEST}
        for tag, body in manifests:
            target = f"/v2/{repository}/manifests/{tag}"
            conn.request("PUT", target, headers, body, expect=201)
        return len(manifests)

    return job


def pull_job(repository: str, blobs: list[Blob], chunk_bytes: int) -> Job:
    """GET each blob, hashing it as it arrives; fail on a wrong byte."""

    def job(conn: Connection) -> float:
        buffer = bytearray(chunk_bytes)
        total = 0
        for blob in blobs:
            hasher = hashlib.sha256()
            target = f"/v2/{repository}/blobs/{blob.digest}"
            size = conn.download(target, {}, buffer, hasher.update)
            digest = "sha256:" + hasher.hexdigest()
            if size != blob.size or digest != blob.digest:
                raise ValueError(f"pulled {size} bytes with {digest}, expected {blob}")
            total += size
        return total

    return job


def head_job(repository: str, blobs: list[Blob], count: int, first: int) -> Job:
    """`count` HEADs of the blobs in turn, starting at blob `first`."""

    def job(conn: Connection) -> float:
        requests = [
            conn.head_bytes("HEAD", f"/v2/{repository}/blobs/{blob.digest}", {}, None)
            for blob in blobs
        ]
        for i in range(first, first + count):
            conn.send_prepared(requests[i % len(requests)], "HEAD", 200)
        return count

    return job


def split(items: list, parts: int) -> list[list]:
    """Deal `items` round-robin into `parts` lists (none empty)."""
    return [items[i::parts] for i in range(min(parts, len(items)))]


# wrk


def run_wrk(
    server: Server,
    watch: Watch,
    target: str,
    connections: int,
    seconds: int,
    headers=(),
    scopes: tuple[str, ...] = (),
) -> Outcome:
    """Run wrk for `seconds` against `target`, inside `watch`; return its
    Outcome. With authentication on, a token for `scopes` is fetched first
    (untimed) and sent with every request.

    Raises:
        RuntimeError: wrk failed, or any answer was an error or timed out.
    """
    command = [
        "wrk",
        f"-t{min(connections, WRK_THREADS)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout", "10s",
        "-s", str(WRK_SCRIPT),
    ]  # fmt: skip
    authorization = server.authorization(scopes)
    if authorization is not None:
        headers = (*headers, f"Authorization: {authorization}")
    for header in headers:
        command += ["-H", header]
    command.append(f"http://{server.host}:{server.port}{target}")
    with watch():
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    line = next(
        (x for x in done.stdout.splitlines() if x.startswith("wrk-result ")), None
    )
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(line[len("wrk-result ") :])
    errors = {k: v for k, v in result["errors"].items() if v}
    if errors or not result["requests"]:
        raise RuntimeError(f"{server.name}: wrk on {target} had errors: {result}")
    return Outcome(
        result["requests"],
        result["duration_us"] / 1e6,
        {
            "p50_ms": result["p50_us"] / 1000,
            "p99_ms": result["p99_us"] / 1000,
            "bytes": result["bytes"],
        },
    )


# Phases


@dataclass
class Phase:
    """One workload. `unit` names what `Outcome.units` counts: "blob",
    "manifest", "request" or "byte"."""

    id: str
    label: str
    unit: str
    run: Callable[[Server, Watch], Outcome]
    prepare: Callable[[Server], None] | None = None
    latency: bool = False


def phases(sizes: Sizes, fixture: Fixture) -> list[Phase]:
    """The workloads in the order they run; later ones read what earlier
    ones pushed."""
    chunk = sizes.chunk_bytes
    accept = f"Accept: {OCI_MANIFEST}"
    manifest_target = f"/v2/{REPO_MANIFESTS}/manifests/{fixture.manifests[0][0]}"
    tags_target = f"/v2/{REPO_MANIFESTS}/tags/list?n={sizes.manifests}"
    heads_each = sizes.heads // 8
    # The token scopes of each phase's clients.
    small_one = repository_scopes(REPO_SMALL_ONE)
    small_eight = repository_scopes(REPO_SMALL_EIGHT)
    large = repository_scopes(REPO_LARGE)
    huge = repository_scopes(REPO_HUGE)
    manifests = repository_scopes(REPO_MANIFESTS)
    catalog = (CATALOG_SCOPE,)

    def prepare_manifests(server: Server) -> None:
        with _connection(server, manifests) as conn:
            push_small_job(REPO_MANIFESTS, [fixture.config, fixture.layer])(conn)

    def prepare_get(server: Server) -> None:
        with _connection(server, manifests) as conn:
            answer = conn.request("GET", manifest_target, {"Accept": OCI_MANIFEST})
        if answer.body != fixture.manifests[0][1]:
            raise RuntimeError(f"{server.name}: manifest GET returned other bytes")

    def prepare_tags(server: Server) -> None:
        with _connection(server, manifests) as conn:
            tags = json.loads(conn.request("GET", tags_target).body)["tags"]
        if len(tags) != sizes.manifests:
            raise RuntimeError(f"{server.name}: tags list has {len(tags)} tags")

    def prepare_catalog(server: Server) -> None:
        with _connection(server, catalog) as conn:
            names = json.loads(conn.request("GET", "/v2/_catalog").body)["repositories"]
        if REPO_MANIFESTS not in names:
            raise RuntimeError(
                f"{server.name}: catalog lacks {REPO_MANIFESTS}: {names}"
            )

    found = [
        Phase(
            "push_small_1",
            f"push {sizes.small_blobs} x {_size(sizes.small_bytes)} blobs, 1 client",
            "blob",
            _clients([push_small_job(REPO_SMALL_ONE, fixture.small_one)], small_one),
        ),
        Phase(
            "push_small_8",
            f"push {sizes.small_blobs} x {_size(sizes.small_bytes)} blobs, 8 clients",
            "blob",
            _clients(
                [
                    push_small_job(REPO_SMALL_EIGHT, b)
                    for b in split(fixture.small_eight, 8)
                ],
                small_eight,
            ),
        ),
        Phase(
            "push_large",
            f"push {sizes.large_blobs} x {_size(sizes.large_bytes)} blobs "
            f"in {_size(chunk)} chunks, 1 client",
            "byte",
            _clients([push_chunked_job(REPO_LARGE, fixture.large, chunk)], large),
        ),
        Phase(
            "push_huge",
            f"push 1 x {_size(sizes.huge_bytes)} blob in {_size(chunk)} chunks, "
            "1 client",
            "byte",
            _clients([push_chunked_job(REPO_HUGE, [fixture.huge], chunk)], huge),
        ),
        Phase(
            "push_manifests",
            f"push {sizes.manifests} tagged manifests, 8 clients",
            "manifest",
            _clients(
                [
                    push_manifests_job(REPO_MANIFESTS, m)
                    for m in split(fixture.manifests, 8)
                ],
                manifests,
            ),
            prepare=prepare_manifests,
        ),
        Phase(
            "pull_large_1",
            f"pull {sizes.large_blobs} x {_size(sizes.large_bytes)}, 1 client, "
            "sha256 checked",
            "byte",
            _clients([pull_job(REPO_LARGE, fixture.large, chunk)], large),
        ),
        Phase(
            "pull_large_4",
            f"pull {sizes.large_blobs} x {_size(sizes.large_bytes)}, 4 clients "
            "each, sha256 checked",
            "byte",
            _clients(
                [
                    pull_job(REPO_LARGE, _rotated(fixture.large, i), chunk)
                    for i in range(4)
                ],
                large,
            ),
        ),
        Phase(
            "head_blobs",
            f"HEAD blob, {8 * heads_each} requests over {sizes.small_blobs} blobs, "
            "8 clients",
            "request",
            _clients(
                [
                    head_job(REPO_SMALL_EIGHT, fixture.small_eight, heads_each, i * 17)
                    for i in range(8)
                ],
                small_eight,
            ),
        ),
    ]
    for connections in sizes.get_connections:
        found.append(
            Phase(
                f"get_manifest_c{connections}",
                f"GET manifest by tag, {connections} connection(s) (wrk)",
                "request",
                _wrk(
                    manifest_target,
                    connections,
                    sizes.wrk_seconds,
                    manifests,
                    (accept,),
                ),
                prepare=prepare_get,
                latency=True,
            )
        )
    found += [
        Phase(
            "tags_list",
            f"GET tags list of {sizes.manifests} tags, "
            f"{sizes.list_connections} connections (wrk)",
            "request",
            _wrk(tags_target, sizes.list_connections, sizes.wrk_seconds, manifests),
            prepare=prepare_tags,
            latency=True,
        ),
        Phase(
            "catalog",
            f"GET catalog, {sizes.list_connections} connections (wrk)",
            "request",
            _wrk("/v2/_catalog", sizes.list_connections, sizes.wrk_seconds, catalog),
            prepare=prepare_catalog,
            latency=True,
        ),
    ]
    return found


def _clients(jobs: list[Job], scopes: tuple[str, ...]):
    return lambda server, watch: run_clients(server, jobs, watch, scopes)


def _wrk(target: str, connections: int, seconds: int, scopes, headers=()):
    return lambda s, w: run_wrk(s, w, target, connections, seconds, headers, scopes)


def _rotated(items: list, by: int) -> list:
    by %= len(items)
    return items[by:] + items[:by]


def _size(n: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _connection(
    server: Server, scopes: tuple[str, ...]
) -> contextlib.closing[Connection]:
    """A connection for untimed steps, with a token for `scopes` when the
    server wants one, closed on exit."""
    return contextlib.closing(
        Connection(
            server.host, server.port, SOCKET_TIMEOUT, server.authorization(scopes)
        )
    )
