"""XEP-0045: Multi-User Chat — one room as a pure, synchronous state machine.

A `Room` takes a stanza (already routed to it, with the server-stamped sender) and returns a
`Result`: the stanzas to send (`Out`: one element to a list of recipients, sent with one
``send_many``, or one element with its own 'to'), whether the room must be saved, and whether
it is gone (destroyed, or a temporary room left empty). Errors for the sender are raised as
`StanzaError`. No asyncio, no storage: the module (``xeps.muc``) does the I/O.

Covered: join/leave/nick change/presence update (§7.1-7.7), one nick from several resources
of one user (§7.2.9), groupchat messages, discussion history (§7.2.13-14) and subject (§8.1),
private messages (§7.5), IQs to occupants (forwarded, ids rewritten) and self-ping
(XEP-0410), mediated invitations and declines (§7.8.2, §7.9), voice requests (§8.6), roles
and affiliations via muc#admin (§8, §9), configuration and destruction via muc#owner (§10),
removal of occupants whose clients bounce errors (status 333), occupant ids (XEP-0421) and
moderated retractions (XEP-0425).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import hmac
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lxml import etree

from xmppd.errors import STANZA_CONDITIONS, StanzaError
from xmppd.jid import JID, JIDError
from xmppd.lib.delay import make_delay, parse_stamp
from xmppd.lib.forms import Field, build_form, parse_submitted
from xmppd.lib.forms import X as DATA_X
from xmppd.ns import NS_CLIENT, NS_DATA, NS_STANZAS
from xmppd.stanza import iq_result, make, new_id

from .config import RoomConfig, apply_form, config_form

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = f"{NS_MUC}#user"
NS_ADMIN = f"{NS_MUC}#admin"
NS_OWNER = f"{NS_MUC}#owner"
NS_REQUEST = f"{NS_MUC}#request"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
NS_SID = "urn:xmpp:sid:0"
NS_PING = "urn:xmpp:ping"
NS_MODERATE = "urn:xmpp:message-moderate:1"  # XEP-0425 0.3.0
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_MODERATE_0 = "urn:xmpp:message-moderate:0"  # XEP-0425 0.2
NS_RETRACT_0 = "urn:xmpp:message-retract:0"
NS_FASTEN = "urn:xmpp:fasten:0"

OCCUPANT_ID = f"{{{NS_OCCUPANT_ID}}}occupant-id"
STANZA_ID = f"{{{NS_SID}}}stanza-id"
X_MUC = f"{{{NS_MUC}}}x"
X_USER = f"{{{NS_USER}}}x"
BODY = f"{{{NS_CLIENT}}}body"
SUBJECT = f"{{{NS_CLIENT}}}subject"
THREAD = f"{{{NS_CLIENT}}}thread"
DISCO_INFO = "{http://jabber.org/protocol/disco#info}query"
DISCO_ITEMS = "{http://jabber.org/protocol/disco#items}query"

AFFILIATION_RANK = {"outcast": -1, "none": 0, "member": 1, "admin": 2, "owner": 3}
ROLE_RANK = {"none": 0, "visitor": 1, "participant": 2, "moderator": 3}
MAX_INVITES = 10  # invitations in one message
MAX_PENDING_IQS = 256  # forwarded IQs awaiting an answer, per room
MAX_PENDING_PMS = 1024  # forwarded private messages whose error is routed back, per room
MAX_SENT_IDS = 1024  # ids of recent groupchat messages: an error answering one is a bounce
MAX_PM_IDS = 4 * MAX_PENDING_PMS  # ids of recent forwarded PMs, never taken for groupchat ids
MAX_KEPT_ID = 128  # a PM keeps its sender's id up to this length (receipts, corrections)
MAX_PENDING_PM_ID_CHARS = 256 * 1024  # total size of the senders' ids kept for PM errors
ERROR_TYPES = frozenset({"auth", "cancel", "continue", "modify", "wait"})


@dataclass(slots=True)
class Out:
    """A stanza to send: to each of `recipients` (None: the element carries its own 'to').

    `archive`: a groupchat message the module archives (XEP-0313) before sending; it adds the
    <stanza-id/> to `element` in place, so the history entry carries it too.
    """

    element: etree._Element
    recipients: list[str] | None = None
    archive: bool = False


@dataclass(slots=True)
class Result:
    """What a room asks of the module after one input."""

    out: list[Out] = field(default_factory=list)
    save: bool = False  # persistent state (config, subject, affiliations) changed
    gone: bool = False  # destroyed, or temporary and empty: forget the room


@dataclass(slots=True, eq=False)
class Occupant:
    """One occupant: nick, real full JID, role, and its last presence (client payload only)."""

    nick: str
    jid: JID
    role: str
    presence: etree._Element  # <presence/> children as the client sent them (x muc removed)
    occupant_id: str
    # §7.2.9: every real full JID (one bare JID) in the room under this nick; [0] is `jid`
    sessions: list[JID] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sessions:
            self.sessions.append(self.jid)

    def addresses(self) -> list[str]:
        """The real JIDs to send to."""
        return [str(jid) for jid in self.sessions]

    def out(self, element: etree._Element) -> Out:
        """`element` to every session of this occupant."""
        if len(self.sessions) == 1:
            element.set("to", str(self.jid))
            return Out(element)
        return Out(element, self.addresses())


@dataclass(slots=True)
class HistoryEntry:
    """A groupchat message as broadcast (no 'to'), with its time and size."""

    element: etree._Element
    when: float
    chars: int  # serialized size (maxchars, and the room's history byte budget)

    @classmethod
    def of(cls, element: etree._Element, when: float) -> HistoryEntry:
        """An entry with its size measured."""
        return cls(element, when, len(etree.tostring(element)))


@dataclass(frozen=True, slots=True)
class Limits:
    """Service-wide bounds on room settings (the module's options)."""

    max_history: int = 100
    max_users: int = 1000
    max_affiliations: int = 10000  # affiliation list entries per room
    max_history_bytes: int = 1 << 20  # serialized bytes of one room's discussion history


MAX_HISTORY_LIMIT = 10**9  # <history/> limits are clamped to this (seconds, chars, stanzas)


def _history_limit(text: str | None) -> int | None:
    """A <history/> limit as a non-negative int (None: absent or malformed; clamped)."""
    if text is None:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return None  # also a sign: XEP-0045 limits are non-negative integers
    if len(text) > 12:
        return MAX_HISTORY_LIMIT  # never int() a huge number of digits
    return min(int(text), MAX_HISTORY_LIMIT)


def _text_child(parent: etree._Element, tag: str, text: str | None) -> etree._Element:
    child = etree.SubElement(parent, tag)
    if text:
        child.text = text
    return child


def visible(nick: str) -> bool:
    """Whether a nickname has a visible character (not only spaces, controls, formats)."""
    return any(unicodedata.category(c)[0] not in "ZC" for c in nick)


def occupant_id(secret: bytes, room: JID, real: JID) -> str:
    """XEP-0421: a stable, opaque id of a real bare JID in a room."""
    digest = hmac.new(secret, f"{room}\x00{real.bare}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


class Room:
    """One chat room (XEP-0045); see the module docstring for what it covers."""

    def __init__(
        self,
        jid: JID,
        config: RoomConfig,
        secret: bytes,
        *,
        limits: Limits = Limits(),
        locked: bool = False,
    ) -> None:
        self.jid = jid.bare
        self.config = config
        self.secret = secret
        self.limits = limits
        self.locked = locked  # §10.1.1: a new room waits for its configuration
        self.affiliations: dict[JID, str] = {}  # bare JID -> owner | admin | member | outcast
        self.occupants: dict[str, Occupant] = {}  # nick -> occupant
        self.by_jid: dict[JID, Occupant] = {}  # real full JID -> occupant
        self.history: deque[HistoryEntry] = deque()
        self.subject = ""
        self.subject_by = ""  # nick of whoever set it ("" = the room)
        self.subject_when = 0.0  # when it was set (0: never)
        self.creator: JID | None = None  # bare JID of whoever created it (max_rooms_per_user)
        self.archiving_available = False  # the module has a room archive
        self._pending_iqs: OrderedDict[str, tuple[str, str, str, str]] = OrderedDict()
        # (forwarded PM id, recipient bare JID) -> (sender's real JID, its id, recipient nick)
        # (ids are at most MAX_KEPT_ID long, so keys stay small whatever the clients send)
        self._pending_pms: OrderedDict[tuple[str, JID], tuple[str, str | None, str]] = OrderedDict()
        # forwarded PMs, by a fixed-size digest of their id: such an id is never recorded as a
        # groupchat id, so a late error to a PM cannot pass for a groupchat bounce (333)
        self._pm_ids: OrderedDict[bytes, None] = OrderedDict()
        self._pending_pm_id_chars = 0  # total length of the senders' ids in _pending_pms
        # groupchat messages sent, by a fixed-size digest of their (client-chosen) id
        self._sent_ids: OrderedDict[bytes, None] = OrderedDict()
        self._all: list[str] | None = None  # cache: every occupant's real JID

    # --- queries -----------------------------------------------------------------------
    def affiliation(self, jid: JID) -> str:
        """The affiliation of a (real) JID."""
        return self.affiliations.get(jid.bare, "none")

    def default_role(self, affiliation: str) -> str:
        """§5.1.2: the role an entity gets on entering."""
        if affiliation in ("owner", "admin"):
            return "moderator"
        if affiliation == "member" or not self.config.moderated:
            return "participant"
        return "visitor" if affiliation == "none" else "none"

    @property
    def archiving(self) -> bool:
        """Whether messages are archived (configured, and an archive exists)."""
        return self.config.archiving and self.archiving_available

    def recipients(self) -> list[str]:
        """Every occupant's real JID (cached: replaced, never changed in place, when the
        occupants change, so a broadcast in progress keeps its list; callers must not
        change it)."""
        if self._all is None:
            self._all = [str(j) for o in self.occupants.values() for j in o.sessions]
        return self._all

    def may_read_archive(self, jid: JID) -> bool:
        """Who may query the room's archive (XEP-0313 §4 with XEP-0045 access rules)."""
        affiliation = self.affiliation(jid)
        if affiliation == "outcast":
            return False
        if self.config.members_only:
            return AFFILIATION_RANK[affiliation] >= 1
        return jid in self.by_jid or AFFILIATION_RANK[affiliation] >= 1

    def features(self) -> list[str]:
        """§6.4 room features."""
        c = self.config
        return [
            NS_MUC,
            "muc_public" if c.public else "muc_hidden",
            "muc_persistent" if c.persistent else "muc_temporary",
            "muc_membersonly" if c.members_only else "muc_open",
            "muc_moderated" if c.moderated else "muc_unmoderated",
            "muc_nonanonymous" if c.non_anonymous else "muc_semianonymous",
            "muc_passwordprotected" if c.password_protected else "muc_unsecured",
            f"{NS_MUC}#self-ping-optimization",
            f"{NS_MUC}#stable_id",
            NS_OCCUPANT_ID,
            NS_MODERATE,
            NS_MODERATE_0,
        ]

    # --- building blocks -----------------------------------------------------------------
    def _occupant_jid(self, nick: str) -> str:
        return f"{self.jid}/{nick}"

    def _reindex(self) -> None:
        self._all = None

    def _add(self, occupant: Occupant) -> None:
        self.occupants[occupant.nick] = occupant
        for jid in occupant.sessions:
            self.by_jid[jid] = occupant
        self._reindex()

    def _drop(self, occupant: Occupant) -> None:
        self.occupants.pop(occupant.nick, None)
        for jid in occupant.sessions:
            self.by_jid.pop(jid, None)
        self._reindex()

    def _sees_jids(self, viewer: Occupant) -> bool:
        return self.config.non_anonymous or viewer.role == "moderator"

    def _presence(
        self,
        occupant: Occupant,
        *,
        with_jid: bool,
        unavailable: bool = False,
        codes: Iterable[int] = (),
        new_nick: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
        role: str | None = None,
        affiliation: str | None = None,
        destroy: etree._Element | None = None,
        payload: etree._Element | None = None,
    ) -> etree._Element:
        """The presence of `occupant` as the room sends it (§7.2.3), without 'to'."""
        element = make(
            "presence",
            from_=self._occupant_jid(occupant.nick),
            type_="unavailable" if unavailable else None,
        )
        source = payload if payload is not None else occupant.presence
        if source is not None:
            for child in source:
                if isinstance(child.tag, str) and child.tag not in (X_MUC, X_USER, OCCUPANT_ID):
                    element.append(copy.deepcopy(child))
        x = etree.SubElement(element, X_USER, nsmap={None: NS_USER})
        item = etree.SubElement(x, f"{{{NS_USER}}}item")
        item.set("affiliation", affiliation or self.affiliation(occupant.jid))
        item.set("role", role or ("none" if unavailable else occupant.role))
        if with_jid:
            item.set("jid", str(occupant.jid))
        if new_nick is not None:
            item.set("nick", new_nick)
        if actor is not None:
            etree.SubElement(item, f"{{{NS_USER}}}actor", nick=actor)
        if reason:
            _text_child(item, f"{{{NS_USER}}}reason", reason)
        if destroy is not None:
            x.append(destroy)
        for code in codes:
            etree.SubElement(x, f"{{{NS_USER}}}status", code=str(code))
        etree.SubElement(
            element, OCCUPANT_ID, nsmap={None: NS_OCCUPANT_ID}, id=occupant.occupant_id
        )
        return element

    def _broadcast_presence(
        self,
        result: Result,
        occupant: Occupant,
        *,
        self_codes: Iterable[int] = (),
        codes: Iterable[int] = (),
        to_self: bool = True,
        unavailable: bool = False,
        new_nick: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
        affiliation: str | None = None,
        payload: etree._Element | None = None,
    ) -> None:
        """Send `occupant`'s presence to everyone: real JIDs only to those who may see them,
        and to the occupant itself with status 110 (and `self_codes`)."""
        codes = list(codes)
        with_jid: list[str] = []
        without: list[str] = []
        for other in self.occupants.values():
            if other is occupant:
                continue
            (with_jid if self._sees_jids(other) else without).extend(other.addresses())

        def build(show_jid: bool, status: Iterable[int]) -> etree._Element:
            return self._presence(
                occupant,
                with_jid=show_jid,
                unavailable=unavailable,
                codes=status,
                new_nick=new_nick,
                actor=actor,
                reason=reason,
                affiliation=affiliation,
                payload=payload,
            )

        if with_jid:
            result.out.append(Out(build(True, codes), with_jid))
        if without:
            result.out.append(Out(build(False, codes), without))
        if to_self:
            element = build(True, sorted({110, *codes, *self_codes}))
            result.out.append(occupant.out(element))

    def _sent(self, element: etree._Element) -> None:
        """Remember the id of a groupchat message the room sends (bounded), so an error that
        answers it is known as a bounce (status 333)."""
        sid = element.get("id")
        if sid is None:
            sid = new_id()
            element.set("id", sid)
        key = _id_key(sid)
        if key in self._pm_ids:
            return  # also a PM's id: an error carrying it is no proof of a bounce
        self._sent_ids[key] = None
        self._sent_ids.move_to_end(key)
        while len(self._sent_ids) > MAX_SENT_IDS:
            self._sent_ids.popitem(last=False)

    def _room_message(self, codes: Iterable[int]) -> Out:
        """A groupchat message from the room carrying status codes (§10.2.1)."""
        element = make("message", from_=self.jid, type_="groupchat", id_=new_id())
        x = etree.SubElement(element, X_USER, nsmap={None: NS_USER})
        for code in codes:
            etree.SubElement(x, f"{{{NS_USER}}}status", code=str(code))
        return Out(element, list(self.recipients()))

    def subject_message(self) -> etree._Element:
        """The subject as sent on entering (§7.2.15): empty <subject/> when none is set."""
        from_ = self._occupant_jid(self.subject_by) if self.subject_by else str(self.jid)
        element = make("message", from_=from_, type_="groupchat", id_=new_id())
        _text_child(element, SUBJECT, self.subject)
        self._sent(element)
        if self.subject_when:  # §7.2.15 SHOULD: stamped, from the room itself
            element.append(make_delay(str(self.jid), self.subject_when))
        return element

    def _gone_if_empty(self, result: Result) -> None:
        if not self.occupants and (not self.config.persistent or self.locked):
            result.gone = True

    # --- presence ------------------------------------------------------------------------
    def presence(self, stanza: etree._Element, from_: JID, nick: str, now: float) -> Result:
        """Presence from `from_` to room/nick (§7.2, §7.6, §7.14).

        Raises:
            StanzaError: entering is refused (the error goes back to the sender).
        """
        type_ = stanza.get("type")
        occupant = self.by_jid.get(from_)
        result = Result()
        if type_ == "error":
            if occupant is not None:
                self._bounced(result, occupant, from_)
            return result
        if type_ == "unavailable":
            if occupant is not None and len(occupant.sessions) > 1:
                self._leave_session(result, occupant, from_, stanza)
            elif occupant is not None:
                self._remove(result, occupant, payload=stanza)
            return result
        if type_ is not None:
            return result  # subscriptions and probes mean nothing to a room
        if (occupant is None or occupant.nick != nick) and not visible(nick):
            # §17.1: no empty or invisible nicknames
            raise StanzaError("jid-malformed", "a nickname needs visible characters")
        if occupant is None:
            return self._enter(stanza, from_, nick, now)
        if occupant.nick != nick:
            return self._change_nick(occupant, nick, stanza)
        x_muc = stanza.find(X_MUC)
        if x_muc is not None:
            return self._rejoin(occupant, from_, stanza, x_muc, now)
        occupant.presence = stanza  # a presence update (§7.7)
        self._broadcast_presence(result, occupant)
        return result

    def _rejoin(
        self,
        occupant: Occupant,
        jid: JID,
        stanza: etree._Element,
        x_muc: etree._Element,
        now: float,
    ) -> Result:
        """A joined client enters again (e.g. after losing track): it gets the occupant list,
        its self-presence, history and subject again; the others see a presence update."""
        history = self._history_outs(jid, x_muc, now)
        occupant.presence = stanza
        result = Result()
        sees = self._sees_jids(occupant)
        for other in self.occupants.values():
            if other is not occupant:
                element = self._presence(other, with_jid=sees)
                element.set("to", str(jid))
                result.out.append(Out(element))
        self_codes = [100] if self.config.non_anonymous else []
        self._broadcast_presence(result, occupant, self_codes=self_codes)
        result.out.extend(history)
        return result

    def _history_outs(self, to: JID, x_muc: etree._Element | None, now: float) -> list[Out]:
        """§7.2.14-15: discussion history, then the subject (computed before the occupant is
        added, so nothing can fail once the room's state changed)."""
        history = x_muc.find(f"{{{NS_MUC}}}history") if x_muc is not None else None
        outs: list[Out] = []
        for entry in self._history_for(history, now):
            element = copy.deepcopy(entry.element)
            element.set("to", str(to))
            element.append(make_delay(str(self.jid), entry.when))
            outs.append(Out(element))
        # the subject comes last, also in a new room (clients wait for it)
        subject = self.subject_message()
        subject.set("to", str(to))
        outs.append(Out(subject))
        return outs

    def _enter(self, stanza: etree._Element, from_: JID, nick: str, now: float) -> Result:
        x_muc = stanza.find(X_MUC)
        new = self.locked and not self.occupants and self.affiliation(from_) == "owner"
        affiliation = self.affiliation(from_)
        if self.locked and affiliation != "owner":
            raise StanzaError("item-not-found", "the room is locked until configured")
        if affiliation == "outcast":
            raise StanzaError("forbidden", "you are banned from this room")
        if self.config.members_only and AFFILIATION_RANK[affiliation] < 1:
            raise StanzaError("registration-required", "this room is for members only")
        holder = self.occupants.get(nick)
        if holder is not None and holder.jid.bare != from_.bare:
            raise StanzaError("conflict", "this nickname is in use")
        full = len(self.occupants) >= self.config.max_users
        if holder is None and full and AFFILIATION_RANK[affiliation] < 2:
            raise StanzaError("service-unavailable", "the room is full")
        if self.config.password_protected and not new:
            given = x_muc.findtext(f"{{{NS_MUC}}}password") if x_muc is not None else None
            if given != self.config.password:
                raise StanzaError("not-authorized", "a password is required")
        history = self._history_outs(from_, x_muc, now)  # before any state change
        if holder is not None:
            return self._add_session(holder, from_, history)
        occupant = Occupant(
            nick,
            from_,
            self.default_role(affiliation),
            stanza,
            occupant_id(self.secret, self.jid, from_),
        )
        result = Result()
        sees = self._sees_jids(occupant)
        for other in self.occupants.values():  # §7.2.3: existing occupants first
            element = self._presence(other, with_jid=sees)
            element.set("to", str(from_))
            result.out.append(Out(element))
        self_codes = []
        if self.config.non_anonymous:
            self_codes.append(100)
        if self.archiving:
            self_codes.append(170)
        if new:
            self_codes.append(201)
        self._broadcast_presence(result, occupant, self_codes=self_codes)
        result.out.extend(history)
        # the state changes last: nothing above may leave a half-entered occupant behind
        if new and x_muc is None:
            self.locked = False  # §10.1.1: a groupchat 1.0 client creates an instant room
        self._add(occupant)
        return result

    def _add_session(self, occupant: Occupant, jid: JID, history: list[Out]) -> Result:
        """§7.2.9: the same user enters with the same nick from another resource; only the new
        session hears about it (occupants, its self-presence, `history` and subject)."""
        result = Result()
        sees = self._sees_jids(occupant)
        for other in self.occupants.values():
            if other is not occupant:
                element = self._presence(other, with_jid=sees)
                element.set("to", str(jid))
                result.out.append(Out(element))
        codes = [110, *([100] if self.config.non_anonymous else [])]
        if self.archiving:
            codes.append(170)
        own = self._presence(occupant, with_jid=True, codes=codes)
        own.set("to", str(jid))
        result.out.append(Out(own))
        result.out.extend(history)
        occupant.sessions.append(jid)  # the state changes last
        self.by_jid[jid] = occupant
        self._reindex()
        return result

    def _leave_session(
        self,
        result: Result,
        occupant: Occupant,
        jid: JID,
        payload: etree._Element | None,
        codes: Iterable[int] = (110,),
        *,
        tell: bool = True,
    ) -> None:
        """One of several sessions of an occupant goes; the others stay (nobody else sees it)."""
        if tell:
            element = self._presence(
                occupant, with_jid=True, unavailable=True, codes=codes, payload=payload
            )
            element.set("to", str(jid))
            result.out.append(Out(element))
        occupant.sessions.remove(jid)
        occupant.jid = occupant.sessions[0]
        self.by_jid.pop(jid, None)
        self._reindex()

    def _bounced(self, result: Result, occupant: Occupant, jid: JID) -> None:
        """An error from an occupant's client: that session is removed (status 333)."""
        if len(occupant.sessions) > 1:
            self._leave_session(result, occupant, jid, None, (110, 333))
        else:
            self._remove(result, occupant, codes=[333])

    def _history_for(self, request: etree._Element | None, now: float) -> list[HistoryEntry]:
        """§7.2.14: the history a joining occupant gets (its <history/> limits apply; a
        malformed or out-of-range limit is ignored rather than refusing entry)."""
        entries = (
            list(self.history)[-self.config.history_length :] if self.config.history_length else []
        )
        if request is None:
            return entries
        count = _history_limit(request.get("maxstanzas"))
        if count is not None:
            entries = entries[-count:] if count else []
        seconds = _history_limit(request.get("seconds"))
        if seconds is not None:
            entries = [e for e in entries if e.when >= now - seconds]
        since = request.get("since")
        if since is not None:
            try:
                after = parse_stamp(since)
            except (ValueError, OverflowError, OSError):
                after = None
            if after is not None:
                entries = [e for e in entries if e.when > after]
        budget = _history_limit(request.get("maxchars"))
        if budget is not None:
            kept: list[HistoryEntry] = []
            for entry in reversed(entries):
                if entry.chars < 0:
                    entry.chars = len(etree.tostring(entry.element))
                budget -= entry.chars
                if budget < 0:
                    break
                kept.append(entry)
            entries = kept[::-1]
        return entries

    def _change_nick(self, occupant: Occupant, nick: str, stanza: etree._Element) -> Result:
        """§7.6: unavailable with 303 and the new nick, then the new presence."""
        if nick in self.occupants:
            raise StanzaError("conflict", "this nickname is in use")
        result = Result()
        self._broadcast_presence(result, occupant, unavailable=True, codes=[303], new_nick=nick)
        self.occupants.pop(occupant.nick)
        occupant.nick = nick
        occupant.presence = stanza
        self.occupants[nick] = occupant
        self._reindex()
        self._broadcast_presence(result, occupant)
        return result

    def _remove(
        self,
        result: Result,
        occupant: Occupant,
        *,
        codes: Iterable[int] = (),
        to_self: bool = True,
        actor: str | None = None,
        reason: str | None = None,
        affiliation: str | None = None,
        payload: etree._Element | None = None,
    ) -> None:
        """An occupant leaves (or is removed): unavailable to everyone, then forgotten."""
        self._broadcast_presence(
            result,
            occupant,
            unavailable=True,
            codes=codes,
            to_self=to_self,
            actor=actor,
            reason=reason,
            affiliation=affiliation,
            payload=payload,
        )
        self._drop(occupant)
        self._gone_if_empty(result)

    # --- messages ------------------------------------------------------------------------
    def message(self, stanza: etree._Element, from_: JID, now: float) -> Result:
        """A message to the room's bare JID: groupchat (§7.4), subject (§8.1), invitations
        (§7.8.2) and declines (§7.9).

        Raises:
            StanzaError: not-acceptable from a non-occupant, forbidden without the right.
        """
        type_ = stanza.get("type") or "normal"
        occupant = self.by_jid.get(from_)
        result = Result()
        if type_ == "error":
            if occupant is not None:
                self._bounced(result, occupant, from_)
            return result
        x = stanza.find(X_USER)
        if x is not None and type_ != "groupchat":
            return self._invitations(x, from_, occupant)
        form = stanza.find(DATA_X)
        if form is not None and type_ != "groupchat":
            return self._voice_request(form, occupant)
        if type_ != "groupchat":
            raise StanzaError("bad-request", "send groupchat messages to the room")
        if occupant is None:
            raise StanzaError("not-acceptable", "only occupants may send messages to the room")
        if occupant.role == "visitor":
            raise StanzaError("forbidden", "you have no voice in this moderated room")
        body = stanza.find(BODY)
        # §8.1: only a message with a <subject/> and neither <body/> nor <thread/> changes the
        # subject; with a body (or thread) it is a normal message that happens to carry one
        subject = stanza.find(SUBJECT)
        if body is not None or stanza.find(THREAD) is not None:
            subject = None
        if subject is not None and not (
            occupant.role == "moderator"
            or (self.config.change_subject and occupant.role == "participant")
        ):
            raise StanzaError("forbidden", "you may not change the subject")
        element = make(
            "message",
            from_=self._occupant_jid(occupant.nick),
            type_="groupchat",
            id_=stanza.get("id"),
        )
        for child in stanza:
            if not isinstance(child.tag, str) or child.tag == OCCUPANT_ID:
                continue
            if child.tag == STANZA_ID and self._claims_room(child):
                continue  # XEP-0359 §3: never let a client forge the room's stanza id
            element.append(copy.deepcopy(child))
        etree.SubElement(
            element, OCCUPANT_ID, nsmap={None: NS_OCCUPANT_ID}, id=occupant.occupant_id
        )
        if subject is not None:
            self.subject = subject.text or ""
            self.subject_by = occupant.nick if self.subject else ""
            self.subject_when = now
            result.save = True
        self._sent(element)
        archive = self.archiving and (body is not None or subject is not None)
        result.out.append(Out(element, self.recipients(), archive=archive))
        if body is not None and subject is None and self.config.history_length > 0:
            self.history.append(HistoryEntry.of(element, now))
            self._trim_history()
        return result

    def _trim_history(self) -> None:
        """Oldest first, drop what exceeds the history length or the byte budget (hostile
        occupants may send stanzas of up to the stream's size limit)."""
        history, length = self.history, self.config.history_length
        size = sum(entry.chars for entry in history)
        while history and (len(history) > length or size > self.limits.max_history_bytes):
            size -= history.popleft().chars

    def _claims_room(self, stanza_id: etree._Element) -> bool:
        """Whether a client-sent <stanza-id/> claims to be the room's (its 'by' is the room's
        JID in any spelling), or has a 'by' that is no JID at all."""
        try:
            return JID.parse(stanza_id.get("by") or "").bare == self.jid
        except JIDError:
            return True

    def _invitations(self, x: etree._Element, from_: JID, occupant: Occupant | None) -> Result:
        result = Result()
        invites = x.findall(f"{{{NS_USER}}}invite")
        declines = x.findall(f"{{{NS_USER}}}decline")
        if not invites and not declines:
            raise StanzaError("bad-request", "send groupchat messages to the room")
        if len(invites) + len(declines) > MAX_INVITES:
            raise StanzaError("policy-violation", "too many invitations at once")
        if invites:
            if occupant is None:
                raise StanzaError("not-acceptable", "only occupants may invite")
            affiliation = self.affiliation(from_)
            privileged = AFFILIATION_RANK[affiliation] >= 2 or occupant.role == "moderator"
            if self.config.members_only and not (privileged or self.config.allow_invites):
                raise StanzaError("forbidden", "only admins may invite to this room")
            if (
                not self.config.members_only
                and not self.config.allow_invites
                and occupant.role == "visitor"
            ):
                raise StanzaError("forbidden", "visitors may not invite")
        # every address is checked before anything is sent or changed (all or nothing)
        invitees = [self._jid_attr(invite, "to") for invite in invites]
        inviters = [self._jid_attr(decline, "to") for decline in declines]
        if self.config.members_only:  # §7.8.2: invitees become members
            new_members = {j.bare for j in invitees if self.affiliation(j) == "none"}
            self._check_affiliation_count(len(self.affiliations) + len(new_members))
        for invite, invitee in zip(invites, invitees, strict=True):
            message = make("message", from_=self.jid, to=invitee, id_=new_id())
            out_x = etree.SubElement(message, X_USER, nsmap={None: NS_USER})
            out_invite = etree.SubElement(out_x, f"{{{NS_USER}}}invite")
            out_invite.set("from", str(from_))
            reason = invite.findtext(f"{{{NS_USER}}}reason")
            if reason:
                _text_child(out_invite, f"{{{NS_USER}}}reason", reason)
            if self.config.password_protected:
                _text_child(out_x, f"{{{NS_USER}}}password", self.config.password)
            result.out.append(Out(message))
            if self.config.members_only and self.affiliation(invitee) == "none":
                self.affiliations[invitee.bare] = "member"  # §7.8.2: the invitee may enter
                result.save = True
        for decline, inviter in zip(declines, inviters, strict=True):
            message = make("message", from_=self.jid, to=inviter, id_=new_id())
            out_x = etree.SubElement(message, X_USER, nsmap={None: NS_USER})
            out_decline = etree.SubElement(out_x, f"{{{NS_USER}}}decline")
            out_decline.set("from", str(from_.bare))
            reason = decline.findtext(f"{{{NS_USER}}}reason")
            if reason:
                _text_child(out_decline, f"{{{NS_USER}}}reason", reason)
            result.out.append(Out(message))
        return result

    def _voice_request(self, form: etree._Element, occupant: Occupant | None) -> Result:
        """§8.6: a visitor asks for voice (the form goes to the moderators); a moderator's
        answer with muc#request_allow grants it."""
        if occupant is None:
            raise StanzaError("not-acceptable", "only occupants may ask for voice")
        submitted = parse_submitted(form)
        if submitted.form_type != NS_REQUEST:
            raise StanzaError("bad-request", "unknown data form")
        result = Result()
        allow = submitted.single("muc#request_allow")
        if allow is not None:  # a moderator's decision
            if occupant.role != "moderator":
                raise StanzaError("forbidden", "only moderators grant voice")
            target = self.occupants.get(submitted.single("muc#roomnick") or "")
            if allow.lower() in ("1", "true") and target is not None and target.role == "visitor":
                self._set_role(result, target, "participant", occupant.nick, None)
            return result
        if submitted.single("muc#role") != "participant":
            raise StanzaError("bad-request", "ask for the participant role")
        if occupant.role != "visitor":
            return result  # already has voice
        moderators = [
            j for o in self.occupants.values() if o.role == "moderator" for j in o.addresses()
        ]
        if not moderators:
            return result
        fields = [
            Field("muc#role", "list-single", ["participant"], "Requested role"),
            Field("muc#jid", "jid-single", [str(occupant.jid)], "User ID"),
            Field("muc#roomnick", "text-single", [occupant.nick], "Room nickname"),
            Field("muc#request_allow", "boolean", ["false"], "Grant voice to this person?"),
        ]
        element = make("message", from_=self.jid, id_=new_id())
        approval = build_form(NS_REQUEST, fields)
        title = etree.Element(f"{{{NS_DATA}}}title")
        title.text = "Voice request"
        approval.insert(0, title)
        element.append(approval)
        result.out.append(Out(element, moderators))
        return result

    @staticmethod
    def _jid_attr(element: etree._Element, attr: str) -> JID:
        text = element.get(attr)
        if not text:
            raise StanzaError("bad-request", f"<{etree.QName(element).localname}/> needs '{attr}'")
        try:
            return JID.parse(text)
        except JIDError:
            raise StanzaError("jid-malformed", f"bad '{attr}' address") from None

    def private_message(self, stanza: etree._Element, from_: JID, nick: str) -> Result:
        """A message to room/nick (§7.5): forwarded to the occupant's real JID.

        Raises:
            StanzaError: not-acceptable from non-occupants, item-not-found for an unknown nick,
                bad-request for type groupchat, forbidden when the room allows no such PM.
        """
        type_ = stanza.get("type") or "normal"
        sender = self.by_jid.get(from_)
        result = Result()
        if type_ == "error":
            return self._message_error(stanza, from_, sender)
        if sender is None:
            raise StanzaError("not-acceptable", "only occupants may send private messages")
        if type_ == "groupchat":
            raise StanzaError("bad-request", "a private message may not be of type groupchat")
        target = self.occupants.get(nick)
        if target is None:
            raise StanzaError("item-not-found", "no such occupant")
        allowed = {
            "anyone": True,
            "participants": ROLE_RANK[sender.role] >= ROLE_RANK["participant"],
            "moderators": sender.role == "moderator",
            "none": False,
        }[self.config.allow_pm]
        if not allowed:
            raise StanzaError("forbidden", "private messages are not allowed here")
        original_id = stanza.get("id")
        to = target.jid.bare
        # The sender's own id where it is safe (XEP-0184 receipts and XEP-0308 corrections
        # refer to it): short, not the id of a groupchat message the room sent (an error to
        # it would eject the recipient with 333), not pending for this recipient already.
        # Otherwise a room-made id, so an error finds this PM and only this PM.
        if (
            original_id
            and len(original_id) <= MAX_KEPT_ID
            and _id_key(original_id) not in self._sent_ids
            and (original_id, to) not in self._pending_pms
        ):
            forward_id = original_id
        else:
            forward_id = new_id()
        pm_key = _id_key(forward_id)
        self._pm_ids[pm_key] = None
        self._pm_ids.move_to_end(pm_key)
        while len(self._pm_ids) > MAX_PM_IDS:
            self._pm_ids.popitem(last=False)
        element = make(
            "message",
            from_=self._occupant_jid(sender.nick),
            type_=stanza.get("type"),
            id_=forward_id,
        )
        for child in stanza:
            if not isinstance(child.tag, str) or child.tag in (OCCUPANT_ID, X_USER):
                continue
            if child.tag == STANZA_ID and self._claims_room(child):
                continue  # XEP-0359 §3: never let a client forge the room's stanza id
            element.append(copy.deepcopy(child))
        etree.SubElement(element, X_USER, nsmap={None: NS_USER})
        etree.SubElement(element, OCCUPANT_ID, nsmap={None: NS_OCCUPANT_ID}, id=sender.occupant_id)
        result.out.append(target.out(element))
        self._pending_pms[forward_id, to] = (str(from_), original_id, target.nick)
        self._pending_pm_id_chars += len(original_id or "")
        while (
            len(self._pending_pms) > MAX_PENDING_PMS
            or self._pending_pm_id_chars > MAX_PENDING_PM_ID_CHARS
        ):
            _, (_, old_id, _) = self._pending_pms.popitem(last=False)
            self._pending_pm_id_chars -= len(old_id or "")
        return result

    def _message_error(
        self, stanza: etree._Element, from_: JID, occupant: Occupant | None
    ) -> Result:
        """An error message to room/nick. One answering a private message the room forwarded
        goes back to that message's sender (from room/<recipient>); one answering a groupchat
        message the room sent removes the occupant whose client bounced it (status 333);
        anything else is dropped (an error may never eject someone it does not concern)."""
        result = Result()
        error_id = stanza.get("id") or ""
        pending = self._pending_pms.pop((error_id, from_.bare), None)
        if pending is not None:
            sender, original_id, target_nick = pending
            self._pending_pm_id_chars -= len(original_id or "")
            # Rebuilt from its type and condition only: a 'by', a text or other children could
            # reveal the recipient's real JID (semi-anonymous rooms) or carry anything.
            answer = make(
                "message",
                from_=self._occupant_jid(target_nick),
                to=sender,
                type_="error",
                id_=original_id,
            )
            answer.append(_error_of(stanza).to_element())
            result.out.append(Out(answer))
            return result
        if occupant is not None and _id_key(error_id) in self._sent_ids:
            self._bounced(result, occupant, from_)
        return result

    # --- IQs to occupants ----------------------------------------------------------------
    def occupant_iq(self, stanza: etree._Element, from_: JID, nick: str) -> Result:
        """An IQ to room/nick: XEP-0410 self-ping is answered; other requests are forwarded
        to the occupant with a fresh id, and the answer comes back the same way.

        Raises:
            StanzaError: not-acceptable from a non-occupant (or a self-ping of someone not
                joined), item-not-found for an unknown nick.
        """
        type_ = stanza.get("type")
        result = Result()
        if type_ in ("result", "error"):
            pending = self._pending_iqs.pop(stanza.get("id") or "", None)
            if pending is None:
                return result
            requester, request_id, target_jid, target_nick = pending
            if str(from_) != target_jid:
                self._pending_iqs[stanza.get("id") or ""] = pending  # not the one asked
                return result
            answer = copy.deepcopy(stanza)
            answer.set("from", self._occupant_jid(target_nick))
            answer.set("to", requester)
            answer.set("id", request_id)
            result.out.append(Out(answer))
            return result
        sender = self.by_jid.get(from_)
        payload = stanza[0] if len(stanza) else None
        is_ping = payload is not None and payload.tag == f"{{{NS_PING}}}ping"
        if is_ping and sender is not None and sender.nick == nick:
            result.out.append(Out(_answer(stanza, None, self._occupant_jid(nick))))
            return result
        if sender is None:
            if payload is not None and payload.tag in (DISCO_INFO, DISCO_ITEMS):
                raise StanzaError("bad-request", "only occupants may query occupants")  # §6.7
            raise StanzaError("not-acceptable", "you are not an occupant of this room")
        target = self.occupants.get(nick)
        if target is None:
            raise StanzaError("item-not-found", "no such occupant")
        forward_id = new_id()
        self._pending_iqs[forward_id] = (str(from_), stanza.get("id") or "", str(target.jid), nick)
        while len(self._pending_iqs) > MAX_PENDING_IQS:
            self._pending_iqs.popitem(last=False)
        forwarded = copy.deepcopy(stanza)
        forwarded.set("from", self._occupant_jid(sender.nick))
        forwarded.set("to", str(target.jid))
        forwarded.set("id", forward_id)
        result.out.append(Out(forwarded))
        return result

    # --- muc#admin (§8, §9) --------------------------------------------------------------
    def admin_get(self, stanza: etree._Element, from_: JID) -> Result:
        """§9.5, §8.5, §10.5: a list by affiliation or role."""
        query = stanza[0]
        items = query.findall(f"{{{NS_ADMIN}}}item")
        if len(items) != 1:
            raise StanzaError("bad-request", "ask for one list")
        item = items[0]
        actor_affiliation = self.affiliation(from_)
        actor = self.by_jid.get(from_)
        answer = etree.Element(f"{{{NS_ADMIN}}}query", nsmap={None: NS_ADMIN})
        wanted_affiliation = item.get("affiliation")
        wanted_role = item.get("role")
        if wanted_affiliation is not None:
            if wanted_affiliation not in ("owner", "admin", "member", "outcast"):
                raise StanzaError("bad-request", "unknown affiliation")
            needed = 3 if wanted_affiliation in ("owner", "admin") else 2
            if AFFILIATION_RANK[actor_affiliation] < needed:
                raise StanzaError("forbidden", "you may not see this list")
            for jid, affiliation in sorted(self.affiliations.items(), key=lambda p: str(p[0])):
                if affiliation == wanted_affiliation:
                    etree.SubElement(
                        answer, f"{{{NS_ADMIN}}}item", affiliation=affiliation, jid=str(jid)
                    )
        elif wanted_role is not None:
            if wanted_role not in ("moderator", "participant", "visitor"):
                raise StanzaError("bad-request", "unknown role")
            if actor is None or actor.role != "moderator":
                raise StanzaError("forbidden", "only moderators may see this list")
            for occupant in self.occupants.values():
                if occupant.role == wanted_role:
                    etree.SubElement(
                        answer,
                        f"{{{NS_ADMIN}}}item",
                        role=occupant.role,
                        nick=occupant.nick,
                        affiliation=self.affiliation(occupant.jid),
                        jid=str(occupant.jid),
                    )
        else:
            raise StanzaError("bad-request", "an item needs an affiliation or a role")
        return Result([Out(_answer(stanza, answer, str(self.jid)))])

    def admin_set(self, stanza: etree._Element, from_: JID) -> Result:
        """§8.2-8.4, §9.1-9.8, §10.3-10.8: role and affiliation changes, all or nothing."""
        query = stanza[0]
        items = query.findall(f"{{{NS_ADMIN}}}item")
        if not items:
            raise StanzaError("bad-request", "no items")
        actor = self.by_jid.get(from_)
        actor_affiliation = self.affiliation(from_)
        role_changes: list[tuple[Occupant, str, str | None]] = []
        affiliation_changes: dict[JID, tuple[str, str | None]] = {}
        for item in items:
            reason = item.findtext(f"{{{NS_ADMIN}}}reason")
            role = item.get("role")
            affiliation = item.get("affiliation")
            if affiliation is not None and role is not None:
                raise StanzaError("bad-request", "change a role or an affiliation, not both")
            if affiliation is not None:
                if affiliation not in AFFILIATION_RANK:
                    raise StanzaError("bad-request", "unknown affiliation")
                target = self._item_jid(item)
                self._check_affiliation_change(actor_affiliation, target, affiliation)
                affiliation_changes[target] = (affiliation, reason)
            elif role is not None:
                if role not in ROLE_RANK:
                    raise StanzaError("bad-request", "unknown role")
                nick = item.get("nick")
                occupant = self.occupants.get(nick or "")
                if occupant is None:
                    raise StanzaError("item-not-found", "no occupant with this nick")
                self._check_role_change(actor, actor_affiliation, occupant, role)
                role_changes.append((occupant, role, reason))
            else:
                raise StanzaError("bad-request", "an item needs an affiliation or a role")
        owners = {j for j, a in self.affiliations.items() if a == "owner"}
        for jid, (affiliation, _reason) in affiliation_changes.items():
            if affiliation == "owner":
                owners.add(jid)
            else:
                owners.discard(jid)
        if not owners and any(a == "owner" for a in self.affiliations.values()):
            raise StanzaError("conflict", "a room needs at least one owner")
        after = dict(self.affiliations)
        for jid, (affiliation, _reason) in affiliation_changes.items():
            if affiliation == "none":
                after.pop(jid, None)
            else:
                after[jid] = affiliation
        self._check_affiliation_count(len(after))
        result = Result([Out(_answer(stanza, None, str(self.jid)))])
        actor_nick = actor.nick if actor is not None else None
        for jid, (affiliation, reason) in affiliation_changes.items():
            self._set_affiliation(result, jid, affiliation, actor_nick, reason)
        for occupant, role, reason in role_changes:
            if self.occupants.get(occupant.nick) is not occupant:
                continue  # already removed by an affiliation change
            self._set_role(result, occupant, role, actor_nick, reason)
        return result

    def _check_affiliation_count(self, count: int) -> None:
        """Refuse to grow the affiliation lists beyond the service's bound."""
        if count > self.limits.max_affiliations and count > len(self.affiliations):
            raise StanzaError("policy-violation", "this room has too many affiliations")

    @staticmethod
    def _item_jid(item: etree._Element) -> JID:
        text = item.get("jid")
        if not text:
            raise StanzaError("bad-request", "an affiliation change needs a 'jid'")
        try:
            return JID.parse(text).bare
        except JIDError:
            raise StanzaError("jid-malformed", "bad 'jid'") from None

    def _check_affiliation_change(self, actor: str, target: JID, new: str) -> None:
        rank = AFFILIATION_RANK[actor]
        if rank < 2:
            raise StanzaError("forbidden", "only admins and owners change affiliations")
        current = self.affiliation(target)
        if rank == 2:  # admins: none/member/outcast of those below them (§9)
            if new in ("admin", "owner"):
                raise StanzaError("forbidden", "only owners grant admin or owner")
            if AFFILIATION_RANK[current] >= 2:
                raise StanzaError("not-allowed", "admins may not change admins or owners")

    def _check_role_change(
        self, actor: Occupant | None, actor_affiliation: str, target: Occupant, role: str
    ) -> None:
        """§5.1, §8.2, §8.4, §9.6-9.7: who may give whom which role."""
        if actor is None or actor.role != "moderator":
            raise StanzaError("forbidden", "only moderators change roles")
        target_rank = AFFILIATION_RANK[self.affiliation(target.jid)]
        actor_rank = AFFILIATION_RANK[actor_affiliation]
        if role == "none":
            if target is actor:
                raise StanzaError("conflict", "you may not kick yourself")
            if target_rank > actor_rank:  # §8.2: not by a moderator with a lower affiliation
                raise StanzaError("not-allowed", "you may not kick someone above you")
        elif role == "visitor":
            # §8.4: nobody silences an admin or owner; a moderator nobody at or above itself
            if target_rank >= 2 or target_rank >= actor_rank:
                raise StanzaError("not-allowed", "the occupant's affiliation protects them")
        elif role == "participant" and target.role == "moderator" and target_rank >= 2:
            # §9.7: moderator status of an admin or owner cannot be revoked
            raise StanzaError("not-allowed", "admins and owners stay moderators")
        if (role == "moderator" or target.role == "moderator") and actor_rank < 2:
            raise StanzaError("forbidden", "only admins grant or revoke moderation")

    def _set_affiliation(
        self, result: Result, jid: JID, affiliation: str, actor: str | None, reason: str | None
    ) -> None:
        if affiliation == "none":
            self.affiliations.pop(jid, None)
        else:
            self.affiliations[jid] = affiliation
        result.save = True
        for occupant in [o for o in self.occupants.values() if o.jid.bare == jid]:
            if affiliation == "outcast":
                self._remove(result, occupant, codes=[301], actor=actor, reason=reason)
            elif self.config.members_only and affiliation == "none":
                self._remove(result, occupant, codes=[321], actor=actor, reason=reason)
            else:
                occupant.role = self.default_role(affiliation)
                self._broadcast_presence(result, occupant, actor=actor, reason=reason)

    def _set_role(
        self, result: Result, occupant: Occupant, role: str, actor: str | None, reason: str | None
    ) -> None:
        if role == "none":
            self._remove(result, occupant, codes=[307], actor=actor, reason=reason)
            return
        occupant.role = role
        self._broadcast_presence(result, occupant, actor=actor, reason=reason)

    # --- muc#owner (§10) -----------------------------------------------------------------
    def owner_get(self, stanza: etree._Element, from_: JID) -> Result:
        """§10.2: the configuration form (owners only)."""
        if self.affiliation(from_) != "owner":
            raise StanzaError("forbidden", "only owners configure the room")
        answer = etree.Element(f"{{{NS_OWNER}}}query", nsmap={None: NS_OWNER})
        answer.append(
            config_form(
                self.config, max_history=self.limits.max_history, max_users=self.limits.max_users
            )
        )
        return Result([Out(_answer(stanza, answer, str(self.jid)))])

    def owner_set(self, stanza: etree._Element, from_: JID) -> Result:
        """§10.1.2-10.2 (configuration, instant room, cancel) and §10.9 (destruction)."""
        if self.affiliation(from_) != "owner":
            raise StanzaError("forbidden", "only owners configure the room")
        query = stanza[0]
        destroy = query.find(f"{{{NS_OWNER}}}destroy")
        if destroy is not None:
            return self.destroy(stanza, destroy)
        form = query.find(DATA_X)
        if form is None:
            raise StanzaError("bad-request", "expected a data form or <destroy/>")
        if form.get("type") == "cancel":
            result = Result([Out(_answer(stanza, None, str(self.jid)))])
            if self.locked:  # §10.1.3: cancelling the initial configuration destroys it
                self._destroy_into(result, None, None)
            return result
        submitted = parse_submitted(form)
        old = self.config
        new = apply_form(
            old, submitted, max_history=self.limits.max_history, max_users=self.limits.max_users
        )
        self.config = new
        result = Result([Out(_answer(stanza, None, str(self.jid)))], save=True)
        was_locked = self.locked
        self.locked = False
        if was_locked:
            return result
        codes = [104]
        if new.non_anonymous != old.non_anonymous:
            codes.append(172 if new.non_anonymous else 173)
        if self.archiving_available and new.archiving != old.archiving:
            codes.append(170 if new.archiving else 171)
        if self.occupants:
            result.out.append(self._room_message(codes))
        if new.members_only and not old.members_only:
            for occupant in list(self.occupants.values()):
                if AFFILIATION_RANK[self.affiliation(occupant.jid)] < 1:
                    self._remove(result, occupant, codes=[322])
        if new.moderated != old.moderated:
            for occupant in self.occupants.values():
                role = self.default_role(self.affiliation(occupant.jid))
                if occupant.role in ("participant", "visitor") and role != occupant.role:
                    occupant.role = role
                    self._broadcast_presence(result, occupant)
        self._trim_history()
        if not self.occupants and not new.persistent:
            result.gone = True
        return result

    def destroy(self, stanza: etree._Element, destroy: etree._Element) -> Result:
        """§10.9: every occupant gets unavailable presence with <destroy/>; the room is gone."""
        result = Result([Out(_answer(stanza, None, str(self.jid)))])
        alternate = destroy.get("jid")
        if alternate is not None:
            try:
                alternate = str(JID.parse(alternate))
            except JIDError:
                raise StanzaError("jid-malformed", "bad alternate venue") from None
        self._destroy_into(result, alternate, destroy.findtext(f"{{{NS_OWNER}}}reason"))
        return result

    def _destroy_into(self, result: Result, alternate: str | None, reason: str | None) -> None:
        for occupant in list(self.occupants.values()):
            element_destroy = etree.Element(f"{{{NS_USER}}}destroy")
            if alternate:
                element_destroy.set("jid", alternate)
            if reason:
                _text_child(element_destroy, f"{{{NS_USER}}}reason", reason)
            element = self._presence(
                occupant,
                with_jid=True,
                unavailable=True,
                affiliation="none",
                role="none",
                destroy=element_destroy,
            )
            result.out.append(occupant.out(element))
        self.occupants.clear()
        self.by_jid.clear()
        self._reindex()
        result.gone = True
        result.save = True

    def shutdown(self) -> Result:
        """The service stops: every occupant is removed with status 332 (§15.6.2)."""
        result = Result()
        for occupant in list(self.occupants.values()):
            element = self._presence(occupant, with_jid=True, unavailable=True, codes=[110, 332])
            result.out.append(occupant.out(element))
        self.occupants.clear()
        self.by_jid.clear()
        self._reindex()
        return result

    # --- XEP-0425 moderation ----------------------------------------------------------------
    def moderator(self, from_: JID) -> Occupant:
        """The moderator asking to moderate a message.

        Raises:
            StanzaError: forbidden for anyone but a moderator present in the room.
        """
        occupant = self.by_jid.get(from_)
        if occupant is None or occupant.role != "moderator":
            raise StanzaError("forbidden", "only moderators may moderate messages")
        return occupant

    def history_message(self, stanza_id: str) -> etree._Element | None:
        """The message in the discussion history with this room stanza id, if any."""
        room = str(self.jid)
        for entry in self.history:
            for sid in entry.element.iterfind(STANZA_ID):
                if sid.get("by") == room and sid.get("id") == stanza_id:
                    return entry.element
        return None

    def retracted(
        self, moderator: Occupant, stanza_id: str, reason: str | None, *, legacy: bool = False
    ) -> Result:
        """Announce a moderated retraction to every occupant (XEP-0425 0.3.0, or 0.2 with
        `legacy`) and drop the message from the discussion history."""
        room = str(self.jid)
        self.history = deque(
            e
            for e in self.history
            if not any(
                s.get("by") == room and s.get("id") == stanza_id
                for s in e.element.iterfind(STANZA_ID)
            )
        )
        element = make("message", from_=self.jid, type_="groupchat", id_=new_id())
        by = self._occupant_jid(moderator.nick)
        if legacy:
            apply_to = etree.SubElement(
                element, f"{{{NS_FASTEN}}}apply-to", nsmap={None: NS_FASTEN}, id=stanza_id
            )
            moderated = etree.SubElement(
                apply_to, f"{{{NS_MODERATE_0}}}moderated", nsmap={None: NS_MODERATE_0}, by=by
            )
            etree.SubElement(moderated, f"{{{NS_RETRACT_0}}}retract", nsmap={None: NS_RETRACT_0})
            if reason:
                _text_child(moderated, f"{{{NS_MODERATE_0}}}reason", reason)
            return Result([Out(element, list(self.recipients()))])
        retract = etree.SubElement(
            element, f"{{{NS_RETRACT}}}retract", nsmap={None: NS_RETRACT}, id=stanza_id
        )
        moderated = etree.SubElement(
            retract, f"{{{NS_MODERATE}}}moderated", nsmap={None: NS_MODERATE}, by=by
        )
        etree.SubElement(
            moderated, OCCUPANT_ID, nsmap={None: NS_OCCUPANT_ID}, id=moderator.occupant_id
        )
        if reason:
            _text_child(retract, f"{{{NS_RETRACT}}}reason", reason)
        return Result([Out(element, list(self.recipients()), archive=self.archiving)])

    # --- persistence -------------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        """What survives a restart (persistent rooms): config, subject, affiliations."""
        return {
            "config": self.config.to_dict(),
            "subject": self.subject,
            "subject_by": self.subject_by,
            "subject_when": self.subject_when,
            "affiliations": {str(j): a for j, a in self.affiliations.items()},
            "creator": str(self.creator) if self.creator is not None else "",
        }

    def restore(self, state: Mapping[str, object]) -> None:
        """Load `state()` output (bad entries are skipped)."""
        config = state.get("config")
        if isinstance(config, dict):
            self.config = RoomConfig.from_dict(config)
        subject, by = state.get("subject"), state.get("subject_by")
        self.subject = subject if isinstance(subject, str) else ""
        self.subject_by = by if isinstance(by, str) else ""
        when = state.get("subject_when")
        self.subject_when = float(when) if isinstance(when, int | float) else 0.0
        creator = state.get("creator")
        try:
            self.creator = JID.parse(creator).bare if isinstance(creator, str) and creator else None
        except JIDError:
            self.creator = None
        affiliations = state.get("affiliations")
        if isinstance(affiliations, dict):
            for text, affiliation in affiliations.items():
                if affiliation in ("owner", "admin", "member", "outcast"):
                    try:
                        self.affiliations[JID.parse(str(text)).bare] = affiliation
                    except JIDError:
                        continue

    def refill_history(self, entries: Iterable[tuple[etree._Element, float]]) -> None:
        """Discussion history from the archive after a restart (oldest first)."""
        self.history.clear()
        for element, when in entries:
            self.history.append(HistoryEntry.of(element, when))
        self._trim_history()

    def with_config(self, **changes: object) -> None:
        """Change settings directly (tests, administration)."""
        self.config = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]


def _id_key(stanza_id: str) -> bytes:
    """A fixed-size key for a (client-chosen, possibly huge) stanza id."""
    return hashlib.blake2b(stanza_id.encode(), digest_size=16).digest()


def _error_of(stanza: etree._Element) -> StanzaError:
    """The type and defined condition of an error stanza (RFC 6120 §8.3), nothing else."""
    error = stanza.find(f"{{{NS_CLIENT}}}error")
    type_ = error.get("type") if error is not None else None
    condition = "undefined-condition"
    if error is not None:
        for child in error:
            if not isinstance(child.tag, str):
                continue
            qname = etree.QName(child)
            if qname.namespace == NS_STANZAS and qname.localname in STANZA_CONDITIONS:
                condition = qname.localname
                break
    if type_ not in ERROR_TYPES:
        return StanzaError(condition)
    return StanzaError(condition, type=type_)  # type: ignore[arg-type]


def _answer(request: etree._Element, payload: etree._Element | None, from_: str) -> etree._Element:
    reply = iq_result(request, payload)
    reply.set("from", request.get("to") or from_)
    return reply
