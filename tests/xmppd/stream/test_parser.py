"""RFC 6120 §4 and §11: StreamParser events, restricted XML, limits, hibernation and restarts."""

from __future__ import annotations

import sys
import time
import tracemalloc

import pytest
from lxml import etree

from xmppd.errors import StreamError
from xmppd.ns import NS_CLIENT, NS_STREAMS, XML_LANG
from xmppd.stream import parser as parser_mod
from xmppd.stream.parser import (
    PRE_AUTH_LIMITS,
    ElementReceived,
    ParseEvent,
    ParserLimits,
    StreamClosed,
    StreamOpened,
    StreamParser,
)
from xmppd.stream.serializer import serialize

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' "
    b"xml:lang='en'>"
)
MESSAGE = (
    b"<message to='juliet@example.com/balcony' type='chat' id='m1'>"
    b"<body>Art thou not Romeo?</body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
)
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"


def opened(limits: ParserLimits | None = None, header: bytes = HEADER) -> StreamParser:
    parser = StreamParser(limits or ParserLimits())
    assert isinstance(parser.feed(header)[0], StreamOpened)
    return parser


def elements(events: list[ParseEvent]) -> list[etree._Element]:
    return [event.element for event in events if isinstance(event, ElementReceived)]


def feed_all(parser: StreamParser, data: bytes, chunk: int) -> list[ParseEvent]:
    events: list[ParseEvent] = []
    for start in range(0, len(data), chunk):
        events.extend(parser.feed(data[start : start + chunk]))
    return events


def raises(condition: str, parser: StreamParser, data: bytes, chunk: int = 0) -> StreamError:
    with pytest.raises(StreamError) as info:
        feed_all(parser, data, chunk or len(data))
    assert info.value.condition == condition, info.value
    return info.value


def nested(depth: int) -> bytes:
    return b"<message>" + b"<a>" * (depth - 1) + b"</a>" * (depth - 1) + b"</message>"


# --- events ----------------------------------------------------------------------------


def test_header_is_reported_with_clark_attributes_and_default_namespace():
    (event,) = StreamParser().feed(HEADER)
    assert event == StreamOpened(
        tag=f"{{{NS_STREAMS}}}stream",
        attrs={"to": "example.com", "version": "1.0", XML_LANG: "en"},
        default_ns=NS_CLIENT,
    )


def test_header_without_default_namespace_reports_none():
    (event,) = StreamParser().feed(b"<s:stream xmlns:s='http://etherx.jabber.org/streams'>")
    assert isinstance(event, StreamOpened)
    assert event.default_ns is None


def test_header_with_utf8_bom_and_no_declaration_is_accepted():
    (event,) = StreamParser().feed(b"\xef\xbb\xbf" + HEADER[len(b"<?xml version='1.0'?>") :])
    assert isinstance(event, StreamOpened)


def test_stanza_comes_out_in_the_content_namespace_with_children_namespaces():
    (message,) = elements(opened().feed(MESSAGE))
    assert message.tag == f"{{{NS_CLIENT}}}message"
    assert message.get("to") == "juliet@example.com/balcony"
    assert [child.tag for child in message] == [
        f"{{{NS_CLIENT}}}body",
        f"{{{NS_CHATSTATES}}}active",
    ]
    assert message.findtext(f"{{{NS_CLIENT}}}body") == "Art thou not Romeo?"


def test_stanza_is_detached_without_tail_or_stray_declarations():
    (message,) = elements(opened().feed(b"\n " + MESSAGE + b" \n"))
    assert message.getparent() is None
    assert message.tail is None
    assert message.nsmap == {None: NS_CLIENT}
    assert serialize(message).startswith(b'<message xmlns="jabber:client" to=')


def test_header_and_stanzas_in_one_feed():
    events = StreamParser().feed(HEADER + MESSAGE + b" " + MESSAGE + b"<r xmlns='urn:xmpp:sm:3'/>")
    assert isinstance(events[0], StreamOpened)
    assert [el.tag for el in elements(events)] == [
        f"{{{NS_CLIENT}}}message",
        f"{{{NS_CLIENT}}}message",
        "{urn:xmpp:sm:3}r",
    ]


def test_stream_split_byte_by_byte_gives_the_same_events():
    data = HEADER + MESSAGE + b"\n" + MESSAGE + b"</stream:stream>"
    whole = StreamParser().feed(data)
    split = feed_all(StreamParser(), data, 1)
    assert [type(event) for event in split] == [type(event) for event in whole]
    assert split[0] == whole[0]
    assert [serialize(el) for el in elements(split)] == [serialize(el) for el in elements(whole)]


