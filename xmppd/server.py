"""The composition root: builds config, storage, hosts, modules and listeners; start/stop.

Nothing else holds global state: modules reach the server only through their ModuleContext.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import ipaddress
import logging
import os
import resource
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from xmppd import __version__, certs
from xmppd import events as ev
from xmppd.accounts import AccountStore
from xmppd.admin import ANNOUNCE_MAX_BODY, ANNOUNCE_MAX_SUBJECT, AdminServer
from xmppd.config import Config, ConfigError
from xmppd.delivery import Delivery
from xmppd.errors import StreamError
from xmppd.features import DiscoItem
from xmppd.hosts import Host
from xmppd.jid import JID, JIDError
from xmppd.module_manager import ModuleManager, shipped_modules
from xmppd.ns import NS_CLIENT
from xmppd.router import Router
from xmppd.session import Session
from xmppd.session_manager import SessionManager
from xmppd.stanza import make, new_id
from xmppd.storage import ArchiveStore, KeyValueStore, Storage, open_storage
from xmppd.stream.component import ComponentConnection, register_component_host
from xmppd.stream.connection import C2SConnection
from xmppd.stream.parser import drain_pool, take_discarded
from xmppd.throttle import AuthThrottle

logger = logging.getLogger(__name__)


class Server:
    """One xmppd process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hosts: dict[str, Host] = {}
        self.local_domains = frozenset(h.domain for h in config.hosts)
        self.sessions = SessionManager()
        self.router = Router(self.hosts)
        self.storage: Storage | None = None
        self._accounts: AccountStore | None = None
        self.delivery = Delivery(self.router, self.sessions, self.account_exists)
        self.throttle = AuthThrottle(
            config.auth.throttle_failures,
            config.auth.throttle_window,
            config.auth.throttle_max_delay,
        )
        self.modules = ModuleManager(self)
        self.connections: set[C2SConnection] = set()
        self.congested: C2SConnection | None = None
        self.ports: dict[str, list[int]] = {"c2s": [], "c2s_direct_tls": [], "component": []}
        # XEP-0114: the authenticated connection of each component domain, and every one.
        self.components: dict[str, ComponentConnection] = {}
        self.component_connections: set[ComponentConnection] = set()
        self._losing: set[asyncio.Task[object]] = set()  # connection_lost() calls running
        self._listeners: list[asyncio.AbstractServer] = []
        self._tls: ssl.SSLContext | None = None
        self._end_point: dict[int, bytes] = {}
        self._admin: AdminServer | None = None
        self._stopping = False
        self._sweeper: asyncio.Task[None] | None = None
        self._closed_since_collect = 0
        self._peak_connections = 0
        self._discarded = 0  # parsers the pool could not take since the last collection
        self._settling = 0  # sweeps that still collect after a storm

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open storage, load TLS material and modules, start listening."""
        _raise_file_limit()
        data_dir = self.config.data_dir
        await asyncio.to_thread(data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        if self.config.storage == "memory":
            self.storage = await open_storage("memory")
        else:
            self.storage = await open_storage(
                "sqlite", path=self.config.database_path, fsync=self.config.storage_fsync
            )
        self._accounts = AccountStore(
            self.storage,
            iterations=self.config.auth.scram_iterations,
            cache_ttl=self.config.auth.credentials_cache_ttl,
        )
        await asyncio.to_thread(self._load_tls)
        for host_config in self.config.hosts:
            host = Host(host_config.domain)
            self.hosts[host.domain] = host
            self.delivery.register(host)
        for host_config in self.config.hosts:
            names = host_config.modules_enabled or self.config.modules_enabled
            options = {**self.config.modules, **host_config.modules}
            where = f'host."{host_config.domain}".modules' if host_config.modules else "modules"
            await self.modules.load(
                self.hosts[host_config.domain],
                list(names) if names is not None else shipped_modules(),
                options,
                where,
            )
        self._add_component_hosts()
        loop = asyncio.get_running_loop()
        for kind, addresses in (
            ("c2s", self.config.c2s),
            ("c2s_direct_tls", self.config.c2s_direct_tls),
        ):
            direct = kind == "c2s_direct_tls"
            if direct and self._tls is None:
                continue
            for address, port in addresses:
                listener = await loop.create_server(
                    lambda direct=direct: C2SConnection(self, direct_tls=direct),  # type: ignore[misc]
                    address,
                    port,
                    reuse_address=True,
                    backlog=4096,
                )
                self._listeners.append(listener)
                for sock in listener.sockets:
                    self.ports[kind].append(sock.getsockname()[1])
                logger.info("listening for %s on %s:%d", kind, address, self.ports[kind][-1])
        for address, port in self.config.component:
            listener = await loop.create_server(
                lambda: ComponentConnection(self), address, port, reuse_address=True
            )
            self._listeners.append(listener)
            for sock in listener.sockets:
                self.ports["component"].append(sock.getsockname()[1])
            logger.info("listening for components on %s:%d", address, self.ports["component"][-1])
            if not _is_loopback(address):
                logger.warning(
                    "the component listener on %s is not on a loopback address: XEP-0114 has "
                    "no TLS, so secrets' hashes and all component traffic cross the network "
                    "in the clear",
                    address,
                )
        self._admin = AdminServer(
            self.config.admin_socket,
            {
                "account_changed": self._admin_account_changed,
                "account_removed": self._admin_account_removed,
                "status": self._admin_status,
                "announce": self._admin_announce,
            },
        )
        await self._admin.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._idle_sweep())
        logger.info("xmppd %s serving %s", __version__, ", ".join(sorted(self.hosts)))

    def _add_component_hosts(self) -> None:
        """XEP-0114: a host per configured component; listed in the disco#items of the local
        host it is a subdomain of (as Prosody does), whether connected or not."""
        for domain in self.config.components:
            if domain in self.hosts:
                raise ConfigError(
                    f'{self.config.path or "<config>"}: component."{domain}": '
                    "the domain is already served (by a module)"
                )
            host = Host(domain, external=True)
            self.hosts[domain] = host
            register_component_host(host, self.components)
            parent = self.hosts.get(domain.partition(".")[2])
            if parent is not None and parent.is_local:
                parent.features.items.append(DiscoItem(domain))

    async def stop(self, reason: str = "system-shutdown") -> None:
        """Close streams with <system-shutdown/>, let modules flush, close storage."""
        if self._stopping:
            return
        self._stopping = True
        for listener in self._listeners:
            listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for host in list(self.hosts.values()):
            await host.bus.notify(ev.STOPPING, ev.Shutdown(reason))
        for conn in list(self.connections):
            conn.close(StreamError("system-shutdown", "the server is shutting down"))
        for component in list(self.component_connections):
            component.close(StreamError("system-shutdown", "the server is shutting down"))
        for session in self.sessions.all_sessions():
            await self.session_ended(session, reason)
        # Sessions whose connections closed just now are ended by their own tasks: their
        # handlers (last activity, stream management's unacked stanzas) still write.
        if self._losing:
            await asyncio.wait(list(self._losing), timeout=30.0)
        for host in self.hosts.values():
            await host.bus.notify(ev.SHUTDOWN, ev.Shutdown(reason))
        await self.modules.unload_all()
        if self._admin is not None:
            await self._admin.stop()
        if self.storage is not None:
            await self.storage.close()
        for listener in self._listeners:
            await listener.wait_closed()
        logger.info("stopped")

    async def reload(self) -> None:
        """SIGHUP: reload certificates (new connections use them); sessions are kept."""
        try:
            await asyncio.to_thread(self._load_tls)
            logger.info("certificates reloaded")
        except (OSError, ssl.SSLError, ValueError) as exc:
            logger.error("certificate reload failed, keeping the old ones: %s", exc)

    async def _idle_sweep(self) -> None:
        """Every sweep interval: hibernate the parsers of streams that stayed silent since the
        previous sweep, so that an idle stream holds no lxml parser (they are pooled, see
        `xmppd.stream.parser`), and give memory back after a storm."""
        interval = self.config.limits.idle_sweep
        while True:
            await asyncio.sleep(interval)
            pruned = self.accounts.prune()
            hibernated = 0
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.active:
                    conn.active = False
                    conn.active_at = now
                elif conn.hibernate():
                    hibernated += 1
            self._reclaim(hibernated, pruned)

    def _reclaim(self, hibernated: int, pruned: int) -> None:
        """Closed connections and parsers the full pool could not take are reference cycles,
        freed only by a full collection (tens of ms at 19,000 streams): one runs once a
        quarter of the connections (at least 500) or 2,000 such parsers are gone, and again
        on the next two sweeps after a storm (its tail, and the sessions ended after the
        first one). Freed memory goes back to the OS only when the heap is trimmed: after
        each collection, or after enough streams hibernated. A storm's cached credentials
        expire later (the cache TTL): their memory is given back then."""
        self._discarded += take_discarded()
        closed, peak = self._closed_since_collect, self._peak_connections
        storm = closed >= max(500, peak // 4)
        if storm or self._discarded >= _COLLECT_DISCARDED or self._settling or pruned >= 500:
            if storm:
                drain_pool()  # a storm's parsers would pin the allocator's arenas
                self._settling = 2
            elif self._settling:
                self._settling -= 1
            self._closed_since_collect = self._discarded = 0
            self._peak_connections = len(self.connections)
            gc.collect()
            _trim_heap()
        elif hibernated >= _TRIM_AFTER:
            _trim_heap()

    # --- TLS -------------------------------------------------------------------------------
    def _load_tls(self) -> None:
        contexts: dict[str, ssl.SSLContext] = {}
        end_point: dict[int, bytes] = {}
        for host_config in self.config.hosts:
            cert, key = host_config.cert or self.config.cert, host_config.key or self.config.key
            if cert is None or key is None:
                cert, key = self._generated_cert(host_config.domain)
            context = certs.server_context(cert, key)
            contexts[host_config.domain] = context
            # The leaf (first) certificate is the one tls-server-end-point hashes (RFC 5929).
            leaf = x509.load_pem_x509_certificate(cert.read_bytes())
            der = leaf.public_bytes(serialization.Encoding.DER)
            end_point[id(context)] = certs.tls_server_end_point(der)  # once, not per connection
        first = self.config.hosts[0]
        default = contexts[first.domain]
        self._tls = certs.sni_context(contexts, default) if len(contexts) > 1 else default
        self._end_point = end_point

    def _generated_cert(self, domain: str) -> tuple[Path, Path]:
        certs_dir = self.config.certs_dir
        cert, key = certs_dir / f"{domain}.crt", certs_dir / f"{domain}.key"
        if not cert.exists() or not key.exists():
            certs.generate_self_signed([domain], cert, key)
            logger.warning(
                "no certificate configured for %s: generated a self-signed ECDSA P-256 "
                "certificate at %s (clients will ask to trust it)",
                domain,
                cert,
            )
        return cert, key

    def tls_context(self) -> ssl.SSLContext | None:
        """The SNI-aware server context."""
        return self._tls

    def end_point_binding(self, context: ssl.SSLContext) -> bytes | None:
        """RFC 5929 tls-server-end-point data of the certificate `context` serves."""
        return self._end_point.get(id(context))

    # --- sessions --------------------------------------------------------------------------
    async def session_bound(self, session: Session) -> None:
        """Fire SESSION_BOUND."""
        await session.host.bus.notify(ev.SESSION_BOUND, ev.SessionEvent(session))

    def connection_closed(self) -> None:
        """Count closed connections: the idle sweep gives their memory back after a storm."""
        self._closed_since_collect += 1
        self._peak_connections = max(self._peak_connections, len(self.connections) + 1)

    async def connection_lost(self, session: Session, reason: str, *, resumable: bool) -> None:
        """A bound session lost its connection: a module may keep it detached (SESSION_LOST),
        unless the stream was closed on purpose (`resumable` False: the client closed it, or
        the server did with a stream error), which ends the session."""
        if session.conn is not None:
            return  # already carried by another connection (resumed meanwhile)
        task = asyncio.current_task()
        if task is not None:  # stop() waits for these before it closes storage
            self._losing.add(task)
            task.add_done_callback(self._losing.discard)
        if (
            self._stopping
            or not resumable
            or not await session.host.bus.chain(ev.SESSION_LOST, ev.SessionEvent(session))
        ):
            await self.session_ended(session, reason)

    async def account_removed(self, jid: JID) -> int:
        """A deleted account (its credentials are gone): end its sessions (<not-authorized/>),
        let modules act (ACCOUNT_REMOVED: the roster cancels subscriptions), then delete
        everything stored for it. Returns how many sessions were ended."""
        sessions = self.sessions.sessions(jid)
        for session in sessions:
            session.close(StreamError("not-authorized", "the account was removed"))
            await self.session_ended(session, "account removed")
        host = self.hosts.get(jid.domain)
        if host is not None:
            await host.bus.notify(ev.ACCOUNT_REMOVED, ev.AccountRemoved(jid))
        await self.accounts.delete_data(jid)
        return len(sessions)

    async def session_ended(self, session: Session, reason: str) -> None:
        """Unbind; broadcast unavailable for a session that did not say so (RFC 6121 §4.6)."""
        if not self.sessions.unbind(session):
            return
        if session.available:
            session.available = False
            unavailable = make("presence", type_="unavailable", from_=session.full_jid)
            for other in self.sessions.available(session.full_jid.bare):
                other.send(unavailable)
            await session.host.bus.notify(ev.SESSION_UNAVAILABLE, ev.SessionEvent(session))
        session.log.info("session from %s ended: %s", session.peer or "?", reason)
        await session.host.bus.notify(ev.SESSION_ENDED, ev.SessionEnded(session, reason=reason))

    # --- ServerServices (module API) -------------------------------------------------------
    @property
    def accounts(self) -> AccountStore:
        """The account store (after start)."""
        if self._accounts is None:
            raise RuntimeError("server not started")
        return self._accounts

    async def route(self, element: etree._Element) -> None:
        """Route a server-generated stanza."""
        await self.router.route(element)

    async def route_many(self, element: etree._Element, recipients: Iterable[JID | str]) -> None:
        """Route copies of a server-generated stanza, one per recipient 'to', in order."""
        await self.delivery.fan_out(element, recipients)

    async def account_exists(self, host: str, username: str) -> bool:
        """Whether a local account exists (always asks storage: no cached absence)."""
        return host in self.local_domains and await self.accounts.exists(host, username)

    def commit_barrier(self) -> asyncio.Future[None] | None:
        """Done once every storage write issued so far is committed (None: nothing pending)."""
        return self.storage.barrier() if self.storage is not None else None

    def keyvalue(self, host: str, store: str) -> KeyValueStore:
        """A key-value store of a host."""
        assert self.storage is not None
        return self.storage.keyvalue(host, store)

    def archive(self, host: str, store: str) -> ArchiveStore:
        """An archive store of a host."""
        assert self.storage is not None
        return self.storage.archive(host, store)

    def add_service_host(self, parent: Host, subdomain: str) -> Host:
        """Create `<subdomain>.<parent>` served by this process."""
        host = Host(f"{subdomain}.{parent.domain}", parent=parent)
        self.hosts[host.domain] = host
        self.delivery.register(host)
        return host

    def remove_service_host(self, host: Host) -> None:
        """Stop serving a service subdomain (its sessions were never local accounts)."""
        if host.parent is not None and self.hosts.get(host.domain) is host:
            del self.hosts[host.domain]

    def server_version(self) -> str:
        """The software version."""
        return __version__

    # --- admin commands --------------------------------------------------------------------
    async def _admin_account_removed(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            jid = JID.parse(str(request.get("jid", "")))
        except JIDError as exc:
            return {"ok": False, "error": str(exc)}
        if jid.local is None or jid.domain not in self.local_domains:
            return {"ok": False, "error": f"{jid} is not an account of this server"}
        self.accounts.forget(jid.domain, jid.local)
        ended = await self.account_removed(jid.bare)
        return {"ok": True, "ended": ended}

    async def _admin_account_changed(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            jid = JID.parse(str(request.get("jid", "")))
        except JIDError as exc:
            return {"ok": False, "error": str(exc)}
        self.accounts.forget(jid.domain, jid.local or "")
        return {"ok": True}

    async def _admin_announce(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send <message type='headline' from='HOST'> with the text to every available session
        of HOST (of every local host when none is named).

        Headline, as in Prosody's and ejabberd's mod_announce: RFC 6121 §5.2.2, a notification
        to which no reply is expected. Each copy goes to a session's full JID, so one whose
        session ends meanwhile is dropped silently (§8.5.3.2.1): never stored offline, never
        bounced.
        """
        body, subject, name = request.get("body"), request.get("subject"), request.get("host")
        if not isinstance(body, str) or not body.strip():
            return {"ok": False, "error": "the announcement text is missing or empty"}
        if subject is not None and not isinstance(subject, str):
            return {"ok": False, "error": "the subject must be text"}
        subject = subject.strip() if subject else None
        for label, text, limit in (
            ("text", body, ANNOUNCE_MAX_BODY),
            ("subject", subject or "", ANNOUNCE_MAX_SUBJECT),
        ):
            if len(text) > limit:
                return {"ok": False, "error": f"the {label} is longer than {limit} characters"}
            if not self._xml_chars_ok(text):
                return {"ok": False, "error": f"the {label} has characters XML cannot carry"}
        if name is None:
            domains = set(self.local_domains)
        else:
            try:
                host = JID.parse(str(name))
            except JIDError:
                host = None
            if host is None or host.local or host.resource or host.domain not in self.local_domains:
                return {"ok": False, "error": f"{name} is not a host of this server"}
            domains = {host.domain}
        announcement_id = new_id()
        sent = 0
        for session in self.sessions.all_sessions():  # a snapshot: routing may change them
            domain = session.host.domain
            if not session.available or domain not in domains:
                continue
            message = make(
                "message", type_="headline", from_=domain, to=session.full_jid, id_=announcement_id
            )
            if subject:
                etree.SubElement(message, f"{{{NS_CLIENT}}}subject").text = subject
            etree.SubElement(message, f"{{{NS_CLIENT}}}body").text = body
            await self.router.route(message)
            sent += 1
        logger.info("announcement sent to %d session(s) on %s", sent, ", ".join(sorted(domains)))
        return {"ok": True, "sent": sent, "hosts": sorted(domains)}

    @staticmethod
    def _xml_chars_ok(text: str) -> bool:
        """Whether every character of `text` is allowed in XML 1.0 (§2.2 Char)."""
        return not any(
            (c < " " and c not in "\t\n\r") or "\ud800" <= c <= "\udfff" or c in "\ufffe\uffff"
            for c in text
        )

    async def _admin_status(self, request: dict[str, Any]) -> dict[str, Any]:
        buffers = [conn.buffered() for conn in self.connections]
        return {
            "ok": True,
            "version": __version__,
            "connections": len(self.connections),
            "sessions": len(self.sessions),
            "output_buffered_bytes": sum(buffers),
            "output_buffered_max": max(buffers, default=0),
            "paused_senders": sum(1 for conn in self.connections if conn.blocked),
            "rss_kib": _rss_kib(),
            "hosts": sorted(self.hosts),
            "components_connected": sorted(self.components),
            "pid": os.getpid(),
        }


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _rss_kib() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()


_COLLECT_DISCARDED = 2000  # parsers left to the cyclic GC that justify a full collection
_TRIM_AFTER = 100  # hibernated parsers that justify a malloc_trim


def _trim_heap() -> None:
    """Return free heap pages to the OS (glibc malloc_trim; a no-op elsewhere)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _raise_file_limit() -> None:
    """Allow as many connections as the hard file limit permits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            logger.debug("could not raise the file limit from %d", soft)
