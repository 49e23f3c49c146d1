"""XEP-0402 §5.3 bookmarks compat (xeps/bookmarks.py): private-storage storage:bookmarks seen
as Bookmarks 2 PEP items.

Tier 2: a real Server on memory storage, fake sessions. Every test runs twice: against a small
in-test PEP stand-in (it answers PEP_REQUEST as events.py documents, and records what it was
asked) and against the real PEP module. Tests that look at what the stand-in recorded use the
`fake` fixture only.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xeps.bookmarks import Bookmarks
from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.jid import JID
from xmppd.module_api import Module, hook
from xmppd.session import Session

NS = "jabber:iq:private"
QUERY = f"{{{NS}}}query"
LEGACY = "storage:bookmarks"
B2 = "urn:xmpp:bookmarks:1"
DISCO = "http://jabber.org/protocol/disco#info"
ALICE = JID.parse("alice@localhost")
REQUIRED_OPTIONS = {
    "pubsub#persist_items": ["true"],
    "pubsub#max_items": ["max"],
    "pubsub#send_last_published_item": ["never"],
    "pubsub#access_model": ["whitelist"],
}


class FakePep(Module):
    """A PEP stand-in: items per (owner, node), oldest first; PEP_CHANGED after each change."""

    name = "fakepep"

    def __init__(self, ctx: object) -> None:
        super().__init__(ctx)  # type: ignore[arg-type]
        self.nodes: dict[tuple[JID, str], dict[str, etree._Element]] = {}
        self.requests: list[ev.PepRequest] = []
        self.refuse: StanzaError | None = None
        # Refuse some writes (e.g. PEP's own checks failing half-way through a write).
        self.fail: Callable[[ev.PepRequest], StanzaError | None] | None = None
        # Run when a write is stored, before its PEP_CHANGED (another session acting then).
        self.during: Callable[[ev.PepRequest], Awaitable[None]] | None = None

    @hook(ev.PEP_REQUEST)
    async def request(self, req: ev.PepRequest) -> bool:
        self.requests.append(req)
        node = self.nodes.setdefault((req.owner, req.node), {})
        if req.action in ("publish", "retract") and self.refuse is not None:
            req.error = self.refuse
            return True
        fail = self.fail if req.action in ("publish", "retract") else None
        if fail is not None and (error := fail(req)) is not None:
            req.error = error
            return True
        if req.action == "items":
            req.items = [(k, copy.deepcopy(v)) for k, v in node.items()]
            return True
        if req.action == "publish":
            assert req.item_id is not None
            assert req.payload is not None
            node.pop(req.item_id, None)
            node[req.item_id] = copy.deepcopy(req.payload)
        elif req.action == "retract":
            assert req.item_id is not None
            if node.pop(req.item_id, None) is None:
                req.error = StanzaError("item-not-found")
                return True
        else:
            node.clear()
        if self.during is not None and req.action in ("publish", "retract"):
            await self.during(req)
        await self.ctx.notify(
            ev.PEP_CHANGED, ev.PepChanged(req.owner, req.node, req.action, req.item_id, req.payload)
        )
        return True

    def published(self) -> list[ev.PepRequest]:
        return [r for r in self.requests if r.action == "publish"]


@dataclass
class Env:
    h: ModuleHarness
    alice: Session
    changes: list[ev.PepChanged]


def private(type_: str, body: str, to: str = "", id_: str = "p1") -> str:
    to_attr = f" to='{to}'" if to else ""
    return f"<iq type='{type_}' id='{id_}'{to_attr}><query xmlns='{NS}'>{body}</query></iq>"


def storage(body: str) -> str:
    return f"<storage xmlns='{LEGACY}'>{body}</storage>"


async def start(h: ModuleHarness, fake: bool) -> Env:
    if fake:
        await h.load(FakePep)
        await h.load(Bookmarks)
    changes: list[ev.PepChanged] = []

    async def record(change: ev.PepChanged) -> None:
        changes.append(change)

    h.host().bus.add_notify(ev.PEP_CHANGED, record, 0)
    alice = await h.connect("alice@localhost/home")
    return Env(h, alice, changes)


@pytest.fixture(params=["fake", "pep"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    fake = request.param == "fake"
    modules = ["disco", "private", "roster", "presence"]
    if not fake:
        modules += ["pep", "bookmarks"]
    async with ModuleHarness.started(tmp_path, modules_enabled=modules) as h:
        yield await start(h, fake)


@pytest.fixture
async def fake_env(tmp_path: Path) -> AsyncIterator[Env]:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=["disco", "private", "roster", "presence"]
    ) as h:
        yield await start(h, True)


def fake_pep(env: Env) -> FakePep:
    module = env.h.host().modules["fakepep"]
    assert isinstance(module, FakePep)
    return module


async def pep(
    env: Env, action: str, item_id: str | None = None, xml: str = "", node: str = B2
) -> ev.PepRequest:
    payload = etree.fromstring(xml) if xml else None
    req = ev.PepRequest(ALICE, node, action, item_id, payload)
    if action == "publish" and node == B2:
        req.options = dict(REQUIRED_OPTIONS)
    assert await env.h.host().bus.chain(ev.PEP_REQUEST, req)
    assert req.error is None, req.error
    return req


async def items(env: Env, node: str = B2) -> dict[str, etree._Element]:
    return dict((await pep(env, "items", node=node)).items)


async def legacy_get(env: Env) -> etree._Element:
    await env.h.send(env.alice, private("get", f"<storage xmlns='{LEGACY}'/>"))
    reply = env.h.take_one(env.alice)
    assert reply.get("type") == "result", etree.tostring(reply)
    found = reply.find(f"{QUERY}/{{{LEGACY}}}storage")
    assert found is not None
    return found


async def legacy_set(env: Env, body: str) -> etree._Element:
    await env.h.send(env.alice, private("set", storage(body)))
    return env.h.take_one(env.alice)


def b2_changes(env: Env) -> list[tuple[str, str | None]]:
    return [(c.action, c.item_id) for c in env.changes if c.node == B2]


def conferences(found: etree._Element) -> dict[str, etree._Element]:
    return {c.get("jid") or "": c for c in found.findall(f"{{{LEGACY}}}conference")}


# --- discovery ---------------------------------------------------------------------------
async def test_compat_is_announced_on_the_account(env: Env) -> None:
    await env.h.send(env.alice, f"<iq type='get' id='d1'><query xmlns='{DISCO}'/></iq>")
    reply = env.h.take_one(env.alice)
    features = {f.get("var") for f in reply.iter(f"{{{DISCO}}}feature")}
    assert f"{B2}#compat" in features
    assert f"{B2}#compat-pep" in features
    assert "urn:xmpp:bookmarks-conversion:0" in features


async def test_without_pep_private_storage_keeps_bookmarks_itself(tmp_path: Path) -> None:
    """No PEP module: no #compat feature, and storage:bookmarks is plain private data."""
    async with ModuleHarness.started(
        tmp_path, modules_enabled=["disco", "private", "bookmarks"]
    ) as h:
        alice = await h.connect("alice@localhost/home")
        await h.send(alice, f"<iq type='get' id='d1'><query xmlns='{DISCO}'/></iq>")
        features = {f.get("var") for f in h.take_one(alice).iter(f"{{{DISCO}}}feature")}
        assert f"{B2}#compat" not in features
        await h.send(alice, private("set", storage("<url name='x' url='https://e.example'/>")))
        assert h.take_one(alice).get("type") == "result"
        await h.send(alice, private("get", f"<storage xmlns='{LEGACY}'/>"))
        assert h.take_one(alice).find(f".//{{{LEGACY}}}url") is not None


