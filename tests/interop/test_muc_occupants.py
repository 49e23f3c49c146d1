"""XEP-0045 occupant flows over real sockets: private messages, nickname changes (303, 409),
exit, mediated (§7.8.2) and direct (XEP-0249) invitations, removal after an error bounce (333),
self-ping (XEP-0410) and occupant ids (XEP-0421). Written from the XEP texts."""

from __future__ import annotations

import pytest
from lxml import etree

from tests.conftest import ClientFactory
from tests.helpers.muc import (
    NS_MUC,
    NS_OID,
    NS_USER,
    Tap,
    codes,
    condition,
    create,
    disco_info,
    is_message,
    is_presence,
    item,
    join,
    occupant_id,
    room_jid,
    say,
)

pytestmark = pytest.mark.interop

ROOM = room_jid("tea")
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
NS_CONFERENCE = "jabber:x:conference"


async def _taps(connect: ClientFactory, *users: str) -> list[Tap]:
    return [Tap(await connect(f"{user}@localhost/r"), user) for user in users]


def _has_error(element: etree._Element, name: str) -> bool:
    return element.find(f"{{jabber:client}}error/{STANZAS}{name}") is not None


async def _room(connect: ClientFactory, config: dict[str, str] | None = None) -> list[Tap]:
    alice, bob, carol = await _taps(connect, "alice", "bob", "carol")
    await create(alice, ROOM, "Alice", config)
    await join(bob, ROOM, "Bob", password=(config or {}).get("muc#roomconfig_roomsecret"))
    for tap in (alice, bob):
        await tap.settle()
        tap.clear()
    return [alice, bob, carol]


# --- private messages --------------------------------------------------------------------


async def test_private_message(connect: ClientFactory) -> None:
    """§7.5: delivered to the recipient's full JID from the sender's occupant JID, with an
    <x xmlns='…muc#user'/> (SHOULD add); not to anyone else."""
    alice, bob, carol = await _room(connect)
    await join(carol, ROOM, "Carol")
    bob.send(f"<message to='{ROOM}/Alice' type='chat' id='pm1'><body>psst</body></message>")
    got = await alice.expect(is_message(f"{ROOM}/Bob", body="psst"), what="the private message")
    assert got.get("type") == "chat"
    assert got.get("to") == alice.jid
    assert got.find(f"{{{NS_USER}}}x") is not None
    await carol.nothing(is_message(body="psst"))


async def test_an_error_to_a_private_message_goes_back_to_its_sender(
    connect: ClientFactory,
) -> None:
    """An error answering a forwarded private message reaches the PM's sender (from the
    recipient's occupant JID, with the sender's id); the recipient is not removed (333)."""
    alice, bob, _carol = await _room(connect)
    bob.send(f"<message to='{ROOM}/Alice' type='chat' id='pm9'><body>psst</body></message>")
    got = await alice.expect(is_message(f"{ROOM}/Bob", body="psst"), what="the private message")
    alice.send(
        f"<message to='{ROOM}/Bob' type='error' id='{got.get('id')}'><error type='cancel'>"
        "<not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
    )
    error = await bob.expect(is_message(f"{ROOM}/Alice", type_="error"), what="the error")
    assert error.get("id") == "pm9"
    assert condition(error) == "not-acceptable"
    await bob.nothing(is_presence(f"{ROOM}/Alice", type_="unavailable"))
    say(bob, ROOM, "both here")
    await alice.expect(is_message(f"{ROOM}/Bob", body="both here"), what="message")


async def test_private_message_errors(connect: ClientFactory) -> None:
    """§7.5: to a nick not in the room: item-not-found; from a non-occupant: not-acceptable."""
    alice, bob, carol = await _room(connect)
    bob.send(f"<message to='{ROOM}/Nobody' type='chat' id='pm2'><body>hello?</body></message>")
    error = await bob.expect(
        lambda e: e.get("id") == "pm2" and e.get("type") == "error", what="an error"
    )
    assert _has_error(error, "item-not-found")
    carol.send(
        f"<message to='{ROOM}/Alice' type='chat' id='pm3'><body>hi from outside</body></message>"
    )
    error = await carol.expect(
        lambda e: e.get("id") == "pm3" and e.get("type") == "error", what="an error"
    )
    assert _has_error(error, "not-acceptable")
    await alice.nothing(is_message(body="hi from outside"))