def test_multibyte_utf8_split_across_feeds():
    parser = opened()
    data = "<message><body>héllo wörld ☃</body></message>".encode()
    (message,) = elements(feed_all(parser, data, 1))
    assert message.findtext(f"{{{NS_CLIENT}}}body") == "héllo wörld ☃"


def test_whitespace_keepalives_produce_no_events():
    parser = opened()
    for _ in range(1000):
        assert parser.feed(b" ") == []
    assert parser.feed(b"\n\t\r\n") == []
    assert len(elements(parser.feed(MESSAGE))) == 1


def test_root_keeps_no_children_after_many_stanzas():
    parser = opened()
    stream = (MESSAGE + b"\n ") * 20000
    assert len(elements(feed_all(parser, stream, 4096))) == 20000
    root = parser._root
    assert root is not None
    assert len(root) == 0
    assert root.text is None
    assert parser._holder is not None
    assert len(parser._holder) == 0


def test_received_elements_do_not_keep_the_parser_alive():
    # Otherwise one long-lived stanza (say, a cached presence) would defeat hibernate().
    parser = opened()
    lxml_parser = parser._parser
    before = sys.getrefcount(lxml_parser)
    kept = elements(parser.feed(MESSAGE * 10))
    assert len(kept) == 10
    assert sys.getrefcount(lxml_parser) == before


def test_stream_close_is_reported_and_later_data_ignored():
    parser = opened()
    events = parser.feed(MESSAGE + b"</stream:stream><garbage")
    assert [type(event) for event in events] == [ElementReceived, StreamClosed]
    assert parser.feed(b"<more/>&bad; <!DOCTYPE x>") == []


def test_self_closing_header_opens_and_closes():
    events = StreamParser().feed(
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>"
    )
    assert [type(event) for event in events] == [StreamOpened, StreamClosed]


def test_predefined_entities_and_character_references_decode():
    data = b"<message id='&quot;&apos;&amp;&lt;&gt;'><body>&amp;&lt;&gt;&quot;&apos;&#65;&#x42;&#xe9;</body></message>"
    (message,) = elements(opened().feed(data))
    assert message.get("id") == "\"'&<>"
    assert message.findtext(f"{{{NS_CLIENT}}}body") == "&<>\"'AB\u00e9"


def test_cdata_section_is_legal_character_data():
    (message,) = elements(opened().feed(b"<message><body><![CDATA[a<b & &c;]]></body></message>"))
    assert message.findtext(f"{{{NS_CLIENT}}}body") == "a<b & &c;"


# --- restricted XML (RFC 6120 §11.1) -------------------------------------------------------


@pytest.mark.parametrize(
    "prolog",
    [
        b"<!DOCTYPE stream>",
        b"<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY a 'b'>]>",
        b"<?xml version='1.0'?>\n<!-- hello -->",
        b"<?xml-stylesheet href='x'?>",
        b"<?xml version='1.0'?><?pi data?>",
        b" <?xml version='1.0'?>",
    ],
)
def test_doctype_comment_or_pi_before_header_is_restricted(prolog: bytes) -> None:
    raises("restricted-xml", StreamParser(), prolog + HEADER)


def test_doctype_split_across_feeds_is_restricted():
    parser = StreamParser()
    data = b"<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY a 'b'>]>" + HEADER
    with pytest.raises(StreamError) as info:
        feed_all(parser, data, 1)
    assert info.value.condition == "restricted-xml"


def test_billion_laughs_is_rejected_without_expansion():
    entities = b"".join(
        b"<!ENTITY lol%d '%s'>" % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10)
    )
    payload = (
        b"<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY lol0 'lol'>"
        + entities
        + b"]>"
        + HEADER
        + b"<message><body>&lol9;</body></message>"
    )
    started = time.perf_counter()
    raises("restricted-xml", StreamParser(), payload)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "stanza",
    [
        b"<message><!-- comment --></message>",
        b"<!-- comment at stream level -->",
        b"<message><?pi data?></message>",
        b"<message><body>&foo;</body></message>",
        b"<message to='&foo;'/>",
        b"<message><body>&lol9;</body></message>",
    ],
)
def test_comments_pis_and_entity_references_in_stream_are_restricted(stanza: bytes) -> None:
    raises("restricted-xml", opened(), stanza)


