"""XEP-0114 stanza namespace translation (xmppd/stream/component.py), pure."""

from __future__ import annotations

from lxml import etree

from xmppd.stream.component import NS_COMPONENT, handshake_digest, translate
from xmppd.stream.serializer import serialize

NS_CLIENT = "jabber:client"


def test_translate_moves_stanza_namespace_children_and_keeps_foreign_payloads() -> None:
    stanza = etree.fromstring(
        "<message xmlns='jabber:client' to='a@b' xml:lang='en'>"
        "<body>hi<b/>tail</body>"
        "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>x</body>"
        "</message></forwarded>"
        "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></message>"
    )

    out = translate(stanza, NS_CLIENT, NS_COMPONENT)

    assert out.tag == f"{{{NS_COMPONENT}}}message"
    assert out.get("to") == "a@b"
    assert out.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    body = out.find(f"{{{NS_COMPONENT}}}body")
    assert body is not None
    assert body.text == "hi"
    assert body[0].tag == f"{{{NS_COMPONENT}}}b"
    assert body[0].tail == "tail"
    inner = out.find("{urn:xmpp:forward:0}forwarded/{jabber:client}message/{jabber:client}body")
    assert inner is not None
    assert inner.text == "x"
    assert out.find(f"{{{NS_COMPONENT}}}error/{{urn:ietf:params:xml:ns:xmpp-stanzas}}*") is not None
    wire = serialize(out)
    assert wire.startswith(b'<message xmlns="jabber:component:accept"')
    assert b"ns0:" not in wire
    # and back again: the same tree as the original
    back = translate(out, NS_COMPONENT, NS_CLIENT)
    assert [e.tag for e in back.iter()] == [e.tag for e in stanza.iter()]
    assert [(e.text, e.tail) for e in back.iter()][1:] == [(e.text, e.tail) for e in stanza.iter()][
        1:
    ]


def test_translate_leaves_the_original_untouched() -> None:
    stanza = etree.fromstring("<iq xmlns='jabber:client' type='get' id='1'><q xmlns='urn:x'/></iq>")

    translate(stanza, NS_CLIENT, NS_COMPONENT)

    assert stanza.tag == "{jabber:client}iq"
    assert len(stanza) == 1


def test_handshake_digest_is_lowercase_sha1_hex_of_id_and_secret() -> None:
    # SHA-1("3BF96D32" + "secret"), computed independently with `printf ... | sha1sum`
    assert handshake_digest("3BF96D32", "secret") == "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"
