"""RFC 6120 §4 and §11: incremental XML stream parser enforcing restricted XML and size limits.

Sans-I/O: `StreamParser.feed(bytes)` returns parse events. States:

- PROLOG: no lxml parser yet. The bytes before the root element are buffered and scanned
  here, so a DOCTYPE (with any entity declarations: "billion laughs"), comment or PI never
  reaches lxml; only a UTF-8 BOM, the XML declaration and whitespace may precede the header.
- OPEN: an lxml `XMLPullParser` holds the stream. Bytes go to it in slices of at most 8 KiB
  and the events of each slice are checked as they stream in (depth, element and attribute
  counts on start events; comments and PIs refused), so a hostile stanza costs one slice.
- HIBERNATED: the parser was dropped while idle; the next `feed` re-creates it with a
  synthetic header carrying the original namespace declarations (no `StreamOpened`).
- CLOSED: after ``</stream:stream>``; later bytes are ignored. `reset` (stream restart,
  RFC 6120 §5.4.3.3 and §6.4.6) returns to PROLOG from any state.

Entities: lxml runs with ``resolve_entities="internal"``, not ``False``: with ``False`` it
deliberately swallows "undeclared entity" errors and the parse silently stalls (lxml 6,
``_FeedParser.feed``). No DTD can reach lxml, so no entity is declared, nothing is expanded,
and every reference but the predefined ones and character references fails as undeclared.

Each completed top-level element leaves the stream tree at its end event: it moves into a
holder that declares the header's namespaces (so nothing is renamed ``ns0:``) in a document
that does not reference this parser, and what is handed out is a copy of it: a document root
with its default namespace declared on itself, which serializes without stray declarations
and does not keep the parser alive after `hibernate`. The moved originals are freed after
each slice, so neither tree accumulates children.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

from lxml import etree

from xmppd.errors import StreamError

if TYPE_CHECKING:
    from xmppd.config import Limits


@dataclass(frozen=True, slots=True)
class ParserLimits:
    """Resource limits; exceeding one is a ``policy-violation`` stream error (RFC 6120 §4.9.3.14).

    Attributes:
        max_stanza_bytes: bytes of one top-level element (stanza or nonza) with its children,
            counted to within two feed slices (see `StreamParser`).
        max_depth: nesting depth inside a stanza; the stanza itself is depth 1.
        max_elements: elements inside one stanza, the stanza included.
        max_attributes: attributes per element.
        max_buffered: bytes accepted in one `StreamParser.feed` call.
    """

    max_stanza_bytes: int = 262144
    max_depth: int = 32
    max_elements: int = 2000
    max_attributes: int = 64
    max_buffered: int = 1048576


PRE_AUTH_LIMITS = ParserLimits(
    max_stanza_bytes=16384, max_depth=8, max_elements=64, max_attributes=16, max_buffered=65536
)


@functools.lru_cache(maxsize=8)  # shared by every connection: not two objects each
def parser_limits(lim: Limits, pre_auth: bool) -> ParserLimits:
    """The parser limits of a stream before or after authentication (or a component's
    handshake), from the `[limits]` configuration."""
    if pre_auth:
        return ParserLimits(
            max_stanza_bytes=lim.pre_auth_stanza_size,
            max_depth=lim.pre_auth_max_depth,
            max_elements=lim.pre_auth_max_elements,
            max_attributes=lim.pre_auth_max_attributes,
            max_buffered=max(65536, lim.pre_auth_stanza_size * 4),
        )
    return ParserLimits(
        max_stanza_bytes=lim.stanza_size,
        max_depth=lim.max_depth,
        max_elements=lim.max_elements,
        max_attributes=lim.max_attributes,
        max_buffered=max(1048576, lim.stanza_size * 4),
    )


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The stream header (RFC 6120 §4.7); its namespaces are not validated here."""

    tag: str
    attrs: dict[str, str]
    default_ns: str | None


