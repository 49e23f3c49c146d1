"""The xmppd.storage contract, run against every backend (memory and sqlite)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from xmppd.storage import (
    ArchiveItem,
    ArchiveStore,
    JsonValue,
    KeyValueStore,
    Storage,
    StorageError,
    open_storage,
)
from xmppd.storage.memory import MemoryStorage
from xmppd.storage.sqlite import SqliteStorage

BACKENDS = ["memory", "sqlite"]

# Static check that both backends implement the protocol (mypy runs on the tests).
_memory_is_storage: type[Storage] = MemoryStorage
_sqlite_is_storage: type[Storage] = SqliteStorage


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    kind: str = request.param
    opened = await open_storage(kind, path=tmp_path / "xmppd.sqlite")
    yield opened
    await opened.close()


@pytest.fixture
def kv(storage: Storage) -> KeyValueStore:
    return storage.keyvalue("example.org", "roster")


@pytest.fixture
def archive(storage: Storage) -> ArchiveStore:
    return storage.archive("example.org", "offline")


async def _fill(archive: ArchiveStore, user: str, count: int, **kwargs: str) -> list[str]:
    return [await archive.append(user, f"m{i}", when=1000.0 + i, **kwargs) for i in range(count)]


def _values(items: list[ArchiveItem]) -> list[str]:
    return [item.value for item in items]


# -- open_storage --------------------------------------------------------------------------------


async def test_open_storage_unknown_kind_raises() -> None:
    with pytest.raises(StorageError, match="unknown storage kind"):
        await open_storage("mnesia")


async def test_open_storage_sqlite_without_path_raises() -> None:
    with pytest.raises(StorageError, match="path"):
        await open_storage("sqlite")


@pytest.mark.parametrize("kind", BACKENDS)
async def test_open_twice_raises(kind: str, tmp_path: Path) -> None:
    storage = await open_storage(kind, path=tmp_path / "db")
    try:
        with pytest.raises(StorageError):
            await storage.open()
    finally:
        await storage.close()


# -- key-value -----------------------------------------------------------------------------------


async def test_get_missing_returns_none(kv: KeyValueStore) -> None:
    assert await kv.get("alice", "nothing") is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**62,
        1.5,
        -0.25,
        "",
        "text",
        [],
        {},
        [1, "two", 3.0, None, True, [[]], {"k": {}}],
        {"groups": ["Friends", "Work"], "sub": {"to": True, "from": False}, "n": None},
    ],
    ids=repr,
)
async def test_set_then_get_round_trips_json(kv: KeyValueStore, value: JsonValue) -> None:
    await kv.set("alice", "item", value)
    got = await kv.get("alice", "item")
    assert got == value
    assert type(got) is type(value)


async def test_set_overwrites_previous_value(kv: KeyValueStore) -> None:
    await kv.set("alice", "k", {"v": 1})
    await kv.set("alice", "k", [2])
    assert await kv.get("alice", "k") == [2]
    assert await kv.keys("alice") == ["k"]


async def test_values_are_copies_not_shared_objects(kv: KeyValueStore) -> None:
    value: dict[str, JsonValue] = {"list": [1, 2]}
    await kv.set("alice", "k", value)
    value["list"] = "changed after set"
    got = await kv.get("alice", "k")
    assert got == {"list": [1, 2]}
    assert isinstance(got, dict)
    got["list"] = "changed after get"
    assert await kv.get("alice", "k") == {"list": [1, 2]}


async def test_tuple_comes_back_as_list(kv: KeyValueStore) -> None:
    await kv.set("alice", "k", {"t": (1, 2)})  # type: ignore[dict-item]  # JSON has no tuple
    assert await kv.get("alice", "k") == {"t": [1, 2]}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1j: 2}, object(), {"s": {1, 2}}])
async def test_set_non_json_value_raises_and_stores_nothing(
    kv: KeyValueStore, value: object
) -> None:
    with pytest.raises(StorageError, match="JSON"):
        await kv.set("alice", "k", value)  # type: ignore[arg-type]  # deliberately not JSON
    assert await kv.get("alice", "k") is None
    assert await kv.users() == []


async def test_delete_returns_whether_key_existed(kv: KeyValueStore) -> None:
    await kv.set("alice", "k", 1)
    assert await kv.delete("alice", "k") is True
    assert await kv.get("alice", "k") is None
    assert await kv.delete("alice", "k") is False
    assert await kv.delete("nobody", "k") is False


async def test_stored_null_is_kept_as_a_key(kv: KeyValueStore) -> None:
    await kv.set("alice", "k", None)
    assert await kv.keys("alice") == ["k"]
    assert await kv.delete("alice", "k") is True


async def test_keys_are_sorted_and_per_user(kv: KeyValueStore) -> None:
    for key in ["b", "a", "c", "B"]:
        await kv.set("alice", key, key)
    await kv.set("bob", "z", 0)
    assert await kv.keys("alice") == ["B", "a", "b", "c"]
    assert await kv.keys("bob") == ["z"]
    assert await kv.keys("carol") == []


async def test_users_lists_users_with_keys_sorted(kv: KeyValueStore) -> None:
    assert await kv.users() == []
    for user in ["zoe", "alice", "émile", "bob"]:
        await kv.set(user, "k", 1)
    await kv.set("alice", "k2", 2)
    assert await kv.users() == ["alice", "bob", "zoe", "émile"]
    await kv.delete("bob", "k")
    assert await kv.users() == ["alice", "zoe", "émile"]


async def test_empty_user_holds_host_wide_data(kv: KeyValueStore) -> None:
    await kv.set("", "motd", "hello")
    await kv.set("alice", "motd", "alice's")
    assert await kv.get("", "motd") == "hello"
    assert await kv.keys("") == ["motd"]
    assert await kv.users() == ["", "alice"]
    assert await kv.delete_user("alice") == 1
    assert await kv.get("", "motd") == "hello"


async def test_delete_user_removes_all_keys_of_that_user_only(kv: KeyValueStore) -> None:
    for key in ["a", "b", "c"]:
        await kv.set("alice", key, key)
    await kv.set("bob", "a", "bob's")
    assert await kv.delete_user("alice") == 3
    assert await kv.keys("alice") == []
    assert await kv.users() == ["bob"]
    assert await kv.get("bob", "a") == "bob's"
    assert await kv.delete_user("alice") == 0


async def test_keyvalue_isolation_between_hosts_and_stores(storage: Storage) -> None:
    stores = [
        storage.keyvalue("a.example", "roster"),
        storage.keyvalue("b.example", "roster"),
        storage.keyvalue("a.example", "vcard"),
    ]
    for index, store in enumerate(stores):
        await store.set("alice", "k", index)
    for index, store in enumerate(stores):
        assert await store.get("alice", "k") == index
        assert await store.users() == ["alice"]
    assert await stores[0].delete_user("alice") == 1
    assert await stores[1].get("alice", "k") == 1
    assert await stores[2].get("alice", "k") == 2
    # A fresh handle on the same (host, store) sees the same data.
    assert await storage.keyvalue("b.example", "roster").get("alice", "k") == 1


async def test_unicode_users_keys_and_values(kv: KeyValueStore) -> None:
    user, key = "jürgen-李", "ключ 🔑"
    value: JsonValue = {"名前": "Zoë 🎉", "rtl": "שלום", "zero-width": "a\u200db", "nul": "a\x00b"}
    await kv.set(user, key, value)
    assert await kv.get(user, key) == value
    assert await kv.keys(user) == [key]
    assert await kv.users() == [user]


async def test_large_value_round_trips(kv: KeyValueStore) -> None:
    big = "x" * (1024 * 1024)
    await kv.set("alice", "avatar", {"data": big})
    assert await kv.get("alice", "avatar") == {"data": big}


async def test_concurrent_sets_are_all_visible(kv: KeyValueStore) -> None:
    await asyncio.gather(*(kv.set("alice", f"k{i:03}", i) for i in range(200)))
    keys = await kv.keys("alice")
    assert keys == [f"k{i:03}" for i in range(200)]
    assert await kv.get("alice", "k123") == 123


async def test_concurrent_writes_to_one_key_apply_in_call_order(kv: KeyValueStore) -> None:
    await asyncio.gather(*(kv.set("alice", "k", i) for i in range(50)))
    assert await kv.get("alice", "k") == 49


async def test_flush_waits_for_writes_in_flight(storage: Storage, kv: KeyValueStore) -> None:
    tasks = [asyncio.create_task(kv.set("alice", f"k{i}", i)) for i in range(20)]
    await asyncio.sleep(0)  # let the tasks issue their writes
    await storage.flush()
    assert len(await kv.keys("alice")) == 20
    await asyncio.gather(*tasks)


async def test_barrier_covers_writes_issued_before_it_only(
    storage: Storage, kv: KeyValueStore
) -> None:
    assert storage.barrier() is None  # nothing pending
    first = [asyncio.create_task(kv.set("alice", f"k{i}", i)) for i in range(20)]
    await asyncio.sleep(0)  # let the tasks issue their writes
    barrier = storage.barrier()
    later = [asyncio.create_task(kv.set("bob", f"k{i}", i)) for i in range(20)]
    if barrier is not None:
        await barrier
    assert len(await kv.keys("alice")) == 20
    await asyncio.gather(*first, *later)
    assert storage.barrier() is None


async def test_barrier_is_released_by_a_failed_write(storage: Storage, kv: KeyValueStore) -> None:
    task = asyncio.create_task(kv.set("alice", "k", float("nan")))
    await asyncio.sleep(0)
    barrier = storage.barrier()
    if barrier is not None:
        await barrier
    with pytest.raises(StorageError):
        await task


# -- archive -------------------------------------------------------------------------------------


async def test_append_returns_unique_keys_and_items_keep_insertion_order(
    archive: ArchiveStore,
) -> None:
    keys = [await archive.append("alice", f"m{i}") for i in range(15)]
    assert len(set(keys)) == 15
    items = await archive.items("alice")
    assert [item.key for item in items] == keys
    assert _values(items) == [f"m{i}" for i in range(15)]


async def test_append_stores_when_and_with_jid(archive: ArchiveStore) -> None:
    key = await archive.append("alice", "hi", with_jid="bob@example.org", when=1234.5)
    assert await archive.items("alice") == [
        ArchiveItem(key=key, when=1234.5, with_jid="bob@example.org", value="hi")
    ]


async def test_append_defaults_when_to_now(archive: ArchiveStore) -> None:
    before = time.time()
    await archive.append("alice", "hi")
    after = time.time()
    (item,) = await archive.items("alice")
    assert before <= item.when <= after
    assert item.with_jid is None


async def test_items_of_unknown_user_is_empty(archive: ArchiveStore) -> None:
    assert await archive.items("nobody") == []
    assert await archive.count("nobody") == 0


async def test_items_after_and_before_are_exclusive(archive: ArchiveStore) -> None:
    keys = await _fill(archive, "alice", 12)
    # keys[9] -> keys[10] crosses a decimal digit boundary in the SQL backend.
    assert _values(await archive.items("alice", after=keys[8])) == ["m9", "m10", "m11"]
    assert _values(await archive.items("alice", before=keys[2])) == ["m0", "m1"]
    assert _values(await archive.items("alice", after=keys[3], before=keys[7])) == [
        "m4",
        "m5",
        "m6",
    ]
    assert await archive.items("alice", after=keys[5], before=keys[6]) == []
    assert await archive.items("alice", after=keys[-1]) == []
    assert await archive.items("alice", before=keys[0]) == []


async def test_items_after_removed_key_still_positions(archive: ArchiveStore) -> None:
    keys = await _fill(archive, "alice", 5)
    assert await archive.remove("alice", [keys[2]]) == 1
    assert _values(await archive.items("alice", after=keys[2])) == ["m3", "m4"]
    assert _values(await archive.items("alice", before=keys[2])) == ["m0", "m1"]


@pytest.mark.parametrize("bogus", ["", "abc", "-1", "1.5", " 1", "\u0661", "0x10"])
async def test_items_after_or_before_unknown_key_form_is_empty(
    archive: ArchiveStore, bogus: str
) -> None:
    await _fill(archive, "alice", 3)
    assert await archive.items("alice", after=bogus) == []
    assert await archive.items("alice", before=bogus) == []


async def test_items_before_huge_key_returns_everything(archive: ArchiveStore) -> None:
    await _fill(archive, "alice", 3)
    huge = "9" * 40
    assert _values(await archive.items("alice", before=huge)) == ["m0", "m1", "m2"]
    assert await archive.items("alice", after=huge) == []


async def test_items_start_and_end_are_inclusive(archive: ArchiveStore) -> None:
    await _fill(archive, "alice", 10)  # when = 1000.0 .. 1009.0
    assert _values(await archive.items("alice", start=1007.0)) == ["m7", "m8", "m9"]
    assert _values(await archive.items("alice", end=1001.0)) == ["m0", "m1"]
    assert _values(await archive.items("alice", start=1003.0, end=1005.0)) == ["m3", "m4", "m5"]
    assert _values(await archive.items("alice", start=1003.5, end=1003.9)) == []


async def test_items_with_jid_filters_exactly(archive: ArchiveStore) -> None:
    await archive.append("alice", "b1", with_jid="bob@example.org")
    await archive.append("alice", "c1", with_jid="carol@example.org")
    await archive.append("alice", "b2", with_jid="bob@example.org")
    await archive.append("alice", "none")
    await archive.append("alice", "b3", with_jid="bob@example.org/phone")
    assert _values(await archive.items("alice", with_jid="bob@example.org")) == ["b1", "b2"]
    assert _values(await archive.items("alice", with_jid="carol@example.org")) == ["c1"]
    assert await archive.items("alice", with_jid="dave@example.org") == []
    assert len(await archive.items("alice")) == 5


async def test_items_limit_returns_first_n(archive: ArchiveStore) -> None:
    await _fill(archive, "alice", 10)
    assert _values(await archive.items("alice", limit=3)) == ["m0", "m1", "m2"]
    assert await archive.items("alice", limit=0) == []
    assert len(await archive.items("alice", limit=100)) == 10


async def test_items_reverse_returns_newest_first(archive: ArchiveStore) -> None:
    await _fill(archive, "alice", 4)
    assert _values(await archive.items("alice", reverse=True)) == ["m3", "m2", "m1", "m0"]


async def test_items_reverse_with_limit_returns_last_n_newest_first(
    archive: ArchiveStore,
) -> None:
    await _fill(archive, "alice", 10)
    assert _values(await archive.items("alice", reverse=True, limit=3)) == ["m9", "m8", "m7"]


async def test_items_page_forward_with_after_and_limit(archive: ArchiveStore) -> None:
    await _fill(archive, "alice", 7)
    pages: list[list[str]] = []
    after: str | None = None
    while page := await archive.items("alice", after=after, limit=3):
        pages.append(_values(page))
        after = page[-1].key
    assert pages == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"]]


async def test_items_page_backward_with_before_reverse_and_limit(archive: ArchiveStore) -> None:
    # XEP-0313 / XEP-0059 "last page" then "previous page".
    await _fill(archive, "alice", 7)
    pages: list[list[str]] = []
    before: str | None = None
    while page := await archive.items("alice", before=before, limit=3, reverse=True):
        pages.append(_values(page))
        before = page[-1].key
    assert pages == [["m6", "m5", "m4"], ["m3", "m2", "m1"], ["m0"]]


async def test_items_combines_every_filter(archive: ArchiveStore) -> None:
    keys: list[str] = []
    for i in range(20):
        peer = "bob@example.org" if i % 2 == 0 else "carol@example.org"
        keys.append(await archive.append("alice", f"m{i}", with_jid=peer, when=1000.0 + i))
    common = {
        "after": keys[1],
        "before": keys[18],
        "start": 1004.0,
        "end": 1016.0,
        "with_jid": "bob@example.org",
    }
    assert _values(await archive.items("alice", **common)) == [  # type: ignore[arg-type]
        "m4",
        "m6",
        "m8",
        "m10",
        "m12",
        "m14",
        "m16",
    ]
    assert _values(await archive.items("alice", limit=2, **common)) == [  # type: ignore[arg-type]
        "m4",
        "m6",
    ]
    assert _values(
        await archive.items("alice", limit=2, reverse=True, **common)  # type: ignore[arg-type]
    ) == ["m16", "m14"]


async def test_items_negative_limit_raises_value_error(archive: ArchiveStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await archive.items("alice", limit=-1)


async def test_count_with_and_without_jid(archive: ArchiveStore) -> None:
    await _fill(archive, "alice", 3, with_jid="bob@example.org")
    await _fill(archive, "alice", 2, with_jid="carol@example.org")
    await _fill(archive, "alice", 1)
    assert await archive.count("alice") == 6
    assert await archive.count("alice", with_jid="bob@example.org") == 3
    assert await archive.count("alice", with_jid="carol@example.org") == 2
    assert await archive.count("alice", with_jid="dave@example.org") == 0
    assert await archive.count("bob") == 0


async def test_remove_counts_only_entries_of_that_user(archive: ArchiveStore) -> None:
    alice = await _fill(archive, "alice", 5)
    bob = await _fill(archive, "bob", 2)
    removed = await archive.remove(
        "alice", [alice[0], alice[3], alice[3], bob[0], "bogus", "999999"]
    )
    assert removed == 2
    assert _values(await archive.items("alice")) == ["m1", "m2", "m4"]
    assert await archive.count("bob") == 2
    assert await archive.remove("alice", []) == 0
    assert await archive.remove("alice", [alice[0]]) == 0


async def test_remove_everything_then_append_again(archive: ArchiveStore) -> None:
    keys = await _fill(archive, "alice", 3)
    assert await archive.remove("alice", keys) == 3
    assert await archive.items("alice") == []
    new_key = await archive.append("alice", "again")
    assert new_key not in keys  # keys are never reused
    assert _values(await archive.items("alice", after=keys[-1])) == ["again"]


async def test_archive_delete_user(archive: ArchiveStore) -> None:
    await _fill(archive, "alice", 4)
    await _fill(archive, "bob", 1)
    assert await archive.delete_user("alice") == 4
    assert await archive.items("alice") == []
    assert await archive.count("bob") == 1
    assert await archive.delete_user("alice") == 0


async def test_archive_isolation_between_hosts_stores_and_users(storage: Storage) -> None:
    stores = [
        storage.archive("a.example", "offline"),
        storage.archive("b.example", "offline"),
        storage.archive("a.example", "mam"),
    ]
    for index, store in enumerate(stores):
        await store.append("alice", f"s{index}")
        await store.append("bob", f"s{index}-bob")
    for index, store in enumerate(stores):
        assert _values(await store.items("alice")) == [f"s{index}"]
        assert await store.count("bob") == 1
    assert await stores[0].delete_user("alice") == 1
    assert await stores[1].count("alice") == 1
    assert await stores[2].count("alice") == 1
    # kv and archive stores of the same name do not share data
    assert await storage.keyvalue("a.example", "mam").users() == []


async def test_archive_unicode_and_large_values(archive: ArchiveStore) -> None:
    text = "<message>Grüße 🌍 " + "é" * (512 * 1024) + "</message>"
    key = await archive.append("jürgen", text, with_jid="李@example.org")
    (item,) = await archive.items("jürgen", with_jid="李@example.org")
    assert item == ArchiveItem(key=key, when=item.when, with_jid="李@example.org", value=text)
    assert len(item.value.encode()) > 1024 * 1024


async def test_concurrent_appends_get_distinct_ordered_keys(archive: ArchiveStore) -> None:
    keys = await asyncio.gather(*(archive.append("alice", f"m{i}") for i in range(100)))
    assert len(set(keys)) == 100
    items = await archive.items("alice")
    assert [item.key for item in items] == list(keys)
    assert _values(items) == [f"m{i}" for i in range(100)]


# -- lifecycle -----------------------------------------------------------------------------------


async def test_use_after_close_raises_storage_error(storage: Storage) -> None:
    kv = storage.keyvalue("example.org", "roster")
    archive = storage.archive("example.org", "offline")
    await kv.set("alice", "k", 1)
    await archive.append("alice", "m")
    await storage.close()
    with pytest.raises(StorageError):
        await kv.get("alice", "k")
    with pytest.raises(StorageError):
        await kv.set("alice", "k", 2)
    with pytest.raises(StorageError):
        await kv.delete("alice", "k")
    with pytest.raises(StorageError):
        await kv.keys("alice")
    with pytest.raises(StorageError):
        await kv.users()
    with pytest.raises(StorageError):
        await kv.delete_user("alice")
    with pytest.raises(StorageError):
        await archive.append("alice", "m")
    with pytest.raises(StorageError):
        await archive.items("alice")
    with pytest.raises(StorageError):
        await archive.items("alice", after="bogus")
    with pytest.raises(StorageError):
        await archive.count("alice")
    with pytest.raises(StorageError):
        await archive.remove("alice", ["1"])
    with pytest.raises(StorageError):
        await archive.remove("alice", [])
    with pytest.raises(StorageError):
        await archive.delete_user("alice")
    with pytest.raises(StorageError):
        await storage.flush()
    with pytest.raises(StorageError):
        storage.keyvalue("example.org", "roster")
    with pytest.raises(StorageError):
        storage.archive("example.org", "offline")
    with pytest.raises(StorageError):
        await storage.open()
    await storage.close()  # closing again is harmless


async def test_close_commits_writes_in_flight(storage: Storage) -> None:
    kv = storage.keyvalue("example.org", "roster")
    tasks = [asyncio.create_task(kv.set("alice", f"k{i}", i)) for i in range(20)]
    await asyncio.sleep(0)  # let the tasks issue their writes
    await storage.close()
    await asyncio.gather(*tasks)  # every write was committed, none failed


@pytest.mark.parametrize("kind", BACKENDS)
async def test_use_before_open_raises(kind: str, tmp_path: Path) -> None:
    storage: Storage = MemoryStorage() if kind == "memory" else SqliteStorage(tmp_path / "db")
    with pytest.raises(StorageError):
        storage.keyvalue("example.org", "roster")
    await storage.close()


async def test_delete_user_data_empties_every_store_of_that_user_on_that_host(
    storage: Storage,
) -> None:
    """A deleted account's data goes from every store of its host; others keep theirs."""
    for store in ("roster", "vcard"):
        await storage.keyvalue("example.org", store).set("alice", "k", store)
        await storage.keyvalue("example.org", store).set("bob", "k", store)
    await storage.keyvalue("other.example", "roster").set("alice", "k", "kept")
    await _fill(storage.archive("example.org", "offline"), "alice", 2)
    await _fill(storage.archive("example.org", "offline"), "bob", 1)
    assert await storage.delete_user_data("example.org", "alice") == 4
    assert await storage.keyvalue("example.org", "roster").keys("alice") == []
    assert await storage.keyvalue("example.org", "vcard").keys("alice") == []
    assert await storage.archive("example.org", "offline").count("alice") == 0
    assert await storage.keyvalue("example.org", "vcard").get("bob", "k") == "vcard"
    assert await storage.archive("example.org", "offline").count("bob") == 1
    assert await storage.keyvalue("other.example", "roster").get("alice", "k") == "kept"
    assert await storage.delete_user_data("example.org", "alice") == 0


