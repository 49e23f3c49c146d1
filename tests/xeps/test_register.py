"""XEP-0077 In-Band Registration (xeps/register.py; pre-authentication part through the
host's pre-auth registry, xmppd/preauth.py).

Tier 2: a real Server on memory storage, fake sessions; pre-authentication requests are handed
to the host's pre-auth registry as the connection does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers.harness import PASSWORD, ModuleHarness, error_condition, parse_element
from xeps.register import RateLimit, Register
from xmppd.errors import StreamError
from xmppd.jid import JID
from xmppd.module_manager import ModuleManager
from xmppd.preauth import PreAuthRequest
from xmppd.sasl import verify_password

NS = "jabber:iq:register"
QUERY = f"{{{NS}}}query"
FEATURE = "{http://jabber.org/features/iq-register}register"
MODULES = ["disco", "register", "vcard", "private", "last"]


def reg(type_: str, body: str = "", id_: str = "r1", to: str = "") -> str:
    to_attr = f" to='{to}'" if to else ""
    return f"<iq type='{type_}' id='{id_}'{to_attr}><query xmlns='{NS}'>{body}</query></iq>"


def creds(user: str, password: str = "s3cret password") -> str:
    return f"<username>{user}</username><password>{password}</password>"


async def pre_auth(h: ModuleHarness, xml: str, peer: str = "192.0.2.1") -> etree._Element:
    return await h.host().pre_auth.dispatch(parse_element(xml), "localhost", peer)


async def can_login(h: ModuleHarness, user: str, password: str) -> bool:
    """Whether `password` matches the stored SCRAM verifiers (what SASL PLAIN checks)."""
    stored = await h.server.accounts.credentials("localhost", user)
    return stored is not None and verify_password(stored, password)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, accounts=("alice", "bob"), modules_enabled=MODULES
    ) as harness:
        yield harness


@pytest.fixture
async def open_h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path,
        accounts=("alice",),
        modules_enabled=MODULES,
        modules={"register": {"allow_registration": True, "registrations_per_ip": 2}},
    ) as harness:
        yield harness


# --- registration disabled (the default) -------------------------------------------------------


async def test_nothing_is_offered_before_authentication_by_default(h: ModuleHarness) -> None:
    assert h.host().pre_auth.stream_features() == []
    reply = await pre_auth(h, reg("set", creds("mallory")))
    assert error_condition(reply) == "service-unavailable"
    assert not await h.server.accounts.exists("localhost", "mallory")


# --- registration enabled ---------------------------------------------------------------------


async def test_feature_and_form_are_offered_when_enabled(open_h: ModuleHarness) -> None:
    (feature,) = open_h.host().pre_auth.stream_features()
    assert feature.tag == FEATURE
    reply = await pre_auth(open_h, reg("get"))
    assert reply.get("type") == "result"
    assert reply.get("id") == "r1"
    assert reply.get("to") is None
    assert reply.get("from") is None
    query = reply.find(QUERY)
    assert query is not None
    assert query.find(f"{{{NS}}}username") is not None
    assert query.find(f"{{{NS}}}password") is not None
    assert query.findtext(f"{{{NS}}}instructions")


async def test_registration_creates_a_working_account(open_h: ModuleHarness) -> None:
    reply = await pre_auth(open_h, reg("set", creds("NewUser")))
    assert reply.get("type") == "result", etree.tostring(reply)
    assert await can_login(open_h, "newuser", "s3cret password")  # username is prepared


async def test_existing_username_is_conflict(open_h: ModuleHarness) -> None:
    reply = await pre_auth(open_h, reg("set", creds("Alice")))
    assert error_condition(reply) == "conflict"
    assert await can_login(open_h, "alice", PASSWORD)


@pytest.mark.parametrize(
    "body",
    [
        "<username>carol</username>",
        "<password>only a password</password>",
        "<username></username><password>x</password>",
        "<username>carol</username><password></password>",
        "",
    ],
)
async def test_missing_fields_are_not_acceptable(open_h: ModuleHarness, body: str) -> None:
    reply = await pre_auth(open_h, reg("set", body))
    assert error_condition(reply) == "not-acceptable"
    assert not await open_h.server.accounts.exists("localhost", "carol")


@pytest.mark.parametrize("username", ["bad@user", "with space", "a/b", "x" * 1100])
async def test_username_that_does_not_prepare_is_jid_malformed(
    open_h: ModuleHarness, username: str
) -> None:
    reply = await pre_auth(open_h, reg("set", creds(username)))
    assert error_condition(reply) == "jid-malformed"


async def test_registrations_are_limited_per_address(open_h: ModuleHarness) -> None:
    for i in range(2):
        assert (await pre_auth(open_h, reg("set", creds(f"user{i}")))).get("type") == "result"
    reply = await pre_auth(open_h, reg("set", creds("user2")))
    assert error_condition(reply) == "not-acceptable"  # XEP-0077 §3.1.1
    assert not await open_h.server.accounts.exists("localhost", "user2")
    other = await pre_auth(open_h, reg("set", creds("user2")), peer="198.51.100.7")
    assert other.get("type") == "result"


async def test_failed_attempts_do_not_use_up_the_limit(open_h: ModuleHarness) -> None:
    for _ in range(5):
        assert error_condition(await pre_auth(open_h, reg("set", creds("alice")))) == "conflict"
    assert (await pre_auth(open_h, reg("set", creds("fresh")))).get("type") == "result"


async def test_removal_before_authentication_is_not_authorized(open_h: ModuleHarness) -> None:
    reply = await pre_auth(open_h, reg("set", "<remove/>"))
    assert error_condition(reply) == "not-authorized"
    assert await open_h.server.accounts.exists("localhost", "alice")


async def test_unload_withdraws_the_pre_auth_feature_and_handlers(tmp_path: Path) -> None:
    """Registrations made through the context are undone by the loader (no manual unload)."""
    async with ModuleHarness.started(tmp_path, modules_enabled=["disco"]) as h:
        await _load_unload_register(h)


async def _load_unload_register(h: ModuleHarness) -> None:
    host = h.host()
    assert host.pre_auth.features == []
    assert host.pre_auth.handlers == {}

    async def other(request: PreAuthRequest) -> None:
        """Another module's pre-auth handler: must survive the register module's unload."""

    other_tag = "{urn:xmppd:test}other"
    host.pre_auth.add_handler("set", other_tag, other)
    manager = ModuleManager(h.server)
    options = Register.Options(allow_registration=True)
    await manager.load_one(host, Register, "register", options)
    assert [f.tag for f in host.pre_auth.stream_features()] == [FEATURE]
    assert set(host.pre_auth.handlers) == {("get", QUERY), ("set", QUERY), ("set", other_tag)}
    assert (await pre_auth(h, reg("get"))).get("type") == "result"

    await manager.unload_all()

    assert host.pre_auth.features == []
    assert host.pre_auth.stream_features() == []
    assert set(host.pre_auth.handlers) == {("set", other_tag)}
    reply = await pre_auth(h, reg("set", creds("mallory")))
    assert error_condition(reply) == "service-unavailable"
    assert not await h.server.accounts.exists("localhost", "mallory")
    # Loading it again offers registration again.
    await manager.load_one(host, Register, "register", options)
    assert (await pre_auth(h, reg("get"))).get("type") == "result"
    await manager.unload_all()


async def test_a_second_handler_for_the_same_pre_auth_iq_is_refused(
    open_h: ModuleHarness,
) -> None:
    registry = open_h.host().pre_auth

    async def hijack(request: PreAuthRequest) -> None:
        raise AssertionError("must never run")

    with pytest.raises(ValueError, match="already handled"):
        registry.add_handler("set", QUERY, hijack)
    with pytest.raises(ValueError, match="get/set"):
        registry.add_handler("result", QUERY, hijack)
    # Removing with a handler that is not the registered one leaves the registered one.
    registry.remove_handler("set", QUERY, hijack)
    assert error_condition(await pre_auth(open_h, reg("set", creds("Alice")))) == "conflict"


def test_rate_limit_window_slides() -> None:
    limit = RateLimit(1, 60.0)
    assert limit.allowed("a", now=0.0)
    limit.record("a", now=0.0)
    assert not limit.allowed("a", now=59.0)
    assert limit.allowed("b", now=59.0)
    assert limit.allowed("a", now=60.5)
    limit.prune(now=1000.0)
    assert limit._events == {}


# --- logged-in users: password change and removal ------------------------------------------


async def test_logged_in_user_sees_registered(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    for to in ("", "localhost"):
        await h.send(alice, reg("get", to=to))
        query = h.take_one(alice).find(QUERY)
        assert query is not None
        assert query.find(f"{{{NS}}}registered") is not None
        assert query.findtext(f"{{{NS}}}username") == "alice"


@pytest.mark.parametrize("to", ["", "localhost", "alice@localhost"])
async def test_password_change_replaces_the_verifiers(h: ModuleHarness, to: str) -> None:
    alice = await h.connect("alice@localhost/home")
    await h.send(alice, reg("set", creds("alice", "brand new password"), to=to))
    assert h.take_one(alice).get("type") == "result"
    assert await can_login(h, "alice", "brand new password")
    assert not await can_login(h, "alice", PASSWORD)


async def test_password_change_for_another_user_is_refused(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    await h.send(alice, reg("set", creds("bob", "hijacked")))
    assert error_condition(h.take_one(alice)) == "not-authorized"
    assert await can_login(h, "bob", PASSWORD)


async def test_password_change_via_other_users_jid_is_forbidden(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    await h.send(alice, reg("set", creds("bob", "hijacked"), to="bob@localhost"))
    assert error_condition(h.take_one(alice)) == "forbidden"
    assert await can_login(h, "bob", PASSWORD)


@pytest.mark.parametrize(
    ("body", "condition"),
    [
        ("<username>alice</username>", "bad-request"),
        ("<username>alice</username><password></password>", "not-acceptable"),
    ],
)
async def test_bad_password_change_is_refused(h: ModuleHarness, body: str, condition: str) -> None:
    alice = await h.connect("alice@localhost/home")
    await h.send(alice, reg("set", body))
    reply = h.take_one(alice)
    assert error_condition(reply) == condition
    assert await can_login(h, "alice", PASSWORD)


async def test_password_change_error_does_not_echo_the_password(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    await h.send(alice, reg("set", creds("bob", "do not echo me")))
    reply = h.take_one(alice)
    assert error_condition(reply) == "not-authorized"
    assert b"do not echo me" not in etree.tostring(reply)


async def test_remove_with_other_children_is_bad_request(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    await h.send(alice, reg("set", "<remove/><username>alice</username>"))
    assert error_condition(h.take_one(alice)) == "bad-request"
    assert await h.server.accounts.exists("localhost", "alice")


async def test_removal_answers_then_ends_every_session_and_deletes_data(h: ModuleHarness) -> None:
    one = await h.connect("alice@localhost/one")
    two = await h.connect("alice@localhost/two")
    await h.send(one, "<iq type='set' id='v'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>")
    h.take(one)
    await h.send(one, reg("set", "<remove/>", id_="bye"))
    (result,) = h.take(one)
    assert result.get("type") == "result"
    assert result.get("id") == "bye"
    for session in (one, two):
        conn = h.conn(session)
        assert conn.closed
        assert isinstance(conn.close_error, StreamError)
        assert conn.close_error.condition == "not-authorized"
    assert not h.server.sessions.has_sessions(JID.parse("alice@localhost"))
    assert not await h.server.accounts.exists("localhost", "alice")
    storage = h.server.storage
    assert storage is not None
    for store in ("vcard", "last"):  # last: nothing recorded at the sessions' end survives
        assert await storage.keyvalue("localhost", store).keys("alice") == []


async def test_concurrent_registrations_from_one_address_cannot_pass_the_limit(
    open_h: ModuleHarness,
) -> None:
    """The limit (2 here) is counted before the request awaits storage: five at once from one
    address create two accounts."""
    replies = await asyncio.gather(
        *(pre_auth(open_h, reg("set", creds(f"burst{i}"))) for i in range(5))
    )
    assert sorted(r.get("type") for r in replies) == ["error"] * 3 + ["result"] * 2
    created = [await open_h.server.accounts.exists("localhost", f"burst{i}") for i in range(5)]
    assert created.count(True) == 2


async def test_an_ipv6_client_is_limited_by_its_64_prefix(open_h: ModuleHarness) -> None:
    for i in range(2):
        reply = await pre_auth(open_h, reg("set", creds(f"six{i}")), peer=f"2001:db8::{i + 1}")
        assert reply.get("type") == "result"
    reply = await pre_auth(open_h, reg("set", creds("six2")), peer="2001:db8::ffff:1")
    assert error_condition(reply) == "not-acceptable"
    other = await pre_auth(open_h, reg("set", creds("six2")), peer="2001:db8:0:1::1")
    assert other.get("type") == "result"
