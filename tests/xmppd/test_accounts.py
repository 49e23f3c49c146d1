"""AccountStore: SCRAM verifiers only, and the short-lived login credentials cache."""

from __future__ import annotations

import pytest

from xmppd.accounts import STORE, AccountError, AccountStore
from xmppd.jid import JID
from xmppd.sasl import verify_password
from xmppd.storage import open_storage

ALICE = JID.parse("alice@localhost")


@pytest.fixture
async def accounts():
    storage = await open_storage("memory")
    yield AccountStore(storage, cache_ttl=30.0)
    await storage.close()


async def test_only_scram_verifiers_are_stored(accounts: AccountStore) -> None:
    await accounts.create(ALICE, "s3cret")
    raw = await accounts.storage.keyvalue("localhost", STORE).get("alice", "scram")
    assert isinstance(raw, dict)
    assert set(raw) == {"SHA-1", "SHA-256"}
    assert "s3cret" not in repr(raw)
    assert all(entry["iterations"] >= 4096 for entry in raw.values())
    creds = await accounts.credentials("localhost", "alice")
    assert creds is not None
    assert verify_password(creds, "s3cret")
    assert not verify_password(creds, "wrong")


async def test_absence_is_never_cached(accounts: AccountStore) -> None:
    assert await accounts.credentials("localhost", "alice") is None
    # created behind this store's back (another process: the CLI)
    other = AccountStore(accounts.storage)
    await other.create(ALICE, "pw")
    assert await accounts.credentials("localhost", "alice") is not None


async def test_cached_credentials_are_reused_until_forgotten(accounts: AccountStore) -> None:
    await accounts.create(ALICE, "old")
    assert verify_password(await accounts.credentials("localhost", "alice") or {}, "old")
    other = AccountStore(accounts.storage)  # e.g. `xmppd passwd` in another process
    await other.set_password(ALICE, "new")
    assert verify_password(await accounts.credentials("localhost", "alice") or {}, "old")
    accounts.forget("localhost", "alice")  # what the admin socket does for the CLI
    assert verify_password(await accounts.credentials("localhost", "alice") or {}, "new")


async def test_own_changes_drop_the_cache(accounts: AccountStore) -> None:
    await accounts.create(ALICE, "old")
    await accounts.credentials("localhost", "alice")
    await accounts.set_password(ALICE, "new")
    assert verify_password(await accounts.credentials("localhost", "alice") or {}, "new")
    await accounts.delete(ALICE)
    assert await accounts.credentials("localhost", "alice") is None


async def test_cache_expires_and_is_bounded() -> None:
    storage = await open_storage("memory")
    store = AccountStore(storage, cache_ttl=1e-9, cache_size=2)
    await store.create(ALICE, "old")
    await store.credentials("localhost", "alice")
    await AccountStore(storage).set_password(ALICE, "new")
    assert verify_password(await store.credentials("localhost", "alice") or {}, "new")
    bounded = AccountStore(storage, cache_ttl=30.0, cache_size=2)
    for name in ("a", "b", "c"):
        await bounded.create(JID.parse(f"{name}@localhost"), "pw")
        await bounded.credentials("localhost", name)
    assert len(bounded._cache) == 2
    await storage.close()


async def test_disabled_cache_always_reads_storage() -> None:
    storage = await open_storage("memory")
    store = AccountStore(storage)  # cache_ttl 0: off
    await store.create(ALICE, "old")
    await store.credentials("localhost", "alice")
    await AccountStore(storage).set_password(ALICE, "new")
    assert verify_password(await store.credentials("localhost", "alice") or {}, "new")
    await storage.close()


async def test_errors(accounts: AccountStore) -> None:
    await accounts.create(ALICE, "pw")
    with pytest.raises(AccountError, match="exists"):
        await accounts.create(ALICE, "pw")
    with pytest.raises(AccountError, match="empty"):
        await accounts.create(JID.parse("bob@localhost"), "")
    with pytest.raises(AccountError, match="no such account"):
        await accounts.set_password(JID.parse("nobody@localhost"), "pw")
    with pytest.raises(AccountError, match="not a bare user JID"):
        await accounts.create(JID.parse("localhost"), "pw")


async def test_prune_drops_expired_entries() -> None:
    storage = await open_storage("memory")
    store = AccountStore(storage, cache_ttl=1e-9)
    await store.create(ALICE, "pw")
    store.cache_ttl = 30.0
    await store.credentials("localhost", "alice")
    assert len(store._cache) == 1
    store.prune()
    assert len(store._cache) == 1  # still fresh
    store.cache_ttl = 1e-9
    store.prune()
    assert len(store._cache) == 0
    await storage.close()


async def test_exists_answers_from_fresh_cache_and_sees_deletion_through_forget(
    accounts: AccountStore,
) -> None:
    await accounts.create(ALICE, "pw")
    await accounts.credentials("localhost", "alice")  # a login caches the verifiers
    await accounts.storage.keyvalue("localhost", STORE).delete_user("alice")  # behind its back
    assert await accounts.exists("localhost", "alice")  # within the TTL: cached
    accounts.forget("localhost", "alice")  # what `xmppd deluser` triggers in a running server
    assert not await accounts.exists("localhost", "alice")
