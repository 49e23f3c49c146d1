"""XEP-0059: Result Set Management — parse a request <set/>, build the response <set/>.

Pure helpers: the caller decides what the item ids are and how to page its data.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from xmppd.errors import StanzaError

NS_RSM = "http://jabber.org/protocol/rsm"
SET = f"{{{NS_RSM}}}set"
MAX_ID_LENGTH = 1024  # ids longer than this are refused (no store makes such ids)
_MAX_DIGITS = 9
_REQUEST_CHILDREN = frozenset({"max", "after", "before", "index"})


@dataclass(frozen=True, slots=True)
class RsmRequest:
    """A parsed request <set/>.

    Attributes:
        max: the page size asked for (None: not given).
        after: page forward after this id (None: not given).
        before: page backward before this id; ``""`` for an empty <before/> (the last page).
        index: the index of the first item wanted (None: not given).
    """

    max: int | None = None
    after: str | None = None
    before: str | None = None
    index: int | None = None


def _number(element: etree._Element, what: str) -> int:
    text = (element.text or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
        raise StanzaError("bad-request", f"RSM <{what}/> must be a non-negative integer")
    return int(text)


def _id(element: etree._Element, what: str, *, empty_ok: bool) -> str:
    text = element.text or ""
    if len(element):
        raise StanzaError("bad-request", f"RSM <{what}/> holds text only")
    if not text and not empty_ok:
        raise StanzaError("bad-request", f"RSM <{what}/> must not be empty")
    if len(text) > MAX_ID_LENGTH:
        raise StanzaError("bad-request", f"RSM <{what}/> is too long")
    return text


def parse_set(parent: etree._Element) -> RsmRequest | None:
    """The request <set/> among `parent`'s children, or None when there is none.

    Raises:
        StanzaError: bad-request for a malformed <set/> (several of them, a repeated or
            malformed child, both <after/> and <before/>).
    """
    sets = parent.findall(SET)
    if not sets:
        return None
    if len(sets) > 1:
        raise StanzaError("bad-request", "more than one RSM <set/>")
    values: dict[str, etree._Element] = {}
    for child in sets[0]:
        if not isinstance(child.tag, str):
            continue
        name = etree.QName(child).localname
        if etree.QName(child).namespace != NS_RSM or name not in (
            "max",
            "after",
            "before",
            "index",
        ):
            continue  # XEP-0059 defines these for requests; ignore what it does not
        if name in values:
            raise StanzaError("bad-request", f"more than one RSM <{name}/>")
        values[name] = child
    after = values.get("after")
    before = values.get("before")
    if after is not None and before is not None:
        raise StanzaError("bad-request", "RSM <after/> and <before/> together are not supported")
    return RsmRequest(
        max=None if "max" not in values else _number(values["max"], "max"),
        after=None if after is None else _id(after, "after", empty_ok=False),
        before=None if before is None else _id(before, "before", empty_ok=True),
        index=None if "index" not in values else _number(values["index"], "index"),
    )


def build_set(
    first: str | None = None,
    last: str | None = None,
    *,
    first_index: int | None = None,
    count: int | None = None,
) -> etree._Element:
    """A response <set/>: <first index=…/> and <last/> of the page (when it is not empty)
    and <count/> of the whole result set (when known)."""
    result = etree.Element(SET, nsmap={None: NS_RSM})
    if first is not None and last is not None:
        element = etree.SubElement(result, f"{{{NS_RSM}}}first")
        element.text = first
        if first_index is not None:
            element.set("index", str(first_index))
        etree.SubElement(result, f"{{{NS_RSM}}}last").text = last
    if count is not None:
        etree.SubElement(result, f"{{{NS_RSM}}}count").text = str(count)
    return result