# --- reading -----------------------------------------------------------------------------
async def test_get_of_no_bookmarks_is_an_empty_storage(env: Env) -> None:
    found = await legacy_get(env)
    assert len(found) == 0


async def test_get_casts_items_into_legacy_conferences(env: Env) -> None:
    await pep(
        env,
        "publish",
        "council@conference.underhill.org",
        f"<conference xmlns='{B2}' name='Council of Oberon' autojoin='1'>"
        "<nick>Puck</nick><password>pw</password>"
        "<extensions><state xmlns='urn:example:state' minimized='true'/></extensions>"
        "</conference>",
    )
    await pep(env, "publish", "orchard@conference.underhill.org", f"<conference xmlns='{B2}'/>")
    found = conferences(await legacy_get(env))
    assert list(found) == ["council@conference.underhill.org", "orchard@conference.underhill.org"]
    council = found["council@conference.underhill.org"]
    assert council.get("name") == "Council of Oberon"
    assert council.get("autojoin") == "true"
    assert council.findtext(f"{{{LEGACY}}}nick") == "Puck"
    assert council.findtext(f"{{{LEGACY}}}password") == "pw"
    state = council.find("{urn:example:state}state")
    assert state is not None
    assert state.get("minimized") == "true"
    orchard = found["orchard@conference.underhill.org"]
    assert orchard.get("autojoin") == "false"
    assert orchard.get("name") is None
    assert len(orchard) == 0


async def test_items_that_are_not_bookmarks_are_left_out(env: Env) -> None:
    """A client may publish anything to the node: wrong payloads and ids that are not room
    JIDs have no XEP-0048 form."""
    await pep(env, "publish", "bad jid@@x", f"<conference xmlns='{B2}'/>")
    await pep(env, "publish", "room@muc.localhost", "<other xmlns='urn:example:other'/>")
    await pep(env, "publish", "good@muc.localhost", f"<conference xmlns='{B2}' name='ok'/>")
    assert list(conferences(await legacy_get(env))) == ["good@muc.localhost"]


async def test_bookmarks2_changes_show_in_the_private_view(env: Env) -> None:
    await pep(env, "publish", "a@muc.localhost", f"<conference xmlns='{B2}' name='A'/>")
    assert conferences(await legacy_get(env))["a@muc.localhost"].get("name") == "A"
    await pep(env, "publish", "a@muc.localhost", f"<conference xmlns='{B2}' name='A2'/>")
    assert conferences(await legacy_get(env))["a@muc.localhost"].get("name") == "A2"
    await pep(env, "retract", "a@muc.localhost")
    assert conferences(await legacy_get(env)) == {}


# --- writing -----------------------------------------------------------------------------
async def test_set_publishes_each_conference_as_an_item(env: Env) -> None:
    reply = await legacy_set(
        env,
        "<conference jid='Tea@Conference.localhost' name='Tea' autojoin='true'>"
        "<nick>al</nick><password>s3</password></conference>"
        "<conference jid='coffee@conference.localhost' autojoin='0'/>",
    )
    assert reply.get("type") == "result"
    assert reply.get("from") == "alice@localhost"
    got = await items(env)
    assert list(got) == ["tea@conference.localhost", "coffee@conference.localhost"]
    tea = got["tea@conference.localhost"]
    assert tea.tag == f"{{{B2}}}conference"
    assert tea.get("name") == "Tea"
    assert tea.get("autojoin") in ("true", "1")
    assert [c.tag for c in tea] == [f"{{{B2}}}nick", f"{{{B2}}}password"]
    assert tea.findtext(f"{{{B2}}}nick") == "al"
    assert got["coffee@conference.localhost"].get("autojoin") in (None, "false", "0")
    assert b2_changes(env) == [
        ("publish", "tea@conference.localhost"),
        ("publish", "coffee@conference.localhost"),
    ]


