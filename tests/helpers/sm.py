"""SmClient: a raw XEP-0198 client on RawClient, with exact h counting both ways.

Log in with the RawClient methods (`authenticate`, then `bind`), then `start()` a reader task
that sorts what the server sends: stanzas into `stanzas` (counted in `handled` once stream
management is on), <r/> answered at once with <a h=handled/> (unless `auto_ack` is off), <a/>
recorded in `acked` (the server's last h) and `acks`, every other top-level element into
`nonzas`. `SmClient.state` (sm id, counters, unacknowledged outbound stanzas) is plain data that
a new connection takes over to resume.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from tests.helpers.wire import NS_STREAMS, TIMEOUT, RawClient

NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_CLIENT = "jabber:client"
STANZA_TAGS = frozenset(f"{{{NS_CLIENT}}}{t}" for t in ("message", "presence", "iq"))
MOD = 2**32


def sm(tag: str) -> str:
    """Clark name of an urn:xmpp:sm:3 element."""
    return f"{{{NS_SM}}}{tag}"


def condition(el: etree._Element) -> str | None:
    """The local name of the first error-condition child of a <failed/> or stream error."""
    for child in el:
        if etree.QName(child).namespace in (NS_STANZAS, NS_STREAM_ERRORS):
            name = etree.QName(child).localname
            if name != "text":
                return name
    return None


@dataclass
class SmState:
    """What a client keeps across connections to resume (XEP-0198 §5)."""

    id: str | None = None
    resumable: bool = False
    handled: int = 0  # stanzas received from the server and handled (our h)
    sent: int = 0  # stanzas we sent since <enable/>
    acked: int = 0  # the server's last h
    acks: list[int] = field(default_factory=list)  # every h the server sent, in order
    unacked: list[tuple[int, str]] = field(default_factory=list)  # (seq, xml) not yet acked
    enabled: bool = False


class SmClient(RawClient):
    """A RawClient that speaks stream management."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.state = SmState()
        self.stanzas: asyncio.Queue[etree._Element] = asyncio.Queue()
        self.nonzas: asyncio.Queue[etree._Element] = asyncio.Queue()
        self.auto_ack = True
        self.r_received = 0
        self.ended = asyncio.Event()  # the reader stopped: stream closed or connection lost
        self.error: BaseException | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._frozen = False
        self.violations: list[str] = []  # server h values that cannot be right
        self.jid = ""

    # --- negotiation (before start()) --------------------------------------------------------

    async def authenticate(self, user: str, password: str, tls: bool = True) -> etree._Element:
        """STARTTLS, SASL PLAIN, stream restart; returns the post-auth <stream:features/>."""
        await self.open_stream()
        if tls:
            await self.starttls()
            await self.open_stream()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        await self.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        )
        await self.expect("{urn:ietf:params:xml:ns:xmpp-sasl}success")
        return await self.open_stream()

    async def bind(self, resource: str | None = "sm") -> str:
        """Bind a resource (before start()); returns the full JID."""
        res = f"<resource>{resource}</resource>" if resource else ""
        await self.send(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"{res}</bind></iq>"
        )
        reply = await self.expect("{jabber:client}iq")
        assert reply.get("type") == "result", etree.tostring(reply)
        self.jid = reply.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") or ""
        return self.jid

    async def bind_started(self, resource: str | None = "sm") -> str:
        """Bind a resource once the reader runs (e.g. after a failed resumption)."""
        res = f"<resource>{resource}</resource>" if resource else ""
        await self.send(
            "<iq type='set' id='bind2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"{res}</bind></iq>"
        )
        reply = await self.stanza()
        assert reply.get("id") == "bind2", etree.tostring(reply)
        assert reply.get("type") == "result", etree.tostring(reply)
        self.jid = reply.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") or ""
        return self.jid

    # --- the reader ----------------------------------------------------------------------

    def start(self) -> None:
        """Start sorting the server's elements (call once negotiation is over)."""
        assert self._reader_task is None
        self._reader_task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                el = await self.next(timeout=3600)
                if self._frozen:
                    continue
                await self._dispatch(el)
                self._changed.set()
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            self.error = exc
        except etree.XMLSyntaxError as exc:
            self.error = exc
        finally:
            self.ended.set()
            self._changed.set()

    async def _dispatch(self, el: etree._Element) -> None:
        st = self.state
        if el.tag in STANZA_TAGS:
            if st.enabled:
                st.handled = (st.handled + 1) % MOD
            self.stanzas.put_nowait(el)
        elif el.tag == sm("r"):
            self.r_received += 1
            if self.auto_ack:
                self._write_quiet(f"<a xmlns='{NS_SM}' h='{st.handled}'/>")
        elif el.tag == sm("a"):
            self._on_h(int(el.get("h", "-1")))
        else:
            if el.tag == sm("enabled"):
                st.enabled = True
                st.handled = 0
                st.id = el.get("id")
                st.resumable = el.get("resume") in ("true", "1")
            elif el.tag == sm("resumed"):
                st.enabled = True
                self._on_h(int(el.get("h", "-1")))
            self.nonzas.put_nowait(el)

    def _on_h(self, h: int) -> None:
        st = self.state
        st.acks.append(h)
        newly = (h - st.acked) % MOD
        if newly > len(st.unacked):  # backwards, or more than we sent: a server bug
            self.violations.append(f"h={h} after h={st.acked} with {len(st.unacked)} unacked")
            return
        st.acked = h
        del st.unacked[:newly]

    def _write_quiet(self, data: str) -> None:
        # Never wait for the socket here: a reader that blocks on its own writes stops
        # reading, and two such clients can deadlock through the server's back-pressure.
        if not self.writer.transport.is_closing():
            self.writer.write(data.encode())

    # --- stream management ---------------------------------------------------------------

    async def enable(self, resume: bool = True, **attrs: str) -> etree._Element:
        """Send <enable/> (counting starts now); return the <enabled/> or <failed/>."""
        extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
        self.state.sent = 0
        self.state.acked = 0
        self.state.unacked.clear()
        flag = " resume='true'" if resume else ""
        await self.send(f"<enable xmlns='{NS_SM}'{flag}{extra}/>")
        return await self.nonza()

    async def resume(self, previous: SmState) -> etree._Element:
        """Send <resume/> for `previous`; return <resumed/> or <failed/>.

        On <resumed/> this client carries `previous` on (its counters and queue) and resends
        what the server did not acknowledge (XEP-0198 §5).
        """
        self.state = previous
        self.state.enabled = False  # until <resumed/> arrives
        await self.send(f"<resume xmlns='{NS_SM}' h='{previous.handled}' previd='{previous.id}'/>")
        reply = await self.nonza()
        if reply.tag == sm("resumed"):
            for _, xml in list(self.state.unacked):
                await self.send(xml)
        return reply

    async def send_stanza(self, xml: str) -> int:
        """Send one stanza and keep it until acknowledged; returns its sequence number."""
        st = self.state
        if st.enabled:
            st.sent = (st.sent + 1) % MOD
            st.unacked.append((st.sent, xml))
        await self.send(xml)
        return st.sent

    async def request_ack(self) -> None:
        """Send <r/>."""
        await self.send(f"<r xmlns='{NS_SM}'/>")

    async def ack(self, h: int | None = None) -> None:
        """Send <a/> with our h (or `h`)."""
        await self.send(f"<a xmlns='{NS_SM}' h='{self.state.handled if h is None else h}'/>")

    # --- waiting -------------------------------------------------------------------------

    async def stanza(self, timeout: float = TIMEOUT) -> etree._Element:
        """The next stanza from the server."""
        return await self._get(self.stanzas, timeout)

    async def nonza(self, timeout: float = TIMEOUT) -> etree._Element:
        """The next element that is neither a stanza nor <r/>/<a/> (e.g. <enabled/>, errors)."""
        return await self._get(self.nonzas, timeout)

    async def _get(self, queue: asyncio.Queue[etree._Element], timeout: float) -> etree._Element:
        if not queue.empty():
            return queue.get_nowait()
        get = asyncio.ensure_future(queue.get())
        ended = asyncio.ensure_future(self.ended.wait())
        await asyncio.wait({get, ended}, timeout=timeout, return_when="FIRST_COMPLETED")
        ended.cancel()
        get.cancel()
        try:
            return await get  # it may have taken an item before the cancel: never lose it
        except asyncio.CancelledError:
            pass
        if not queue.empty():
            return queue.get_nowait()
        if self.ended.is_set():
            raise ConnectionError(f"stream ended: {self.error!r}")
        raise TimeoutError

    def stop_reading(self) -> None:
        """From now on drop what arrives, uncounted (a client that froze): the counters and
        queues as they are now are final. The socket stays open until `stop()`."""
        self._frozen = True

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Wait until `predicate()` holds (checked after every element the reader handles)."""

        async def loop() -> None:
            while not predicate():
                if self.ended.is_set():
                    raise ConnectionError(f"stream ended: {self.error!r}")
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def wait_acked(self, h: int, timeout: float = TIMEOUT) -> None:
        """Wait until the server acknowledged `h` stanzas."""
        await self.wait_until(lambda: (self.state.acked - h) % MOD < MOD // 2, timeout)

    async def next_stream_error(self, timeout: float = TIMEOUT) -> etree._Element:
        """Wait for a <stream:error/> (skipping other nonzas); return it."""
        while True:
            el = await self.nonza(timeout)
            if el.tag == f"{{{NS_STREAMS}}}error":
                return el

    # With the reader running, RawClient.stream_error (which reads the socket itself) cannot
    # work: on an SmClient it is the element-returning wait above (other tests rely on it).
    stream_error = next_stream_error  # type: ignore[assignment]

    async def abort(self) -> None:
        """Drop the connection without closing the stream (an unclean end)."""
        self.writer.transport.abort()
        if self._reader_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ended.wait(), 5)

    async def stop(self) -> None:
        """Stop the reader and abort the connection (test teardown)."""
        self._frozen = True
        self.writer.transport.abort()  # the reader sees the connection end by itself
        if self._reader_task is not None:
            await asyncio.wait({self._reader_task}, timeout=5)
            self._reader_task.cancel()


async def sm_login(
    port: int,
    user: str,
    password: str,
    resource: str | None = "sm",
    *,
    enable: bool = True,
    resume: bool = True,
    presence: bool = False,
) -> SmClient:
    """Connect, authenticate, bind, start the reader and (by default) enable SM with resume."""
    client = await SmClient.connect(port)
    assert isinstance(client, SmClient)
    features = await client.authenticate(user, password)
    assert features.find(sm("sm")) is not None, etree.tostring(features)
    await client.bind(resource)
    client.start()
    if enable:
        reply = await client.enable(resume=resume)
        assert reply.tag == sm("enabled"), etree.tostring(reply)
    if presence:
        await client.send_stanza("<presence/>")
    return client
