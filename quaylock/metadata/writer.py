"""One writer thread per process that commits SQLite writes in groups.

SQLite takes one writer at a time, and each durable commit costs an fsync.
Writes that queue up while a commit is under way are applied together in
the next transaction, each inside its own SAVEPOINT so that a write that
fails rolls back alone, and one COMMIT (one fsync) then covers them all.

Invariants:

- A caller's future resolves only after the COMMIT that holds its write,
  so no answer runs ahead of what is stored.
- A group is durable (``synchronous=FULL``) if any write in it asks to be.
  Writes that may be lost in a power cut without harm (upload-session
  bookkeeping, blob links that a later durable manifest commit flushes
  anyway, since the WAL is written in order) skip that fsync on their own.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable

from quaylock.errors import InsufficientStorage, Unavailable

# Writes applied in one transaction at the most.
MAX_GROUP = 64


class GroupWriter:
    """Runs write functions on a dedicated connection, in groups.

    Args:
        connect: opens the connection the thread writes with.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]):
        self._connect = connect
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="quaylock-metadata", daemon=True
        )
        self._thread.start()

    async def submit(self, fn: Callable[[sqlite3.Connection], object], durable: bool):
        """Apply `fn(connection)` in a transaction; return what it returns.

        Raises:
            Whatever `fn` raised (its writes are rolled back), or Unavailable
            when the database could not be written at all.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((fn, durable, loop, future))
        return await future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        conn = self._connect()
        synchronous = None
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            group = [item]
            while len(group) < MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                group.append(item)

            wanted = "FULL" if any(durable for _, durable, _, _ in group) else "NORMAL"
            if wanted != synchronous:
                conn.execute(f"PRAGMA synchronous={wanted}")
                synchronous = wanted
            outcomes = _apply(conn, [fn for fn, _, _, _ in group])
            for (_, _, loop, future), outcome in zip(group, outcomes, strict=True):
                try:
                    loop.call_soon_threadsafe(_settle, future, outcome)
                except RuntimeError:
                    pass  # the loop is closed: nobody waits for this answer
        conn.close()


def _apply(conn: sqlite3.Connection, functions: list) -> list[tuple[bool, object]]:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        error = Unavailable(f"metadata store is busy: {exc}")
        return [(False, error)] * len(functions)
    outcomes: list[tuple[bool, object]] = []
    try:
        for fn in functions:
            conn.execute("SAVEPOINT write")
            try:
                outcomes.append((True, fn(conn)))
            except Exception as exc:
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back itself (a
                    # full disk does): the group fails as one.
                    raise
                conn.execute("ROLLBACK TO write")
                outcomes.append((False, exc))
            conn.execute("RELEASE write")
        conn.execute("COMMIT")
    except Exception as exc:  # noqa: BLE001 - answered to every caller
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [(False, _failed(exc))] * len(functions)
    return outcomes


def _failed(exc: Exception) -> Exception:
    """What callers of a group that could not commit are told."""
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == (
        sqlite3.SQLITE_FULL
    ):
        error = InsufficientStorage(
            "the metadata database's disk is full; writes resume when space "
            "is freed, pulls go on"
        )
        error.headers["Retry-After"] = "60"
        return error
    if isinstance(exc, sqlite3.Error):
        return Unavailable(f"metadata store could not commit: {exc}")
    return exc


def _settle(future: asyncio.Future, outcome: tuple[bool, object]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