async def test_publish_uses_the_options_xep_0402_requires(fake_env: Env) -> None:
    await legacy_set(fake_env, "<conference jid='tea@conference.localhost'/>")
    (publish,) = [r for r in fake_pep(fake_env).published() if r.node == B2]
    assert publish.owner == ALICE
    assert publish.options == REQUIRED_OPTIONS


async def test_set_retracts_conferences_no_longer_listed(env: Env) -> None:
    await legacy_set(
        env,
        "<conference jid='a@muc.localhost'/><conference jid='b@muc.localhost'/>",
    )
    env.changes.clear()
    assert (await legacy_set(env, "<conference jid='b@muc.localhost'/>")).get("type") == "result"
    assert list(await items(env)) == ["b@muc.localhost"]
    assert b2_changes(env) == [("retract", "a@muc.localhost")]
    await legacy_set(env, "")
    assert await items(env) == {}


async def test_unchanged_conferences_are_not_published_again(env: Env) -> None:
    """XEP-0402 §5.3.2: no notifications for unchanged items."""
    await pep(
        env,
        "publish",
        "a@muc.localhost",
        f"<conference xmlns='{B2}' name='A' autojoin='1'><nick>n</nick></conference>",
    )
    env.changes.clear()
    reply = await legacy_set(
        env,
        "<conference jid='a@muc.localhost' name='A' autojoin='true'><nick>n</nick></conference>"
        "<conference jid='b@muc.localhost' name='B'/>",
    )
    assert reply.get("type") == "result"
    assert b2_changes(env) == [("publish", "b@muc.localhost")]


async def test_what_a_legacy_client_read_it_can_write_back_unchanged(env: Env) -> None:
    await pep(
        env,
        "publish",
        "a@muc.localhost",
        f"<conference xmlns='{B2}' name='A'><nick>n</nick>"
        "<extensions><x xmlns='urn:example:x'>1</x></extensions></conference>",
    )
    found = await legacy_get(env)
    env.changes.clear()
    body = "".join(etree.tostring(c).decode() for c in found)
    assert (await legacy_set(env, body)).get("type") == "result"
    assert env.changes == []


async def test_an_item_id_in_another_case_is_kept_as_it_is(env: Env) -> None:
    """The legacy view shows the prepared room JID; writing it back changes nothing, and an
    edit republishes the item under its own id instead of adding a second one."""
    await pep(env, "publish", "Tea@Conference.localhost", f"<conference xmlns='{B2}' name='T'/>")
    found = conferences(await legacy_get(env))
    assert list(found) == ["tea@conference.localhost"]
    env.changes.clear()
    await legacy_set(env, "<conference jid='tea@conference.localhost' name='T'/>")
    assert env.changes == []
    await legacy_set(env, "<conference jid='TEA@conference.localhost' name='T2'/>")
    assert b2_changes(env) == [("publish", "Tea@Conference.localhost")]
    assert list(await items(env)) == ["Tea@Conference.localhost"]


async def test_items_without_a_legacy_form_survive_legacy_writes(env: Env) -> None:
    await pep(env, "publish", "room@muc.localhost", "<other xmlns='urn:example:other'/>")
    await pep(env, "publish", "a@muc.localhost", f"<conference xmlns='{B2}'/>")
    await legacy_set(env, "")
    assert list(await items(env)) == ["room@muc.localhost"]


async def test_url_bookmarks_and_other_children_are_kept(env: Env) -> None:
    await legacy_set(
        env,
        "<url name='Docs' url='https://docs.example/'/>"
        "<conference jid='a@muc.localhost' name='A'/>"
        "<note xmlns='urn:example:note'>hi</note>",
    )
    found = await legacy_get(env)
    url = found.find(f"{{{LEGACY}}}url")
    assert url is not None
    assert url.get("url") == "https://docs.example/"
    assert found.findtext("{urn:example:note}note") == "hi"
    assert list(conferences(found)) == ["a@muc.localhost"]
    assert list(await items(env)) == ["a@muc.localhost"]
    await legacy_set(env, "<conference jid='a@muc.localhost' name='A'/>")
    assert (await legacy_get(env)).find(f"{{{LEGACY}}}url") is None


async def test_unknown_conference_children_go_to_extensions_and_back(env: Env) -> None:
    await legacy_set(
        env,
        "<conference jid='a@muc.localhost'><nick>n</nick>"
        "<state xmlns='urn:example:state' minimized='true'/></conference>",
    )
    item = (await items(env))["a@muc.localhost"]
    state = item.find(f"{{{B2}}}extensions/{{urn:example:state}}state")
    assert state is not None
    assert state.get("minimized") == "true"
    back = conferences(await legacy_get(env))["a@muc.localhost"]
    assert back.find("{urn:example:state}state") is not None


