"""XEP-0313 room archives and XEP-0425 tombstones (xeps/muc/archive.py), on every storage backend."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import parse_element
from xeps.muc.archive import NS_MODERATE, NS_RETRACT, RoomArchive, archive_key, make_tombstone
from xmppd.errors import StanzaError
from xmppd.jid import JID
from xmppd.lib.mam import NS_FORWARD, NS_MAM, NS_MAM_EXTENDED
from xmppd.lib.rsm import NS_RSM
from xmppd.lib.stanza_id import NS_SID
from xmppd.storage import ArchiveItem, ArchiveStore, Storage, StorageError, open_storage

ROOM = JID.parse("tea@conference.localhost")
OTHER = JID.parse("coffee@conference.localhost")
ALICE = "alice@localhost/a"
NS_OID = "urn:xmpp:occupant-id:0"
CLIENT = "{jabber:client}"
_IDS = itertools.count()


@pytest.fixture(params=["memory", "sqlite"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    opened = await open_storage(request.param, path=tmp_path / "muc.sqlite")
    yield opened
    await opened.close()


@pytest.fixture
def store(storage: Storage) -> ArchiveStore:
    return storage.archive("conference.localhost", "muc_mam")


@pytest.fixture
def archive(store: ArchiveStore) -> RoomArchive:
    return RoomArchive(store, page_size=3, max_page_size=5)


def groupchat(
    nick: str, body: str, *, room: JID = ROOM, occupant: str | None = None
) -> etree._Element:
    oid = f"<occupant-id xmlns='{NS_OID}' id='{occupant}'/>" if occupant else ""
    return parse_element(
        f"<message from='{room}/{nick}' type='groupchat' id='{next(_IDS)}'>"
        f"<body>{body}</body>{oid}</message>"
    )


class Sent:
    """Collects what `query` sends."""

    def __init__(self) -> None:
        self.messages: list[etree._Element] = []

    async def __call__(self, element: etree._Element) -> None:
        self.messages.append(element)

    def results(self) -> list[etree._Element]:
        found = []
        for message in self.messages:
            result = message.find(f"{{{NS_MAM}}}result")
            assert result is not None
            found.append(result)
        return found

    def ids(self) -> list[str]:
        return [r.get("id") or "" for r in self.results()]

    def inner(self) -> list[etree._Element]:
        inner = []
        for result in self.results():
            message = result.find(f"{{{NS_FORWARD}}}forwarded/{CLIENT}message")
            assert message is not None
            inner.append(message)
        return inner

    def bodies(self) -> list[str | None]:
        return [m.findtext(f"{CLIENT}body") for m in self.inner()]


def iq(type_: str, payload: str, *, from_: str | None = ALICE) -> etree._Element:
    sender = f" from='{from_}'" if from_ else ""
    return parse_element(f"<iq type='{type_}' id='q'{sender} to='{ROOM}'>{payload}</iq>")


def mam_query(inner: str = "", queryid: str = "f27") -> etree._Element:
    return iq("set", f"<query xmlns='{NS_MAM}' queryid='{queryid}'>{inner}</query>")


def rsm(inner: str) -> str:
    return f"<set xmlns='{NS_RSM}'>{inner}</set>"


def form(**fields: str) -> str:
    inner = f"<field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>"
    for var, value in fields.items():
        inner += f"<field var='{var.rstrip('_').replace('_', '-')}'><value>{value}</value></field>"
    return f"<x xmlns='jabber:x:data' type='submit'>{inner}</x>"


async def fill(archive: RoomArchive, count: int, room: JID = ROOM) -> list[str]:
    nicks = ("alice", "bob")
    return [archive.append(room, groupchat(nicks[i % 2], f"m{i}", room=room)) for i in range(count)]


def test_features() -> None:
    assert RoomArchive.features == (NS_MAM, NS_MAM_EXTENDED, NS_SID)


def test_bad_options(store: ArchiveStore) -> None:
    with pytest.raises(ValueError, match="page_size"):
        RoomArchive(store, page_size=0)
    with pytest.raises(ValueError, match="page_size"):
        RoomArchive(store, max_age_days=-1)


async def test_append_returns_unique_sortable_ids(archive: RoomArchive) -> None:
    ids = await fill(archive, 20)
    assert len(set(ids)) == 20
    assert ids == sorted(ids)


async def test_query_returns_the_room_messages_as_broadcast(archive: RoomArchive) -> None:
    message = groupchat("alice", "hello", occupant="occ-1")
    message.set("to", "bob@localhost/b")  # a recipient's copy: the 'to' is not archived
    spoof = etree.SubElement(message, "{http://jabber.org/protocol/muc#user}x")
    etree.SubElement(spoof, "{http://jabber.org/protocol/muc#user}item", jid="admin@localhost")
    id_ = archive.append(ROOM, message)
    archive.append(OTHER, groupchat("carol", "elsewhere", room=OTHER))
    sent = Sent()
    fin = await archive.query(ROOM, mam_query(), sent)
    assert fin is not None
    assert fin.tag == f"{{{NS_MAM}}}fin"
    assert fin.get("complete") == "true"
    assert fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}first") == id_
    assert fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}count") == "1"
    [wrapper] = sent.messages
    assert wrapper.get("from") == str(ROOM)
    assert wrapper.get("to") == ALICE
    [result] = sent.results()
    assert (result.get("queryid"), result.get("id")) == ("f27", id_)
    delay = result.find(f"{{{NS_FORWARD}}}forwarded/{{urn:xmpp:delay}}delay")
    assert delay is not None
    assert delay.get("stamp")
    [inner] = sent.inner()
    assert inner.get("from") == f"{ROOM}/alice"
    assert inner.get("type") == "groupchat"
    assert inner.get("to") is None
    assert inner.find("{http://jabber.org/protocol/muc#user}x") is None  # §"MUC message spoofing"
    assert message.get("to") == "bob@localhost/b"  # the caller's element is not changed
    assert inner.findtext(f"{CLIENT}body") == "hello"
    occupant = inner.find(f"{{{NS_OID}}}occupant-id")
    assert occupant is not None
    assert occupant.get("id") == "occ-1"


async def test_rsm_paging_forward_backward_and_flip(archive: RoomArchive) -> None:
    ids = await fill(archive, 7)
    sent = Sent()
    fin = await archive.query(ROOM, mam_query(), sent)
    assert fin is not None
    assert sent.ids() == ids[:3]
    assert fin.get("complete") is None
    first = fin.find(f"{{{NS_RSM}}}set/{{{NS_RSM}}}first")
    assert first is not None
    assert first.get("index") == "0"
    assert fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}last") == ids[2]
    sent = Sent()
    fin = await archive.query(ROOM, mam_query(rsm(f"<max>10</max><after>{ids[2]}</after>")), sent)
    assert fin is not None
    assert sent.ids() == ids[3:]  # max capped at 5, 4 left
    assert fin.get("complete") == "true"
    sent = Sent()
    fin = await archive.query(ROOM, mam_query(rsm("<max>2</max><before/>")), sent)
    assert fin is not None
    assert sent.ids() == ids[5:]
    sent = Sent()
    await archive.query(ROOM, mam_query(rsm("<max>2</max><before/>") + "<flip-page/>"), sent)
    assert sent.ids() == ids[5:][::-1]


async def test_filters_by_nick_time_and_ids(archive: RoomArchive, store: ArchiveStore) -> None:
    ids = await fill(archive, 6)
    sent = Sent()
    await archive.query(ROOM, mam_query(form(with_=f"{ROOM}/bob")), sent)
    assert sent.bodies() == ["m1", "m3", "m5"]
    sent = Sent()
    await archive.query(ROOM, mam_query(form(with_=str(ROOM))), sent)
    assert sent.ids() == ids[:3]
    sent = Sent()
    await archive.query(ROOM, mam_query(form(after_id=ids[1], before_id=ids[4])), sent)
    assert sent.ids() == ids[2:4]
    sent = Sent()
    await archive.query(ROOM, mam_query(form(start="2999-01-01T00:00:00Z")), sent)
    assert sent.ids() == []
    sent = Sent()
    fin = await archive.query(ROOM, mam_query(form(end="2999-01-01T00:00:00Z")), sent)
    assert fin is not None
    assert fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}count") == "6"


async def test_form_and_metadata(archive: RoomArchive) -> None:
    sent = Sent()
    query = await archive.query(ROOM, iq("get", f"<query xmlns='{NS_MAM}'/>"), sent)
    assert query is not None
    fields = [f.get("var") for f in query.iter("{jabber:x:data}field")]
    assert fields == ["FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"]
    metadata = await archive.query(ROOM, iq("get", f"<metadata xmlns='{NS_MAM}'/>"), sent)
    assert metadata is not None
    assert len(metadata) == 0
    ids = await fill(archive, 3)
    metadata = await archive.query(ROOM, iq("get", f"<metadata xmlns='{NS_MAM}'/>"), sent)
    assert metadata is not None
    assert [(e.tag, e.get("id")) for e in metadata] == [
        (f"{{{NS_MAM}}}start", ids[0]),
        (f"{{{NS_MAM}}}end", ids[2]),
    ]
    assert sent.messages == []


@pytest.mark.parametrize(
    ("request_", "condition"),
    [
        (mam_query(form(after_id="nope")), "item-not-found"),
        (mam_query(rsm("<after>nope</after>")), "item-not-found"),
        (mam_query(form(with_="@bad@")), "bad-request"),
        (mam_query(form(start="tomorrow")), "bad-request"),
        (mam_query(form(colour="red")), "feature-not-implemented"),
        (mam_query(rsm("<max>many</max>")), "bad-request"),
        (iq("set", f"<query xmlns='{NS_MAM}'/>", from_=None), "bad-request"),
        (iq("set", f"<prefs xmlns='{NS_MAM}' default='always'/>"), "feature-not-implemented"),
        (parse_element(f"<iq type='get' id='q' from='{ALICE}'/>"), "bad-request"),
        (iq("set", "<query xmlns='urn:xmpp:mam:1'/>"), "bad-request"),
    ],
)
async def test_bad_requests(archive: RoomArchive, request_: etree._Element, condition: str) -> None:
    await fill(archive, 2)
    sent = Sent()
    with pytest.raises(StanzaError) as info:
        await archive.query(ROOM, request_, sent)
    assert info.value.condition == condition
    assert sent.messages == []


async def test_another_rooms_id_is_unknown(archive: RoomArchive) -> None:
    [other_id] = await fill(archive, 1, room=OTHER)
    await fill(archive, 1)
    with pytest.raises(StanzaError) as info:
        await archive.query(ROOM, mam_query(form(ids=other_id)), Sent())
    assert info.value.condition == "item-not-found"


async def test_last_gives_the_newest_oldest_first(archive: RoomArchive) -> None:
    assert await archive.last(ROOM, 5) == []
    before = time.time()
    await fill(archive, 7)
    await fill(archive, 2, room=OTHER)
    last = await archive.last(ROOM, 3)
    assert [e.findtext(f"{CLIENT}body") for e, _ in last] == ["m4", "m5", "m6"]
    for element, when in last:
        assert element.get("from", "").startswith(f"{ROOM}/")
        assert when.tzinfo is UTC
        assert before - 1 <= when.timestamp() <= time.time() + 1
    assert len(await archive.last(ROOM, 100)) == 7
    assert await archive.last(ROOM, 0) == []


async def test_last_skips_subject_changes(archive: RoomArchive) -> None:
    """Subject changes are archived (and served by queries) but are not discussion history."""
    await fill(archive, 2)
    archive.append(
        ROOM,
        parse_element(
            f"<message from='{ROOM}/alice' type='groupchat'><subject>Tea</subject></message>"
        ),
    )
    await fill(archive, 1)
    bodies = [e.findtext(f"{CLIENT}body") for e, _ in await archive.last(ROOM, 3)]
    assert bodies == ["m0", "m1", "m0"]
    sent = Sent()
    await archive.query(ROOM, mam_query(rsm("<max>5</max>")), sent)
    assert len(sent.messages) == 4


async def test_retract_replaces_the_message_by_its_tombstone(archive: RoomArchive) -> None:
    ids = await fill(archive, 3)
    original = groupchat("bob", "secret", occupant="occ-bob")
    target = archive.append(ROOM, original)
    ids.append(archive.append(ROOM, groupchat("alice", "after")))
    tombstone = make_tombstone(
        original, f"{ROOM}/alice", moderator_occupant_id="occ-alice", reason="spam"
    )
    assert await archive.retract(ROOM, target, tombstone)
    sent = Sent()
    fin = await archive.query(ROOM, mam_query(rsm("<max>5</max>")), sent)
    assert fin is not None
    assert sent.ids() == [*ids[:3], target, ids[3]]  # in place, same id
    stone = sent.inner()[3]
    assert stone.find(f"{CLIENT}body") is None
    assert b"secret" not in etree.tostring(stone)
    assert stone.get("from") == f"{ROOM}/bob"
    author = stone.find(f"{{{NS_OID}}}occupant-id")
    assert author is not None
    assert author.get("id") == "occ-bob"
    retracted = stone.find(f"{{{NS_RETRACT}}}retracted")
    assert retracted is not None
    assert retracted.get("stamp")
    moderated = retracted.find(f"{{{NS_MODERATE}}}moderated")
    assert moderated is not None
    assert moderated.get("by") == f"{ROOM}/alice"
    moderator = moderated.find(f"{{{NS_OID}}}occupant-id")
    assert moderator is not None
    assert moderator.get("id") == "occ-alice"
    assert retracted.findtext(f"{{{NS_RETRACT}}}reason") == "spam"
    # It is left out of the discussion history refill.
    bodies = [e.findtext(f"{CLIENT}body") for e, _ in await archive.last(ROOM, 3)]
    assert bodies == ["m1", "m2", "after"]


async def test_retract_strips_a_body_and_keeps_the_first_tombstone(archive: RoomArchive) -> None:
    [target] = await fill(archive, 1)
    leaky = parse_element(
        f"<message from='{ROOM}/alice'><body>leak</body><retracted xmlns='{NS_RETRACT}'/></message>"
    )
    assert await archive.retract(ROOM, target, leaky)
    again = parse_element(f"<message from='{ROOM}/alice'><other xmlns='urn:x'/></message>")
    assert await archive.retract(ROOM, target, again)
    sent = Sent()
    await archive.query(ROOM, mam_query(), sent)
    [stone] = sent.inner()
    assert stone.find(f"{CLIENT}body") is None
    assert stone.find(f"{{{NS_RETRACT}}}retracted") is not None
    assert stone.find("{urn:x}other") is None


async def test_retract_unknown_message(archive: RoomArchive) -> None:
    [other_id] = await fill(archive, 1, room=OTHER)
    tombstone = make_tombstone(groupchat("a", "x"), str(ROOM))
    assert not await archive.retract(ROOM, "no-such-id", tombstone)
    assert not await archive.retract(ROOM, other_id, tombstone)  # another room's message


async def test_remove_deletes_only_that_room(archive: RoomArchive) -> None:
    [target] = await fill(archive, 1)
    await archive.retract(ROOM, target, make_tombstone(groupchat("a", "x"), str(ROOM)))
    await fill(archive, 2, room=OTHER)
    await archive.remove(ROOM)
    assert await archive.last(ROOM, 10) == []
    assert not await archive.retract(ROOM, target, make_tombstone(groupchat("a", "x"), str(ROOM)))
    assert len(await archive.last(OTHER, 10)) == 2
    sent = Sent()
    fin = await archive.query(ROOM, mam_query(), sent)
    assert fin is not None
    assert sent.messages == []
    assert fin.get("complete") == "true"


async def test_expire(store: ArchiveStore) -> None:
    archive = RoomArchive(store, max_age_days=1)
    assert await RoomArchive(store).expire() == 0
    old = groupchat("a", "old")
    await store.append(
        str(ROOM),
        etree.tostring(old).decode(),
        with_jid=str(ROOM),
        when=time.time() - 3 * 86400,
        id="old",
    )
    await fill(archive, 1)
    assert await archive.expire() == 1
    assert [e.findtext(f"{CLIENT}body") for e, _ in await archive.last(ROOM, 5)] == ["m0"]


async def test_queries_see_writes_not_yet_committed(archive: RoomArchive) -> None:
    # append() does not wait for the commit; a query right after must still see it.
    ids = await fill(archive, 50)
    sent = Sent()
    fin = await archive.query(ROOM, mam_query(rsm("<before/>")), sent)
    assert fin is not None
    assert sent.ids()[-1] == ids[-1]
    assert fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}count") == "50"


async def test_storage_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = await open_storage("sqlite", path=tmp_path / "closed.sqlite")
    archive = RoomArchive(storage.archive("conference.localhost", "muc_mam"))
    await storage.close()
    with caplog.at_level(logging.ERROR):
        id_ = archive.append(ROOM, groupchat("a", "x"))
    assert id_
    assert "archiving a message" in caplog.text
    with pytest.raises(StorageError):
        await archive.last(ROOM, 1)
    await asyncio.sleep(0)


async def test_incarnations_have_separate_archives(archive: RoomArchive) -> None:
    """A room re-created under the same name (another incarnation) never reads the old
    archive; removing the old incarnation leaves the new one's entries."""
    [old] = [archive.append(ROOM, groupchat("a", "old"), incarnation="one")]
    await archive.retract(
        ROOM, old, make_tombstone(groupchat("a", "x"), str(ROOM)), incarnation="one"
    )
    [new] = [archive.append(ROOM, groupchat("a", "new"), incarnation="two")]
    sent = Sent()
    await archive.query(ROOM, mam_query(), sent, incarnation="two")
    assert sent.ids() == [new]
    assert await archive.find(ROOM, old, incarnation="two") is None
    assert [e.findtext(f"{CLIENT}body") for e, _ in await archive.last(ROOM, 5)] == []
    await archive.remove(ROOM, incarnation="one")
    assert await archive.find(ROOM, old, incarnation="one") is None
    assert await archive.store.items(archive_key(ROOM, "one") + " retracted") == []
    sent = Sent()
    await archive.query(ROOM, mam_query(), sent, incarnation="two")
    assert sent.ids() == [new]


