"""Helpers for black-box XEP-0045 tests over real sockets: a tap on a slixmpp client that keeps
every stanza it receives (as lxml elements, in order), and the room flows written from the XEP
text (join, create, configure, admin IQs), in raw XML so the tests see exactly what the service
sends."""

from __future__ import annotations

import asyncio
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import slixmpp
from lxml import etree
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase

from tests.helpers.harness import error_condition

SERVICE = "conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = f"{NS_MUC}#user"
NS_ADMIN = f"{NS_MUC}#admin"
NS_OWNER = f"{NS_MUC}#owner"
NS_ROOMCONFIG = f"{NS_MUC}#roomconfig"
NS_DATA = "jabber:x:data"
NS_DELAY = "urn:xmpp:delay"
NS_SID = "urn:xmpp:sid:0"
NS_OID = "urn:xmpp:occupant-id:0"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
C = "{jabber:client}"
TIMEOUT = 10.0
_ids = itertools.count()

Predicate = Callable[[etree._Element], bool]


def new_id(prefix: str = "t") -> str:
    """A fresh stanza id."""
    return f"{prefix}{next(_ids)}"


def bare(jid: str | None) -> str:
    """The bare part of a JID string."""
    return (jid or "").split("/", 1)[0]


def resource(jid: str | None) -> str | None:
    """The resource of a JID string (None for a bare JID)."""
    parts = (jid or "").split("/", 1)
    return parts[1] if len(parts) == 2 else None


def user_x(element: etree._Element) -> etree._Element | None:
    """The <x xmlns='…muc#user'/> child."""
    return element.find(f"{{{NS_USER}}}x")


def codes(element: etree._Element) -> set[int]:
    """The MUC status codes of a presence or message."""
    x = user_x(element)
    if x is None:
        return set()
    return {int(s.get("code") or 0) for s in x.findall(f"{{{NS_USER}}}status")}


def item(element: etree._Element) -> dict[str, str]:
    """The attributes of the <item/> in <x xmlns='…muc#user'/> ({} if none)."""
    x = user_x(element)
    found = None if x is None else x.find(f"{{{NS_USER}}}item")
    return {} if found is None else {str(k): str(v) for k, v in found.attrib.items()}


def condition(element: etree._Element) -> str | None:
    """The error condition of an error stanza."""
    return error_condition(element)


def is_presence(
    frm: str | None = None, *, type_: str | None = "any", code: int | None = None
) -> Predicate:
    """Match a presence (from `frm` exactly, or from anyone in room `frm` if it has no '/')."""

    def match(el: etree._Element) -> bool:
        if el.tag != f"{C}presence":
            return False
        if frm is not None:
            sender = el.get("from") or ""
            if ("/" in frm and sender != frm) or ("/" not in frm and bare(sender) != frm):
                return False
        if type_ != "any" and el.get("type") != type_:
            return False
        return code is None or code in codes(el)

    return match


def is_message(
    frm: str | None = None, *, type_: str | None = "any", body: str | None = None
) -> Predicate:
    """Match a message (from `frm` exactly, or from anyone in room `frm` if it has no '/')."""

    def match(el: etree._Element) -> bool:
        if el.tag != f"{C}message":
            return False
        if frm is not None:
            sender = el.get("from") or ""
            if ("/" in frm and sender != frm) or ("/" not in frm and bare(sender) != frm):
                return False
        if type_ != "any" and el.get("type") != type_:
            return False
        return body is None or el.findtext(f"{C}body") == body

    return match


class _TapMatcher(MatcherBase):  # slixmpp is untyped (ignored by mypy config)
    def __init__(self) -> None:
        super().__init__(None)

    def match(self, xml: object) -> bool:
        element = getattr(xml, "xml", None)
        if element is None:
            return False
        tag = element.tag
        if tag in (f"{C}message", f"{C}presence"):
            return True
        # IQ requests are left to slixmpp's handlers (pings, unknown-IQ errors).
        return bool(tag == f"{C}iq" and element.get("type") in ("result", "error"))