async def test_legacy_edit_keeps_the_items_extensions(env: Env) -> None:
    """XEP-0402 §2: extensions MUST survive edits; a legacy client drops what it does not
    know, so an edit without any keeps the item's."""
    await pep(
        env,
        "publish",
        "a@muc.localhost",
        f"<conference xmlns='{B2}' name='A'>"
        "<extensions><x xmlns='urn:example:x'>1</x></extensions></conference>",
    )
    await legacy_set(env, "<conference jid='a@muc.localhost' name='Renamed'/>")
    item = (await items(env))["a@muc.localhost"]
    assert item.get("name") == "Renamed"
    assert item.findtext(f"{{{B2}}}extensions/{{urn:example:x}}x") == "1"


async def test_mixed_set_stores_bookmarks_in_pep_and_the_rest_privately(env: Env) -> None:
    body = storage("<conference jid='a@muc.localhost'/>") + "<prefs xmlns='urn:example:p'/>"
    await env.h.send(env.alice, private("set", body))
    assert env.h.take_one(env.alice).get("type") == "result"
    assert list(await items(env)) == ["a@muc.localhost"]
    await env.h.send(env.alice, private("get", "<prefs xmlns='urn:example:p'/>"))
    assert env.h.take_one(env.alice).find(f"{QUERY}/{{urn:example:p}}prefs") is not None


async def test_mixed_set_with_a_reserved_namespace_changes_nothing(env: Env) -> None:
    body = storage("<conference jid='a@muc.localhost'/>") + "<message xmlns='jabber:client'/>"
    await env.h.send(env.alice, private("set", body))
    assert error_condition(env.h.take_one(env.alice)) == "not-acceptable"
    assert await items(env) == {}


async def test_get_of_several_namespaces_is_still_refused(env: Env) -> None:
    await env.h.send(
        env.alice, private("get", f"<storage xmlns='{LEGACY}'/><p xmlns='urn:example:p'/>")
    )
    assert error_condition(env.h.take_one(env.alice)) == "not-acceptable"


@pytest.mark.parametrize("type_", ["get", "set"])
async def test_another_accounts_bookmarks_are_forbidden(env: Env, type_: str) -> None:
    await pep(env, "publish", "a@muc.localhost", f"<conference xmlns='{B2}'/>")
    bob = await env.h.connect("bob@localhost/work")
    body = storage("" if type_ == "get" else "<conference jid='evil@muc.localhost'/>")
    await env.h.send(bob, private(type_, body, to="alice@localhost"))
    reply = env.h.take_one(bob)
    assert error_condition(reply) == "forbidden"
    assert reply.find(f".//{{{LEGACY}}}conference[@jid='a@muc.localhost']") is None
    assert list(await items(env)) == ["a@muc.localhost"]


# --- hostile input -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        "<conference name='no jid'/>",
        "<conference jid=''/>",
        "<conference jid='not a jid@@muc'/>",
        "<conference jid='room@muc.localhost/resource'/>",
        "<conference jid='@muc.localhost'/>",
        "<conference jid='a@muc.localhost'/><conference jid='A@muc.localhost'/>",
        "<conference jid='a@muc.localhost'><nick>x</nick><nick>y</nick></conference>",
    ],
    ids=["no-jid", "empty-jid", "malformed", "resource", "empty-local", "duplicate", "two-nicks"],
)
async def test_bad_conferences_are_refused_and_change_nothing(env: Env, body: str) -> None:
    await pep(env, "publish", "keep@muc.localhost", f"<conference xmlns='{B2}' name='K'/>")
    env.changes.clear()
    reply = await legacy_set(env, "<conference jid='new@muc.localhost'/>" + body)
    assert error_condition(reply) == "bad-request"
    assert list(await items(env)) == ["keep@muc.localhost"]
    assert env.changes == []


async def test_a_storage_of_another_name_is_refused(env: Env) -> None:
    await env.h.send(env.alice, private("set", f"<bogus xmlns='{LEGACY}'/>"))
    assert error_condition(env.h.take_one(env.alice)) == "bad-request"


async def test_oversize_bookmarks_are_not_acceptable(env: Env) -> None:
    reply = await legacy_set(env, f"<conference jid='a@muc.localhost' name='{'x' * 70000}'/>")
    assert error_condition(reply) == "not-acceptable"
    assert await items(env) == {}


async def test_too_many_bookmarks_are_not_acceptable(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=["disco", "private", "roster", "presence"]
    ) as h:
        await h.load(FakePep)
        await h.load(Bookmarks, Bookmarks.Options(max_bookmarks=3))
        env = Env(h, await h.connect("alice@localhost/home"), [])
        body = "".join(f"<conference jid='r{i}@muc.localhost'/>" for i in range(4))
        assert error_condition(await legacy_set(env, body)) == "not-acceptable"
        assert await items(env) == {}


async def test_a_pep_refusal_is_the_answer(fake_env: Env) -> None:
    """E.g. the node was configured by hand with another access model: the publish-options
    precondition fails, and the legacy client is told so."""
    fake_pep(fake_env).refuse = StanzaError("conflict", "precondition not met")
    reply = await legacy_set(fake_env, "<conference jid='a@muc.localhost'/>")
    assert error_condition(reply) == "conflict"


async def test_corrupt_private_request_elements_fall_through(env: Env) -> None:
    """A result or error addressed to the account is not a request: left to the core."""
    await env.h.send(env.alice, f"<iq type='result' id='x'><query xmlns='{NS}'/></iq>")
    assert env.h.take(env.alice) == []


