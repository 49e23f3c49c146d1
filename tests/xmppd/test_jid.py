"""RFC 7622 JIDs: parsing, PRECIS preparation, the ASCII fast paths and comparison."""

from __future__ import annotations

import copy
import itertools
import pickle
import random

import pytest
from precis_i18n import get_profile

from xmppd import jid as jid_module
from xmppd.jid import JID, JIDError, prep_domain, prep_localpart, prep_resource

# RFC 7622 §3.5 Table 1, with the expected prepared parts (local, domain, resource).
RFC7622_VALID = [
    ("juliet@example.com", ("juliet", "example.com", None)),
    ("juliet@example.com/foo", ("juliet", "example.com", "foo")),
    ("juliet@example.com/foo bar", ("juliet", "example.com", "foo bar")),
    ("juliet@example.com/foo@bar", ("juliet", "example.com", "foo@bar")),
    ("foo\\20bar@example.com", ("foo\\20bar", "example.com", None)),
    ("fussball@example.com", ("fussball", "example.com", None)),
    ("fu\u00dfball@example.com", ("fu\u00dfball", "example.com", None)),
    ("\u03c0@example.com", ("\u03c0", "example.com", None)),
    ("\u03a3@example.com/foo", ("\u03c3", "example.com", "foo")),
    ("\u03c3@example.com/foo", ("\u03c3", "example.com", "foo")),
    # RFC 8265 maps case with toLowerCase, which leaves FINAL SIGMA as it is.
    ("\u03c2@example.com/foo", ("\u03c2", "example.com", "foo")),
    ("king@example.com/\u265a", ("king", "example.com", "\u265a")),
    ("example.com", (None, "example.com", None)),
    ("example.com/foobar", (None, "example.com", "foobar")),
    ("a.example.com/b@example.net", (None, "a.example.com", "b@example.net")),
    # RFC 7622 errata 4560: a leading space in the resourcepart is allowed.
    ("juliet@example.com/ foo", ("juliet", "example.com", " foo")),
    # Split rules (RFC 7622 §3.1): "@" after the first "/" belongs to the resource.
    ("server/resource@foo", (None, "server", "resource@foo")),
    ("server/resource@foo/bar", (None, "server", "resource@foo/bar")),
]

# RFC 7622 §3.5 Table 2 plus split-rule cases.
RFC7622_INVALID = [
    '"juliet"@example.com',  # quotation marks in localpart
    "foo bar@example.com",  # space in localpart
    "@example.com/",  # zero-length localpart and resourcepart
    "henry\u2163@example.com",  # ROMAN NUMERAL FOUR
    "\u265a@example.com",  # BLACK CHESS KING in localpart
    "juliet@",  # no domainpart
    "/foobar",  # no domainpart
    "@example.com",
    "a@",
    "a@b/",
    "node@/server",
    "@server/resource",
    "@/resource",
    "@/",
    "/",
    "@",
    "",
    "user@@",
    "user@@host",
    "user@@host/resource",
    "juliet@@example.com",
]


@pytest.mark.parametrize(("text", "parts"), RFC7622_VALID)
def test_rfc7622_valid_examples_parse_to_prepared_parts(
    text: str, parts: tuple[str | None, str, str | None]
) -> None:
    parsed = JID.parse(text)
    assert (parsed.local, parsed.domain, parsed.resource) == parts


@pytest.mark.parametrize("text", RFC7622_INVALID)
def test_rfc7622_invalid_examples_raise(text: str) -> None:
    with pytest.raises(JIDError):
        JID.parse(text)


def test_jid_error_is_a_value_error() -> None:
    assert issubclass(JIDError, ValueError)


@pytest.mark.parametrize("char", list("\"&'/:<>@"))
def test_localpart_forbidden_characters(char: str) -> None:
    with pytest.raises(JIDError):
        prep_localpart(f"a{char}b")


def test_localpart_forbidden_character_after_width_mapping() -> None:
    # FULLWIDTH AMPERSAND maps to "&" under the width-mapping rule.
    with pytest.raises(JIDError):
        prep_localpart("a\uff06b")


def test_case_folding_in_localpart_and_domain_but_not_resource() -> None:
    parsed = JID.parse("Juliet@Example.COM/Balcony")
    assert str(parsed) == "juliet@example.com/Balcony"
    assert parsed == JID.parse("juliet@example.com/Balcony")
    assert parsed != JID.parse("juliet@example.com/balcony")


def test_fullwidth_characters_are_width_mapped() -> None:
    parsed = JID.parse(
        "\uff2a\uff55\uff4c\uff49\uff45\uff54@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d"
    )
    assert str(parsed) == "juliet@example.com"