class CountingStore:
    """An ArchiveStore counting the rows its `items` returns."""

    def __init__(self, store: ArchiveStore) -> None:
        self.store = store
        self.rows = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def items(self, *args: object, **kwargs: object) -> list[ArchiveItem]:
        found = await self.store.items(*args, **kwargs)  # type: ignore[arg-type]
        self.rows += len(found)
        return found


async def test_occupant_with_uses_the_store_filter(store: ArchiveStore) -> None:
    """§"Filtering by JID" with an occupant JID: entries are filed under the occupant JID, so
    the store answers it (with count and RSM index) without reading other entries."""
    counting = CountingStore(store)
    archive = RoomArchive(counting, page_size=3, max_page_size=5)  # type: ignore[arg-type]
    for i in range(300):
        archive.append(
            ROOM, groupchat("bob" if i % 100 == 0 else "alice", f"m{i}"), incarnation="x"
        )
    sent = Sent()
    query = mam_query(form(with_=f"{ROOM}/bob") + rsm("<max>5</max><index>1</index>"))
    fin = await archive.query(ROOM, query, sent, incarnation="x")
    assert fin is not None
    assert [m.findtext(f"{CLIENT}body") for m in sent.inner()] == ["m100", "m200"]
    assert fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}count") == "3"
    assert counting.rows == 3  # the three entries of bob, not the 300
    sent = Sent()
    await archive.query(ROOM, mam_query(form(with_=f"{ROOM}/ghost")), sent, incarnation="x")
    assert (sent.messages, counting.rows) == ([], 3)
    sent = Sent()
    fin = await archive.query(ROOM, mam_query(form(with_=str(ROOM))), sent, incarnation="x")
    assert fin is not None
    assert fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}count") == "300"


async def test_legacy_archive_with_bare_filed_entries(store: ArchiveStore) -> None:
    """An archive of incarnation "" (made before incarnations) may hold entries filed under
    the room's bare JID: an occupant 'with' still finds them (by reading the messages), and
    refuses an RSM index there."""
    archive = RoomArchive(store, page_size=3, max_page_size=5)
    text = etree.tostring(groupchat("bob", "old")).decode()
    await store.append(str(ROOM), text, with_jid=str(ROOM), id="legacy")
    archive.append(ROOM, groupchat("bob", "new"))
    archive.append(ROOM, groupchat("alice", "other"))
    sent = Sent()
    await archive.query(ROOM, mam_query(form(with_=f"{ROOM}/bob")), sent)
    assert [m.findtext(f"{CLIENT}body") for m in sent.inner()] == ["old", "new"]
    with pytest.raises(StanzaError) as info:
        await archive.query(
            ROOM, mam_query(form(with_=f"{ROOM}/bob") + rsm("<index>1</index>")), Sent()
        )
    assert info.value.condition == "feature-not-implemented"