# --- migration ---------------------------------------------------------------------------
async def test_bookmarks_kept_in_private_xml_move_to_pep_on_first_bind(tmp_path: Path) -> None:
    """XEP-0411 §4: bookmarks stored before the conversion ran reach PEP before the client
    can ask, so PEP-only clients see them."""
    async with ModuleHarness.started(
        tmp_path, modules_enabled=["disco", "private", "roster", "presence"]
    ) as h:
        old = await h.connect("alice@localhost/old")
        legacy = storage(
            "<conference jid='old@muc.localhost' name='Old' autojoin='true'/>"
            "<conference jid='bad jid@@'/>"
            "<url name='u' url='https://u.example/'/>"
        )
        await h.send(old, private("set", legacy))
        assert h.take_one(old).get("type") == "result"
        await h.load(FakePep)
        await h.load(Bookmarks)
        env = Env(h, await h.connect("alice@localhost/new"), [])
        got = await items(env)
        assert list(got) == ["old@muc.localhost"]
        assert got["old@muc.localhost"].get("name") == "Old"
        found = await legacy_get(env)
        assert list(conferences(found)) == ["old@muc.localhost"]
        assert found.find(f"{{{LEGACY}}}url") is not None
        # Done once: a later removal is not undone by the next bind.
        await legacy_set(env, "")
        await h.connect("alice@localhost/third")
        assert await items(env) == {}


# --- the XEP-0048 PEP node (#compat-pep, XEP-0411) ------------------------------------------
def legacy_node_changes(env: Env) -> list[tuple[str, str | None]]:
    return [(c.action, c.item_id) for c in env.changes if c.node == LEGACY]


async def legacy_node(env: Env) -> etree._Element:
    (item_id, payload), *more = (await pep(env, "items", node=LEGACY)).items
    assert item_id == "current"
    assert more == []
    assert payload.tag == f"{{{LEGACY}}}storage"
    return payload


async def test_private_writes_reach_the_legacy_pep_node(env: Env) -> None:
    """XEP-0411 §3: a private-XML write notifies the storage:bookmarks node's subscribers."""
    await legacy_set(
        env, "<conference jid='a@muc.localhost' name='A'/><url name='u' url='https://u.example/'/>"
    )
    assert legacy_node_changes(env) == [("publish", "current")]
    node = await legacy_node(env)
    assert list(conferences(node)) == ["a@muc.localhost"]
    assert node.find(f"{{{LEGACY}}}url") is not None
    env.changes.clear()
    await legacy_set(
        env, "<conference jid='a@muc.localhost' name='A'/><url name='u' url='https://u.example/'/>"
    )
    assert env.changes == []  # nothing changed, nothing published


async def test_legacy_node_is_published_private(fake_env: Env) -> None:
    """XEP-0411 §5 / XEP-0223: only the account may read its bookmarks."""
    await legacy_set(fake_env, "<conference jid='a@muc.localhost'/>")
    (publish,) = [r for r in fake_pep(fake_env).published() if r.node == LEGACY]
    assert publish.item_id == "current"
    assert publish.options == {
        "pubsub#persist_items": ["true"],
        "pubsub#access_model": ["whitelist"],
    }


async def test_bookmarks2_changes_reach_the_legacy_pep_node_once_each(env: Env) -> None:
    await pep(env, "publish", "a@muc.localhost", f"<conference xmlns='{B2}' name='A'/>")
    assert legacy_node_changes(env) == [("publish", "current")]
    assert list(conferences(await legacy_node(env))) == ["a@muc.localhost"]
    await pep(env, "retract", "a@muc.localhost")
    assert conferences(await legacy_node(env)) == {}


async def test_a_legacy_pep_publish_becomes_bookmarks2_items(env: Env) -> None:
    """XEP-0402 §5.3.2 for a XEP-0048 PEP client: its list is cast into items; bad entries
    (already stored by PEP) are skipped rather than refused; nothing echoes back."""
    await pep(env, "publish", "gone@muc.localhost", f"<conference xmlns='{B2}'/>")
    env.changes.clear()
    published = storage(
        "<conference jid='a@muc.localhost' name='A' autojoin='1'><nick>n</nick></conference>"
        "<conference jid='bad jid@@'/>"
        "<conference jid='b@muc.localhost/res'/>"
        "<url name='u' url='https://u.example/'/>"
    )
    await pep(env, "publish", "current", published, node=LEGACY)
    got = await items(env)
    assert list(got) == ["a@muc.localhost"]
    assert got["a@muc.localhost"].findtext(f"{{{B2}}}nick") == "n"
    assert b2_changes(env) == [("publish", "a@muc.localhost"), ("retract", "gone@muc.localhost")]
    # The client's own publish, then the list as kept (bad entries gone): no echo of the
    # module's own writes, but the node shows what the items are.
    assert legacy_node_changes(env) == [("publish", "current"), ("publish", "current")]
    node = await legacy_node(env)
    assert list(conferences(node)) == ["a@muc.localhost"]
    found = await legacy_get(env)
    assert list(conferences(found)) == ["a@muc.localhost"]
    assert found.find(f"{{{LEGACY}}}url") is not None


async def test_a_legacy_pep_payload_of_another_kind_is_ignored(env: Env) -> None:
    await pep(env, "publish", "a@muc.localhost", f"<conference xmlns='{B2}'/>")
    await pep(env, "publish", "current", "<other xmlns='urn:example:o'/>", node=LEGACY)
    await pep(env, "retract", "current", node=LEGACY)
    assert list(await items(env)) == ["a@muc.localhost"]


