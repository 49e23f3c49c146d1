"""RFC 7622: XMPP addresses (JIDs) — parsing, PRECIS preparation and comparison.

A JID is ``[localpart@]domainpart[/resourcepart]``. Each part is prepared when the JID is
parsed, so a `JID` always holds the canonical form and equality, hashing and ``str()`` work
on it directly:

- localpart: PRECIS ``UsernameCaseMapped`` (RFC 8265 §3.3), then the extra characters
  RFC 7622 §3.3.1 forbids (``" & ' / : < > @``);
- domainpart: RFC 7622 §3.2 — IDNA2008 labels in Unicode (U-label) form, after a UTS #46
  style mapping (compatibility/width mapping, lowercase, NFC); A-labels are converted to
  U-labels, one trailing dot is stripped, ``[IPv6]`` literals are accepted;
- resourcepart: PRECIS ``OpaqueString`` (RFC 8265 §4.2).

Each prepared part is 1 to 1023 octets of UTF-8 (RFC 7622 §3.1).

Speed (DESIGN §5): preparing a localpart with ``precis-i18n`` costs ~5 µs, so `JID.parse` is
memoised in a bounded cache (oldest entries evicted first; an ended session's JID is dropped)
and every part has an ASCII fast path that gives exactly the result of the full profile (the
tests compare both paths on random ASCII input).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field

from precis_i18n import get_profile
from precis_i18n.bidi import bidi_rule, has_rtl

__all__ = ["JID", "JIDError", "prep_domain", "prep_localpart", "prep_resource"]

MAX_PART_OCTETS = 1023  # RFC 7622 §3.1: each part at most 1023 octets in UTF-8
_MAX_LABEL_OCTETS = 63  # RFC 1035 §2.3.4 / RFC 5890 §2.3.2.1, in A-label form
_PARSE_CACHE_SIZE = 65536

_USERNAME = get_profile("UsernameCaseMapped")
_OPAQUE = get_profile("OpaqueString")
# The IdentifierClass base of the Username profile: the PRECIS derived property (RFC 8264 §8)
# shares its exceptions, join-control and context rules with IDNA2008 (RFC 5892), so it is
# reused to validate U-labels; its extra ASCII symbols are excluded by the LDH check below.
_IDENTIFIER = _USERNAME.base
_UCD = _IDENTIFIER.ucd

# RFC 7622 §3.3.1: characters forbidden in a localpart on top of the PRECIS profile.
_LOCAL_FORBIDDEN = frozenset("\"&'/:<>@")

# ASCII fast paths. For ASCII input, UsernameCaseMapped reduces to: lowercase, then allow only
# the IdentifierClass ASCII7 range U+0021..U+007E (no space, no controls); OpaqueString reduces
# to: allow U+0020..U+007E (FreeformClass adds the space, still no controls).
_LOCAL_ASCII = re.compile(
    "["
    + "".join(re.escape(chr(c)) for c in range(0x21, 0x7F) if chr(c) not in _LOCAL_FORBIDDEN)
    + "]+"
)
_RESOURCE_ASCII = re.compile("[ -~]+")
# NR-LDH labels (RFC 5890 §2.3.1): letters, digits, hyphens; no hyphen at either end and no
# "--" in the third and fourth positions (that form is reserved, e.g. for "xn--" A-labels,
# which take the slow path).
_LDH_LABEL = r"(?!..--)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_ASCII = re.compile(rf"{_LDH_LABEL}(?:\.{_LDH_LABEL})*")
_LDH_LABEL_RE = re.compile(_LDH_LABEL)

# UTS #46 §4 maps these full stops to U+002E before splitting labels.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_ACE_PREFIX = "xn--"


class JIDError(ValueError):
    """A string is not a valid JID or JID part (RFC 7622); maps to ``jid-malformed``."""


def _show(s: str) -> str:
    # Error messages quote the input, which comes from the network: keep them short.
    return repr(s) if len(s) <= 64 else repr(s[:61] + "...")


def _check_length(part: str, what: str) -> None:
    # Only non-ASCII strings can have more octets than code points.
    if len(part) > MAX_PART_OCTETS or (
        not part.isascii() and len(part.encode("utf-8")) > MAX_PART_OCTETS
    ):
        raise JIDError(f"{what} longer than {MAX_PART_OCTETS} octets")


def prep_localpart(s: str) -> str:
    """RFC 7622 §3.3: prepare a localpart (PRECIS UsernameCaseMapped plus forbidden characters).

    Args:
        s: the localpart as received, e.g. a SASL username or a CLI argument.

    Returns:
        The prepared localpart.

    Raises:
        JIDError: the string is empty, too long, or contains disallowed characters.
    """
    if s.isascii():
        prepared = s.lower()
        if _LOCAL_ASCII.fullmatch(prepared) is None:
            raise JIDError(f"invalid localpart {_show(s)}")
    else:
        try:
            prepared = _USERNAME.enforce(s)
        except UnicodeEncodeError as exc:
            raise JIDError(f"invalid localpart {_show(s)}: {exc.reason}") from None
        # After width mapping, e.g. FULLWIDTH COMMERCIAL AT becomes "@".
        if not _LOCAL_FORBIDDEN.isdisjoint(prepared):
            raise JIDError(f"invalid localpart {_show(s)}: forbidden character")
    _check_length(prepared, "localpart")
    return prepared


def prep_resource(s: str) -> str:
    """RFC 7622 §3.4: prepare a resourcepart (PRECIS OpaqueString).

    Args:
        s: the resourcepart as received.

    Returns:
        The prepared resourcepart.

    Raises:
        JIDError: the string is empty, too long, or contains disallowed characters.
    """
    if s.isascii():
        if _RESOURCE_ASCII.fullmatch(s) is None:
            raise JIDError(f"invalid resourcepart {_show(s)}")
        prepared = s
    else:
        try:
            prepared = _OPAQUE.enforce(s)
        except UnicodeEncodeError as exc:
            raise JIDError(f"invalid resourcepart {_show(s)}: {exc.reason}") from None
    _check_length(prepared, "resourcepart")
    return prepared


def prep_domain(s: str) -> str:
    """RFC 7622 §3.2: prepare a domainpart into lowercase U-label form.

    Args:
        s: the domainpart as received (ASCII, A-labels, U-labels or an ``[IPv6]`` literal).

    Returns:
        The prepared domainpart: lowercase, U-labels for internationalized labels, without a
        trailing dot; IPv6 literals in their compressed form.

    Raises:
        JIDError: the string is empty, too long, or not a valid domain name or IP literal.
    """
    if s.isascii():
        prepared = s.lower()
        if prepared.endswith("."):
            # RFC 7622 §3.2: one trailing label separator is stripped before anything else.
            prepared = prepared[:-1]
        if len(prepared) <= MAX_PART_OCTETS and _DOMAIN_ASCII.fullmatch(prepared) is not None:
            return prepared
    return _prep_domain_slow(s)


def _prep_domain_slow(s: str) -> str:
    text = s.translate(_DOTS)
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise JIDError("empty domainpart")
    if text.startswith("[") and text.endswith("]"):
        # RFC 7622 §3.2 allows an IP-literal (RFC 3986 §3.2.2); IPv6 only, IPvFuture is not used.
        try:
            address = ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise JIDError(f"invalid IP literal {_show(s)}") from None
        if address.scope_id is not None:
            raise JIDError(f"invalid IP literal {_show(s)}: zone identifier")
        return f"[{address.compressed}]"
    # Labels are split before mapping, so a character whose mapping holds a full stop (such as
    # U+2488 "⒈") makes its label invalid rather than adding a label.
    labels = [_prep_label(_map_label(label), s) for label in text.split(".")]
    if any(has_rtl(label, _UCD) for label in labels) and not all(
        bidi_rule(label, _UCD) for label in labels
    ):
        # RFC 5893 §2: in a Bidi domain name every label satisfies the Bidi Rule.
        raise JIDError(f"invalid domainpart {_show(s)}: violates the Bidi Rule")
    prepared = ".".join(labels)
    _check_length(prepared, "domainpart")
    return prepared


def _map_label(label: str) -> str:
    # UTS #46 style mapping: compatibility (width) mapping, lowercase, then NFC. Unlike IDNA2003
    # the deviation characters (ß, ς, ZWJ, ZWNJ) are kept, as IDNA2008 treats them as PVALID.
    if label.isascii():
        return label.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFKC", label).lower())


def _prep_label(label: str, original: str) -> str:
    if not label:
        raise JIDError(f"invalid domainpart {_show(original)}: empty label")
    if label.isascii():
        if label.startswith(_ACE_PREFIX):
            return _a_label_to_u_label(label, original)
        if _LDH_LABEL_RE.fullmatch(label) is None:
            raise JIDError(f"invalid domainpart {_show(original)}: bad label {_show(label)}")
        return label
    _check_u_label(label, original)
    return label


def _a_label_to_u_label(label: str, original: str) -> str:
    try:
        u_label = label[len(_ACE_PREFIX) :].encode("ascii").decode("punycode")
    except UnicodeError:
        raise JIDError(
            f"invalid domainpart {_show(original)}: bad A-label {_show(label)}"
        ) from None
    # RFC 5891 §5.4: an A-label must decode to a valid U-label that encodes back to it.
    if u_label.isascii():
        raise JIDError(f"invalid domainpart {_show(original)}: bad A-label {_show(label)}")
    _check_u_label(u_label, original)
    if _to_a_label(u_label) != label:
        raise JIDError(f"invalid domainpart {_show(original)}: bad A-label {_show(label)}")
    return u_label


def _to_a_label(u_label: str) -> str:
    return _ACE_PREFIX + u_label.encode("punycode").decode("ascii")


def _check_u_label(label: str, original: str) -> None:
    """RFC 5891 §4.2.3 / §5.4: validate a (mapped) U-label."""
    bad = f"invalid domainpart {_show(original)}: bad label {_show(label)}"
    # Stable under the mapping: IDNA2008 disallows characters that NFKC or case mapping change.
    if _map_label(label) != label:
        raise JIDError(bad)
    if label.startswith("-") or label.endswith("-") or label[2:4] == "--":
        raise JIDError(bad)
    if unicodedata.category(label[0]).startswith("M"):
        raise JIDError(bad)  # RFC 5891 §4.2.3.2: no leading combining mark
    for char in label:
        if char.isascii() and not (char.isalnum() or char == "-"):
            raise JIDError(bad)
    try:
        _IDENTIFIER.enforce(label)
    except UnicodeError:
        raise JIDError(bad) from None
    if len(_to_a_label(label)) > _MAX_LABEL_OCTETS:
        raise JIDError(bad)


@dataclass(frozen=True, slots=True)
class JID:
    """An RFC 7622 XMPP address whose parts are already prepared.

    Build one with `JID.parse`; the constructor trusts its arguments to be prepared parts.
    Equality and hashing use the prepared form, so ``JID.parse("Juliet@Example.COM")`` equals
    ``JID.parse("juliet@example.com")``.
    """

    local: str | None
    domain: str
    resource: str | None
    _str: str = field(init=False, repr=False, compare=False)
    _bare: JID = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = self.domain
        if self.local is not None:
            text = f"{self.local}@{text}"
        if self.resource is not None:
            text = f"{text}/{self.resource}"
        # Frozen dataclass: derived values are set once, here, via object.__setattr__.
        object.__setattr__(self, "_str", text)
        bare = self if self.resource is None else JID(self.local, self.domain, None)
        object.__setattr__(self, "_bare", bare)

    @classmethod
    def parse(cls, text: str) -> JID:
        """RFC 7622 §3.1: split and prepare a JID string.

        Args:
            text: the JID as received, e.g. a ``to`` attribute.

        Returns:
            The prepared JID (memoised: equal strings return the same object).

        Raises:
            JIDError: the string is not a valid JID.
        """
        jid = _CACHE.get(text)
        if jid is None:
            jid = _parse(text)
            if len(_CACHE) >= _PARSE_CACHE_SIZE:
                del _CACHE[next(iter(_CACHE))]
            _CACHE[text] = jid
        return jid

    @staticmethod
    def forget(jid: JID) -> None:
        """Drop a JID that will not be seen again (an ended session's) from the parse cache,
        so a storm of short sessions leaves nothing behind."""
        _CACHE.pop(jid._str, None)

    @property
    def bare(self) -> JID:
        """This JID without its resourcepart (itself if it has none)."""
        return self._bare

    @property
    def is_bare(self) -> bool:
        """True when the JID has no resourcepart."""
        return self.resource is None

    @property
    def host(self) -> JID:
        """The domainpart alone, as a JID."""
        if self.local is None and self.resource is None:
            return self
        return JID(None, self.domain, None)

    def with_resource(self, resource: str) -> JID:
        """Return the full JID of this JID's bare form with ``resource`` prepared and attached.

        Args:
            resource: the resourcepart, unprepared.

        Returns:
            The full JID.

        Raises:
            JIDError: the resource is not a valid resourcepart.
        """
        return JID(self.local, self.domain, prep_resource(resource))

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return f"JID({self._str!r})"

    def __eq__(self, other: object) -> bool:
        # The string form is injective over prepared parts: a localpart holds no "@" or "/",
        # a domainpart neither, so comparing it is comparing all three parts.
        if isinstance(other, JID):
            return self._str == other._str
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._str)


_CACHE: dict[str, JID] = {}


def _parse(text: str) -> JID:
    # RFC 7622 §3.1: the resourcepart is everything after the first "/", then the localpart is
    # everything before the first "@" in what remains; the rest is the domainpart.
    resource: str | None = None
    slash = text.find("/")
    if slash >= 0:
        resource = prep_resource(text[slash + 1 :])
        text = text[:slash]
    local: str | None = None
    at = text.find("@")
    if at >= 0:
        local = prep_localpart(text[:at])
        text = text[at + 1 :]
    return JID(local, prep_domain(text), resource)