# -- archive: external ids, append_nowait, filtered count, expire ----------------------------------


async def test_append_with_external_id_round_trips_and_find_locates_it(
    archive: ArchiveStore,
) -> None:
    key = await archive.append("alice", "hi", with_jid="bob@example.org", when=5.0, id="X1")
    other = await archive.append("alice", "no id")
    item = ArchiveItem(key=key, when=5.0, with_jid="bob@example.org", value="hi", id="X1")
    assert await archive.find("alice", "X1") == item
    assert (await archive.items("alice"))[0] == item
    assert (await archive.items("alice"))[1].key == other
    assert (await archive.items("alice"))[1].id is None


async def test_find_is_per_user_and_none_when_unknown(archive: ArchiveStore) -> None:
    await archive.append("alice", "a", id="shared")
    assert await archive.find("bob", "shared") is None
    assert await archive.find("alice", "missing") is None
    assert await archive.find("alice", "") is None


async def test_find_returns_the_oldest_of_duplicate_ids(archive: ArchiveStore) -> None:
    first = await archive.append("alice", "a", id="dup")
    await archive.append("alice", "b", id="dup")
    found = await archive.find("alice", "dup")
    assert found is not None
    assert found.key == first


async def test_items_ids_filter_keeps_order_and_combines(archive: ArchiveStore) -> None:
    keys = [
        await archive.append("alice", f"m{i}", id=f"id{i}", with_jid="b" if i % 2 else "c")
        for i in range(6)
    ]
    got = await archive.items("alice", ids=["id4", "id1", "id3", "nope"])
    assert _values(got) == ["m1", "m3", "m4"]
    assert _values(await archive.items("alice", ids=["id4", "id1", "id3"], with_jid="b")) == [
        "m1",
        "m3",
    ]
    assert _values(await archive.items("alice", ids=["id1", "id3", "id5"], after=keys[1])) == [
        "m3",
        "m5",
    ]
    assert _values(await archive.items("alice", ids=["id1", "id3", "id5"], reverse=True)) == [
        "m5",
        "m3",
        "m1",
    ]
    assert await archive.items("alice", ids=[]) == []
    assert await archive.items("bob", ids=["id1"]) == []