def test_resource_is_not_width_mapped_but_spaces_are() -> None:
    # OpaqueString: no width mapping; non-ASCII spaces map to U+0020.
    assert prep_resource("\uff21") == "\uff21"
    assert prep_resource("a\u00a0b") == "a b"


@pytest.mark.parametrize("bad", ["", "a\tb", "a\x00", "\x7f"])
def test_resource_rejects_empty_and_controls(bad: str) -> None:
    with pytest.raises(JIDError):
        prep_resource(bad)


def test_resource_keeps_slashes_after_the_first() -> None:
    assert JID.parse("a@b/c/d").resource == "c/d"


def test_length_limits_are_in_utf8_octets() -> None:
    assert JID.parse("a" * 1023 + "@example.com").local == "a" * 1023
    with pytest.raises(JIDError):
        JID.parse("a" * 1024 + "@example.com")
    # U+00E9 is two octets in UTF-8: 511 fit (1022 octets), 512 do not (1024 octets).
    assert prep_localpart("\u00e9" * 511) == "\u00e9" * 511
    with pytest.raises(JIDError):
        prep_localpart("\u00e9" * 512)
    assert prep_resource("r" * 1023) == "r" * 1023
    with pytest.raises(JIDError):
        prep_resource("r" * 1024)
    with pytest.raises(JIDError):
        prep_resource("\u00e9" * 512)
    long_domain = ".".join(["a" * 63] * 16)  # 1023 octets
    assert prep_domain(long_domain) == long_domain
    with pytest.raises(JIDError):
        prep_domain(long_domain + "a")


def test_domain_label_limit() -> None:
    assert prep_domain("a" * 63 + ".org") == "a" * 63 + ".org"
    with pytest.raises(JIDError):
        prep_domain("a" * 64 + ".org")


def test_domain_trailing_dot_is_stripped_once() -> None:
    assert JID.parse("juliet@example.com.") == JID.parse("juliet@example.com")
    assert prep_domain("example.com\u3002") == "example.com"
    for bad in ("example.com..", ".", "..", ".example.com", "a..b"):
        with pytest.raises(JIDError):
            prep_domain(bad)


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("B\u00fccher.example", "b\u00fccher.example"),
        ("xn--bcher-kva.example", "b\u00fccher.example"),
        ("XN--BCHER-KVA.example", "b\u00fccher.example"),
        ("stra\u00dfe.de", "stra\u00dfe.de"),  # IDNA2008 keeps sharp s
        ("\u4f8b\u3048\u3002\u30c6\u30b9\u30c8", "\u4f8b\u3048.\u30c6\u30b9\u30c8"),
        ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d", "example.com"),
        ("\u05e9\u05dc\u05d5\u05dd.com", "\u05e9\u05dc\u05d5\u05dd.com"),
        ("localhost", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[0:0:0:0:0:0:0:1]", "[::1]"),
        ("[2001:DB8::A]", "[2001:db8::a]"),
    ],
)
def test_domain_preparation(text: str, prepared: str) -> None:
    assert prep_domain(text) == prepared


@pytest.mark.parametrize(
    "bad",
    [
        "exa mple.com",
        "exa_mple.com",  # not an NR-LDH label
        "-example.com",
        "example-.com",
        "ab--cd.com",  # reserved R-LDH label
        "xn--.com",
        "xn--abc.com",  # decodes to ASCII
        "xn--Bcher-kva.com-",
        "xn--zz-zz-zz-zz.com",
        "a@b.com",
        "a\u2488com",  # PARENTHESIZED DIGIT ONE FULL STOP maps to "1."
        "\u265a.com",  # symbols are not PVALID
        "\u0301a.com",  # leading combining mark
        "1.\u05e9\u05dc\u05d5\u05dd",  # Bidi Rule: LTR label must start with L
        "[::1",
        "[127.0.0.1]",
        "[fe80::1%eth0]",
        "[nonsense]",
        "a\u200db.com",  # ZERO WIDTH JOINER outside its context
    ],
)
def test_domain_rejects(bad: str) -> None:
    with pytest.raises(JIDError):
        prep_domain(bad)


def test_a_label_and_u_label_compare_equal() -> None:
    assert JID.parse("juliet@xn--bcher-kva.example") == JID.parse("Juliet@B\u00fcCHER.example")


