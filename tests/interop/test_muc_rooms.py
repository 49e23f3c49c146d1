"""XEP-0045 rooms over real sockets with slixmpp clients: creation (instant and reserved, locked
until configured, 201), entering and its errors, the configuration form and what each field
does, discovery of the service, rooms and occupants, and destruction. Written from the XEP text
(v1.35); section numbers in the test docstrings."""

from __future__ import annotations

import asyncio

import pytest
from lxml import etree

from tests.conftest import PASSWORD, ClientFactory
from tests.helpers.muc import (
    NS_DATA,
    NS_MUC,
    NS_OWNER,
    NS_ROOMCONFIG,
    SERVICE,
    Tap,
    admin_item,
    bare,
    codes,
    config_form,
    config_payload,
    configure,
    create,
    disco_info,
    disco_items,
    is_presence,
    item,
    join,
    join_error,
    room_jid,
)
from tests.helpers.wire import RawClient
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

ROOM = room_jid("tea")
INSTANT = f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>"


async def _tap(connect: ClientFactory, user: str, res: str = "r") -> Tap:
    return Tap(await connect(f"{user}@localhost/{res}"), user)


async def _users(server: Server, *names: str) -> None:
    for name in names:
        await server.accounts.create(JID.parse(f"{name}@localhost"), PASSWORD)


# --- creation ------------------------------------------------------------------------------


async def test_instant_room_is_locked_until_the_owner_accepts_the_default_config(
    connect: ClientFactory,
) -> None:
    """§10.1.1-10.1.2: the creator gets 110+201 as owner/moderator; others get item-not-found
    (§7.2.11) until the empty submit form unlocks the room."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    alice.send(f"<presence to='{ROOM}/Alice'><x xmlns='{NS_MUC}'/></presence>")
    created = await alice.expect(lambda e: e.get("from") == f"{ROOM}/Alice", what="self-presence")
    assert created.get("type") is None
    assert {110, 201} <= codes(created)
    assert item(created)["affiliation"] == "owner"
    assert item(created)["role"] == "moderator"
    assert await join_error(bob, ROOM, "Bob") == "item-not-found"
    await alice.iq_ok("set", ROOM, INSTANT)
    entered = await join(bob, ROOM, "Bob")
    assert [e.get("from") for e in entered.occupants] == [f"{ROOM}/Alice"]
    assert item(entered.occupants[0])["role"] == "moderator"
    assert 201 not in codes(entered.self_presence)
    assert item(entered.self_presence)["role"] == "participant"
    assert item(entered.self_presence)["affiliation"] == "none"
    assert entered.order == ["presence", "self", "subject"]
    assert entered.subject is not None
    # §7.2.15: no subject set yet: an empty <subject/>.
    assert (entered.subject.findtext("{jabber:client}subject") or "") == ""
    seen = await alice.expect(lambda e: e.get("from") == f"{ROOM}/Bob", what="bob's presence")
    assert item(seen)["role"] == "participant"
    assert 110 not in codes(seen)


async def test_reserved_room_form_then_configuration(connect: ClientFactory) -> None:
    """§10.1.3: the owner asks for the form (room still locked), submits it, the room opens
    with that configuration."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    alice.send(f"<presence to='{ROOM}/Alice'><x xmlns='{NS_MUC}'/></presence>")
    await alice.expect(lambda e: 201 in codes(e), what="201")
    fields = await config_form(alice, ROOM)
    assert fields["FORM_TYPE"].findtext(f"{{{NS_DATA}}}value") == NS_ROOMCONFIG
    for var in (
        "muc#roomconfig_roomname",
        "muc#roomconfig_persistentroom",
        "muc#roomconfig_publicroom",
        "muc#roomconfig_membersonly",
        "muc#roomconfig_moderatedroom",
        "muc#roomconfig_passwordprotectedroom",
        "muc#roomconfig_roomsecret",
        "muc#roomconfig_maxusers",
        "muc#roomconfig_whois",
        "muc#roomconfig_allowpm",
        "muc#roomconfig_changesubject",
    ):
        assert var in fields, f"{var} missing from the configuration form"
    assert fields["muc#roomconfig_whois"].get("type") == "list-single"
    assert await join_error(bob, ROOM, "Bob") == "item-not-found"
    await configure(
        alice,
        ROOM,
        {"muc#roomconfig_roomname": "Tea Room", "muc#roomconfig_publicroom": "0"},
    )
    await join(bob, ROOM, "Bob")
    _, identities, query = await disco_info(bob, ROOM)
    assert {"category": "conference", "type": "text", "name": "Tea Room"} in identities
    features = {f.get("var") for f in query.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert "muc_hidden" in features
    assert "muc_public" not in features


async def test_cancelling_the_initial_configuration_destroys_the_room(
    connect: ClientFactory,
) -> None:
    """§10.1.3: "If the service receives a cancellation, it MUST destroy the room"."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    alice.send(f"<presence to='{ROOM}/Alice'><x xmlns='{NS_MUC}'/></presence>")
    await alice.expect(lambda e: 201 in codes(e), what="201")
    await alice.iq_ok(
        "set", ROOM, f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='cancel'/></query>"
    )
    # The room is gone: entering creates a new one.
    bob.send(f"<presence to='{ROOM}/Bob'><x xmlns='{NS_MUC}'/></presence>")
    again = await bob.expect(lambda e: e.get("from") == f"{ROOM}/Bob", what="self-presence")
    assert {110, 201} <= codes(again)


async def test_only_the_owner_configures(connect: ClientFactory) -> None:
    """§10.2: a non-owner asking for or submitting the form gets forbidden."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(alice, ROOM, "Alice")
    await join(bob, ROOM, "Bob")
    assert await bob.iq_error("get", ROOM, f"<query xmlns='{NS_OWNER}'/>") == "forbidden"
    payload = config_payload({"muc#roomconfig_roomname": "mine"})
    assert await bob.iq_error("set", ROOM, payload) == "forbidden"


@pytest.mark.parametrize(
    "values",
    [
        {"muc#roomconfig_maxusers": "lots"},
        {"muc#roomconfig_persistentroom": "maybe"},
        {"muc#roomconfig_whois": "everybody-and-their-dog"},
        {"muc#roomconfig_allowpm": "whoever"},
        # §10.1.3: a password-protected room with a blank password: not-acceptable.
        {"muc#roomconfig_passwordprotectedroom": "1", "muc#roomconfig_roomsecret": ""},
    ],
)
async def test_bad_configuration_values_are_refused(
    connect: ClientFactory, values: dict[str, str]
) -> None:
    """§10.1.3: options that violate service policy are refused with not-acceptable (a value
    that is not one of a field's options is bad-request or not-acceptable)."""
    alice = await _tap(connect, "alice")
    await create(alice, ROOM, "Alice")
    assert await alice.iq_error("set", ROOM, config_payload(values)) in (
        "not-acceptable",
        "bad-request",
    )


# --- entering -----------------------------------------------------------------------------


async def test_entering_without_a_nickname_is_jid_malformed(connect: ClientFactory) -> None:
    """§7.2.1: presence to the bare room JID: jid-malformed."""
    alice = await _tap(connect, "alice")
    alice.send(f"<presence to='{ROOM}'><x xmlns='{NS_MUC}'/></presence>")
    error = await alice.expect(lambda e: e.get("from") == ROOM, what="an error")
    assert error.get("type") == "error"
    assert (
        error.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}jid-malformed")
        is not None
    )