async def test_items_ids_filter_refuses_a_plain_string(archive: ArchiveStore) -> None:
    await archive.append("alice", "a", id="a")
    with pytest.raises(TypeError):
        await archive.items("alice", ids="a")


async def test_items_ids_filter_with_many_ids(archive: ArchiveStore) -> None:
    for i in range(50):
        await archive.append("alice", f"m{i}", id=f"id{i}")
    wanted = [f"id{i}" for i in range(0, 50, 7)] + [f"x{i}" for i in range(2000)]
    assert _values(await archive.items("alice", ids=wanted)) == [f"m{i}" for i in range(0, 50, 7)]


async def test_count_applies_every_filter(archive: ArchiveStore) -> None:
    keys = [
        await archive.append(
            "alice", f"m{i}", when=1000.0 + i, with_jid="b" if i % 2 else "c", id=f"id{i}"
        )
        for i in range(10)
    ]
    await archive.append("bob", "other")
    assert await archive.count("alice") == 10
    assert await archive.count("alice", with_jid="b") == 5
    assert await archive.count("alice", after=keys[2]) == 7
    assert await archive.count("alice", before=keys[2]) == 2
    assert await archive.count("alice", after=keys[2], before=keys[6]) == 3
    assert await archive.count("alice", start=1003.0, end=1005.0) == 3
    assert await archive.count("alice", ids=["id1", "id2", "zz"]) == 2
    assert await archive.count("alice", after="not-a-key") == 0
    assert await archive.count("alice", ids=[]) == 0
    assert await archive.count("nobody") == 0


