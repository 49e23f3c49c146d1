"""XEP-0313: Message Archive Management — query machinery shared by user and room archives.

Pure protocol helpers plus one paging routine over an `ArchiveStore` (no hooks, no module
state): parse a <query/> (XEP-0004 form fields with, start, end and the #extended before-id,
after-id, ids; XEP-0059 paging; <flip-page/>), find the page it asks for, and build the
payloads: the query form, <metadata/>, the <result><forwarded><delay/>…</forwarded></result>
messages and the <fin/>.

Archive ids are the entries' external ids when they have one (XEP-0359 stanza ids), else the
store keys. User archives file entries under a bare JID (``with_jid``): a full-JID 'with'
filter then reads the stored messages' 'from' and 'to' (§4.1.1). That scan reads at least
`SCAN_CHUNK` rows per store call and at most `MAX_SCAN` rows per query: when it stops early,
the page holds what was found (XEP-0059 §2.1: possibly fewer than <max/>), <fin/> is not
complete and its RSM <last/> (<first/> when paging backward) names the last row scanned, so
the client pages on from there. RSM <index/> is refused on that path. A module that files
entries under full JIDs (room archives) says so with `find_page`'s ``filing``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.jid import JID, JIDError
from xmppd.lib.delay import NS_DELAY, format_stamp, parse_stamp
from xmppd.lib.forms import Field, build_form, parse_submitted
from xmppd.lib.rsm import RsmRequest, build_set, parse_set
from xmppd.ns import NS_DATA
from xmppd.stanza import make, new_id
from xmppd.storage import ArchiveItem, ArchiveStore

__all__ = [
    "FIN",
    "FLIP_PAGE",
    "MAX_IDS",
    "MAX_QUERYID",
    "MAX_SCAN",
    "METADATA",
    "NS_FORWARD",
    "NS_MAM",
    "NS_MAM_EXTENDED",
    "QUERY",
    "RESULT",
    "SCAN_CHUNK",
    "Filing",
    "Page",
    "Query",
    "bare_filing",
    "build_fin",
    "build_metadata",
    "find_page",
    "parse_query",
    "parse_stored",
    "public_id",
    "query_form",
    "read_metadata",
    "result_message",
    "sent_order",
]

NS_MAM = "urn:xmpp:mam:2"
NS_MAM_EXTENDED = "urn:xmpp:mam:2#extended"
NS_FORWARD = "urn:xmpp:forward:0"
NS_XDATA_VALIDATE = "http://jabber.org/protocol/xdata-validate"
QUERY = f"{{{NS_MAM}}}query"
FIN = f"{{{NS_MAM}}}fin"
RESULT = f"{{{NS_MAM}}}result"
METADATA = f"{{{NS_MAM}}}metadata"
FLIP_PAGE = f"{{{NS_MAM}}}flip-page"

MAX_IDS = 256  # ids in one 'ids' field
MAX_QUERYID = 256
MAX_SCAN = 10_000  # rows a full-JID 'with' query reads at most (default of find_page's max_scan)
SCAN_CHUNK = 100  # rows such a query reads at least per store call
KNOWN_FIELDS = frozenset({"with", "start", "end", "before-id", "after-id", "ids"})
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed archive query."""

    queryid: str | None
    with_jid: JID | None
    start: float | None
    end: float | None
    after_id: str | None
    before_id: str | None
    ids: tuple[str, ...] | None
    rsm: RsmRequest
    flip: bool


@dataclass(frozen=True, slots=True)
class Page:
    """One page of results, in archive order.

    Attributes:
        items: the entries of the page.
        complete: whether the page is the last one in the paging direction (§4.3).
        first_index: the RSM index of the first entry (None when not known).
        count: the size of the whole result set (None when not known).
        first_id: RSM <first/> when it is not the first entry's id (a scan that stopped early
            backward names the last row it read).
        last_id: RSM <last/> likewise, for a scan that stopped early forward.
    """

    items: list[ArchiveItem]
    complete: bool
    first_index: int | None
    count: int | None
    first_id: str | None = None
    last_id: str | None = None