@pytest.mark.parametrize("nick", ["x" * 1024, "\u00e9" * 600])
async def test_an_oversize_nickname_is_refused(connect: ClientFactory, nick: str) -> None:
    """§17.1 (Resourceprep, at most 1023 bytes): the occupant JID is malformed; nobody enters."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(alice, ROOM, "Alice")
    bob.send(f"<presence to='{ROOM}/{nick}'><x xmlns='{NS_MUC}'/></presence>")
    error = await bob.expect(
        lambda e: e.tag == "{jabber:client}presence" and e.get("type") == "error",
        what="an error",
    )
    assert (
        error.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}jid-malformed")
        is not None
    )
    await alice.nothing(
        lambda e: (
            e.tag == "{jabber:client}presence" and (e.get("from") or "").startswith(f"{ROOM}/x")
        )
    )


async def test_a_blank_nickname_is_refused(connect: ClientFactory, server: Server) -> None:
    """§17.1: "a MUC service MUST NOT allow empty or invisible Room Nicknames" (raw XML:
    slixmpp drops stanzas from such a JID)."""
    alice = await _tap(connect, "alice")
    await create(alice, ROOM, "Alice")
    raw = await RawClient.connect(server.ports["c2s"][0])
    try:
        await raw.login("bob", PASSWORD)
        await raw.send(f"<presence to='{ROOM}/   '><x xmlns='{NS_MUC}'/></presence>")
        answer = await raw.next()
        while answer.tag != "{jabber:client}presence" or 110 in codes(answer):
            assert 110 not in codes(answer), "entered with a blank nickname"
            answer = await raw.next()
        if answer.get("type") != "error":  # another occupant's presence: we are entering
            raise AssertionError(f"entered with a blank nickname: {etree.tostring(answer)!r}")
    finally:
        await raw.close()


async def test_nickname_conflict(connect: ClientFactory) -> None:
    """§7.2.9: a nickname in use by someone else: conflict, and no presence broadcast."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(alice, ROOM, "Alice")
    assert await join_error(bob, ROOM, "Alice") == "conflict"
    await alice.nothing(
        lambda e: e.tag == "{jabber:client}presence" and bare(e.get("from")) == ROOM
    )