def test_bare_host_and_with_resource() -> None:
    full = JID.parse("juliet@example.com/balcony")
    assert not full.is_bare
    assert full.bare == JID.parse("juliet@example.com")
    assert full.bare.is_bare
    assert full.bare.bare is full.bare
    assert full.host == JID.parse("example.com")
    host = full.host
    assert host.host is host
    assert full.bare.with_resource("Orchard") == JID.parse("juliet@example.com/Orchard")
    assert full.with_resource("x").resource == "x"
    with pytest.raises(JIDError):
        full.with_resource("")


def test_str_and_repr() -> None:
    assert str(JID.parse("example.com")) == "example.com"
    assert str(JID.parse("example.com/r")) == "example.com/r"
    assert str(JID.parse("a@example.com")) == "a@example.com"
    assert repr(JID.parse("a@example.com/r")) == "JID('a@example.com/r')"


def test_equality_and_hash_use_prepared_form() -> None:
    a = JID.parse("JULIET@EXAMPLE.COM")
    b = JID("juliet", "example.com", None)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, JID.parse("juliet@example.com.")}) == 1
    assert a != JID("juliet", "example.com", "r")
    assert a != "juliet@example.com"


def test_frozen() -> None:
    parsed = JID.parse("a@b")
    with pytest.raises(AttributeError):
        parsed.local = "c"  # type: ignore[misc]  # asserting the dataclass is frozen


def test_parse_is_cached() -> None:
    assert JID.parse("cached@example.com/r") is JID.parse("cached@example.com/r")


def test_pickle_and_copy_round_trip() -> None:
    parsed = JID.parse("juliet@example.com/balcony")
    for clone in (pickle.loads(pickle.dumps(parsed)), copy.deepcopy(parsed), copy.copy(parsed)):
        assert clone == parsed
        assert str(clone) == str(parsed)
        assert clone.bare == parsed.bare


def test_error_message_truncates_long_input() -> None:
    with pytest.raises(JIDError) as info:
        prep_localpart(" " * 10_000)
    assert len(str(info.value)) < 200


# ---- ASCII fast paths agree with the full PRECIS/IDNA slow paths -------------------------------

_USERNAME = get_profile("UsernameCaseMapped")
_OPAQUE = get_profile("OpaqueString")
_ASCII = "".join(chr(c) for c in range(128))


def _reference_localpart(s: str) -> str | None:
    try:
        prepared = _USERNAME.enforce(s)
    except UnicodeEncodeError:
        return None
    if set(prepared) & set("\"&'/:<>@") or len(prepared.encode()) > 1023:
        return None
    return prepared


def _reference_resource(s: str) -> str | None:
    try:
        prepared = _OPAQUE.enforce(s)
    except UnicodeEncodeError:
        return None
    return prepared if len(prepared.encode()) <= 1023 else None


def _outcome(func: object, s: str) -> str | None:
    assert callable(func)
    try:
        result = func(s)
    except JIDError:
        return None
    assert isinstance(result, str)
    return result


def _ascii_samples(alphabet: str, seed: int, count: int = 3000) -> list[str]:
    rng = random.Random(seed)
    samples = [""]
    samples += list(alphabet)
    samples += ["".join(pair) for pair in itertools.product(alphabet[:40], repeat=2)]
    for _ in range(count):
        samples.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))))
    return samples


def test_localpart_fast_path_matches_precis_on_ascii() -> None:
    for s in _ascii_samples(_ASCII, seed=1) + list(_ASCII):
        assert _outcome(prep_localpart, s) == _reference_localpart(s), repr(s)


def test_resource_fast_path_matches_precis_on_ascii() -> None:
    for s in _ascii_samples(_ASCII, seed=2):
        assert _outcome(prep_resource, s) == _reference_resource(s), repr(s)


def test_domain_fast_path_matches_slow_path_on_ascii() -> None:
    # Bias towards characters that appear in domains so that valid names are common.
    alphabet = "abcXYZ019-.-.-._[]:@/ \t"
    samples = _ascii_samples(alphabet, seed=3) + _ascii_samples(_ASCII, seed=4, count=500)
    samples += ["xn--bcher-kva.de", "ab--c.de", "a" * 63 + ".b", "a" * 64 + ".b", "[::1]"]
    for s in samples:
        assert _outcome(prep_domain, s) == _outcome(jid_module._prep_domain_slow, s), repr(s)


def test_forget_drops_an_ended_sessions_jid_from_the_parse_cache() -> None:
    from xmppd import jid as jid_mod

    text = "forgetme@example.com/phone-1234"
    first = JID.parse(text)
    assert JID.parse(text) is first  # memoised
    JID.forget(first)
    assert text not in jid_mod._CACHE
    again = JID.parse(text)
    assert again == first
    assert again is not first
