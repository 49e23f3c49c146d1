"""XEP-0313 Message Archive Management over real sockets: slixmpp's xep_0313/xep_0059 and raw XML."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from lxml import etree
from slixmpp import JID

from tests.conftest import PASSWORD, Client, ClientFactory
from tests.helpers.harness import error_condition
from tests.helpers.wire import RawClient
from xmppd.server import Server

pytestmark = pytest.mark.interop

NS_MAM = "urn:xmpp:mam:2"
SID = "{urn:xmpp:sid:0}stanza-id"


async def _mam_client(connect: ClientFactory, jid: str) -> Client:
    client = await connect(jid)
    client.register_plugin("xep_0313")
    return client


async def _exchange(alice: Client, bob: Client, count: int) -> list[str]:
    """Alice sends `count` chats to bob; returns the stanza ids bob's copies carry."""
    ids = []
    for i in range(count):
        alice.send_message(mto="bob@localhost", mbody=f"m{i}", mtype="chat")
        got = await bob.next_message()
        assert got["body"] == f"m{i}"
        stamp = got.xml.find(SID)
        assert stamp is not None
        assert stamp.get("by") == "bob@localhost"
        ids.append(stamp.get("id"))
    return ids


def _result_ids(messages: list[object]) -> list[str]:
    return [m["mam_result"]["id"] for m in messages]  # type: ignore[index]


async def test_slixmpp_retrieves_the_archive_with_stanza_ids(connect: ClientFactory) -> None:
    alice = await _mam_client(connect, "alice@localhost/a")
    bob = await _mam_client(connect, "bob@localhost/b")
    ids = await _exchange(alice, bob, 3)
    iq = await bob.plugin["xep_0313"].retrieve(with_jid=JID("alice@localhost"))
    results = iq["mam"]["results"]
    assert _result_ids(results) == ids
    bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in results]
    assert bodies == ["m0", "m1", "m2"]
    assert iq["mam_fin"]["complete"] in (True, "true")
    # The sender's archive has them too, under its own ids.
    sent = await alice.plugin["xep_0313"].retrieve(with_jid=JID("bob@localhost"))
    assert len(sent["mam"]["results"]) == 3
    assert set(_result_ids(sent["mam"]["results"])).isdisjoint(ids)


async def test_slixmpp_pages_forward_and_backward(connect: ClientFactory) -> None:
    alice = await _mam_client(connect, "alice@localhost/a")
    bob = await _mam_client(connect, "bob@localhost/b")
    ids = await _exchange(alice, bob, 5)
    forward = [m async for m in bob.plugin["xep_0313"].iterate(rsm={"max": 2})]
    assert _result_ids(forward) == ids
    # slixmpp's reverse iterate() stops after the first page whenever <count/> and
    # <first index/> are present (it assumes forward paging), so page backward by hand.
    mam = bob.plugin["xep_0313"]
    page = await mam.retrieve(rsm={"max": 2, "before": ids[3]})
    assert _result_ids(page["mam"]["results"]) == ids[1:3]
    assert page["mam_fin"]["rsm"]["first_index"] == "1"
    page = await mam.retrieve(rsm={"max": 2, "before": ids[1]})
    assert _result_ids(page["mam"]["results"]) == ids[:1]


async def test_slixmpp_reads_fields_and_metadata(connect: ClientFactory) -> None:
    alice = await _mam_client(connect, "alice@localhost/a")
    bob = await _mam_client(connect, "bob@localhost/b")
    ids = await _exchange(alice, bob, 2)
    form = await bob.plugin["xep_0313"].get_fields()
    assert {"with", "start", "end", "before-id", "after-id", "ids"} <= set(form.get_fields())
    meta = await bob.plugin["xep_0313"].get_archive_metadata()
    assert meta["mam_metadata"]["start"]["id"] == ids[0]
    assert meta["mam_metadata"]["end"]["id"] == ids[1]
    info = await bob.plugin["xep_0030"].get_info(jid="bob@localhost")
    assert {NS_MAM, f"{NS_MAM}#extended"} <= set(info["disco_info"]["features"])


@pytest.fixture
async def raw(server: Server) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(server.ports["c2s"][0])
    await client.login("alice", PASSWORD)
    yield client
    await client.close()


async def _ask(raw: RawClient, iq: str) -> etree._Element:
    await raw.send(iq)
    while True:
        reply = await raw.next()
        if reply.tag == "{jabber:client}iq":
            return reply


async def test_raw_query_of_another_users_archive_is_forbidden(
    connect: ClientFactory, raw: RawClient
) -> None:
    carol = await connect("carol@localhost/c")
    await _mam_client(connect, "bob@localhost/b")
    carol.send_message(mto="bob@localhost", mbody="private", mtype="chat")
    reply = await _ask(
        raw,
        "<iq type='set' id='x1' to='bob@localhost'><query xmlns='urn:xmpp:mam:2'/></iq>",
    )
    assert reply.get("type") == "error"
    assert error_condition(reply) == "forbidden"
    assert b"private" not in etree.tostring(reply)


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
            "<value>urn:xmpp:mam:2</value></field><field var='nope'><value>1</value></field></x>",
            "feature-not-implemented",
        ),
        (
            "<set xmlns='http://jabber.org/protocol/rsm'><after>unknown</after></set>",
            "item-not-found",
        ),
        ("<set xmlns='http://jabber.org/protocol/rsm'><max>lots</max></set>", "bad-request"),
    ],
)
async def test_raw_bad_queries(raw: RawClient, payload: str, condition: str) -> None:
    reply = await _ask(
        raw, f"<iq type='set' id='x2'><query xmlns='urn:xmpp:mam:2'>{payload}</query></iq>"
    )
    assert reply.get("id") == "x2"
    assert error_condition(reply) == condition


async def test_raw_hostile_queryid_and_huge_max(raw: RawClient, server: Server) -> None:
    reply = await _ask(
        raw,
        f"<iq type='set' id='x3'><query xmlns='urn:xmpp:mam:2' queryid='{'q' * 5000}'/></iq>",
    )
    assert error_condition(reply) == "bad-request"
    archive = server.storage.archive("localhost", "mam")  # type: ignore[union-attr]
    for i in range(300):
        archive.append_nowait(
            "alice", f"<message xmlns='jabber:client'><body>{i}</body></message>", id=f"i{i:03d}"
        )
    await server.storage.flush()  # type: ignore[union-attr]
    await raw.send(
        "<iq type='set' id='x4'><query xmlns='urn:xmpp:mam:2' queryid='&lt;q&gt;'>"
        "<set xmlns='http://jabber.org/protocol/rsm'><max>999999999</max></set></query></iq>"
    )
    results = []
    while True:
        element = await raw.next()
        if element.tag == "{jabber:client}iq":
            break
        results.append(element)
    assert element.get("type") == "result"
    assert len(results) == 250  # capped at max_page_size
    first = results[0].find(f"{{{NS_MAM}}}result")
    assert first is not None
    assert first.get("queryid") == "<q>"
    fin = element.find(f"{{{NS_MAM}}}fin")
    assert fin is not None
    assert fin.get("complete") is None
