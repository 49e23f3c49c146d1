"""XEP-0045 roles and affiliations over real sockets: kick (307), ban (301), voice in moderated
rooms, member/admin/owner lists, removals on affiliation (321) and configuration (322) changes,
with the error paths of §8-§10. Written from the XEP text (v1.35)."""

from __future__ import annotations

import pytest

from tests.conftest import ClientFactory
from tests.helpers.muc import (
    NS_ADMIN,
    NS_USER,
    Tap,
    admin_item,
    codes,
    configure,
    create,
    is_message,
    item,
    join,
    join_error,
    room_jid,
    say,
)

pytestmark = pytest.mark.interop

ROOM = room_jid("tea")


async def _taps(connect: ClientFactory, *users: str) -> list[Tap]:
    return [Tap(await connect(f"{user}@localhost/r"), user) for user in users]


async def _room(connect: ClientFactory, config: dict[str, str] | None = None) -> list[Tap]:
    """alice (owner, 'Alice'), bob ('Bob') and carol ('Carol') in ROOM."""
    alice, bob, carol = await _taps(connect, "alice", "bob", "carol")
    await create(alice, ROOM, "Alice", config)
    await join(bob, ROOM, "Bob")
    await join(carol, ROOM, "Carol")
    for tap in (alice, bob, carol):
        await tap.settle()
        tap.clear()
    return [alice, bob, carol]


def _unavailable(nick: str):  # type: ignore[no-untyped-def]
    return lambda e: e.get("from") == f"{ROOM}/{nick}" and e.get("type") == "unavailable"


def _presence_of(nick: str):  # type: ignore[no-untyped-def]
    return lambda e: (
        e.tag == "{jabber:client}presence"
        and e.get("from") == f"{ROOM}/{nick}"
        and e.get("type") is None
    )


# --- kick --------------------------------------------------------------------------------


async def test_kick_removes_the_occupant_with_307(connect: ClientFactory) -> None:
    """§8.2: the kicked occupant gets unavailable with 110+307 and the reason; the others get
    unavailable with 307; the moderator gets a result. A kick is not a ban: bob may return."""
    alice, bob, carol = await _room(connect)
    await alice.iq_ok("set", ROOM, admin_item(nick="Bob", role="none", reason="Be nice"))
    kicked = await bob.expect(_unavailable("Bob"), what="bob's removal")
    assert {110, 307} <= codes(kicked)
    assert item(kicked)["role"] == "none"
    # §8.2: the reason is optional; if given, it is the moderator's.
    reason = kicked.findtext(f"{{{NS_USER}}}x/{{{NS_USER}}}item/{{{NS_USER}}}reason")
    assert reason in (None, "Be nice")
    for tap in (alice, carol):
        seen = await tap.expect(_unavailable("Bob"), what="bob's removal")
        assert 307 in codes(seen)
        assert 110 not in codes(seen)
    # No longer an occupant: his messages are refused.
    say(bob, ROOM, "still here?")
    error = await bob.expect(is_message(ROOM, type_="error"), what="an error")
    assert error is not None
    await carol.nothing(is_message(ROOM, body="still here?"))
    await join(bob, ROOM, "Bob")


async def test_only_moderators_kick(connect: ClientFactory) -> None:
    """§8 intro: a non-moderator's muc#admin request is forbidden; nobody is removed."""
    _alice, bob, carol = await _room(connect)
    assert await bob.iq_error("set", ROOM, admin_item(nick="Carol", role="none")) == "forbidden"
    await carol.nothing(_unavailable("Carol"))


async def test_a_moderator_cannot_kick_a_higher_affiliation(connect: ClientFactory) -> None:
    """§8.2: an admin cannot kick an owner: not-allowed."""
    alice, bob, _carol = await _room(connect)
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="admin"))
    assert await bob.iq_error("set", ROOM, admin_item(nick="Alice", role="none")) == "not-allowed"
    await alice.nothing(_unavailable("Alice"))


