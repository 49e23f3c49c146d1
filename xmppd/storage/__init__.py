"""Generic storage interface: key-value and archive stores per (host, store), Prosody-style.

Modules never write SQL (DESIGN §2.1.6, §3.8.8). They declare the stores they need
(``stores = {"roster": StoreKind.KEYVALUE}``) and get a `KeyValueStore` or an `ArchiveStore`
bound to one ``(host, store)`` pair. Every backend (`xmppd.storage.memory`,
`xmppd.storage.sqlite`, later PostgreSQL) implements the protocols below with the same
semantics, checked by ``tests/xmppd/storage/test_contract.py``:

- Writes return once the data is *committed*; a read issued after an awaited write sees it.
  Backends may batch concurrent writes into one commit (group commit, DESIGN §5).
- Values of a key-value store are JSON (`JsonValue`), stored as their JSON text: what comes
  back is a fresh copy, never the object that was stored.
- Archive keys are opaque strings that increase in insertion order and are never reused.
  An entry may also carry an *external id* chosen by the caller (e.g. a XEP-0359 stanza id
  used as the XEP-0313 archive id), found again with `ArchiveStore.find` and the ``ids``
  filter; the store does not check it for uniqueness.
- `ArchiveStore.append_nowait` issues a write without awaiting it: the write is queued at
  once (so `Storage.barrier` covers it) and keeps its place in insertion order.
- Every failure surfaces as `StorageError`; so does any use after `Storage.close`.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeAlias, cast

__all__ = [
    "ArchiveItem",
    "ArchiveStore",
    "JsonValue",
    "KeyValueStore",
    "Storage",
    "StorageError",
    "StoreKind",
    "open_storage",
]

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None


class StorageError(Exception):
    """A storage operation failed, or the storage is not open; the cause is chained."""


class StoreKind(enum.Enum):
    """The two kinds of store a module can declare."""

    KEYVALUE = "keyvalue"
    ARCHIVE = "archive"


@dataclass(frozen=True, slots=True)
class ArchiveItem:
    """One entry of an archive store.

    Attributes:
        key: opaque, unique key; keys increase in insertion order.
        when: unix time of the entry (given to `ArchiveStore.append`, or the time of the call).
        with_jid: the peer the entry is filed under, if any (filter for `ArchiveStore.items`).
        value: the stored text, e.g. a serialized stanza.
        id: the external id given to `ArchiveStore.append`, if any.
    """

    key: str
    when: float
    with_jid: str | None
    value: str
    id: str | None = None


class KeyValueStore(Protocol):
    """One named key-value store of one host, keyed by (user, key); user ``""`` is host-wide."""

    async def get(self, user: str, key: str) -> JsonValue | None:
        """Return the value stored under (user, key), or None if there is none."""
        ...

    async def set(self, user: str, key: str, value: JsonValue) -> None:
        """Store ``value`` under (user, key), replacing any previous value; returns once committed.

        Raises:
            StorageError: the value is not JSON-serializable (including NaN and infinities,
                which JSON cannot represent), or the write failed.
        """
        ...

    async def delete(self, user: str, key: str) -> bool:
        """Delete (user, key); returns once committed, True if the key existed."""
        ...

    async def keys(self, user: str) -> list[str]:
        """Return the keys stored for ``user``, sorted."""
        ...

    async def users(self) -> list[str]:
        """Return the users having at least one key, sorted (``""`` if host-wide data exists)."""
        ...

    async def delete_user(self, user: str) -> int:
        """Delete every key of ``user``; returns once committed, with the number deleted."""
        ...


class ArchiveStore(Protocol):
    """One named append-only log per user of one host, ordered by insertion."""

    async def append(
        self,
        user: str,
        value: str,
        *,
        with_jid: str | None = None,
        when: float | None = None,
        id: str | None = None,
    ) -> str:
        """Append ``value`` to the log of ``user``; returns the new item's key once committed.

        Args:
            user: the owner of the log.
            value: the text to store.
            with_jid: the peer to file the entry under, for `items` / `count` filters.
            when: unix time of the entry; the current time when None.
            id: an external id for the entry (`find`, the ``ids`` filter).
        """
        ...

    def append_nowait(
        self,
        user: str,
        value: str,
        *,
        with_jid: str | None = None,
        when: float | None = None,
        id: str | None = None,
    ) -> asyncio.Future[str]:
        """Issue an `append` now, without waiting for its commit; call it inside the loop.

        The write is queued before this returns: it takes its place in insertion order
        among every other write, and `Storage.barrier` called afterwards covers it. The
        future gets the new key once committed, or a `StorageError` (the caller should
        retrieve it, e.g. in a done callback that logs it).

        Raises:
            StorageError: the storage is not open.
        """
        ...

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
        """Return entries of ``user`` matching every given filter, in insertion order.

        Args:
            user: the owner of the log.
            after: only entries inserted after the one with this key (exclusive).
            before: only entries inserted before the one with this key (exclusive).
            start: only entries with ``when >= start``.
            end: only entries with ``when <= end``.
            with_jid: only entries filed under exactly this peer.
            ids: only entries whose external id is one of these.
            limit: at most this many entries, counted in the returned order.
            reverse: newest first; with ``limit`` this returns the *last* n entries.

        A key that the store could never have produced matches nothing: ``after`` or
        ``before`` such a key gives an empty list.

        Raises:
            ValueError: ``limit`` is negative.
        """
        ...

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
        """Return the number of entries of ``user`` matching every given filter (as `items`)."""
        ...

    async def find(self, user: str, id: str) -> ArchiveItem | None:
        """Return the entry of ``user`` with external id ``id`` (the oldest, if several)."""
        ...

    async def expire(self, before: float) -> int:
        """Remove the entries of every user with ``when < before``; returns once committed,
        with the number removed."""
        ...

    async def remove(self, user: str, keys: Sequence[str]) -> int:
        """Remove the entries of ``user`` with these keys; returns once committed, with the count.

        Unknown keys and keys of other users' entries are ignored.
        """
        ...

    async def delete_user(self, user: str) -> int:
        """Remove every entry of ``user``; returns once committed, with the number removed."""
        ...


class Storage(Protocol):
    """A storage backend: opened once at startup, closed at shutdown."""

    async def open(self) -> None:
        """Open the backend (connect, migrate); called once, before anything else.

        Raises:
            StorageError: the backend cannot be opened, or it was opened before.
        """
        ...

    async def close(self) -> None:
        """Commit pending writes and release resources; later calls raise `StorageError`."""
        ...

    def keyvalue(self, host: str, store: str) -> KeyValueStore:
        """Return the key-value store named ``store`` of ``host``."""
        ...

    def archive(self, host: str, store: str) -> ArchiveStore:
        """Return the archive store named ``store`` of ``host``."""
        ...

    async def flush(self) -> None:
        """Wait until every write issued so far is committed (or has failed)."""
        ...

    async def delete_user_data(self, host: str, user: str) -> int:
        """Remove ``user``'s entries of every store of ``host`` (a deleted account's data);
        returns once committed, with the number removed."""
        ...

    def barrier(self) -> asyncio.Future[None] | None:
        """An awaitable done once every write issued so far is committed (or has failed);
        None when nothing is pending. Unlike `flush`, it never waits for writes issued
        later, so a steady stream of writes cannot starve it (stream management's acks wait
        on it)."""
        ...


async def open_storage(kind: str, *, path: Path | None = None, fsync: bool = False) -> Storage:
    """Create and open a storage backend.

    Args:
        kind: ``"sqlite"`` or ``"memory"``.
        path: the database file, required for ``"sqlite"``; its directory must exist.
        fsync: sqlite only: fsync on every commit, so commits survive power loss too
            (see `xmppd.storage.sqlite`).

    Returns:
        The opened backend.

    Raises:
        StorageError: unknown kind, missing path, or the backend failed to open.
    """
    storage: Storage
    if kind == "memory":
        from xmppd.storage.memory import MemoryStorage  # late: it imports this module

        storage = MemoryStorage()
    elif kind == "sqlite":
        if path is None:
            raise StorageError("the sqlite storage needs a database file path")
        from xmppd.storage.sqlite import SqliteStorage  # late: it imports this module

        storage = SqliteStorage(path, fsync=fsync)
    else:
        raise StorageError(f"unknown storage kind {kind!r} (expected 'sqlite' or 'memory')")
    await storage.open()
    return storage


# Helpers shared by the backends, so that they agree on the details of the contract.

MAX_ARCHIVE_ID = 2**63 - 1  # SQLite INTEGER PRIMARY KEY and PostgreSQL BIGINT range


def archive_key_number(key: str) -> int | None:
    """Return the id behind a decimal archive key, or None if no store can have produced it.

    Ids beyond `MAX_ARCHIVE_ID` are clamped: they still compare correctly against every
    stored id (all smaller), which is what ``after`` / ``before`` need.
    """
    if not key or not key.isascii() or not key.isdigit():
        return None
    if len(key) > 19:
        return MAX_ARCHIVE_ID
    return min(int(key), MAX_ARCHIVE_ID)


def encode_json(value: JsonValue) -> str:
    """Serialize a key-value store value to compact JSON text.

    Raises:
        StorageError: the value is not JSON (an unsupported type, a cycle, NaN or infinity).
    """
    try:
        # allow_nan=False: NaN and Infinity are not JSON (RFC 8259 §6), and a PostgreSQL jsonb
        # column would reject them; every backend must refuse them alike.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise StorageError(f"value is not JSON-serializable: {exc}") from exc


def decode_json(text: str) -> JsonValue:
    """Parse JSON text written by `encode_json`."""
    return cast(JsonValue, json.loads(text))  # json.loads returns Any; our writer made it


def id_set(ids: Sequence[str] | None) -> frozenset[str] | None:
    """The ``ids`` filter as a set (None: no filter). A plain string is refused, since it
    would otherwise be taken as a sequence of one-character ids.

    Raises:
        TypeError: ``ids`` is a string.
    """
    if ids is None:
        return None
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of ids, not a string")
    return frozenset(ids)


def check_limit(limit: int | None) -> None:
    """Reject a negative ``limit`` for `ArchiveStore.items`.

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