async def test_private_messages_can_be_disallowed(connect: ClientFactory) -> None:
    """§10.2 muc#roomconfig_allowpm=none: nobody's private message is delivered (an error)."""
    alice, bob, _carol = await _room(connect, {"muc#roomconfig_allowpm": "none"})
    bob.send(f"<message to='{ROOM}/Alice' type='chat' id='pm4'><body>psst</body></message>")
    error = await bob.expect(lambda e: e.get("id") == "pm4", what="an answer")
    assert error.get("type") == "error"
    await alice.nothing(is_message(body="psst"))


# --- nicknames, exit ----------------------------------------------------------------------


async def test_nickname_change(connect: ClientFactory) -> None:
    """§7.6: unavailable from the old nick with 303 and the new nick, then available from the
    new one (110 for the occupant); later messages come from the new nick."""
    alice, bob, _carol = await _room(connect)
    bob.send(f"<presence to='{ROOM}/Robert'/>")
    for tap, own in ((bob, True), (alice, False)):
        old = await tap.expect(is_presence(f"{ROOM}/Bob", type_="unavailable"), what="303")
        assert 303 in codes(old)
        assert item(old)["nick"] == "Robert"
        assert (110 in codes(old)) == own
        new = await tap.expect(is_presence(f"{ROOM}/Robert", type_=None), what="new nick")
        assert (110 in codes(new)) == own
    say(bob, ROOM, "call me Robert")
    await alice.expect(is_message(f"{ROOM}/Robert", body="call me Robert"), what="message")


async def test_nickname_change_conflict(connect: ClientFactory) -> None:
    """§7.6: a nick in use: presence error conflict; the occupant keeps the old nick."""
    alice, bob, _carol = await _room(connect)
    bob.send(f"<presence to='{ROOM}/Alice'/>")
    error = await bob.expect(is_presence(ROOM, type_="error"), what="an error")
    assert _has_error(error, "conflict")
    await alice.nothing(is_presence(f"{ROOM}/Bob", type_="unavailable"))
    say(bob, ROOM, "still Bob")
    await alice.expect(is_message(f"{ROOM}/Bob", body="still Bob"), what="message")