async def test_append_nowait_is_visible_in_order_and_resolves_to_the_key(
    storage: Storage, archive: ArchiveStore
) -> None:
    awaited = await archive.append("alice", "m0")
    futures = [archive.append_nowait("alice", f"m{i}", id=f"id{i}") for i in range(1, 6)]
    awaited_last = asyncio.ensure_future(archive.append("alice", "m6"))
    keys = [awaited, *[await f for f in futures], await awaited_last]
    items = await archive.items("alice")
    assert [item.key for item in items] == keys
    assert _values(items) == [f"m{i}" for i in range(7)]
    assert [item.id for item in items[1:6]] == [f"id{i}" for i in range(1, 6)]


async def test_append_nowait_is_issued_before_it_returns(
    storage: Storage, archive: ArchiveStore
) -> None:
    future = archive.append_nowait("alice", "m", with_jid="bob@example.org", when=7.0)
    barrier = storage.barrier()  # must cover the write issued just above
    if barrier is not None:
        await barrier
    assert future.done()
    items = await archive.items("alice")
    assert [(i.key, i.value, i.with_jid, i.when) for i in items] == [
        (future.result(), "m", "bob@example.org", 7.0)
    ]


async def test_append_nowait_after_close_raises(storage: Storage) -> None:
    archive = storage.archive("example.org", "mam")
    await storage.close()
    with pytest.raises(StorageError):
        archive.append_nowait("alice", "m")