class Tap:
    """Every message, presence and IQ response a slixmpp client receives, in order."""

    def __init__(self, client: slixmpp.ClientXMPP, name: str = "") -> None:
        self.client = client
        self.name = name or str(client.boundjid)
        self.buffer: list[etree._Element] = []
        self._arrived = asyncio.Event()
        client.register_handler(Callback(f"muc-tap-{id(self)}", _TapMatcher(), self._got))

    @property
    def jid(self) -> str:
        """The client's full JID."""
        return str(self.client.boundjid)

    @property
    def bare_jid(self) -> str:
        """The client's bare JID."""
        return str(self.client.boundjid.bare)

    def _got(self, stanza: object) -> None:
        raw = ET.tostring(stanza.xml)  # type: ignore[attr-defined]
        self.buffer.append(etree.fromstring(raw))
        self._arrived.set()

    def send(self, xml: str) -> None:
        """Send raw XML (a stanza in the jabber:client stream namespace)."""
        self.client.send_raw(xml)

    async def expect(
        self, predicate: Predicate, timeout: float = TIMEOUT, what: str = "a stanza"
    ) -> etree._Element:
        """The first received stanza matching `predicate` (removed from the buffer)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for index, element in enumerate(self.buffer):
                if predicate(element):
                    del self.buffer[index]
                    return element
            self._arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                got = "\n".join(etree.tostring(e).decode() for e in self.buffer[-15:])
                raise AssertionError(f"{self.name}: no {what} within {timeout}s; buffer:\n{got}")
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                continue

    def take(self, predicate: Predicate) -> list[etree._Element]:
        """Remove and return every buffered stanza matching `predicate`."""
        found = [e for e in self.buffer if predicate(e)]
        self.buffer = [e for e in self.buffer if not predicate(e)]
        return found

    def clear(self) -> None:
        """Forget everything received so far."""
        self.buffer.clear()

    async def iq(
        self, type_: str, to: str, payload: str = "", timeout: float = TIMEOUT
    ) -> etree._Element:
        """Send an IQ and return its response (result or error)."""
        id_ = new_id("iq")
        self.send(f"<iq type='{type_}' id='{id_}' to='{to}'>{payload}</iq>")
        return await self.expect(
            lambda e: e.tag == f"{C}iq" and e.get("id") == id_, timeout, f"reply to iq {id_}"
        )

    async def iq_ok(self, type_: str, to: str, payload: str = "") -> etree._Element:
        """An IQ that must succeed."""
        reply = await self.iq(type_, to, payload)
        assert reply.get("type") == "result", etree.tostring(reply).decode()
        return reply

    async def iq_error(self, type_: str, to: str, payload: str = "") -> str | None:
        """An IQ that must fail; returns the error condition."""
        reply = await self.iq(type_, to, payload)
        assert reply.get("type") == "error", etree.tostring(reply).decode()
        return condition(reply)

    async def settle(self) -> None:
        """A round trip to the server: whatever was routed to us before has arrived."""
        await self.iq_ok("get", "localhost", "<ping xmlns='urn:xmpp:ping'/>")

    async def nothing(self, predicate: Predicate) -> None:
        """Assert that no stanza matching `predicate` arrived (after a round trip)."""
        await self.settle()
        found = [etree.tostring(e).decode() for e in self.buffer if predicate(e)]
        assert not found, f"{self.name} got unexpected stanzas: {found}"


@dataclass
class Joined:
    """What the room sent on entering, in order."""

    self_presence: etree._Element
    occupants: list[etree._Element] = field(default_factory=list)
    history: list[etree._Element] = field(default_factory=list)
    subject: etree._Element | None = None
    order: list[str] = field(default_factory=list)  # "presence" / "self" / "history" / "subject"


def room_jid(name: str) -> str:
    """name@conference.localhost."""
    return f"{name}@{SERVICE}"


def join_stanza(
    room: str, nick: str, *, password: str | None = None, history: str = "", extra: str = ""
) -> str:
    """The XEP-0045 §7.2.1 join presence."""
    inner = history
    if password is not None:
        inner += f"<password>{password}</password>"
    return f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>{inner}</x>{extra}</presence>"


async def join_error(tap: Tap, room: str, nick: str, **kwargs: str) -> str | None:
    """Try to enter; the room must refuse with a presence error; returns its condition."""
    tap.send(join_stanza(room, nick, **kwargs))
    error = await tap.expect(
        lambda e: (
            e.tag == f"{C}presence"
            and bare(e.get("from")) == room
            and (e.get("type") == "error" or e.get("from") == f"{room}/{nick}" or 110 in codes(e))
        ),
        what=f"an answer from {room}",
    )
    assert error.get("type") == "error", etree.tostring(error).decode()
    return condition(error)


async def join(
    tap: Tap,
    room: str,
    nick: str,
    *,
    password: str | None = None,
    history: str = "",
    extra: str = "",
    subject: bool = True,
) -> Joined:
    """Enter `room` as `nick`; collects occupant presences, self-presence (status 110), history
    and the subject (§7.1 order); fails on a presence error."""
    tap.send(join_stanza(room, nick, password=password, history=history, extra=extra))
    return await joined(tap, room, subject=subject)


async def joined(tap: Tap, room: str, *, subject: bool = True) -> Joined:
    """Collect what the room sends after a join presence (see `join`)."""
    order: list[str] = []
    occupants: list[etree._Element] = []

    def from_room(e: etree._Element) -> bool:
        return e.tag in (f"{C}presence", f"{C}message") and bare(e.get("from")) == room

    while True:
        element = await tap.expect(
            lambda e: from_room(e) and e.tag == f"{C}presence", what=f"presence from {room}"
        )
        assert element.get("type") != "error", etree.tostring(element).decode()
        if 110 in codes(element):
            self_presence = element
            order.append("self")
            break
        occupants.append(element)
        order.append("presence")
    result = Joined(self_presence, occupants, order=order)
    if not subject:
        return result
    while True:
        element = await tap.expect(
            lambda e: from_room(e) and e.tag == f"{C}message" and e.get("type") == "groupchat",
            what=f"history or subject from {room}",
        )
        if element.find(f"{C}subject") is not None and element.find(f"{C}body") is None:
            result.subject = element
            order.append("subject")
            return result
        result.history.append(element)
        order.append("history")


def form(values: Mapping[str, str | Iterable[str]], form_type: str = NS_ROOMCONFIG) -> str:
    """A submitted XEP-0004 form."""
    fields = f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"
    for var, value in values.items():
        items = [value] if isinstance(value, str) else list(value)
        fields += f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in items)
        fields += "</field>"
    return f"<x xmlns='{NS_DATA}' type='submit'>{fields}</x>"


def config_payload(values: Mapping[str, str | Iterable[str]]) -> str:
    """A muc#owner <query/> with a submitted room configuration."""
    return f"<query xmlns='{NS_OWNER}'>{form(values)}</query>"


