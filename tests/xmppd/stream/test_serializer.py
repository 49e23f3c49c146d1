"""RFC 6120 §4.7 and §11: stream headers and element serialization, round-tripped via the parser."""

from __future__ import annotations

import pytest
from lxml import etree

from xmppd.ns import NS_CLIENT, NS_SASL, NS_STREAMS, XML_LANG
from xmppd.stream import serializer
from xmppd.stream.parser import ElementReceived, StreamOpened, StreamParser
from xmppd.stream.serializer import STREAM_CLOSE, SharedBytes, serialize, stream_header

CLIENT_HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)


def parse_in_stream(data: bytes) -> etree._Element:
    """Parse one element the way a client with a jabber:client stream would."""
    parser = StreamParser()
    (_, received) = parser.feed(CLIENT_HEADER + data)
    assert isinstance(received, ElementReceived)
    return received.element


def assert_same(a: etree._Element, b: etree._Element) -> None:
    assert a.tag == b.tag
    assert dict(a.attrib) == dict(b.attrib)
    assert (a.text or "") == (b.text or "")
    assert len(a) == len(b)
    for child_a, child_b in zip(a, b, strict=True):
        assert_same(child_a, child_b)
        assert (child_a.tail or "") == (child_b.tail or "")


def test_stream_header_bytes():
    header = stream_header(from_="example.com", to="juliet@example.com", id_="abc")
    assert header == (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams' from='example.com' "
        b"to='juliet@example.com' id='abc' version='1.0' xml:lang='en'>"
    )


def test_stream_header_escapes_values_and_omits_absent_attributes():
    header = stream_header(
        from_=None, to=None, id_="a'b\"c<d>&e", lang="de", content_ns="jabber:server"
    )
    (opened,) = StreamParser().feed(header)
    assert opened == StreamOpened(
        tag=f"{{{NS_STREAMS}}}stream",
        attrs={"id": "a'b\"c<d>&e", "version": "1.0", XML_LANG: "de"},
        default_ns="jabber:server",
    )


def test_stream_close_closes_a_parsed_stream():
    parser = StreamParser()
    parser.feed(stream_header(from_="example.com", to=None, id_="x"))
    assert [type(event).__name__ for event in parser.feed(STREAM_CLOSE)] == ["StreamClosed"]


def test_stanza_serializes_with_default_namespace_and_no_declaration():
    message = etree.Element(f"{{{NS_CLIENT}}}message", nsmap={None: NS_CLIENT}, to="a@b")
    etree.SubElement(message, f"{{{NS_CLIENT}}}body").text = "hi"
    message.tail = "\n  "
    assert (
        serialize(message) == b'<message xmlns="jabber:client" to="a@b"><body>hi</body></message>'
    )


def test_nonza_serializes_with_its_own_namespace():
    success = etree.Element(f"{{{NS_SASL}}}success", nsmap={None: NS_SASL})
    assert serialize(success) == b'<success xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/>'
    assert parse_in_stream(serialize(success)).tag == f"{{{NS_SASL}}}success"


def test_non_ascii_is_written_as_utf8():
    element = etree.Element(f"{{{NS_CLIENT}}}message", nsmap={None: NS_CLIENT})
    element.text = "héllo ☃"
    assert serialize(element) == '<message xmlns="jabber:client">héllo ☃</message>'.encode()


@pytest.mark.parametrize(
    "wire",
    [
        b"<message to='juliet@example.com/balcony' type='chat' id='m1'>"
        b"<body>Art thou not Romeo?</body>"
        b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        b"<message id='&quot;&apos;&amp;&lt;&gt;'><body>&amp;&lt;&gt;&#65; \xe2\x98\x83\n"
        b"<b>mixed</b> tail</body></message>",
        b"<iq type='get' id='1'><query xmlns='jabber:iq:roster' ver=''/></iq>",
        b"<presence xml:lang='de'><status>x</status><c xmlns='http://jabber.org/protocol/caps'"
        b" hash='sha-1' node='n' ver='v'/></presence>",
        b"<message><x:item xmlns:x='urn:x' x:a='1' b='2'><plain/></x:item></message>",
        b"<message><body xmlns=''/></message>",
        b"<a xmlns='urn:xmpp:sm:3' h='5'/>",
        b"<message a='line1&#10;line2&#9;tab'/>",
    ],
)
def test_parse_serialize_parse_round_trip(wire: bytes) -> None:
    first = parse_in_stream(wire)
    data = serialize(first)
    assert b"xmlns:stream" not in data
    assert not data.startswith(b"<?xml")
    second = parse_in_stream(data)
    assert_same(first, second)
    assert serialize(second) == data


def test_serialized_stanza_parses_standalone():
    element = parse_in_stream(b"<message to='a@b'><body>x</body></message>")
    standalone = etree.fromstring(serialize(element))
    assert_same(element, standalone)


@pytest.mark.parametrize(
    "to",
    [
        "bob@localhost/phone",
        'o\'brien@localhost/a&b<c>"d"',
        "user@localhost/tab\there",
        "zoë@localhost/☃",
    ],
)
def test_shared_bytes_splice_equals_serializing_each_copy(to: str) -> None:
    element = etree.Element("{jabber:client}message", nsmap={None: "jabber:client"})
    element.set("from", "room@conference.localhost/nick")
    element.set("type", "groupchat")
    etree.SubElement(element, "{jabber:client}body").text = "<b>&amp; 'quoted' \"text\""
    shared = SharedBytes.of(element)
    assert shared is not None

    element.set("to", to)
    assert shared.to(to) == serialize(element)
    parsed = etree.fromstring(shared.to(to))
    assert parsed.get("to") == to


def test_shared_bytes_refuse_an_element_carrying_the_placeholder() -> None:
    element = etree.Element("{jabber:client}message", nsmap={None: "jabber:client"})
    etree.SubElement(element, "{jabber:client}body").text = serializer._TO_MARK

    assert SharedBytes.of(element) is None


def test_shared_bytes_placeholder_is_not_guessable() -> None:
    # A sender who could put the placeholder into a stanza could make fan-out fall back.
    mark = serializer._TO_MARK
    assert mark != "\ue000to\ue001"
    assert len(mark) >= 18
