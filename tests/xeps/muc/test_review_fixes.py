"""XEP-0045 (xeps/muc): regression tests for the bugs a review found, one test per bug.

Each test drives the module on a real server (ModuleHarness: fake sessions, no sockets) and
failed before its fix.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition, parse_element
from tests.xeps.muc.test_module import (
    BODY,
    ROOM,
    SERVICE,
    SUBJECT,
    X,
    admin,
    codes,
    configure,
    create,
    join,
    muc,
    room_of,
)
from xeps.muc.archive import archive_key
from xeps.muc.config import RoomConfig
from xeps.muc.room import MAX_INVITES, MAX_PENDING_PMS, NS_MUC, NS_USER, Limits, Room
from xmppd.events import Shutdown
from xmppd.jid import JID
from xmppd.lib.mam import NS_FORWARD, NS_MAM
from xmppd.ns import NS_DATA
from xmppd.session import Session

MODULES = ("muc", "presence", "disco", "roster", "blocking")
SID = "{urn:xmpp:sid:0}stanza-id"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob", "carol", "dave"), modules_enabled=MODULES
    ) as harness:
        yield harness


def history_x(**limits: str) -> str:
    attrs = " ".join(f"{k}='{v}'" for k, v in limits.items())
    return f"<x xmlns='{NS_MUC}'><history {attrs}/></x>"


def bodies(got: list[etree._Element]) -> list[str]:
    return [e.findtext(BODY) or "" for e in got if e.find(BODY) is not None]


# --- 1. invisible occupant through a malformed <history/> -----------------------------------
@pytest.mark.parametrize(
    "limits",
    [
        {"seconds": "1" + "0" * 400},  # OverflowError in float arithmetic before the fix
        {"seconds": "9" * 5000},  # more digits than int() accepts
        {"maxchars": "1" + "0" * 400},
        {"maxstanzas": "1" + "0" * 400},
        {"maxstanzas": "-3", "maxchars": "x"},
        {"since": "99999-01-01T00:00:00Z"},
        {"since": "0001-01-01T00:00:00-23:59"},
    ],
)
async def test_invisible_occupant_via_malformed_history(
    h: ModuleHarness, alice: Session, bob: Session, limits: dict[str, str]
) -> None:
    await create(h, alice)
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>before</body></message>")
    h.take(alice)
    got = await join(h, bob, "Ghost", x=history_x(**limits))
    assert any(110 in codes(e) for e in got), [etree.tostring(e) for e in got]
    assert got[-1].find(SUBJECT) is not None
    seen = h.take_one(alice)  # the others see the join: nobody listens unseen
    assert seen.get("from") == f"{ROOM}/Ghost"
    assert "Ghost" in room_of(h).occupants


async def test_huge_history_limits_mean_no_limit(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await create(h, alice)
    for n in range(3):
        await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>m{n}</body></message>")
    h.take(alice)
    got = await join(h, bob, "Bob", x=history_x(seconds="9" * 30, maxchars="9" * 30))
    assert bodies(got) == ["m0", "m1", "m2"]


@pytest.mark.parametrize("second_session", [False, True])
async def test_history_failure_changes_no_state(
    h: ModuleHarness,
    alice: Session,
    bob: Session,
    monkeypatch: pytest.MonkeyPatch,
    second_session: bool,
) -> None:
    """Whatever fails while the history is computed, the room's state has not changed yet."""
    await create(h, alice)
    room = room_of(h)
    if second_session:  # §7.2.9: a second session of Alice under her nick
        bob = await h.connect("alice@localhost/laptop", priority=0)
    nick = "Alice" if second_session else "Ghost"

    def broken(*args: Any) -> None:
        raise RuntimeError("history broke")

    monkeypatch.setattr(room, "_history_for", broken)
    with pytest.raises(RuntimeError):
        room.presence(etree.fromstring(f"<presence>{X}</presence>"), bob_jid(bob), nick, 0.0)
    assert [len(o.sessions) for o in room.occupants.values()] == [1]
    assert set(room.occupants) == {"Alice"}
    assert len(room.by_jid) == 1


def bob_jid(session: Session) -> JID:
    assert session.jid is not None
    return session.jid


# --- 2. an error reply to a private message ejects the wrong occupant -------------------------
async def test_pm_error_goes_back_to_sender_not_kicking_recipient(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session
) -> None:
    """Bob blocks room/Mallory (XEP-0191); his server refuses Mallory's PM: Mallory gets the
    error (from room/Bob, with her id), and Bob stays."""
    await create(h, alice)
    await join(h, bob, "Bob")
    await join(h, carol, "Mallory")
    h.take(alice)
    h.take(bob)
    await h.send(
        bob,
        f"<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'>"
        f"<item jid='{ROOM}/Mallory'/></block></iq>",
    )
    h.take(bob)
    await h.send(carol, f"<message type='chat' id='pm1' to='{ROOM}/Bob'><body>hi</body></message>")
    assert "Bob" in room_of(h).occupants
    assert h.take(alice) == []
    assert [e for e in h.take(bob) if e.get("type") == "unavailable"] == []
    (error,) = h.take(carol)
    assert error.get("type") == "error"
    assert error.get("from") == f"{ROOM}/Bob"
    assert error.get("id") == "pm1"