async def configure(tap: Tap, room: str, values: Mapping[str, str | Iterable[str]]) -> None:
    """Submit a room configuration (§10.2); it must be accepted."""
    await tap.iq_ok("set", room, config_payload(values))


async def config_form(tap: Tap, room: str) -> dict[str, etree._Element]:
    """The room configuration form's fields, by var."""
    reply = await tap.iq_ok("get", room, f"<query xmlns='{NS_OWNER}'/>")
    x = reply.find(f"{{{NS_OWNER}}}query/{{{NS_DATA}}}x")
    assert x is not None, etree.tostring(reply).decode()
    return {f.get("var") or "": f for f in x.findall(f"{{{NS_DATA}}}field")}


async def create(
    tap: Tap, room: str, nick: str, config: Mapping[str, str | Iterable[str]] | None = None
) -> Joined:
    """Create a room (§10.1): enter (201, owner), then unlock it with the instant-room empty
    form, or with `config` submitted as a reserved room."""
    tap.send(join_stanza(room, nick))
    result = await joined(tap, room, subject=False)
    assert {110, 201} <= codes(result.self_presence), etree.tostring(result.self_presence)
    assert item(result.self_presence).get("affiliation") == "owner"
    if config is None:
        await tap.iq_ok(
            "set", room, f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>"
        )
    else:
        await config_form(tap, room)
        await configure(tap, room, config)
    return result


def admin_item(**attrs: str) -> str:
    """A muc#admin <query><item …/></query> payload (a 'reason' becomes a child)."""
    reason = attrs.pop("reason", None)
    attributes = " ".join(f"{k}='{v}'" for k, v in attrs.items())
    inner = f"<reason>{reason}</reason>" if reason else ""
    return f"<query xmlns='{NS_ADMIN}'><item {attributes}>{inner}</item></query>"


async def disco_info(tap: Tap, to: str) -> tuple[set[str], list[dict[str, str]], etree._Element]:
    """Features, identities and the raw result of a disco#info query."""
    reply = await tap.iq_ok("get", to, f"<query xmlns='{NS_DISCO_INFO}'/>")
    query = reply.find(f"{{{NS_DISCO_INFO}}}query")
    assert query is not None
    features = {f.get("var") or "" for f in query.findall(f"{{{NS_DISCO_INFO}}}feature")}
    identities = [
        {str(k): str(v) for k, v in i.attrib.items()}
        for i in query.findall(f"{{{NS_DISCO_INFO}}}identity")
    ]
    return features, identities, query


async def disco_items(tap: Tap, to: str) -> list[str]:
    """The JIDs of a disco#items result."""
    reply = await tap.iq_ok("get", to, f"<query xmlns='{NS_DISCO_ITEMS}'/>")
    return [i.get("jid") or "" for i in reply.iter(f"{{{NS_DISCO_ITEMS}}}item")]


def stanza_id(message: etree._Element, by: str) -> str | None:
    """The XEP-0359 stanza id stamped by `by`."""
    for sid in message.findall(f"{{{NS_SID}}}stanza-id"):
        if sid.get("by") == by:
            return sid.get("id")
    return None


def occupant_id(element: etree._Element) -> str | None:
    """The XEP-0421 occupant id."""
    found = element.findall(f"{{{NS_OID}}}occupant-id")
    assert len(found) <= 1, "more than one <occupant-id/>"
    return found[0].get("id") if found else None


def say(tap: Tap, room: str, body: str, id_: str | None = None, extra: str = "") -> str:
    """Send a groupchat message; returns its id."""
    id_ = id_ or new_id("m")
    tap.send(
        f"<message to='{room}' type='groupchat' id='{id_}'><body>{body}</body>{extra}</message>"
    )
    return id_
