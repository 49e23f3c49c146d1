"""In-memory storage backend: the `xmppd.storage` contract over plain dicts and lists.

Used by the module test harness and for ephemeral runs; nothing survives the process. It
passes the same contract tests as the SQLite backend, so it copies what the other backends
do: key-value values are kept as JSON text (callers never share objects with the store),
archive keys are decimal ids from one counter per storage, never reused.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import time
from collections.abc import Iterable, Sequence

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

__all__ = ["MemoryStorage"]


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


# (host, store) -> user -> key -> JSON text
_KvTable = dict[tuple[str, str], dict[str, dict[str, str]]]
# (host, store) -> user -> [(id, item)], ids increasing
_ArchiveTable = dict[tuple[str, str], dict[str, list[tuple[int, ArchiveItem]]]]


class MemoryStorage:
    """The in-memory `xmppd.storage.Storage`; every write is committed when it returns."""

    def __init__(self) -> None:
        """Create an unopened, empty storage."""
        self._state = _State.NEW
        self._kv: _KvTable = {}
        self._archive: _ArchiveTable = {}
        self._last_id = 0

    async def open(self) -> None:
        """Open the storage.

        Raises:
            StorageError: it was opened before.
        """
        if self._state is not _State.NEW:
            raise StorageError(f"memory storage cannot be opened: it is {self._state.value}")
        self._state = _State.OPEN

    async def close(self) -> None:
        """Close the storage and drop its data; later calls raise `StorageError`."""
        self._state = _State.CLOSED
        self._kv.clear()
        self._archive.clear()

    async def flush(self) -> None:
        """Return at once: every write is committed when it returns."""
        self.check_open()

    def barrier(self) -> asyncio.Future[None] | None:
        """Nothing is ever pending here."""
        return None

    def keyvalue(self, host: str, store: str) -> KeyValueStore:
        """Return the key-value store named ``store`` of ``host``."""
        self.check_open()
        return _MemoryKeyValue(self, self._kv.setdefault((host, store), {}))

    def archive(self, host: str, store: str) -> ArchiveStore:
        """Return the archive store named ``store`` of ``host``."""
        self.check_open()
        return _MemoryArchive(self, self._archive.setdefault((host, store), {}))

    async def delete_user_data(self, host: str, user: str) -> int:
        """Remove ``user``'s entries of every store of ``host``."""
        self.check_open()
        removed = 0
        for (table_host, _store), entries in self._kv.items():
            if table_host == host:
                removed += len(entries.pop(user, ()))
        for (table_host, _store), items in self._archive.items():
            if table_host == host:
                removed += len(items.pop(user, ()))
        return removed

    def check_open(self) -> None:
        """Raise `StorageError` unless the storage is open."""
        if self._state is not _State.OPEN:
            raise StorageError(f"memory storage is {self._state.value}, not open")

    def next_id(self) -> int:
        """Return a fresh archive id, larger than every id handed out before."""
        self._last_id += 1
        return self._last_id


class _MemoryKeyValue:
    """`KeyValueStore` over user -> key -> JSON text."""

    __slots__ = ("_storage", "_users")

    def __init__(self, storage: MemoryStorage, users: dict[str, dict[str, str]]) -> None:
        self._storage = storage
        self._users = users

    async def get(self, user: str, key: str) -> JsonValue | None:
        self._storage.check_open()
        text = self._users.get(user, {}).get(key)
        return None if text is None else decode_json(text)

    async def set(self, user: str, key: str, value: JsonValue) -> None:
        self._storage.check_open()
        text = encode_json(value)
        self._users.setdefault(user, {})[key] = text

    async def delete(self, user: str, key: str) -> bool:
        self._storage.check_open()
        keys = self._users.get(user)
        if keys is None or key not in keys:
            return False
        del keys[key]
        if not keys:
            del self._users[user]  # users() lists only users that have keys
        return True

    async def keys(self, user: str) -> list[str]:
        self._storage.check_open()
        return sorted(self._users.get(user, ()))

    async def users(self) -> list[str]:
        self._storage.check_open()
        return sorted(self._users)

    async def delete_user(self, user: str) -> int:
        self._storage.check_open()
        return len(self._users.pop(user, ()))


