"""Crash safety: SIGKILL the server while two clients with stream management exchange 10,000
messages, restart it, reconnect, and check that every message the server acknowledged arrives
exactly once and in order per sender.

Delivery after a crash: a recipient got some messages live, each stamped with a XEP-0359
<stanza-id/>; every message is also in its MAM archive (XEP-0313), and the server acknowledges
a stanza (h in <a/>) only once that archive write is committed. After the restart the clients
reconnect, their resumption fails (the process that held the sessions died), they bind new
sessions and page through their whole archive, deduplicating by stanza-id.

The kill lands at a random moment: when alice has sent a random number of messages, plus a
random delay; in about half the runs bob goes silent before (see `crash_run`). Each run prints
its seed; replay it with ``XMPPD_CRASH_SEED=<seed> pytest 'tests/interop/test_crash.py::
test_sigkill_during_an_exchange_loses_and_duplicates_nothing_acknowledged[0]'`` (the seed fixes
the moments, not the server's exact progress at them). Three runs in the default suite;
``-m slow`` runs twenty more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lxml import etree

from tests.conftest import Client
from tests.helpers.proxy import DOWN, Proxy
from tests.helpers.sm import SmClient, condition, sm, sm_login
from tests.helpers.subprocess_server import PASSWORD, ServerProcess
from tests.helpers.wire import client_context

pytestmark = pytest.mark.interop

PER_SENDER = 5_000  # two senders: 10,000 messages per run
WINDOW = 200  # stanzas a sender keeps unacknowledged at most (like a real client's queue)
REQUEST_EVERY = 20  # a sender's <r/> cadence
PAGE = 250  # MAM page size asked for
NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
NS_FORWARD = "urn:xmpp:forward:0"
NS_RSM = "http://jabber.org/protocol/rsm"
CLIENT = "{jabber:client}"
SM_TOML = (
    "[modules.stream_management]\nresume_timeout = 300\nack_interval = 5\nmax_unacked = 10000\n"
)
BASE_SEED = int(os.environ.get("XMPPD_CRASH_SEED", random.SystemRandom().randrange(2**31)))


@dataclass
class Peer:
    """One user's side of the exchange."""

    user: str
    other: str
    client: SmClient
    seq_of: dict[int, int] = field(default_factory=dict)  # message index -> SM sequence number
    live: list[tuple[str, int]] = field(default_factory=list)  # (stanza-id, index) as received
    acked: int = 0  # the last h the server sent before the crash


def index_of(message: etree._Element, sender: str) -> int | None:
    """The sender's index of one of our test messages (its id is '<sender>-<index>')."""
    mid = message.get("id") or ""
    prefix = f"{sender}-"
    if not mid.startswith(prefix):
        return None
    return int(mid[len(prefix) :])


def stanza_id(message: etree._Element, by: str) -> str | None:
    for el in message.findall(f"{{{NS_SID}}}stanza-id"):
        if el.get("by") == by:
            return el.get("id")
    return None