async def test_exit(connect: ClientFactory) -> None:
    """§7.14: unavailable presence; 110 to the leaver, role none, to everyone; the status text
    is kept; further unavailable presence from a non-occupant is ignored (§17.3 rule 5)."""
    alice, bob, _carol = await _room(connect)
    bob.send(f"<presence to='{ROOM}/Bob' type='unavailable'><status>bye</status></presence>")
    for tap, own in ((bob, True), (alice, False)):
        gone = await tap.expect(is_presence(f"{ROOM}/Bob", type_="unavailable"), what="exit")
        assert (110 in codes(gone)) == own
        assert item(gone)["role"] == "none"
        assert gone.findtext("{jabber:client}status") == "bye"
    bob.send(f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    await alice.nothing(is_presence(f"{ROOM}/Bob"))


async def test_availability_change_is_broadcast(connect: ClientFactory) -> None:
    """§7.7: presence to one's occupant JID updates <show/>/<status/> for everyone, with the
    role and affiliation (§17.3 rule 8)."""
    alice, bob, _carol = await _room(connect)
    bob.send(f"<presence to='{ROOM}/Bob'><show>away</show><status>tea break</status></presence>")
    for tap in (alice, bob):
        update = await tap.expect(is_presence(f"{ROOM}/Bob", type_=None), what="the update")
        assert update.findtext("{jabber:client}show") == "away"
        assert update.findtext("{jabber:client}status") == "tea break"
        assert item(update)["role"] == "participant"
        assert item(update)["affiliation"] == "none"


async def test_a_forged_from_is_ignored(connect: ClientFactory) -> None:
    """RFC 6120 §8.1.2.1 with §7.4: the room sees the real sender whatever 'from' a client
    writes; a message claiming to come from another occupant goes out under the sender's nick."""
    alice, bob, _carol = await _room(connect)
    bob.send(
        f"<message from='alice@localhost/r' to='{ROOM}' type='groupchat'><body>I am alice</body></message>"
    )
    got = await alice.expect(is_message(ROOM, body="I am alice"), what="the message")
    assert got.get("from") == f"{ROOM}/Bob"
    bob.send(
        f"<message from='{ROOM}/Alice' to='{ROOM}/Alice' type='chat'><body>from yourself</body></message>"
    )
    got = await alice.expect(is_message(ROOM, body="from yourself"), what="the message")
    assert got.get("from") == f"{ROOM}/Bob"


async def test_a_second_join_from_a_joined_client_resynchronises_it(
    connect: ClientFactory,
) -> None:
    """§17.3 rule 3: a join from a client already in the room "MUST [be treated] as a full
    synchronization request": occupants, self-presence (110), history, subject again; nobody
    sees it leave."""
    alice, bob, _carol = await _room(connect)
    say(alice, ROOM, "before")
    await bob.expect(is_message(f"{ROOM}/Alice", body="before"), what="message")
    again = await join(bob, ROOM, "Bob")
    assert [e.get("from") for e in again.occupants] == [f"{ROOM}/Alice"]
    assert item(again.self_presence)["role"] == "participant"
    assert [m.findtext("{jabber:client}body") for m in again.history] == ["before"]
    assert again.subject is not None
    await alice.nothing(is_presence(f"{ROOM}/Bob", type_="unavailable"))


async def test_presence_with_a_type_is_not_a_join(connect: ClientFactory) -> None:
    """§17.3 rule 1: a presence probe (or any type) is not a request to enter."""
    alice, _bob, carol = await _room(connect)
    carol.send(f"<presence to='{ROOM}/Carol' type='probe'/>")
    await alice.nothing(is_presence(f"{ROOM}/Carol"))
    carol.send(f"<presence to='{ROOM}/Carol' type='subscribe'/>")
    await alice.nothing(is_presence(f"{ROOM}/Carol"))


async def test_one_user_from_two_resources_with_one_nick(connect: ClientFactory) -> None:
    """§7.2.9: the same bare JID may enter with the same nick from another resource (SHOULD);
    room messages then reach both resources."""
    alice, bob, _carol = await _room(connect)
    bob2 = Tap(await connect("bob@localhost/second"), "bob2")
    await join(bob2, ROOM, "Bob")
    say(alice, ROOM, "both of you")
    for tap in (bob, bob2):
        await tap.expect(is_message(f"{ROOM}/Alice", body="both of you"), what="message")


# --- invitations ---------------------------------------------------------------------------


async def test_mediated_invitation_and_decline(connect: ClientFactory) -> None:
    """§7.8.2: the room sends the invitation from the room JID with <invite from=inviter>, the
    reason and the password (SHOULD); a decline goes back to the inviter."""
    _alice, bob, carol = await _room(
        connect,
        {"muc#roomconfig_passwordprotectedroom": "1", "muc#roomconfig_roomsecret": "pw"},
    )
    bob.send(
        f"<message to='{ROOM}' id='inv1'><x xmlns='{NS_USER}'><invite to='carol@localhost'>"
        "<reason>Join us</reason></invite></x></message>"
    )
    invitation = await carol.expect(is_message(ROOM), what="the invitation")
    x = invitation.find(f"{{{NS_USER}}}x")
    assert x is not None
    invite = x.find(f"{{{NS_USER}}}invite")
    assert invite is not None
    assert (invite.get("from") or "").split("/")[0] in ("bob@localhost", f"{ROOM}")
    assert invite.findtext(f"{{{NS_USER}}}reason") == "Join us"
    assert x.findtext(f"{{{NS_USER}}}password") == "pw"
    inviter = invite.get("from") or "bob@localhost"
    carol.send(
        f"<message to='{ROOM}'><x xmlns='{NS_USER}'><decline to='{inviter}'>"
        "<reason>Busy</reason></decline></x></message>"
    )
    declined = await bob.expect(
        lambda e: e.find(f"{{{NS_USER}}}x/{{{NS_USER}}}decline") is not None, what="the decline"
    )
    assert declined.get("from") == ROOM
    decline = declined.find(f"{{{NS_USER}}}x/{{{NS_USER}}}decline")
    assert decline is not None
    assert (decline.get("from") or "").split("/")[0] == "carol@localhost"
    assert decline.findtext(f"{{{NS_USER}}}reason") == "Busy"


async def test_mediated_invitation_errors(connect: ClientFactory) -> None:
    """§7.8.2: a JID that does not exist: item-not-found (SHOULD); a malformed one is refused."""
    _alice, bob, _carol = await _room(connect)
    bob.send(
        f"<message to='{ROOM}' id='inv2'><x xmlns='{NS_USER}'><invite to='nobody@localhost'/></x></message>"
    )
    await bob.settle()  # bob's stanzas are handled in order: any error is here by now
    error = await bob.expect(
        lambda e: e.get("id") == "inv2" and e.get("type") == "error", timeout=1, what="an error"
    )
    assert _has_error(error, "item-not-found")


async def test_an_invitation_from_a_non_occupant_is_refused(connect: ClientFactory) -> None:
    """§7.8.2 is an occupant's privilege: carol, not in the room, cannot make the room invite."""
    alice, bob, carol = await _taps(connect, "alice", "bob", "carol")
    await create(alice, ROOM, "Alice")
    carol.send(
        f"<message to='{ROOM}' id='inv3'><x xmlns='{NS_USER}'><invite to='bob@localhost'/></x></message>"
    )
    error = await carol.expect(lambda e: e.get("id") == "inv3", what="an answer")
    assert error.get("type") == "error"
    await bob.nothing(is_message(ROOM))


async def test_direct_invitation(connect: ClientFactory) -> None:
    """XEP-0249 §2: a client-to-client <x xmlns='jabber:x:conference'/> reaches the invitee
    untouched (the server must not eat it)."""
    alice, _bob, carol = await _room(connect)
    alice.send(
        f"<message to='carol@localhost/r' id='d1'><x xmlns='{NS_CONFERENCE}' jid='{ROOM}' "
        "password='pw' reason='Come along'/></message>"
    )
    got = await carol.expect(
        lambda e: e.find(f"{{{NS_CONFERENCE}}}x") is not None, what="invitation"
    )
    x = got.find(f"{{{NS_CONFERENCE}}}x")
    assert x is not None
    assert (x.get("jid"), x.get("password"), x.get("reason")) == (ROOM, "pw", "Come along")
    assert (got.get("from") or "").startswith("alice@localhost")
    await join(carol, ROOM, "Carol")


# --- removal on error (333) ---------------------------------------------------------------


async def test_an_occupant_whose_client_bounces_an_error_is_removed_with_333(
    connect: ClientFactory,
) -> None:
    """§12.1 ("Service removes user because of error response"): unavailable presence with
    333 to the others (and 110+333 to the removed occupant)."""
    alice, bob, _carol = await _room(connect)
    say(alice, ROOM, "are you there?", id_="q1")
    await bob.expect(is_message(f"{ROOM}/Alice", body="are you there?"), what="message")
    bob.send(
        f"<message to='{ROOM}/Alice' type='error' id='q1'><body>are you there?</body>"
        "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></message>"
    )
    gone = await alice.expect(is_presence(f"{ROOM}/Bob", type_="unavailable"), what="removal")
    assert 333 in codes(gone)
    assert 110 not in codes(gone)
    assert item(gone)["role"] == "none"
    say(bob, ROOM, "am I in?")
    error = await bob.expect(is_message(ROOM, type_="error"), what="an error")
    assert error is not None


async def test_the_occupant_removed_after_an_error_is_told_with_110_and_333(
    connect: ClientFactory,
) -> None:
    """§12.1, first example: the removed occupant's own presence carries 110 and 333 (Bob's
    client bounces a groupchat message the room sent it)."""
    alice, bob, _carol = await _room(connect)
    sent = say(alice, ROOM, "bounce me")
    await bob.expect(is_message(f"{ROOM}/Alice", body="bounce me"), what="message")
    bob.send(
        f"<message to='{ROOM}/Alice' type='error' id='{sent}'><error type='cancel'>"
        "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
    )
    await alice.expect(is_presence(f"{ROOM}/Bob", type_="unavailable"), what="removal")
    await bob.settle()
    own = await bob.expect(
        is_presence(f"{ROOM}/Bob", type_="unavailable"), timeout=1, what="removal"
    )
    assert {110, 333} <= codes(own)


async def test_an_error_from_a_non_occupant_removes_nobody(connect: ClientFactory) -> None:
    """Hostile input: carol (not in the room) sends errors to the room: nobody is removed."""
    alice, bob, carol = await _room(connect)
    for to in (f"{ROOM}/Bob", ROOM):
        carol.send(
            f"<message to='{to}' type='error'><error type='cancel'>"
            "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )
    await alice.nothing(is_presence(f"{ROOM}/Bob", type_="unavailable"))
    say(bob, ROOM, "still here")
    await alice.expect(is_message(f"{ROOM}/Bob", body="still here"), what="message")


# --- XEP-0410 self-ping ---------------------------------------------------------------------


async def test_self_ping(connect: ClientFactory) -> None:
    """XEP-0410 §3: a joined client's ping to its own occupant JID succeeds; a client not
    joined gets not-acceptable."""
    _alice, bob, carol = await _room(connect)
    ping = "<ping xmlns='urn:xmpp:ping'/>"
    reply = await bob.iq("get", f"{ROOM}/Bob", ping)
    # §3: a result, or (forwarded to a client without ping support) service-unavailable or
    # feature-not-implemented: all mean "joined". slixmpp answers pings, so: a result.
    assert reply.get("type") == "result", etree.tostring(reply)
    assert await carol.iq_error("get", f"{ROOM}/Carol", ping) == "not-acceptable"
    # carol pinging bob's occupant JID must not tell her whether bob is there.
    reply = await carol.iq("get", f"{ROOM}/Bob", ping)
    assert reply.get("type") == "error"


async def test_self_ping_after_leaving(connect: ClientFactory) -> None:
    """XEP-0410 §3: once out of the room, the self-ping says not-acceptable."""
    _alice, bob, _carol = await _room(connect)
    bob.send(f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    await bob.expect(is_presence(f"{ROOM}/Bob", type_="unavailable"), what="exit")
    assert (
        await bob.iq_error("get", f"{ROOM}/Bob", "<ping xmlns='urn:xmpp:ping'/>")
        == "not-acceptable"
    )


# --- XEP-0421 occupant ids ---------------------------------------------------------------------


async def test_occupant_ids(connect: ClientFactory) -> None:
    """XEP-0421 §3-§4: the room advertises the feature; every presence and message from an
    occupant carries exactly one occupant id, stable across nick changes and re-entry, distinct
    per user, at most 128 characters."""
    alice, bob, _carol = await _room(connect)
    features, _, _ = await disco_info(bob, ROOM)
    assert NS_OID in features
    bob.send(f"<presence to='{ROOM}/Bob'><show>away</show></presence>")
    first = await alice.expect(is_presence(f"{ROOM}/Bob", type_=None), what="bob's presence")
    bob_id = occupant_id(first)
    assert bob_id
    assert len(bob_id) <= 128
    say(alice, ROOM, "hi")
    own = await bob.expect(is_message(f"{ROOM}/Alice", body="hi"), what="message")
    alice_id = occupant_id(own)
    assert alice_id
    assert alice_id != bob_id
    say(bob, ROOM, "hello")
    assert (
        occupant_id(await alice.expect(is_message(f"{ROOM}/Bob", body="hello"), what="msg"))
        == bob_id
    )
    bob.send(f"<presence to='{ROOM}/Robert'/>")
    renamed = await alice.expect(is_presence(f"{ROOM}/Robert", type_=None), what="new nick")
    assert occupant_id(renamed) == bob_id
    bob.send(f"<presence to='{ROOM}/Robert' type='unavailable'/>")
    left = await alice.expect(is_presence(f"{ROOM}/Robert", type_="unavailable"), what="exit")
    assert occupant_id(left) == bob_id
    await join(bob, ROOM, "Bobby")
    back = await alice.expect(is_presence(f"{ROOM}/Bobby", type_=None), what="re-entry")
    assert occupant_id(back) == bob_id
    # The private message path carries it too.
    bob.send(f"<message to='{ROOM}/Alice' type='chat'><body>pm</body></message>")
    assert (
        occupant_id(await alice.expect(is_message(f"{ROOM}/Bobby", body="pm"), what="pm")) == bob_id
    )


async def test_occupant_ids_differ_between_rooms(connect: ClientFactory) -> None:
    """XEP-0421 §5 (pseudonymous): the same user gets different ids in different rooms (so
    rooms cannot be correlated)."""
    alice, bob = await _taps(connect, "alice", "bob")
    other = room_jid("coffee")
    await create(alice, ROOM, "Alice")
    await create(alice, other, "Alice")
    await join(bob, ROOM, "Bob")
    await join(bob, other, "Bob")
    one = await alice.expect(is_presence(f"{ROOM}/Bob", type_=None), what="presence")
    two = await alice.expect(is_presence(f"{other}/Bob", type_=None), what="presence")
    assert occupant_id(one) != occupant_id(two)


async def test_a_join_with_forged_muc_user_data(connect: ClientFactory) -> None:
    """Hostile input: a join presence carrying forged muc#user status/items does not change the
    role or affiliation the room gives."""
    _alice, _bob, carol = await _room(connect)
    carol.send(
        f"<presence to='{ROOM}/Carol'><x xmlns='{NS_MUC}'/><x xmlns='{NS_USER}'>"
        "<item affiliation='owner' role='moderator'/><status code='201'/></x></presence>"
    )
    entered = await carol.expect(is_presence(f"{ROOM}/Carol", type_=None), what="self-presence")
    assert item(entered)["affiliation"] == "none"
    assert item(entered)["role"] == "participant"
    assert 201 not in codes(entered)