async def test_password_protected_room(connect: ClientFactory) -> None:
    """§7.2.5: no password or a wrong one: not-authorized; the right one enters."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(
        alice,
        ROOM,
        "Alice",
        {"muc#roomconfig_passwordprotectedroom": "1", "muc#roomconfig_roomsecret": "s3cret"},
    )
    features, _, _ = await disco_info(bob, ROOM)
    assert "muc_passwordprotected" in features
    assert "muc_unsecured" not in features
    assert await join_error(bob, ROOM, "Bob") == "not-authorized"
    assert await join_error(bob, ROOM, "Bob", password="guess") == "not-authorized"
    await join(bob, ROOM, "Bob", password="s3cret")


async def test_members_only_room(connect: ClientFactory) -> None:
    """§7.2.6: a non-member gets registration-required; once granted membership (§9.3), enters."""
    alice, bob, carol = [await _tap(connect, u) for u in ("alice", "bob", "carol")]
    await create(alice, ROOM, "Alice", {"muc#roomconfig_membersonly": "1"})
    features, _, _ = await disco_info(bob, ROOM)
    assert "muc_membersonly" in features
    assert "muc_open" not in features
    assert await join_error(bob, ROOM, "Bob") == "registration-required"
    await alice.iq_ok("set", ROOM, admin_item(jid="bob@localhost", affiliation="member"))
    entered = await join(bob, ROOM, "Bob")
    assert item(entered.self_presence)["affiliation"] == "member"
    assert await join_error(carol, ROOM, "Carol") == "registration-required"


async def test_max_occupants(connect: ClientFactory, server: Server) -> None:
    """§7.2.10: a full room answers service-unavailable; an owner may still enter."""
    alice = await _tap(connect, "alice")
    await create(alice, ROOM, "Alice")
    fields = await config_form(alice, ROOM)
    options = [
        int(v.text or "0")
        for v in fields["muc#roomconfig_maxusers"].iter(f"{{{NS_DATA}}}value")
        if (v.text or "").isdigit()
    ]
    limit = 2 if not options else min(o for o in options if o > 0)
    if limit > 20:
        limit = 2
    await configure(alice, ROOM, {"muc#roomconfig_maxusers": str(limit)})
    names = [f"user{i}" for i in range(limit)]
    await _users(server, *names)
    taps = await asyncio.gather(*(_tap(connect, n) for n in names))
    for tap, name in zip(taps[:-1], names, strict=False):
        await join(tap, ROOM, name)
    assert await join_error(taps[-1], ROOM, names[-1]) == "service-unavailable"
    # The owner is let in anyway (§7.2.10), e.g. from a second resource.
    owner2 = await _tap(connect, "alice", "second")
    await join(owner2, ROOM, "Alice2")


# --- room types ------------------------------------------------------------------------------


async def test_temporary_room_disappears_when_the_last_occupant_leaves(
    connect: ClientFactory,
) -> None:
    """§10.1 / glossary "Temporary Room": destroyed when the last occupant exits."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(alice, ROOM, "Alice", {"muc#roomconfig_persistentroom": "0"})
    features, _, _ = await disco_info(bob, ROOM)
    assert "muc_temporary" in features
    alice.send(f"<presence to='{ROOM}/Alice' type='unavailable'/>")
    gone = await alice.expect(lambda e: e.get("from") == f"{ROOM}/Alice", what="exit")
    assert gone.get("type") == "unavailable"
    assert 110 in codes(gone)
    bob.send(f"<presence to='{ROOM}/Bob'><x xmlns='{NS_MUC}'/></presence>")
    created = await bob.expect(lambda e: e.get("from") == f"{ROOM}/Bob", what="self-presence")
    assert 201 in codes(created)


