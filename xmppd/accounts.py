"""Local accounts: creation, deletion, password changes; only SCRAM verifiers are stored.

Key derivation (PBKDF2, RFC 5802 §3) is costly, so it runs in a worker thread.

Credentials read for a login are cached for a short time (as ejabberd's auth cache does): the
lookup is a storage round trip on every login, a reconnect storm repeats it per client. Only
existing accounts are cached (never an absence, so an account created by the CLI while the
server runs is seen at once); changes made through this store drop the entry, and the CLI
drops it in a running server through the admin socket (`forget`). The TTL bounds staleness for
changes made anywhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from xmppd.jid import JID
from xmppd.sasl import ScramCredentials, StoredCredentials, derive_all
from xmppd.storage import Storage

logger = logging.getLogger(__name__)

STORE = "accounts"
KEY = "scram"


class AccountError(Exception):
    """An account operation failed (exists already, no such account, bad password)."""


class AccountStore:
    """Accounts of every local host, in the `accounts` key-value store of each host."""

    def __init__(
        self,
        storage: Storage,
        *,
        iterations: int = 4096,
        cache_ttl: float = 0.0,
        cache_size: int = 10_000,
    ) -> None:
        self.storage = storage
        self.iterations = iterations
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], tuple[float, StoredCredentials]] = OrderedDict()

    def prune(self) -> int:
        """Drop expired cache entries (the oldest come first); returns how many."""
        deadline = time.monotonic() - self.cache_ttl
        cache = self._cache
        pruned = 0
        while cache:
            key, (fetched, _creds) = next(iter(cache.items()))
            if fetched >= deadline:
                break
            del cache[key]
            pruned += 1
        return pruned

    def forget(self, host: str, username: str) -> None:
        """Drop cached credentials of one account (it changed elsewhere)."""
        self._cache.pop((host, username), None)

    async def exists(self, host: str, username: str) -> bool:
        """Whether `username@host` exists (fresh cached credentials answer without storage).

        Delivery asks this for every message to an account without an available resource, so
        a flood towards a recently seen account does not become a flood of storage reads.
        """
        cached = self._cache.get((host, username))
        if cached is not None and time.monotonic() - cached[0] < self.cache_ttl:
            return True
        return await self.storage.keyvalue(host, STORE).get(username, KEY) is not None

    async def credentials(self, host: str, username: str) -> StoredCredentials | None:
        """The stored SCRAM verifiers, or None if there is no such account."""
        key = (host, username)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None:
            if now - cached[0] < self.cache_ttl:
                self._cache.move_to_end(key)
                return cached[1]
            del self._cache[key]
        creds = await self._load(host, username)
        if creds is not None and self.cache_ttl > 0:
            self._cache[key] = (now, creds)
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return creds

    async def _load(self, host: str, username: str) -> StoredCredentials | None:
        raw = await self.storage.keyvalue(host, STORE).get(username, KEY)
        if not isinstance(raw, dict):
            return None
        try:
            return {
                name: ScramCredentials.from_json(entry)
                for name, entry in raw.items()
                if isinstance(entry, dict)
            }
        except ValueError:
            logger.error("stored credentials of %s@%s are corrupt", username, host)
            return None

    async def create(self, jid: JID, password: str) -> None:
        """Create an account.

        Raises:
            AccountError: the account exists or the password is not acceptable.
        """
        if jid.local is None or jid.resource is not None:
            raise AccountError(f"{jid} is not a bare user JID")
        if await self.exists(jid.domain, jid.local):
            raise AccountError(f"{jid} exists already")
        await self._store(jid, password)

    async def set_password(self, jid: JID, password: str) -> None:
        """Change the password of an existing account."""
        if jid.local is None or not await self.exists(jid.domain, jid.local):
            raise AccountError(f"{jid}: no such account")
        await self._store(jid, password)

    async def delete(self, jid: JID) -> None:
        """Delete an account and every key-value entry of the account in the accounts store."""
        if jid.local is None or not await self.exists(jid.domain, jid.local):
            raise AccountError(f"{jid}: no such account")
        await self.storage.keyvalue(jid.domain, STORE).delete_user(jid.local)
        self.forget(jid.domain, jid.local)

    async def delete_data(self, jid: JID) -> int:
        """Delete everything stored for a (deleted) account in every store of its host: roster,
        offline messages, vCard, ... Run after its sessions ended, so nothing written at their
        end survives."""
        return await self.storage.delete_user_data(jid.domain, jid.local or "")

    async def users(self, host: str) -> list[str]:
        """Usernames of `host`, sorted."""
        return await self.storage.keyvalue(host, STORE).users()

    async def _store(self, jid: JID, password: str) -> None:
        if not password:
            raise AccountError("the password must not be empty")
        try:
            creds = await asyncio.to_thread(derive_all, password, iterations=self.iterations)
        except ValueError as exc:
            raise AccountError(f"unacceptable password: {exc}") from None
        value = {name: c.to_json() for name, c in creds.items()}
        self.forget(jid.domain, jid.local or "")
        await self.storage.keyvalue(jid.domain, STORE).set(jid.local or "", KEY, value)  # type: ignore[arg-type]  # dict[str, dict[str, str|int]] is JSON