async def test_compat_pep_can_be_switched_off(tmp_path: Path) -> None:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=["disco", "private", "roster", "presence"]
    ) as h:
        await h.load(FakePep)
        await h.load(Bookmarks, Bookmarks.Options(compat_pep=False))
        env = await start(h, False)
        await env.h.send(env.alice, f"<iq type='get' id='d1'><query xmlns='{DISCO}'/></iq>")
        features = {f.get("var") for f in env.h.take_one(env.alice).iter(f"{{{DISCO}}}feature")}
        assert f"{B2}#compat" in features
        assert f"{B2}#compat-pep" not in features
        await legacy_set(env, "<conference jid='a@muc.localhost'/>")
        await pep(env, "publish", "current", storage("<conference jid='x@muc'/>"), node=LEGACY)
        assert list(await items(env)) == ["a@muc.localhost"]
        assert legacy_node_changes(env) == [("publish", "current")]  # the test's own


async def test_a_legacy_node_open_to_others_is_not_written(tmp_path: Path) -> None:
    """XEP-0411 §5: the copy is made only where the account alone has access; the real PEP
    refuses the whitelist precondition on a node configured open, and the private write
    still succeeds for Bookmarks 2."""
    async with ModuleHarness.started(
        tmp_path,
        modules_enabled=["disco", "private", "roster", "presence", "pep", "bookmarks"],
    ) as h:
        env = await start(h, False)
        req = ev.PepRequest(
            ALICE,
            LEGACY,
            "publish",
            "current",
            etree.fromstring(storage("")),
            {"pubsub#access_model": ["open"]},
        )
        assert await h.host().bus.chain(ev.PEP_REQUEST, req)
        assert req.error is None
        env.changes.clear()
        reply = await legacy_set(env, "<conference jid='secret@muc.localhost'/>")
        assert reply.get("type") == "result"
        assert list(await items(env)) == ["secret@muc.localhost"]
        assert legacy_node_changes(env) == []
        assert conferences(await legacy_node(env)) == {}


# --- regressions: limits, echo, stale legacy node, partial writes, migration ----------------
BASE = ["disco", "private", "roster", "presence"]


@contextlib.asynccontextmanager
async def real(tmp_path: Path, **modules: dict[str, object]) -> AsyncIterator[Env]:
    """The real PEP module and this one, with module options."""
    async with ModuleHarness.started(
        tmp_path, modules_enabled=[*BASE, "pep", "bookmarks"], modules=modules
    ) as h:
        yield await start(h, False)


@contextlib.asynccontextmanager
async def fake(tmp_path: Path, options: Bookmarks.Options | None = None) -> AsyncIterator[Env]:
    async with ModuleHarness.started(tmp_path, modules_enabled=BASE) as h:
        await h.load(FakePep)
        await h.load(Bookmarks, options)
        yield await start(h, False)


def rooms(n: int, prefix: str = "r") -> str:
    return "".join(f"<conference jid='{prefix}{i}@muc.localhost'/>" for i in range(n))


async def test_a_legacy_list_beyond_what_pep_keeps_is_refused_whole(env: Env) -> None:
    """PEP keeps at most its max_items (256 by default) and would evict the oldest without
    an error: a list the node cannot hold is refused before anything is published."""
    reply = await legacy_set(env, rooms(300))
    assert error_condition(reply) == "not-acceptable"
    assert await items(env) == {}
    assert b2_changes(env) == []


async def test_adding_to_a_full_node_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    async with real(tmp_path) as env:
        assert (await legacy_set(env, rooms(250))).get("type") == "result"
        reply = await legacy_set(env, rooms(260))
        assert error_condition(reply) == "not-acceptable"
        got = await items(env)
        assert len(got) == 250
        assert "r0@muc.localhost" in got
        # Replacing some within the limit is fine.
        assert (await legacy_set(env, rooms(256, "s"))).get("type") == "result"
        assert len(await items(env)) == 256


async def test_the_limit_counts_items_without_a_legacy_form(fake_env: Env) -> None:
    for i in range(256):
        await pep(fake_env, "publish", f"not-a-room-{i}@@", f"<conference xmlns='{B2}'/>")
    reply = await legacy_set(fake_env, rooms(1))
    assert error_condition(reply) == "not-acceptable"
    assert len(await items(fake_env)) == 256


async def test_migration_moves_what_fits_and_marks_the_rest_done(tmp_path: Path) -> None:
    """More conferences than the node keeps, and an element that is not a <storage/>:
    what is valid moves up to the limit, the bad element alone is skipped."""
    async with ModuleHarness.started(tmp_path, modules_enabled=BASE) as h:
        old = await h.connect("alice@localhost/old")
        body = storage(rooms(7) + "<url name='u' url='https://u.example/'/>") + (
            f"<other xmlns='{LEGACY}'/>"
        )
        await h.send(old, private("set", body))
        assert h.take_one(old).get("type") == "result"
        await h.load(FakePep)
        await h.load(Bookmarks, Bookmarks.Options(pep_max_items=5))
        env = Env(h, await h.connect("alice@localhost/new"), [])
        got = await items(env)
        assert list(got) == [f"r{i}@muc.localhost" for i in range(5)]
        found = await legacy_get(env)
        assert len(conferences(found)) == 5
        assert found.find(f"{{{LEGACY}}}url") is not None


