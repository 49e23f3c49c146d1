"""XEP-0045: Multi-User Chat — chat rooms on conference.<host>, with occupant ids and archives.

The module serves a service subdomain (``<subdomain>.<host>``) and routes every stanza
addressed there to its `Room` (``room.py``, a pure state machine), then sends what the room
returns: broadcasts with one ``send_many`` each, single stanzas with ``send``. Persistent rooms
are saved on every change (``persistence.py``) and restored on load; temporary rooms vanish
when their last occupant leaves.

Each room incarnation (a room created anew, even under a name used before) has its own
archive, keyed by an incarnation id kept here (``self.incarnations``) and in the room's
record: a destroyed room's archive is deleted in the background and never served to a
successor; archives left behind (a crash, a temporary room) are deleted on the next start.

Also: XEP-0410 self-ping (answered by the room), XEP-0421 occupant ids, XEP-0249 direct
invitations (client to client: nothing here blocks them), XEP-0313 room archives through
``archive.py`` (when that module part is present), with XEP-0359 stanza ids on broadcasts.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxml import etree

from xmppd import events as ev
from xmppd.config import ConfigError
from xmppd.errors import StanzaError
from xmppd.features import Identity
from xmppd.jid import JID, JIDError
from xmppd.module_api import IqRequest, Module, ModuleContext, StoreKind
from xmppd.ns import NS_DISCO_INFO, NS_DISCO_ITEMS
from xmppd.stanza import error_reply, iq_result

from .config import RoomConfig, roominfo_form
from .persistence import (
    delete_room,
    forget_archive,
    load_rooms,
    new_incarnation,
    register_archive,
    registered_archives,
    save_room,
    service_secret,
)
from .room import (
    MAX_INVITES,
    NS_ADMIN,
    NS_FASTEN,
    NS_MODERATE,
    NS_MODERATE_0,
    NS_MUC,
    NS_OCCUPANT_ID,
    NS_OWNER,
    NS_PING,
    NS_RETRACT,
    NS_RETRACT_0,
    NS_SID,
    NS_USER,
    STANZA_ID,
    Limits,
    Result,
    Room,
)

if TYPE_CHECKING:
    from .archive import RoomArchive

try:  # the room archive is another part of this package; without it, archiving is off
    from . import archive as _archive_mod
except ImportError:  # pragma: no cover - depends on the tree
    _archive_mod = None  # type: ignore[assignment]

NS_UNIQUE = f"{NS_MUC}#unique"
MODERATE = f"{{{NS_MODERATE}}}moderate"
APPLY_TO = f"{{{NS_FASTEN}}}apply-to"
NS_MAM = "urn:xmpp:mam:2"
CREATE_POLICIES = ("local", "anyone")
EXPIRE_PERIOD = 3600.0  # seconds between archive expiry runs


class Muc(Module):
    """Multi-user chat service."""

    name = "muc"
    xeps = (45, 249, 410, 421, 425)
    host_types = ("local",)

    @dataclass(frozen=True)
    class Options:
        """Module options."""

        subdomain: str = "conference"  # the service is <subdomain>.<host>
        service_name: str = "Chatrooms"  # the service's disco identity name
        create_rooms: str = "local"  # who may create rooms: "local" accounts or "anyone"
        max_history: int = 100  # most messages of discussion history a room keeps
        max_history_bytes: int = 1 << 20  # serialized bytes of one room's discussion history
        default_history: int = 20  # history length of a new room
        max_occupants: int = 1000  # highest occupant limit an owner may configure
        default_max_occupants: int = 100  # occupant limit of a new room
        archive_max_age_days: int = 0  # room archive retention (0: keep forever)
        max_rooms_per_user: int = 100  # rooms one bare JID may have created (0: no limit)
        max_rooms: int = 10000  # rooms on the service; creating more is refused (0: no limit)
        max_affiliations: int = 10000  # affiliation list entries per room

    options: Options

    async def load(self) -> None:
        """Create the service host, restore persistent rooms, register handlers."""
        o = self.options
        if o.create_rooms not in CREATE_POLICIES:
            raise ConfigError(f"modules.muc.create_rooms must be one of {CREATE_POLICIES}")
        if not (0 <= o.default_history <= o.max_history and o.default_max_occupants >= 1):
            raise ConfigError("modules.muc: need 0 <= default_history <= max_history")
        if o.default_max_occupants > o.max_occupants:
            raise ConfigError("modules.muc: default_max_occupants exceeds max_occupants")
        if o.max_rooms_per_user < 0 or o.max_rooms < 0 or o.max_affiliations < 1:
            raise ConfigError(
                "modules.muc: need max_rooms_per_user >= 0, max_rooms >= 0, max_affiliations >= 1"
            )
        self.service: ModuleContext = self.ctx.service_context(o.subdomain)
        service = self.service
        self.domain = service.host.domain
        self.limits = Limits(
            max_history=o.max_history,
            max_users=o.max_occupants,
            max_affiliations=o.max_affiliations,
            max_history_bytes=o.max_history_bytes,
        )
        service.open_store("rooms", StoreKind.KEYVALUE)
        self.store = service.keyvalue("rooms")
        self.archive: RoomArchive | None = None
        if _archive_mod is not None:
            service.open_store("archive", StoreKind.ARCHIVE)
            self.archive = _archive_mod.RoomArchive(
                service.archive("archive"), max_age_days=o.archive_max_age_days
            )
            if o.archive_max_age_days > 0:
                service.every(EXPIRE_PERIOD, self._expire)
        self.secret = await service_secret(self.store)
        self.rooms: dict[str, Room] = {}
        self.incarnations: dict[str, str] = {}  # room local part -> archive incarnation id
        # archive deletions, done one at a time by one background task
        self._removals: deque[tuple[JID, str]] = deque()
        self._remover: asyncio.Task[None] | None = None
        self._archived: set[str] = set()  # incarnations whose archive may exist (noted)
        self.created: Counter[JID] = Counter()  # creator bare JID -> its rooms (that exist)
        for room, incarnation in await load_rooms(
            self.store, self.domain, self.secret, self.limits
        ):
            local = room.jid.local or ""
            room.archiving_available = self.archive is not None
            self.incarnations[local] = incarnation
            self._archived.add(incarnation)
            await self._refill(room)
            self.rooms[local] = room
            if room.creator is not None:
                self.created[room.creator] += 1
        live = set(self.incarnations.values())
        for jid, incarnation in await registered_archives(self.store):
            if incarnation not in live:  # its room is gone: a crash, or a temporary room
                self._remove_archive(jid, incarnation)

        service.add_identity(Identity("conference", "text", o.service_name))
        for var in (
            NS_MUC,
            f"{NS_MUC}#stable_id",  # §7.4: the client's message id is reflected
            NS_OCCUPANT_ID,  # XEP-0421 §3: every room gives occupant ids
            NS_DISCO_INFO,
            NS_DISCO_ITEMS,
            NS_UNIQUE,
            NS_PING,
        ):
            service.add_feature(var)
        service.add_iq_handler("get", f"{{{NS_DISCO_INFO}}}query", self.service_info)
        service.add_iq_handler("get", f"{{{NS_DISCO_ITEMS}}}query", self.service_items)
        service.add_iq_handler("get", f"{{{NS_PING}}}ping", self.service_ping)
        service.add_iq_handler("get", f"{{{NS_UNIQUE}}}unique", self.unique)
        service.hook(ev.PRESENCE_FULL, self.presence_full)
        service.hook(ev.PRESENCE_BARE, self.presence_bare)
        service.hook(ev.MESSAGE_BARE, self.message_bare)
        service.hook(ev.MESSAGE_FULL, self.message_full)
        service.hook(ev.IQ_BARE, self.iq_bare)
        service.hook(ev.IQ_FULL, self.iq_full)
        self.ctx.hook_notify(ev.STOPPING, self._shutdown)

    async def _shutdown(self, event: ev.Shutdown) -> None:
        """§15.6.2 status 332: occupants learn that the service goes down."""
        for room in list(self.rooms.values()):
            for out in room.shutdown().out:
                if out.recipients is None:
                    await self.service.send(out.element)
                elif out.recipients:  # an occupant with several sessions
                    await self.service.send_many(out.element, out.recipients)
        await self.cleaned()

    def _remove_archive(self, room: JID, incarnation: str) -> None:
        """Delete the archive of a gone room incarnation in the background (then forget it):
        queued, and done one at a time by a single task."""
        self._archived.discard(incarnation)
        if self.archive is None:
            return  # no archives here: keep the note for a start that has them
        self._removals.append((room, incarnation))
        if self._remover is None or self._remover.done():
            self._remover = asyncio.get_running_loop().create_task(self._remove_queued())

    async def _remove_queued(self) -> None:
        archive = self.archive
        while self._removals and archive is not None:
            room, incarnation = self._removals.popleft()
            try:
                await archive.remove(room, incarnation=incarnation)
                if incarnation:
                    await forget_archive(self.store, incarnation)
            except Exception:  # retried on the next start (the note stays)
                self.service.log.exception("deleting the archive of %s failed", room)

    async def cleaned(self) -> None:
        """Wait for the archive deletions under way (shutdown, tests)."""
        while self._remover is not None and not self._remover.done():
            await asyncio.gather(self._remover, return_exceptions=True)

    async def _expire(self) -> None:
        """Drop archived messages older than archive_max_age_days."""
        if self.archive is not None:
            await self.archive.expire()

    async def _refill(self, room: Room) -> None:
        """Discussion history from the archive after a restart."""
        if self.archive is None or not room.archiving or room.config.history_length <= 0:
            return
        try:
            entries = await self.archive.last(
                room.jid,
                room.config.history_length,
                incarnation=self.incarnations.get(room.jid.local or "", ""),
            )
        except Exception:
            self.service.log.exception("reading the history of %s failed", room.jid)
            return
        room.refill_history((element, when.timestamp()) for element, when in entries)

    # --- running a room's results ----------------------------------------------------------
    async def _run(self, room: Room, result: Result) -> None:
        """Archive, send, save and forget, as the room asked."""
        local = room.jid.local or ""
        current = self.rooms.get(local) is room
        incarnation = self.incarnations.get(local, "") if current else None
        if result.gone and current:
            self._forget(room)  # at once: nobody may enter it while the sends are awaited
        try:
            for out in result.out:
                element = out.element
                archive = self.archive
                if (
                    out.archive
                    and archive is not None
                    and incarnation is not None
                    and await self._noted(room, incarnation)
                ):
                    archive_id = archive.append(room.jid, element, incarnation=incarnation)
                    stamp = etree.SubElement(element, STANZA_ID, nsmap={None: NS_SID})
                    stamp.set("by", str(room.jid))
                    stamp.set("id", archive_id)
                if out.recipients is None:
                    await self.service.send(element)
                elif out.recipients:
                    await self.service.send_many(element, out.recipients)
        finally:  # a failed send must not leave the gone room's record and archive behind
            if result.gone and incarnation is not None:
                await self._gone(room, incarnation)
        if result.save and not result.gone and self.rooms.get(local) is room:
            await save_room(self.store, room, self.incarnations.get(local, ""))

    def _forget(self, room: Room) -> None:
        """Take a gone room out of the service (its creator may create another)."""
        local = room.jid.local or ""
        del self.rooms[local]
        del self.incarnations[local]
        creator = room.creator
        if creator is not None:
            self.created[creator] -= 1
            if self.created[creator] <= 0:
                del self.created[creator]

    async def _noted(self, room: Room, incarnation: str) -> bool:
        """Whether messages of this incarnation may be archived: its archive is noted (for
        deletion if orphaned) at its first archived message. A failure is logged: the message
        goes out, unarchived."""
        if incarnation in self._archived:
            return True
        try:
            await register_archive(self.store, room.jid, incarnation)
        except Exception:
            self.service.log.exception("noting the archive of %s failed", room.jid)
            return False
        if self.incarnations.get(room.jid.local or "") != incarnation:
            self._remove_archive(room.jid, incarnation)  # gone meanwhile: forget the note
            return False
        self._archived.add(incarnation)
        return True

    async def _gone(self, room: Room, incarnation: str) -> None:
        """Delete a gone room's record and (in the background) its archive, if it has one."""
        local = room.jid.local or ""
        successor = self.rooms.get(local)
        try:
            if successor is not None:  # a new room of that name: its record, not the old one
                await save_room(self.store, successor, self.incarnations.get(local, ""))
            else:
                await delete_room(self.store, room.jid)
        finally:
            if not incarnation or incarnation in self._archived:
                self._remove_archive(room.jid, incarnation)

    def _room(self, to: JID) -> Room:
        room = self.rooms.get(to.local or "")
        if room is None:
            raise StanzaError("item-not-found", "no such room")
        return room

    def _addressed(self, event: ev.StanzaEvent, *quiet: str) -> Room | None:
        """The room a stanza is addressed to; None (dropped) when there is none and the
        stanza's type is one of `quiet` (errors and results are never answered)."""
        if event.stanza.type in quiet and (event.to.local or "") not in self.rooms:
            return None
        return self._room(event.to)

    async def _may_create(self, jid: JID) -> bool:
        if self.options.create_rooms == "anyone":
            return True
        return jid.domain == self.ctx.host.domain

    # --- presence --------------------------------------------------------------------------
    async def presence_full(self, event: ev.StanzaEvent) -> bool:
        """Presence to room/nick: enter, change nick, update, leave (§7)."""
        stanza = event.stanza
        to = event.to
        nick = to.resource or ""
        room = self.rooms.get(to.local or "")
        if room is None:
            if stanza.type is not None:
                return True  # nothing to leave; errors and probes are dropped
            if not await self._may_create(stanza.from_):
                raise StanzaError("not-allowed", "you may not create rooms here")
            self._check_room_limits(stanza.from_)
            room = self._new_room(to, stanza.from_)
            result = room.presence(stanza.element, stanza.from_, nick, time.time())
            incarnation = new_incarnation()  # its archive is noted at its first message
            local = to.local or ""
            self.rooms[local] = room
            self.incarnations[local] = incarnation
            if room.creator is not None:
                self.created[room.creator] += 1
            await self._run(room, result)
            return True
        await self._run(room, room.presence(stanza.element, stanza.from_, nick, time.time()))
        return True

    def _check_room_limits(self, creator: JID) -> None:
        """§10.1.1: creating a room is not-allowed past max_rooms on the service, or past
        max_rooms_per_user rooms created by `creator` (whoever owns them now)."""
        o = self.options
        if 0 < o.max_rooms <= len(self.rooms):
            raise StanzaError("not-allowed", "this service has too many rooms")
        if 0 < o.max_rooms_per_user <= self.created[creator.bare]:
            raise StanzaError("not-allowed", "you have created too many rooms here")

    def _new_room(self, jid: JID, creator: JID) -> Room:
        o = self.options
        config = RoomConfig(
            history_length=o.default_history,
            max_users=o.default_max_occupants,
        )
        room = Room(jid, config, self.secret, limits=self.limits, locked=True)
        room.archiving_available = self.archive is not None
        room.affiliations[creator.bare] = "owner"
        room.creator = creator.bare
        return room

    async def presence_bare(self, event: ev.StanzaEvent) -> bool:
        """Presence to the room's bare JID: an error from an occupant removes it (333);
        entering needs a nickname (§7.2.1: jid-malformed)."""
        stanza = event.stanza
        room = self.rooms.get(event.to.local or "")
        if stanza.type == "error":
            if room is not None and stanza.from_ in room.by_jid:
                await self._run(room, room.presence(stanza.element, stanza.from_, "", 0.0))
            return True
        if stanza.type is None:
            raise StanzaError("jid-malformed", "enter a room as room@service/nickname")
        return True

    # --- messages --------------------------------------------------------------------------
    async def message_bare(self, event: ev.StanzaEvent) -> bool:
        """A message to the room: groupchat, subject, invitations (§7.4, §7.8, §8.1)."""
        stanza = event.stanza
        room = self._addressed(event, "error")
        if room is None:
            return True
        if stanza.type != "groupchat" and stanza.from_ in room.by_jid:
            await self._check_invitees(stanza.element)
            if self.rooms.get(event.to.local or "") is not room:
                raise StanzaError("item-not-found", "no such room")  # removed meanwhile
        await self._run(room, room.message(stanza.element, stanza.from_, time.time()))
        return True

    async def _check_invitees(self, element: etree._Element) -> None:
        """§7.8.2 SHOULD: an invitation to an account of this server that does not exist is
        refused with item-not-found (remote JIDs cannot be checked here). A batch over
        MAX_INVITES is refused (as the room would) before any lookup."""
        services = self.ctx.services
        invites = element.findall(f"{{{NS_USER}}}x/{{{NS_USER}}}invite")
        declines = element.findall(f"{{{NS_USER}}}x/{{{NS_USER}}}decline")
        if len(invites) + len(declines) > MAX_INVITES:
            raise StanzaError("policy-violation", "too many invitations at once")
        for invite in invites:
            try:
                invitee = JID.parse(invite.get("to") or "")
            except JIDError:
                continue  # the room answers jid-malformed
            local = invitee.domain in services.local_domains and invitee.local is not None
            if local and not await services.account_exists(invitee.domain, invitee.local or ""):
                raise StanzaError("item-not-found", f"{invitee.bare} does not exist")

    async def message_full(self, event: ev.StanzaEvent) -> bool:
        """A private message to room/nick (§7.5)."""
        stanza = event.stanza
        room = self._addressed(event, "error")
        if room is None:
            return True
        nick = event.to.resource or ""
        await self._run(room, room.private_message(stanza.element, stanza.from_, nick))
        return True

    # --- IQs -------------------------------------------------------------------------------
    async def iq_full(self, event: ev.StanzaEvent) -> bool:
        """An IQ to room/nick: self-ping answered, others forwarded (§7.5, XEP-0410)."""
        stanza = event.stanza
        room = self._addressed(event, "result", "error")
        if room is None:
            return True
        result = room.occupant_iq(stanza.element, stanza.from_, event.to.resource or "")
        await self._run(room, result)
        return True

    async def iq_bare(self, event: ev.StanzaEvent) -> bool:
        """An IQ to the room: disco, muc#admin, muc#owner, ping, MAM."""
        stanza = event.stanza
        if stanza.type in ("result", "error"):
            return True
        room = self._room(event.to)
        element = stanza.element
        payload = element[0]
        tag = payload.tag
        from_ = stanza.from_
        type_ = stanza.type
        if tag == f"{{{NS_ADMIN}}}query":
            result = (
                room.admin_get(element, from_) if type_ == "get" else room.admin_set(element, from_)
            )
        elif tag == f"{{{NS_OWNER}}}query":
            result = (
                room.owner_get(element, from_) if type_ == "get" else room.owner_set(element, from_)
            )
        elif tag == f"{{{NS_DISCO_INFO}}}query" and type_ == "get":
            await self.service.send(iq_result(element, self._room_info(room, payload)))
            return True
        elif tag == f"{{{NS_DISCO_ITEMS}}}query" and type_ == "get":
            if payload.get("node"):
                raise StanzaError("item-not-found")
            items = etree.Element(f"{{{NS_DISCO_ITEMS}}}query", nsmap={None: NS_DISCO_ITEMS})
            await self.service.send(iq_result(element, items))  # §6.5: occupants stay private
            return True
        elif tag == f"{{{NS_PING}}}ping" and type_ == "get":
            await self.service.send(iq_result(element, None))
            return True
        elif tag in (MODERATE, APPLY_TO) and type_ == "set":
            await self._moderate(room, element, payload, from_)
            return True
        elif etree.QName(payload).namespace == NS_MAM:
            await self._mam(room, stanza.element, from_)
            return True
        else:
            raise StanzaError("service-unavailable")
        await self._run(room, result)
        return True

    async def _mam(self, room: Room, element: etree._Element, from_: JID) -> None:
        """XEP-0313 on the room: for those who may read its history."""
        if self.archive is None or not room.archiving:
            raise StanzaError("service-unavailable", "this room is not archived")
        if not room.may_read_archive(from_):
            raise StanzaError("forbidden", "you may not read this room's archive")
        incarnation = self.incarnations.get(room.jid.local or "", "")
        try:
            payload = await self.archive.query(
                room.jid, element, self.service.send, incarnation=incarnation
            )
        except StanzaError as err:
            await self.service.send(error_reply(element, err))
            return
        await self.service.send(iq_result(element, payload))

    async def _moderate(
        self, room: Room, element: etree._Element, payload: etree._Element, from_: JID
    ) -> None:
        """XEP-0425: a moderator retracts a groupchat message (0.3.0, or 0.2 <apply-to/>)."""
        moderator = room.moderator(from_)
        legacy = payload.tag == APPLY_TO
        target = payload.get("id") or ""
        if legacy:
            moderate = payload.find(f"{{{NS_MODERATE_0}}}moderate")
            if moderate is None or moderate.find(f"{{{NS_RETRACT_0}}}retract") is None:
                raise StanzaError("feature-not-implemented", "only retractions are supported")
            reason = moderate.findtext(f"{{{NS_MODERATE_0}}}reason")
        else:
            if payload.find(f"{{{NS_RETRACT}}}retract") is None:
                raise StanzaError("feature-not-implemented", "only retractions are supported")
            reason = payload.findtext(f"{{{NS_MODERATE}}}reason")
        if not target:
            raise StanzaError("bad-request", "which message? (its stanza id)")
        original = room.history_message(target)
        incarnation = self.incarnations.get(room.jid.local or "", "")
        if self.archive is not None and _archive_mod is not None:
            item = await self.archive.find(room.jid, target, incarnation=incarnation)
            if item is not None and original is None:
                original = etree.fromstring(item.value.encode())
            if original is not None:
                tombstone = _archive_mod.make_tombstone(
                    original,
                    f"{room.jid}/{moderator.nick}",
                    moderator_occupant_id=moderator.occupant_id,
                    reason=reason,
                )
                await self.archive.retract(room.jid, target, tombstone, incarnation=incarnation)
        if original is None or self.rooms.get(room.jid.local or "") is not room:
            raise StanzaError("item-not-found", "no such message")  # or the room went meanwhile
        await self.service.send(iq_result(element, None))
        await self._run(room, room.retracted(moderator, target, reason, legacy=legacy))

    def _room_info(self, room: Room, query: etree._Element) -> etree._Element:
        if query.get("node"):
            raise StanzaError("item-not-found")
        answer = etree.Element(f"{{{NS_DISCO_INFO}}}query", nsmap={None: NS_DISCO_INFO})
        identity = etree.SubElement(answer, f"{{{NS_DISCO_INFO}}}identity")
        identity.set("category", "conference")
        identity.set("type", "text")
        identity.set("name", room.config.name or (room.jid.local or ""))
        features = {NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, *room.features()}
        if room.archiving and self.archive is not None:
            features.update(self.archive.features)
        for var in sorted(features):
            etree.SubElement(answer, f"{{{NS_DISCO_INFO}}}feature", var=var)
        answer.append(roominfo_form(room.config, len(room.occupants), room.subject))
        return answer

    # --- the service JID -------------------------------------------------------------------
    async def service_info(self, request: IqRequest) -> etree._Element:
        """§6.2: the service's identity and features."""
        if request.payload.get("node"):
            raise StanzaError("item-not-found")
        registry = self.service.host.features
        query = etree.Element(f"{{{NS_DISCO_INFO}}}query", nsmap={None: NS_DISCO_INFO})
        for identity in registry.identities():
            element = etree.SubElement(query, f"{{{NS_DISCO_INFO}}}identity")
            element.set("category", identity.category)
            element.set("type", identity.type)
            if identity.name:
                element.set("name", identity.name)
        for var in registry.features():
            etree.SubElement(query, f"{{{NS_DISCO_INFO}}}feature", var=var)
        return query

    async def service_items(self, request: IqRequest) -> etree._Element:
        """§6.3: public rooms (locked and hidden ones are not listed)."""
        if request.payload.get("node"):
            raise StanzaError("item-not-found")
        query = etree.Element(f"{{{NS_DISCO_ITEMS}}}query", nsmap={None: NS_DISCO_ITEMS})
        for local in sorted(self.rooms):
            room = self.rooms[local]
            if room.locked or not room.config.public:
                continue
            item = etree.SubElement(query, f"{{{NS_DISCO_ITEMS}}}item", jid=str(room.jid))
            item.set("name", room.config.name or local)
        return query

    async def service_ping(self, request: IqRequest) -> None:
        """XEP-0199 on the service JID."""
        return None

    async def unique(self, request: IqRequest) -> etree._Element:
        """§10.1.4: a room name no room has."""
        while True:
            name = secrets.token_hex(8)
            if name not in self.rooms:
                break
        element = etree.Element(f"{{{NS_UNIQUE}}}unique", nsmap={None: NS_UNIQUE})
        element.text = name
        return element

    # --- administration --------------------------------------------------------------------
    def room(self, name: str) -> Room | None:
        """A live room by local part (tests, administration)."""
        return self.rooms.get(name)