async def send_all(peer: Peer, after_send: Callable[[Peer, int], None]) -> None:
    """Send PER_SENDER messages, at most WINDOW unacknowledged, until done or the server dies."""
    c = peer.client
    to = f"{peer.other}@localhost/crash"
    try:
        for i in range(PER_SENDER):
            if len(c.state.unacked) >= WINDOW:
                await c.wait_until(lambda: len(c.state.unacked) < WINDOW // 2, timeout=60)
            peer.seq_of[i] = await c.send_stanza(
                f"<message to='{to}' type='chat' id='{peer.user}-{i}'>"
                f"<body>{peer.user} {i}</body></message>"
            )
            if i % REQUEST_EVERY == REQUEST_EVERY - 1:
                await c.request_ack()
            after_send(peer, i + 1)
        await c.request_ack()
        await c.wait_until(lambda: not c.state.unacked, timeout=60)
    except (ConnectionError, OSError, RuntimeError):
        pass  # the server was killed


async def receive_live(peer: Peer) -> None:
    """Record every test message received live (until the connection dies)."""
    by = f"{peer.user}@localhost"
    with contextlib.suppress(ConnectionError):
        while True:
            st = await peer.client.stanza(timeout=3600)
            if st.tag != f"{CLIENT}message":
                continue
            index = index_of(st, peer.other)
            if index is None:
                continue
            sid = stanza_id(st, by)
            assert sid, f"live message without a stanza-id by {by}: {etree.tostring(st)!r}"
            peer.live.append((sid, index))


async def fetch_archive(c: SmClient, user: str, sender: str) -> list[tuple[str, int]]:
    """Page through the whole archive; (archive id, index) of `sender`'s test messages."""
    out: list[tuple[str, int]] = []
    after = ""
    for page in range(10_000):
        qid = f"q{page}"
        rsm_after = f"<after>{after}</after>" if after else ""
        await c.send_stanza(
            f"<iq type='set' id='{qid}'><query xmlns='{NS_MAM}' queryid='{qid}'>"
            f"<set xmlns='{NS_RSM}'><max>{PAGE}</max>{rsm_after}</set></query></iq>"
        )
        while True:
            st = await c.stanza(timeout=30)
            if st.tag == f"{CLIENT}iq" and st.get("id") == qid:
                assert st.get("type") == "result", etree.tostring(st)
                fin = st.find(f"{{{NS_MAM}}}fin")
                assert fin is not None, etree.tostring(st)
                break
            result = st.find(f"{{{NS_MAM}}}result")
            if st.tag != f"{CLIENT}message" or result is None or result.get("queryid") != qid:
                continue
            archived = result.find(f"{{{NS_FORWARD}}}forwarded/{CLIENT}message")
            assert archived is not None, etree.tostring(st)
            archive_id = result.get("id")
            assert archive_id
            inner = stanza_id(archived, f"{user}@localhost")
            assert inner in (None, archive_id), "archive id and stanza-id differ"
            if (archived.get("from") or "").split("/")[0] != f"{sender}@localhost":
                continue
            index = index_of(archived, sender)
            if index is not None:
                out.append((archive_id, index))
        last = fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}last")
        if fin.get("complete") in ("true", "1") or not last:
            return out
        after = last
    raise AssertionError("archive paging did not end")


async def reconnect(srv: ServerProcess, peer: Peer) -> SmClient:
    """New connection after the crash: resumption fails, a new session is bound and enabled."""
    old = peer.client.state
    c = await SmClient.connect(srv.c2s_port)
    await c.authenticate(peer.user, PASSWORD)
    c.start()
    failed = await c.resume(old)
    assert failed.tag == sm("failed"), etree.tostring(failed)
    assert condition(failed) == "item-not-found"
    assert await c.bind_started("crash2") == f"{peer.user}@localhost/crash2"
    enabled = await c.enable()
    assert enabled.tag == sm("enabled")
    return c


def check(sender: Peer, recipient: Peer, archive: list[tuple[str, int]], seed: int) -> None:
    """Every acknowledged message once and in order; nothing twice; only unacked missing."""
    what = f"{sender.user} -> {recipient.user} (seed {seed})"
    ids_of: dict[int, set[str]] = {}
    index_of_id: dict[str, int] = {}
    for sid, index in [*recipient.live, *archive]:
        assert index_of_id.setdefault(sid, index) == index, f"{what}: stanza-id {sid} reused"
        ids_of.setdefault(index, set()).add(sid)
    twice = {i: sorted(s) for i, s in ids_of.items() if len(s) > 1}
    assert not twice, f"{what}: delivered more than once: {twice}"
    acked = [i for i, seq in sender.seq_of.items() if seq <= sender.acked]
    missing = [i for i in acked if i not in ids_of]
    assert not missing, (
        f"{what}: {len(missing)} acknowledged message(s) lost, first {missing[:10]} "
        f"(acked h={sender.acked}, live {len(recipient.live)}, archive {len(archive)})"
    )
    # order: the live stream, the archive and the union by stanza-id all follow send order
    live_order = [i for _, i in recipient.live]
    assert live_order == sorted(live_order), f"{what}: live messages out of order"
    archive_order = [i for _, i in archive]
    assert archive_order == sorted(archive_order), f"{what}: archive out of order"
    union = [index_of_id[sid] for sid in sorted(index_of_id)]
    assert union == sorted(union), f"{what}: stanza-ids do not follow the send order"
    assert all(i < PER_SENDER for i in ids_of), f"{what}: unknown message"