async def test_persistent_room_stays_when_empty(connect: ClientFactory) -> None:
    """Glossary "Persistent Room": not destroyed when the last occupant exits."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(
        alice,
        ROOM,
        "Alice",
        {"muc#roomconfig_persistentroom": "1", "muc#roomconfig_roomname": "Kept"},
    )
    alice.send(f"<presence to='{ROOM}/Alice' type='unavailable'/>")
    await alice.expect(lambda e: e.get("from") == f"{ROOM}/Alice", what="exit")
    entered = await join(bob, ROOM, "Bob")
    assert 201 not in codes(entered.self_presence)
    assert item(entered.self_presence)["affiliation"] == "none"
    features, identities, _ = await disco_info(bob, ROOM)
    assert "muc_persistent" in features
    assert any(i.get("name") == "Kept" for i in identities)


async def test_non_anonymous_room_shows_jids_and_warns_with_100(connect: ClientFactory) -> None:
    """§7.2.3: whois=anyone: every occupant's full JID in the items, and status 100 on entry."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(alice, ROOM, "Alice", {"muc#roomconfig_whois": "anyone"})
    entered = await join(bob, ROOM, "Bob")
    assert 100 in codes(entered.self_presence)
    assert item(entered.occupants[0]).get("jid") == alice.jid
    assert item(entered.self_presence).get("jid") == bob.jid
    features, _, _ = await disco_info(bob, ROOM)
    assert "muc_nonanonymous" in features


async def test_semi_anonymous_room_shows_jids_to_moderators_only(connect: ClientFactory) -> None:
    """§7.2.4: whois=moderators: the new occupant's JID goes to moderators only; no 100."""
    alice, bob, carol = [await _tap(connect, u) for u in ("alice", "bob", "carol")]
    await create(alice, ROOM, "Alice", {"muc#roomconfig_whois": "moderators"})
    entered = await join(bob, ROOM, "Bob")
    assert 100 not in codes(entered.self_presence)
    assert "jid" not in item(entered.occupants[0])  # alice's JID hidden from participant bob
    seen = await alice.expect(lambda e: e.get("from") == f"{ROOM}/Bob", what="bob's presence")
    assert item(seen).get("jid") == bob.jid  # the moderator sees it
    await join(carol, ROOM, "Carol")
    seen = await bob.expect(lambda e: e.get("from") == f"{ROOM}/Carol", what="carol's presence")
    assert "jid" not in item(seen)
    features, _, _ = await disco_info(bob, ROOM)
    assert "muc_semianonymous" in features


async def test_logged_room_warns_with_170(connect: ClientFactory) -> None:
    """§7.2.12: a room whose discussions are logged (enablelogging) sends 170 on entry."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(alice, ROOM, "Alice", {"muc#roomconfig_enablelogging": "1"})
    entered = await join(bob, ROOM, "Bob")
    assert 170 in codes(entered.self_presence)


# --- discovery ----------------------------------------------------------------------------


async def test_service_discovery(connect: ClientFactory) -> None:
    """§6.1-6.2: the server lists the service; the service is conference/text with the muc
    feature."""
    alice = await _tap(connect, "alice")
    assert SERVICE in await disco_items(alice, "localhost")
    features, identities, _ = await disco_info(alice, SERVICE)
    assert "http://jabber.org/protocol/muc" in features
    assert any(i.get("category") == "conference" and i.get("type") == "text" for i in identities)


@pytest.mark.parametrize("where", ["service", "room"])
async def test_stable_ids_are_advertised(connect: ClientFactory, where: str) -> None:
    """§7.4: a service reflecting the client's id "SHOULD advertise that with a disco info
    feature of 'http://jabber.org/protocol/muc#stable_id' on both the service domain and on
    individual MUCs"."""
    alice = await _tap(connect, "alice")
    await create(alice, ROOM, "Alice")
    features, _, _ = await disco_info(alice, SERVICE if where == "service" else ROOM)
    assert "http://jabber.org/protocol/muc#stable_id" in features


async def test_the_service_advertises_occupant_ids(connect: ClientFactory) -> None:
    """XEP-0421 §3: occupant ids "for all rooms on a MUC service": it "SHOULD additionally
    specify the 'urn:xmpp:occupant-id:0' feature on the MUC service"."""
    alice = await _tap(connect, "alice")
    features, _, _ = await disco_info(alice, SERVICE)
    assert "urn:xmpp:occupant-id:0" in features


