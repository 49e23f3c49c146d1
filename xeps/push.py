"""XEP-0357: Push Notifications — publish a summary to the app server of an unreachable client.

A client enables notifications with ``<enable xmlns='urn:xmpp:push:0' jid=APP-SERVER node=N>``
(optionally with a ``pubsub#publish-options`` data form, e.g. a secret the app server wants
back) in an IQ set to its account; ``<disable jid= node=?>`` removes one or all registrations
of that app server. Registrations are stored per account (``push`` key-value store) together
with the resource of the session that enabled them: that session is "the client".

When a message worth notifying arrives (one with a body, or an encrypted payload) and a
registered client will not see it live, the server publishes to the registration's node
(XEP-0357 §7): a ``<notification/>`` item with the ``urn:xmpp:push:summary`` form and the
stored publish options. "Will not see it live" means:

- the account has no available resource (MESSAGE_OFFLINE; hooked above the offline module,
  and never consumed, so the message is still stored): every registration whose client has
  no live connection;
- the message goes to sessions that are bound but hibernated by stream management (no
  connection, ``session.detached``): the registrations of those clients.

Privacy (XEP-0357 §10): the summary carries only ``message-count`` unless ``include_sender``
/ ``include_body`` are set; both are off by default, since the app server is a third party.

Bursts: one publish per registration is in flight at a time; messages arriving meanwhile are
folded into one more publish with the updated count, sent when the first is answered. Errors
(§7.1): an error reply disables the registration, except transient ones (type ``wait``, or no
answer in time), which disable it only after ``max_transient_errors`` in a row. An app
server that revokes the account's affiliation (§8: a message with ``<affiliation
affiliation='none'/>`` for the node) disables that registration too. The count of
messages restarts when the client binds or resumes a session or the account comes online again.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.events import (
    INITIAL_PRESENCE,
    MESSAGE_BARE,
    MESSAGE_FULL,
    MESSAGE_OFFLINE,
    SESSION_BOUND,
    SESSION_RESUMED,
    MessageOffline,
    Priority,
    SessionEvent,
    StanzaEvent,
)
from xmppd.jid import JID, JIDError
from xmppd.lib.forms import FORM_TYPE, Field, X, build_form, parse_submitted
from xmppd.lib.hints import has_body
from xmppd.module_api import IqRequest, Module, StoreKind, Target, hook, iq_handler
from xmppd.ns import NS_CLIENT, NS_STANZAS
from xmppd.session import Session
from xmppd.stanza import make, new_id

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
SUMMARY = "urn:xmpp:push:summary"
_PUBSUB = f"{{{NS_PUBSUB}}}pubsub"
STORE = "push"
# Encrypted payloads have no (useful) body but deserve a notification: OMEMO, OX, OTR-less E2E.
_ENCRYPTED = (
    "{eu.siacs.conversations.axolotl}encrypted",
    "{urn:xmpp:omemo:2}encrypted",
    "{urn:xmpp:openpgp:0}openpgp",
    "{urn:xmpp:eme:0}encryption",
)
_MAX_NODE = 1023  # characters of a node name (a pubsub node id; no defined limit, keep it sane)
_SEEN = 32  # message identities remembered per registration (see _Pending.seen)
_MAX_FORM = 4096  # bytes of stored publish options
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


@dataclass(slots=True)
class _Pending:
    """Per-registration publish state (in memory): count and coalescing."""

    count: int = 0  # messages notified since the client was last online
    sender: str | None = None
    body: str | None = None
    resource: str | None = None  # the registration's client
    inflight: bool = False
    dirty: bool = False  # more messages arrived while a publish was in flight
    transient_errors: int = 0
    # (sender, id) of the last messages notified: a message pushed while its session
    # hibernated comes back through MESSAGE_OFFLINE when stream management gives up on it.
    seen: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=_SEEN))


@dataclass(frozen=True, slots=True)
class Registration:
    """One enabled (app server JID, node) of an account."""

    jid: str
    node: str
    form: str | None = None  # the publish-options form, serialised
    resource: str | None = None  # the session (client) that enabled it

    @property
    def key(self) -> str:
        """The storage key: JID and node (a node may hold any character but NUL)."""
        return f"{self.jid}\x00{self.node}"


@dataclass(slots=True)
class _Trigger:
    sender: str
    body: str | None
    resources: set[str] | None = field(default=None)  # None: every offline client
    ident: tuple[str, str] | None = None  # (sender, stanza id) when it has an id


def _worth_notifying(message: etree._Element) -> bool:
    if message.get("type") in ("error", "headline"):
        return False
    return has_body(message) or any(message.find(tag) is not None for tag in _ENCRYPTED)


class Push(Module):
    """XEP-0357 enable/disable, and publishing notifications to app servers."""

    xeps = (357,)
    account_features = (NS_PUSH,)
    stores = {STORE: StoreKind.KEYVALUE}

    @dataclass(frozen=True)
    class Options:
        """Module options (documented in conf/xmppd.toml)."""

        include_sender: bool = False  # last-message-sender in the summary
        include_body: bool = False  # last-message-body in the summary
        max_body_length: int = 256  # characters of the body, when included
        max_registrations: int = 20  # per account
        publish_timeout: float = 30.0  # seconds to wait for the app server's answer
        max_transient_errors: int = 3  # 'wait' errors / timeouts in a row before disabling

    async def load(self) -> None:
        """In-memory publish state and the background publishing tasks."""
        self.store = self.ctx.keyvalue(STORE)
        self._pending: dict[tuple[str, str], _Pending] = {}  # (user, registration key)
        self._tasks: set[asyncio.Task[None]] = set()

    async def unload(self) -> None:
        """Cancel publishes in flight."""
        for task in list(self._tasks):
            task.cancel()

    # --- enable / disable -------------------------------------------------------------------
    @iq_handler("set", NS_PUSH, "enable", to=Target.ACCOUNT)
    async def enable(self, request: IqRequest) -> None:
        """XEP-0357 §5: register (jid, node); the last request's publish options win."""
        user = request.own_account("its push registrations")
        payload = request.payload
        jid = _service_jid(payload.get("jid"))
        node = payload.get("node")
        if not node:
            raise StanzaError("bad-request", "the 'node' attribute is required")
        if len(node) > _MAX_NODE or "\x00" in node:
            raise StanzaError("not-acceptable", "the node name is too long")
        form = _publish_options(payload)
        resource = request.origin.full_jid.resource if request.origin is not None else None
        registration = Registration(jid, node, form, resource)
        keys = await self.store.keys(user)
        if registration.key not in keys and len(keys) >= self.options.max_registrations:
            raise StanzaError(
                "policy-violation",
                f"at most {self.options.max_registrations} push registrations per account",
            )
        await self.store.set(
            user,
            registration.key,
            {"jid": jid, "node": node, "form": form, "resource": resource},
        )
        self._pending.pop((user, registration.key), None)
        self.ctx.log.info("push enabled for %s@%s to %s", user, self.ctx.host.domain, jid)

    @iq_handler("set", NS_PUSH, "disable", to=Target.ACCOUNT)
    async def disable(self, request: IqRequest) -> None:
        """XEP-0357 §6: remove (jid, node), or every node of jid when no node is given."""
        user = request.own_account("its push registrations")
        jid = _service_jid(request.payload.get("jid"))
        node = request.payload.get("node")
        for registration in await self.registrations(user):
            if registration.jid == jid and (node is None or registration.node == node):
                await self._remove(user, registration)

    async def registrations(self, user: str) -> list[Registration]:
        """The stored registrations of an account (corrupt entries are skipped)."""
        out = []
        for key in await self.store.keys(user):
            registration = _registration(await self.store.get(user, key))
            if registration is not None:
                out.append(registration)
        return out

    async def _registration(self, user: str, key: str) -> Registration | None:
        value = await self.store.get(user, key)
        return _registration(value)

    async def _remove(self, user: str, registration: Registration) -> None:
        await self.store.delete(user, registration.key)
        pending = self._pending.get((user, registration.key))
        if pending is not None and not pending.inflight:
            del self._pending[(user, registration.key)]

    # --- when to notify ---------------------------------------------------------------------
    @hook(MESSAGE_OFFLINE, priority=Priority.HIGH)
    def offline(self, event: MessageOffline) -> bool:
        """No available resource: notify every client without a live connection. Never
        consumes the event: the offline module still stores the message."""
        if _worth_notifying(event.stanza.element):
            self._trigger(event.username, event.stanza.element, None)
        return False

    @hook(MESSAGE_BARE, priority=Priority.HIGH)
    def bare(self, event: StanzaEvent) -> bool:
        """RFC 6121 §8.5.2.1.1 picks the highest-priority available resources: notify the
        clients among them that are hibernated (stream management, no connection)."""
        to = event.to
        if to.local is None:
            return False
        pubsub = event.stanza.element.find(_PUBSUB)
        if pubsub is not None:
            self._spawn(self._remote_disable(to.local, event.stanza.from_, pubsub), "push-remote")
        available = [s for s in self.ctx.sessions.available(to.bare) if s.priority >= 0]
        if not available or not any(s.detached for s in available):
            return False  # the hot path: nobody hibernated (or offline: MESSAGE_OFFLINE)
        if event.stanza.type != "headline":
            top = max(s.priority for s in available)
            available = [s for s in available if s.priority == top]
        self._notify_detached(to.local, event.stanza.element, available)
        return False

    @hook(MESSAGE_FULL, priority=Priority.HIGH)
    def full(self, event: StanzaEvent) -> bool:
        """A message to the full JID of a hibernated session notifies that client."""
        session = self.ctx.sessions.get(event.to)
        if session is not None and session.detached and event.to.local is not None:
            self._notify_detached(event.to.local, event.stanza.element, [session])
        return False

    def _notify_detached(
        self, user: str, element: etree._Element, sessions: Iterable[Session]
    ) -> None:
        resources = {s.full_jid.resource or "" for s in sessions if s.detached}
        if resources and _worth_notifying(element):
            self._trigger(user, element, resources)

    @hook(SESSION_BOUND)
    @hook(SESSION_RESUMED)
    async def bound(self, event: SessionEvent) -> None:
        """The client is back (a new session, or a resumed one): its count of missed
        messages starts again."""
        self._reset(event.session)

    @hook(INITIAL_PRESENCE)
    async def online(self, event: SessionEvent) -> None:
        """The account is online again: offline messages are being delivered."""
        self._reset(event.session, every_client=True)

    async def _remote_disable(self, user: str, service: JID, pubsub: etree._Element) -> None:
        """XEP-0357 §8: the app server revoked our publish affiliation: forget that node."""
        node = pubsub.get("node")
        account = JID(user, self.ctx.host.domain, None)
        revoked = any(
            item.get("affiliation") == "none" and _same_account(item.get("jid"), account)
            for item in pubsub.iterchildren(f"{{{NS_PUBSUB}}}affiliation")
        )
        if not node or not revoked:
            return
        for registration in await self.registrations(user):
            if registration.jid == str(service) and registration.node == node:
                self.ctx.log.info("push registration of %s removed by %s", user, service)
                await self._remove(user, registration)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Background work off the stanza path, cancelled on unload."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reset(self, session: Session, every_client: bool = False) -> None:
        user = session.username
        resource = session.full_jid.resource if session.jid is not None else None
        for key, pending in list(self._pending.items()):
            if key[0] == user and (every_client or pending.resource == resource):
                pending.count = 0
                pending.sender = pending.body = None
                if not pending.inflight:
                    del self._pending[key]

    # --- publishing -------------------------------------------------------------------------
    def _trigger(self, user: str, element: etree._Element, resources: set[str] | None) -> None:
        body = element.findtext(f"{{{NS_CLIENT}}}body")
        sender, id_ = element.get("from") or "", element.get("id")
        trigger = _Trigger(sender, body, resources, (sender, id_) if id_ else None)
        # Off the stanza path: the app server may be slow, and the message is already routed.
        self._spawn(self._notify(user, trigger), "push-notify")

    async def _notify(self, user: str, trigger: _Trigger) -> None:
        try:
            registrations = await self.registrations(user)
        except Exception:
            self.ctx.log.exception("cannot read the push registrations of %s", user)
            return
        host = self.ctx.host.domain
        for registration in registrations:
            resource = registration.resource
            if trigger.resources is not None:
                if resource not in trigger.resources:
                    continue
            elif resource is not None:
                session = self.ctx.sessions.get(JID(user, host, resource))
                if session is not None and not session.detached:
                    continue  # that client is connected: it gets the message itself
            key = (user, registration.key)
            pending = self._pending.setdefault(key, _Pending(resource=resource))
            if trigger.ident is not None:
                if trigger.ident in pending.seen:
                    continue  # this client was already told about this message
                pending.seen.append(trigger.ident)
            pending.count += 1
            pending.sender = trigger.sender
            pending.body = trigger.body
            if pending.inflight:
                pending.dirty = True  # folded into the next publish
                continue
            pending.inflight = True
            self._spawn(self._publish_loop(user, registration), "push-publish")

    async def _publish_loop(self, user: str, registration: Registration) -> None:
        key = (user, registration.key)
        pending = self._pending[key]
        try:
            while True:
                pending.dirty = False
                # Read again: a disable (or an enable with new options) may have come meanwhile.
                current = await self._registration(user, registration.key)
                if current is None or not await self._publish(user, current, pending):
                    break
                if not pending.dirty:
                    break
        finally:
            pending.inflight = False
            if pending.count == 0 and self._pending.get(key) is pending:
                del self._pending[key]

    async def _publish(self, user: str, registration: Registration, pending: _Pending) -> bool:
        """One publish; False when the registration was disabled (or is gone)."""
        iq = self._publish_iq(user, registration, pending)
        try:
            reply = await self.ctx.request_iq(iq, timeout=self.options.publish_timeout)
        except TimeoutError:
            return await self._transient(user, registration, pending, "no answer in time")
        if reply.get("type") == "result":
            pending.transient_errors = 0
            return True
        error = reply.find(f"{{{NS_CLIENT}}}error")
        condition = _condition(error)
        if error is not None and error.get("type") == "wait":
            return await self._transient(user, registration, pending, condition)
        # XEP-0357 §7.1: an error reply disables the (jid, node) combination.
        self.ctx.log.info(
            "push registration of %s to %s disabled: %s", user, registration.jid, condition
        )
        await self._remove(user, registration)
        return False

    async def _transient(
        self, user: str, registration: Registration, pending: _Pending, why: str
    ) -> bool:
        pending.transient_errors += 1
        if pending.transient_errors < self.options.max_transient_errors:
            self.ctx.log.info("push to %s for %s failed (%s)", registration.jid, user, why)
            return True
        self.ctx.log.info(
            "push registration of %s to %s disabled after %d failures (%s)",
            user,
            registration.jid,
            pending.transient_errors,
            why,
        )
        await self._remove(user, registration)
        return False

    def _publish_iq(
        self, user: str, registration: Registration, pending: _Pending
    ) -> etree._Element:
        account = JID(user, self.ctx.host.domain, None)
        iq = make("iq", type_="set", to=registration.jid, from_=account, id_=new_id())
        pubsub = etree.SubElement(iq, f"{{{NS_PUBSUB}}}pubsub", nsmap={None: NS_PUBSUB})
        publish = etree.SubElement(pubsub, f"{{{NS_PUBSUB}}}publish", node=registration.node)
        item = etree.SubElement(publish, f"{{{NS_PUBSUB}}}item")
        notification = etree.SubElement(item, f"{{{NS_PUSH}}}notification", nsmap={None: NS_PUSH})
        fields = [Field("message-count", values=(str(pending.count),))]
        if self.options.include_sender and pending.sender:
            fields.append(Field("last-message-sender", "jid-single", (pending.sender,)))
        if self.options.include_body and pending.body is not None:
            body = pending.body[: self.options.max_body_length]
            fields.append(Field("last-message-body", values=(body,)))
        notification.append(build_form(SUMMARY, fields, type_="submit"))
        if registration.form is not None:
            options = etree.SubElement(pubsub, f"{{{NS_PUBSUB}}}publish-options")
            try:
                options.append(etree.fromstring(registration.form.encode(), _PARSER))
            except etree.XMLSyntaxError:
                self.ctx.log.error("stored publish options of %s are corrupt", user)
        return iq