def test_entity_reference_split_across_feeds_is_restricted():
    with pytest.raises(StreamError) as info:
        feed_all(opened(), b"<message><body>x &foo; y</body></message>", 1)
    assert info.value.condition == "restricted-xml"


# --- malformed input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "stanza",
    [
        b"<message><body></message>",
        b"<message><body>\xff\xfe</body></message>",
        b"<message><body>\xc3</body></message>",
        b"<message a='1' a='2'/>",
        b"<message><body>&#0;</body></message>",
        b"<message><?xml version='1.0'?></message>",
        b"<message><!DOCTYPE x></message>",
    ],
)
def test_malformed_stanza_is_not_well_formed(stanza: bytes) -> None:
    raises("not-well-formed", opened(), stanza)


@pytest.mark.parametrize(
    "stanza",
    [
        b"<x:message/>",
        b"<message><x:body/></message>",
        b"<message x:a='1'/>",
        b"<message><a:b:c/></message>",
        b"<message xmlns:a='urn:u' xmlns:b='urn:u' a:x='1' b:x='2'/>",
        b"<message xmlns:x=''/>",
    ],
)
def test_namespace_errors_are_not_well_formed(stanza: bytes) -> None:
    # RFC 6120 §11.2: passed on, these would break the recipient's stream.
    raises("not-well-formed", opened(), stanza)


def test_relative_namespace_uri_is_accepted():
    parser = opened()
    stanza = b"<iq type='result' id='v'><vCard xmlns='vcard-temp'/></iq>"
    assert len(elements(feed_all(parser, stanza * 200, 300))) == 200
    raises("not-well-formed", parser, b"<message><x:body/></message>")


def test_text_before_header_is_not_well_formed():
    raises("not-well-formed", StreamParser(), b"hello" + HEADER)


def test_other_declared_encoding_is_unsupported():
    data = b"<?xml version='1.0' encoding='ISO-8859-1'?>" + HEADER[len(b"<?xml version='1.0'?>") :]
    raises("unsupported-encoding", StreamParser(), data)


def test_utf16_byte_order_mark_is_unsupported():
    raises("unsupported-encoding", StreamParser(), b"\xff\xfe<\x00")


def test_declared_utf8_encoding_is_accepted():
    data = b'<?xml version="1.0" encoding="UTF-8"?>' + HEADER[len(b"<?xml version='1.0'?>") :]
    assert isinstance(StreamParser().feed(data)[0], StreamOpened)


# --- limits (RFC 6120 §4.9.3.14 policy-violation) -------------------------------------------


def test_max_depth_counts_the_stanza_as_depth_one():
    assert len(elements(opened().feed(nested(32)))) == 1
    error = raises("policy-violation", opened(), nested(33))
    assert "max_depth" in str(error.text)


def test_max_elements_counts_the_stanza_itself():
    ok = b"<message>" + b"<a/>" * 1999 + b"</message>"
    assert len(elements(opened().feed(ok))) == 1
    error = raises("policy-violation", opened(), b"<message>" + b"<a/>" * 2000 + b"</message>")
    assert "max_elements" in str(error.text)


def test_max_attributes_per_element():
    def element(count: int) -> bytes:
        return b"<message><x " + b" ".join(b"a%d='v'" % i for i in range(count)) + b"/></message>"

    assert len(elements(opened().feed(element(64)))) == 1
    error = raises("policy-violation", opened(), element(65))
    assert "max_attributes" in str(error.text)


def test_max_buffered_bounds_one_feed():
    error = raises("policy-violation", opened(PRE_AUTH_LIMITS), b" " * 65537)
    assert "max_buffered" in str(error.text)
    assert opened(PRE_AUTH_LIMITS).feed(b" " * 65536) == []


def big_message(size: int) -> bytes:
    head, tail = b"<message><body>", b"</body></message>"
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("chunk", [1 << 20, 65536, 4096])
def test_stanza_over_default_size_limit_is_rejected(chunk: int) -> None:
    with pytest.raises(StreamError) as info:
        feed_all(opened(), big_message(300 * 1024), chunk)
    assert info.value.condition == "policy-violation"
    assert "max_stanza_bytes" in str(info.value.text)


@pytest.mark.parametrize("chunk", [1 << 20, 4096])
def test_stanza_under_default_size_limit_is_accepted(chunk: int) -> None:
    events = feed_all(opened(), b" " * 100 + big_message(250 * 1024) + MESSAGE, chunk)
    assert len(elements(events)) == 2