def parse_query(payload: etree._Element) -> Query:
    """Read <query/>: its form, RSM <set/> and <flip-page/>.

    Raises:
        StanzaError: bad-request for a malformed query; feature-not-implemented for an
            unknown form field or a pubsub 'node'; policy-violation for too many ids.
    """
    if payload.get("node") is not None:
        raise StanzaError("feature-not-implemented", "pubsub archives are not served here")
    queryid = payload.get("queryid")
    if queryid is not None and len(queryid) > MAX_QUERYID:
        raise StanzaError("bad-request", "queryid too long")
    forms = payload.findall(f"{{{NS_DATA}}}x")
    if len(forms) > 1:
        raise StanzaError("bad-request", "more than one data form")
    values: dict[str, list[str]] = {}
    if forms:
        form = parse_submitted(forms[0])
        if form.form_type is not None and form.form_type != NS_MAM:
            raise StanzaError("bad-request", f"FORM_TYPE must be {NS_MAM}")
        values = form.values
        unknown = set(values) - KNOWN_FIELDS
        if unknown:
            raise StanzaError(
                "feature-not-implemented", f"unknown form field {sorted(unknown)[0]!r}"
            )

    def single(var: str) -> str | None:
        found = values.get(var)
        if not found or (len(found) == 1 and not found[0]):
            return None
        if len(found) > 1:
            raise StanzaError("bad-request", f"form field {var!r} takes one value")
        return found[0]

    def stamp(var: str) -> float | None:
        text = single(var)
        if text is None:
            return None
        try:
            return parse_stamp(text)
        except (ValueError, OverflowError):
            raise StanzaError("bad-request", f"{var!r} is not a XEP-0082 DateTime") from None

    with_text = single("with")
    try:
        with_jid = None if with_text is None else JID.parse(with_text)
    except JIDError:
        raise StanzaError("bad-request", "'with' is not a valid JID") from None
    ids = None
    if "ids" in values:
        ids = tuple(value for value in values["ids"] if value)
        if len(ids) > MAX_IDS:
            raise StanzaError("policy-violation", f"at most {MAX_IDS} ids per query")
    return Query(
        queryid=queryid,
        with_jid=with_jid,
        start=stamp("start"),
        end=stamp("end"),
        after_id=single("after-id"),
        before_id=single("before-id"),
        ids=ids,
        rsm=parse_set(payload) or RsmRequest(),
        flip=payload.find(FLIP_PAGE) is not None,
    )


def query_form() -> etree._Element:
    """§"Retrieving form fields": <query/> holding the form of the fields a query may use."""
    query = etree.Element(QUERY, nsmap={None: NS_MAM})
    validate = etree.Element(f"{{{NS_XDATA_VALIDATE}}}validate", nsmap={None: NS_XDATA_VALIDATE})
    validate.set("datatype", "xs:string")
    etree.SubElement(validate, f"{{{NS_XDATA_VALIDATE}}}open")
    query.append(
        build_form(
            NS_MAM,
            [
                Field("with", "jid-single"),
                Field("start"),
                Field("end"),
                Field("before-id"),
                Field("after-id"),
                Field("ids", "list-multi", extra=(validate,)),
            ],
        )
    )
    return query


def public_id(item: ArchiveItem) -> str:
    """The archive id clients see: the external id, else the store key."""
    return item.id if item.id is not None else item.key


def build_metadata(first: ArchiveItem | None, last: ArchiveItem | None) -> etree._Element:
    """§"Archive metadata": <metadata/> with the id and time of the first and last entries
    (empty when the archive is)."""
    result = etree.Element(METADATA, nsmap={None: NS_MAM})
    if first is not None and last is not None:
        for name, item in (("start", first), ("end", last)):
            etree.SubElement(
                result,
                f"{{{NS_MAM}}}{name}",
                id=public_id(item),
                timestamp=format_stamp(item.when),
            )
    return result


async def read_metadata(store: ArchiveStore, owner: str) -> etree._Element:
    """The <metadata/> of the archive of `owner`."""
    first = await store.items(owner, limit=1)
    last = await store.items(owner, limit=1, reverse=True)
    return build_metadata(first[0] if first else None, last[0] if last else None)