async def test_kicking_an_absent_nick(connect: ClientFactory) -> None:
    """§8.2: the kick names a nick in the room; an unknown nick changes nothing (an error)."""
    alice, _bob, _carol = await _room(connect)
    reply = await alice.iq("set", ROOM, admin_item(nick="Nobody", role="none"))
    assert reply.get("type") == "error"


async def test_role_and_affiliation_together_is_bad_request(connect: ClientFactory) -> None:
    """§17.4 (IQ rule 4): both 'role' and 'affiliation' on one item: bad-request."""
    alice, bob, _carol = await _room(connect)
    payload = admin_item(nick="Bob", jid="bob@localhost", role="none", affiliation="outcast")
    assert await alice.iq_error("set", ROOM, payload) == "bad-request"
    await bob.nothing(_unavailable("Bob"))


@pytest.mark.parametrize(
    "payload",
    [
        admin_item(nick="Bob", role="emperor"),
        admin_item(jid="bob@localhost", affiliation="overlord"),
        f"<query xmlns='{NS_ADMIN}'/>",
        admin_item(jid="not a jid@@", affiliation="member"),
    ],
)
async def test_malformed_admin_requests(connect: ClientFactory, payload: str) -> None:
    """§9-§10 schema: unknown roles/affiliations, no item or a bad JID are refused."""
    alice, bob, _carol = await _room(connect)
    assert await alice.iq_error("set", ROOM, payload) in (
        "bad-request",
        "jid-malformed",
        "not-acceptable",
    )
    await bob.nothing(lambda e: e.get("from") == f"{ROOM}/Bob")


# --- ban --------------------------------------------------------------------------------


async def test_ban_removes_with_301_and_keeps_the_user_out(connect: ClientFactory) -> None:
    """§9.1: outcast by bare JID: 110+301 to the banned occupant, 301 to the others; rejoin
    gives forbidden (§7.2.8); the ban list has the JID."""
    alice, bob, carol = await _room(connect)
    await alice.iq_ok(
        "set", ROOM, admin_item(jid="bob@localhost", affiliation="outcast", reason="Spam")
    )
    banned = await bob.expect(_unavailable("Bob"), what="bob's removal")
    assert {110, 301} <= codes(banned)
    assert item(banned)["affiliation"] == "outcast"
    assert item(banned)["role"] == "none"
    seen = await carol.expect(_unavailable("Bob"), what="bob's removal")
    assert 301 in codes(seen)
    assert await join_error(bob, ROOM, "Bob") == "forbidden"
    assert await join_error(bob, ROOM, "Another") == "forbidden"
    listed = await alice.iq_ok("get", ROOM, admin_item(affiliation="outcast"))
    jids = [i.get("jid") for i in listed.iter(f"{{{NS_ADMIN}}}item")]
    assert jids == ["bob@localhost"]
    # Lifting the ban lets him back in.
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="none"))
    await join(bob, ROOM, "Bob")


async def test_ban_errors(connect: ClientFactory) -> None:
    """§9.1: banning oneself: conflict; an admin banning an owner: not-allowed; a participant
    banning anyone: forbidden."""
    alice, bob, carol = await _room(connect)
    assert (
        await alice.iq_error("set", ROOM, admin_item(jid="alice@localhost", affiliation="outcast"))
        == "conflict"
    )
    assert (
        await carol.iq_error("set", ROOM, admin_item(jid="bob@localhost", affiliation="outcast"))
        == "forbidden"
    )
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="admin"))
    assert (
        await bob.iq_error("set", ROOM, admin_item(jid="alice@localhost", affiliation="outcast"))
        == "not-allowed"
    )
    await carol.nothing(lambda e: e.get("type") == "unavailable")


async def test_a_ban_of_someone_absent_applies_on_entry(connect: ClientFactory) -> None:
    """§9.1: the ban is on the bare JID, present or not."""
    alice, bob = await _taps(connect, "alice", "bob")
    await create(alice, ROOM, "Alice")
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="outcast"))
    assert await join_error(bob, ROOM, "Bob") == "forbidden"