async def crash_run(tmp_path: Path, seed: int) -> None:
    """One run. alice is never blocked, so her count times the kill; in about half the runs
    bob's phone goes silent first (the proxy stops forwarding to him, absorbing what the server
    writes), so what alice sends from then on reaches bob only through his archive: an ack
    given before the archive write was durable would show up as a loss."""
    rng = random.Random(seed)
    kill_at = rng.randrange(1, PER_SENDER)
    kill_delay = rng.uniform(0, 0.02)
    stall_at = rng.randrange(0, kill_at) if rng.random() < 0.5 else None
    print(
        f"crash run: seed={seed} kill when alice sent {kill_at} + {kill_delay * 1000:.1f} ms"
        + (f", bob silent from alice's {stall_at}" if stall_at is not None else "")
    )
    srv = ServerProcess(tmp_path, users=("alice", "bob"), extra_toml=SM_TOML)
    await srv.create_accounts()
    await srv.start()
    clients: list[SmClient] = []
    proxy = Proxy(srv.c2s_port, stall_buffer=256 * 1024 * 1024)  # absorbs all for bob
    await proxy.start()
    try:
        peers = []
        for user, other in (("alice", "bob"), ("bob", "alice")):
            c = await sm_login(proxy.port, user, PASSWORD, "crash", presence=True)
            clients.append(c)
            peers.append(Peer(user, other, c))
        bob_link = proxy.connections[1]
        for p in peers:  # each sees its own initial presence: both sessions are available
            while (await p.client.stanza()).tag != f"{CLIENT}presence":
                pass
        kill = asyncio.Event()

        def after_send(peer: Peer, sent: int) -> None:
            if peer.user != "alice":
                return
            if sent == stall_at:
                bob_link.stall(DOWN)
            if sent >= kill_at:
                kill.set()

        if stall_at == 0:
            bob_link.stall(DOWN)
        receivers = [asyncio.create_task(receive_live(p)) for p in peers]
        done_sending = asyncio.gather(*(send_all(p, after_send) for p in peers))
        try:
            await asyncio.wait_for(kill.wait(), 60)
        except TimeoutError:
            raise AssertionError(
                "the exchange stalled before the kill: "
                + ", ".join(
                    f"{p.user} sent {len(p.seq_of)} acked h={p.client.state.acked} "
                    f"got {len(p.live)} live"
                    for p in peers
                )
                + f"; proxy {[c.forwarded for c in proxy.connections]}"
            ) from None
        await asyncio.sleep(kill_delay)  # the random moment itself
        await srv.kill()
        proxy.cut_all()  # what the dead server wrote to silent bob never reaches him
        await asyncio.wait_for(done_sending, 60)
        for p in peers:
            await asyncio.wait_for(p.client.ended.wait(), 10)
        await asyncio.gather(*receivers)
        for p in peers:
            p.acked = p.client.state.acked
            assert not p.client.violations, f"{p.user}: {p.client.violations[:5]}"
        print(
            "before the kill: "
            + ", ".join(
                f"{p.user} sent {len(p.seq_of)} acked h={p.acked} got {len(p.live)} live"
                for p in peers
            )
        )

        await srv.start()
        archives = {}
        for p in peers:
            c = await reconnect(srv, p)
            clients.append(c)
            archives[p.user] = await fetch_archive(c, p.user, p.other)
        for p in peers:
            # Allowed (unacknowledged, so the sender resends them) but worth seeing: live
            # delivery does not wait for the archive commit.
            archived = {sid for sid, _ in archives[p.user]}
            only_live = [i for sid, i in p.live if sid not in archived]
            print(f"{p.user}: {len(only_live)} message(s) received live are not archived")
        alice, bob = peers
        check(alice, bob, archives["bob"], seed)
        check(bob, alice, archives["alice"], seed)
    except BaseException:
        print("server log:\n" + srv.log_tail(60))
        raise
    finally:
        await proxy.stop()
        for c in clients:
            await c.stop()
        await srv.kill()


@pytest.mark.parametrize("run", range(3))
async def test_sigkill_during_an_exchange_loses_and_duplicates_nothing_acknowledged(
    tmp_path: Path, run: int
) -> None:
    await crash_run(tmp_path, BASE_SEED + run)


@pytest.mark.slow
@pytest.mark.parametrize("run", range(3, 23))
async def test_sigkill_soak(tmp_path: Path, run: int) -> None:
    await crash_run(tmp_path, BASE_SEED + run)


