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


# -- the full-JID 'with' scan is bounded (review fix) -------------------------------------


class _Counting:
    """An ArchiveStore that counts `items` calls and the rows they return."""

    def __init__(self, store: ArchiveStore) -> None:
        self.store = store
        self.calls = 0
        self.rows = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def items(self, *args: object, **kwargs: object) -> list[ArchiveItem]:
        self.calls += 1
        found = await self.store.items(*args, **kwargs)  # type: ignore[arg-type]
        self.rows += len(found)
        return found


async def _fill_many(store: ArchiveStore, count: int) -> None:
    for i in range(count):
        text = (
            f"<message xmlns='jabber:client' from='{OWNER}/n{i % 5}' type='groupchat'>"
            f"<body>m{i}</body></message>"
        )
        store.append_nowait(OWNER, text, with_jid=OWNER, when=1000.0 + i, id=f"id{i:05}")
    await store.append(OWNER, "<message xmlns='jabber:client'/>", with_jid=OWNER, id="end")


async def _scan(store: ArchiveStore, inner: str, max_scan: int = mam.MAX_SCAN) -> mam.Page:
    return await mam.find_page(
        store,
        OWNER,
        mam.parse_query(_query(inner)),
        page_size=50,
        max_page_size=250,
        max_scan=max_scan,
    )


async def test_full_jid_with_reads_whole_chunks(store: ArchiveStore) -> None:
    """<max>0</max> with a full JID nobody used: chunks of SCAN_CHUNK rows, not one per row."""
    await _fill_many(store, 400)
    counting = _Counting(store)
    inner = _form(("with", [f"{OWNER}/ghost"])) + f"<set xmlns='{NS_RSM}'><max>0</max></set>"
    page = await _scan(counting, inner)  # type: ignore[arg-type]
    assert (page.items, page.complete) == ([], True)
    assert counting.calls == 5  # 401 rows, 100 a call


async def test_full_jid_with_stops_at_max_scan_and_resumes(store: ArchiveStore) -> None:
    """At max_scan rows the page ends, incomplete, with RSM <last/> at the last row read;
    paging on from it continues the scan."""
    await _fill_many(store, 400)
    counting = _Counting(store)
    with_ = _form(("with", [f"{OWNER}/ghost"]))
    page = await _scan(counting, with_, max_scan=250)  # type: ignore[arg-type]
    assert counting.rows == 250
    assert (page.items, page.complete, page.last_id) == ([], False, "id00249")
    fin = mam.build_fin(page)
    assert fin.get("complete") is None
    assert fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}last") == "id00249"
    after = f"<set xmlns='{NS_RSM}'><after>id00249</after></set>"
    page = await _scan(store, with_ + after, max_scan=250)
    assert (page.items, page.complete) == ([], True)
    # a nick that spoke: what was found before the cap is served, the page ends at the cap
    page = await _scan(store, _form(("with", [f"{OWNER}/n1"])), max_scan=11)
    assert (_ids(page), page.complete, page.last_id) == (["id00001", "id00006"], False, "id00010")
    # backward: the page starts at the last (oldest) row read
    before = f"<set xmlns='{NS_RSM}'><before/></set>"
    page = await _scan(store, _form(("with", [f"{OWNER}/n1"])) + before, max_scan=12)
    assert (_ids(page), page.complete, page.first_id) == (["id00391", "id00396"], False, "id00389")


async def test_full_jid_with_refuses_index(store: ArchiveStore) -> None:
    await _fill(store, 7)
    inner = _form(("with", [f"{OWNER}/b"])) + f"<set xmlns='{NS_RSM}'><index>1</index></set>"
    with pytest.raises(StanzaError) as info:
        await _page(store, inner)
    assert _condition(info) == "feature-not-implemented"


async def test_filing_by_full_jid_uses_the_store_filter(store: ArchiveStore) -> None:
    """An archive filing entries under full JIDs: the store filters, with count and index."""
    for i in range(6):
        nick = "a" if i % 2 == 0 else "b"
        await store.append(OWNER, f"<message from='{OWNER}/{nick}'/>", with_jid=f"{OWNER}/{nick}")

    def filing(jid: JID) -> tuple[str | None, bool]:
        return (None, False) if jid == JID.parse(OWNER) else (str(jid), False)

    counting = _Counting(store)
    query = mam.parse_query(
        _query(_form(("with", [f"{OWNER}/b"])) + f"<set xmlns='{NS_RSM}'><index>1</index></set>")
    )
    page = await mam.find_page(
        counting,  # type: ignore[arg-type]
        OWNER,
        query,
        page_size=5,
        max_page_size=5,
        filing=filing,
    )
    assert (len(page.items), page.first_index, page.count, counting.calls) == (2, 1, 3, 1)
    query = mam.parse_query(_query(_form(("with", [OWNER]))))
    page = await mam.find_page(store, OWNER, query, page_size=9, max_page_size=9, filing=filing)
    assert page.count == 6
