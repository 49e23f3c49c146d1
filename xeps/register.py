"""XEP-0077: In-Band Registration — account creation, password change and account removal.

A logged-in user may always change their password (new SCRAM verifiers, through the account
store) and remove their account (§3.2: the result is sent, then every session of the account
ends with <not-authorized/> and its data is deleted). Creating accounts before authentication
is off unless `allow_registration` is set; then the stream feature
``<register xmlns='http://jabber.org/features/iq-register'/>`` is offered over TLS only (the
stream layer never offers it in plaintext), usernames are prepared (RFC 7622 localpart) and
creations are limited per client IP address (`registrations_per_ip` per
`registration_period` seconds).
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from dataclasses import dataclass

from lxml import etree

from xmppd.accounts import AccountError, AccountStore
from xmppd.errors import StanzaError
from xmppd.jid import JID, JIDError, prep_localpart
from xmppd.module_api import IqRequest, Module, PreAuthRequest, Target, iq_handler

NS_REGISTER = "jabber:iq:register"
NS_FEATURE = "http://jabber.org/features/iq-register"
QUERY = f"{{{NS_REGISTER}}}query"
# Key-value stores of the account's data kept by modules of this family, deleted with the
# account (until a core ACCOUNT_REMOVED event lets every module clean up its own).
MAX_TRACKED_ADDRESSES = 10_000


def _query() -> etree._Element:
    return etree.Element(QUERY, nsmap={None: NS_REGISTER})


def _text(payload: etree._Element, name: str) -> str | None:
    return payload.findtext(f"{{{NS_REGISTER}}}{name}")


def _throttle_key(peer: str) -> str:
    """The address registrations are counted by: an IPv6 client is one /64 (one subscriber's
    prefix), an IPv4 client its address."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class RateLimit:
    """At most `count` events per `period` seconds per key (here: client IP address)."""

    def __init__(self, count: int, period: float) -> None:
        self.count = count
        self.period = period
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= MAX_TRACKED_ADDRESSES:
                self.prune(now)
            events = self._events[key] = deque()
        while events and events[0] <= now - self.period:
            events.popleft()
        return events

    def allowed(self, key: str, now: float | None = None) -> bool:
        """Whether one more event is allowed for `key` now."""
        now = time.monotonic() if now is None else now
        return len(self._recent(key, now)) < self.count

    def refund(self, key: str) -> None:
        """Take back the latest event of `key` (the attempt it counted failed)."""
        events = self._events.get(key)
        if events:
            events.pop()

    def record(self, key: str, now: float | None = None) -> None:
        """Count one event for `key`."""
        now = time.monotonic() if now is None else now
        self._recent(key, now).append(now)

    def prune(self, now: float) -> None:
        """Forget keys whose events are all older than the period."""
        for key in [k for k, ev in self._events.items() if not ev or ev[-1] <= now - self.period]:
            del self._events[key]