def test_the_checker_catches_loss_duplication_and_reordering() -> None:
    """The assertions above can fail: each kind of fault, fed to `check`, is caught."""

    def peers(live: list[tuple[str, int]], acked: int) -> tuple[Peer, Peer]:
        sender = Peer("alice", "bob", None)  # type: ignore[arg-type]  # no connection needed
        sender.seq_of = {i: i + 2 for i in range(5)}  # seq 1 was the initial presence
        sender.acked = acked
        recipient = Peer("bob", "alice", None)  # type: ignore[arg-type]
        recipient.live = live
        return sender, recipient

    good_live = [("id0", 0), ("id1", 1)]
    good_archive = [("id0", 0), ("id1", 1), ("id2", 2), ("id3", 3)]
    check(*peers(good_live, acked=5), good_archive, 0)  # 4 acked (seq 2..5), all there
    faults = {
        "lost": (good_live, good_archive[:3], 5),
        "twice": (good_live, [*good_archive, ("id9", 3)], 5),
        "reused id": (good_live, [("id0", 0), ("id1", 2)], 2),
        "live order": ([("id1", 1), ("id0", 0)], good_archive, 5),
        "archive order": (good_live, [("id0", 0), ("id2", 2), ("id1", 1), ("id3", 3)], 5),
        "id order": ([("id1", 0), ("id0", 1)], [], 2),
    }
    for name, (live, archive, acked) in faults.items():
        try:
            check(*peers(live, acked), archive, 0)
        except AssertionError:
            continue
        pytest.fail(f"fault not caught: {name}")


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_stanzas_queued_for_a_hibernated_session_survive_a_restart(
    tmp_path: Path, stop: str
) -> None:
    """bob's link died (session hibernated); alice's messages were acknowledged to her and
    queued for bob. After a clean shutdown they are in offline storage (XEP-0198 §4: what a
    discarded session never acknowledged is treated as sent to an unavailable resource);
    after a SIGKILL they are at least in bob's archive."""
    srv = ServerProcess(tmp_path, users=("alice", "bob"), extra_toml=SM_TOML)
    await srv.create_accounts()
    await srv.start()
    clients: list[SmClient] = []
    try:
        alice = await sm_login(srv.c2s_port, "alice", PASSWORD, "a")
        bob = await sm_login(srv.c2s_port, "bob", PASSWORD, "b", presence=True)
        clients += [alice, bob]
        await bob.stanza()  # own presence
        await bob.abort()  # unclean: the session hibernates
        for i in range(5):
            await alice.send_stanza(
                f"<message to='bob@localhost/b' type='chat' id='alice-{i}'><body>{i}</body></message>"
            )
        await alice.request_ack()
        await alice.wait_acked(5)
        if stop == "sigterm":
            assert await srv.stop() == 0
        else:
            await srv.kill()
        await srv.start()
        again = await reconnect(srv, Peer("bob", "alice", bob))
        clients.append(again)
        if stop == "sigterm":
            await again.send_stanza("<presence/>")
            got: list[int] = []
            while len(got) < 5:
                st = await again.stanza()
                index = index_of(st, "alice") if st.tag == f"{CLIENT}message" else None
                if index is not None:
                    got.append(index)
            assert got == list(range(5))
        archive = await fetch_archive(again, "bob", "alice")
        assert [i for _, i in archive] == list(range(5))
    except BaseException:
        print("server log:\n" + srv.log_tail(60))
        raise
    finally:
        for c in clients:
            await c.stop()
        await srv.kill()


# --- the same with slixmpp's xep_0198 ------------------------------------------------------

SLIX_PER_SENDER = 1_500