async def test_pm_error_from_client_is_routed_back(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session
) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    await join(h, carol, "Mallory")
    h.take(alice)
    h.take(bob)
    await h.send(carol, f"<message type='chat' to='{ROOM}/Bob'><body>hi</body></message>")
    pm = h.take_one(bob)
    forwarded_id = pm.get("id")
    assert forwarded_id  # a PM without id gets one, so its error can be matched
    await h.send(
        bob,
        f"<message type='error' id='{forwarded_id}' to='{ROOM}/Mallory'><error type='cancel'>"
        f"<not-acceptable xmlns='{STANZAS}'/></error></message>",
    )
    error = h.take_one(carol)
    assert error.get("type") == "error"
    assert error.get("from") == f"{ROOM}/Bob"
    assert error.get("to") == "carol@localhost/tab"
    assert error_condition(error) == "not-acceptable"
    assert error.get("id") is None  # Mallory's PM had none
    assert set(room_of(h).occupants) == {"Alice", "Bob", "Mallory"}
    assert h.take(alice) == []


async def test_pm_ids_are_kept_per_recipient(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session
) -> None:
    """A forwarded PM keeps its sender's id (receipts and corrections refer to it) unless
    that id is already pending for the same recipient; the error to each goes back once,
    with the sender's id."""
    await create(h, alice)
    await join(h, bob, "Bob")
    await join(h, carol, "Mallory")
    h.take(alice)
    h.take(bob)
    for nick in ("Alice", "Bob", "Bob"):
        await h.send(
            carol, f"<message type='chat' id='s' to='{ROOM}/{nick}'><body>x</body></message>"
        )
    to_alice = h.take_one(alice).get("id")
    to_bob = [e.get("id") for e in h.take(bob)]
    assert (to_alice, to_bob[0]) == ("s", "s")
    assert to_bob[1] not in ("s", None)  # the same id twice to Bob: the second is minted
    error = (
        "<message type='error' id='{}' to='{}/Mallory'><error type='cancel'>"
        f"<service-unavailable xmlns='{STANZAS}'/></error></message>"
    )
    for session, nick, forwarded in ((alice, "Alice", to_alice), (bob, "Bob", to_bob[0])):
        await h.send(session, error.format(forwarded, ROOM))
        bounced = h.take_one(carol)
        assert (bounced.get("from"), bounced.get("id")) == (f"{ROOM}/{nick}", "s")
    await h.send(bob, error.format(to_bob[0], ROOM))  # again: answers nothing pending now
    await h.send(alice, error.format(to_bob[1], ROOM))  # not Alice's to answer
    assert h.take(carol) == []
    assert set(room_of(h).occupants) == {"Alice", "Bob", "Mallory"}


async def test_error_answering_nothing_the_room_sent_is_dropped(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session
) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(
        bob,
        f"<message type='error' id='made-up' to='{ROOM}/Alice'><error type='cancel'>"
        f"<service-unavailable xmlns='{STANZAS}'/></error></message>",
    )
    assert h.take(alice) == []
    assert h.take(bob) == []
    assert "Bob" in room_of(h).occupants


async def test_pm_id_colliding_with_groupchat_id_is_rewritten(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session
) -> None:
    """Mallory reuses a groupchat message's id for a PM: Bob's error to it still reaches
    Mallory, never a bounce that ejects Bob."""
    await create(h, alice)
    await join(h, bob, "Bob")
    await join(h, carol, "Mallory")
    h.take(alice)
    h.take(bob)
    await h.send(alice, f"<message type='groupchat' id='g' to='{ROOM}'><body>x</body></message>")
    h.take(alice)
    h.take(bob)
    h.take(carol)
    await h.send(carol, f"<message type='chat' id='g' to='{ROOM}/Bob'><body>hi</body></message>")
    pm = h.take_one(bob)
    assert pm.get("id") != "g"
    room_of(h)._pending_pms.clear()  # even once the PM is forgotten
    await h.send(
        bob,
        f"<message type='error' id='{pm.get('id')}' to='{ROOM}/Mallory'><error type='cancel'>"
        f"<service-unavailable xmlns='{STANZAS}'/></error></message>",
    )
    assert "Bob" in room_of(h).occupants


