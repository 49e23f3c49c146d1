"""SQLite storage backend (aiosqlite): generic kv/archive tables, schema migrations, group commit.

Theory of operation
-------------------
One `SqliteStorage` owns ONE aiosqlite connection, i.e. one sqlite3 connection driven by
one worker thread that runs the calls submitted to it in order. Every SQL access is a plain
synchronous function handed to that thread as one call (`SqliteStorage._run`):

- **Reads** are one call each, in autocommit mode, so they see committed data only.
- **Writes** are queued (`_pending`). A single writer task (started on demand, ending when the
  queue is empty) takes up to `MAX_BATCH` queued writes and runs them in ONE call:
  ``BEGIN IMMEDIATE``, every write, ``COMMIT``; then it resolves each caller's future. So
  concurrent ``await kv.set(...)`` calls share one commit (group commit, DESIGN §5). Since the
  whole transaction is a single call on the worker thread, no read can ever run inside it
  and see uncommitted rows.
- If a write fails, the transaction is rolled back and the batch is retried one write per
  transaction, so one bad write fails only its own caller. If BEGIN or COMMIT fails (the
  database stayed locked past the busy timeout, disk full, I/O error), every write of the
  batch fails with that error.

- Writes may also be issued without awaiting them (`SqliteStorage._write_nowait`, used by
  `ArchiveStore.append_nowait`): the write is queued and counted at once, the caller gets the
  future. Either way writes commit in the order they were issued.

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL`` by default. A commit appends to
the WAL file and returns without fsync; WAL is fsynced at checkpoints. This is durable against
a crash of the *process* (the committed pages are in the OS page cache and reach the file),
and the database can never be corrupted; only an OS crash or power loss can roll back the
last transactions. ``SqliteStorage(path, fsync=True)`` (``open_storage(..., fsync=True)``)
uses ``synchronous=FULL`` instead: every group commit fsyncs the WAL, so a committed write
also survives power loss, at the cost of one fsync per commit (shared by the whole batch).
Group commit keeps the write rate high either way.

Several processes may use the same file (``xmppd adduser`` while the server runs): WAL lets
readers proceed during a write, ``BEGIN IMMEDIATE`` takes the write lock up front (a deferred
transaction upgrading to a write can fail with SQLITE_BUSY without waiting), and
``busy_timeout`` makes a writer wait up to 5 s for the lock instead of failing.

Schema: the ``schema_version`` table records every applied migration; `open` applies the
missing ones from `MIGRATIONS`, in order, in one transaction, and refuses a database whose
version is newer than the code knows.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import aiosqlite

from xmppd.storage import (
    ArchiveItem,
    ArchiveStore,
    JsonValue,
    KeyValueStore,
    StorageError,
    archive_key_number,
    check_limit,
    decode_json,
    encode_json,
    id_set,
)

__all__ = ["MAX_BATCH", "MIGRATIONS", "Migration", "SqliteStorage"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

BUSY_TIMEOUT_MS = 5000
# Writes per transaction: bounds how long one commit holds the write lock. Big batches are
# what makes archiving cheap: a batch dirties each index page it touches once, however many
# rows land on it (4,000 archive rows for 400 users: about 15 µs a row, 1,000: about 25).
MAX_BATCH = 4000
# Pages of WAL between checkpoints. SQLite's default (1,000 pages) makes a busy archive
# checkpoint every few hundred commits; 10,000 cuts the cost of an archived row by about a
# third. (A bigger page cache helped less, and its memory stays with the process.)
WAL_AUTOCHECKPOINT = 10000


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``statements`` take the schema from ``version - 1`` to ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]


# Append only; never edit a released migration. Each runs inside the open() transaction
# (SQLite DDL is transactional), so a failing migration leaves the database untouched.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "key-value and archive tables",
        (
            """CREATE TABLE kv (
                host TEXT NOT NULL,
                store TEXT NOT NULL,
                user TEXT NOT NULL,
                key TEXT NOT NULL,
                value TEXT NOT NULL,  -- JSON text
                PRIMARY KEY (host, store, user, key)
            )""",
            # AUTOINCREMENT: ids (the archive keys) are never reused, even after the newest
            # entry is removed, so a key held by a client never names a different entry.
            """CREATE TABLE archive (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                host TEXT NOT NULL,
                store TEXT NOT NULL,
                user TEXT NOT NULL,
                when_ REAL NOT NULL,
                with_jid TEXT,
                value TEXT NOT NULL
            )""",
            "CREATE INDEX archive_by_user ON archive (host, store, user, id)",
            "CREATE INDEX archive_by_with ON archive (host, store, user, with_jid, id)",
        ),
    ),
    Migration(
        2,
        "archive external ids; expiry by time",
        (
            "ALTER TABLE archive ADD COLUMN ext_id TEXT",
            "CREATE INDEX archive_by_ext_id ON archive (host, store, user, ext_id)",
            "CREATE INDEX archive_by_when ON archive (host, store, when_)",
        ),
    ),
)

_CREATE_SCHEMA_VERSION = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied REAL NOT NULL,
    description TEXT NOT NULL
)"""


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(slots=True)
class _Failure:
    """Marks a write that raised, in a batch's list of outcomes."""

    error: Exception