class SlixPeer(Client):
    """A slixmpp client with stream management (resume on) and MAM, recording what was acked
    (slixmpp's `stanza_acked` event) and what arrived live."""

    def __init__(self, user: str, other: str) -> None:
        super().__init__(f"{user}@localhost/crash", PASSWORD)
        self.user, self.other = user, other
        for plugin in ("xep_0198", "xep_0313", "xep_0059"):
            self.register_plugin(plugin)
        self.plugin["xep_0198"].window = 20
        self.ssl_context = client_context()
        self.enable_direct_tls, self.enable_starttls = False, True
        self.acked: list[int] = []
        self.live: list[tuple[str, int]] = []
        self.sent = 0
        self.progress = asyncio.Event()
        self.started = asyncio.Event()
        self.gone = asyncio.Event()
        self.resume_failed = asyncio.Event()
        self.add_event_handler("sm_failed", lambda _: self.resume_failed.set())
        self.add_event_handler("stanza_acked", self._acked)
        self.add_event_handler("message", self._live)
        self.add_event_handler("session_start", lambda _: self.started.set())
        self.add_event_handler("disconnected", lambda _: self.gone.set())

    def _acked(self, stanza: object) -> None:
        xml = getattr(stanza, "xml", None)
        if xml is not None and xml.tag == f"{CLIENT}message":
            index = index_of(xml, self.user)
            if index is not None:
                self.acked.append(index)
        self.progress.set()

    def _live(self, msg: object) -> None:
        xml = getattr(msg, "xml", None)
        if xml is None or xml.find(f"{{{NS_MAM}}}result") is not None:
            return
        index = index_of(xml, self.other)
        if index is not None:
            sid = stanza_id(xml, f"{self.user}@localhost")
            assert sid, "live message without a stanza-id"
            self.live.append((sid, index))

    async def login(self, port: int) -> None:
        self.started.clear()
        self.gone.clear()
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self.started.wait(), 15)

    async def send_all(self, kill_at: int, total: list[int], trigger: asyncio.Event) -> None:
        for i in range(SLIX_PER_SENDER):
            while self.sent - len(self.acked) >= WINDOW and not self.gone.is_set():
                self.progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.progress.wait(), 1)
            if self.gone.is_set():
                return
            self._send(i)
            self.sent += 1
            total[0] += 1
            if total[0] >= kill_at:
                trigger.set()
            await asyncio.sleep(0)  # let slixmpp's send queue run

    def _send(self, i: int) -> None:
        msg = self.make_message(
            mto=f"{self.other}@localhost/crash", mbody=f"{self.user} {i}", mtype="chat"
        )
        msg["id"] = f"{self.user}-{i}"
        msg.send()

    async def archive(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        async for result in self.plugin["xep_0313"].iterate(rsm={"max": PAGE}):
            archived = result["mam_result"]["forwarded"]["stanza"]
            if archived["from"].bare != f"{self.other}@localhost":
                continue
            index = index_of(archived.xml, self.other)
            if index is not None:
                out.append((result["mam_result"]["id"], index))
        return out


async def test_sigkill_during_a_slixmpp_exchange(tmp_path: Path) -> None:
    """slixmpp's own xep_0198 bookkeeping: whatever it saw acknowledged survives the kill."""
    seed = BASE_SEED + 1000
    rng = random.Random(seed)
    kill_at = rng.randrange(1, 2 * SLIX_PER_SENDER)
    print(f"slixmpp crash run: seed={seed} kill after {kill_at} messages sent")
    srv = ServerProcess(tmp_path, users=("alice", "bob"), extra_toml=SM_TOML)
    await srv.create_accounts()
    await srv.start()
    peers = [SlixPeer("alice", "bob"), SlixPeer("bob", "alice")]
    try:
        for p in peers:
            await p.login(srv.c2s_port)
            p.send_presence()
            await p.next_presence()
        trigger = asyncio.Event()
        total = [0]
        senders = asyncio.gather(*(p.send_all(kill_at, total, trigger) for p in peers))
        await asyncio.wait(
            [asyncio.ensure_future(trigger.wait()), senders],
            return_when=asyncio.FIRST_COMPLETED,
            timeout=120,
        )
        await srv.kill()
        for p in peers:
            await asyncio.wait_for(p.gone.wait(), 10)
        await asyncio.wait_for(senders, 30)
        acked = {p.user: list(p.acked) for p in peers}
        print(", ".join(f"{p.user} sent {p.sent} acked {len(p.acked)}" for p in peers))
        await srv.start()
        archives = {}
        for p in peers:
            await p.login(srv.c2s_port)  # resumption fails (sm_failed), a new session starts
            assert p.resume_failed.is_set()
            archives[p.user] = await p.archive()
        for sender, recipient in (peers, peers[::-1]):
            as_peer = Peer(sender.user, sender.other, None)  # type: ignore[arg-type]
            # slixmpp acks in send order: the acked indices are 0..n-1
            assert acked[sender.user] == list(range(len(acked[sender.user])))
            as_peer.seq_of = {i: i + 1 for i in range(sender.sent)}
            as_peer.acked = len(acked[sender.user])
            got = Peer(recipient.user, recipient.other, None)  # type: ignore[arg-type]
            got.live = recipient.live
            check(as_peer, got, archives[recipient.user], seed)
    except BaseException:
        print("server log:\n" + srv.log_tail(60))
        raise
    finally:
        for p in peers:
            p.abort()
        await srv.kill()