def _registration(value: object) -> Registration | None:
    """A stored registration (None when absent or corrupt)."""
    if not isinstance(value, dict):
        return None
    jid, node, form, resource = (value.get(k) for k in ("jid", "node", "form", "resource"))
    if not isinstance(jid, str) or not isinstance(node, str):
        return None
    return Registration(
        jid,
        node,
        form if isinstance(form, str) else None,
        resource if isinstance(resource, str) else None,
    )


def _same_account(text: str | None, account: JID) -> bool:
    try:
        return text is not None and JID.parse(text).bare == account
    except JIDError:
        return False


def _service_jid(text: str | None) -> str:
    if not text:
        raise StanzaError("bad-request", "the 'jid' attribute is required")
    try:
        return str(JID.parse(text))
    except JIDError as exc:
        raise StanzaError("jid-malformed", str(exc)) from None


def _publish_options(payload: etree._Element) -> str | None:
    """The publish-options form of an <enable/>, checked and serialised (None when absent)."""
    forms = list(payload.iterchildren(X))
    if not forms:
        return None
    if len(forms) > 1:
        raise StanzaError("bad-request", "at most one publish-options form")
    form = copy.deepcopy(forms[0])
    if form.get("type") is None:
        form.set("type", "submit")  # COMPAT: XEP-0357's own example omits it
    submitted = parse_submitted(form)  # bad-request for another form type or broken fields
    if submitted.form_type != NS_PUBLISH_OPTIONS:
        raise StanzaError("bad-request", f"the form's {FORM_TYPE} must be {NS_PUBLISH_OPTIONS}")
    data = etree.tostring(form)
    if len(data) > _MAX_FORM:
        raise StanzaError("not-acceptable", "the publish options are too large")
    return data.decode()


def _condition(error: etree._Element | None) -> str:
    if error is not None:
        for child in error:
            if isinstance(child.tag, str) and child.tag.startswith(f"{{{NS_STANZAS}}}"):
                name = etree.QName(child).localname
                if name != "text":
                    return name
    return "undefined-condition"
