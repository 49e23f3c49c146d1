"""Authentication policy over real sockets: throttling, channel-binding advertisement (XEP-0440),
SNI certificate choice, legacy session establishment."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import PASSWORD, make_config
from tests.helpers.wire import RawClient, client_context
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop
SASL = "{urn:ietf:params:xml:ns:xmpp-sasl}"


async def plain_attempt(server: Server, user: str, password: str) -> tuple[bool, float]:
    """One PLAIN attempt on a fresh connection: (succeeded, seconds the answer took)."""
    raw = await RawClient.connect(server.ports["c2s"][0])
    await raw.open_stream()
    await raw.starttls()
    await raw.open_stream()
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    started = time.monotonic()
    await raw.send(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    )
    reply = await raw.next(timeout=30)
    elapsed = time.monotonic() - started
    await raw.close()
    if reply.tag == f"{SASL}failure":
        assert reply[0].tag == f"{SASL}not-authorized"  # same answer for any failure cause
        return False, elapsed
    assert reply.tag == f"{SASL}success"
    return True, elapsed


async def test_correct_password_below_threshold_is_never_refused_or_delayed(server: Server) -> None:
    for _ in range(4):
        ok, _elapsed = await plain_attempt(server, "carol", "wrong")
        assert not ok
    ok, elapsed = await plain_attempt(server, "carol", PASSWORD)
    assert ok
    assert elapsed < 0.4


async def test_failures_above_threshold_delay_but_do_not_refuse(server: Server) -> None:
    for _ in range(5):
        assert not (await plain_attempt(server, "carol", "wrong"))[0]
    ok, elapsed = await plain_attempt(server, "carol", PASSWORD)
    assert ok  # delayed, never refused
    assert elapsed >= 0.45


async def test_unknown_account_fails_like_wrong_password(server: Server) -> None:
    assert (await plain_attempt(server, "nobody", "whatever"))[0] is False


async def test_channel_binding_types_are_advertised(server: Server) -> None:
    raw = await RawClient.connect(server.ports["c2s"][0])
    await raw.open_stream()
    await raw.starttls()
    features = await raw.open_stream()
    types = {cb.get("type") for cb in features.iter("{urn:xmpp:sasl-cb:0}channel-binding")}
    # Python's ssl gives the server tls-server-end-point on any version; tls-unique only on
    # TLS 1.2 (RFC 9266); tls-exporter is not obtainable on Python 3.11.
    assert types == {"tls-server-end-point"}
    await raw.close()


async def test_tls12_connection_also_offers_tls_unique(server: Server) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        server.ports["c2s_direct_tls"][0],
        ssl=client_context(max_tls12=True),
        server_hostname="localhost",
    )
    raw = RawClient(reader, writer)
    features = await raw.open_stream()
    types = {cb.get("type") for cb in features.iter("{urn:xmpp:sasl-cb:0}channel-binding")}
    assert types == {"tls-server-end-point", "tls-unique"}
    await raw.close()


async def test_legacy_session_is_advertised_optional_and_answered(server: Server) -> None:
    raw = await RawClient.connect(server.ports["c2s"][0])
    await raw.login("carol", PASSWORD)
    await raw.send(
        "<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
    )
    reply = await raw.expect("{jabber:client}iq")
    assert reply.get("type") == "result"
    assert reply.get("id") == "s1"
    await raw.close()


@pytest.fixture
async def two_host_server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(make_config(tmp_path, hosts=["one.test", "two.test"]))
    await srv.start()
    await srv.accounts.create(JID.parse("u@two.test"), PASSWORD)
    yield srv
    await srv.stop()


@pytest.mark.parametrize("name", ["one.test", "two.test", "conference.two.test"])
async def test_sni_picks_the_hosts_certificate(two_host_server: Server, name: str) -> None:
    ctx = client_context()
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", two_host_server.ports["c2s_direct_tls"][0], ssl=ctx, server_hostname=name
    )
    ssl_object: ssl.SSLObject = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = sans.get_values_for_type(x509.DNSName)
    expected = name.removeprefix("conference.")
    assert expected in names
    assert f"conference.{expected}" in names
    assert ssl_object.selected_alpn_protocol() is None  # no ALPN offered: still fine
    writer.close()


async def test_direct_tls_selects_alpn_xmpp_client(two_host_server: Server) -> None:
    ctx = client_context()
    ctx.set_alpn_protocols(["xmpp-client"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", two_host_server.ports["c2s_direct_tls"][0], ssl=ctx, server_hostname="two.test"
    )
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "xmpp-client"
    raw = RawClient(reader, writer)
    features = await raw.open_stream("two.test")
    assert features.find(f"{SASL}mechanisms") is not None
    await raw.close()


@pytest.mark.parametrize("hash_name", ["SHA-1", "SHA-256"])
async def test_scram_plus_with_tls_server_end_point(server: Server, hash_name: str) -> None:
    import hashlib

    from tests.helpers.wire import scram_client_final, scram_client_first

    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        server.ports["c2s_direct_tls"][0],
        ssl=client_context(),
        server_hostname="localhost",
    )
    raw = RawClient(reader, writer)
    await raw.open_stream()
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    cb_data = hashlib.sha256(der).digest()  # RFC 5929 §4.1: ECDSA-with-SHA256 certificate
    gs2 = "p=tls-server-end-point,,"
    first, bare = scram_client_first("carol", gs2=gs2)
    mech = f"SCRAM-{hash_name}-PLUS"
    await raw.send(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{base64.b64encode(first.encode()).decode()}</auth>"
    )
    challenge = await raw.expect(f"{SASL}challenge")
    server_first = base64.b64decode(challenge.text or "").decode()
    final, signature = scram_client_final(
        PASSWORD, hash_name, bare, server_first, gs2=gs2, cb_data=cb_data
    )
    await raw.send(
        f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{base64.b64encode(final.encode()).decode()}</response>"
    )
    success = await raw.expect(f"{SASL}success")
    assert base64.b64decode(success.text or "") == b"v=" + base64.b64encode(signature)
    await raw.close()


async def test_scram_plus_with_wrong_binding_data_is_refused(server: Server) -> None:
    from tests.helpers.wire import scram_client_final, scram_client_first

    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        server.ports["c2s_direct_tls"][0],
        ssl=client_context(),
        server_hostname="localhost",
    )
    raw = RawClient(reader, writer)
    await raw.open_stream()
    gs2 = "p=tls-server-end-point,,"
    first, bare = scram_client_first("carol", gs2=gs2)
    await raw.send(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256-PLUS'>{base64.b64encode(first.encode()).decode()}</auth>"
    )
    challenge = await raw.expect(f"{SASL}challenge")
    server_first = base64.b64decode(challenge.text or "").decode()
    final, _sig = scram_client_final(
        PASSWORD, "SHA-256", bare, server_first, gs2=gs2, cb_data=b"\0" * 32
    )
    await raw.send(
        f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{base64.b64encode(final.encode()).decode()}</response>"
    )
    failure = await raw.expect(f"{SASL}failure")
    assert failure[0].tag == f"{SASL}not-authorized"
    await raw.close()