@pytest.mark.parametrize("chunk", [65536, 1000, 1])
def test_stanza_over_pre_auth_size_limit_is_rejected(chunk: int) -> None:
    with pytest.raises(StreamError) as info:
        feed_all(opened(PRE_AUTH_LIMITS), big_message(20 * 1024), chunk)
    assert info.value.condition == "policy-violation"


def test_stanza_under_pre_auth_size_limit_is_accepted():
    data = (big_message(15 * 1024) + b" ") * 10
    assert len(elements(feed_all(opened(PRE_AUTH_LIMITS), data, 65536))) == 10


def test_endless_start_tag_is_rejected():
    parser = opened(PRE_AUTH_LIMITS)
    parser.feed(b"<message to='")
    raises("policy-violation", parser, b"x" * 100_000, 1000)


def test_whitespace_inside_an_open_attribute_counts_against_the_limit():
    parser = opened(PRE_AUTH_LIMITS)
    parser.feed(MESSAGE + b"<message a='>")  # looks like a finished tag, is not
    raises("policy-violation", parser, b" " * 100_000, 1000)


def test_oversized_stream_header_is_rejected():
    parser = StreamParser(PRE_AUTH_LIMITS)
    parser.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='")
    raises("policy-violation", parser, b"x" * 100_000, 1000)


def test_overlong_prolog_is_rejected():
    raises("policy-violation", StreamParser(), b"<?xml version='1.0'" + b" " * 2000)


