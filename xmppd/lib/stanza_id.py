"""XEP-0359: Unique and Stable Stanza IDs — read, stamp and sanitise <stanza-id/> elements.

Other modules (MAM) read the id the server stamped with `find_stanza_id(message, by)`.
`SortableIds` makes ids that sort (as strings) in the order they were made: a strictly
increasing microsecond counter (14 hex digits) followed by 64 random bits (16 hex digits),
so that an id is unpredictable (§3 rule 2) yet archive order is id order.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lxml import etree

if TYPE_CHECKING:
    from xmppd.storage import KeyValueStore

NS_SID = "urn:xmpp:sid:0"
STANZA_ID = f"{{{NS_SID}}}stanza-id"
ORIGIN_ID = f"{{{NS_SID}}}origin-id"

COUNTER_DIGITS = 14  # hex digits: microseconds up to the year 4253
RANDOM_DIGITS = 16
ID_LENGTH = COUNTER_DIGITS + RANDOM_DIGITS
_MAX_COUNTER = 16**COUNTER_DIGITS - 1
_RANDOM_BATCH = 256  # random suffixes drawn from the OS at a time


_SID_TAGS = (STANZA_ID, ORIGIN_ID)
_TEMPLATE = etree.Element(STANZA_ID, nsmap={None: NS_SID})


def has_sid_children(message: etree._Element) -> bool:
    """Whether `message` has a direct <stanza-id/> or <origin-id/> child (one cheap pass)."""
    return any(child.tag in _SID_TAGS for child in message)


def find_stanza_id(message: etree._Element, by: str) -> str | None:
    """The id of the direct-child <stanza-id/> whose 'by' is `by`, or None."""
    for element in message.findall(STANZA_ID):
        if element.get("by") == by:
            return element.get("id")
    return None


def stamp_stanza_id(
    message: etree._Element, by: str, id_: str, *, replace: bool = True
) -> etree._Element:
    """Add <stanza-id by=`by` id=`id_`/>, replacing any earlier one by `by` (§3 rules 3, 4);
    `replace=False` when the caller already removed every id in our name."""
    if replace:
        for element in message.findall(STANZA_ID):
            if element.get("by") == by:
                message.remove(element)
    element = copy.copy(_TEMPLATE)  # cheaper than a new element with its own nsmap
    element.set("id", id_)
    element.set("by", by)
    message.append(element)
    return element


def strip_stanza_ids(message: etree._Element, is_ours: Callable[[str], bool]) -> int:
    """Remove every direct-child <stanza-id/> whose 'by' `is_ours` (or is missing).

    Returns how many were removed. Used against spoofing: only this server may stamp ids in
    the name of its own accounts and domains.
    """
    removed = 0
    for element in message.findall(STANZA_ID):
        by = element.get("by")
        if by is None or is_ours(by):
            message.remove(element)
            removed += 1
    return removed


def sanitize(message: etree._Element) -> None:
    """§3 rules 1, 5, 6: keep urn:xmpp:sid:0 children but drop foreign attributes and content.

    A <stanza-id/> without 'id' or 'by', or an <origin-id/> without 'id', is removed (it could
    not be used anyway).
    """
    for tag, allowed in ((STANZA_ID, ("id", "by")), (ORIGIN_ID, ("id",))):
        for element in message.findall(tag):
            if any(element.get(name) is None for name in allowed):
                message.remove(element)
                continue
            for name in list(element.attrib):
                if name not in allowed:
                    del element.attrib[name]
            for child in list(element):
                element.remove(child)
            element.text = None


def id_counter(id_: str) -> int | None:
    """The counter part of an id made by `SortableIds`, or None for any other string."""
    if len(id_) != ID_LENGTH:
        return None
    try:
        return int(id_[:COUNTER_DIGITS], 16)
    except ValueError:
        return None


class SortableIds:
    """Makes string-sortable unique ids; pure (the caller persists `last` to survive restarts).

    Args:
        floor: every id made has a counter above this (e.g. a persisted high-water mark).
        clock: unix time in seconds.
    """

    __slots__ = ("_clock", "_random", "last")

    def __init__(self, floor: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.last = floor
        self._clock = clock
        self._random: list[str] = []  # hex suffixes from one os.urandom call (a syscall each)

    def _suffix(self) -> str:
        if not self._random:
            block = os.urandom(_RANDOM_BATCH * RANDOM_DIGITS // 2).hex()
            self._random = [
                block[i : i + RANDOM_DIGITS] for i in range(0, len(block), RANDOM_DIGITS)
            ]
        return self._random.pop()

    def peek(self) -> int:
        """The counter the next id will have."""
        return max(int(self._clock() * 1_000_000), self.last + 1)

    def next(self) -> str:
        """A new id, greater (as a string) than every id made before by this generator.

        Raises:
            OverflowError: the counter space is exhausted (not before the year 4253).
        """
        counter = self.peek()
        if counter > _MAX_COUNTER:
            raise OverflowError("stanza id counter exhausted")
        self.last = counter
        return f"{counter:0{COUNTER_DIGITS}x}{self._suffix()}"


class LeasedIds:
    """`SortableIds` that keep increasing across restarts: the counter stays below a lease
    persisted in a key-value store (one write per `LEASE_US` of ids at most), and a restart
    resumes above the lease, even if the clock went back.

    `within_lease()` tells whether `next_now()` may be used without a write (the hot path);
    otherwise `await next()` extends the lease first.
    """

    LEASE_US = 60_000_000
    RENEW_MARGIN_US = 5_000_000

    __slots__ = ("_key", "_lease", "_renewing", "_store", "ids")

    def __init__(self, store: KeyValueStore, key: str = "lease") -> None:
        self._store = store
        self._key = key
        self._lease = 0
        self._renewing = asyncio.Lock()
        self.ids = SortableIds(0)

    async def load(self) -> None:
        """Resume above the persisted lease."""
        stored = await self._store.get("", self._key)
        floor = stored if isinstance(stored, int) and not isinstance(stored, bool) else 0
        self.ids = SortableIds(floor)
        self._lease = floor

    def within_lease(self) -> bool:
        """Whether the next id is safely below the persisted lease (no write needed)."""
        return self.ids.peek() + self.RENEW_MARGIN_US <= self._lease

    def next_now(self) -> str:
        """A new id; only after `within_lease()` said True."""
        return self.ids.next()

    async def next(self) -> str:
        """A new id; first extends the persisted lease when the counter comes near it."""
        while not self.within_lease():
            async with self._renewing:
                wanted = self.ids.peek() + self.RENEW_MARGIN_US
                if wanted > self._lease:
                    lease = wanted + self.LEASE_US
                    await self._store.set("", self._key, lease)
                    self._lease = lease
        return self.ids.next()
