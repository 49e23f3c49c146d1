"""Hostile and malformed input over real sockets: each case gets the RFC 6120 error, the stream
closes, and a second pair of clients keeps chatting throughout."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, ClientFactory, make_config
from tests.helpers.wire import RawClient, scram_client_final, scram_client_first
from xmppd.jid import JID
from xmppd.server import Server

pytestmark = pytest.mark.interop

HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
)
SASL = "{urn:ietf:params:xml:ns:xmpp-sasl}"


async def chat_still_works(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/bystander")
    bob = await connect("bob@localhost/bystander")
    alice.send_message(mto="bob@localhost/bystander", mbody="still here", mtype="chat")
    assert (await bob.next_message())["body"] == "still here"


async def logged_in(server: Server) -> RawClient:
    raw = await RawClient.connect(server.ports["c2s"][0])
    await raw.login("carol", PASSWORD)
    return raw


PRE_AUTH_CASES = {
    "doctype": (
        HEADER.replace("<stream:stream", "<!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream"),
        "restricted-xml",
    ),
    "comment": (HEADER + "<!-- hello -->", "restricted-xml"),
    "processing-instruction": (HEADER + "<?evil stuff?>", "restricted-xml"),
    "entity-reference": (
        HEADER + "<message to='a@localhost'><body>&ent;</body></message>",
        "restricted-xml",
    ),
    "malformed": (HEADER + "<message><body></message>", "not-well-formed"),
    "content-namespace": (HEADER.replace("jabber:client", "jabber:server"), "invalid-namespace"),
    "stream-namespace": (
        HEADER.replace("http://etherx.jabber.org/streams", "urn:wrong"),
        "invalid-namespace",
    ),
    "unknown-host": (HEADER.replace("to='localhost'", "to='elsewhere.example'"), "host-unknown"),
    "stanza-before-auth": (
        HEADER + "<message to='bob@localhost'><body>x</body></message>",
        "not-authorized",
    ),
    "unknown-top-level": (HEADER + "<foo xmlns='urn:example'/>", "unsupported-stanza-type"),
    "pre-auth-oversize": (
        HEADER + "<message><body>" + "x" * 40000 + "</body></message>",
        "policy-violation",
    ),
    "pre-auth-deep": (HEADER + "<a>" * 20, "policy-violation"),
}


@pytest.mark.parametrize("case", sorted(PRE_AUTH_CASES))
async def test_pre_auth_violation_gets_stream_error(
    server: Server, connect: ClientFactory, case: str
) -> None:
    data, condition = PRE_AUTH_CASES[case]
    raw = await RawClient.connect(server.ports["c2s"][0])
    await raw.send(data)
    assert await raw.stream_error() == condition
    await raw.close()
    await chat_still_works(connect)


async def test_predefined_entities_and_character_references_are_legal(
    server: Server, connect: ClientFactory
) -> None:
    bob = await connect("bob@localhost/b")
    raw = await logged_in(server)
    await raw.send(
        "<message to='bob@localhost/b' type='chat'><body>a &amp; b &lt;c&gt; &#65;&#x42; &quot;&apos;</body></message>"
    )
    msg = await bob.next_message()
    assert msg["body"] == "a & b <c> AB \"'"
    await raw.close()


POST_AUTH_CASES = {
    "oversize-stanza": (
        "<message to='bob@localhost'><body>" + "x" * 300_000 + "</body></message>",
        "policy-violation",
    ),
    "deeply-nested": (
        "<message to='bob@localhost'>" + "<x xmlns='urn:a'>" * 100,
        "policy-violation",
    ),
    "deeply-nested-256k": ("<message>" + "<x>" * 40_000, "policy-violation"),
    "too-many-attributes": (
        "<message " + " ".join(f"a{i}='1'" for i in range(100)) + "/>",
        "policy-violation",
    ),
    "comment-after-auth": ("<!-- x -->", "restricted-xml"),
    "unknown-jabber-client-element": ("<foo/>", "unsupported-stanza-type"),
    "unhandled-nonza": ("<enable xmlns='urn:example:nope'/>", "unsupported-stanza-type"),
}


@pytest.mark.parametrize("case", sorted(POST_AUTH_CASES))
async def test_post_auth_violation_gets_stream_error(
    server: Server, connect: ClientFactory, case: str
) -> None:
    data, condition = POST_AUTH_CASES[case]
    raw = await logged_in(server)
    await raw.send(data)
    assert await raw.stream_error() == condition
    await raw.close()
    await chat_still_works(connect)


async def test_stanza_before_bind_is_not_authorized(server: Server) -> None:
    raw = await RawClient.connect(server.ports["c2s"][0])
    await raw.open_stream()
    await raw.starttls()
    await raw.open_stream()
    token = base64.b64encode(f"\0carol\0{PASSWORD}".encode()).decode()
    await raw.send(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    )
    await raw.expect(f"{SASL}success")
    await raw.open_stream()
    await raw.send("<message to='bob@localhost'><body>sneaky</body></message>")
    assert await raw.stream_error() == "not-authorized"


async def sasl_failure(raw: RawClient) -> str:
    failure = await raw.expect(f"{SASL}failure")
    return failure[0].tag.split("}")[1]


async def tls_stream(server: Server) -> RawClient:
    raw = await RawClient.connect(server.ports["c2s"][0])
    await raw.open_stream()
    await raw.starttls()
    features = await raw.open_stream()
    mechs = [m.text for m in features.iter(f"{SASL}mechanism")]
    assert "PLAIN" in mechs
    assert "SCRAM-SHA-256" in mechs
    assert "SCRAM-SHA-1-PLUS" in mechs
    return raw


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (b"\0carol", "malformed-request"),  # two fields
        (b"\0carol\0pw\0extra", "malformed-request"),  # four fields
        (b"\0carol\0" + PASSWORD.encode() + b"x", "not-authorized"),
        (b"bob@localhost\0carol\0" + PASSWORD.encode(), "invalid-authzid"),
    ],
)
async def test_plain_strict_parsing_and_authzid(
    server: Server, payload: bytes, condition: str
) -> None:
    raw = await tls_stream(server)
    await raw.send(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{base64.b64encode(payload).decode()}</auth>"
    )
    assert await sasl_failure(raw) == condition
    await raw.close()


async def test_plain_authzid_naming_oneself_is_fine(server: Server) -> None:
    raw = await tls_stream(server)
    token = base64.b64encode(b"carol@localhost\0carol\0" + PASSWORD.encode()).decode()
    await raw.send(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    )
    await raw.expect(f"{SASL}success")
    await raw.close()


async def test_bad_base64_is_incorrect_encoding(server: Server) -> None:
    raw = await tls_stream(server)
    await raw.send(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!!notbase64</auth>"
    )
    assert await sasl_failure(raw) == "incorrect-encoding"
    await raw.close()


async def test_unknown_mechanism_is_invalid_mechanism(server: Server) -> None:
    raw = await tls_stream(server)
    await raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>")
    assert await sasl_failure(raw) == "invalid-mechanism"
    await raw.close()


async def test_auth_before_starttls_is_refused_and_plain_not_offered(server: Server) -> None:
    raw = await RawClient.connect(server.ports["c2s"][0])
    features = await raw.open_stream()
    assert (
        features.find(
            "{urn:ietf:params:xml:ns:xmpp-tls}starttls/{urn:ietf:params:xml:ns:xmpp-tls}required"
        )
        is not None
    )
    assert features.find(f"{SASL}mechanisms") is None
    token = base64.b64encode(f"\0carol\0{PASSWORD}".encode()).decode()
    await raw.send(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    )
    assert await sasl_failure(raw) == "encryption-required"
    await raw.close()


async def test_scram_y_flag_downgrade_is_refused(server: Server) -> None:
    raw = await tls_stream(server)
    first, bare = scram_client_first("carol", gs2="y,,")
    await raw.send(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{base64.b64encode(first.encode()).decode()}</auth>"
    )
    el = await raw.next()
    if el.tag == f"{SASL}challenge":  # refused at the first message or at the final one
        server_first = base64.b64decode(el.text or "").decode()
        final, _sig = scram_client_final(PASSWORD, "SHA-1", bare, server_first, gs2="y,,")
        await raw.send(
            f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{base64.b64encode(final.encode()).decode()}</response>"
        )
        el = await raw.next()
    assert el.tag == f"{SASL}failure"
    await raw.close()


async def test_scram_by_hand_verifies_server_signature(server: Server) -> None:
    raw = await tls_stream(server)
    first, bare = scram_client_first("carol")
    await raw.send(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{base64.b64encode(first.encode()).decode()}</auth>"
    )
    challenge = await raw.expect(f"{SASL}challenge")
    server_first = base64.b64decode(challenge.text or "").decode()
    final, signature = scram_client_final(PASSWORD, "SHA-256", bare, server_first)
    await raw.send(
        f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{base64.b64encode(final.encode()).decode()}</response>"
    )
    success = await raw.expect(f"{SASL}success")
    assert base64.b64decode(success.text or "") == b"v=" + base64.b64encode(signature)
    await raw.close()


async def test_iq_result_and_error_are_never_answered(server: Server) -> None:
    raw = await logged_in(server)
    await raw.send("<iq type='result' id='r1' to='localhost'/>")
    await raw.send(
        "<iq type='error' id='r2' to='localhost'><error type='cancel'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    await raw.send("<message type='error' to='nobody@localhost'><body>x</body></message>")
    await raw.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = await raw.expect("{jabber:client}iq")
    assert reply.get("id") == "p1"
    assert reply.get("type") == "result"
    await raw.close()


@pytest.mark.parametrize(
    ("stanza", "condition"),
    [
        (
            "<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "bad-request",
        ),  # no id
        ("<iq type='get' id='i' to='localhost'/>", "bad-request"),  # no payload
        (
            "<iq type='set' id='i' to='localhost'><a xmlns='urn:a'/><b xmlns='urn:b'/></iq>",
            "bad-request",
        ),
        ("<iq type='get' id='i' to='@@@bad'><ping xmlns='urn:xmpp:ping'/></iq>", "jid-malformed"),
        ("<presence type='bogus' to='bob@localhost'/>", "bad-request"),
        (
            "<message to='someone@remote.example' type='chat'><body>x</body></message>",
            "remote-server-not-found",
        ),
    ],
)
async def test_bad_stanzas_get_stanza_errors_and_the_stream_stays(
    server: Server, stanza: str, condition: str
) -> None:
    raw = await logged_in(server)
    await raw.send(stanza)
    reply = await raw.next()
    assert reply.get("type") == "error"
    error = reply.find("{jabber:client}error")
    assert error is not None
    assert error[0].tag == f"{{urn:ietf:params:xml:ns:xmpp-stanzas}}{condition}"
    await raw.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert (await raw.expect("{jabber:client}iq")).get("type") == "result"
    await raw.close()


@pytest.fixture
async def quick_timeout_server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(make_config(tmp_path, limits={"auth_timeout": 0.5}))
    await srv.start()
    await srv.accounts.create(JID.parse("carol@localhost"), PASSWORD)
    yield srv
    await srv.stop()


async def test_unauthenticated_connection_times_out(quick_timeout_server: Server) -> None:
    raw = await RawClient.connect(quick_timeout_server.ports["c2s"][0])
    await raw.open_stream()
    assert await raw.stream_error(timeout=5) == "connection-timeout"


async def test_silent_connection_times_out_even_during_tls(quick_timeout_server: Server) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", quick_timeout_server.ports["c2s_direct_tls"][0]
    )
    writer.write(b"\x16\x03\x01")  # start of a ClientHello, then silence
    data = await asyncio.wait_for(reader.read(), 5)
    assert data == b""
    writer.close()