async def test_public_rooms_are_listed_hidden_ones_are_not(connect: ClientFactory) -> None:
    """§6.3: disco#items of the service lists the public rooms only."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    public, hidden = room_jid("public"), room_jid("hidden")
    await create(alice, public, "Alice", {"muc#roomconfig_publicroom": "1"})
    await create(alice, hidden, "Alice", {"muc#roomconfig_publicroom": "0"})
    listed = await disco_items(bob, SERVICE)
    assert public in listed
    assert hidden not in listed


async def test_room_information(connect: ClientFactory) -> None:
    """§6.4: identity conference/text, the muc feature and one of each pair of room-type
    features; the muc#roominfo extended form."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(
        alice,
        ROOM,
        "Alice",
        {
            "muc#roomconfig_roomname": "Tea",
            "muc#roomconfig_roomdesc": "All about tea",
            "muc#roomconfig_moderatedroom": "1",
            "muc#roomconfig_publicroom": "1",
        },
    )
    features, identities, query = await disco_info(bob, ROOM)
    assert {"category": "conference", "type": "text", "name": "Tea"} in identities
    assert "http://jabber.org/protocol/muc" in features
    pairs = [
        ("muc_public", "muc_hidden"),
        ("muc_moderated", "muc_unmoderated"),
        ("muc_open", "muc_membersonly"),
        ("muc_unsecured", "muc_passwordprotected"),
        ("muc_temporary", "muc_persistent"),
        ("muc_semianonymous", "muc_nonanonymous"),
    ]
    for on, off in pairs[:4]:
        assert on in features, (on, features)
        assert off not in features, (off, features)
    for one, other in pairs[4:]:
        assert (one in features) != (other in features), (one, other, features)
    info = {
        f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in query.iter(f"{{{NS_DATA}}}field")
    }
    assert info.get("FORM_TYPE") == "http://jabber.org/protocol/muc#roominfo"
    assert info.get("muc#roominfo_description") == "All about tea"


async def test_room_items_and_occupant_addresses(connect: ClientFactory) -> None:
    """§6.5-6.6: disco#items of a room answers (a list or an empty query); a non-occupant's
    disco request to an occupant JID is bad-request."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(alice, ROOM, "Alice")
    for jid in await disco_items(bob, ROOM):
        assert jid.startswith(f"{ROOM}/")
    error = await bob.iq_error(
        "get", f"{ROOM}/Alice", "<query xmlns='http://jabber.org/protocol/disco#info'/>"
    )
    assert error == "bad-request"


async def test_a_room_that_does_not_exist(connect: ClientFactory) -> None:
    """§6.4 / §10.2: queries to a room that does not exist are item-not-found."""
    alice = await _tap(connect, "alice")
    nowhere = room_jid("nowhere")
    error = await alice.iq_error(
        "get", nowhere, "<query xmlns='http://jabber.org/protocol/disco#info'/>"
    )
    assert error == "item-not-found"
    assert await alice.iq_error("get", nowhere, f"<query xmlns='{NS_OWNER}'/>") == "item-not-found"


# --- destruction --------------------------------------------------------------------------


async def test_destroy_with_alternate_venue(connect: ClientFactory) -> None:
    """§10.9: each occupant gets one unavailable presence with <destroy jid><reason/>; the
    owner a result; a non-owner gets forbidden; the room is gone."""
    alice, bob = await _tap(connect, "alice"), await _tap(connect, "bob")
    await create(alice, ROOM, "Alice", {"muc#roomconfig_persistentroom": "1"})
    await join(bob, ROOM, "Bob")
    destroy = (
        f"<query xmlns='{NS_OWNER}'><destroy jid='{room_jid('coffee')}'>"
        "<reason>Moving on.</reason></destroy></query>"
    )
    assert await bob.iq_error("set", ROOM, destroy) == "forbidden"
    await alice.iq_ok("set", ROOM, destroy)
    for tap, nick in ((alice, "Alice"), (bob, "Bob")):
        gone = await tap.expect(
            is_presence(f"{ROOM}/{nick}", type_="unavailable"),
            what="the destroy presence",
        )
        assert item(gone).get("affiliation") == "none"
        assert item(gone).get("role") == "none"
        x = gone.find("{http://jabber.org/protocol/muc#user}x")
        assert x is not None
        venue = x.find("{http://jabber.org/protocol/muc#user}destroy")
        assert venue is not None
        assert venue.get("jid") == room_jid("coffee")
        assert venue.findtext("{http://jabber.org/protocol/muc#user}reason") == "Moving on."
    # §10.9: one presence per occupant, not a broadcast of everybody's exit.
    await bob.nothing(lambda e: e.get("from") == f"{ROOM}/Alice" and e.get("type") == "unavailable")
    error = await bob.iq_error(
        "get", ROOM, "<query xmlns='http://jabber.org/protocol/disco#info'/>"
    )
    assert error == "item-not-found"
