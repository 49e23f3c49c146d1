"""XEP-0313: Message Archive Management — archive one-to-one messages per account; RSM queries.

What is archived (XEP-0313 §"Business rules", user archives): messages of type chat or normal
that carry a <body/> (or the XEP-0334 <store/> hint), both those an account receives and those
it sends, once each; never errors, groupchat or headline messages, and never a message with
the XEP-0334 <no-store/> or <no-permanent-store/> hint. The archive id is a XEP-0359 stanza id:

- received: the id `xeps.stanza_id` stamped for the account (``by`` = its bare JID), so the
  live copy, carbon copies and the archive agree;
- sent: an id from this module's own `LeasedIds` (with a persisted lease, so ids keep
  increasing across restarts). Its clients learn it through the sent carbon, which carries
  ``<stanza-id by='account'/>`` (§"Communicating the archive ID": SHOULD, as a child of the
  forwarded message); the copy routed to the recipient never does (MUST NOT).

Durability: the archive write is issued synchronously while the message is routed
(`ArchiveStore.append_nowait`), so `Storage.barrier` — what stream management waits for
before acking — covers it. Only a preference of 'roster' or an id lease renewal makes the
hook await (a roster lookup, a lease write) before issuing it, still inside routing.

Queries (IQ set <query/> to the account's bare JID, the account only): XEP-0004 form fields
with, start, end and (#extended) before-id, after-id, ids; XEP-0059 paging (max, after,
before, empty before = last page, index) with <first index/>, <last/>, <count/>; <flip-page/>.
Also the form (IQ get <query/>), archive metadata (IQ get <metadata/>) and XEP-0441
preferences (<prefs/>, kept in memory for the hot path and persisted). Old entries go after
``max_age_days`` (0 keeps them forever). The query machinery (form, paging, result messages,
<fin/>) is `xmppd.lib.mam`, shared with the MUC room archives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass

from lxml import etree

from xmppd.config import ConfigError
from xmppd.errors import StanzaError
from xmppd.events import (
    ACCOUNT_REMOVED,
    MESSAGE_BARE,
    MESSAGE_FULL,
    PRE_MESSAGE,
    ROSTER_QUERY,
    AccountRemoved,
    Priority,
    RosterQuery,
    StanzaEvent,
)
from xmppd.jid import JID, JIDError
from xmppd.lib.hints import BODY, NS_HINTS
from xmppd.lib.mam import (
    NS_MAM,
    NS_MAM_EXTENDED,
    build_fin,
    find_page,
    parse_query,
    query_form,
    read_metadata,
    result_message,
    sent_order,
)
from xmppd.lib.stanza_id import STANZA_ID, LeasedIds, stamp_stanza_id
from xmppd.module_api import IqRequest, Module, StoreKind, Target, hook, iq_handler
from xmppd.storage import JsonValue, StorageError
from xmppd.stream.serializer import serialize

__all__ = ["NS_MAM", "NS_MAM_EXTENDED", "Mam", "Prefs"]

PREFS_DEFAULTS = ("always", "never", "roster")

# Incoming: after stanza-id stamping (FIRST+100), blocking (FIRST) and forged-carbon removal
# (FIRST+50); before carbons (LOW), deliver-to-all-resources (LOW) and core delivery.
INCOMING_PRIORITY = Priority.LOW + 100
# Outgoing: after blocking and stanza-id policing; before carbons copies the sent message
# (LOW), so the sent carbon carries the archive id; the id leaves the routed copy at UNTAG.
OUTGOING_PRIORITY = Priority.NORMAL
UNTAG_PRIORITY = Priority.LOW - 100

MAX_JIDS = 1000  # JIDs in one <always/> or <never/> list
_ARCHIVED_TYPES = frozenset({"chat", "normal"})
_NO_STORE = frozenset({f"{{{NS_HINTS}}}no-store", f"{{{NS_HINTS}}}no-permanent-store"})
_CONTENT = frozenset({BODY, f"{{{NS_HINTS}}}store"})


def scan(element: etree._Element, by: str | None) -> tuple[bool, str | None]:
    """One pass over the children: whether the message is worth archiving (a <body/> or the
    <store/> hint, and no no-store hint), and the stanza id stamped ``by`` (if given)."""
    content = False
    stamped = None
    for child in element:
        tag = child.tag
        if tag in _CONTENT:
            content = True
        elif tag in _NO_STORE:
            return False, None
        elif by is not None and tag == STANZA_ID and stamped is None and child.get("by") == by:
            stamped = child.get("id")
    return content, stamped


@dataclass(frozen=True, slots=True)
class Prefs:
    """XEP-0441 archiving preferences of one account."""

    default: str
    always: frozenset[JID] = frozenset()
    never: frozenset[JID] = frozenset()

    def verdict(self, peer: JID) -> bool | None:
        """Archive with `peer`? None: it depends on the roster (default 'roster').

        XEP-0441 §"JID matching": a listed bare JID matches any resource; 'never' wins.
        """
        if self.never or self.always:  # most accounts list nobody: no JID hashing then
            bare = peer.bare
            if peer in self.never or bare in self.never:
                return False
            if peer in self.always or bare in self.always:
                return True
        if self.default == "always":
            return True
        if self.default == "never":
            return False
        return None

    def to_json(self) -> JsonValue:
        """The stored form."""
        return {
            "default": self.default,
            "always": [str(jid) for jid in sorted(map(str, self.always))],
            "never": [str(jid) for jid in sorted(map(str, self.never))],
        }

    @classmethod
    def from_json(cls, value: object, fallback: str) -> Prefs:
        """Read the stored form (anything unreadable gives the server default)."""
        if not isinstance(value, dict):
            return cls(fallback)
        default = value.get("default")
        return cls(
            default if isinstance(default, str) and default in PREFS_DEFAULTS else fallback,
            _jids(value.get("always")),
            _jids(value.get("never")),
        )


def _jids(value: object) -> frozenset[JID]:
    found = set()
    if isinstance(value, list):
        for text in value:
            try:
                found.add(JID.parse(str(text)))
            except JIDError:
                continue
    return frozenset(found)


class Mam(Module):
    """Message Archive Management for local accounts."""

    xeps = (313, 59, 441)
    account_features = (NS_MAM, NS_MAM_EXTENDED)
    depends = ("stanza_id", "roster")
    stores = {"mam": StoreKind.ARCHIVE, "mam_prefs": StoreKind.KEYVALUE}

    @dataclass(frozen=True)
    class Options:
        """Module options."""

        default: str = "always"  # archiving for accounts without preferences: always|never|roster
        max_age_days: int = 0  # entries older than this are removed; 0 keeps them forever
        expire_interval: int = 3600  # seconds between two expiry runs
        page_size: int = 50  # results per query when the client gives no RSM <max/>
        max_page_size: int = 250  # results per query at most (a larger <max/> is capped)

    async def load(self) -> None:
        """Read every account's preferences and the id lease; start the expiry job."""
        self._sent: tuple[etree._Element, str] | None = None  # the last outgoing archived
        options = self.options
        if options.default not in PREFS_DEFAULTS:
            raise ConfigError(f"modules.mam.default must be one of {', '.join(PREFS_DEFAULTS)}")
        if options.page_size < 1 or options.max_page_size < options.page_size:
            raise ConfigError("modules.mam: need 1 <= page_size <= max_page_size")
        if options.max_age_days < 0 or options.expire_interval < 1:
            raise ConfigError("modules.mam: max_age_days >= 0 and expire_interval >= 1")
        self.store = self.ctx.archive("mam")
        self._kv = self.ctx.keyvalue("mam_prefs")
        self._server_prefs = Prefs(options.default)
        self._prefs: dict[str, Prefs] = {}
        for user in await self._kv.users():
            if user:
                self._prefs[user] = Prefs.from_json(
                    await self._kv.get(user, "prefs"), options.default
                )
        self.ids = LeasedIds(self._kv)  # its own ids, for the sender's archive
        await self.ids.load()
        if options.max_age_days > 0:
            self.ctx.every(options.expire_interval, self.expire)

    async def expire(self) -> None:
        """Remove entries older than ``max_age_days`` (the oldest ones: no holes, §3.2)."""
        days = self.options.max_age_days
        if days > 0:
            removed = await self.store.expire(time.time() - days * 86400)
            if removed:
                self.ctx.log.info("expired %d archived messages", removed)

    @hook(ACCOUNT_REMOVED)
    async def forget(self, event: AccountRemoved) -> None:
        """The account's stores are deleted by the server; drop its cached preferences."""
        if event.jid.local is not None:
            self._prefs.pop(event.jid.local, None)

    # --- archiving -----------------------------------------------------------------------
    def _write(self, user: str, text: str, peer: JID, id_: str) -> None:
        """Issue the archive write now (queued for the next group commit)."""
        try:
            future = self.store.append_nowait(user, text, with_jid=str(peer.bare), id=id_)
        except StorageError:
            self.ctx.log.exception("archiving a message for %s failed", user)
            return
        future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[str]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.ctx.log.error("archiving a message failed: %s", future.exception())

    def _verdict(self, user: str, peer: JID) -> bool | None:
        return self._prefs.get(user, self._server_prefs).verdict(peer)

    async def _in_roster(self, account: JID, peer: JID) -> bool:
        query = RosterQuery(account, contact=peer.bare)
        if not await self.ctx.fire(ROSTER_QUERY, query):
            return False
        return peer.bare in query.subscriptions

    @hook(MESSAGE_BARE, priority=INCOMING_PRIORITY)
    @hook(MESSAGE_FULL, priority=INCOMING_PRIORITY)
    def incoming(self, event: StanzaEvent) -> bool | Awaitable[bool]:
        """Archive a message an account receives, under the stanza id stamped for it."""
        to = event.to
        user = to.local
        type_ = event.stanza.type or "normal"
        if user is None or type_ not in _ARCHIVED_TYPES:
            return False
        element = event.stanza.element
        account = to.bare
        content, id_ = scan(element, str(account))
        if not content or id_ is None:  # no stamp: not an account of ours (it bounces)
            return False
        if to.resource is not None and type_ == "normal" and self.ctx.sessions.get(to) is None:
            return False  # RFC 6121 §8.5.3.2.1: bounces, so it was never received
        peer = event.stanza.from_
        verdict = self._verdict(user, peer)
        # The sender's archive serialized this message a moment ago (a local sender): the
        # same text serves, without the stanza id stamped since (the result carries the id).
        sent, self._sent = self._sent, None
        text = sent[1] if sent is not None and sent[0] is element else None
        if verdict is None:
            return self._archive_if_in_roster(user, account, element, peer, id_, text=text)
        if verdict:
            self._write(user, text or serialize(element).decode(), peer, id_)
        return False

    async def _archive_if_in_roster(
        self,
        user: str,
        account: JID,
        element: etree._Element,
        peer: JID,
        id_: str,
        *,
        text: str | None,
    ) -> bool:
        if await self._in_roster(account, peer):
            self._write(user, text or serialize(element).decode(), peer, id_)
        return False

    @hook(PRE_MESSAGE, priority=OUTGOING_PRIORITY)
    def outgoing(self, event: StanzaEvent) -> bool | Awaitable[bool]:
        """Archive a message an account sends (to anyone but itself: that copy is archived
        when received), and tag it with its archive id for the sent carbons."""
        session = event.origin
        to = event.to
        if session is None or session.jid is None or to.local is None:
            return False
        account = session.jid.bare
        user = account.local
        if user is None or to.bare == account:
            return False
        if (event.stanza.type or "normal") not in _ARCHIVED_TYPES:
            return False
        element = event.stanza.element
        content, _ = scan(element, None)
        if not content:
            return False
        verdict = self._verdict(user, to)
        if verdict is False:
            return False
        if verdict is None or not self.ids.within_lease():
            return self._archive_outgoing_later(account, element, to, roster=verdict is None)
        self._archive_outgoing(account, element, to, self.ids.next_now())
        return False

    async def _archive_outgoing_later(
        self, account: JID, element: etree._Element, to: JID, *, roster: bool
    ) -> bool:
        if roster and not await self._in_roster(account, to):
            return False
        self._archive_outgoing(account, element, to, await self.next_id())
        return False

    def _archive_outgoing(self, account: JID, element: etree._Element, to: JID, id_: str) -> None:
        assert account.local is not None
        text = serialize(element).decode()
        self._sent = (element, text)  # for the recipient's archive, when it is ours
        self._write(account.local, text, to, id_)
        if self.ctx.sessions.count(account) > 1:  # someone may get a sent carbon
            stamp_stanza_id(element, str(account), id_, replace=False)

    @hook(PRE_MESSAGE, priority=UNTAG_PRIORITY)
    def untag(self, event: StanzaEvent) -> bool:
        """The archive id went into the sent carbons; the recipient must not get it."""
        session = event.origin
        element = event.stanza.element
        if session is None or session.jid is None or not len(element):
            return False
        last = element[-1]
        if last.tag == STANZA_ID and last.get("by") == str(session.jid.bare):
            element.remove(last)
        return False

    async def next_id(self) -> str:
        """A new id for an outgoing message (extending the persisted lease when needed)."""
        return await self.ids.next()

    # --- preferences (XEP-0441) ----------------------------------------------------------
    async def _settled(self) -> None:
        """Wait for the archive writes issued so far (they are not awaited when issued): a
        client that saw a message live finds it in the archive right after."""
        barrier = self.ctx.services.commit_barrier()
        if barrier is not None:
            await barrier

    @iq_handler("get", NS_MAM, "prefs", to=Target.ACCOUNT)
    async def get_prefs(self, request: IqRequest) -> etree._Element:
        """The account's preferences (the server default when it set none)."""
        user = request.own_account("the archiving preferences")
        return _prefs_element(self._prefs.get(user, self._server_prefs))

    @iq_handler("set", NS_MAM, "prefs", to=Target.ACCOUNT)
    async def set_prefs(self, request: IqRequest) -> etree._Element:
        """Replace the account's preferences; answers with what was applied."""
        user = request.own_account("the archiving preferences")
        prefs = _parse_prefs(request.payload)
        await self._kv.set(user, "prefs", prefs.to_json())
        self._prefs[user] = prefs
        return _prefs_element(prefs)

    # --- queries -------------------------------------------------------------------------
    @iq_handler("get", NS_MAM, "query", to=Target.ACCOUNT)
    async def query_form(self, request: IqRequest) -> etree._Element:
        """§"Retrieving form fields": the fields a query may use."""
        request.own_account("the message archive")
        return query_form()

    @iq_handler("get", NS_MAM, "metadata", to=Target.ACCOUNT)
    async def metadata(self, request: IqRequest) -> etree._Element:
        """§"Archive metadata": id and time of the first and last entries (empty if none)."""
        user = request.own_account("the message archive")
        await self._settled()
        return await read_metadata(self.store, user)

    @iq_handler("set", NS_MAM, "query", to=Target.ACCOUNT)
    async def query(self, request: IqRequest) -> etree._Element:
        """§4: send the matching page as <result/> messages, then answer with <fin/>."""
        user = request.own_account("the message archive")
        session = request.origin
        if session is None or session.jid is None:
            raise StanzaError("forbidden", "archive queries come from the account's clients")
        query = parse_query(request.payload)
        account = request.to.bare
        await self._settled()
        page = await find_page(
            self.store,
            user,
            query,
            page_size=self.options.page_size,
            max_page_size=self.options.max_page_size,
        )
        for item in sent_order(page, query):
            session.send(result_message(item, query.queryid, account, session.jid, self.ctx.log))
        return build_fin(page)


