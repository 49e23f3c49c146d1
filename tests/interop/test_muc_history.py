"""XEP-0045 room traffic over real sockets: groupchat messages and their errors, the subject,
discussion history on entering (maxchars/maxstanzas/seconds/since), the room archive (XEP-0313
on the room JID) and moderation (XEP-0425 v0.3: urn:xmpp:message-moderate:1). Written from the
XEP texts."""

from __future__ import annotations

import datetime as dt

import pytest
from lxml import etree
from slixmpp import JID

from tests.conftest import ClientFactory
from tests.helpers.muc import (
    NS_DELAY,
    NS_FORWARD,
    NS_MAM,
    NS_OID,
    NS_RSM,
    NS_USER,
    Tap,
    admin_item,
    create,
    disco_info,
    form,
    is_message,
    item,
    join,
    occupant_id,
    room_jid,
    say,
    stanza_id,
)

pytestmark = pytest.mark.interop

ROOM = room_jid("tea")
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
NS_MODERATE = "urn:xmpp:message-moderate:1"
NS_RETRACT = "urn:xmpp:message-retract:1"


async def _taps(connect: ClientFactory, *users: str) -> list[Tap]:
    return [Tap(await connect(f"{user}@localhost/r"), user) for user in users]


def _has_error(element: etree._Element, name: str) -> bool:
    return element.find(f"{{jabber:client}}error/{STANZAS}{name}") is not None


async def _talk(alice: Tap, bodies: list[str], watcher: Tap | None = None) -> list[etree._Element]:
    """alice says each body and waits for its reflection (to herself, and to `watcher`)."""
    seen = []
    for body in bodies:
        say(alice, ROOM, body)
        seen.append(await alice.expect(is_message(f"{ROOM}/Alice", body=body), what=body))
        if watcher is not None:
            await watcher.expect(is_message(f"{ROOM}/Alice", body=body), what=body)
    return seen


# --- messages ----------------------------------------------------------------------------


async def test_groupchat_is_reflected_to_every_occupant(connect: ClientFactory) -> None:
    """§7.4: 'from' is the sender's occupant JID, the client's id is kept (SHOULD), every
    occupant (the sender too) gets it; XEP-0313 §"MUC archives"/XEP-0359: a <stanza-id/> by
    the room."""
    alice, bob, carol = await _taps(connect, "alice", "bob", "carol")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    await join(carol, ROOM, "Carol")
    say(bob, ROOM, "hello all", id_="client-id-1")
    ids = set()
    for tap in (alice, bob, carol):
        got = await tap.expect(is_message(f"{ROOM}/Bob", body="hello all"), what="the message")
        assert got.get("type") == "groupchat"
        assert got.get("to") == tap.jid
        assert got.get("id") == "client-id-1"
        sid = stanza_id(got, ROOM)
        assert sid
        ids.add(sid)
    assert len(ids) == 1  # the same archive id for every copy


async def test_non_occupants_cannot_send_to_the_room(connect: ClientFactory) -> None:
    """§7.4 (not-acceptable) / §17.2 rule 2 (forbidden): not delivered, an error back."""
    alice, carol = await _taps(connect, "alice", "carol")
    await create(alice, ROOM, "Alice")
    say(carol, ROOM, "let me in")
    error = await carol.expect(is_message(ROOM, type_="error"), what="an error")
    assert _has_error(error, "not-acceptable") or _has_error(error, "forbidden")
    await alice.nothing(is_message(ROOM, body="let me in"))


async def test_messages_to_a_room_that_does_not_exist(connect: ClientFactory) -> None:
    """§17.2 rule 3: item-not-found."""
    alice = await _taps(connect, "alice")
    say(alice[0], room_jid("nowhere"), "anyone?")
    error = await alice[0].expect(is_message(room_jid("nowhere"), type_="error"), what="an error")
    assert _has_error(error, "item-not-found")