# --- voice -------------------------------------------------------------------------------


async def test_voice_in_a_moderated_room(connect: ClientFactory) -> None:
    """§7.4 / §8.3-8.4: visitors may not speak (forbidden, not reflected); a moderator grants
    voice (role participant broadcast) and revokes it (role visitor)."""
    alice, bob, carol = await _taps(connect, "alice", "bob", "carol")
    await create(alice, ROOM, "Alice", {"muc#roomconfig_moderatedroom": "1"})
    entered = await join(bob, ROOM, "Bob")
    assert item(entered.self_presence)["role"] == "visitor"
    await join(carol, ROOM, "Carol")
    say(bob, ROOM, "may I?")
    error = await bob.expect(is_message(ROOM, type_="error"), what="an error")
    assert (
        error.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden")
        is not None
    )
    await carol.nothing(is_message(ROOM, body="may I?"))

    await alice.iq_ok("set", ROOM, admin_item(nick="Bob", role="participant"))
    for tap in (alice, bob, carol):
        update = await tap.expect(
            lambda e: _presence_of("Bob")(e) and item(e).get("role") == "participant",
            what="voice granted",
        )
        assert update is not None
    say(bob, ROOM, "thanks")
    await carol.expect(is_message(f"{ROOM}/Bob", body="thanks"), what="bob's message")

    await alice.iq_ok("set", ROOM, admin_item(nick="Bob", role="visitor"))
    await carol.expect(
        lambda e: _presence_of("Bob")(e) and item(e).get("role") == "visitor",
        what="voice revoked",
    )
    say(bob, ROOM, "again")
    error = await bob.expect(is_message(ROOM, type_="error"), what="an error")
    assert (
        error.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden")
        is not None
    )
    await carol.nothing(is_message(ROOM, body="again"))
    # §8.4: nobody revokes an admin's or owner's voice.
    assert (
        await alice.iq_error("set", ROOM, admin_item(nick="Alice", role="visitor")) == "not-allowed"
    )


async def test_voice_list(connect: ClientFactory) -> None:
    """§8.5: the voice list is the participants; a participant may not read it."""
    alice, bob, _carol = await _room(connect, {"muc#roomconfig_moderatedroom": "0"})
    listed = await alice.iq_ok("get", ROOM, admin_item(role="participant"))
    nicks = sorted(i.get("nick") or "" for i in listed.iter(f"{{{NS_ADMIN}}}item"))
    assert nicks == ["Bob", "Carol"]
    for found in listed.iter(f"{{{NS_ADMIN}}}item"):
        assert found.get("role") == "participant"  # §17.4 rule 5: nick, role, affiliation, jid
        assert found.get("jid", "").split("/")[0] in ("bob@localhost", "carol@localhost")
    assert await bob.iq_error("get", ROOM, admin_item(role="participant")) == "forbidden"


# --- affiliations --------------------------------------------------------------------------


async def test_member_admin_owner(connect: ClientFactory) -> None:
    """§9.3, §10.3, §10.6: affiliation changes are broadcast as presence; admins and owners
    become moderators; lists are readable by admins and owners."""
    alice, bob, carol = await _room(connect)
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="member"))
    seen = await carol.expect(_presence_of("Bob"), what="bob's new affiliation")
    assert item(seen)["affiliation"] == "member"
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="admin"))
    seen = await carol.expect(_presence_of("Bob"), what="bob's new affiliation")
    assert item(seen)["affiliation"] == "admin"
    assert item(seen)["role"] == "moderator"
    await alice.iq_ok("set", ROOM, admin_item(jid="carol@localhost", affiliation="owner"))
    seen = await bob.expect(_presence_of("Carol"), what="carol's new affiliation")
    assert item(seen)["affiliation"] == "owner"
    assert item(seen)["role"] == "moderator"
    for affiliation, expected in (
        ("admin", ["bob@localhost"]),
        ("owner", ["alice@localhost", "carol@localhost"]),
    ):
        listed = await alice.iq_ok("get", ROOM, admin_item(affiliation=affiliation))
        found = sorted(i.get("jid") or "" for i in listed.iter(f"{{{NS_ADMIN}}}item"))
        assert found == expected
        for entry in listed.iter(f"{{{NS_ADMIN}}}item"):
            assert entry.get("role") is None  # §17.4 rule 6


