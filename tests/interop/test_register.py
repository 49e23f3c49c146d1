"""XEP-0077 In-Band Registration over real sockets: password change and account removal with
slixmpp, account creation before authentication with RawClient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, ClientFactory, make_config
from tests.helpers.wire import RawClient
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

NS = "jabber:iq:register"
FEATURE = "{http://jabber.org/features/iq-register}register"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def condition(reply: object) -> str | None:
    error = reply.find("{jabber:client}error")  # type: ignore[attr-defined]
    if error is None:
        return None
    return next(c.tag.split("}")[1] for c in error if c.tag.startswith(f"{{{STANZAS}}}"))


async def test_password_change_then_login_with_new_password_only(
    connect: ClientFactory,
) -> None:
    alice = await connect("alice@localhost/a")
    alice.register_plugin("xep_0077")
    await alice.plugin["xep_0077"].change_password("a much newer password")
    await connect("alice@localhost/new", "a much newer password")
    await connect("alice@localhost/old", PASSWORD, expect_failure=True)


async def test_account_removal_ends_sessions_and_refuses_login(
    connect: ClientFactory, server: Server
) -> None:
    alice = await connect("alice@localhost/a")
    other = await connect("alice@localhost/b")
    disconnected = other.wait_until("disconnected", timeout=10)
    alice.register_plugin("xep_0077")
    await alice.plugin["xep_0077"].cancel_registration()
    await disconnected
    assert not await server.accounts.exists("localhost", "alice")
    await connect("alice@localhost/again", PASSWORD, expect_failure=True)


async def tls_features(raw: RawClient) -> object:
    await raw.open_stream()
    await raw.starttls()
    return await raw.open_stream()


async def test_registration_is_not_offered_by_default(server: Server) -> None:
    raw = await RawClient.connect(server.ports["c2s"][0])
    try:
        features = await tls_features(raw)
        assert features.find(FEATURE) is None  # type: ignore[attr-defined]
    finally:
        await raw.close()


async def test_registration_request_is_refused_when_disabled(server: Server) -> None:
    raw = await RawClient.connect(server.ports["c2s"][0])
    try:
        await tls_features(raw)
        await raw.send(
            f"<iq type='set' id='r1'><query xmlns='{NS}'><username>mallory</username>"
            f"<password>pw</password></query></iq>"
        )
        reply = await raw.expect("{jabber:client}iq")
        assert condition(reply) == "service-unavailable"
    finally:
        await raw.close()
    assert not await server.accounts.exists("localhost", "mallory")


@pytest.fixture
async def open_server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(make_config(tmp_path, modules={"register": {"allow_registration": True}}))
    await srv.start()
    await srv.accounts.create(JID.parse("alice@localhost"), PASSWORD)
    try:
        yield srv
    finally:
        await srv.stop()


async def test_registration_is_never_offered_without_tls(open_server: Server) -> None:
    raw = await RawClient.connect(open_server.ports["c2s"][0])
    try:
        features = await raw.open_stream()
        assert features.find(FEATURE) is None
    finally:
        await raw.close()


async def test_register_over_tls_then_log_in(open_server: Server) -> None:
    raw = await RawClient.connect(open_server.ports["c2s"][0])
    try:
        features = await tls_features(raw)
        assert features.find(FEATURE) is not None  # type: ignore[attr-defined]
        await raw.send(f"<iq type='get' id='f1'><query xmlns='{NS}'/></iq>")
        form = await raw.expect("{jabber:client}iq")
        assert form.get("type") == "result"
        assert form.find(f"{{{NS}}}query/{{{NS}}}username") is not None
        await raw.send(
            f"<iq type='set' id='r1'><query xmlns='{NS}'><username>alice</username>"
            f"<password>pw</password></query></iq>"
        )
        assert condition(await raw.expect("{jabber:client}iq")) == "conflict"
        await raw.send(
            f"<iq type='set' id='r2'><query xmlns='{NS}'><username>Dave</username>"
            f"<password>daves password</password></query></iq>"
        )
        created = await raw.expect("{jabber:client}iq")
        assert created.get("type") == "result"
        assert created.get("id") == "r2"
        await raw.send(
            f"<iq type='set' id='r3'><query xmlns='{NS}'><username>eve</username>"
            f"<password>eves password</password></query></iq>"
        )
        assert condition(await raw.expect("{jabber:client}iq")) == "not-acceptable"
    finally:
        await raw.close()
    login = await RawClient.connect(open_server.ports["c2s"][0])
    try:
        assert await login.login("dave", "daves password") == "dave@localhost/raw"
    finally:
        await login.close()
    assert not await open_server.accounts.exists("localhost", "eve")