def _prefs_element(prefs: Prefs) -> etree._Element:
    element = etree.Element(f"{{{NS_MAM}}}prefs", nsmap={None: NS_MAM}, default=prefs.default)
    for name, jids in (("always", prefs.always), ("never", prefs.never)):
        listed = etree.SubElement(element, f"{{{NS_MAM}}}{name}")
        for jid in sorted(map(str, jids)):
            etree.SubElement(listed, f"{{{NS_MAM}}}jid").text = jid
    return element


def _parse_prefs(payload: etree._Element) -> Prefs:
    """Read a <prefs/> set.

    Raises:
        StanzaError: bad-request for a missing or unknown default, a repeated list or a
            malformed JID; policy-violation for overlong lists.
    """
    default = payload.get("default")
    if default not in PREFS_DEFAULTS:
        raise StanzaError("bad-request", "'default' must be always, never or roster")
    lists: dict[str, frozenset[JID]] = {}
    for name in ("always", "never"):
        found = payload.findall(f"{{{NS_MAM}}}{name}")
        if len(found) > 1:
            raise StanzaError("bad-request", f"more than one <{name}/>")
        lists[name] = (
            _parse_jids(found[0].iterchildren(f"{{{NS_MAM}}}jid")) if found else (frozenset())
        )
    return Prefs(default, lists["always"], lists["never"])


def _parse_jids(elements: Iterable[etree._Element]) -> frozenset[JID]:
    jids = set()
    for element in elements:
        try:
            jids.add(JID.parse((element.text or "").strip()))
        except JIDError:
            raise StanzaError("jid-malformed", "a listed JID is not valid") from None
        if len(jids) > MAX_JIDS:
            raise StanzaError("policy-violation", f"at most {MAX_JIDS} JIDs per list")
    return frozenset(jids)
