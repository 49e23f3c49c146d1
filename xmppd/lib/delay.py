"""XEP-0203: Delayed Delivery — build and parse <delay/> stamps (XEP-0082 date-times)."""

from __future__ import annotations

import datetime as dt

from lxml import etree

NS_DELAY = "urn:xmpp:delay"
DELAY = f"{{{NS_DELAY}}}delay"


def format_stamp(when: float) -> str:
    """XEP-0082 DateTime in UTC with a 'Z' suffix; milliseconds only when not whole."""
    moment = dt.datetime.fromtimestamp(when, dt.UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> float:
    """Parse a XEP-0082 DateTime (with 'Z' or a numeric offset) into unix time.

    Raises:
        ValueError: not a XEP-0082 DateTime with a time zone.
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None or "T" not in value:
        raise ValueError(f"not a XEP-0082 DateTime: {text!r}")
    return moment.timestamp()


def make_delay(from_: str, when: float, reason: str | None = None) -> etree._Element:
    """A <delay xmlns='urn:xmpp:delay' from=... stamp=...>reason</delay> element."""
    delay = etree.Element(DELAY, nsmap={None: NS_DELAY})
    delay.set("from", from_)
    delay.set("stamp", format_stamp(when))
    if reason:
        delay.text = reason
    return delay


def add_delay(stanza: etree._Element, from_: str, when: float, reason: str | None = None) -> None:
    """Append a <delay/> by `from_`, replacing an earlier one by the same entity (§4)."""
    for old in stanza.findall(DELAY):
        if old.get("from") == from_:
            stanza.remove(old)
    stanza.append(make_delay(from_, when, reason))


def find_delay(stanza: etree._Element, from_: str | None = None) -> etree._Element | None:
    """The first <delay/> child (by `from_` if given), or None."""
    for delay in stanza.findall(DELAY):
        if from_ is None or delay.get("from") == from_:
            return delay
    return None