async def test_expire_removes_old_entries_of_every_user_of_that_store_only(
    storage: Storage,
) -> None:
    archive = storage.archive("example.org", "mam")
    other_store = storage.archive("example.org", "offline")
    other_host = storage.archive("example.net", "mam")
    for user in ("alice", "bob"):
        for when in (10.0, 20.0, 30.0):
            await archive.append(user, f"{user}{when}", when=when)
    await other_store.append("alice", "kept", when=1.0)
    await other_host.append("alice", "kept", when=1.0)
    assert await archive.expire(20.0) == 2  # strictly older than 20
    assert _values(await archive.items("alice")) == ["alice20.0", "alice30.0"]
    assert _values(await archive.items("bob")) == ["bob20.0", "bob30.0"]
    assert await archive.expire(0.0) == 0
    assert await archive.expire(100.0) == 4
    assert await archive.items("alice") == []
    assert _values(await other_store.items("alice")) == ["kept"]
    assert _values(await other_host.items("alice")) == ["kept"]


async def test_keys_are_not_reused_after_expire(archive: ArchiveStore) -> None:
    old = await archive.append("alice", "old", when=1.0)
    await archive.expire(2.0)
    new = await archive.append("alice", "new", when=3.0)
    assert new != old
    assert [i.key for i in await archive.items("alice", after=old)] == [new]


async def test_delete_user_data_removes_archive_entries_with_external_ids(
    storage: Storage,
) -> None:
    archive = storage.archive("example.org", "mam")
    await archive.append("alice", "a", id="x")
    await archive.append("bob", "b", id="y")
    assert await storage.delete_user_data("example.org", "alice") == 1
    assert await archive.find("alice", "x") is None
    assert await archive.find("bob", "y") is not None