async def test_groupchat_to_an_occupant_is_bad_request(connect: ClientFactory) -> None:
    """§7.5: a private message of type groupchat: bad-request, not delivered."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    bob.send(f"<message to='{ROOM}/Alice' type='groupchat' id='g1'><body>psst</body></message>")
    error = await bob.expect(
        lambda e: e.get("type") == "error" and e.get("id") == "g1", what="an error"
    )
    assert _has_error(error, "bad-request")
    await alice.nothing(is_message(ROOM, body="psst"))


@pytest.mark.parametrize("type_", ["chat", "normal", "headline"])
async def test_improperly_typed_messages_to_the_room_are_not_reflected(
    connect: ClientFactory, type_: str
) -> None:
    """§17.2 rule 1: a message to the room that is not of type groupchat is ignored or
    refused with bad-request, never broadcast."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    bob.send(f"<message to='{ROOM}' type='{type_}' id='bad1'><body>wrong type</body></message>")
    await bob.settle()
    for error in bob.take(lambda e: e.get("id") == "bad1"):
        assert error.get("type") == "error"
        assert _has_error(error, "bad-request")
    await alice.nothing(is_message(body="wrong type"))


async def test_unknown_iqs_to_the_room_are_refused(connect: ClientFactory) -> None:
    """RFC 6120 §8.4 with §17.4 rule 1: an IQ the room does not handle gets an error
    (service-unavailable or feature-not-implemented), never silence."""
    alice = (await _taps(connect, "alice"))[0]
    await create(alice, ROOM, "Alice")
    assert await alice.iq_error("get", ROOM, "<query xmlns='urn:example:nothing'/>") in (
        "service-unavailable",
        "feature-not-implemented",
    )
    assert await alice.iq_error("set", ROOM, "<query xmlns='urn:example:nothing'/>") in (
        "service-unavailable",
        "feature-not-implemented",
    )


async def test_forged_sender_information_is_not_reflected(connect: ClientFactory) -> None:
    """§17.3 rule 6: muc#user data from a client is not reflected; XEP-0421 §4: a client's
    <occupant-id/> is replaced by the room's own."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    own = occupant_id(
        await alice.expect(lambda e: e.get("from") == f"{ROOM}/Bob", what="bob's presence")
    )
    bob.send(
        f"<presence to='{ROOM}/Bob'><x xmlns='{NS_USER}'><item affiliation='owner' "
        f"role='moderator' jid='alice@localhost/r'/><status code='110'/></x>"
        f"<occupant-id xmlns='{NS_OID}' id='forged'/><status>forging</status></presence>"
    )
    update = await alice.expect(
        lambda e: (
            e.get("from") == f"{ROOM}/Bob" and e.findtext("{jabber:client}status") == "forging"
        ),
        what="bob's presence update",
    )
    assert len(update.findall(f"{{{NS_USER}}}x")) == 1
    assert item(update)["affiliation"] == "none"
    assert item(update)["role"] == "participant"
    assert item(update).get("jid") in (None, bob.jid)
    assert 110 not in {int(s.get("code") or 0) for s in update.iter(f"{{{NS_USER}}}status")}
    assert occupant_id(update) == own
    say(bob, ROOM, "it's me", extra=f"<occupant-id xmlns='{NS_OID}' id='forged'/>")
    got = await alice.expect(is_message(f"{ROOM}/Bob", body="it's me"), what="the message")
    assert occupant_id(got) == own


# --- subject -------------------------------------------------------------------------------


async def test_subject_changes_and_delivery_on_entry(connect: ClientFactory) -> None:
    """§8.1: a moderator sets the subject (broadcast: <subject/>, no body); §7.2.15: a new
    occupant gets it after the history, stamped with a <delay from=room/> (SHOULD)."""
    alice, bob, carol = await _taps(connect, "alice", "bob", "carol")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    alice.send(f"<message to='{ROOM}' type='groupchat'><subject>Tea time</subject></message>")
    for tap in (alice, bob):
        got = await tap.expect(
            lambda e: e.findtext("{jabber:client}subject") == "Tea time", what="the subject"
        )
        assert got.get("from") == f"{ROOM}/Alice"
        assert got.find("{jabber:client}body") is None
    await _talk(alice, ["one", "two"])
    entered = await join(carol, ROOM, "Carol")
    assert entered.order == ["presence", "presence", "self", "history", "history", "subject"]
    assert entered.subject is not None
    assert entered.subject.findtext("{jabber:client}subject") == "Tea time"
    assert entered.subject.find("{jabber:client}body") is None


async def test_the_subject_on_entry_is_stamped(connect: ClientFactory) -> None:
    """§7.2.15: the subject "SHOULD be stamped with XEP-0203 information ... its 'from'
    attribute MUST be set to the JID of the room itself"."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    alice.send(f"<message to='{ROOM}' type='groupchat'><subject>Tea time</subject></message>")
    await alice.expect(lambda e: e.findtext("{jabber:client}subject") == "Tea time", what="subject")
    entered = await join(bob, ROOM, "Bob")
    assert entered.subject is not None
    delay = entered.subject.find(f"{{{NS_DELAY}}}delay")
    assert delay is not None
    assert delay.get("from") == ROOM


