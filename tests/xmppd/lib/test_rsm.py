"""XEP-0059 Result Set Management helpers (xmppd/lib/rsm.py) and XEP-0004 forms (xmppd/lib/forms.py)."""

from __future__ import annotations

import pytest
from lxml import etree

from tests.helpers.harness import assert_xml_equal, parse_element
from xmppd.errors import StanzaError
from xmppd.lib.forms import Field, build_form, parse_submitted
from xmppd.lib.rsm import NS_RSM, RsmRequest, build_set, parse_set


def _query(inner: str) -> etree._Element:
    return parse_element(f"<iq type='set' id='1'><query xmlns='urn:x'>{inner}</query></iq>")[0]


def _set(inner: str) -> str:
    return f"<set xmlns='{NS_RSM}'>{inner}</set>"


def test_no_set_is_none() -> None:
    assert parse_set(_query("")) is None


@pytest.mark.parametrize(
    ("inner", "expected"),
    [
        ("", RsmRequest()),
        ("<max>10</max>", RsmRequest(max=10)),
        ("<max> 0 </max>", RsmRequest(max=0)),
        ("<max>5</max><after>abc</after>", RsmRequest(max=5, after="abc")),
        ("<before/>", RsmRequest(before="")),
        ("<before>xyz</before>", RsmRequest(before="xyz")),
        ("<index>7</index><max>3</max>", RsmRequest(max=3, index=7)),
        ("<unknown/><max>1</max>", RsmRequest(max=1)),
    ],
)
def test_parse_set(inner: str, expected: RsmRequest) -> None:
    assert parse_set(_query(_set(inner))) == expected


@pytest.mark.parametrize(
    "inner",
    [
        "<max>x</max>",
        "<max>-1</max>",
        "<max>1e3</max>",
        "<max>\uff11</max>",  # a fullwidth digit one is not ASCII
        "<max>1234567890</max>",
        "<max>1</max><max>2</max>",
        "<after>a</after><before>b</before>",
        "<after/>",
        "<after><b/></after>",
        f"<after>{'a' * 2000}</after>",
        "<index>-3</index>",
    ],
)
def test_malformed_set_is_bad_request(inner: str) -> None:
    with pytest.raises(StanzaError) as info:
        parse_set(_query(_set(inner)))
    assert info.value.condition == "bad-request"


def test_two_sets_are_bad_request() -> None:
    with pytest.raises(StanzaError):
        parse_set(_query(_set("") + _set("")))


def test_build_set_for_a_page_and_for_an_empty_page() -> None:
    assert_xml_equal(
        build_set("a", "b", first_index=3, count=10),
        f"<set xmlns='{NS_RSM}'><first index='3'>a</first><last>b</last><count>10</count></set>",
    )
    assert_xml_equal(build_set(count=0), f"<set xmlns='{NS_RSM}'><count>0</count></set>")
    assert_xml_equal(
        build_set("a", "a"), f"<set xmlns='{NS_RSM}'><first>a</first><last>a</last></set>"
    )


# -- forms ---------------------------------------------------------------------------------------


def _form(inner: str, type_: str = "submit") -> etree._Element:
    return _query(f"<x xmlns='jabber:x:data' type='{type_}'>{inner}</x>")[0]


def test_parse_submitted_form() -> None:
    form = parse_submitted(
        _form(
            "<field var='FORM_TYPE' type='hidden'><value>urn:x</value></field>"
            "<field var='a'><value>1</value></field>"
            "<field var='m'><value>x</value><value>y</value></field>"
            "<field var='empty'/>"
        )
    )
    assert form.form_type == "urn:x"
    assert form.values == {"a": ["1"], "m": ["x", "y"], "empty": []}
    assert form.single("a") == "1"
    assert form.single("empty") is None
    assert form.single("missing") is None
    with pytest.raises(StanzaError):
        form.single("m")


@pytest.mark.parametrize(
    ("inner", "type_"),
    [
        ("", "form"),
        ("<field><value>1</value></field>", "submit"),
        ("<field var='a'/><field var='a'/>", "submit"),
        ("".join(f"<field var='f{i}'/>" for i in range(100)), "submit"),
    ],
)
def test_bad_submitted_forms(inner: str, type_: str) -> None:
    with pytest.raises(StanzaError) as info:
        parse_submitted(_form(inner, type_))
    assert info.value.condition == "bad-request"


def test_build_form() -> None:
    assert_xml_equal(
        build_form("urn:x", [Field("with", "jid-single"), Field("n", values=("1",), label="N")]),
        "<x xmlns='jabber:x:data' type='form'>"
        "<field var='FORM_TYPE' type='hidden'><value>urn:x</value></field>"
        "<field var='with' type='jid-single'/>"
        "<field var='n' type='text-single' label='N'><value>1</value></field></x>",
    )