_Op = Callable[[sqlite3.Connection], object]


@dataclass(slots=True)
class _Write:
    op: _Op
    future: asyncio.Future[object]


class SqliteStorage:
    """The SQLite `xmppd.storage.Storage` (see the module docstring for how it works).

    Attributes:
        commits: number of write transactions committed so far (for tests and benchmarks).
    """

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        """Create an unopened storage on the database file ``path``.

        Args:
            path: the database file.
            fsync: fsync every commit (``synchronous=FULL``): durable against power loss.
        """
        self.path = path
        self.fsync = fsync
        self.commits = 0
        self._state = _State.NEW
        self._db: aiosqlite.Connection | None = None
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Write] = []
        self._writer: asyncio.Task[None] | None = None
        # Writes issued and writes finished (committed or failed), and barrier() waiters by
        # the issued count they wait for: batches finish in order, so a count is enough.
        self._issued = 0
        self._finished = 0
        self._failures = 0  # writes that failed so far (a barrier over one of them fails)
        # In issue order (marks never decrease), so releasing pops from the left.
        self._barriers: deque[tuple[int, int, asyncio.Future[None]]] = deque()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the database file, set the connection up and apply missing migrations.

        Raises:
            StorageError: the storage was opened before, the parent directory does not exist,
                the file is not a usable database, or its schema is newer than this code.
        """
        if self._state is not _State.NEW:
            raise StorageError(f"sqlite storage {self.path} cannot be opened: it is {self._state}")
        await asyncio.to_thread(_create_private_file, self.path)
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open sqlite database {self.path}: {exc}") from exc
        self._db = db
        # aiosqlite exposes no public way to run a function on its worker thread; see _run.
        self._conn = db._conn
        self._state = _State.OPEN
        try:
            version, journal_mode = await self._run(
                functools.partial(_prepare, synchronous="FULL" if self.fsync else "NORMAL")
            )
            await self._run(_yield_to_the_event_loop)
        except BaseException:
            self._state = _State.CLOSED
            await self._close_connection()
            raise
        if journal_mode != "wal":
            # E.g. a file system without shared memory support: still correct, but readers
            # and the writer block each other.
            logger.warning(
                "sqlite storage %s is in journal mode %s, not WAL", self.path, journal_mode
            )
        logger.info("opened sqlite storage %s (schema version %d)", self.path, version)

    async def close(self) -> None:
        """Commit pending writes and close the connection; later calls raise `StorageError`."""
        if self._state is _State.NEW:
            self._state = _State.CLOSED
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSING  # no new work is accepted from here on
        await self._wait_for_writer()
        self._state = _State.CLOSED
        await self._close_connection()
        logger.info("closed sqlite storage %s", self.path)

    async def flush(self) -> None:
        """Wait until every write issued so far is committed (or has failed).

        Raises:
            StorageError: the storage is not open.
        """
        self._check_open()
        await self._wait_for_writer()

    def barrier(self) -> asyncio.Future[None] | None:
        """A future done once every write issued so far has finished; None if none is pending.

        It fails with `StorageError` when a write it covers failed (or may have: a batch
        that also held writes issued after it counts).
        """
        if self._finished >= self._issued:
            return None
        barriers = self._barriers
        if barriers:
            mark, failures, future = barriers[-1]
            if mark == self._issued and failures == self._failures and not future.done():
                return future  # nothing issued since the last one: the same wait
        future = asyncio.get_running_loop().create_future()
        barriers.append((self._issued, self._failures, future))
        return future

    def _release_barriers(self) -> None:
        barriers = self._barriers
        while barriers and barriers[0][0] <= self._finished:
            _mark, failures, future = barriers.popleft()
            if future.done():
                continue
            if self._failures > failures:
                future.set_exception(StorageError(f"sqlite storage {self.path}: a write failed"))
            else:
                future.set_result(None)

    def keyvalue(self, host: str, store: str) -> KeyValueStore:
        """Return the key-value store named ``store`` of ``host``."""
        self._check_open()
        return _SqliteKeyValue(self, host, store)

    def archive(self, host: str, store: str) -> ArchiveStore:
        """Return the archive store named ``store`` of ``host``."""
        self._check_open()
        return _SqliteArchive(self, host, store)

    async def delete_user_data(self, host: str, user: str) -> int:
        """Remove ``user``'s entries of every store of ``host``, in one transaction."""
        self._check_open()
        params = (host, user)

        def delete(conn: sqlite3.Connection) -> int:
            kv = conn.execute("DELETE FROM kv WHERE host = ? AND user = ?", params).rowcount
            archive = conn.execute("DELETE FROM archive WHERE host = ? AND user = ?", params)
            return kv + archive.rowcount

        return await self._write(delete)

    # -- plumbing used by the store classes ----------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run the read-only ``fn(connection)`` on the worker thread, in autocommit mode."""
        self._check_open()
        return await self._run(fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Queue ``fn(connection)`` for the next group commit; return its result once committed.

        Raises:
            StorageError: the storage is not open, ``fn`` failed, or the commit failed.
        """
        # If the caller is cancelled, the write still happens (it was issued); only the
        # awaiting stops, and the writer skips resolving the cancelled future.
        return await self._write_nowait(fn)

    def _write_nowait(self, fn: Callable[[sqlite3.Connection], _T]) -> asyncio.Future[_T]:
        """Queue ``fn(connection)`` for the next group commit now; the future gets its result.

        Raises:
            StorageError: the storage is not open.
        """
        self._check_open()
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(fn, future))
        self._issued += 1
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name=f"sqlite writer {self.path}")
        return cast("asyncio.Future[_T]", future)  # the future holds what fn returned

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise StorageError(f"sqlite storage {self.path} is {self._state.value}, not open")

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(connection)`` as one call on the connection's worker thread.

        aiosqlite offers only statement-level calls, each a separate round trip to its
        thread; a group commit must run BEGIN, every write and COMMIT without a read slipping
        in between, so it goes through aiosqlite's internal call queue (``_execute``, present
        in every release we support) as one function. All sqlite3 errors become `StorageError`.
        """
        db, conn = self._db, self._conn
        if db is None or conn is None:
            raise StorageError(f"sqlite storage {self.path} is not open")
        try:
            # aiosqlite leaves _execute unannotated; its result is what fn returned.
            result = await db._execute(fn, conn)  # type: ignore[no-untyped-call]
        except StorageError:
            raise
        except Exception as exc:  # sqlite3.Error, or binding errors such as UnicodeEncodeError
            raise StorageError(f"sqlite storage {self.path}: {exc}") from exc
        return cast(_T, result)

    async def _drain(self) -> None:
        """The writer task: commit queued writes batch by batch until the queue is empty."""
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                ops = [write.op for write in batch]
                try:
                    outcomes, commits = await self._run(functools.partial(_run_batch, ops=ops))
                except StorageError as exc:
                    outcomes, commits = [_Failure(exc)] * len(batch), 0
                except BaseException:
                    # Cancelled (event loop shutting down): the outcome of the batch is
                    # unknown, and nothing will drain the queue any more.
                    for write in (*batch, *self._pending):
                        if not write.future.done():
                            write.future.set_exception(
                                StorageError(f"sqlite storage {self.path}: writer stopped")
                            )
                    self._pending.clear()
                    self._failures += self._issued - self._finished
                    self._finished = self._issued
                    self._release_barriers()
                    raise
                # aiosqlite's worker keeps its last call (and so this list) referenced until
                # the next one: drop the ops, so an idle server keeps none of its last batch.
                ops.clear()
                self.commits += commits
                for write, outcome in zip(batch, outcomes, strict=True):
                    if write.future.done():  # the caller was cancelled
                        continue
                    if isinstance(outcome, _Failure):
                        write.future.set_exception(self._storage_error(outcome.error))
                    else:
                        write.future.set_result(outcome)
                self._failures += sum(isinstance(outcome, _Failure) for outcome in outcomes)
                self._finished += len(batch)
                self._release_barriers()
        finally:
            self._writer = None

    def _storage_error(self, error: Exception) -> StorageError:
        if isinstance(error, StorageError):
            return error
        wrapped = StorageError(f"sqlite storage {self.path}: write failed: {error}")
        wrapped.__cause__ = error
        return wrapped

    async def _wait_for_writer(self) -> None:
        writer = self._writer
        if writer is not None:
            # The writer drains everything queued before it finishes; shield it so a
            # cancelled flush() does not cancel the commits of other callers.
            await asyncio.shield(writer)

    async def _close_connection(self) -> None:
        db, self._db, self._conn = self._db, None, None
        if db is None:
            return
        try:
            await db.close()
        except (sqlite3.Error, ValueError) as exc:
            raise StorageError(f"closing sqlite storage {self.path} failed: {exc}") from exc


# -- functions run on a worker thread ------------------------------------------


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only (data_dir may be shared)."""
    if not path.parent.is_dir():
        raise StorageError(f"cannot open sqlite database {path}: {path.parent} is not a directory")
    try:
        # SQLite creates the -wal and -shm files with the database file's permissions.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot open sqlite database {path}: {exc}") from exc
    os.close(fd)


WORKER_NICE = 10  # the worker thread's niceness, relative to the event loop's thread


def _yield_to_the_event_loop(conn: sqlite3.Connection) -> None:
    """Lower this (worker) thread's CPU priority: on a busy single core, a big group commit
    then fills the loop's idle time instead of delaying deliveries by its whole length.
    Commits take longer under load; only acks wait for them, not messages."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
    except (OSError, AttributeError):  # not Linux, or not permitted: equal priority then
        logger.debug("could not lower the sqlite worker's priority", exc_info=True)


def _prepare(conn: sqlite3.Connection, synchronous: str = "NORMAL") -> tuple[int, str]:
    """Configure the connection and migrate the schema; return schema version and journal mode."""
    # busy_timeout first: switching to WAL and migrating need locks another process may hold.
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    # WAL + NORMAL: a commit survives a process crash; FULL: power loss too (module docstring).
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
    latest = MIGRATIONS[-1].version if MIGRATIONS else 0
    conn.execute("BEGIN IMMEDIATE")  # one migrator at a time across processes
    try:
        conn.execute(_CREATE_SCHEMA_VERSION)
        (current,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        if current > latest:
            raise StorageError(
                f"database schema version {current} is newer than this xmppd supports "
                f"(version {latest}); upgrade xmppd, or restore a backup made for this version"
            )
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            logger.info(
                "migrating sqlite schema to version %d: %s",
                migration.version,
                migration.description,
            )
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied, description) VALUES (?, ?, ?)",
                (migration.version, time.time(), migration.description),
            )
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return max(current, latest), str(mode).lower()


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # SQLite may already have rolled back on its own (e.g. SQLITE_FULL); the
            # connection is usable again either way.
            logger.debug("rollback failed", exc_info=True)