def parse_stored(item: ArchiveItem) -> etree._Element | None:
    """The stored stanza of an entry, or None when it cannot be read."""
    try:
        return etree.fromstring(item.value.encode(), _PARSER)
    except etree.XMLSyntaxError:
        return None


def result_message(
    item: ArchiveItem,
    queryid: str | None,
    from_: JID,
    to: JID,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
) -> etree._Element:
    """§4.2: <message from=`from_` to=`to`><result queryid id><forwarded><delay/>
    <message/></forwarded></result></message> for one entry. A stored message that cannot
    be read is left out (§3.2: id, time and JID stay) and logged."""
    message = make("message", from_=from_, to=to, id_=new_id())
    result = etree.SubElement(message, RESULT, nsmap={None: NS_MAM})
    if queryid is not None:
        result.set("queryid", queryid)
    result.set("id", public_id(item))
    forwarded = etree.SubElement(result, f"{{{NS_FORWARD}}}forwarded", nsmap={None: NS_FORWARD})
    delay = etree.SubElement(forwarded, f"{{{NS_DELAY}}}delay", nsmap={None: NS_DELAY})
    delay.set("stamp", format_stamp(item.when))
    stored = parse_stored(item)
    if stored is None:
        (log or _log).error("archived message %s of %s is unreadable", item.key, from_)
    else:
        forwarded.append(stored)
    return message


def sent_order(page: Page, query: Query) -> Iterable[ArchiveItem]:
    """The page's entries in the order they are sent (reversed with <flip-page/>)."""
    return reversed(page.items) if query.flip else page.items


def build_fin(page: Page) -> etree._Element:
    """§4.3: <fin [complete='true']><set>first/last/count</set></fin>."""
    fin = etree.Element(FIN, nsmap={None: NS_MAM})
    if page.complete:
        fin.set("complete", "true")
    items = page.items
    first = page.first_id or (public_id(items[0]) if items else None)
    last = page.last_id or (public_id(items[-1]) if items else None)
    fin.append(
        build_set(
            first or last,
            last or first,
            first_index=page.first_index,
            count=page.count,
        )
    )
    return fin


async def _key_of(store: ArchiveStore, owner: str, id_: str) -> str:
    item = await store.find(owner, id_)
    if item is None:
        raise StanzaError("item-not-found", "no message with this id in the archive")
    return item.key


def _max_key(a: str | None, b: str) -> str:
    return b if a is None or int(b) > int(a) else a


def _min_key(a: str | None, b: str) -> str:
    return b if a is None or int(b) < int(a) else a


Filing = Callable[[JID], tuple[str | None, bool]]
"""How an archive files its entries: for a query's 'with' JID, the store's ``with_jid`` filter
(None: every entry) and whether the stored messages must be read for an exact full-JID
match."""


def bare_filing(with_jid: JID) -> tuple[str | None, bool]:
    """User archives: entries filed under bare JIDs, a full JID read from the messages."""
    return str(with_jid.bare), with_jid.resource is not None


