"""XEP-0049 Private XML Storage (xeps/private.py).

Tier 2: a real Server on memory storage (SQLite for the restart test), fake sessions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xmppd.session import Session

NS = "jabber:iq:private"
QUERY = f"{{{NS}}}query"
BOOKMARKS = "storage:bookmarks"
MODULES = ["disco", "private"]


def private(type_: str, body: str, to: str = "", id_: str = "p1") -> str:
    to_attr = f" to='{to}'" if to else ""
    return f"<iq type='{type_}' id='{id_}'{to_attr}><query xmlns='{NS}'>{body}</query></iq>"


STORED = f"<storage xmlns='{BOOKMARKS}'><conference jid='tea@conference.localhost'/></storage>"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob"), modules_enabled=MODULES
    ) as harness:
        yield harness


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/home")


async def test_get_of_nothing_stored_returns_the_empty_element(
    h: ModuleHarness, alice: Session
) -> None:
    await h.send(alice, private("get", f"<storage xmlns='{BOOKMARKS}'/>"))
    reply = h.take_one(alice)
    assert reply.get("type") == "result"
    storage = reply.find(f"{QUERY}/{{{BOOKMARKS}}}storage")
    assert storage is not None
    assert len(storage) == 0


async def test_set_then_get(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, private("set", STORED))
    assert h.take_one(alice).get("type") == "result"
    await h.send(alice, private("get", f"<storage xmlns='{BOOKMARKS}'/>"))
    conference = h.take_one(alice).find(f"{QUERY}/{{{BOOKMARKS}}}storage/{{{BOOKMARKS}}}conference")
    assert conference is not None
    assert conference.get("jid") == "tea@conference.localhost"


async def test_namespaces_are_kept_apart(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, private("set", STORED))
    await h.send(alice, private("set", "<prefs xmlns='urn:example:prefs'><a>1</a></prefs>"))
    h.take(alice)
    await h.send(alice, private("get", "<prefs xmlns='urn:example:prefs'/>"))
    assert (
        h.take_one(alice).findtext(f"{QUERY}/{{urn:example:prefs}}prefs/{{urn:example:prefs}}a")
        == "1"
    )
    await h.send(alice, private("get", f"<storage xmlns='{BOOKMARKS}'/>"))
    assert h.take_one(alice).find(f".//{{{BOOKMARKS}}}conference") is not None


async def test_each_account_has_its_own_data(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, private("set", STORED))
    h.take(alice)
    bob = await h.connect("bob@localhost/work")
    await h.send(bob, private("get", f"<storage xmlns='{BOOKMARKS}'/>"))
    assert h.take_one(bob).find(f".//{{{BOOKMARKS}}}conference") is None


@pytest.mark.parametrize("type_", ["get", "set"])
async def test_another_users_data_is_forbidden(
    h: ModuleHarness, alice: Session, type_: str
) -> None:
    bob = await h.connect("bob@localhost/work")
    await h.send(bob, private(type_, STORED, to="alice@localhost"))
    assert error_condition(h.take_one(bob)) == "forbidden"


@pytest.mark.parametrize("ns", ["jabber:client", "jabber:server", NS])
@pytest.mark.parametrize("type_", ["get", "set"])
async def test_reserved_namespaces_are_not_acceptable(
    h: ModuleHarness, alice: Session, ns: str, type_: str
) -> None:
    await h.send(alice, private(type_, f"<data xmlns='{ns}'>x</data>"))
    assert error_condition(h.take_one(alice)) == "not-acceptable"


async def test_reserved_namespace_in_a_multi_element_set_stores_nothing(
    h: ModuleHarness, alice: Session
) -> None:
    await h.send(alice, private("set", STORED + "<message xmlns='jabber:client'/>"))
    assert error_condition(h.take_one(alice)) == "not-acceptable"
    await h.send(alice, private("get", f"<storage xmlns='{BOOKMARKS}'/>"))
    assert h.take_one(alice).find(f".//{{{BOOKMARKS}}}conference") is None


@pytest.mark.parametrize("type_", ["get", "set"])
async def test_empty_query_is_not_acceptable(h: ModuleHarness, alice: Session, type_: str) -> None:
    await h.send(alice, private(type_, ""))
    assert error_condition(h.take_one(alice)) == "not-acceptable"


async def test_oversize_fragment_is_not_acceptable(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, modules={"private": {"max_size": 512}}
    ) as h:
        alice = await h.connect("alice@localhost/home")
        await h.send(alice, private("set", f"<big xmlns='urn:big'>{'x' * 1000}</big>"))
        assert error_condition(h.take_one(alice)) == "not-acceptable"


async def test_private_data_survives_a_restart(tmp_path: Path) -> None:
    async with ModuleHarness.started(tmp_path, modules_enabled=MODULES, storage="sqlite") as h:
        alice = await h.connect("alice@localhost/home")
        await h.send(alice, private("set", STORED))
        assert h.take_one(alice).get("type") == "result"
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, storage="sqlite", accounts=()
    ) as h:
        alice = await h.connect("alice@localhost/home")
        await h.send(alice, private("get", f"<storage xmlns='{BOOKMARKS}'/>"))
        assert h.take_one(alice).find(f".//{{{BOOKMARKS}}}conference") is not None


async def test_several_elements_of_one_namespace_are_kept_together(
    h: ModuleHarness, alice: Session
) -> None:
    """XEP-0049 §2: a set (and so the result) may hold several elements of one namespace."""
    two = "<note xmlns='urn:example:notes'>one</note><note xmlns='urn:example:notes'>two</note>"
    await h.send(alice, private("set", two))
    assert h.take_one(alice).get("type") == "result"
    await h.send(alice, private("get", "<note xmlns='urn:example:notes'/>"))
    notes = h.take_one(alice).findall(f"{QUERY}/{{urn:example:notes}}note")
    assert [n.text for n in notes] == ["one", "two"]


async def test_get_of_two_namespaces_is_not_acceptable(h: ModuleHarness, alice: Session) -> None:
    await h.send(alice, private("get", f"<storage xmlns='{BOOKMARKS}'/><p xmlns='urn:p'/>"))
    assert error_condition(h.take_one(alice)) == "not-acceptable"


async def test_namespace_count_is_limited(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, modules={"private": {"max_namespaces": 2}}
    ) as h:
        alice = await h.connect("alice@localhost/home")
        for i in range(2):
            await h.send(alice, private("set", f"<d xmlns='urn:n{i}'/>"))
            assert h.take_one(alice).get("type") == "result"
        await h.send(alice, private("set", "<d xmlns='urn:n0'>replaced</d>"))
        assert h.take_one(alice).get("type") == "result"  # replacing is fine
        await h.send(alice, private("set", "<d xmlns='urn:n2'/>"))
        assert error_condition(h.take_one(alice)) == "not-acceptable"


async def test_text_after_an_element_is_not_stored(h: ModuleHarness, alice: Session) -> None:
    """Only the element is the namespace's data: text after it would make it unreadable."""
    await h.send(alice, private("set", "<a xmlns='urn:example:x'><b/></a>junk"))
    assert h.take_one(alice).get("type") == "result"
    await h.send(alice, private("get", "<a xmlns='urn:example:x'/>"))
    reply = h.take_one(alice)
    assert reply.find(f"{QUERY}/{{urn:example:x}}a/{{urn:example:x}}b") is not None
    assert "junk" not in etree.tostring(reply).decode()


async def test_rows_stored_with_text_after_them_are_still_read(
    h: ModuleHarness, alice: Session
) -> None:
    module = h.host().modules["private"]
    store = module.ctx.keyvalue("private")
    await store.set(
        "alice",
        "urn:example:x",
        ["<a xmlns='urn:example:x'><b/></a>junk", "<c xmlns='urn:example:x'/>more"],
    )
    await h.send(alice, private("get", "<a xmlns='urn:example:x'/>"))
    query = h.take_one(alice).find(QUERY)
    assert query is not None
    assert [etree.QName(c).localname for c in query] == ["a", "c"]
    assert query[0].find("{urn:example:x}b") is not None
    assert "junk" not in etree.tostring(query).decode()