async def test_others_changes_during_a_bookmarks_write_are_not_swallowed(fake_env: Env) -> None:
    """Only the module's own writes are its echo: a Bookmarks 2 client publishing while the
    module writes the legacy node still gets the legacy node updated."""

    async def other_client(req: ev.PepRequest) -> None:
        if req.node == LEGACY and fake_pep(fake_env).during is not None:
            fake_pep(fake_env).during = None
            await pep(fake_env, "publish", "other@muc.localhost", f"<conference xmlns='{B2}'/>")

    fake_pep(fake_env).during = other_client
    await legacy_set(fake_env, "<conference jid='a@muc.localhost'/>")
    assert set(conferences(await legacy_node(fake_env))) == {
        "a@muc.localhost",
        "other@muc.localhost",
    }


async def test_a_legacy_publish_during_a_bookmarks_write_is_applied(fake_env: Env) -> None:
    """Another legacy PEP client publishes while the module writes an item: its list is
    applied too, not taken for the module's echo."""

    async def other_client(req: ev.PepRequest) -> None:
        if req.node == B2 and fake_pep(fake_env).during is not None:
            fake_pep(fake_env).during = None
            both = "<conference jid='a@muc.localhost'/><conference jid='b@muc.localhost'/>"
            await pep(fake_env, "publish", "current", storage(both), node=LEGACY)

    fake_pep(fake_env).during = other_client
    await legacy_set(fake_env, "<conference jid='a@muc.localhost'/>")
    assert set(await items(fake_env)) == {"a@muc.localhost", "b@muc.localhost"}
    assert set(conferences(await legacy_node(fake_env))) == {"a@muc.localhost", "b@muc.localhost"}


async def test_a_legacy_publish_that_matches_the_items_is_not_echoed(env: Env) -> None:
    await legacy_set(env, "<conference jid='a@muc.localhost' autojoin='false'/>")
    node = etree.tostring(await legacy_node(env)).decode()
    env.changes.clear()
    await pep(env, "publish", "current", node, node=LEGACY)
    assert legacy_node_changes(env) == [("publish", "current")]
    assert b2_changes(env) == []


async def test_a_stale_legacy_node_does_not_retract(tmp_path: Path) -> None:
    """The legacy node could not be updated (configured open): a client publishing the old
    list there plus a new room adds it, and retracts nothing it never saw."""
    async with real(tmp_path) as env:
        req = ev.PepRequest(
            ALICE, LEGACY, "publish", "current", etree.fromstring(storage("")),
            {"pubsub#access_model": ["open"]},
        )  # fmt: skip
        assert await env.h.host().bus.chain(ev.PEP_REQUEST, req)
        assert req.error is None
        assert (await legacy_set(env, "<conference jid='a@muc.localhost'/>")).get("type") == (
            "result"
        )
        assert conferences(await legacy_node(env)) == {}  # out of step
        await pep(
            env, "publish", "current", storage("<conference jid='new@muc.localhost'/>"), node=LEGACY
        )
        assert set(await items(env)) == {"a@muc.localhost", "new@muc.localhost"}


async def test_a_legacy_view_too_large_leaves_the_node_out_of_step(tmp_path: Path) -> None:
    async with fake(tmp_path, Bookmarks.Options(max_size=1000)) as env:
        await legacy_set(env, "<conference jid='a@muc.localhost'/>")
        assert list(conferences(await legacy_node(env))) == ["a@muc.localhost"]
        big = "x" * 600
        await pep(env, "publish", "b@muc.localhost", f"<conference xmlns='{B2}' name='{big}'/>")
        await pep(env, "publish", "c@muc.localhost", f"<conference xmlns='{B2}' name='{big}'/>")
        # The node still holds [a]: a client publishing it back must not retract b and c.
        await pep(
            env,
            "publish",
            "current",
            storage(rooms(0) + "<conference jid='a@muc.localhost'/>"),
            node=LEGACY,
        )
        assert set(await items(env)) == {"a@muc.localhost", "b@muc.localhost", "c@muc.localhost"}
        # A legacy write that would make the view larger still is refused; a smaller one not.
        kept = "".join(f"<conference jid='{j}@muc.localhost' name='{big}'/>" for j in "bc")
        reply = await legacy_set(
            env, f"<conference jid='a@muc.localhost'/>{kept}<conference jid='d@muc.localhost'/>"
        )
        assert error_condition(reply) == "not-acceptable"
        assert (await legacy_set(env, "<conference jid='a@muc.localhost'/>")).get("type") == (
            "result"
        )
        assert list(await items(env)) == ["a@muc.localhost"]
        assert list(conferences(await legacy_node(env))) == ["a@muc.localhost"]  # in step


async def test_a_room_id_pep_cannot_store_fails_before_any_publish(env: Env) -> None:
    long_room = f"{'l' * 300}@muc.localhost"
    reply = await legacy_set(
        env, f"<conference jid='a@muc.localhost'/><conference jid='{long_room}'/>"
    )
    assert error_condition(reply) == "not-acceptable"
    assert await items(env) == {}
    assert b2_changes(env) == []


