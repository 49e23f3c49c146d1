"""XEP-0012 Last Activity (xeps/last.py).

Tier 2: a real Server on memory storage (SQLite for the restart test), fake sessions.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.harness import ModuleHarness, error_condition
from xeps.last import LastActivity
from xmppd.events import ROSTER_QUERY, RosterQuery
from xmppd.jid import JID
from xmppd.module_api import Module, hook

NS = "jabber:iq:last"
QUERY = f"{{{NS}}}query"
MODULES = ["disco", "last"]


def last(to: str = "", id_: str = "l1") -> str:
    to_attr = f" to='{to}'" if to else ""
    return f"<iq type='get' id='{id_}'{to_attr}><query xmlns='{NS}'/></iq>"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob", "carol"), modules_enabled=MODULES
    ) as harness:
        yield harness


class FakeRoster(Module):
    """bob is subscribed to alice's presence ("from" on alice's side)."""

    name = "fake_roster"

    @hook(ROSTER_QUERY)
    async def answer(self, query: RosterQuery) -> bool:
        if query.user == JID.parse("alice@localhost"):
            query.subscriptions[JID.parse("bob@localhost")] = "from"
        return True


async def test_server_answers_its_uptime(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    await h.send(alice, last(to="localhost"))
    reply = h.take_one(alice)
    assert reply.get("type") == "result"
    assert reply.get("from") == "localhost"
    seconds = int(reply.find(QUERY).get("seconds"))  # type: ignore[union-attr,arg-type]
    assert 0 <= seconds < 60


async def test_online_account_answers_zero(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home", priority=0)
    await h.send(alice, last(to="alice@localhost"))
    assert h.take_one(alice).find(QUERY).get("seconds") == "0"  # type: ignore[union-attr]


async def test_offline_account_answers_time_since_logout_and_status(h: ModuleHarness) -> None:
    await h.load(FakeRoster)
    alice = await h.connect("alice@localhost/home", priority=0)
    await h.send(alice, "<presence type='unavailable'><status>gone fishing</status></presence>")
    await h.disconnect(alice)
    # Pretend the logout was 100 s ago.
    store = h.host().modules["last"]
    assert isinstance(store, LastActivity)
    kv = store.ctx.keyvalue("last")
    record = await kv.get("alice", "logout")
    assert isinstance(record, dict)
    assert record["status"] == "gone fishing"
    await kv.set("alice", "logout", {"when": time.time() - 100, "status": "gone fishing"})

    bob = await h.connect("bob@localhost/work")
    await h.send(bob, last(to="alice@localhost"))
    reply = h.take_one(bob)
    query = reply.find(QUERY)
    assert query is not None
    assert 100 <= int(query.get("seconds") or -1) < 160
    assert query.text == "gone fishing"


async def test_lost_connection_records_logout_without_status(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home", priority=0)
    await h.disconnect(alice)
    other = await h.connect("alice@localhost/other")  # bound, not available
    await h.send(other, last(to="alice@localhost"))
    query = h.take_one(other).find(QUERY)
    assert query is not None
    assert int(query.get("seconds") or -1) < 5
    assert not query.text


async def test_account_never_seen_is_item_not_found(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    await h.send(alice, last())
    assert error_condition(h.take_one(alice)) == "item-not-found"


async def test_unsubscribed_requester_is_forbidden(h: ModuleHarness) -> None:
    await h.load(FakeRoster)
    carol = await h.connect("carol@localhost/x")
    await h.send(carol, last(to="alice@localhost"))
    assert error_condition(h.take_one(carol)) == "forbidden"


async def test_without_roster_others_are_forbidden(h: ModuleHarness) -> None:
    bob = await h.connect("bob@localhost/work")
    await h.send(bob, last(to="alice@localhost"))
    assert error_condition(h.take_one(bob)) == "forbidden"


async def test_last_logout_survives_a_restart(tmp_path: Path) -> None:
    async with ModuleHarness.started(tmp_path, modules_enabled=MODULES, storage="sqlite") as h:
        alice = await h.connect("alice@localhost/home", priority=0)
        await h.send(alice, "<presence type='unavailable'><status>bye</status></presence>")
        await h.disconnect(alice)
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, storage="sqlite", accounts=()
    ) as h:
        alice = await h.connect("alice@localhost/again")
        await h.send(alice, last())
        query = h.take_one(alice).find(QUERY)
        assert query is not None
        assert query.text == "bye"