# --- 3. role-change permissions (§8.2, §8.4, §9.7) -------------------------------------------
async def test_owner_may_not_revoke_voice_or_moderation_of_admin(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await create(h, alice)
    await admin(h, alice, "<item affiliation='admin' jid='bob@localhost'/>")
    await join(h, bob, "Bob")
    h.take(alice)
    reply = await admin(h, alice, "<item nick='Bob' role='visitor'/>")
    assert error_condition(reply) == "not-allowed"
    reply = await admin(h, alice, "<item nick='Bob' role='participant'/>")
    assert error_condition(reply) == "not-allowed"
    assert room_of(h).occupants["Bob"].role == "moderator"
    assert h.take(bob) == []
    # an admin neither silences nor demotes the owner
    reply = await admin(h, bob, "<item nick='Alice' role='visitor'/>")
    assert error_condition(reply) == "not-allowed"
    reply = await admin(h, bob, "<item nick='Alice' role='participant'/>")
    assert error_condition(reply) == "not-allowed"
    # §8.2: an owner may kick an admin (lower affiliation); an admin never an owner
    reply = await admin(h, bob, "<item nick='Alice' role='none'/>")
    assert error_condition(reply) == "not-allowed"
    reply = await admin(h, alice, "<item nick='Bob' role='none'/>")
    assert reply.get("type") == "result"
    assert codes(h.take_one(bob)) == {110, 307}


async def test_moderator_may_not_kick_or_silence_higher_affiliation(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session
) -> None:
    """Bob is a member made moderator; Carol an admin, Dave a member, Eve nobody."""
    dave = await h.connect("dave@localhost/d", priority=0)
    await create(h, alice)
    await admin(
        h,
        alice,
        "<item affiliation='member' jid='bob@localhost'/>"
        "<item affiliation='admin' jid='carol@localhost'/>"
        "<item affiliation='member' jid='dave@localhost'/>",
    )
    await configure(h, alice, {"muc#roomconfig_moderatedroom": "1"})
    await join(h, bob, "Bob")
    await join(h, carol, "Carol")
    await join(h, dave, "Dave")
    reply = await admin(h, alice, "<item nick='Bob' role='moderator'/>")
    assert reply.get("type") == "result"
    h.take(bob)
    reply = await admin(h, bob, "<item nick='Carol' role='none'/>")
    assert error_condition(reply) == "not-allowed"  # §8.2: higher affiliation
    reply = await admin(h, bob, "<item nick='Carol' role='visitor'/>")
    assert error_condition(reply) == "not-allowed"  # §8.4: admins keep their voice
    reply = await admin(h, bob, "<item nick='Dave' role='visitor'/>")
    assert error_condition(reply) == "not-allowed"  # §8.4: at the moderator's level
    reply = await admin(h, bob, "<item nick='Dave' role='none'/>")
    assert reply.get("type") == "result"  # §8.2: same affiliation, not higher
    assert set(room_of(h).occupants) == {"Alice", "Bob", "Carol"}
    assert room_of(h).occupants["Carol"].role == "moderator"


# --- 4. a subject with a body is a message (§8.1) -------------------------------------------
@pytest.mark.parametrize(
    "extra", ["<body>hello</body>", "<thread>t1</thread>", "<body>hello</body><thread>t</thread>"]
)
async def test_subject_with_body_or_thread_is_a_message(
    h: ModuleHarness, alice: Session, bob: Session, carol: Session, extra: str
) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")  # a participant: may not change the subject
    h.take(alice)
    await h.send(
        bob,
        f"<message type='groupchat' id='sb' to='{ROOM}'><subject>s</subject>{extra}</message>",
    )
    for session in (alice, bob):
        msg = h.take_one(session)
        assert msg.get("type") == "groupchat"
        assert msg.get("id") == "sb"
    room = room_of(h)
    assert room.subject == ""
    if "<body>" in extra:
        got = await join(h, carol, "Carol")
        assert bodies(got) == ["hello"]
        assert got[-1].findtext(SUBJECT) == ""  # the subject is still unset


async def test_subject_with_body_is_archived(h: ModuleHarness, alice: Session) -> None:
    await create(h, alice)
    await h.send(
        alice, f"<message type='groupchat' to='{ROOM}'><subject>s</subject><body>b</body></message>"
    )
    msg = h.take_one(alice)
    assert msg.find(SID) is not None
    module = muc(h)
    assert module.archive is not None
    await module.archive.settled()
    entries = await module.archive.last(room_of(h).jid, 10, incarnation=module.incarnations["room"])
    assert [e.findtext(BODY) for e, _when in entries] == ["b"]


# --- 5. a room being removed can still be joined ------------------------------------------------
async def test_room_being_removed_cannot_be_joined(
    h: ModuleHarness, alice: Session, bob: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the last occupant's leave is being sent, Bob creates a new room of the same name:
    he gets the new room, and the old room's removal wipes neither its record nor its
    archive."""
    await create(h, alice)
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>old</body></message>")
    h.take(alice)
    module = muc(h)
    old = room_of(h)
    service = module.service
    real_send = service.send
    meddled = False

    async def send(element: etree._Element) -> None:
        nonlocal meddled
        await real_send(element)
        if not meddled and element.get("type") == "unavailable":
            meddled = True
            await h.send(bob, f"<presence to='{ROOM}/Bob'>{X}</presence>")
            await h.send(
                bob,
                f"<iq type='set' id='cfg' to='{ROOM}'><query xmlns='{NS_MUC}#owner'>"
                f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'>"
                f"<value>{NS_MUC}#roomconfig</value></field>"
                "<field var='muc#roomconfig_persistentroom'><value>1</value></field>"
                "</x></query></iq>",
            )
            await h.send(bob, f"<message type='groupchat' to='{ROOM}'><body>new</body></message>")

    monkeypatch.setattr(service, "send", send)
    await h.send(alice, f"<presence to='{ROOM}/Alice' type='unavailable'/>")
    assert meddled
    got = h.take(bob)
    assert any(201 in codes(e) for e in got), [etree.tostring(e) for e in got]
    new = room_of(h)
    assert new is not old
    assert set(new.occupants) == {"Bob"}
    assert new.affiliations == {JID.parse("bob@localhost"): "owner"}
    assert await module.store.get("", "room/room") is not None  # the new room's record
    assert module.archive is not None
    await module.archive.settled()
    entries = await module.archive.last(new.jid, 10, incarnation=module.incarnations["room"])
    assert [e.findtext(BODY) for e, _when in entries] == ["new"]  # nothing of the old room


# --- 6. a forged stanza-id in another spelling ------------------------------------------------
async def test_forged_stanza_id_case_variant_is_stripped(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await create(h, alice)
    await join(h, bob, "Bob")
    h.take(alice)
    await h.send(
        bob,
        f"<message type='groupchat' to='{ROOM}'><body>x</body>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='Room@Conference.Localhost' id='forged1'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='room@conference.localhost/Alice' id='forged2'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='@@bad' id='forged3'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' id='forged4'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='kept'/></message>",
    )
    msg = h.take_one(alice)
    ids = {s.get("id") for s in msg.findall(SID)}
    assert "kept" in ids
    assert not ids & {"forged1", "forged2", "forged3", "forged4"}
    assert [s.get("by") for s in msg.findall(SID) if s.get("id") != "kept"] == [ROOM]


# --- 7. shutdown and occupants with two sessions -------------------------------------------------
async def test_shutdown_reaches_every_session(h: ModuleHarness, alice: Session) -> None:
    await create(h, alice)
    laptop = await h.connect("alice@localhost/laptop", priority=0)
    await join(h, laptop, "Alice")
    assert len(room_of(h).occupants["Alice"].sessions) == 2
    await muc(h)._shutdown(Shutdown())
    for session in (alice, laptop):
        gone = h.take_one(session)
        assert gone.get("type") == "unavailable"
        assert codes(gone) == {110, 332}


# --- 8. an invitation batch changes state before failing -------------------------------------
async def test_invitation_batch_is_all_or_nothing(
    h: ModuleHarness, alice: Session, carol: Session
) -> None:
    await create(h, alice)
    await configure(h, alice, {"muc#roomconfig_membersonly": "1"})
    h.take(alice)
    await h.send(
        alice,
        f"<message to='{ROOM}'><x xmlns='{NS_USER}'>"
        "<invite to='carol@localhost'/><invite to='@@bad'/></x></message>",
    )
    assert error_condition(h.take_one(alice)) == "jid-malformed"
    assert JID.parse("carol@localhost") not in room_of(h).affiliations
    assert h.take(carol) == []
    await h.send(
        alice,
        f"<message to='{ROOM}'><x xmlns='{NS_USER}'>"
        "<invite to='carol@localhost'/><decline/></x></message>",
    )
    assert error_condition(h.take_one(alice)) == "bad-request"
    assert JID.parse("carol@localhost") not in room_of(h).affiliations
    assert h.take(carol) == []


# --- 9. bounded rooms per user and affiliations per room -----------------------------------------
async def test_rooms_per_user_and_affiliations_are_bounded(tmp_path: Path) -> None:
    options = {"muc": {"max_rooms_per_user": 2, "max_affiliations": 3}}
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice", "bob", "carol", "dave"),
        modules_enabled=MODULES,
        modules=options,
    ) as h:
        alice = await h.connect("alice@localhost/phone", priority=0)
        bob = await h.connect("bob@localhost/pc", priority=0)
        await create(h, alice)
        await create(h, alice, room=f"two@{SERVICE}")
        await h.send(alice, f"<presence to='three@{SERVICE}/Alice'>{X}</presence>")
        assert error_condition(h.take_one(alice)) == "not-allowed"
        assert muc(h).room("three") is None
        await create(h, bob, nick="Bob", room=f"three@{SERVICE}")  # others still may
        # affiliations: owner + 2 members fill the room's lists
        reply = await admin(
            h,
            alice,
            "<item affiliation='member' jid='bob@localhost'/>"
            "<item affiliation='member' jid='carol@localhost'/>",
        )
        assert reply.get("type") == "result"
        reply = await admin(h, alice, "<item affiliation='outcast' jid='dave@localhost'/>")
        assert error_condition(reply) == "policy-violation"
        assert JID.parse("dave@localhost") not in room_of(h).affiliations
        # changing an entry, or swapping one for another, is fine
        reply = await admin(
            h,
            alice,
            "<item affiliation='none' jid='carol@localhost'/>"
            "<item affiliation='admin' jid='dave@localhost'/>",
        )
        assert reply.get("type") == "result"
        assert len(room_of(h).affiliations) == 3
        # a members-only room's invitation would add a member: refused as well
        await configure(h, alice, {"muc#roomconfig_membersonly": "1"})
        h.take(alice)
        await h.send(
            alice,
            f"<message to='{ROOM}'><x xmlns='{NS_USER}'><invite to='carol@localhost'/></x></message>",
        )
        assert error_condition(h.take_one(alice)) == "policy-violation"
        assert len(room_of(h).affiliations) == 3


# --- review 2: a re-created room never reads the destroyed room's archive ----------------------
def _mam_bodies(got: list[etree._Element]) -> list[str]:
    return [
        e.findtext(f"{{{NS_MAM}}}result/{{{NS_FORWARD}}}forwarded/{{jabber:client}}message/{BODY}")
        or ""
        for e in got
        if e.find(f"{{{NS_MAM}}}result") is not None
    ]


async def test_recreated_room_cannot_read_the_old_archive(
    h: ModuleHarness, alice: Session, bob: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old room's archive is still being deleted when Bob re-creates the room: as owner
    of the new (locked) room he may query its archive, and gets none of the old messages;
    the deletion then finishes in the background and forgets the old incarnation."""
    await create(h, alice)
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>old</body></message>")
    h.take(alice)
    module = muc(h)
    assert module.archive is not None
    old_incarnation = module.incarnations["room"]
    assert await module.store.get("", f"archive/{old_incarnation}") == ROOM
    archive = module.archive
    deleting, release = asyncio.Event(), asyncio.Event()
    real_remove = archive.remove

    async def slow_remove(*args: Any, **kwargs: Any) -> None:
        deleting.set()
        await release.wait()
        await real_remove(*args, **kwargs)

    monkeypatch.setattr(archive, "remove", slow_remove)
    leave = asyncio.create_task(h.send(alice, f"<presence to='{ROOM}/Alice' type='unavailable'/>"))
    await deleting.wait()
    await h.send(bob, f"<presence to='{ROOM}/Bob'>{X}</presence>")
    assert any(201 in codes(e) for e in h.take(bob))
    assert module.incarnations["room"] != old_incarnation
    await h.send(bob, f"<iq type='set' id='q' to='{ROOM}'><query xmlns='{NS_MAM}'/></iq>")
    got = h.take(bob)
    assert got[-1].get("type") == "result", [etree.tostring(e) for e in got]
    assert _mam_bodies(got) == []
    release.set()
    await leave
    await module.cleaned()
    assert await module.store.get("", f"archive/{old_incarnation}") is None
    assert await archive.store.items(archive_key(JID.parse(ROOM), old_incarnation)) == []


async def test_orphaned_archives_are_deleted_on_start(tmp_path: Path) -> None:
    """A room gone without its archive deleted (a crash): the next start deletes that archive;
    a persistent room keeps its archive, and its incarnation, across the restart."""
    overrides = {"storage": "sqlite", "data_dir": str(tmp_path / "data")}
    async with ModuleHarness.started(
        tmp_path, accounts=("alice",), modules_enabled=MODULES, **overrides
    ) as h:
        alice = await h.connect("alice@localhost/phone", priority=0)
        module = muc(h)
        await create(h, alice, room=f"kept@{SERVICE}")
        await configure_room(h, alice, f"kept@{SERVICE}")
        await h.send(
            alice, f"<message type='groupchat' to='kept@{SERVICE}'><body>k</body></message>"
        )
        await create(h, alice)
        await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>lost</body></message>")
        h.take(alice)
        kept, lost = module.incarnations["kept"], module.incarnations["room"]
        module._remove_archive = lambda room, incarnation: None  # type: ignore[method-assign]
        await h.send(alice, f"<presence to='{ROOM}/Alice' type='unavailable'/>")  # "crash"
        assert module.room("room") is None
    async with ModuleHarness.started(
        tmp_path, accounts=(), modules_enabled=MODULES, **overrides
    ) as h:
        module = muc(h)
        assert module.archive is not None
        await module.cleaned()
        assert module.incarnations["kept"] == kept
        assert await module.store.get("", f"archive/{lost}") is None
        assert await module.store.get("", f"archive/{kept}") == f"kept@{SERVICE}"
        store = module.archive.store
        assert await store.items(archive_key(JID.parse(ROOM), lost)) == []
        entries = await module.archive.last(JID.parse(f"kept@{SERVICE}"), 5, incarnation=kept)
        assert [e.findtext(BODY) for e, _ in entries] == ["k"]


async def configure_room(h: ModuleHarness, owner: Session, room: str) -> None:
    await h.send(
        owner,
        f"<iq type='set' id='cfg' to='{room}'><query xmlns='{NS_MUC}#owner'>"
        f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'>"
        f"<value>{NS_MUC}#roomconfig</value></field>"
        "<field var='muc#roomconfig_persistentroom'><value>1</value></field>"
        "</x></query></iq>",
    )
    assert h.take(owner)[0].get("type") == "result"  # then status 104 (config changed)


# --- review 3: client-chosen ids, PM errors, forged stanza ids in PMs --------------------------
R_ROOM = JID.parse(ROOM)
R_ALICE = JID.parse("alice@localhost/a")
R_ALICE2 = JID.parse("alice@localhost/a2")
R_VICTIM = JID.parse("victim@remote.example/v")


def _room(**config: Any) -> Room:
    room = Room(R_ROOM, RoomConfig(**config), b"k" * 32, limits=Limits())
    room.locked = False
    for jid, nick in ((R_ALICE, "att"), (R_VICTIM, "vic"), (R_ALICE2, "sock")):
        room.presence(parse_element(f"<presence><x xmlns='{NS_MUC}'/></presence>"), jid, nick, 1.0)
    return room


def _pm(room: Room, stanza_id: str, to: str = "vic", extra: str = "") -> etree._Element:
    xml = f"<message type='chat' id='{stanza_id}'><body>z</body>{extra}</message>"
    (out,) = room.private_message(parse_element(xml), R_ALICE, to).out
    return out.element


def _pm_error(room: Room, stanza_id: str, error: str = "") -> list[etree._Element]:
    error = error or f"<error type='cancel'><service-unavailable xmlns='{STANZAS}'/></error>"
    xml = f"<message type='error' id='{stanza_id}'>{error}</message>"
    return [o.element for o in room.private_message(parse_element(xml), R_VICTIM, "att").out]


def test_huge_client_ids_are_not_kept() -> None:
    """Ids are limited only by the stanza size: 40 groupchat messages and 40 PMs with 100 KB
    ids kept 8 MB in the room before; the room keeps digests and a bounded budget now."""
    room = _room(history_length=0)
    big = "x" * 100_000
    tracemalloc.start()
    try:
        for n in range(40):
            xml = f"<message type='groupchat' id='{n}{big}'><body>y</body></message>"
            room.message(parse_element(xml), R_ALICE, 2.0)
            last = _pm(room, f"p{n}{big}", to="sock")
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained < 1_000_000
    assert all(len(key) <= 32 for key in room._sent_ids)
    assert all(len(key) <= 32 for key, _ in room._pending_pms)
    # the most recent PM's error still goes back with its sender's (long) id
    xml = (
        f"<message type='error' id='{last.get('id')}'><error type='cancel'>"
        f"<service-unavailable xmlns='{STANZAS}'/></error></message>"
    )
    (answer,) = room.private_message(parse_element(xml), R_ALICE2, "att").out
    assert answer.element.get("id") == f"p39{big}"
    # and a bounce of a long-id groupchat message is still known as one (status 333)
    xml = (
        f"<message type='error' id='39{big}'><error type='cancel'>"
        f"<service-unavailable xmlns='{STANZAS}'/></error></message>"
    )
    room.private_message(parse_element(xml), R_VICTIM, "att")
    assert "vic" not in room.occupants


def test_pm_id_reused_for_groupchat_cannot_eject_recipient() -> None:
    """The attacker's PM id becomes a groupchat id, then the PM is pushed out of the pending
    list: the victim's bounce of the PM used to look like a groupchat bounce (333). A PM's
    id is never recorded as a groupchat id now."""
    room = _room()
    forwarded = _pm(room, "I")
    assert forwarded.get("id") == "I"  # the sender's id, kept for receipts and corrections
    room.message(
        parse_element("<message type='groupchat' id='I'><body>y</body></message>"), R_ALICE, 2.0
    )
    for n in range(MAX_PENDING_PMS):
        _pm(room, f"f{n}", to="sock")
    assert _pm_error(room, forwarded.get("id") or "") == []
    assert "vic" in room.occupants


def test_pm_error_reveals_nothing_of_the_recipient() -> None:
    room = _room()  # semi-anonymous
    assert not room.config.non_anonymous
    forwarded = _pm(room, "p1")
    (answer,) = _pm_error(
        room,
        forwarded.get("id") or "",
        f"<error type='wait' by='{R_VICTIM}'><resource-constraint xmlns='{STANZAS}'/>"
        f"<text xmlns='{STANZAS}'>victim@remote.example is busy</text>"
        "<app xmlns='urn:example'>victim@remote.example/v</app></error>"
        f"<body>victim@remote.example</body>",
    )
    assert b"victim" not in etree.tostring(answer)
    assert (answer.get("type"), answer.get("id"), answer.get("from")) == (
        "error",
        "p1",
        f"{ROOM}/vic",
    )
    assert answer.get("to") == str(R_ALICE)
    assert error_condition(answer) == "resource-constraint"
    (error,) = answer
    assert (error.get("type"), len(error)) == ("wait", 1)
    # a malformed error still yields a well-formed one
    forwarded = _pm(room, "p2")
    (answer,) = _pm_error(room, forwarded.get("id") or "", "<error type='bogus'><x/></error>")
    assert error_condition(answer) == "undefined-condition"
    assert answer[0].get("type") == "cancel"


def test_pm_forged_room_stanza_id_is_stripped() -> None:
    room = _room()
    forwarded = _pm(
        room,
        "p",
        extra=f"<stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM.upper()}' id='forged'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' by='other@localhost' id='theirs'/>",
    )
    assert [s.get("id") for s in forwarded.iter(SID)] == ["theirs"]


# --- review 3: room limits count rooms created, not rooms owned; a service-wide cap ----------
async def test_rooms_per_user_counts_rooms_created(tmp_path: Path) -> None:
    """Handing ownership away does not free a slot; being made owner of others' rooms does
    not use one; a room that is gone frees its slot."""
    options = {"muc": {"max_rooms_per_user": 2}}
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob"), modules_enabled=MODULES, modules=options
    ) as h:
        alice = await h.connect("alice@localhost/phone", priority=0)
        bob = await h.connect("bob@localhost/pc", priority=0)
        # Bob makes Alice owner of his room: Alice may still create two of her own
        await create(h, bob, nick="Bob")
        reply = await admin(h, bob, "<item affiliation='owner' jid='alice@localhost'/>")
        assert reply.get("type") == "result"
        h.take(alice)
        await create(h, alice, room=f"one@{SERVICE}")
        await create(h, alice, room=f"two@{SERVICE}")
        # Alice hands "one" to a bogus owner and drops her own affiliation: still hers
        await h.send(
            alice,
            f"<iq type='set' id='adm' to='one@{SERVICE}'><query xmlns='{NS_MUC}#admin'>"
            "<item affiliation='owner' jid='bogus@elsewhere.example'/>"
            "<item affiliation='none' jid='alice@localhost'/></query></iq>",
        )
        replies = [e for e in h.take(alice) if e.get("id") == "adm"]
        assert [r.get("type") for r in replies] == ["result"]
        assert JID.parse("alice@localhost") not in room_of(h, "one").affiliations
        await h.send(alice, f"<presence to='three@{SERVICE}/Alice'>{X}</presence>")
        assert error_condition(h.take_one(alice)) == "not-allowed"
        assert muc(h).room("three") is None
        # leaving the temporary room "two" makes it gone: a slot is free again
        await h.send(alice, f"<presence to='two@{SERVICE}/Alice' type='unavailable'/>")
        h.take(alice)
        assert muc(h).room("two") is None
        await create(h, alice, room=f"three@{SERVICE}")


async def test_rooms_created_survive_a_restart(tmp_path: Path) -> None:
    overrides = {"storage": "sqlite", "data_dir": str(tmp_path / "data")}
    options = {"muc": {"max_rooms_per_user": 1}}
    for accounts in (("alice",), ()):
        async with ModuleHarness.started(
            tmp_path, accounts=accounts, modules_enabled=MODULES, modules=options, **overrides
        ) as h:
            alice = await h.connect("alice@localhost/phone", priority=0)
            if muc(h).room("kept") is None:
                await create(h, alice, room=f"kept@{SERVICE}")
                await configure_room(h, alice, f"kept@{SERVICE}")
                await h.send(
                    alice,
                    f"<iq type='set' id='adm' to='kept@{SERVICE}'><query xmlns='{NS_MUC}#admin'>"
                    "<item affiliation='owner' jid='bogus@elsewhere.example'/>"
                    "<item affiliation='none' jid='alice@localhost'/></query></iq>",
                )
                h.take(alice)
                continue
            assert muc(h).created[JID.parse("alice@localhost")] == 1
            await h.send(alice, f"<presence to='{ROOM}/Alice'>{X}</presence>")
            assert error_condition(h.take_one(alice)) == "not-allowed"
            assert muc(h).room("room") is None


async def test_service_wide_room_cap(tmp_path: Path) -> None:
    options = {"muc": {"max_rooms": 1}}
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob"), modules_enabled=MODULES, modules=options
    ) as h:
        alice = await h.connect("alice@localhost/phone", priority=0)
        bob = await h.connect("bob@localhost/pc", priority=0)
        await create(h, alice)
        await h.send(bob, f"<presence to='two@{SERVICE}/Bob'>{X}</presence>")
        assert error_condition(h.take_one(bob)) == "not-allowed"
        assert muc(h).room("two") is None
        got = await join(h, bob, "Bob")  # entering an existing room is not creating one
        assert any(110 in codes(e) for e in got)