def _run_batch(conn: sqlite3.Connection, ops: Sequence[_Op]) -> tuple[list[object], int]:
    """Run ``ops`` in one transaction; return each op's result (or `_Failure`) and commits.

    If an op fails, roll back and run each op in a transaction of its own, so only the bad
    op fails. If BEGIN or COMMIT fails, every op fails with that error.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return [_Failure(exc)] * len(ops), 0
    try:
        results = [op(conn) for op in ops]
    except Exception as exc:
        _rollback(conn)
        if len(ops) == 1:
            return [_Failure(exc)], 0
        logger.warning("a write failed in a batch of %d; retrying one by one", len(ops))
        return _run_one_by_one(conn, ops)
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        return [_Failure(exc)] * len(ops), 0
    return results, 1


def _run_one_by_one(conn: sqlite3.Connection, ops: Sequence[_Op]) -> tuple[list[object], int]:
    outcomes: list[object] = []
    commits = 0
    for index, op in enumerate(ops):
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            # Locked or broken database: waiting busy_timeout again per op would not help.
            outcomes.extend([_Failure(exc)] * (len(ops) - index))
            break
        try:
            result = op(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            outcomes.append(_Failure(exc))
        else:
            outcomes.append(result)
            commits += 1
    return outcomes, commits


# -- stores ------------------------------------------------------------------------------------


class _SqliteKeyValue:
    """`KeyValueStore` over the ``kv`` table."""

    __slots__ = ("_host", "_storage", "_store")

    def __init__(self, storage: SqliteStorage, host: str, store: str) -> None:
        self._storage = storage
        self._host = host
        self._store = store

    async def get(self, user: str, key: str) -> JsonValue | None:
        params = (self._host, self._store, user, key)

        def get(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT value FROM kv WHERE host = ? AND store = ? AND user = ? AND key = ?",
                params,
            ).fetchone()
            return None if row is None else cast(str, row[0])

        text = await self._storage._read(get)
        return None if text is None else decode_json(text)

    async def set(self, user: str, key: str, value: JsonValue) -> None:
        params = (self._host, self._store, user, key, encode_json(value))

        def set_(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO kv (host, store, user, key, value) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (host, store, user, key) DO UPDATE SET value = excluded.value",
                params,
            )

        await self._storage._write(set_)

    async def delete(self, user: str, key: str) -> bool:
        params = (self._host, self._store, user, key)

        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM kv WHERE host = ? AND store = ? AND user = ? AND key = ?", params
            )
            return cursor.rowcount > 0

        return await self._storage._write(delete)

    async def keys(self, user: str) -> list[str]:
        params = (self._host, self._store, user)

        def keys(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT key FROM kv WHERE host = ? AND store = ? AND user = ? ORDER BY key",
                params,
            ).fetchall()
            return [row[0] for row in rows]

        return await self._storage._read(keys)

    async def users(self) -> list[str]:
        params = (self._host, self._store)

        # BINARY collation orders UTF-8 bytes, which is code point order, as sorted() does.
        def users(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT DISTINCT user FROM kv WHERE host = ? AND store = ? ORDER BY user", params
            ).fetchall()
            return [row[0] for row in rows]

        return await self._storage._read(users)

    async def delete_user(self, user: str) -> int:
        params = (self._host, self._store, user)

        def delete_user(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM kv WHERE host = ? AND store = ? AND user = ?", params
            )
            return cursor.rowcount

        return await self._storage._write(delete_user)


_SELECT_ITEMS = "SELECT id, when_, with_jid, value, ext_id FROM archive"


def _item(row: tuple[int, float, str | None, str, str | None]) -> ArchiveItem:
    return ArchiveItem(key=str(row[0]), when=row[1], with_jid=row[2], value=row[3], id=row[4])


class _SqliteArchive:
    """`ArchiveStore` over the ``archive`` table; keys are the decimal row ids."""

    __slots__ = ("_host", "_storage", "_store")

    def __init__(self, storage: SqliteStorage, host: str, store: str) -> None:
        self._storage = storage
        self._host = host
        self._store = store

    async def append(
        self,
        user: str,
        value: str,
        *,
        with_jid: str | None = None,
        when: float | None = None,
        id: str | None = None,
    ) -> str:
        return await self.append_nowait(user, value, with_jid=with_jid, when=when, id=id)

    def append_nowait(
        self,
        user: str,
        value: str,
        *,
        with_jid: str | None = None,
        when: float | None = None,
        id: str | None = None,
    ) -> asyncio.Future[str]:
        stamp = time.time() if when is None else float(when)
        params = (self._host, self._store, user, stamp, with_jid, value, id)

        def append(conn: sqlite3.Connection) -> str:
            cursor = conn.execute(
                "INSERT INTO archive (host, store, user, when_, with_jid, value, ext_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                params,
            )
            return str(cursor.lastrowid)

        return self._storage._write_nowait(append)

    def _where(
        self,
        user: str,
        *,
        after: str | None,
        before: str | None,
        start: float | None,
        end: float | None,
        with_jid: str | None,
        ids: Sequence[str] | None,
    ) -> tuple[str, list[object]] | None:
        """The WHERE clause and its parameters; None when nothing can match."""
        wanted = id_set(ids)
        sql = ["WHERE host = ? AND store = ? AND user = ?"]
        params: list[object] = [self._host, self._store, user]
        if with_jid is not None:
            sql.append("AND with_jid = ?")
            params.append(with_jid)
        for key, operator in ((after, ">"), (before, "<")):
            if key is None:
                continue
            number = archive_key_number(key)
            if number is None:
                return None  # a key no store produced: nothing is after or before it
            sql.append(f"AND id {operator} ?")
            params.append(number)
        if start is not None:
            sql.append("AND when_ >= ?")
            params.append(start)
        if end is not None:
            sql.append("AND when_ <= ?")
            params.append(end)
        if wanted is not None:
            if not wanted:
                return None
            # json_each: one bound parameter, whatever the number of ids.
            sql.append("AND ext_id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(sorted(wanted)))
        return " ".join(sql), params

    async def items(
        self,
        user: str,
        *,
        after: str | None = None,
        before: str | None = None,
        start: float | None = None,
        end: float | None = None,
        with_jid: str | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[ArchiveItem]:
        check_limit(limit)
        where = self._where(
            user, after=after, before=before, start=start, end=end, with_jid=with_jid, ids=ids
        )
        if where is None:
            self._storage._check_open()
            return []
        clause, params = where
        parts = [_SELECT_ITEMS, clause, "ORDER BY id DESC" if reverse else "ORDER BY id"]
        if limit is not None:
            parts.append("LIMIT ?")
            params.append(limit)
        query = " ".join(parts)

        def items(conn: sqlite3.Connection) -> list[ArchiveItem]:
            return [_item(row) for row in conn.execute(query, params)]

        return await self._storage._read(items)

    async def count(
        self,
        user: str,
        *,
        after: str | None = None,
        before: str | None = None,
        start: float | None = None,
        end: float | None = None,
        with_jid: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> int:
        where = self._where(
            user, after=after, before=before, start=start, end=end, with_jid=with_jid, ids=ids
        )
        if where is None:
            self._storage._check_open()
            return 0
        clause, params = where
        query = " ".join(("SELECT COUNT(*) FROM archive", clause))

        def count(conn: sqlite3.Connection) -> int:
            (number,) = conn.execute(query, params).fetchone()
            return cast(int, number)

        return await self._storage._read(count)

    async def find(self, user: str, id: str) -> ArchiveItem | None:
        params = (self._host, self._store, user, id)

        def find(conn: sqlite3.Connection) -> ArchiveItem | None:
            row = conn.execute(
                _SELECT_ITEMS
                + " WHERE host = ? AND store = ? AND user = ? AND ext_id = ? ORDER BY id LIMIT 1",
                params,
            ).fetchone()
            return None if row is None else _item(row)

        return await self._storage._read(find)

    async def expire(self, before: float) -> int:
        params = (self._host, self._store, before)

        def expire(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM archive WHERE host = ? AND store = ? AND when_ < ?", params
            )
            return cursor.rowcount

        return await self._storage._write(expire)

    async def remove(self, user: str, keys: Sequence[str]) -> int:
        numbers = {n for n in map(archive_key_number, keys) if n is not None}
        rows = [(self._host, self._store, user, number) for number in sorted(numbers)]
        if not rows:
            self._storage._check_open()
            return 0

        def remove(conn: sqlite3.Connection) -> int:
            # executemany sums the rows changed by every execution.
            cursor = conn.executemany(
                "DELETE FROM archive WHERE host = ? AND store = ? AND user = ? AND id = ?", rows
            )
            return cursor.rowcount

        return await self._storage._write(remove)

    async def delete_user(self, user: str) -> int:
        params = (self._host, self._store, user)

        def delete_user(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM archive WHERE host = ? AND store = ? AND user = ?", params
            )
            return cursor.rowcount

        return await self._storage._write(delete_user)
