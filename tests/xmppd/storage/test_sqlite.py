"""SQLite backend specifics: migrations, WAL and pragmas, group commit, several processes."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import xmppd
from xmppd.storage import StorageError, open_storage
from xmppd.storage import sqlite as sqlite_backend
from xmppd.storage.sqlite import MIGRATIONS, Migration, SqliteStorage

REPO_ROOT = Path(xmppd.__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "xmppd.sqlite"


@pytest.fixture
async def storage(db_path: Path) -> AsyncIterator[SqliteStorage]:
    opened = SqliteStorage(db_path)
    await opened.open()
    yield opened
    await opened.close()


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the file through a separate, plain sqlite3 connection."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not an sqlite database, not at all" * 100)


def _schema_versions(path: Path) -> list[object]:
    return [row[0] for row in _query(path, "SELECT version FROM schema_version ORDER BY version")]


# -- schema and migrations -----------------------------------------------------------------------


async def test_fresh_database_gets_every_migration(storage: SqliteStorage, db_path: Path) -> None:
    assert _schema_versions(db_path) == [m.version for m in MIGRATIONS]
    tables = {row[0] for row in _query(db_path, "SELECT name FROM sqlite_master")}
    assert {"kv", "archive", "schema_version", "archive_by_user", "archive_by_with"} <= tables


async def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


async def test_existing_empty_database_file_is_initialised(db_path: Path) -> None:
    sqlite3.connect(db_path).close()  # a version-0 database: no tables at all
    storage = await open_storage("sqlite", path=db_path)
    await storage.keyvalue("example.org", "roster").set("alice", "k", 1)
    await storage.close()
    assert _schema_versions(db_path) == [m.version for m in MIGRATIONS]


async def test_older_version_database_is_migrated_keeping_data(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = await open_storage("sqlite", path=db_path)
    await old.keyvalue("example.org", "roster").set("alice", "bob@example.org", {"n": 1})
    await old.archive("example.org", "offline").append("alice", "<message/>")
    await old.close()

    latest = MIGRATIONS[-1].version
    step = Migration(
        latest + 1,
        "test: note column on kv",
        ("ALTER TABLE kv ADD COLUMN note TEXT", "UPDATE kv SET note = 'migrated'"),
    )
    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", (*MIGRATIONS, step))
    new = await open_storage("sqlite", path=db_path)
    try:
        assert _schema_versions(db_path) == [*(m.version for m in MIGRATIONS), latest + 1]
        assert _query(db_path, "SELECT user, key, note FROM kv") == [
            ("alice", "bob@example.org", "migrated")
        ]
        kv = new.keyvalue("example.org", "roster")
        assert await kv.get("alice", "bob@example.org") == {"n": 1}
        assert await new.archive("example.org", "offline").count("alice") == 1
    finally:
        await new.close()


async def test_failing_migration_rolls_back_and_raises(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await open_storage("sqlite", path=db_path)
    await first.keyvalue("example.org", "roster").set("alice", "k", 1)
    await first.close()

    latest = MIGRATIONS[-1].version
    broken = Migration(latest + 1, "test: broken", ("CREATE TABLE extra (x)", "NOT SQL AT ALL"))
    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StorageError) as caught:
        await open_storage("sqlite", path=db_path)
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert _schema_versions(db_path) == [m.version for m in MIGRATIONS]
    assert _query(db_path, "SELECT name FROM sqlite_master WHERE name = 'extra'") == []

    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", MIGRATIONS)
    again = await open_storage("sqlite", path=db_path)
    assert await again.keyvalue("example.org", "roster").get("alice", "k") == 1
    await again.close()


async def test_newer_schema_version_raises_clear_error(db_path: Path) -> None:
    storage = await open_storage("sqlite", path=db_path)
    await storage.close()
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO schema_version (version, applied, description) VALUES (999, 0, 'future')"
        )
    conn.close()
    with pytest.raises(StorageError, match=r"schema version 999 is newer than this xmppd supports"):
        await open_storage("sqlite", path=db_path)


# -- file, connection settings, errors -----------------------------------------------------------


async def test_wal_and_connection_pragmas(storage: SqliteStorage, db_path: Path) -> None:
    assert _query(db_path, "PRAGMA journal_mode") == [("wal",)]

    def pragmas(conn: sqlite3.Connection) -> list[object]:
        names = ("synchronous", "busy_timeout", "foreign_keys")
        return [conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names]

    assert await storage._read(pragmas) == [1, 5000, 1]  # synchronous=1 is NORMAL


async def test_database_files_are_private(storage: SqliteStorage, db_path: Path) -> None:
    await storage.keyvalue("example.org", "roster").set("alice", "k", 1)
    assert _mode(db_path) == 0o600
    assert _mode(db_path.with_name(db_path.name + "-wal")) == 0o600


async def test_missing_parent_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not a directory"):
        await open_storage("sqlite", path=tmp_path / "missing" / "xmppd.sqlite")


async def test_file_that_is_not_a_database_raises_storage_error(db_path: Path) -> None:
    _write_garbage(db_path)
    with pytest.raises(StorageError) as caught:
        await open_storage("sqlite", path=db_path)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    storage = await open_storage("sqlite", path=db_path)
    await storage.keyvalue("example.org", "roster").set("alice", "bob", {"sub": "both"})
    archive = storage.archive("example.org", "offline")
    first = [
        await archive.append("alice", f"m{i}", with_jid="bob", when=10.0 + i) for i in range(3)
    ]
    await archive.remove("alice", [first[-1]])
    await storage.close()

    storage = await open_storage("sqlite", path=db_path)
    try:
        assert await storage.keyvalue("example.org", "roster").get("alice", "bob") == {
            "sub": "both"
        }
        archive = storage.archive("example.org", "offline")
        items = await archive.items("alice")
        assert [(i.key, i.when, i.with_jid, i.value) for i in items] == [
            (first[0], 10.0, "bob", "m0"),
            (first[1], 11.0, "bob", "m1"),
        ]
        later = await archive.append("alice", "after reopen")
        assert int(later) > int(first[-1])  # AUTOINCREMENT: the removed id is not reused
    finally:
        await storage.close()


async def test_archive_keys_are_increasing_decimal_ids(storage: SqliteStorage) -> None:
    archive = storage.archive("example.org", "offline")
    keys = [await archive.append("alice", "m") for _ in range(12)]
    assert all(key.isdigit() for key in keys)
    numbers = [int(key) for key in keys]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == 12


# -- group commit --------------------------------------------------------------------------------


async def test_concurrent_sets_share_few_commits(storage: SqliteStorage) -> None:
    kv = storage.keyvalue("example.org", "roster")
    before = storage.commits
    await asyncio.gather(*(kv.set("alice", f"k{i}", i) for i in range(500)))
    commits = storage.commits - before
    assert 1 <= commits <= 10
    assert len(await kv.keys("alice")) == 500


async def test_sequential_awaited_sets_commit_each(storage: SqliteStorage) -> None:
    kv = storage.keyvalue("example.org", "roster")
    before = storage.commits
    for i in range(5):
        await kv.set("alice", "k", i)
    assert storage.commits - before == 5


async def test_batches_are_capped(storage: SqliteStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_backend, "MAX_BATCH", 10)
    kv = storage.keyvalue("example.org", "roster")
    before = storage.commits
    await asyncio.gather(*(kv.set("alice", f"k{i}", i) for i in range(50)))
    assert storage.commits - before >= 5
    assert len(await kv.keys("alice")) == 50


async def test_bad_write_fails_alone_in_its_batch(storage: SqliteStorage) -> None:
    kv = storage.keyvalue("example.org", "roster")
    archive = storage.archive("example.org", "offline")
    writes = [kv.set("alice", f"k{i}", i) for i in range(10)]
    # A lone surrogate cannot be encoded as UTF-8, so binding it fails inside the batch.
    bad = archive.append("alice", "\ud800")
    results = await asyncio.gather(*writes[:5], bad, *writes[5:], return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], StorageError)
    assert isinstance(failures[0].__cause__, UnicodeEncodeError)
    assert len(await kv.keys("alice")) == 10
    assert await archive.count("alice") == 0


async def test_cancelled_caller_write_is_still_committed(storage: SqliteStorage) -> None:
    kv = storage.keyvalue("example.org", "roster")
    task = asyncio.create_task(kv.set("alice", "k", "v"))
    await asyncio.sleep(0)  # the write is queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await storage.flush()
    assert await kv.get("alice", "k") == "v"


async def test_read_after_awaited_write_sees_it(storage: SqliteStorage) -> None:
    kv = storage.keyvalue("example.org", "roster")
    for i in range(20):
        await kv.set("alice", "k", i)
        assert await kv.get("alice", "k") == i


# -- several connections and processes on one file -----------------------------------------------


async def test_second_connection_sees_committed_writes(db_path: Path) -> None:
    one = await open_storage("sqlite", path=db_path)
    two = await open_storage("sqlite", path=db_path)
    try:
        await one.keyvalue("example.org", "accounts").set("alice", "password", "x")
        assert await two.keyvalue("example.org", "accounts").get("alice", "password") == "x"
        await two.keyvalue("example.org", "accounts").delete("alice", "password")
        assert await one.keyvalue("example.org", "accounts").get("alice", "password") is None
        key_one = await one.archive("example.org", "offline").append("alice", "from one")
        key_two = await two.archive("example.org", "offline").append("alice", "from two")
        assert key_one != key_two
        items = await one.archive("example.org", "offline").items("alice")
        assert [item.value for item in items] == ["from one", "from two"]
    finally:
        await one.close()
        await two.close()


async def test_concurrent_writes_from_two_connections_never_fail(db_path: Path) -> None:
    one = await open_storage("sqlite", path=db_path)
    two = await open_storage("sqlite", path=db_path)
    try:

        async def writer(storage_index: int, kv_count: int) -> None:
            storage = one if storage_index == 1 else two
            kv = storage.keyvalue("example.org", "roster")
            archive = storage.archive("example.org", "offline")
            for i in range(kv_count):  # awaited one by one: many small competing commits
                await kv.set(f"user{storage_index}", f"k{i}", i)
                await archive.append("alice", f"{storage_index}:{i}")

        await asyncio.gather(
            writer(1, 100),
            writer(2, 100),
            *(one.keyvalue("example.org", "roster").set("burst1", f"k{i}", i) for i in range(200)),
            *(two.keyvalue("example.org", "roster").set("burst2", f"k{i}", i) for i in range(200)),
        )
        for storage in (one, two):
            kv = storage.keyvalue("example.org", "roster")
            assert await kv.users() == ["burst1", "burst2", "user1", "user2"]
            assert len(await kv.keys("burst2")) == 200
            assert await storage.archive("example.org", "offline").count("alice") == 200
    finally:
        await one.close()
        await two.close()


async def test_write_waits_for_another_connections_lock(
    storage: SqliteStorage, db_path: Path
) -> None:
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute(
            "INSERT INTO kv (host, store, user, key, value) VALUES ('h', 's', 'u', 'k', '1')"
        )
        kv = storage.keyvalue("example.org", "roster")
        # WAL: reads proceed while the other connection holds the write lock, and see
        # only committed data.
        assert await storage.keyvalue("h", "s").get("u", "k") is None
        asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        started = time.monotonic()
        await kv.set("alice", "k", 1)  # waits (busy_timeout) instead of "database is locked"
        assert time.monotonic() - started >= 0.25
        assert await storage.keyvalue("h", "s").get("u", "k") == 1
    finally:
        other.close()


async def _run_python(script: str, db_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(script),
        str(db_path),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_another_process_writes_concurrently(storage: SqliteStorage, db_path: Path) -> None:
    # What `xmppd adduser` does while the server runs.
    process = await _run_python(
        """
        import asyncio, sys
        from pathlib import Path
        from xmppd.storage import open_storage

        async def main():
            storage = await open_storage("sqlite", path=Path(sys.argv[1]))
            kv = storage.keyvalue("example.org", "accounts")
            print("ready", flush=True)
            for i in range(150):
                await kv.set(f"cli{i}", "password", i)
            await storage.close()

        asyncio.run(main())
        """,
        db_path,
    )
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 10) == b"ready\n"
    kv = storage.keyvalue("example.org", "accounts")
    for i in range(150):
        await kv.set(f"server{i}", "password", i)
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    users = await kv.users()
    assert len(users) == 300
    assert await kv.get("cli149", "password") == 149


async def test_committed_write_survives_process_kill(db_path: Path) -> None:
    process = await _run_python(
        """
        import asyncio, os, signal, sys
        from pathlib import Path
        from xmppd.storage import open_storage

        async def main():
            storage = await open_storage("sqlite", path=Path(sys.argv[1]))
            await storage.keyvalue("example.org", "roster").set("alice", "k", "durable")
            key = await storage.archive("example.org", "offline").append("alice", "msg")
            print(key, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint

        asyncio.run(main())
        """,
        db_path,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == -9, stderr.decode()
    storage = await open_storage("sqlite", path=db_path)
    try:
        assert await storage.keyvalue("example.org", "roster").get("alice", "k") == "durable"
        (item,) = await storage.archive("example.org", "offline").items("alice")
        assert item.key == stdout.decode().strip()
    finally:
        await storage.close()


# -- fsync option, migration 2 ---------------------------------------------------------------------


async def test_fsync_option_uses_synchronous_full(db_path: Path) -> None:
    for fsync, expected in ((False, 1), (True, 2)):  # PRAGMA synchronous: NORMAL=1, FULL=2
        storage = await open_storage("sqlite", path=db_path, fsync=fsync)
        assert isinstance(storage, SqliteStorage)
        assert storage.fsync is fsync
        try:
            level = await storage._read(
                lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]
            )
            assert level == expected
            await storage.archive("h", "s").append("alice", "v")
        finally:
            await storage.close()


async def test_version_1_archive_rows_survive_migration_2(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", MIGRATIONS[:1])
    old = SqliteStorage(db_path)
    await old.open()
    key = await old._write(
        lambda conn: str(
            conn.execute(
                "INSERT INTO archive (host, store, user, when_, with_jid, value) "
                "VALUES ('h', 's', 'alice', 1.0, 'bob', 'v')"
            ).lastrowid
        )
    )
    await old.close()
    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", MIGRATIONS)
    new = SqliteStorage(db_path)
    await new.open()
    try:
        archive = new.archive("h", "s")
        items = await archive.items("alice")
        assert [(i.key, i.value, i.id) for i in items] == [(key, "v", None)]
        later = await archive.append("alice", "w", id="X")
        assert int(later) > int(key)
        found = await archive.find("alice", "X")
        assert found is not None
        assert found.key == later
    finally:
        await new.close()
    indexes = {row[0] for row in _query(db_path, "SELECT name FROM sqlite_master")}
    assert {"archive_by_ext_id", "archive_by_when"} <= indexes


async def test_server_passes_storage_fsync_to_sqlite(tmp_path: Path) -> None:
    from tests.conftest import make_config
    from xmppd.server import Server

    for fsync in (False, True):
        server = Server(make_config(tmp_path / str(fsync), storage_fsync=fsync))
        await server.start()
        try:
            assert isinstance(server.storage, SqliteStorage)
            assert server.storage.fsync is fsync
        finally:
            await server.stop()


async def test_barrier_fails_when_a_write_it_covers_fails(db_path: Path) -> None:
    storage = await open_storage("sqlite", path=db_path)
    try:
        archive = storage.archive("localhost", "mam")
        good = archive.append_nowait("alice", "fine")
        bad = archive.append_nowait("alice", "\ud800")  # a lone surrogate cannot be stored
        barrier = storage.barrier()
        assert barrier is not None
        with pytest.raises(StorageError):
            await barrier
        assert await good
        with pytest.raises(StorageError):
            await bad
        later = archive.append_nowait("alice", "after")
        barrier = storage.barrier()
        assert barrier is not None
        await barrier  # a later barrier over good writes succeeds
        assert await later
    finally:
        await storage.close()
