"""XEP-0054 vcard-temp (xeps/vcard.py) and XEP-0153 avatar hashes in presence
(xeps/vcard_avatar.py).

Tier 2: a real Server on memory storage (SQLite for the restart test), fake sessions.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xeps.vcard import photo_hash
from xmppd.session import Session

NS = "vcard-temp"
VCARD = f"{{{NS}}}vCard"
UPDATE = "{vcard-temp:x:update}x"
PHOTO = "{vcard-temp:x:update}photo"
IMAGE = b"\x89PNG\r\n\x1a\n not really a png"
IMAGE_SHA1 = hashlib.sha1(IMAGE).hexdigest()
MODULES = ["disco", "vcard", "vcard_avatar"]


def vcard_set(body: str, to: str = "", id_: str = "v1") -> str:
    to_attr = f" to='{to}'" if to else ""
    return f"<iq type='set' id='{id_}'{to_attr}><vCard xmlns='{NS}'>{body}</vCard></iq>"


def vcard_get(to: str = "", id_: str = "g1") -> str:
    to_attr = f" to='{to}'" if to else ""
    return f"<iq type='get' id='{id_}'{to_attr}><vCard xmlns='{NS}'/></iq>"


PHOTO_BODY = (
    f"<FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>"
    f"<BINVAL>{base64.b64encode(IMAGE).decode()}</BINVAL></PHOTO>"
)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob"), modules_enabled=MODULES
    ) as harness:
        yield harness


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/home")


@pytest.fixture
async def bob(h: ModuleHarness) -> Session:
    return await h.connect("bob@localhost/work")


async def test_own_vcard_is_empty_before_any_set(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, vcard_get())
    reply = h.take_one(alice)
    assert reply.get("type") == "result"
    (card,) = reply
    assert card.tag == VCARD
    assert len(card) == 0


async def test_set_then_get_own_vcard(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, vcard_set("<FN>Alice Liddell</FN><NICKNAME>al</NICKNAME>"))
    assert h.take_one(alice).get("type") == "result"
    await h.send(alice, vcard_get(to="alice@localhost"))
    reply = h.take_one(alice)
    assert reply.get("from") == "alice@localhost"
    assert reply.findtext(f"{VCARD}/{{{NS}}}FN") == "Alice Liddell"
    assert reply.findtext(f"{VCARD}/{{{NS}}}NICKNAME") == "al"


async def test_another_user_reads_the_vcard_from_the_bare_jid(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await h.send(alice, vcard_set("<FN>Alice</FN>"))
    h.take(alice)
    await h.send(bob, vcard_get(to="alice@localhost"))
    reply = h.take_one(bob)
    assert reply.get("type") == "result"
    assert reply.get("from") == "alice@localhost"
    assert reply.findtext(f"{VCARD}/{{{NS}}}FN") == "Alice"
    assert h.take(alice) == []  # answered by the server, not by alice's client


async def test_setting_another_users_vcard_is_forbidden(
    h: ModuleHarness, alice: Session, bob: Session
) -> None:
    await h.send(bob, vcard_set("<FN>Not Alice</FN>", to="alice@localhost"))
    assert error_condition(h.take_one(bob)) == "forbidden"
    await h.send(alice, vcard_get())
    assert h.take_one(alice).find(f"{VCARD}/{{{NS}}}FN") is None


async def test_vcard_of_unknown_account_is_service_unavailable(
    h: ModuleHarness, alice: Session
) -> None:
    await h.send(alice, vcard_get(to="nobody@localhost"))
    assert error_condition(h.take_one(alice)) == "service-unavailable"


async def test_oversize_vcard_is_not_acceptable_and_not_stored(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, modules={"vcard": {"max_size": 1024}}
    ) as h:
        alice = await h.connect("alice@localhost/home")
        await h.send(alice, vcard_set("<FN>small</FN>"))
        assert h.take_one(alice).get("type") == "result"
        await h.send(alice, vcard_set(f"<DESC>{'x' * 2000}</DESC>"))
        assert error_condition(h.take_one(alice)) == "not-acceptable"
        await h.send(alice, vcard_get())
        assert h.take_one(alice).findtext(f"{VCARD}/{{{NS}}}FN") == "small"


async def test_empty_vcard_set_removes_it(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, vcard_set("<FN>Alice</FN>"))
    await h.send(alice, vcard_set(""))
    h.take(alice)
    await h.send(alice, vcard_get())
    assert len(h.take_one(alice)[0]) == 0


async def test_vcard_survives_a_restart(tmp_path: Path) -> None:
    async with ModuleHarness.started(tmp_path, modules_enabled=MODULES, storage="sqlite") as h:
        alice = await h.connect("alice@localhost/home")
        await h.send(alice, vcard_set("<FN>Persistent Alice</FN>"))
        assert h.take_one(alice).get("type") == "result"
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, storage="sqlite", accounts=()
    ) as h:
        bob = await h.connect("bob@localhost/work")
        await h.send(bob, vcard_get(to="alice@localhost"))
        assert h.take_one(bob).findtext(f"{VCARD}/{{{NS}}}FN") == "Persistent Alice"


# --- XEP-0153 -----------------------------------------------------------------------------------


def test_photo_hash_is_sha1_of_decoded_binval() -> None:
    card = etree.fromstring(f"<vCard xmlns='{NS}'>{PHOTO_BODY}</vCard>")
    assert photo_hash(card) == IMAGE_SHA1
    assert photo_hash(etree.fromstring(f"<vCard xmlns='{NS}'><FN>x</FN></vCard>")) == ""
    bad = f"<vCard xmlns='{NS}'><PHOTO><BINVAL>!!not base64!!</BINVAL></PHOTO></vCard>"
    assert photo_hash(etree.fromstring(bad)) == ""


async def test_presence_gets_empty_photo_without_avatar(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, "<presence/>")
    (echo,) = h.take(alice)
    photo = echo.find(f"{UPDATE}/{PHOTO}")
    assert photo is not None
    assert not photo.text


async def test_presence_gets_photo_hash_of_stored_avatar(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, vcard_set(PHOTO_BODY))
    h.take(alice)
    await h.send(alice, "<presence><show>away</show></presence>")
    (echo,) = h.take(alice)
    assert echo.findtext(f"{UPDATE}/{PHOTO}") == IMAGE_SHA1


async def test_hash_follows_a_vcard_change(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, "<presence/>")
    h.take(alice)
    await h.send(alice, vcard_set(PHOTO_BODY))
    h.take(alice)
    await h.send(alice, "<presence/>")
    assert h.take_one(alice).findtext(f"{UPDATE}/{PHOTO}") == IMAGE_SHA1


async def test_client_supplied_update_is_left_alone(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, vcard_set(PHOTO_BODY))
    h.take(alice)
    # XEP-0153 §4.1: an empty <x/> means "not ready to advertise": the server must not fill it.
    await h.send(alice, "<presence><x xmlns='vcard-temp:x:update'/></presence>")
    (echo,) = h.take(alice)
    assert len(echo.findall(UPDATE)) == 1
    assert echo.find(f"{UPDATE}/{PHOTO}") is None


async def test_unavailable_presence_is_not_stamped(h: ModuleHarness) -> None:
    one = await h.connect("alice@localhost/one", priority=0)
    two = await h.connect("alice@localhost/two", priority=0)
    await h.send(one, "<presence type='unavailable'/>")
    (seen,) = h.take(two)
    assert seen.get("type") == "unavailable"
    assert seen.find(UPDATE) is None
