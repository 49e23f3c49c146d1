"""XEP-0313 Message Archive Management (xeps/mam.py) with XEP-0059 paging and XEP-0441 prefs.

Tier 2: a real Server (memory storage unless stated), fake sessions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, assert_xml_equal, error_condition, parse_element
from xeps.mam import NS_MAM, NS_MAM_EXTENDED, Mam
from xmppd.events import StanzaEvent
from xmppd.jid import JID
from xmppd.lib.delay import parse_stamp
from xmppd.lib.rsm import NS_RSM
from xmppd.lib.stanza_id import STANZA_ID
from xmppd.session import Session
from xmppd.stanza import Stanza
from xmppd.storage import ArchiveStore, StorageError

NS_FORWARD = "urn:xmpp:forward:0"
NS_CARBONS = "urn:xmpp:carbons:2"
MODULES = ["disco", "presence", "roster", "stanza_id", "carbons", "offline", "mam"]
FORM = "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>"


def _started(
    tmp_path: Path, accounts: tuple[str, ...] = ("alice", "bob", "carol"), **overrides: Any
) -> Any:
    return ModuleHarness.started(tmp_path, accounts=accounts, modules_enabled=MODULES, **overrides)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with _started(tmp_path) as harness:
        yield harness


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/home", priority=0)


@pytest.fixture
async def bob(h: ModuleHarness) -> Session:
    return await h.connect("bob@localhost/phone", priority=0)


def mam(h: ModuleHarness) -> Mam:
    module = h.host().modules["mam"]
    assert isinstance(module, Mam)
    return module


def store(h: ModuleHarness) -> ArchiveStore:
    return mam(h).store


async def chat(h: ModuleHarness, sender: Session, to: str, body: str, extra: str = "") -> None:
    await h.send(sender, f"<message to='{to}' type='chat'><body>{body}</body>{extra}</message>")


class Answer:
    """What a query brought: the result messages and the final IQ."""

    def __init__(self, elements: list[etree._Element]) -> None:
        *self.messages, self.iq = elements

    @property
    def ids(self) -> list[str]:
        return [m.findall(f"{{{NS_MAM}}}result")[0].get("id") or "" for m in self.messages]

    @property
    def bodies(self) -> list[str]:
        return [
            m.findtext(
                f".//{{{NS_FORWARD}}}forwarded/{{jabber:client}}message/{{jabber:client}}body"
            )
            or ""
            for m in self.messages
        ]

    @property
    def fin(self) -> etree._Element:
        fin = self.iq.find(f"{{{NS_MAM}}}fin")
        assert fin is not None, etree.tostring(self.iq)
        return fin

    @property
    def complete(self) -> bool:
        return self.fin.get("complete") == "true"

    def rsm(self, name: str) -> str | None:
        return self.fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}{name}")

    @property
    def first_index(self) -> str | None:
        first = self.fin.find(f"{{{NS_RSM}}}set/{{{NS_RSM}}}first")
        return None if first is None else first.get("index")


async def query(
    h: ModuleHarness,
    session: Session,
    fields: str = "",
    rsm: str = "",
    *,
    extra: str = "",
    to: str = "",
    queryid: str = "q1",
) -> Answer:
    form = f"<x xmlns='jabber:x:data' type='submit'>{FORM}{fields}</x>" if fields else ""
    rsm_set = f"<set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set>" if rsm else ""
    to_attr = f" to='{to}'" if to else ""
    h.take(session)  # what the session got before (live messages) is not part of the answer
    await h.send(
        session,
        f"<iq type='set' id='mam1'{to_attr}><query xmlns='urn:xmpp:mam:2' queryid='{queryid}'>"
        f"{form}{rsm_set}{extra}</query></iq>",
    )
    return Answer(h.take(session))


def field(var: str, *values: str) -> str:
    return f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"


async def error_of(h: ModuleHarness, session: Session, iq: str) -> str | None:
    await h.send(session, iq)
    reply = h.take_one(session)
    assert reply.get("type") == "error", etree.tostring(reply)
    return error_condition(reply)


# -- archiving ----------------------------------------------------------------------------------


async def test_received_message_is_archived_under_its_stanza_id(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    before = time.time()
    await chat(h, alice, "bob@localhost", "hello")
    live = h.take_one(bob)
    stamp = live.find(STANZA_ID)
    assert stamp is not None
    assert stamp.get("by") == "bob@localhost"
    answer = await query(h, bob)
    assert answer.ids == [stamp.get("id")]
    (message,) = answer.messages
    assert message.get("from") == "bob@localhost"
    assert message.get("to") == "bob@localhost/phone"
    result = message.find(f"{{{NS_MAM}}}result")
    assert result is not None
    assert result.get("queryid") == "q1"
    delay = result.find(f"{{{NS_FORWARD}}}forwarded/{{urn:xmpp:delay}}delay")
    assert delay is not None
    assert before - 1 <= parse_stamp(delay.get("stamp") or "") <= time.time() + 1
    original = result.find(f"{{{NS_FORWARD}}}forwarded/{{jabber:client}}message")
    assert original is not None
    assert original.get("from") == "alice@localhost/home"
    assert original.findtext("{jabber:client}body") == "hello"
    assert answer.iq.get("type") == "result"
    assert answer.iq.get("id") == "mam1"
    assert answer.complete
    assert answer.rsm("first") == answer.rsm("last") == stamp.get("id")
    assert answer.rsm("count") == "1"
    assert answer.first_index == "0"


async def test_sent_message_is_archived_for_the_sender_and_its_id_reaches_sent_carbons_only(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    laptop = await h.connect("alice@localhost/laptop", priority=0)
    await h.send(laptop, "<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
    h.take(laptop)
    await chat(h, alice, "bob@localhost", "to bob")
    delivered = h.take_one(bob)
    assert [e.get("by") for e in delivered.findall(STANZA_ID)] == ["bob@localhost"]
    carbon = h.take_one(laptop)
    copied = carbon.find(f"{{{NS_CARBONS}}}sent/{{{NS_FORWARD}}}forwarded/{{jabber:client}}message")
    assert copied is not None
    (sid,) = copied.findall(STANZA_ID)
    assert sid.get("by") == "alice@localhost"
    answer = await query(h, alice)
    assert answer.ids == [sid.get("id")]
    assert answer.bodies == ["to bob"]
    # The recipient's archive has the same message under its own id.
    bob_answer = await query(h, bob)
    assert bob_answer.ids == [delivered.find(STANZA_ID).get("id")]  # type: ignore[union-attr]
    assert bob_answer.ids != answer.ids


async def test_sent_message_to_a_remote_jid_carries_no_id_of_ours(
    h: ModuleHarness, alice: Session
) -> None:
    await h.connect("alice@localhost/laptop", priority=0)
    await chat(h, alice, "romeo@remote.example", "far away")
    assert h.take(alice)  # remote-server-not-found: no s2s in the harness
    answer = await query(h, alice)
    assert answer.bodies == ["far away"]
    item = (await store(h).items("alice"))[0]
    assert b"stanza-id" not in item.value.encode()


@pytest.mark.parametrize(
    "stanza",
    [
        "<message to='bob@localhost' type='headline'><body>h</body></message>",
        "<message to='bob@localhost' type='groupchat'><body>g</body></message>",
        "<message to='bob@localhost' type='error'><body>e</body></message>",
        "<message to='bob@localhost' type='chat'>"
        "<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "<message to='bob@localhost' type='chat'><body>x</body>"
        "<no-store xmlns='urn:xmpp:hints'/></message>",
        "<message to='bob@localhost' type='chat'><body>x</body>"
        "<no-permanent-store xmlns='urn:xmpp:hints'/></message>",
        "<message to='localhost' type='chat'><body>to the server</body></message>",
    ],
)
async def test_messages_that_are_not_archived(
    h: ModuleHarness, alice: Session, bob: Session, stanza: str
) -> None:
    await h.send(alice, stanza)
    assert await store(h).count("bob") == 0
    assert await store(h).count("alice") == 0


async def test_store_hint_archives_a_message_without_body(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await h.send(
        alice,
        "<message to='bob@localhost' type='chat'><store xmlns='urn:xmpp:hints'/>"
        "<received xmlns='urn:xmpp:receipts' id='r1'/></message>",
    )
    assert await store(h).count("bob") == 1
    assert await store(h).count("alice") == 1


async def test_normal_message_with_body_is_archived(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await h.send(alice, "<message to='bob@localhost'><body>n</body></message>")
    assert (await query(h, bob)).bodies == ["n"]


async def test_message_to_own_account_is_archived_once(h: ModuleHarness, alice: Session) -> None:
    other = await h.connect("alice@localhost/laptop", priority=0)
    await chat(h, alice, "alice@localhost/laptop", "note to self")
    h.take(other)
    answer = await query(h, alice)
    assert answer.bodies == ["note to self"]


async def test_message_for_offline_account_is_archived(h: ModuleHarness, alice: Session) -> None:
    await chat(h, alice, "bob@localhost", "while you were out")
    bob = await h.connect("bob@localhost/phone", priority=0, drain=False)
    flushed = [e for e in h.take(bob) if e.tag == "{jabber:client}message"]
    (offline,) = flushed
    answer = await query(h, bob)
    assert answer.ids == [offline.find(STANZA_ID).get("id")]  # type: ignore[union-attr]


async def test_message_to_missing_account_or_gone_resource_is_not_archived(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await chat(h, alice, "nobody@localhost", "x")
    await h.send(alice, "<message to='bob@localhost/gone' type='normal'><body>x</body></message>")
    await h.send(alice, "<message to='bob@localhost/gone'><body>x</body></message>")
    assert await store(h).count("bob") == 0
    assert await store(h).count("nobody") == 0


async def test_archive_order_is_routing_order_for_both_directions(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    for i in range(3):
        await chat(h, alice, "bob@localhost", f"a{i}")
        await chat(h, bob, "alice@localhost", f"b{i}")
    answer = await query(h, alice)
    assert answer.bodies == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert len(set(answer.ids)) == 6


async def test_archive_writes_are_issued_during_routing(tmp_path: Path) -> None:
    """The write is queued before routing returns: a barrier taken then covers it."""
    async with _started(tmp_path, storage="sqlite") as h:
        alice = await h.connect("alice@localhost/home", priority=0)
        await h.connect("bob@localhost/phone", priority=0)
        await chat(h, alice, "bob@localhost", "durable")
        barrier = h.server.storage.barrier()
        assert barrier is not None  # both archive writes are pending, not yet committed
        await barrier
        assert await store(h).count("bob") == 1
        assert await store(h).count("alice") == 1


async def test_sent_ids_keep_increasing_across_restarts(tmp_path: Path) -> None:
    ids = []
    for accounts in (("alice",), ()):
        async with _started(tmp_path, accounts, storage="sqlite") as h:
            alice = await h.connect("alice@localhost/home", priority=0)
            await chat(h, alice, "romeo@remote.example", "x")
            await h.server.storage.flush()
            ids = [item.id for item in await store(h).items("alice")]
    assert len(ids) == 2
    assert ids[0] is not None
    assert ids[1] is not None
    assert ids[0] < ids[1]


# -- queries: paging --------------------------------------------------------------------------


async def _fill(h: ModuleHarness, n: int) -> list[str]:
    base = 1_700_000_000.0
    return [
        await store(h).append(
            "bob",
            f"<message xmlns='jabber:client' from='alice@localhost/home' to='bob@localhost'"
            f" type='chat'><body>m{i}</body></message>",
            with_jid="alice@localhost",
            when=base + i,
            id=f"id{i:03d}",
        )
        for i in range(n)
    ]


async def test_paging_forward_with_after(h: ModuleHarness, bob: Session) -> None:
    await _fill(h, 5)
    page1 = await query(h, bob, rsm="<max>2</max>")
    assert page1.ids == ["id000", "id001"]
    assert not page1.complete
    assert (page1.rsm("first"), page1.rsm("last"), page1.rsm("count")) == ("id000", "id001", "5")
    assert page1.first_index == "0"
    page2 = await query(h, bob, rsm="<max>2</max><after>id001</after>")
    assert page2.ids == ["id002", "id003"]
    assert page2.first_index == "2"
    assert not page2.complete
    page3 = await query(h, bob, rsm="<max>2</max><after>id003</after>")
    assert page3.ids == ["id004"]
    assert page3.complete
    page4 = await query(h, bob, rsm="<max>2</max><after>id004</after>")
    assert page4.ids == []
    assert page4.complete
    assert page4.rsm("first") is None
    assert page4.rsm("count") == "5"


async def test_paging_backward_from_the_last_page(h: ModuleHarness, bob: Session) -> None:
    await _fill(h, 5)
    last = await query(h, bob, rsm="<max>2</max><before/>")
    assert last.ids == ["id003", "id004"]  # chronological within the page
    assert last.first_index == "3"
    assert not last.complete
    middle = await query(h, bob, rsm="<max>2</max><before>id003</before>")
    assert middle.ids == ["id001", "id002"]
    assert not middle.complete
    first = await query(h, bob, rsm="<max>2</max><before>id001</before>")
    assert first.ids == ["id000"]
    assert first.complete
    assert first.first_index == "0"


async def test_flip_page_reverses_the_order_of_results_only(h: ModuleHarness, bob: Session) -> None:
    await _fill(h, 5)
    flipped = await query(h, bob, rsm="<max>3</max><before/>", extra="<flip-page/>")
    assert flipped.ids == ["id004", "id003", "id002"]
    assert (flipped.rsm("first"), flipped.rsm("last")) == ("id002", "id004")


async def test_rsm_index_and_max_zero(h: ModuleHarness, bob: Session) -> None:
    await _fill(h, 5)
    indexed = await query(h, bob, rsm="<max>2</max><index>3</index>")
    assert indexed.ids == ["id003", "id004"]
    assert indexed.first_index == "3"
    counted = await query(h, bob, rsm="<max>0</max>")
    assert counted.ids == []
    assert counted.rsm("count") == "5"
    assert not counted.complete


async def test_max_above_the_server_limit_is_capped(tmp_path: Path) -> None:
    async with _started(tmp_path, modules={"mam": {"page_size": 2, "max_page_size": 3}}) as h:
        bob = await h.connect("bob@localhost/phone", priority=0)
        await _fill(h, 5)
        assert len((await query(h, bob, rsm="<max>1000000</max>")).ids) == 3
        default = await query(h, bob)
        assert default.ids == ["id000", "id001"]
        assert not default.complete


@pytest.mark.parametrize("rsm", ["<after>nope</after>", "<before>nope</before>"])
async def test_unknown_rsm_id_is_item_not_found(h: ModuleHarness, bob: Session, rsm: str) -> None:
    await _fill(h, 2)
    answer = await query(h, bob, rsm=rsm)
    assert answer.messages == []
    assert error_condition(answer.iq) == "item-not-found"


@pytest.mark.parametrize(
    "fields",
    [
        field("after-id", "nope"),
        field("before-id", "nope"),
        field("ids", "id000", "nope"),
    ],
)
async def test_unknown_form_id_is_item_not_found(
    h: ModuleHarness, bob: Session, fields: str
) -> None:
    await _fill(h, 2)
    answer = await query(h, bob, fields)
    assert error_condition(answer.iq) == "item-not-found"


async def test_an_id_of_another_users_archive_is_unknown(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await _fill(h, 2)  # bob's archive
    answer = await query(h, alice, rsm="<after>id000</after>")
    assert error_condition(answer.iq) == "item-not-found"


# -- queries: filters ----------------------------------------------------------------------------


async def test_with_filter_bare_and_full(h: ModuleHarness, alice: Session, bob: Session) -> None:
    carol = await h.connect("carol@localhost/pc", priority=0)
    carol2 = await h.connect("carol@localhost/mobile", priority=0)
    await chat(h, alice, "bob@localhost", "from alice")
    await chat(h, carol, "bob@localhost", "from carol pc")
    await chat(h, carol2, "bob@localhost", "from carol mobile")
    await chat(h, bob, "carol@localhost/pc", "to carol pc")
    bare = await query(h, bob, field("with", "carol@localhost"))
    assert bare.bodies == ["from carol pc", "from carol mobile", "to carol pc"]
    assert bare.rsm("count") == "3"
    full = await query(h, bob, field("with", "carol@localhost/pc"))
    assert full.bodies == ["from carol pc", "to carol pc"]
    assert full.complete
    paged = await query(h, bob, field("with", "carol@localhost/pc"), "<max>1</max>")
    assert paged.bodies == ["from carol pc"]
    assert not paged.complete
    back = await query(h, bob, field("with", "carol@localhost/pc"), "<max>1</max><before/>")
    assert back.bodies == ["to carol pc"]
    assert not back.complete


async def test_with_own_jid_gives_messages_to_self(h: ModuleHarness, alice: Session) -> None:
    await h.connect("alice@localhost/laptop", priority=0)
    await chat(h, alice, "alice@localhost/laptop", "self")
    await chat(h, alice, "bob@localhost", "other")
    answer = await query(h, alice, field("with", "alice@localhost"))
    assert answer.bodies == ["self"]


async def test_start_end_and_id_range_filters(h: ModuleHarness, bob: Session) -> None:
    await _fill(h, 6)
    timed = await query(
        h, bob, field("start", "2023-11-14T22:13:21Z") + field("end", "2023-11-14T22:13:23Z")
    )
    assert timed.ids == ["id001", "id002", "id003"]
    assert timed.rsm("count") == "3"
    ranged = await query(h, bob, field("after-id", "id001") + field("before-id", "id004"))
    assert ranged.ids == ["id002", "id003"]
    assert ranged.complete
    # before-id does not page backwards; RSM inside the range does.
    first = await query(h, bob, field("after-id", "id000"), "<max>2</max>")
    assert first.ids == ["id001", "id002"]
    assert first.first_index == "0"
    assert first.rsm("count") == "5"
    last = await query(h, bob, field("after-id", "id000"), "<max>2</max><before/>")
    assert last.ids == ["id004", "id005"]
    assert last.first_index == "3"


async def test_ids_filter_fetches_exactly_those_messages(h: ModuleHarness, bob: Session) -> None:
    await _fill(h, 5)
    answer = await query(h, bob, field("ids", "id003", "id001"))
    assert answer.ids == ["id001", "id003"]
    assert answer.complete


# -- queries: errors and access -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (
            f"<x xmlns='jabber:x:data' type='submit'>{FORM}{field('color', 'red')}</x>",
            "feature-not-implemented",
        ),
        (
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
            "<value>urn:example</value></field></x>",
            "bad-request",
        ),
        (f"<x xmlns='jabber:x:data' type='form'>{FORM}</x>", "bad-request"),
        (
            f"<x xmlns='jabber:x:data' type='submit'>{FORM}{field('start', 'yesterday')}</x>",
            "bad-request",
        ),
        (
            f"<x xmlns='jabber:x:data' type='submit'>{FORM}{field('end', '2020-01-01')}</x>",
            "bad-request",
        ),
        (f"<x xmlns='jabber:x:data' type='submit'>{FORM}{field('with', '@@')}</x>", "bad-request"),
        (
            f"<x xmlns='jabber:x:data' type='submit'>{FORM}{field('with', 'a@b', 'c@d')}</x>",
            "bad-request",
        ),
        (f"<x xmlns='jabber:x:data' type='submit'>{FORM}<field/></x>", "bad-request"),
        (
            f"<x xmlns='jabber:x:data' type='submit'>{FORM}</x>"
            f"<x xmlns='jabber:x:data' type='submit'>{FORM}</x>",
            "bad-request",
        ),
        ("<set xmlns='http://jabber.org/protocol/rsm'><max>ten</max></set>", "bad-request"),
        ("<set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set>", "bad-request"),
        (
            "<set xmlns='http://jabber.org/protocol/rsm'><max>99999999999999</max></set>",
            "bad-request",
        ),
        (
            "<set xmlns='http://jabber.org/protocol/rsm'><after>a</after><before>b</before></set>",
            "bad-request",
        ),
        ("<set xmlns='http://jabber.org/protocol/rsm'><after/></set>", "bad-request"),
        (
            "<set xmlns='http://jabber.org/protocol/rsm'><index>100000</index></set>",
            "feature-not-implemented",
        ),
    ],
)
async def test_malformed_queries_are_refused(
    h: ModuleHarness, bob: Session, payload: str, condition: str
) -> None:
    await _fill(h, 1)
    got = await error_of(
        h, bob, f"<iq type='set' id='e1'><query xmlns='urn:xmpp:mam:2'>{payload}</query></iq>"
    )
    assert got == condition
    assert h.take(bob) == []  # no result messages before the error


async def test_pubsub_node_query_is_not_implemented(h: ModuleHarness, bob: Session) -> None:
    got = await error_of(
        h, bob, "<iq type='set' id='e1'><query xmlns='urn:xmpp:mam:2' node='n'/></iq>"
    )
    assert got == "feature-not-implemented"


async def test_too_many_ids_is_a_policy_violation(h: ModuleHarness, bob: Session) -> None:
    ids = field("ids", *[f"x{i}" for i in range(300)])
    answer = await query(h, bob, ids)
    assert error_condition(answer.iq) == "policy-violation"


@pytest.mark.parametrize(
    "payload",
    [
        "<query xmlns='urn:xmpp:mam:2' type='set'/>",
        "<metadata xmlns='urn:xmpp:mam:2'/>",
        "<prefs xmlns='urn:xmpp:mam:2'/>",
    ],
)
async def test_another_users_archive_is_forbidden(
    h: ModuleHarness, alice: Session, bob: Session, payload: str
) -> None:
    await chat(h, bob, "carol@localhost", "secret")
    type_ = "set" if "query" in payload else "get"
    payload = payload.replace(" type='set'", "")
    got = await error_of(h, alice, f"<iq type='{type_}' id='f1' to='bob@localhost'>{payload}</iq>")
    assert got == "forbidden"
    assert h.take(alice) == []


async def test_form_fields_are_discoverable(h: ModuleHarness, bob: Session) -> None:
    await h.send(bob, "<iq type='get' id='f1'><query xmlns='urn:xmpp:mam:2'/></iq>")
    reply = h.take_one(bob)
    assert reply.get("type") == "result"
    fields = {f.get("var"): f.get("type") for f in reply.iterfind(".//{jabber:x:data}field")}
    assert fields == {
        "FORM_TYPE": "hidden",
        "with": "jid-single",
        "start": "text-single",
        "end": "text-single",
        "before-id": "text-single",
        "after-id": "text-single",
        "ids": "list-multi",
    }
    assert reply.find(".//{http://jabber.org/protocol/xdata-validate}open") is not None
    assert reply.find(".//{jabber:x:data}required") is None


async def test_metadata_of_empty_and_filled_archive(h: ModuleHarness, bob: Session) -> None:
    await h.send(bob, "<iq type='get' id='m1'><metadata xmlns='urn:xmpp:mam:2'/></iq>")
    assert_xml_equal(
        h.take_one(bob),
        "<iq type='result' id='m1' from='bob@localhost' to='bob@localhost/phone'>"
        "<metadata xmlns='urn:xmpp:mam:2'/></iq>",
    )
    await _fill(h, 3)
    await h.send(bob, "<iq type='get' id='m2'><metadata xmlns='urn:xmpp:mam:2'/></iq>")
    assert_xml_equal(
        h.take_one(bob),
        "<iq type='result' id='m2' from='bob@localhost' to='bob@localhost/phone'>"
        "<metadata xmlns='urn:xmpp:mam:2'>"
        "<start id='id000' timestamp='2023-11-14T22:13:20Z'/>"
        "<end id='id002' timestamp='2023-11-14T22:13:22Z'/></metadata></iq>",
    )


async def test_disco_on_the_account_advertises_mam(h: ModuleHarness, bob: Session) -> None:
    await h.send(
        bob,
        "<iq type='get' id='d1' to='bob@localhost'>"
        "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    features = {f.get("var") for f in h.take_one(bob).iter("{*}feature")}
    assert {NS_MAM, NS_MAM_EXTENDED} <= features


# -- preferences ---------------------------------------------------------------------------------


async def test_prefs_default_and_round_trip(h: ModuleHarness, bob: Session) -> None:
    await h.send(bob, "<iq type='get' id='p1'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
    assert_xml_equal(
        h.take_one(bob),
        "<iq type='result' id='p1' from='bob@localhost' to='bob@localhost/phone'>"
        "<prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never/></prefs></iq>",
    )
    await h.send(
        bob,
        "<iq type='set' id='p2'><prefs xmlns='urn:xmpp:mam:2' default='never'>"
        "<always><jid>alice@localhost</jid></always>"
        "<never><jid>carol@localhost/pc</jid></never></prefs></iq>",
    )
    expected = (
        "<prefs xmlns='urn:xmpp:mam:2' default='never'>"
        "<always><jid>alice@localhost</jid></always>"
        "<never><jid>carol@localhost/pc</jid></never></prefs>"
    )
    assert_xml_equal(
        h.take_one(bob),
        f"<iq type='result' id='p2' from='bob@localhost' to='bob@localhost/phone'>{expected}</iq>",
    )
    await h.send(bob, "<iq type='get' id='p3'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
    assert_xml_equal(
        h.take_one(bob),
        f"<iq type='result' id='p3' from='bob@localhost' to='bob@localhost/phone'>{expected}</iq>",
    )


async def test_prefs_decide_what_is_archived(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    carol_pc = await h.connect("carol@localhost/pc", priority=0)
    carol_mobile = await h.connect("carol@localhost/mobile", priority=0)
    await h.send(
        bob,
        "<iq type='set' id='p2'><prefs xmlns='urn:xmpp:mam:2' default='never'>"
        "<always><jid>alice@localhost</jid><jid>carol@localhost</jid></always>"
        "<never><jid>carol@localhost/pc</jid></never></prefs></iq>",
    )
    h.take(bob)
    await chat(h, alice, "bob@localhost", "alice in")
    await chat(h, carol_pc, "bob@localhost", "carol pc in")  # never wins
    await chat(h, carol_mobile, "bob@localhost", "carol mobile in")
    await chat(h, bob, "alice@localhost", "bob to alice")
    await chat(h, bob, "romeo@remote.example", "bob to romeo")  # default never
    h.take(bob)
    answer = await query(h, bob)
    assert answer.bodies == ["alice in", "carol mobile in", "bob to alice"]


async def test_prefs_survive_a_restart(tmp_path: Path) -> None:
    async with _started(tmp_path, storage="sqlite") as h:
        bob = await h.connect("bob@localhost/phone", priority=0)
        await h.send(
            bob, "<iq type='set' id='p'><prefs xmlns='urn:xmpp:mam:2' default='never'/></iq>"
        )
        assert h.take_one(bob).get("type") == "result"
    async with _started(tmp_path, (), storage="sqlite") as h:
        alice = await h.connect("alice@localhost/home", priority=0)
        await h.connect("bob@localhost/phone", priority=0)
        await chat(h, alice, "bob@localhost", "not kept")
        await h.server.storage.flush()
        assert await store(h).count("bob") == 0
        assert await store(h).count("alice") == 1


async def test_roster_default_archives_contacts_only(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await h.send(
        bob,
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'>"
        "<item jid='alice@localhost'/></query></iq>",
    )
    await h.send(bob, "<iq type='set' id='p'><prefs xmlns='urn:xmpp:mam:2' default='roster'/></iq>")
    h.take(bob)
    carol = await h.connect("carol@localhost/pc", priority=0)
    await chat(h, alice, "bob@localhost", "contact")
    await chat(h, carol, "bob@localhost", "stranger")
    await chat(h, bob, "alice@localhost", "to contact")
    await chat(h, bob, "carol@localhost", "to stranger")
    h.take(bob)
    assert (await query(h, bob)).bodies == ["contact", "to contact"]


async def test_server_default_never_from_options(tmp_path: Path) -> None:
    async with _started(tmp_path, modules={"mam": {"default": "never"}}) as h:
        alice = await h.connect("alice@localhost/home", priority=0)
        bob = await h.connect("bob@localhost/phone", priority=0)
        await chat(h, alice, "bob@localhost", "x")
        assert await store(h).count("bob") == 0
        h.take(bob)
        await h.send(bob, "<iq type='get' id='p1'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
        prefs = h.take_one(bob).find(f"{{{NS_MAM}}}prefs")
        assert prefs is not None
        assert prefs.get("default") == "never"


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        ("<prefs xmlns='urn:xmpp:mam:2'/>", "bad-request"),
        ("<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>", "bad-request"),
        (
            "<prefs xmlns='urn:xmpp:mam:2' default='always'><always><jid>@@</jid></always></prefs>",
            "jid-malformed",
        ),
        (
            "<prefs xmlns='urn:xmpp:mam:2' default='always'><always/><always/></prefs>",
            "bad-request",
        ),
    ],
)
async def test_bad_prefs_are_refused_and_change_nothing(
    h: ModuleHarness, bob: Session, payload: str, condition: str
) -> None:
    assert await error_of(h, bob, f"<iq type='set' id='p'>{payload}</iq>") == condition
    await h.send(bob, "<iq type='get' id='p1'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
    prefs = h.take_one(bob).find(f"{{{NS_MAM}}}prefs")
    assert prefs is not None
    assert prefs.get("default") == "always"


async def test_too_many_listed_jids_is_a_policy_violation(h: ModuleHarness, bob: Session) -> None:
    jids = "".join(f"<jid>u{i}@example.org</jid>" for i in range(1001))
    payload = f"<prefs xmlns='urn:xmpp:mam:2' default='always'><never>{jids}</never></prefs>"
    assert await error_of(h, bob, f"<iq type='set' id='p'>{payload}</iq>") == "policy-violation"


# -- retention and account removal -----------------------------------------------------------


async def test_expiry_removes_entries_older_than_max_age(tmp_path: Path) -> None:
    async with _started(tmp_path, modules={"mam": {"max_age_days": 2}}) as h:
        archive = store(h)
        now = time.time()
        await archive.append("bob", "old", when=now - 3 * 86400, id="old")
        await archive.append("bob", "new", when=now - 1 * 86400, id="new")
        await mam(h).expire()
        assert [item.id for item in await archive.items("bob")] == ["new"]


async def test_no_expiry_with_max_age_zero(h: ModuleHarness) -> None:
    await store(h).append("bob", "ancient", when=1.0, id="a")
    await mam(h).expire()
    assert await store(h).count("bob") == 1


async def test_deleted_account_loses_its_archive_and_prefs(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await h.send(bob, "<iq type='set' id='p'><prefs xmlns='urn:xmpp:mam:2' default='never'/></iq>")
    await chat(h, bob, "alice@localhost", "kept by alice")
    await h.send(bob, "<iq type='set' id='p'><prefs xmlns='urn:xmpp:mam:2' default='always'/></iq>")
    await chat(h, alice, "bob@localhost", "gone with bob")
    assert await store(h).count("bob") == 1
    await h.server.account_removed(JID.parse("bob@localhost"))
    assert await store(h).count("bob") == 0
    assert await store(h).count("alice") == 2
    assert "bob" not in mam(h)._prefs


@pytest.mark.parametrize("bad", ["bogus", "", "roster,always"])
async def test_bad_default_option_is_a_config_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(Exception, match="default"):
        async with _started(tmp_path, modules={"mam": {"default": bad}}):
            pass


async def test_result_messages_are_not_archived_again(h: ModuleHarness, bob: Session) -> None:
    await _fill(h, 3)
    await query(h, bob)
    assert await store(h).count("bob") == 3


async def test_mam_paging_over_10000_messages_both_ways(tmp_path: Path) -> None:
    """Fill 10,000 entries through the storage API; page through all of them with RSM."""
    total, page_size = 10_000, 250
    async with _started(tmp_path, storage="sqlite") as h:
        bob = await h.connect("bob@localhost/phone", priority=0)
        archive = store(h)
        base = 1_700_000_000.0
        futures = [
            archive.append_nowait(
                "bob",
                f"<message xmlns='jabber:client' from='alice@localhost/x' to='bob@localhost' "
                f"type='chat'><body>{i}</body></message>",
                with_jid="alice@localhost",
                when=base + i / 10,
                id=f"mam{i:05d}",
            )
            for i in range(total)
        ]
        for future in futures:
            await future
        expected = [f"mam{i:05d}" for i in range(total)]

        forward: list[str] = []
        after = ""
        while True:
            answer = await query(h, bob, rsm=f"<max>{page_size}</max>{after}")
            assert answer.rsm("count") == str(total)
            assert answer.first_index == str(len(forward))
            forward += answer.ids
            if answer.complete:
                break
            after = f"<after>{answer.rsm('last')}</after>"
        assert forward == expected

        backward: list[str] = []
        before = "<before/>"
        while True:
            answer = await query(h, bob, rsm=f"<max>{page_size}</max>{before}")
            assert answer.first_index == str(total - len(backward) - len(answer.ids))
            backward = answer.ids + backward
            if answer.complete:
                break
            before = f"<before>{answer.rsm('first')}</before>"
        assert backward == expected


async def test_hooks_are_synchronous_on_the_hot_path(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    module = mam(h)
    await module.next_id()  # the id lease is in place after the first outgoing message
    element = parse_element(
        "<message to='bob@localhost' type='chat'><body>x</body>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='sid-1'/></message>"
    )
    to = JID.parse("bob@localhost")
    stanza = Stanza(element, "message", "chat", JID.parse("alice@localhost/home"), to)
    assert module.outgoing(StanzaEvent(stanza, alice, to)) is False
    assert module.incoming(StanzaEvent(stanza, alice, to)) is False
    assert await store(h).count("bob") == 1
    assert (await store(h).items("bob"))[0].id == "sid-1"
    assert await store(h).count("alice") == 1


async def test_a_failed_archive_write_is_logged_and_the_message_still_delivered(
    h: ModuleHarness, alice: Session, bob: Session, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(*args: object, **kwargs: object) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        future.set_exception(StorageError("disk on fire"))
        return future

    module = mam(h)
    module.store = mock.Mock(wraps=module.store, append_nowait=failing)
    await chat(h, alice, "bob@localhost", "still delivered")
    assert h.take_one(bob).findtext("{jabber:client}body") == "still delivered"
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert "disk on fire" in caplog.text
