"""XEP-0313: Message Archive Management — MUC room archives, with XEP-0425 tombstones.

One archive per room incarnation in one `ArchiveStore`: the owner key is the room's bare JID
plus the incarnation id MUC made when it created the room ("<room> <id>"; a space is in no
JID), so a room re-created under the same name never reads its predecessor's archive, which
MUC deletes in the background. Incarnation "" is the key of archives made before incarnations
(the bare JID). MUC decides what is archived and who may query; this class stores, pages and
answers. The query machinery is `xmppd.lib.mam`, shared with the user archives.

- Entries: the groupchat message as broadcast ('from' = room@service/nick, no 'to', any
  XEP-0421 <occupant-id/>, no muc#user <x/>: XEP-0313 §"MUC message spoofing"), filed under
  its 'from' (the occupant JID), with a XEP-0359 id made here (string-sortable,
  unpredictable) that MUC stamps as <stanza-id by='room'/>: the archive id.
- 'with' (§"Filtering by JID"): the room's bare JID matches everything, an occupant JID
  (room@service/nick) that nick's messages, through the store's own filter (an archive of
  incarnation "" may hold entries filed under the bare JID: there the stored messages are
  read, within `xmppd.lib.mam.MAX_SCAN` rows a query). Real JIDs are never stored here, so
  'with' cannot reveal one in a semi-anonymous room.
- Results come from the room's bare JID, forwarded with a <delay/> of the archiving time;
  <fin/> with complete and RSM first/last/count as for user archives.
- XEP-0425 moderation: the store has no in-place update, so a retraction writes the tombstone
  to a side log of the room (same id, same time) that queries and `last` read instead of the
  original; the original is never served again, but its text stays on disk until it
  expires or the room is destroyed (erasing it needs an ``ArchiveStore.replace``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import ClassVar

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.jid import JID
from xmppd.lib.delay import format_stamp
from xmppd.lib.mam import (
    NS_MAM,
    NS_MAM_EXTENDED,
    build_fin,
    find_page,
    parse_query,
    parse_stored,
    query_form,
    read_metadata,
    result_message,
    sent_order,
)
from xmppd.lib.stanza_id import NS_SID, SortableIds
from xmppd.ns import NS_CLIENT
from xmppd.storage import ArchiveItem, ArchiveStore, StorageError
from xmppd.stream.serializer import serialize

__all__ = [
    "NS_MAM",
    "NS_MODERATE",
    "NS_OCCUPANT_ID",
    "NS_RETRACT",
    "RoomArchive",
    "archive_key",
    "make_tombstone",
]

NS_MODERATE = "urn:xmpp:message-moderate:1"
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
OCCUPANT_ID = f"{{{NS_OCCUPANT_ID}}}occupant-id"
RETRACTED = f"{{{NS_RETRACT}}}retracted"
MUC_USER_X = "{http://jabber.org/protocol/muc#user}x"
BODY = f"{{{NS_CLIENT}}}body"
_TOMBSTONE_SUFFIX = " retracted"  # a space is in no JID: no room owns this log
_log = logging.getLogger(__name__)


def _tombstones_of(room: str) -> str:
    return room + _TOMBSTONE_SUFFIX


def make_tombstone(
    original: etree._Element,
    moderator: JID | str,
    *,
    moderator_occupant_id: str | None = None,
    reason: str | None = None,
    when: float | None = None,
) -> etree._Element:
    """XEP-0425 §"Tombstones": the archived `original` without its content: its 'from',
    'type', 'id' and <occupant-id/> kept, plus <retracted stamp xmlns='urn:xmpp:message-retract:1'>
    <moderated by=`moderator`><occupant-id/></moderated><reason/></retracted>."""
    tombstone = etree.Element(f"{{{NS_CLIENT}}}message", nsmap={None: NS_CLIENT})
    for name in ("from", "type", "id"):
        value = original.get(name)
        if value is not None:
            tombstone.set(name, value)
    author = original.find(OCCUPANT_ID)
    if author is not None:
        tombstone.append(copy.copy(author))
    retracted = etree.SubElement(tombstone, RETRACTED, nsmap={None: NS_RETRACT})
    retracted.set("stamp", format_stamp(time.time() if when is None else when))
    moderated = etree.SubElement(
        retracted, f"{{{NS_MODERATE}}}moderated", nsmap={None: NS_MODERATE}
    )
    moderated.set("by", str(moderator))
    if moderator_occupant_id is not None:
        occupant = etree.SubElement(moderated, OCCUPANT_ID, nsmap={None: NS_OCCUPANT_ID})
        occupant.set("id", moderator_occupant_id)
    if reason:
        etree.SubElement(retracted, f"{{{NS_RETRACT}}}reason").text = reason
    return tombstone


def _as_archived(message: etree._Element) -> etree._Element:
    """The message as archived: no 'to' (each copy's recipient differs, and §"MUC archives"
    forwards none) and no <x xmlns='…muc#user'/> (§"MUC message spoofing": MUST strip)."""
    spoofable = message.findall(MUC_USER_X)
    if message.get("to") is None and not spoofable:
        return message
    stored = copy.copy(message)
    stored.attrib.pop("to", None)
    for x in stored.findall(MUC_USER_X):
        stored.remove(x)
    return stored


def archive_key(room: JID, incarnation: str = "") -> str:
    """The store owner key of the archive of `room`'s incarnation `incarnation`."""
    bare = str(room.bare)
    return f"{bare} {incarnation}" if incarnation else bare