async def test_who_may_change_the_subject(connect: ClientFactory) -> None:
    """§8.1: without muc#roomconfig_changesubject a participant gets forbidden; with it,
    the change goes through."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice", {"muc#roomconfig_changesubject": "0"})
    await join(bob, ROOM, "Bob")
    bob.send(f"<message to='{ROOM}' type='groupchat' id='s1'><subject>Coffee</subject></message>")
    error = await bob.expect(
        lambda e: e.get("id") == "s1" and e.get("type") == "error", what="an error"
    )
    assert _has_error(error, "forbidden")
    await alice.nothing(lambda e: e.findtext("{jabber:client}subject") == "Coffee")
    await alice.iq_ok(
        "set",
        ROOM,
        f"<query xmlns='http://jabber.org/protocol/muc#owner'>{form({'muc#roomconfig_changesubject': '1'})}</query>",
    )
    bob.send(f"<message to='{ROOM}' type='groupchat'><subject>Coffee</subject></message>")
    got = await alice.expect(
        lambda e: e.findtext("{jabber:client}subject") == "Coffee", what="the subject"
    )
    assert got.get("from") == f"{ROOM}/Bob"


# --- discussion history ----------------------------------------------------------------------


async def test_history_on_entry(connect: ClientFactory) -> None:
    """§7.2.13: history after the self-presence, before the subject; 'from' the sender's
    occupant JID, a <delay from=room/> stamp, in order."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await _talk(alice, ["m1", "m2", "m3"])
    entered = await join(bob, ROOM, "Bob")
    assert entered.order == ["presence", "self", "history", "history", "history", "subject"]
    assert [m.findtext("{jabber:client}body") for m in entered.history] == ["m1", "m2", "m3"]
    for message in entered.history:
        assert message.get("from") == f"{ROOM}/Alice"
        assert message.get("type") == "groupchat"
        delay = message.find(f"{{{NS_DELAY}}}delay")
        assert delay is not None
        assert delay.get("from") == ROOM
        stamp = dt.datetime.fromisoformat((delay.get("stamp") or "").replace("Z", "+00:00"))
        assert before <= stamp <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ("<history maxstanzas='2'/>", ["m3", "m4"]),
        ("<history maxstanzas='0'/>", []),
        ("<history maxchars='0'/>", []),
        ("<history maxchars='100000'/>", ["m1", "m2", "m3", "m4"]),
        ("<history seconds='3600'/>", ["m1", "m2", "m3", "m4"]),
        ("<history seconds='3600' maxstanzas='1'/>", ["m4"]),
        ("<history since='2999-01-01T00:00:00Z'/>", []),
        ("<history since='2000-01-01T00:00:00Z'/>", ["m1", "m2", "m3", "m4"]),
    ],
)
async def test_managing_history(connect: ClientFactory, history: str, expected: list[str]) -> None:
    """§7.2.14: maxchars, maxstanzas, seconds, since; the smallest combination wins."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    await _talk(alice, ["m1", "m2", "m3", "m4"])
    entered = await join(bob, ROOM, "Bob", history=history)
    assert [m.findtext("{jabber:client}body") for m in entered.history] == expected


async def test_history_sends_whole_stanzas_within_maxchars(connect: ClientFactory) -> None:
    """§7.2.14: "the largest number of complete stanzas" within maxchars, newest kept."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    await _talk(alice, ["a" * 400, "b" * 400, "c" * 400])
    entered = await join(bob, ROOM, "Bob", history="<history maxchars='1500'/>")
    bodies = [m.findtext("{jabber:client}body") for m in entered.history]
    assert 1 <= len(bodies) < 3
    assert bodies[-1] == "c" * 400


