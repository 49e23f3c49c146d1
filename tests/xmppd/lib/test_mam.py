"""XEP-0313 query machinery shared by user and room archives (xmppd/lib/mam.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import assert_xml_equal, parse_element
from xmppd.errors import StanzaError
from xmppd.jid import JID
from xmppd.lib import mam
from xmppd.lib.rsm import NS_RSM, RsmRequest
from xmppd.storage import ArchiveItem, ArchiveStore, Storage, open_storage

NS = mam.NS_MAM
OWNER = "room@conference.localhost"


def _query(inner: str = "", attrs: str = "") -> etree._Element:
    return parse_element(f"<query xmlns='{NS}' {attrs}>{inner}</query>")


def _form(*fields: tuple[str, list[str]], form_type: str | None = NS) -> str:
    body = ""
    if form_type is not None:
        body += f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"
    for var, values in fields:
        body += f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"
    return f"<x xmlns='jabber:x:data' type='submit'>{body}</x>"


def _condition(info: pytest.ExceptionInfo[StanzaError]) -> str:
    return str(info.value.condition)


# -- parse_query ------------------------------------------------------------------------


def test_parse_empty_query() -> None:
    query = mam.parse_query(_query())
    assert query == mam.Query(None, None, None, None, None, None, None, RsmRequest(), False)


def test_parse_full_query() -> None:
    inner = _form(
        ("with", ["juliet@capulet.lit/balcony"]),
        ("start", ["2010-06-07T00:00:00Z"]),
        ("end", ["2010-07-07T13:23:54+02:00"]),
        ("after-id", ["a1"]),
        ("before-id", ["b1"]),
        ("ids", ["x", "", "y"]),
    )
    inner += f"<set xmlns='{NS_RSM}'><max>10</max><before/></set><flip-page/>"
    query = mam.parse_query(_query(inner, "queryid='q1'"))
    assert query.queryid == "q1"
    assert query.with_jid == JID.parse("juliet@capulet.lit/balcony")
    assert query.start == 1275868800.0
    assert query.end == 1278501834.0
    assert (query.after_id, query.before_id, query.ids) == ("a1", "b1", ("x", "y"))
    assert query.rsm == RsmRequest(max=10, before="")
    assert query.flip


def test_parse_empty_values_are_absent() -> None:
    query = mam.parse_query(_query(_form(("with", [""]), ("start", []))))
    assert query.with_jid is None
    assert query.start is None


@pytest.mark.parametrize(
    ("inner", "attrs", "condition"),
    [
        ("", "node='urn:xmpp:mucsub:nodes:messages'", "feature-not-implemented"),
        ("", f"queryid='{'q' * 300}'", "bad-request"),
        (_form() + _form(), "", "bad-request"),
        (_form(form_type="urn:other"), "", "bad-request"),
        (_form(("color", ["red"])), "", "feature-not-implemented"),
        (_form(("with", ["a@b", "c@d"])), "", "bad-request"),
        (_form(("with", ["@@"])), "", "bad-request"),
        (_form(("start", ["yesterday"])), "", "bad-request"),
        (_form(("end", ["2010-06-07"])), "", "bad-request"),
        (_form(("start", ["2010-06-07T00:00:00"])), "", "bad-request"),  # no time zone
        (_form(("ids", [str(i) for i in range(mam.MAX_IDS + 1)])), "", "policy-violation"),
        ("<x xmlns='jabber:x:data' type='form'/>", "", "bad-request"),
        (f"<set xmlns='{NS_RSM}'><max>-1</max></set>", "", "bad-request"),
    ],
)
def test_parse_bad_query(inner: str, attrs: str, condition: str) -> None:
    with pytest.raises(StanzaError) as info:
        mam.parse_query(_query(inner, attrs))
    assert _condition(info) == condition


# -- payloads ---------------------------------------------------------------------------


def test_query_form_lists_the_fields() -> None:
    form = mam.query_form()
    assert form.tag == mam.QUERY
    fields = {f.get("var"): f.get("type") for f in form.iter("{jabber:x:data}field")}
    assert fields == {
        "FORM_TYPE": "hidden",
        "with": "jid-single",
        "start": "text-single",
        "end": "text-single",
        "before-id": "text-single",
        "after-id": "text-single",
        "ids": "list-multi",
    }
    assert form.find(".//{http://jabber.org/protocol/xdata-validate}open") is not None


def test_metadata_payloads() -> None:
    assert_xml_equal(mam.build_metadata(None, None), f"<metadata xmlns='{NS}'/>")
    first = ArchiveItem("1", 1000.0, None, "<message/>", id="a")
    last = ArchiveItem("2", 1000.5, None, "<message/>")
    assert_xml_equal(
        mam.build_metadata(first, last),
        f"<metadata xmlns='{NS}'><start id='a' timestamp='1970-01-01T00:16:40Z'/>"
        "<end id='2' timestamp='1970-01-01T00:16:40.500Z'/></metadata>",
    )


def test_result_message_forwards_the_stored_stanza() -> None:
    item = ArchiveItem(
        "7",
        0.0,
        OWNER,
        "<message xmlns='jabber:client' from='room@conference.localhost/nick' "
        "type='groupchat'><body>hi</body></message>",
        id="abc",
    )
    message = mam.result_message(item, "q1", JID.parse(OWNER), JID.parse("alice@localhost/a"))
    assert message.get("from") == OWNER
    assert message.get("to") == "alice@localhost/a"
    result = message.find(mam.RESULT)
    assert result is not None
    assert (result.get("queryid"), result.get("id")) == ("q1", "abc")
    forwarded = result.find(f"{{{mam.NS_FORWARD}}}forwarded")
    assert forwarded is not None
    delay = forwarded.find("{urn:xmpp:delay}delay")
    assert delay is not None
    assert delay.get("stamp") == "1970-01-01T00:00:00Z"
    inner = forwarded.find("{jabber:client}message")
    assert inner is not None
    assert inner.get("from") == "room@conference.localhost/nick"
    assert inner.findtext("{jabber:client}body") == "hi"


def test_result_message_without_queryid_and_unreadable_entry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    item = ArchiveItem("7", 0.0, None, "<message><unclosed>")
    with caplog.at_level(logging.ERROR):
        message = mam.result_message(item, None, JID.parse(OWNER), JID.parse("a@localhost/r"))
    result = message.find(mam.RESULT)
    assert result is not None
    assert result.get("queryid") is None
    assert result.get("id") == "7"
    forwarded = result.find(f"{{{mam.NS_FORWARD}}}forwarded")
    assert forwarded is not None
    assert len(forwarded) == 1
    assert "unreadable" in caplog.text


def test_fin_payloads() -> None:
    empty = mam.build_fin(mam.Page([], True, None, 0))
    assert_xml_equal(
        empty,
        f"<fin xmlns='{NS}' complete='true'><set xmlns='{NS_RSM}'><count>0</count></set></fin>",
    )
    items = [ArchiveItem("1", 0.0, None, "", id="a"), ArchiveItem("2", 0.0, None, "")]
    assert_xml_equal(
        mam.build_fin(mam.Page(items, False, 3, 9)),
        f"<fin xmlns='{NS}'><set xmlns='{NS_RSM}'><first index='3'>a</first>"
        "<last>2</last><count>9</count></set></fin>",
    )


# -- find_page on every backend ---------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ArchiveStore]:
    storage: Storage = await open_storage(request.param, path=tmp_path / "x.sqlite")
    yield storage.archive("conference.localhost", "muc_mam")
    await storage.close()


async def _fill(store: ArchiveStore, count: int) -> list[str]:
    ids = []
    for i in range(count):
        nick = "a" if i % 2 == 0 else "b"
        text = (
            f"<message xmlns='jabber:client' from='{OWNER}/{nick}' type='groupchat'>"
            f"<body>m{i}</body></message>"
        )
        await store.append(OWNER, text, with_jid=OWNER, when=1000.0 + i, id=f"id{i}")
        ids.append(f"id{i}")
    await store.append("other@conference.localhost", "<message/>", id="elsewhere")
    return ids


async def _page(store: ArchiveStore, inner: str = "", **kwargs: int) -> mam.Page:
    query = mam.parse_query(_query(inner))
    return await mam.find_page(
        store,
        OWNER,
        query,
        page_size=kwargs.get("page_size", 3),
        max_page_size=kwargs.get("max_page_size", 5),
    )


def _ids(page: mam.Page) -> list[str]:
    return [mam.public_id(item) for item in page.items]


async def test_pages_forward(store: ArchiveStore) -> None:
    ids = await _fill(store, 7)
    page = await _page(store)
    assert (_ids(page), page.complete, page.first_index, page.count) == (ids[:3], False, 0, 7)
    page = await _page(store, f"<set xmlns='{NS_RSM}'><after>id2</after></set>")
    assert (_ids(page), page.complete, page.first_index) == (ids[3:6], False, 3)
    page = await _page(store, f"<set xmlns='{NS_RSM}'><after>id5</after></set>")
    assert (_ids(page), page.complete) == (ids[6:], True)


async def test_pages_backward_and_index(store: ArchiveStore) -> None:
    ids = await _fill(store, 7)
    page = await _page(store, f"<set xmlns='{NS_RSM}'><before/></set>")
    assert (_ids(page), page.complete, page.first_index) == (ids[4:], False, 4)
    page = await _page(store, f"<set xmlns='{NS_RSM}'><before>id1</before></set>")
    assert (_ids(page), page.complete, page.first_index) == (ids[:1], True, 0)
    page = await _page(store, f"<set xmlns='{NS_RSM}'><index>5</index></set>")
    assert (_ids(page), page.first_index) == (ids[5:], 5)


async def test_max_is_capped_and_flip_reverses_sending(store: ArchiveStore) -> None:
    ids = await _fill(store, 7)
    page = await _page(store, f"<set xmlns='{NS_RSM}'><max>100</max></set>")
    assert _ids(page) == ids[:5]
    query = mam.parse_query(_query("<flip-page/>"))
    assert [mam.public_id(i) for i in mam.sent_order(page, query)] == ids[:5][::-1]


async def test_filters(store: ArchiveStore) -> None:
    ids = await _fill(store, 7)
    page = await _page(store, _form(("after-id", ["id1"]), ("before-id", ["id5"])))
    assert (_ids(page), page.count) == (ids[2:5], 3)
    page = await _page(store, _form(("ids", ["id6", "id0"])))
    assert _ids(page) == ["id0", "id6"]
    page = await _page(store, _form(("start", ["1970-01-01T00:16:45Z"])))
    assert _ids(page) == ids[5:]
    page = await _page(store, _form(("with", [f"{OWNER}/b"])), page_size=2)
    assert (_ids(page), page.complete, page.count) == (["id1", "id3"], False, None)
    page = await _page(store, _form(("with", [OWNER])))
    assert page.count == 7


@pytest.mark.parametrize(
    "inner",
    [
        _form(("after-id", ["nope"])),
        _form(("before-id", ["elsewhere"])),  # another owner's id
        _form(("ids", ["id0", "nope"])),
        f"<set xmlns='{NS_RSM}'><after>nope</after></set>",
        f"<set xmlns='{NS_RSM}'><before>nope</before></set>",
    ],
)
async def test_unknown_ids_are_item_not_found(store: ArchiveStore, inner: str) -> None:
    await _fill(store, 2)
    with pytest.raises(StanzaError) as info:
        await _page(store, inner)
    assert _condition(info) == "item-not-found"


async def test_index_too_far(store: ArchiveStore) -> None:
    await _fill(store, 1)
    with pytest.raises(StanzaError) as info:
        await _page(store, f"<set xmlns='{NS_RSM}'><index>51</index></set>")
    assert _condition(info) == "feature-not-implemented"


async def test_metadata_of_a_store(store: ArchiveStore) -> None:
    assert len(await mam.read_metadata(store, OWNER)) == 0
    await _fill(store, 3)
    metadata = await mam.read_metadata(store, OWNER)
    assert [(e.tag, e.get("id")) for e in metadata] == [
        (f"{{{NS}}}start", "id0"),
        (f"{{{NS}}}end", "id2"),
    ]