class Register(Module):
    """In-band registration."""

    xeps = (77,)
    features = (NS_REGISTER,)
    host_types = ("local",)

    @dataclass(frozen=True)
    class Options:
        """`allow_registration`: let anyone create accounts over TLS before logging in.

        `registrations_per_ip` accounts may be created per `registration_period` seconds from
        one IP address.
        """

        allow_registration: bool = False
        registrations_per_ip: int = 1
        registration_period: float = 60.0
        instructions: str = "Choose a username and password to register with this server."

    async def load(self) -> None:
        """Offer pre-authentication registration when enabled."""
        self._limit = RateLimit(self.options.registrations_per_ip, self.options.registration_period)
        self._feature = etree.Element(f"{{{NS_FEATURE}}}register", nsmap={None: NS_FEATURE})
        if self.options.allow_registration:
            # Withdrawn by the loader on unload.
            self.ctx.add_pre_auth_feature(self._offer)
            self.ctx.add_pre_auth_iq_handler("get", QUERY, self.form)
            self.ctx.add_pre_auth_iq_handler("set", QUERY, self.create)

    def _offer(self) -> etree._Element:
        return self._feature

    @property
    def accounts(self) -> AccountStore:
        """The server's account store (the composition root's, not in ServerServices yet)."""
        return self.ctx.services.accounts

    # --- before authentication -------------------------------------------------------------
    async def form(self, request: PreAuthRequest) -> etree._Element:
        """§3.1: the fields needed to register."""
        query = _query()
        etree.SubElement(query, f"{{{NS_REGISTER}}}instructions").text = self.options.instructions
        etree.SubElement(query, f"{{{NS_REGISTER}}}username")
        etree.SubElement(query, f"{{{NS_REGISTER}}}password")
        return query

    async def create(self, request: PreAuthRequest) -> None:
        """§3.1: create the account (throttled per IP address)."""
        payload = request.payload
        if payload.find(f"{{{NS_REGISTER}}}remove") is not None:
            raise StanzaError("not-authorized", "log in to remove an account")
        raw_user = _text(payload, "username")
        password = _text(payload, "password")
        if not raw_user or not password:
            raise StanzaError("not-acceptable", "a username and a password are required")
        try:
            username = prep_localpart(raw_user)
        except JIDError:
            raise StanzaError("jid-malformed", "the username is not a valid localpart") from None
        source = _throttle_key(request.peer)
        if not self._limit.allowed(source):
            # §3.1.1: "too many registrations" is answered not-acceptable.
            raise StanzaError("not-acceptable", "too many registrations from your address")
        # Counted before any await, so concurrent requests from one address cannot all pass;
        # taken back if the attempt fails (only created accounts count).
        self._limit.record(source)
        jid = JID(username, request.domain, None)
        try:
            if await self.accounts.exists(request.domain, username):
                raise StanzaError("conflict", "this username is taken")
            try:
                await self.accounts.create(jid, password)
            except AccountError as exc:
                if await self.accounts.exists(request.domain, username):
                    raise StanzaError("conflict", "this username is taken") from None
                raise StanzaError("not-acceptable", str(exc)) from None
        except BaseException:
            self._limit.refund(source)
            raise
        self.ctx.log.info("registered %s from %s", jid, request.peer)

    # --- after authentication --------------------------------------------------------------
    @iq_handler("get", NS_REGISTER, "query")
    async def registered(self, request: IqRequest) -> etree._Element:
        """§3.1 (already registered): the account's username."""
        if request.from_.domain != self.ctx.host.domain or request.from_.local is None:
            raise StanzaError("service-unavailable")
        query = _query()
        etree.SubElement(query, f"{{{NS_REGISTER}}}registered")
        etree.SubElement(query, f"{{{NS_REGISTER}}}username").text = request.from_.local
        return query

    @iq_handler("get", NS_REGISTER, "query", to=Target.ACCOUNT)
    async def registered_account(self, request: IqRequest) -> etree._Element:
        """The same, addressed to the account (or without 'to')."""
        self._own(request)
        return await self.registered(request)

    @iq_handler("set", NS_REGISTER, "query")
    async def change(self, request: IqRequest) -> None:
        """§3.2 removal, §3.3 password change."""
        if request.from_.domain != self.ctx.host.domain or request.from_.local is None:
            raise StanzaError("service-unavailable")
        payload = request.payload
        if payload.find(f"{{{NS_REGISTER}}}remove") is not None:
            if len(payload) != 1:
                raise StanzaError("bad-request", "<remove/> must be the only child")
            await self._remove(request)
            return
        try:
            await self._change_password(request)
        except StanzaError:
            # §3.3: the original XML (the new password) is not sent back in the error.
            payload.clear()
            raise

    async def _change_password(self, request: IqRequest) -> None:
        payload = request.payload
        username = _text(payload, "username")
        password = _text(payload, "password")
        if username is None or password is None:
            raise StanzaError("bad-request", "a username and the new password are required")
        try:
            same = prep_localpart(username) == request.from_.local
        except JIDError:
            same = False
        if not same:
            raise StanzaError("not-authorized", "you may only change your own password")
        if not password:
            raise StanzaError("not-acceptable", "the password must not be empty")
        try:
            await self.accounts.set_password(request.from_.bare, password)
        except AccountError as exc:
            raise StanzaError("not-acceptable", str(exc)) from None
        self.ctx.log.info("password of %s changed", request.from_.bare)

    @iq_handler("set", NS_REGISTER, "query", to=Target.ACCOUNT)
    async def change_account(self, request: IqRequest) -> None:
        """The same, addressed to the account (or without 'to')."""
        self._own(request)
        await self.change(request)

    @staticmethod
    def _own(request: IqRequest) -> None:
        request.own_account("its registration")

    async def _remove(self, request: IqRequest) -> None:
        """§3.2: delete the account, answer, then end every session (<not-authorized/>), let
        modules act (ACCOUNT_REMOVED: subscriptions are cancelled) and delete the account's
        data (after the sessions, so that nothing written at their end survives)."""
        bare = request.from_.bare
        try:
            await self.accounts.delete(bare)  # first: no new login from here on
        except AccountError:
            raise StanzaError("registration-required") from None
        if request.origin is not None and request.origin.jid is not None:
            # The result must reach the client before its stream is closed.
            reply = etree.Element("{jabber:client}iq", nsmap={None: "jabber:client"})
            reply.set("type", "result")
            reply.set("id", request.stanza.id or "")
            reply.set("to", str(request.origin.jid))
            reply.set("from", str(request.to))
            request.origin.send(reply)
        await self.ctx.services.account_removed(bare)
        self.ctx.log.info("account %s removed", bare)