@pytest.mark.parametrize(
    "history",
    [
        "<history maxstanzas='-1'/>",
        "<history maxstanzas='lots'/>",
        "<history seconds='yesterday'/>",
        "<history since='not a date'/>",
    ],
)
async def test_malformed_history_requests_do_not_break_entry(
    connect: ClientFactory, history: str
) -> None:
    """Hostile input: a malformed <history/> is ignored or refused, never a crash: either a
    presence error or a normal entry."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    await _talk(alice, ["m1"])
    bob.send(
        f"<presence to='{ROOM}/Bob'><x xmlns='http://jabber.org/protocol/muc'>{history}</x></presence>"
    )
    answer = await bob.expect(
        lambda e: e.get("from") == f"{ROOM}/Bob", what="an answer to the join"
    )
    if answer.get("type") == "error":
        assert _has_error(answer, "bad-request") or _has_error(answer, "not-acceptable")
    say(alice, ROOM, "still alive")
    await alice.expect(is_message(f"{ROOM}/Alice", body="still alive"), what="the room works")


async def test_history_length_is_configurable(connect: ClientFactory) -> None:
    """§10.2 / muc#maxhistoryfetch: the room sends at most that many messages."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice", {"muc#maxhistoryfetch": "2"})
    await _talk(alice, ["m1", "m2", "m3"])
    entered = await join(bob, ROOM, "Bob")
    assert [m.findtext("{jabber:client}body") for m in entered.history] == ["m2", "m3"]


# --- the room archive (XEP-0313) --------------------------------------------------------------


def _mam_results(tap: Tap, queryid: str) -> list[etree._Element]:
    return tap.take(
        lambda e: (r := e.find(f"{{{NS_MAM}}}result")) is not None and r.get("queryid") == queryid
    )


async def test_room_archive_query(connect: ClientFactory) -> None:
    """XEP-0313 §"MUC archives": the room advertises urn:xmpp:mam:2; results come from the room
    JID with the live stanza ids; the forwarded message has 'from' = occupant JID and no 'to';
    <fin complete/> and RSM paging."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    features, _, _ = await disco_info(bob, ROOM)
    assert NS_MAM in features
    live = await _talk(alice, ["m1", "m2", "m3"], watcher=bob)
    ids = [stanza_id(m, ROOM) for m in live]
    assert all(ids)
    fin = await bob.iq_ok("set", ROOM, f"<query xmlns='{NS_MAM}' queryid='q1'/>")
    results = _mam_results(bob, "q1")
    assert [r.get("from") for r in results] == [ROOM] * 3
    found = [r.find(f"{{{NS_MAM}}}result") for r in results]
    assert [f.get("id") for f in found if f is not None] == ids
    for result, body in zip(found, ["m1", "m2", "m3"], strict=True):
        assert result is not None
        inner = result.find(f"{{{NS_FORWARD}}}forwarded/{{jabber:client}}message")
        assert inner is not None
        assert inner.get("from") == f"{ROOM}/Alice"
        assert inner.get("to") is None
        assert inner.findtext("{jabber:client}body") == body
        assert occupant_id(inner) == occupant_id(live[0])
        assert result.find(f"{{{NS_FORWARD}}}forwarded/{{{NS_DELAY}}}delay") is not None
    done = fin.find(f"{{{NS_MAM}}}fin")
    assert done is not None
    assert done.get("complete") == "true"
    # RSM: two at a time.
    fin = await bob.iq_ok(
        "set",
        ROOM,
        f"<query xmlns='{NS_MAM}' queryid='q2'><set xmlns='{NS_RSM}'><max>2</max></set></query>",
    )
    page = [r.find(f"{{{NS_MAM}}}result") for r in _mam_results(bob, "q2")]
    assert [p.get("id") for p in page if p is not None] == ids[:2]
    done = fin.find(f"{{{NS_MAM}}}fin")
    assert done is not None
    assert done.get("complete") is None
    last = done.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}last")
    fin = await bob.iq_ok(
        "set",
        ROOM,
        f"<query xmlns='{NS_MAM}' queryid='q3'><set xmlns='{NS_RSM}'><max>2</max><after>{last}</after></set></query>",
    )
    page = [r.find(f"{{{NS_MAM}}}result") for r in _mam_results(bob, "q3")]
    assert [p.get("id") for p in page if p is not None] == ids[2:]
    done = fin.find(f"{{{NS_MAM}}}fin")
    assert done is not None
    assert done.get("complete") == "true"


async def test_room_archive_filters_form_and_metadata(connect: ClientFactory) -> None:
    """XEP-0313 §"Filtering by JID" (an occupant JID selects that occupant's messages),
    §"Retrieving form fields" and §"Archive metadata" on the room JID."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    first = await _talk(alice, ["a1"], watcher=bob)
    say(bob, ROOM, "b1")
    await alice.expect(is_message(f"{ROOM}/Bob", body="b1"), what="b1")
    last = await _talk(alice, ["a2"], watcher=bob)
    with_bob = form({"with": f"{ROOM}/Bob"}, NS_MAM)
    await alice.iq_ok("set", ROOM, f"<query xmlns='{NS_MAM}' queryid='w'>{with_bob}</query>")
    bodies = [
        r.findtext(f".//{{{NS_FORWARD}}}forwarded/{{jabber:client}}message/{{jabber:client}}body")
        for r in _mam_results(alice, "w")
    ]
    assert bodies == ["b1"]
    reply = await alice.iq_ok("get", ROOM, f"<query xmlns='{NS_MAM}'/>")
    fields = {f.get("var") for f in reply.iter("{jabber:x:data}field")}
    assert {"FORM_TYPE", "with", "start", "end"} <= fields
    reply = await alice.iq_ok("get", ROOM, f"<metadata xmlns='{NS_MAM}'/>")
    start = reply.find(f"{{{NS_MAM}}}metadata/{{{NS_MAM}}}start")
    end = reply.find(f"{{{NS_MAM}}}metadata/{{{NS_MAM}}}end")
    assert start is not None
    assert end is not None
    assert start.get("id") == stanza_id(first[0], ROOM)
    assert end.get("id") == stanza_id(last[0], ROOM)


async def test_slixmpp_reads_the_room_archive(connect: ClientFactory) -> None:
    """Interop: slixmpp's xep_0313 plugin pages the room archive."""
    alice, bob = await _taps(connect, "alice", "bob")
    bob.client.register_plugin("xep_0313")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    await _talk(alice, ["a", "b", "c"], watcher=bob)
    iq = await bob.client.plugin["xep_0313"].retrieve(jid=JID(ROOM))
    bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in iq["mam"]["results"]]
    assert bodies == ["a", "b", "c"]