# --- review 3: an over-limit invitation batch is refused before any account lookup ---------
async def test_invitation_batch_over_limit_looks_nothing_up(
    h: ModuleHarness, alice: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create(h, alice)
    h.take(alice)
    services = muc(h).ctx.services
    lookups: list[str] = []
    real = services.account_exists

    async def counting(domain: str, local: str) -> bool:
        lookups.append(local)
        return await real(domain, local)

    monkeypatch.setattr(services, "account_exists", counting)
    invites = "".join(f"<invite to='u{n}@localhost'/>" for n in range(MAX_INVITES + 1))
    await h.send(alice, f"<message to='{ROOM}'><x xmlns='{NS_USER}'>{invites}</x></message>")
    assert error_condition(h.take_one(alice)) == "policy-violation"
    assert lookups == []
    await h.send(
        alice,
        f"<message to='{ROOM}'><x xmlns='{NS_USER}'><invite to='u0@localhost'/></x></message>",
    )
    assert lookups == ["u0"]  # within the limit, invitees are still checked


# --- review 3: no half-done state when a step fails -------------------------------------------
async def test_failed_archive_note_sends_unarchived(
    h: ModuleHarness, alice: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive note is written at the first archived message (not at creation, where a
    failure left the creator in a locked room); if it fails, the message goes out unarchived."""
    import xeps.muc as muc_module

    calls: list[str] = []

    async def broken(*args: Any) -> None:
        calls.append("register")
        raise RuntimeError("store down")

    monkeypatch.setattr(muc_module, "register_archive", broken)
    await create(h, alice)
    assert calls == []
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>a</body></message>")
    (echo,) = h.take(alice)
    assert echo.findtext(BODY) == "a"
    assert echo.find(SID) is None
    assert calls == ["register"]
    monkeypatch.undo()
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>b</body></message>")
    assert h.take_one(alice).find(SID) is not None
    incarnation = muc(h).incarnations["room"]
    assert await muc(h).store.get("", f"archive/{incarnation}") == ROOM


async def test_failed_send_still_cleans_up_a_gone_room(
    h: ModuleHarness, alice: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create(h, alice)
    await h.send(alice, f"<message type='groupchat' to='{ROOM}'><body>a</body></message>")
    h.take(alice)
    module = muc(h)
    incarnation = module.incarnations["room"]
    assert await module.store.get("", f"archive/{incarnation}") is not None

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("send failed")

    monkeypatch.setattr(module.service, "send", broken)
    await h.send(alice, f"<presence to='{ROOM}/Alice' type='unavailable'/>")
    monkeypatch.undo()
    h.take(alice)
    assert module.room("room") is None
    await module.cleaned()
    assert await module.store.get("", f"archive/{incarnation}") is None


# --- review 3: archive bookkeeping only for rooms that archive --------------------------------
async def test_room_that_archived_nothing_costs_no_archive_work(
    h: ModuleHarness, alice: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = muc(h)
    assert module.archive is not None
    removed: list[str] = []

    async def remove(room: JID, *, incarnation: str = "") -> None:
        removed.append(incarnation)

    monkeypatch.setattr(module.archive, "remove", remove)
    await create(h, alice)
    incarnation = module.incarnations["room"]
    await h.send(alice, f"<presence to='{ROOM}/Alice' type='unavailable'/>")
    h.take(alice)
    await module.cleaned()
    assert module.room("room") is None
    assert await module.store.get("", f"archive/{incarnation}") is None
    assert removed == []
    assert incarnation not in module._archived


async def test_archive_deletions_run_one_at_a_time(
    h: ModuleHarness, alice: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = muc(h)
    archive = module.archive
    assert archive is not None
    real_remove = archive.remove
    running: list[str] = []
    most = 0
    release, started = asyncio.Event(), asyncio.Event()

    async def slow_remove(room: JID, *, incarnation: str = "") -> None:
        nonlocal most
        started.set()
        running.append(incarnation)
        most = max(most, len(running))
        await release.wait()
        await real_remove(room, incarnation=incarnation)
        running.remove(incarnation)

    monkeypatch.setattr(archive, "remove", slow_remove)
    incarnations = []
    for n in range(3):
        room = f"r{n}@{SERVICE}"
        await create(h, alice, room=room)
        await h.send(alice, f"<message type='groupchat' to='{room}'><body>x</body></message>")
        incarnations.append(module.incarnations[f"r{n}"])
        await h.send(alice, f"<presence to='{room}/Alice' type='unavailable'/>")
        h.take(alice)
    try:
        await started.wait()
        assert running == incarnations[:1]
    finally:
        release.set()  # never leave a deletion blocked for the shutdown
    await module.cleaned()
    assert most == 1
    for incarnation in incarnations:
        assert await module.store.get("", f"archive/{incarnation}") is None


def test_history_is_bounded_in_bytes_too() -> None:
    """A hostile occupant's stanzas may be as large as the stream allows: the discussion
    history keeps at most max_history_bytes, oldest dropped first, whatever its length."""
    room = Room(
        R_ROOM,
        RoomConfig(history_length=100),
        b"k" * 32,
        limits=Limits(max_history_bytes=50_000),
    )
    room.locked = False
    room.presence(parse_element(f"<presence><x xmlns='{NS_MUC}'/></presence>"), R_ALICE, "att", 1.0)
    big = "b" * 20_000
    for n in range(5):
        xml = f"<message type='groupchat' id='m{n}'><body>{n}{big}</body></message>"
        room.message(parse_element(xml), R_ALICE, 2.0)
    assert [e.element.findtext(BODY)[:1] for e in room.history] == ["3", "4"]
    assert sum(e.chars for e in room.history) <= 50_000
    # small messages keep the length limit as before
    for n in range(5, 8):
        room.message(
            parse_element(f"<message type='groupchat'><body>{n}</body></message>"), R_ALICE, 3.0
        )
    assert [e.element.findtext(BODY)[:1] for e in room.history] == ["3", "4", "5", "6", "7"]
    # a lower budget after a restart's refill applies too
    room.refill_history((e.element, e.when) for e in list(room.history))
    assert len(room.history) == 5