def test_deeply_nested_stanza_is_rejected_early_and_cheaply():
    payload = b"<message>" + b"<a>" * (256 * 1024 // 3)
    parser = opened()
    tracemalloc.start()
    try:
        with pytest.raises(StreamError) as info:
            parser.feed(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.condition == "policy-violation"
    assert peak < 2 * 1024 * 1024


def test_many_flat_elements_are_rejected_early_and_cheaply():
    payload = b"<message>" + b"<a/>" * (256 * 1024 // 4)
    parser = opened()
    tracemalloc.start()
    try:
        with pytest.raises(StreamError) as info:
            parser.feed(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.condition == "policy-violation"
    assert peak < 2 * 1024 * 1024


def test_raising_the_limits_after_authentication():
    parser = opened(PRE_AUTH_LIMITS)
    big = big_message(20 * 1024)
    parser.limits = ParserLimits()
    assert len(elements(parser.feed(big))) == 1


# --- hibernation -------------------------------------------------------------------------


PREFIXED_HEADER = (
    b"<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' "
    b"xmlns:foo='urn:foo' to='example.com'>"
)
PREFIXED_STANZAS = MESSAGE + b"<message><foo:x a='1'/><s:y/></message>"


def test_hibernate_and_feed_continue_identically():
    awake = opened(header=PREFIXED_HEADER)
    sleepy = opened(header=PREFIXED_HEADER)
    assert elements(sleepy.feed(b"\n")) == []
    assert sleepy.hibernate() is True
    assert sleepy._parser is None
    assert sleepy.hibernate() is False
    tail = b" " + PREFIXED_STANZAS + b"</s:stream>"
    expected = awake.feed(tail)
    got = sleepy.feed(tail)
    assert [type(event) for event in got] == [type(event) for event in expected]
    assert [serialize(el) for el in elements(got)] == [serialize(el) for el in elements(expected)]
    (_, second) = elements(got)
    assert [child.tag for child in second] == ["{urn:foo}x", f"{{{NS_STREAMS}}}y"]
    assert isinstance(got[-1], StreamClosed)


def test_hibernate_repeatedly_between_stanzas():
    parser = opened()
    for _ in range(3):
        assert len(elements(parser.feed(MESSAGE))) == 1
        assert parser.hibernate() is True
        assert parser.feed(b" ") == []
        assert parser.hibernate() is False  # still asleep: whitespace does not wake it
    assert [type(event) for event in parser.feed(b"</stream:stream>")] == [StreamClosed]


@pytest.mark.parametrize(
    "pending",
    [
        MESSAGE[:40],  # inside a start tag
        MESSAGE[:60],  # inside a stanza
        MESSAGE + b"<mess",  # a partial start tag after a stanza
        MESSAGE + b"<message a='/>",  # looks complete, is not
        MESSAGE + b"</mess",  # inside an end tag
    ],
)
def test_hibernate_refuses_while_anything_is_buffered(pending: bytes) -> None:
    parser = opened()
    parser.feed(pending)
    assert parser.hibernate() is False
    assert parser.feed(b" ") == []
    assert parser.hibernate() is False


def test_hibernate_refuses_before_header_and_after_close():
    parser = StreamParser()
    assert parser.hibernate() is False
    parser.feed(HEADER[:30])
    assert parser.hibernate() is False
    parser.feed(HEADER[30:] + b"</stream:stream>")
    assert parser.hibernate() is False


def test_hibernate_right_after_header():
    parser = opened()
    assert parser.hibernate() is True
    assert len(elements(parser.feed(MESSAGE))) == 1


# --- restarts ------------------------------------------------------------------------------


def test_reset_expects_a_new_header():
    parser = opened()
    assert len(elements(parser.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"))) == 1
    parser.reset()
    events = parser.feed(HEADER + MESSAGE)
    assert isinstance(events[0], StreamOpened)
    assert len(elements(events)) == 1


def test_reset_in_the_middle_of_a_stanza_discards_it():
    parser = opened()
    parser.feed(MESSAGE[:60])
    parser.reset()
    events = parser.feed(HEADER + MESSAGE)
    assert isinstance(events[0], StreamOpened)
    assert len(elements(events)) == 1


def test_reset_after_close_and_after_hibernate():
    parser = opened()
    parser.feed(b"</stream:stream>")
    parser.reset()
    assert isinstance(parser.feed(HEADER)[0], StreamOpened)
    assert parser.hibernate() is True
    parser.reset()
    assert isinstance(parser.feed(HEADER)[0], StreamOpened)


def test_hibernated_streams_hold_no_parser_and_the_pool_is_bounded():
    parser_mod._POOL.clear()
    parser_mod.take_discarded()
    streams = [opened() for _ in range(parser_mod.POOL_MAX + 10)]
    for stream in streams:
        assert len(elements(stream.feed(MESSAGE))) == 1
        assert stream.hibernate() is True
        assert stream._parser is None
    assert len(parser_mod._POOL) == parser_mod.POOL_MAX
    assert parser_mod.take_discarded() == 10
    assert parser_mod.take_discarded() == 0
    # Waking takes a pooled parser back; the stream goes on as if it had never slept.
    assert len(elements(streams[0].feed(MESSAGE))) == 1
    assert len(parser_mod._POOL) == parser_mod.POOL_MAX - 1


def test_whitespace_keepalive_does_not_wake_a_hibernated_stream():
    parser = opened()
    parser.feed(MESSAGE)
    assert parser.hibernate() is True
    assert parser.feed(b"\n  \n") == []
    assert parser._parser is None
    assert len(elements(parser.feed(b" " + MESSAGE))) == 1


def test_a_pooled_parser_that_saw_hostile_input_serves_the_next_stream_cleanly():
    parser_mod._POOL.clear()
    hostile = opened()
    raises("not-well-formed", hostile, b"<message><b:x/></message>")
    hostile.release()
    assert len(parser_mod._POOL) == 1
    clean = opened()
    assert not parser_mod._POOL  # it took the hostile stream's parser
    (message,) = elements(clean.feed(MESSAGE))
    assert message.get("id") == "m1"
    assert [type(event) for event in clean.feed(b"</stream:stream>")] == [StreamClosed]
    assert len(parser_mod._POOL) == 1  # given back at the close


def test_release_gives_the_parser_back_and_ignores_later_bytes():
    parser_mod._POOL.clear()
    parser = opened()
    parser.release()
    assert len(parser_mod._POOL) == 1
    assert parser.feed(MESSAGE) == []


def test_a_pooled_parser_keeps_no_element_of_the_streams_it_served():
    """lxml holds every started element until its end event, across documents: the open
    stream root must be ended before a parser is pooled, or each reuse would leak one."""
    import gc

    parser_mod._POOL.clear()

    def alive() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, etree._Element))

    before = alive()
    for _ in range(50):
        stream = opened()
        stream.feed(MESSAGE)
        assert stream.hibernate() is True  # hibernate, wake, restart, then the connection goes
        stream.feed(MESSAGE)
        stream.reset()
        assert isinstance(stream.feed(HEADER)[0], StreamOpened)
        stream.release()
    assert len(parser_mod._POOL) == 1  # one parser served all 150 documents
    assert alive() - before <= 2


def test_a_parser_released_mid_stanza_is_not_pooled():
    parser_mod._POOL.clear()
    parser_mod.take_discarded()
    stream = opened()
    stream.feed(MESSAGE[:60])
    stream.release()
    assert parser_mod._POOL == []
    assert parser_mod.take_discarded() == 1