class RoomArchive:
    """XEP-0313 archives of MUC rooms (one archive per room bare JID) on one ArchiveStore."""

    features: ClassVar[tuple[str, ...]] = (NS_MAM, NS_MAM_EXTENDED, NS_SID)

    def __init__(
        self,
        store: ArchiveStore,
        *,
        max_age_days: int = 0,
        page_size: int = 50,
        max_page_size: int = 250,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        if max_age_days < 0 or page_size < 1 or max_page_size < page_size:
            raise ValueError("need max_age_days >= 0 and 1 <= page_size <= max_page_size")
        self.store = store
        self.max_age_days = max_age_days
        self.page_size = page_size
        self.max_page_size = max_page_size
        self.log = log or _log
        self._ids = SortableIds()
        self._pending: asyncio.Future[str] | None = None  # the last write issued

    # --- writing -------------------------------------------------------------------------
    def append(self, room: JID, message: etree._Element, *, incarnation: str = "") -> str:
        """Archive a groupchat message as broadcast: 'from' = room@service/nick, type
        groupchat, no 'to', carrying any <occupant-id/>. Synchronous (append_nowait): returns
        the archive id, which MUC adds as <stanza-id xmlns='urn:xmpp:sid:0' by='room@service'
        id='...'/> before broadcasting. The write is covered by commit_barrier like user
        archives.

        A storage failure is logged: the message goes out, unarchived.
        """
        owner = archive_key(room, incarnation)
        id_ = self._ids.next()
        text = serialize(_as_archived(message)).decode()
        sender = message.get("from") or str(room.bare)
        try:
            future = self.store.append_nowait(owner, text, with_jid=sender, id=id_)
        except StorageError:
            self.log.exception("archiving a message of %s failed", owner)
            return id_
        future.add_done_callback(self._written)
        self._pending = future
        return id_

    def _written(self, future: asyncio.Future[str]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.log.error("archiving a room message failed: %s", future.exception())

    async def settled(self) -> None:
        """Wait for the writes issued so far (they commit in order: the last one is enough)."""
        pending = self._pending
        if pending is not None and not pending.done():
            with contextlib.suppress(StorageError, asyncio.CancelledError):
                await asyncio.shield(pending)

    async def find(
        self, room: JID, archive_id: str, *, incarnation: str = ""
    ) -> ArchiveItem | None:
        """The archived entry `archive_id` of the room (None if there is none)."""
        await self.settled()
        return await self.store.find(archive_key(room, incarnation), archive_id)

    async def retract(
        self,
        room: JID,
        archive_id: str,
        tombstone: etree._Element,
        *,
        incarnation: str = "",
    ) -> bool:
        """XEP-0425 moderation: replace the archived message `archive_id` by `tombstone` (a message
        element without body, carrying the <retracted/> marker); False if no such message.

        A message retracted before keeps its first tombstone (True). Any <body/> left in
        `tombstone` is dropped, so the content cannot leak through it.
        """
        owner = archive_key(room, incarnation)
        await self.settled()
        item = await self.store.find(owner, archive_id)
        if item is None:
            return False
        side = _tombstones_of(owner)
        if await self.store.find(side, archive_id) is not None:
            return True
        stored = copy.copy(_as_archived(tombstone))  # a copy even when nothing was stripped
        for body in stored.findall(f"{{{NS_CLIENT}}}body"):
            stored.remove(body)
        await self.store.append(
            side, serialize(stored).decode(), with_jid=owner, when=item.when, id=archive_id
        )
        return True

    async def remove(self, room: JID, *, incarnation: str = "") -> None:
        """Delete the archive of a room incarnation (and its tombstones)."""
        owner = archive_key(room, incarnation)
        await self.settled()
        for user in (owner, _tombstones_of(owner)):
            await self.store.delete_user(user)

    async def expire(self) -> int:
        """Remove entries older than ``max_age_days`` in every room (0: keep them forever);
        MUC runs it from a timer. Returns the number removed."""
        if self.max_age_days <= 0:
            return 0
        return await self.store.expire(time.time() - self.max_age_days * 86400)

    # --- reading -------------------------------------------------------------------------
    async def _with_tombstones(self, owner: str, items: Sequence[ArchiveItem]) -> list[ArchiveItem]:
        """`items` with every retracted entry replaced by its tombstone (same key, id, time)."""
        ids = [item.id for item in items if item.id is not None]
        if not ids:
            return list(items)
        found = await self.store.items(_tombstones_of(owner), ids=ids)
        if not found:
            return list(items)
        tombstones = {item.id: item.value for item in found}
        return [
            item
            if item.id not in tombstones
            else ArchiveItem(item.key, item.when, item.with_jid, tombstones[item.id], item.id)
            for item in items
        ]

    async def query(
        self,
        room: JID,
        iq: etree._Element,
        send: Callable[[etree._Element], Awaitable[None]],
        *,
        incarnation: str = "",
    ) -> etree._Element | None:
        """Answer an IQ addressed to the room's bare JID in urn:xmpp:mam:2.

        'set' <query/>: results sent with `send` as <message to=iq@from><result queryid id>
        <forwarded><delay/><message .../></forwarded></result></message>, returns the <fin/>
        payload; 'get' <query/> returns the form; 'get' <metadata/> returns metadata. Access
        control is MUC's job (it only calls this for entities allowed to read the room's
        history); raises StanzaError for bad requests."""
        payload = next((child for child in iq if isinstance(child.tag, str)), None)
        if payload is None or etree.QName(payload).namespace != NS_MAM:
            raise StanzaError("bad-request", "expected a urn:xmpp:mam:2 payload")
        name = etree.QName(payload).localname
        type_ = iq.get("type")
        owner = archive_key(room, incarnation)
        if type_ == "get" and name == "query":
            return query_form()
        if type_ == "get" and name == "metadata":
            await self.settled()
            return await read_metadata(self.store, owner)
        if type_ != "set" or name != "query":
            raise StanzaError("feature-not-implemented", f"no {type_} <{name}/> in {NS_MAM}")
        requester = iq.get("from")
        if not requester:
            raise StanzaError("bad-request", "a query needs a 'from' to send results to")
        query = parse_query(payload)
        await self.settled()
        bare = room.bare

        def filing(with_jid: JID) -> tuple[str | None, bool]:
            if with_jid == bare:
                return None, False
            if with_jid.bare == bare and not incarnation:  # may hold entries filed by bare JID
                return None, True
            return str(with_jid), False

        page = await find_page(
            self.store,
            owner,
            query,
            page_size=self.page_size,
            max_page_size=self.max_page_size,
            filing=filing,
        )
        page = dataclasses.replace(page, items=await self._with_tombstones(owner, page.items))
        to = JID.parse(requester)
        for item in sent_order(page, query):
            await send(result_message(item, query.queryid, room.bare, to, self.log))
        return build_fin(page)

    async def last(
        self, room: JID, count: int, *, incarnation: str = ""
    ) -> list[tuple[etree._Element, datetime]]:
        """The newest `count` archived messages of the room, oldest first, with their timestamps
        (MUC refills its in-memory discussion history from this after a restart).

        Only messages with a <body/> count: subject changes are archived (XEP-0313 §"MUC
        archives") but are not discussion history (XEP-0045 §7.2.13). Retracted messages are
        left out (XEP-0425 §"Business Rules": no further distribution); so are entries that
        cannot be read.
        """
        owner = archive_key(room, incarnation)
        found: list[tuple[etree._Element, datetime]] = []
        if count <= 0:
            return found
        await self.settled()
        before: str | None = None
        while len(found) < count:
            batch = await self.store.items(owner, before=before, limit=count, reverse=True)
            if not batch:
                break
            retracted = {
                item.id
                for item in await self.store.items(
                    _tombstones_of(owner), ids=[i.id for i in batch if i.id is not None]
                )
            }
            for item in batch:
                if item.id in retracted:
                    continue
                element = parse_stored(item)
                if element is None:
                    self.log.error("archived message %s of %s is unreadable", item.key, owner)
                    continue
                if element.find(BODY) is None:
                    continue
                found.append((element, datetime.fromtimestamp(item.when, UTC)))
                if len(found) == count:
                    break
            if len(batch) < count:
                break
            before = batch[-1].key
        found.reverse()
        return found
