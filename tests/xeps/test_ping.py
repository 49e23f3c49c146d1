"""XEP-0199 XMPP Ping (xeps/ping.py): answering pings, and pinging silent clients (§4.1).

Tier 2: a real Server on memory storage, fake sessions whose FakeConnection reports the idle
time the test sets. The scan is driven by hand (`scan(now=...)` judges deadlines at a later
time); the module's own timer runs every 5 s, later than any of these tests takes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import FakeConnection, ModuleHarness, error_condition
from xeps.ping import MIN_BATCH, NS_PING, Ping
from xmppd.config import ConfigError
from xmppd.session import Session

INTERVAL = 60.0
TIMEOUT = 20.0
PING = f"{{{NS_PING}}}ping"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "bob"),
        modules_enabled=["ping"],
        modules={"ping": {"ping_interval": INTERVAL, "ping_timeout": TIMEOUT}},
    ) as harness:
        yield harness


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/phone", priority=0)


def ping_module(h: ModuleHarness, domain: str = "localhost") -> Ping:
    module = h.host(domain).modules["ping"]
    assert isinstance(module, Ping)
    return module


def take_ping(h: ModuleHarness, session: Session) -> etree._Element:
    iq = h.take_one(session)
    assert iq.tag == "{jabber:client}iq"
    assert iq.get("type") == "get"
    assert iq.get("from") == "localhost"
    assert iq.get("to") == str(session.full_jid)
    assert len(iq) == 1
    assert iq[0].tag == PING
    return iq


async def test_client_to_server_ping_is_answered(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, f"<iq type='get' id='c2s1'><ping xmlns='{NS_PING}'/></iq>")
    reply = h.take_one(alice)
    assert reply.get("type") == "result"
    assert reply.get("id") == "c2s1"
    assert len(reply) == 0


async def test_ping_to_bare_jid_is_answered_for_the_account(
    h: ModuleHarness, alice: Session
) -> None:
    bob = await h.connect("bob@localhost/desk", priority=0)
    await h.send(bob, f"<iq type='get' to='alice@localhost' id='b1'><ping xmlns='{NS_PING}'/></iq>")
    reply = h.take_one(bob)
    assert reply.get("type") == "result"
    assert reply.get("from") == "alice@localhost"
    assert h.take(alice) == []


async def test_silent_session_is_pinged_and_busy_one_is_not(
    h: ModuleHarness, alice: Session
) -> None:
    bob = await h.connect("bob@localhost/desk", priority=0)
    h.conn(alice).idle = INTERVAL + 1
    h.conn(bob).idle = INTERVAL - 1
    await ping_module(h).scan()
    take_ping(h, alice)
    assert h.take(bob) == []


async def test_result_keeps_the_connection(h: ModuleHarness, alice: Session) -> None:
    h.conn(alice).idle = INTERVAL + 1
    module = ping_module(h)
    await module.scan()
    iq = take_ping(h, alice)
    h.conn(alice).idle = 0.0  # the answer is input
    await h.send(alice, f"<iq type='result' to='localhost' id='{iq.get('id')}'/>")
    await module.scan(now=time.monotonic() + TIMEOUT + 1)
    assert not h.conn(alice).closed
    assert module._pending == {}
    assert h.take(alice) == []  # the answer itself gets no reply


@pytest.mark.parametrize("condition", ["service-unavailable", "feature-not-implemented"])
async def test_error_answer_proves_the_client_alive(
    h: ModuleHarness, alice: Session, condition: str
) -> None:
    h.conn(alice).idle = INTERVAL + 1
    module = ping_module(h)
    await module.scan()
    iq = take_ping(h, alice)
    await h.send(
        alice,
        f"<iq type='error' to='localhost' id='{iq.get('id')}'><ping xmlns='{NS_PING}'/>"
        f"<error type='cancel'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></iq>",
    )
    h.conn(alice).idle = 0.0
    await module.scan(now=time.monotonic() + TIMEOUT + 1)
    assert not h.conn(alice).closed
    assert module._pending == {}


async def test_answer_without_to_counts(h: ModuleHarness, alice: Session) -> None:
    h.conn(alice).idle = INTERVAL + 1
    module = ping_module(h)
    await module.scan()
    iq = take_ping(h, alice)
    await h.send(alice, f"<iq type='result' id='{iq.get('id')}'/>")
    h.conn(alice).idle = 0.0
    await module.scan(now=time.monotonic() + TIMEOUT + 1)
    assert not h.conn(alice).closed


async def test_no_answer_closes_the_connection_not_the_session(
    h: ModuleHarness, alice: Session
) -> None:
    conn = h.conn(alice)
    conn.idle = INTERVAL + 1
    module = ping_module(h)
    await module.scan()
    take_ping(h, alice)
    await module.scan(now=time.monotonic() + TIMEOUT - 1)  # not yet
    assert not conn.closed
    assert h.take(alice) == []  # and no second ping while one is outstanding
    await module.scan(now=time.monotonic() + TIMEOUT + 1)
    assert conn.close_error is not None
    assert conn.close_error.condition == "connection-timeout"
    # the session is still bound: whether it ends is up to SESSION_LOST (stream management)
    assert h.server.sessions.get(alice.full_jid) is alice
    assert module._pending == {}


async def test_answer_from_another_entity_does_not_count(h: ModuleHarness, alice: Session) -> None:
    bob = await h.connect("bob@localhost/desk", priority=0)
    h.conn(alice).idle = INTERVAL + 1
    module = ping_module(h)
    await module.scan()
    iq = take_ping(h, alice)
    # the router stamps bob's JID: a result with alice's ping id from bob is not her answer
    await h.send(bob, f"<iq type='result' to='localhost' id='{iq.get('id')}'/>")
    await module.scan(now=time.monotonic() + TIMEOUT + 1)
    assert h.conn(alice).closed


async def test_late_answer_after_close_is_ignored(h: ModuleHarness, alice: Session) -> None:
    h.conn(alice).idle = INTERVAL + 1
    module = ping_module(h)
    await module.scan()
    iq = take_ping(h, alice)
    await module.scan(now=time.monotonic() + TIMEOUT + 1)
    assert h.conn(alice).closed
    await h.send(alice, f"<iq type='result' to='localhost' id='{iq.get('id')}'/>")
    assert module._pending == {}


async def test_detached_session_is_not_pinged(h: ModuleHarness, alice: Session) -> None:
    conn = h.conn(alice)
    conn.idle = INTERVAL + 1
    alice.conn = None  # hibernated by stream management
    module = ping_module(h)
    await module.scan()
    assert conn.take() == []
    assert module._pending == {}


async def test_ping_of_a_connection_that_went_away_is_dropped(
    h: ModuleHarness, alice: Session
) -> None:
    old = h.conn(alice)
    old.idle = INTERVAL + 1
    module = ping_module(h)
    await module.scan()
    take_ping(h, alice)
    new = FakeConnection()
    alice.attach(new)  # resumed on another stream before the deadline
    await module.scan(now=time.monotonic() + TIMEOUT + 1)
    assert not old.closed
    assert not new.closed
    assert module._pending == {}


async def test_session_end_forgets_the_ping(h: ModuleHarness, alice: Session) -> None:
    h.conn(alice).idle = INTERVAL + 1
    module = ping_module(h)
    await module.scan()
    take_ping(h, alice)
    await h.disconnect(alice)
    assert module._pending == {}


async def test_pings_are_spread_over_scans(h: ModuleHarness) -> None:
    count = MIN_BATCH * 2 + 10
    sessions = [await h.connect(f"alice@localhost/r{i}", drain=False) for i in range(count)]
    for session in sessions:
        h.conn(session).take()
        h.conn(session).idle = INTERVAL + 1
    module = ping_module(h)
    sent = []
    for _ in range(3):
        await module.scan()
        sent.append(sum(len(h.conn(s).take()) for s in sessions))
    # few sessions: MIN_BATCH per scan; each session pinged exactly once
    assert sent == [MIN_BATCH, MIN_BATCH, 10]
    assert len(module._pending) == count


async def test_sessions_of_other_hosts_are_left_to_their_host(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path,
        hosts=("localhost", "example.org"),
        modules_enabled=["ping"],
        modules={"ping": {"ping_interval": INTERVAL, "ping_timeout": TIMEOUT}},
    ) as h:
        alice = await h.connect("alice@localhost/phone")
        h.conn(alice).idle = INTERVAL + 1
        await ping_module(h, "example.org").scan()
        assert h.take(alice) == []
        await ping_module(h, "localhost").scan()
        take_ping(h, alice)


async def test_zero_interval_disables_pings(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=["ping"], modules={"ping": {"ping_interval": 0}}
    ) as h:
        alice = await h.connect("alice@localhost/phone")
        h.conn(alice).idle = 10_000.0
        await ping_module(h).scan()
        assert h.take(alice) == []
        # pings from clients are still answered
        await h.send(alice, f"<iq type='get' id='c1'><ping xmlns='{NS_PING}'/></iq>")
        assert h.take_one(alice).get("type") == "result"


@pytest.mark.parametrize(
    "options", [{"ping_timeout": 0}, {"ping_interval": -1}, {"ping_timeout": -5.0}]
)
async def test_invalid_options_are_config_errors(tmp_path: Path, options: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="ping"):
        async with ModuleHarness.started(
            tmp_path, modules_enabled=["ping"], modules={"ping": options}
        ):
            pass


async def test_wrong_option_type_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ping_interval"):
        async with ModuleHarness.started(
            tmp_path, modules_enabled=["ping"], modules={"ping": {"ping_interval": "soon"}}
        ):
            pass


async def test_ping_to_unknown_full_jid_gets_service_unavailable(
    h: ModuleHarness, alice: Session
) -> None:
    await h.send(
        alice, f"<iq type='get' to='bob@localhost/none' id='x'><ping xmlns='{NS_PING}'/></iq>"
    )
    assert error_condition(h.take_one(alice)) == "service-unavailable"