async def test_archive_excludes_private_messages_and_refused_ones(connect: ClientFactory) -> None:
    """XEP-0313 §"MUC archives": no private messages, no messages the room rejected."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice", {"muc#roomconfig_moderatedroom": "1"})
    await join(bob, ROOM, "Bob")  # a visitor
    say(bob, ROOM, "refused")
    await bob.expect(is_message(ROOM, type_="error"), what="an error")
    alice.send(f"<message to='{ROOM}/Bob' type='chat'><body>private</body></message>")
    await bob.expect(is_message(f"{ROOM}/Alice", body="private"), what="the private message")
    await _talk(alice, ["public"])
    await alice.iq_ok("set", ROOM, f"<query xmlns='{NS_MAM}' queryid='q'/>")
    bodies = [
        r.findtext(f".//{{{NS_FORWARD}}}forwarded/{{jabber:client}}message/{{jabber:client}}body")
        for r in _mam_results(alice, "q")
    ]
    assert bodies == ["public"]


async def test_archive_access_follows_room_entry_rights(connect: ClientFactory) -> None:
    """XEP-0313 §"MUC archives": members-only: only owners, admins and members query;
    outcasts never."""
    alice, bob, carol = await _taps(connect, "alice", "bob", "carol")
    await create(alice, ROOM, "Alice", {"muc#roomconfig_membersonly": "1"})
    await _talk(alice, ["secret"])
    query = f"<query xmlns='{NS_MAM}' queryid='q'/>"
    assert await carol.iq_error("set", ROOM, query) in ("forbidden", "registration-required")
    assert not _mam_results(carol, "q")
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="member"))
    await bob.iq_ok("set", ROOM, query)
    assert len(_mam_results(bob, "q")) == 1
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="outcast"))
    assert await bob.iq_error("set", ROOM, query) == "forbidden"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (f"<query xmlns='{NS_MAM}'>{form({'start': 'soon'}, NS_MAM)}</query>", "bad-request"),
        (f"<query xmlns='{NS_MAM}'>{form({'after-id': 'nope'}, NS_MAM)}</query>", "item-not-found"),
        (
            f"<query xmlns='{NS_MAM}'><set xmlns='{NS_RSM}'><max>x</max></set></query>",
            "bad-request",
        ),
    ],
)
async def test_bad_room_archive_queries(
    connect: ClientFactory, payload: str, expected: str
) -> None:
    """XEP-0313 §4: malformed queries and unknown ids."""
    alice = (await _taps(connect, "alice"))[0]
    await create(alice, ROOM, "Alice")
    assert await alice.iq_error("set", ROOM, payload) == expected


# --- moderation (XEP-0425) ---------------------------------------------------------------------


def _moderate(target: str, reason: str = "spam") -> str:
    return (
        f"<moderate id='{target}' xmlns='{NS_MODERATE}'><retract xmlns='{NS_RETRACT}'/>"
        f"<reason>{reason}</reason></moderate>"
    )


async def test_a_moderator_retracts_a_message(connect: ClientFactory) -> None:
    """XEP-0425 §3-§5: the room advertises message-moderate:1; every occupant gets a message
    from the room with <retract id><moderated by/><reason/></retract>; the moderator a result;
    the archive serves a tombstone (<retracted><moderated/></retracted>) without the body."""
    alice, bob, carol = await _taps(connect, "alice", "bob", "carol")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    await join(carol, ROOM, "Carol")
    features, _, _ = await disco_info(carol, ROOM)
    assert NS_MODERATE in features
    say(bob, ROOM, "DM me for free magic potions!")
    spam = await carol.expect(
        is_message(f"{ROOM}/Bob", body="DM me for free magic potions!"), what="spam"
    )
    target = stanza_id(spam, ROOM)
    assert target
    await alice.iq_ok("set", ROOM, _moderate(target))
    for tap in (alice, bob, carol):
        notice = await tap.expect(
            lambda e: e.find(f"{{{NS_RETRACT}}}retract") is not None, what="the retraction"
        )
        assert notice.get("from") == ROOM
        assert notice.get("type") == "groupchat"
        retract = notice.find(f"{{{NS_RETRACT}}}retract")
        assert retract is not None
        assert retract.get("id") == target
        moderated = retract.find(f"{{{NS_MODERATE}}}moderated")
        assert moderated is not None
        assert moderated.get("by") == f"{ROOM}/Alice"
        assert retract.findtext(f"{{{NS_RETRACT}}}reason") in (None, "spam")  # optional
    await carol.iq_ok("set", ROOM, f"<query xmlns='{NS_MAM}' queryid='q'/>")
    [tombstone] = [
        r
        for r in _mam_results(carol, "q")
        if (f := r.find(f"{{{NS_MAM}}}result")) is not None and f.get("id") == target
    ]
    inner = tombstone.find(f".//{{{NS_FORWARD}}}forwarded/{{jabber:client}}message")
    assert inner is not None
    assert inner.find("{jabber:client}body") is None
    assert b"potions" not in etree.tostring(inner)
    retracted = inner.find(f"{{{NS_RETRACT}}}retracted")
    assert retracted is not None
    assert retracted.find(f"{{{NS_MODERATE}}}moderated") is not None
    # §"Business Rules": no further distribution: not in the history of a new occupant.
    carol.send(f"<presence to='{ROOM}/Carol' type='unavailable'/>")
    await carol.expect(
        lambda e: e.get("from") == f"{ROOM}/Carol" and e.get("type") == "unavailable", what="exit"
    )
    entered = await join(carol, ROOM, "Carol")
    assert all(
        m.findtext("{jabber:client}body") != "DM me for free magic potions!"
        for m in entered.history
    )


async def test_moderation_errors(connect: ClientFactory) -> None:
    """XEP-0425 §3.2: a non-moderator gets forbidden; an unknown id is an error; nothing is
    broadcast."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    say(alice, ROOM, "keep me")
    got = await bob.expect(is_message(f"{ROOM}/Alice", body="keep me"), what="message")
    target = stanza_id(got, ROOM)
    assert target
    assert await bob.iq_error("set", ROOM, _moderate(target)) == "forbidden"
    reply = await alice.iq("set", ROOM, _moderate("no-such-id"))
    assert reply.get("type") == "error"
    await bob.nothing(lambda e: e.find(f"{{{NS_RETRACT}}}retract") is not None)


async def test_slixmpp_moderates(connect: ClientFactory) -> None:
    """Interop: slixmpp's xep_0425 plugin sends the moderation request."""
    alice, bob = await _taps(connect, "alice", "bob")
    alice.client.register_plugin("xep_0425")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    say(bob, ROOM, "oops")
    got = await alice.expect(is_message(f"{ROOM}/Bob", body="oops"), what="message")
    target = stanza_id(got, ROOM)
    assert target
    await alice.client.plugin["xep_0425"].moderate(JID(ROOM), target, "cleanup")
    notice = await bob.expect(
        lambda e: e.find(f"{{{NS_RETRACT}}}retract") is not None, what="retraction"
    )
    assert notice.get("from") == ROOM