@dataclass(frozen=True, slots=True)
class ElementReceived:
    """A complete top-level child of the stream, detached from the stream root."""

    element: etree._Element


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The peer closed its stream with ``</stream:stream>`` (RFC 6120 §4.4)."""


ParseEvent = StreamOpened | ElementReceived | StreamClosed

# types-lxml does not declare _Element.__copy__; copy.copy() would add 0.1 µs per stanza.
_copy_element: Callable[[etree._Element], etree._Element] = etree._Element.__copy__  # type: ignore[attr-defined]

_PROLOG_MAX = 1024  # BOM + XML declaration + whitespace before the header; real ones are ~40
_BOM_UTF8 = b"\xef\xbb\xbf"
_XML_WS = b" \t\r\n"
_ENCODING_DECL = re.compile(rb"""encoding\s*=\s*["']([^"']*)["']""")
# From the last "<" of a slice: one complete tag (quoted values may hold ">") and whitespace.
# With "the last event was a top-level boundary" it proves lxml holds no partial element.
_COMPLETE_TAG = re.compile(rb"""<(?:[^'">]|'[^']*'|"[^"]*")*>[ \t\r\n]*""")
_ENTITY_ERRORS = frozenset(
    {etree.ErrorTypes.ERR_UNDECLARED_ENTITY, etree.ErrorTypes.WAR_UNDECLARED_ENTITY}
)


# An lxml pull parser is a reference cycle (its document points back to it), so a dropped one
# waits for the cyclic GC, and a closed one still holds ~8 KiB (its libxml2 context and
# wrappers). Closed parsers are therefore pooled and shared by all streams: an idle
# (hibernated) or finished stream holds none, and opening or waking a stream takes one from the
# pool. A closed parser starts a new document, with an empty error log, on its next feed.
_POOL: list[etree.XMLPullParser] = []
POOL_MAX = 512
_discarded = 0  # parsers left to the cyclic GC because the pool was full


def _make_parser() -> etree.XMLPullParser:
    return etree.XMLPullParser(
        events=("start", "end", "comment", "pi"),
        encoding="utf-8",  # RFC 6120 §11.6; a declared other encoding is refused earlier
        resolve_entities="internal",  # see the module docstring; no DTD ever gets here
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        collect_ids=False,
    )


def _release(parser: etree.XMLPullParser, end_tag: bytes | None) -> None:
    """Close a parser (freeing libxml2's buffers) and pool it while the pool has room.

    lxml keeps every element whose start event it reported on a stack until its end event,
    across documents: a stream root left open would stay alive for as long as the (pooled)
    parser does. So an open root is ended first with `end_tag`; a parser that cannot be
    brought back to an empty stack (mid-stanza, or after a syntax error) is not pooled.
    """
    poolable = True
    if end_tag is not None:
        try:
            parser.feed(end_tag)
        except etree.XMLSyntaxError:
            poolable = False
    with contextlib.suppress(etree.XMLSyntaxError):  # an unended stream is no error here
        parser.close()
    for _ in parser.read_events():
        pass
    if poolable and len(_POOL) < POOL_MAX:
        _POOL.append(parser)
    else:
        _discard()


def _discard() -> None:
    """A parser is left to the cyclic GC (counted for the server's reclaim)."""
    global _discarded  # a process-wide counter, read by the server
    _discarded += 1


def _qualified_name(root: etree._Element) -> str:
    name = etree.QName(root).localname
    return f"{root.prefix}:{name}" if root.prefix else name


def drain_pool() -> int:
    """Drop every pooled parser (after a storm): made at scattered moments, their objects would
    keep whole allocator arenas alive; the pool refills on demand. Returns how many."""
    count = len(_POOL)
    _POOL.clear()
    return count


def take_discarded() -> int:
    """How many parsers were left to the cyclic GC since the last call (the pool was full, or
    the parser could not be brought back to an empty element stack)."""
    global _discarded
    count, _discarded = _discarded, 0
    return count


def _policy(limit: str, value: int) -> StreamError:
    return StreamError("policy-violation", f"{limit} exceeded (limit {value})")


def _syntax_error(exc: etree.XMLSyntaxError) -> StreamError:
    if exc.code in _ENTITY_ERRORS:  # RFC 6120 §11.1: only the predefined entities
        return StreamError("restricted-xml", "entity references are not allowed")
    return StreamError("not-well-formed", exc.msg)


class StreamParser:
    """RFC 6120 §4: incremental parser for one direction of an XML stream.

    `feed` raises `StreamError` on any violation; the parser must then not be fed again
    without `reset`. ``max_stanza_bytes`` is enforced per feed slice (1-8 KiB, a sixteenth
    of the limit): bytes are counted while a top-level element is incomplete, not counting the
    slice it started in, so the count is low by less than two slices and never high.
    """

    __slots__ = (
        "_closed",
        "_depth",
        "_elements",
        "_holder",
        "_idle",
        "_log_seen",
        "_parser",
        "_pending",
        "_prolog",
        "_root",
        "_wake_header",
        "limits",
    )

    def __init__(self, limits: ParserLimits = ParserLimits()) -> None:
        """Expect a stream header; `limits` may be replaced later (e.g. after authentication)."""
        self.limits = limits
        self._parser: etree.XMLPullParser | None = None
        self.reset()

    def _retire(self) -> None:
        """Close the current lxml parser and return it to the shared pool (before the root
        and depth of the stream it parsed are forgotten)."""
        parser = self._parser
        if parser is None:
            return
        self._parser = None
        root = self._root
        if root is None:
            # Before the header's start event, or after the stream's end: nothing is open.
            _release(parser, None)
        elif self._depth == 0:
            _release(parser, f"</{_qualified_name(root)}>".encode())
        else:  # mid-stanza: open elements we cannot name cheaply; let the GC have it
            _discard()

    def reset(self) -> None:
        """Forget the current stream and expect a new header (RFC 6120 §4.3.3 restart)."""
        self._retire()
        self._root: etree._Element | None = None
        self._holder: etree._Element | None = None
        self._wake_header: bytes | None = None
        self._prolog = b""
        self._depth = -1  # -1 before the header, 0 between stanzas, 1 in a stanza, ...
        self._elements = self._pending = self._log_seen = 0
        self._idle = False
        self._closed = False

    def release(self) -> None:
        """The connection is gone: give the lxml parser back to the pool."""
        self._retire()
        self._root = self._holder = None
        self._closed = True

    def hibernate(self) -> bool:
        """Close the lxml parser (~10 KiB -> ~5 KiB) if the stream is open and idle.

        Returns:
            True if it was closed; the next `feed` resumes it transparently.
        """
        root = self._root
        if root is None or self._depth != 0 or not self._idle:
            return False
        name = _qualified_name(root)
        for prefix, uri in root.nsmap.items():
            name += f" xmlns{':' + prefix if prefix else ''}={quoteattr(uri)}"
        self._wake_header = f"<{name}>".encode()
        self._retire()
        self._root = self._holder = None
        return True

    def feed(self, data: bytes) -> list[ParseEvent]:
        """Parse the next bytes of the stream.

        Args:
            data: any chunk of the byte stream, split anywhere.

        Returns:
            The events completed by these bytes, in order.

        Raises:
            StreamError: not-well-formed, restricted-xml, unsupported-encoding or
                policy-violation (RFC 6120 §4.9.3).
        """
        limits = self.limits
        if len(data) > limits.max_buffered:
            raise _policy("max_buffered", limits.max_buffered)
        out: list[ParseEvent] = []
        parser = self._parser
        if parser is None:
            if self._closed or not data:
                return out
            if self._wake_header is not None:
                if data.isspace():
                    return out  # a whitespace keepalive (RFC 6120 §4.6.1) does not wake it
                parser = self._wake(self._wake_header)
            else:
                found = self._scan_prolog(data)
                if found is None:
                    return out
                data = found
                parser = self._new_parser()
        step = min(8192, max(1024, limits.max_stanza_bytes // 16))
        if len(data) <= step:
            self._feed_slice(parser, data, out)
        else:
            for start in range(0, len(data), step):
                self._feed_slice(parser, data[start : start + step], out)
                if self._closed:
                    break
        return out

    def _new_parser(self) -> etree.XMLPullParser:
        parser = _POOL.pop() if _POOL else _make_parser()
        self._parser = parser
        self._log_seen = 0
        return parser

    def _wake(self, header: bytes) -> etree.XMLPullParser:
        parser = self._new_parser()
        parser.feed(header)
        for _event, element in parser.read_events():
            self._set_root(element)
        self._wake_header = None
        self._idle = True
        return parser

    def _scan_prolog(self, data: bytes) -> bytes | None:
        """Check the bytes before the root element; return them all once it begins."""
        buf = self._prolog + data
        if len(buf) < 3 and _BOM_UTF8.startswith(buf):
            self._prolog = buf
            return None
        if buf.startswith((b"\xfe\xff", b"\xff\xfe")):
            raise StreamError("unsupported-encoding", "only UTF-8 is allowed (RFC 6120 §11.6)")
        pos = decl_at = 3 if buf.startswith(_BOM_UTF8) else 0
        while True:
            lt = buf.find(b"<", pos)
            if buf[pos : len(buf) if lt < 0 else lt].strip(_XML_WS):
                raise StreamError("not-well-formed", "text before the stream header")
            if lt < 0 or lt + 1 >= len(buf):
                break
            mark = buf[lt + 1]
            if mark == 0x21:  # "<!"
                raise StreamError("restricted-xml", "DOCTYPE and comments are not allowed")
            if mark != 0x3F:  # not "<?": the root element starts here
                self._prolog = b""
                return buf
            if lt + 6 > len(buf):
                break
            if lt != decl_at or buf[lt + 2 : lt + 5] != b"xml" or buf[lt + 5] not in _XML_WS:
                raise StreamError("restricted-xml", "processing instructions are not allowed")
            end = buf.find(b"?>", lt)
            if end < 0:
                break
            match = _ENCODING_DECL.search(buf, lt, end)
            if match and match.group(1).lower() not in (b"utf-8", b"utf8"):
                raise StreamError("unsupported-encoding", "only UTF-8 is allowed (RFC 6120 §11.6)")
            pos, decl_at = end + 2, -1
        if len(buf) > _PROLOG_MAX:
            raise _policy("prolog size", _PROLOG_MAX)
        self._prolog = buf
        return None

    def _feed_slice(self, parser: etree.XMLPullParser, chunk: bytes, out: list[ParseEvent]) -> None:
        error: etree.XMLSyntaxError | None = None
        try:
            parser.feed(chunk)
        except etree.XMLSyntaxError as exc:
            error = exc  # report the events before it first: a limit may have been hit
        limits = self.limits
        boundary, started_here = self._process(parser, out, limits)
        if self._closed:
            return  # anything after </stream:stream>, even garbage, is ignored
        if error is not None:
            raise _syntax_error(error)
        log = parser.feed_error_log  # a copy; about 0.3 µs
        if len(log) > self._log_seen:
            self._check_log(log)
        root, holder = self._root, self._holder
        if root is not None and holder is not None:  # None until the header's start event
            if len(holder):
                del holder[:]  # originals of the copies handed out; no proxies left: freed
            # Whitespace keepalives (RFC 6120 §4.6.1) would accumulate. This also ensures
            # that root's last child is never a text node lxml did not just create.
            if root.text is not None:
                root.text = None
        if self._depth != 0:
            idle = False
        elif boundary is None:
            idle = self._idle and chunk.isspace()
        else:
            lt = chunk.rfind(b"<")
            idle = boundary and lt >= 0 and _COMPLETE_TAG.fullmatch(chunk, lt) is not None
        self._idle = idle
        if idle:
            self._pending = 0
        elif not started_here:
            self._pending += len(chunk)
            if self._pending > limits.max_stanza_bytes:
                raise _policy("max_stanza_bytes", limits.max_stanza_bytes)

    def _check_log(self, log: etree._ListErrorLog) -> None:
        # libxml2 logs XML-NAMES violations (undeclared prefix, duplicate namespaced
        # attribute) and goes on; passed on, they would break the recipient's parser
        # (RFC 6120 §11.2). Warnings (capped by libxml2), e.g. for the relative namespace
        # URI "vcard-temp", are fine.
        entries = list(log)
        new, self._log_seen = entries[self._log_seen :], len(entries)
        for entry in new:
            if entry.level >= etree.ErrorLevels.ERROR:
                raise StreamError("not-well-formed", entry.message)

    def _process(
        self, parser: etree.XMLPullParser, out: list[ParseEvent], limits: ParserLimits
    ) -> tuple[bool | None, bool]:
        """Check and dispatch the events of one slice (the hot loop).

        Returns:
            Whether the last top-level event was a boundary (None: no such event), and
            whether the open top-level element started in this slice.
        """
        depth, elements = self._depth, self._elements
        max_depth, max_elements = limits.max_depth, limits.max_elements
        max_attributes = limits.max_attributes
        holder = self._holder
        boundary: bool | None = None
        started_here = False
        for event, element in parser.read_events():
            if event == "start":
                depth += 1
                if depth > 1:
                    elements += 1
                    if depth > max_depth:
                        raise _policy("max_depth", max_depth)
                    if elements > max_elements:
                        raise _policy("max_elements", max_elements)
                elif depth == 1:
                    elements, boundary, started_here = 1, False, True
                else:
                    holder = self._open(element, out)
                    boundary = True
                if len(element.attrib) > max_attributes:
                    raise _policy("max_attributes", max_attributes)
            elif event == "end":
                depth -= 1
                if depth == 0:
                    # Out of the stream tree, with its tail; root's last child may now be
                    # the text before it, which _feed_slice removes before lxml resumes.
                    assert holder is not None  # the header's start event came first
                    holder.append(element)
                    copy = _copy_element(element)
                    if copy.tail is not None:
                        copy.tail = None
                    out.append(ElementReceived(copy))
                    boundary, started_here = True, False
                    self._pending = 0
                elif depth < 0:
                    out.append(StreamClosed())
                    self._root = self._holder = None
                    self._retire()
                    self._closed = True
                    break
            else:
                # RFC 6120 §11.1: no comments or processing instructions.
                raise StreamError("restricted-xml", f"{event} nodes are not allowed")
        self._depth, self._elements = depth, elements
        return boundary, started_here

    def _open(self, root: etree._Element, out: list[ParseEvent]) -> etree._Element:
        docinfo = root.getroottree().docinfo
        if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
            # Unreachable while the prolog scan works; kept as a second line of defence.
            raise StreamError("restricted-xml", "DOCTYPE is not allowed")
        out.append(StreamOpened(etree.QName(root).text, dict(root.attrib), root.nsmap.get(None)))
        return self._set_root(root)

    def _set_root(self, root: etree._Element) -> etree._Element:
        self._root = root
        self._holder = holder = etree.Element("holder", nsmap=root.nsmap)
        return holder