async def test_a_pep_refusal_half_way_undoes_the_write(fake_env: Env) -> None:
    await legacy_set(
        fake_env, "<conference jid='a@muc.localhost' name='A'/><conference jid='z@muc.localhost'/>"
    )
    fake_pep(fake_env).fail = lambda req: (
        StanzaError("not-acceptable", "quota") if req.item_id == "c@muc.localhost" else None
    )
    reply = await legacy_set(
        fake_env,
        "<conference jid='a@muc.localhost' name='A2'/><conference jid='b@muc.localhost'/>"
        "<conference jid='c@muc.localhost'/>",
    )
    assert error_condition(reply) == "not-acceptable"
    got = await items(fake_env)
    assert set(got) == {"a@muc.localhost", "z@muc.localhost"}
    assert got["a@muc.localhost"].get("name") == "A"
    assert set(conferences(await legacy_node(fake_env))) == {"a@muc.localhost", "z@muc.localhost"}


async def test_a_node_configured_otherwise_changes_nothing(tmp_path: Path) -> None:
    """XEP-0060 §7.1.5: the publish-options precondition fails on a Bookmarks 2 node with
    another configuration; the legacy write is refused with it and nothing changed."""
    async with real(tmp_path) as env:
        open_req = ev.PepRequest(
            ALICE, B2, "publish", "a@muc.localhost", etree.fromstring(f"<conference xmlns='{B2}'/>"),
            {**REQUIRED_OPTIONS, "pubsub#access_model": ["open"]},
        )  # fmt: skip
        assert await env.h.host().bus.chain(ev.PEP_REQUEST, open_req)
        assert open_req.error is None
        env.changes.clear()
        reply = await legacy_set(env, "<conference jid='b@muc.localhost'/>")
        assert error_condition(reply) == "conflict"
        assert list(await items(env)) == ["a@muc.localhost"]
        assert b2_changes(env) == []
        assert list(conferences(await legacy_get(env))) == ["a@muc.localhost"]


async def test_migration_skips_refused_items_and_is_done_once(tmp_path: Path) -> None:
    async with ModuleHarness.started(tmp_path, modules_enabled=BASE) as h:
        old = await h.connect("alice@localhost/old")
        await h.send(old, private("set", storage(rooms(3))))
        assert h.take_one(old).get("type") == "result"
        fake_module = await h.load(FakePep)
        assert isinstance(fake_module, FakePep)
        fake_module.fail = lambda req: (
            StanzaError("not-acceptable") if req.item_id == "r1@muc.localhost" else None
        )
        await h.load(Bookmarks)
        env = Env(h, await h.connect("alice@localhost/new"), [])
        assert list(await items(env)) == ["r0@muc.localhost", "r2@muc.localhost"]
        fake_module.fail = None
        await legacy_set(env, "")
        await h.connect("alice@localhost/third")
        assert await items(env) == {}


async def test_migration_onto_a_node_configured_otherwise_keeps_legacy_access(
    tmp_path: Path,
) -> None:
    """A precondition failure leaves the migration to be tried again (once the node is
    reconfigured) and does not block storage:bookmarks gets."""
    async with ModuleHarness.started(tmp_path, modules_enabled=BASE) as h:
        old = await h.connect("alice@localhost/old")
        await h.send(old, private("set", storage(rooms(2))))
        assert h.take_one(old).get("type") == "result"
        fake_module = await h.load(FakePep)
        assert isinstance(fake_module, FakePep)
        fake_module.fail = lambda req: (
            StanzaError("conflict") if req.node == B2 and req.action == "publish" else None
        )
        await h.load(Bookmarks)
        env = Env(h, await h.connect("alice@localhost/new"), [])
        assert await items(env) == {}
        assert conferences(await legacy_get(env)) == {}
        fake_module.fail = None
        await h.connect("alice@localhost/third")
        assert list(await items(env)) == ["r0@muc.localhost", "r1@muc.localhost"]


async def test_a_mixed_set_the_private_module_refuses_changes_no_bookmark(env: Env) -> None:
    big = "x" * 70000
    body = (
        storage("<conference jid='a@muc.localhost'/>") + f"<big xmlns='urn:example:b' v='{big}'/>"
    )
    await env.h.send(env.alice, private("set", body))
    assert error_condition(env.h.take_one(env.alice)) == "not-acceptable"
    assert await items(env) == {}
    assert b2_changes(env) == []


async def test_rooms_differing_in_case_appear_once_and_write_back(env: Env) -> None:
    await pep(env, "publish", "Room@muc.localhost", f"<conference xmlns='{B2}' name='1'/>")
    await pep(env, "publish", "room@muc.localhost", f"<conference xmlns='{B2}' name='2'/>")
    found = await legacy_get(env)
    assert list(conferences(found)) == ["room@muc.localhost"]
    body = "".join(etree.tostring(c).decode() for c in found)
    assert (await legacy_set(env, body)).get("type") == "result"
    assert set(await items(env)) == {"Room@muc.localhost", "room@muc.localhost"}


async def test_text_after_a_kept_element_is_not_kept(env: Env) -> None:
    await legacy_set(env, "<url name='u' url='https://u.example/'/>junk")
    found = await legacy_get(env)
    assert found.find(f"{{{LEGACY}}}url") is not None
    assert "junk" not in etree.tostring(found).decode()


async def test_a_legacy_node_list_beyond_the_limit_is_not_applied(tmp_path: Path) -> None:
    """Already stored by PEP, it cannot be refused: the items stay as they were and the
    legacy node is brought back to them."""
    async with fake(tmp_path, Bookmarks.Options(pep_max_items=2)) as env:
        await legacy_set(env, "<conference jid='a@muc.localhost'/>")
        await pep(env, "publish", "current", storage(rooms(3)), node=LEGACY)
        assert list(await items(env)) == ["a@muc.localhost"]
        assert list(conferences(await legacy_node(env))) == ["a@muc.localhost"]