async def find_page(
    store: ArchiveStore,
    owner: str,
    query: Query,
    *,
    page_size: int,
    max_page_size: int,
    filing: Filing = bare_filing,
    max_scan: int = MAX_SCAN,
) -> Page:
    """The page of the archive of `owner` that `query` asks for.

    Args:
        store: the archive store.
        owner: the archive's owner key in `store`.
        query: the parsed query.
        page_size: results when the query gives no RSM <max/>.
        max_page_size: results at most (a larger <max/> is capped).
        filing: how entries are filed (the store filter for a 'with' JID).
        max_scan: rows a query that reads the stored messages reads at most.

    Raises:
        StanzaError: item-not-found for an unknown id (after-id, before-id, ids, RSM
            after/before); feature-not-implemented for an RSM index too far away, or on a
            query that reads the stored messages.
    """
    if max_scan < 1:
        raise ValueError("max_scan must be at least 1")
    lower = None if query.after_id is None else await _key_of(store, owner, query.after_id)
    upper = None if query.before_id is None else await _key_of(store, owner, query.before_id)
    if query.ids is not None and await store.count(owner, ids=query.ids) < len(set(query.ids)):
        raise StanzaError("item-not-found", "an id is not in the archive")
    rsm = query.rsm
    size = min(page_size if rsm.max is None else rsm.max, max_page_size)
    backward = rsm.before is not None
    page_lower, page_upper = lower, upper
    if rsm.after is not None:
        page_lower = _max_key(lower, await _key_of(store, owner, rsm.after))
    if rsm.before:
        page_upper = _min_key(upper, await _key_of(store, owner, rsm.before))
    with_jid = query.with_jid
    with_key, scan = (None, False) if with_jid is None else filing(with_jid)

    async def items(after: str | None, before: str | None, limit: int) -> list[ArchiveItem]:
        return await store.items(
            owner,
            after=after,
            before=before,
            start=query.start,
            end=query.end,
            with_jid=with_key,
            ids=query.ids,
            limit=limit,
            reverse=backward,
        )

    async def count(before: str | None) -> int:
        return await store.count(
            owner,
            after=lower,
            before=before,
            start=query.start,
            end=query.end,
            with_jid=with_key,
            ids=query.ids,
        )

    index_asked = rsm.index is not None and rsm.after is None and rsm.before is None
    if scan and with_jid is not None:
        # The store filters by the bare JID only: the stored messages are read, so this
        # slower path gives no count and no index, and reads at most max_scan rows.
        if index_asked:
            raise StanzaError(
                "feature-not-implemented", "no RSM index with a full-JID 'with': page by id"
            )
        found, more, stop = await _page_filtered(
            items, with_jid, page_lower, page_upper, size, backward=backward, max_scan=max_scan
        )
        resume = None if stop is None else public_id(stop)
        return Page(
            found,
            not more,
            None,
            None,
            first_id=resume if backward else None,
            last_id=None if backward else resume,
        )
    skip = 0
    if index_asked:
        skip = rsm.index or 0
        if skip > 10 * max_page_size:
            raise StanzaError("feature-not-implemented", "RSM index too far; page by id")
    fetched = (await items(page_lower, page_upper, skip + size + 1))[skip:]
    more = len(fetched) > size
    page = fetched[:size]
    if backward:
        page.reverse()
    first_index = await count(page[0].key) if page else None
    return Page(page, not more, first_index, await count(upper))


def _matches(item: ArchiveItem, with_jid: JID) -> bool:
    """Whether the stored message is from or to exactly the full JID `with_jid` (§4.1.1)."""
    element = parse_stored(item)
    if element is None:
        return False
    return with_jid in (_jid_or_none(element.get("from")), _jid_or_none(element.get("to")))


def _jid_or_none(text: str | None) -> JID | None:
    try:
        return None if text is None else JID.parse(text)
    except JIDError:
        return None


async def _page_filtered(
    items: Callable[[str | None, str | None, int], Awaitable[list[ArchiveItem]]],
    with_jid: JID,
    lower: str | None,
    upper: str | None,
    page_size: int,
    *,
    backward: bool,
    max_scan: int,
) -> tuple[list[ArchiveItem], bool, ArchiveItem | None]:
    """Page over entries filed under the bare JID, keeping those with the full `with_jid`.

    Returns the page, whether more may match beyond it, and the last row read when the scan
    stopped at `max_scan` rows before the page was full (else None): the page then ends there.
    """
    found: list[ArchiveItem] = []
    scanned = 0
    stopped: ArchiveItem | None = None
    chunk = max(page_size + 1, SCAN_CHUNK)
    while len(found) <= page_size:
        limit = min(chunk, max_scan - scanned)
        if limit <= 0:
            break
        batch = await items(lower, upper, limit)
        scanned += len(batch)
        for item in batch:
            if _matches(item, with_jid):
                found.append(item)
                if len(found) > page_size:
                    break
        if len(batch) < limit:
            break
        if backward:
            upper = batch[-1].key
        else:
            lower = batch[-1].key
        if scanned >= max_scan and len(found) <= page_size:
            stopped = batch[-1]
    more = len(found) > page_size or stopped is not None
    page = found[:page_size]
    if backward:
        page.reverse()
    return page, more, stopped
