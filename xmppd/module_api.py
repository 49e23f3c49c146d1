"""The module API: a module is one `Module` subclass whose contract is declared as data.

Static contract (class attributes): `name`, `xeps`, `features`, `account_features`,
`identities`, `host_types`, `depends`, `stores`, and a nested frozen dataclass `Options` that is
the module's configuration schema. Behaviour: methods decorated with `@hook`, `@iq_handler`
and `@nonza_handler`. Dynamic needs go through `self.ctx` (a `ModuleContext`). The loader
registers all of it and records every registration so that unload removes it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.events import ChainHandler, ChainKey, NotifyKey, Priority
from xmppd.features import DiscoItem, Identity, Scope
from xmppd.iq import IqHandler, IqRequest, Target
from xmppd.jid import JID
from xmppd.preauth import PreAuthFeature, PreAuthHandler, PreAuthRequest
from xmppd.stanza import new_id
from xmppd.storage import ArchiveStore, KeyValueStore, StoreKind

if TYPE_CHECKING:
    from xmppd.accounts import AccountStore
    from xmppd.hosts import Host, NonzaHandler, StreamFeatureProvider
    from xmppd.session import SendFilter, Session
    from xmppd.session_manager import SessionManager

__all__ = [
    "Identity",
    "IqRequest",
    "Module",
    "ModuleContext",
    "PreAuthRequest",
    "Priority",
    "Scope",
    "StanzaError",
    "StoreKind",
    "Target",
    "hook",
    "iq_handler",
    "nonza_handler",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class HookSpec:
    """A declared hook on a module method."""

    key: ChainKey[Any] | NotifyKey[Any]
    priority: int


@dataclass(frozen=True, slots=True)
class IqSpec:
    """A declared IQ handler on a module method."""

    type: str
    tag: str
    target: Target


@dataclass(frozen=True, slots=True)
class NonzaSpec:
    """A declared nonza handler on a module method."""

    tag: str


def hook(key: ChainKey[Any] | NotifyKey[Any], priority: int = Priority.NORMAL) -> Callable[[F], F]:
    """Declare a method as handler of event `key`."""

    def mark(func: F) -> F:
        func.__dict__.setdefault("_xmppd_specs", []).append(HookSpec(key, priority))
        return func

    return mark


def iq_handler(type_: str, ns: str, name: str, *, to: Target = Target.HOST) -> Callable[[F], F]:
    """Declare a method as IQ handler for `type_` and payload `{ns}name`."""

    def mark(func: F) -> F:
        func.__dict__.setdefault("_xmppd_specs", []).append(IqSpec(type_, f"{{{ns}}}{name}", to))
        return func

    return mark


def nonza_handler(ns: str, name: str) -> Callable[[F], F]:
    """Declare a method as handler of top-level element `{ns}name` (after authentication)."""

    def mark(func: F) -> F:
        func.__dict__.setdefault("_xmppd_specs", []).append(NonzaSpec(f"{{{ns}}}{name}"))
        return func

    return mark


class ServerServices(Protocol):
    """What the composition root offers modules (through their context only)."""

    sessions: SessionManager
    local_domains: frozenset[str]  # the hosts served (not their service subdomains)

    @property
    def accounts(self) -> AccountStore:
        """The account store."""

    async def route(self, element: etree._Element) -> None:
        """Route a server-generated stanza (its 'from' already set)."""

    async def route_many(self, element: etree._Element, recipients: Iterable[JID | str]) -> None:
        """Route copies of a server-generated stanza, one per recipient 'to', in order."""

    async def account_exists(self, host: str, username: str) -> bool:
        """Whether a local account exists."""

    def keyvalue(self, host: str, store: str) -> KeyValueStore:
        """A key-value store of a host."""

    def archive(self, host: str, store: str) -> ArchiveStore:
        """An archive store of a host."""

    def add_service_host(self, parent: Host, subdomain: str) -> Host:
        """Create a service subdomain host (e.g. conference.<host>)."""

    def remove_service_host(self, host: Host) -> None:
        """Stop serving a service subdomain host."""

    async def session_ended(self, session: Session, reason: str) -> None:
        """End a bound session."""

    def commit_barrier(self) -> asyncio.Future[None] | None:
        """Done once every storage write issued so far is committed (None: nothing pending).

        Stream management waits on it before acknowledging stanzas, so an ack never covers a
        stanza whose storage a crash could still lose.
        """

    async def account_removed(self, jid: JID) -> int:
        """A deleted account: end its sessions, fire ACCOUNT_REMOVED, delete its data."""

    def server_version(self) -> str:
        """The server software version."""


class NoOptions:
    """Options of a module that has none."""


class Module:
    """Base class of every extension module."""

    name: ClassVar[str] = ""
    xeps: ClassVar[tuple[int, ...]] = ()
    features: ClassVar[tuple[str, ...]] = ()
    account_features: ClassVar[tuple[str, ...]] = ()
    identities: ClassVar[tuple[Identity, ...]] = ()
    host_types: ClassVar[tuple[str, ...]] = ("local",)
    depends: ClassVar[tuple[str, ...]] = ()
    stores: ClassVar[dict[str, StoreKind]] = {}
    Options: ClassVar[type] = NoOptions

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx
        self.options: Any = ctx.options

    async def load(self) -> None:
        """Dynamic registrations; called after the declared ones."""

    async def unload(self) -> None:
        """Extra teardown; registrations made through ctx are removed automatically."""


class ModuleContext:
    """A module's only handle on the server. Every registration is recorded for unload."""

    def __init__(self, services: ServerServices, host: Host, name: str, options: object) -> None:
        self.services = services
        self.host = host
        self.name = name
        self.options = options
        self.log = logging.getLogger(f"xeps.{name}")
        self._undo: list[Callable[[], None]] = []
        self._kv: dict[str, KeyValueStore] = {}
        self._archives: dict[str, ArchiveStore] = {}

    # --- events --------------------------------------------------------------------------
    def hook(
        self,
        key: ChainKey[T],
        handler: ChainHandler[T],
        priority: int = Priority.NORMAL,
    ) -> None:
        """Register a chain-event handler on this host."""
        self.host.bus.add_chain(key, handler, priority)
        self._undo.append(lambda: self.host.bus.remove(key, handler))

    def hook_notify(
        self,
        key: NotifyKey[T],
        handler: Callable[[T], Awaitable[None]],
        priority: int = Priority.NORMAL,
    ) -> None:
        """Register a notify-event handler on this host."""
        self.host.bus.add_notify(key, handler, priority)
        self._undo.append(lambda: self.host.bus.remove(key, handler))

    async def fire(self, key: ChainKey[T], payload: T) -> bool:
        """Fire a chain event on this host."""
        return await self.host.bus.chain(key, payload)

    async def notify(self, key: NotifyKey[T], payload: T) -> None:
        """Fire a notify event on this host."""
        await self.host.bus.notify(key, payload)

    # --- stanzas -------------------------------------------------------------------------
    async def send(self, element: etree._Element) -> None:
        """Route a stanza from this host (sets 'from' to the host JID if absent)."""
        if element.get("from") is None:
            element.set("from", self.host.domain)
        await self.services.route(element)

    async def send_many(self, element: etree._Element, recipients: Iterable[JID | str]) -> None:
        """Route one stanza to each of `recipients` (e.g. a MUC broadcast), in order,
        serialized once (see `Delivery.fan_out`).

        `element` carries 'from' and everything but 'to'; each copy gets one recipient's
        'to'. The element is not changed and may be reused by the caller afterwards.
        """
        await self.services.route_many(element, recipients)

    async def request_iq(self, element: etree._Element, timeout: float = 30.0) -> etree._Element:
        """Send an IQ get/set and await its result or error element.

        Raises:
            TimeoutError: no answer within `timeout` seconds.
        """
        if element.get("id") is None:
            element.set("id", new_id())
        to = JID.parse(element.get("to") or self.host.domain)
        id_ = element.get("id") or ""
        future = self.host.iq.expect(to, id_)
        await self.send(element)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.host.iq.forget(to, id_)

    # --- registrations -------------------------------------------------------------------
    def add_iq_handler(
        self, type_: str, tag: str, handler: IqHandler, target: Target = Target.HOST
    ) -> None:
        """Register an IQ handler (tag in Clark notation)."""
        self.host.iq.add(type_, tag, handler, target)
        self._undo.append(lambda: self.host.iq.remove(type_, tag, target))

    def add_nonza_handler(self, tag: str, handler: NonzaHandler) -> None:
        """Register a handler for top-level elements of `tag` on authenticated streams."""
        if tag in self.host.nonza_handlers:
            raise ValueError(f"nonza {tag} already handled")
        self.host.nonza_handlers[tag] = handler
        self._undo.append(lambda: self._drop_nonza(tag))

    def _drop_nonza(self, tag: str) -> None:
        self.host.nonza_handlers.pop(tag, None)

    def add_stream_feature(self, provider: StreamFeatureProvider) -> None:
        """Offer a stream feature after authentication (e.g. stream management)."""
        self.host.stream_features.append(provider)
        self._undo.append(lambda: self.host.stream_features.remove(provider))

    def add_pre_auth_feature(self, provider: PreAuthFeature) -> None:
        """Offer a stream feature before authentication (over TLS only, e.g. XEP-0077)."""
        self.host.pre_auth.add_feature(provider)
        self._undo.append(lambda: self.host.pre_auth.remove_feature(provider))

    def add_pre_auth_iq_handler(self, type_: str, tag: str, handler: PreAuthHandler) -> None:
        """Answer IQ get/set with payload `tag` (Clark notation) before authentication."""
        self.host.pre_auth.add_handler(type_, tag, handler)
        self._undo.append(lambda: self.host.pre_auth.remove_handler(type_, tag, handler))

    def add_send_filter(self, send_filter: SendFilter, priority: int = Priority.NORMAL) -> None:
        """See (and possibly consume) every stanza sent to a session of this host.

        Filters run by priority, highest first: e.g. client state indication holds stanzas
        (NORMAL) before stream management counts what reaches the wire (LOW).
        """
        self.host.add_send_filter(send_filter, priority)
        self._undo.append(lambda: self.host.remove_send_filter(send_filter))

    def add_feature(self, var: str, scope: Scope = Scope.HOST) -> None:
        """Advertise a disco feature."""
        self.host.features.add_feature(var, scope)
        self._undo.append(lambda: self.host.features.remove_feature(var, scope))

    def add_identity(self, identity: Identity, scope: Scope = Scope.HOST) -> None:
        """Advertise a disco identity."""
        self.host.features.add_identity(identity, scope)
        self._undo.append(lambda: self.host.features.remove_identity(identity, scope))

    def add_disco_item(self, item: DiscoItem) -> None:
        """Advertise a disco item on the host JID."""
        self.host.features.items.append(item)
        self._undo.append(lambda: self.host.features.items.remove(item))

    def add_service_host(self, subdomain: str) -> Host:
        """Create a service subdomain host (`<subdomain>.<this host>`) and list it in disco."""
        child = self.services.add_service_host(self.host, subdomain)
        self._undo.append(lambda: self.services.remove_service_host(child))
        self.add_disco_item(DiscoItem(child.domain))
        return child

    def service_context(self, subdomain: str) -> ModuleContext:
        """Create a service subdomain host and a context on it for this module (e.g. MUC's
        conference.<host>): hooks, IQ handlers, features and stores registered through the
        returned context belong to the subdomain, and are removed when this module unloads."""
        child = ModuleContext(
            self.services, self.add_service_host(subdomain), self.name, self.options
        )
        self._undo.append(child.undo_all)
        return child

    # --- storage and timers --------------------------------------------------------------
    def open_store(self, name: str, kind: StoreKind) -> None:
        """Open a declared store (done by the loader for `Module.stores`)."""
        if kind is StoreKind.KEYVALUE:
            self._kv[name] = self.services.keyvalue(self.host.domain, name)
        else:
            self._archives[name] = self.services.archive(self.host.domain, name)

    def keyvalue(self, name: str) -> KeyValueStore:
        """A declared key-value store (KeyError if not declared as one)."""
        return self._kv[name]

    def archive(self, name: str) -> ArchiveStore:
        """A declared archive store (KeyError if not declared as one)."""
        return self._archives[name]

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        """Run `callback` after `delay` seconds; cancelled on unload."""
        handle = asyncio.get_running_loop().call_later(delay, callback)
        self._undo.append(handle.cancel)
        return handle

    def every(self, interval: float, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `job` every `interval` seconds until unload; failures are logged."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await job()
                except Exception:
                    self.log.exception("periodic job failed")

        task = asyncio.get_running_loop().create_task(loop())

        def cancel() -> None:
            task.cancel()

        self._undo.append(cancel)

    async def end_session(self, session: Session, reason: str) -> None:
        """End a session for good (unbind, unavailable broadcast, SESSION_ENDED)."""
        session.close()
        await self.services.session_ended(session, reason)

    @property
    def sessions(self) -> SessionManager:
        """Bound sessions (read-only use)."""
        return self.services.sessions

    def undo_all(self) -> None:
        """Remove every registration (called by the loader on unload)."""
        while self._undo:
            self._undo.pop()()