async def test_owner_and_admin_list_privileges(connect: ClientFactory) -> None:
    """§10.3 / §10.6: only owners modify the owner and admin lists (forbidden); the sole owner
    may not drop their own ownership (conflict)."""
    alice, bob, _carol = await _room(connect)
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="admin"))
    assert (
        await bob.iq_error("set", ROOM, admin_item(jid="carol@localhost", affiliation="owner"))
        == "forbidden"
    )
    assert (
        await bob.iq_error("set", ROOM, admin_item(jid="carol@localhost", affiliation="admin"))
        == "forbidden"
    )
    assert (
        await alice.iq_error("set", ROOM, admin_item(jid="alice@localhost", affiliation="admin"))
        == "conflict"
    )
    # An admin may grant membership (§9.3).
    await bob.iq_ok("set", ROOM, admin_item(jid="carol@localhost", affiliation="member"))


async def test_revoking_membership_in_a_members_only_room_removes_with_321(
    connect: ClientFactory,
) -> None:
    """§9.4: a members-only room removes an occupant who loses membership, with 321."""
    alice, bob, carol = await _taps(connect, "alice", "bob", "carol")
    await create(alice, ROOM, "Alice", {"muc#roomconfig_membersonly": "1"})
    for user in ("bob", "carol"):
        await alice.iq_ok("set", ROOM, admin_item(jid=f"{user}@localhost", affiliation="member"))
    await join(bob, ROOM, "Bob")
    await join(carol, ROOM, "Carol")
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="none"))
    removed = await bob.expect(_unavailable("Bob"), what="bob's removal")
    assert {110, 321} <= codes(removed)
    seen = await carol.expect(_unavailable("Bob"), what="bob's removal")
    assert 321 in codes(seen)
    assert await join_error(bob, ROOM, "Bob") == "registration-required"


async def test_becoming_members_only_removes_non_members_with_322(connect: ClientFactory) -> None:
    """§10.2 / status 322: switching to members-only removes the occupants who are not
    members; members and owners stay."""
    alice, bob, carol = await _room(connect)
    await alice.iq_ok("set", ROOM, admin_item(jid="carol@localhost", affiliation="member"))
    await configure(alice, ROOM, {"muc#roomconfig_membersonly": "1"})
    removed = await bob.expect(_unavailable("Bob"), what="bob's removal")
    assert {110, 322} <= codes(removed)
    seen = await alice.expect(_unavailable("Bob"), what="bob's removal")
    assert 322 in codes(seen)
    await carol.nothing(_unavailable("Carol"))


async def test_member_list_and_invitation_privileges(connect: ClientFactory) -> None:
    """§9.5 / §7.8.2: in a members-only room only admins edit the member list; a member's
    invitation is forbidden."""
    alice, bob, carol = await _taps(connect, "alice", "bob", "carol")
    await create(
        alice,
        ROOM,
        "Alice",
        {"muc#roomconfig_membersonly": "1", "muc#roomconfig_allowinvites": "0"},
    )
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="member"))
    await join(bob, ROOM, "Bob")
    assert (
        await bob.iq_error("set", ROOM, admin_item(jid="carol@localhost", affiliation="member"))
        == "forbidden"
    )
    bob.send(
        f"<message to='{ROOM}' id='inv1'><x xmlns='{NS_USER}'><invite to='carol@localhost'/></x></message>"
    )
    error = await bob.expect(is_message(ROOM, type_="error"), what="an error")
    assert (
        error.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden")
        is not None
    )
    await carol.nothing(is_message(ROOM))