def _id_of(row: tuple[int, ArchiveItem]) -> int:
    return row[0]


class _MemoryArchive:
    """`ArchiveStore` over user -> list of (id, item), in id order."""

    __slots__ = ("_logs", "_storage")

    def __init__(
        self, storage: MemoryStorage, logs: dict[str, list[tuple[int, ArchiveItem]]]
    ) -> None:
        self._storage = storage
        self._logs = logs

    def _append(
        self, user: str, value: str, with_jid: str | None, when: float | None, id: str | None
    ) -> str:
        self._storage.check_open()
        item_id = self._storage.next_id()
        item = ArchiveItem(
            key=str(item_id),
            when=time.time() if when is None else float(when),
            with_jid=with_jid,
            value=value,
            id=id,
        )
        self._logs.setdefault(user, []).append((item_id, item))
        return item.key

    async def append(
        self,
        user: str,
        value: str,
        *,
        with_jid: str | None = None,
        when: float | None = None,
        id: str | None = None,
    ) -> str:
        return self._append(user, value, with_jid, when, id)

    def append_nowait(
        self,
        user: str,
        value: str,
        *,
        with_jid: str | None = None,
        when: float | None = None,
        id: str | None = None,
    ) -> asyncio.Future[str]:
        key = self._append(user, value, with_jid, when, id)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        future.set_result(key)
        return future

    def _select(
        self,
        user: str,
        *,
        after: str | None,
        before: str | None,
        start: float | None,
        end: float | None,
        with_jid: str | None,
        ids: Sequence[str] | None,
        reverse: bool = False,
    ) -> Iterable[ArchiveItem]:
        wanted = id_set(ids)
        rows = self._logs.get(user, [])
        low, high = 0, len(rows)
        if after is not None:
            after_id = archive_key_number(after)
            if after_id is None:
                return
            low = bisect.bisect_right(rows, after_id, key=_id_of)
        if before is not None:
            before_id = archive_key_number(before)
            if before_id is None:
                return
            high = bisect.bisect_left(rows, before_id, key=_id_of)
        selected = rows[low:high]
        if reverse:
            selected.reverse()
        for _, item in selected:
            if start is not None and item.when < start:
                continue
            if end is not None and item.when > end:
                continue
            if with_jid is not None and item.with_jid != with_jid:
                continue
            if wanted is not None and item.id not in wanted:
                continue
            yield item

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
        self._storage.check_open()
        check_limit(limit)
        result: list[ArchiveItem] = []
        if limit == 0:
            return result
        for item in self._select(
            user,
            after=after,
            before=before,
            start=start,
            end=end,
            with_jid=with_jid,
            ids=ids,
            reverse=reverse,
        ):
            result.append(item)
            if limit is not None and len(result) >= limit:
                break
        return result

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
        self._storage.check_open()
        return sum(
            1
            for _ in self._select(
                user, after=after, before=before, start=start, end=end, with_jid=with_jid, ids=ids
            )
        )

    async def find(self, user: str, id: str) -> ArchiveItem | None:
        self._storage.check_open()
        for _, item in self._logs.get(user, []):
            if item.id == id:
                return item
        return None

    async def expire(self, before: float) -> int:
        self._storage.check_open()
        removed = 0
        for user in list(self._logs):
            rows = self._logs[user]
            kept = [row for row in rows if row[1].when >= before]
            removed += len(rows) - len(kept)
            if kept:
                rows[:] = kept
            else:
                del self._logs[user]
        return removed

    async def remove(self, user: str, keys: Sequence[str]) -> int:
        self._storage.check_open()
        rows = self._logs.get(user)
        if not rows:
            return 0
        doomed = {n for n in map(archive_key_number, keys) if n is not None}
        kept = [row for row in rows if row[0] not in doomed]
        removed = len(rows) - len(kept)
        if kept:
            rows[:] = kept
        else:
            del self._logs[user]
        return removed

    async def delete_user(self, user: str) -> int:
        self._storage.check_open()
        return len(self._logs.pop(user, ()))
