"""The pure PEP node model (xeps/pep/node.py): configuration fields, forms, items, access."""

from __future__ import annotations

import pytest
from lxml import etree

from xeps.pep.node import (
    FORM_NODE_CONFIG,
    FORM_PUBLISH_OPTIONS,
    ConfigError,
    Item,
    Limits,
    Node,
    NodeConfig,
    access_denial,
    apply_fields,
    config_form,
    parse_form,
)

LIMITS = Limits(max_items=50, max_payload_size=1000)
NS_DATA = "jabber:x:data"


def form(
    form_type: str | None, fields: dict[str, list[str]], type_: str = "submit"
) -> etree._Element:
    x = etree.Element(f"{{{NS_DATA}}}x", type=type_)
    if form_type is not None:
        ft = etree.SubElement(x, f"{{{NS_DATA}}}field", var="FORM_TYPE", type="hidden")
        etree.SubElement(ft, f"{{{NS_DATA}}}value").text = form_type
    for var, values in fields.items():
        field = etree.SubElement(x, f"{{{NS_DATA}}}field", var=var)
        for value in values:
            etree.SubElement(field, f"{{{NS_DATA}}}value").text = value
    return x


def test_apply_fields_types_and_max() -> None:
    config = apply_fields(
        NodeConfig(),
        {
            "pubsub#max_items": ["max"],
            "pubsub#persist_items": ["false"],
            "pubsub#access_model": ["open"],
            "pubsub#roster_groups_allowed": ["b", "a", "a"],
            "pubsub#title": ["Tunes"],
        },
        LIMITS,
    )
    assert config.max_items == 50
    assert config.persist_items is False
    assert config.access_model == "open"
    assert config.roster_groups_allowed == ("a", "b")
    assert config.title == "Tunes"


@pytest.mark.parametrize(
    ("var", "values", "unknown"),
    [
        ("pubsub#nope", ["1"], True),
        ("pubsub#max_items", ["0"], False),
        ("pubsub#max_items", ["51"], False),
        ("pubsub#max_items", ["1", "2"], False),
        ("pubsub#max_items", ["9" * 40], False),
        ("pubsub#persist_items", ["yes"], False),
        ("pubsub#access_model", ["authorize"], False),
        ("pubsub#publish_model", ["open"], False),
        ("pubsub#notification_type", ["chat"], False),
        ("pubsub#presence_based_delivery", ["0"], False),
        ("pubsub#title", ["x" * 2000], False),
    ],
)
def test_apply_fields_refuses(var: str, values: list[str], unknown: bool) -> None:
    with pytest.raises(ConfigError) as info:
        apply_fields(NodeConfig(), {var: values}, LIMITS)
    assert info.value.unknown is unknown
    assert info.value.var == var


def test_precondition_is_applying_without_change() -> None:
    config = NodeConfig(max_items=50, access_model="open")
    assert apply_fields(config, {"pubsub#max_items": ["max"]}, LIMITS) == config
    assert apply_fields(config, {"pubsub#access_model": ["presence"]}, LIMITS) != config


def test_parse_form_checks_form_type_and_repeats() -> None:
    fields = parse_form(
        form(FORM_PUBLISH_OPTIONS, {"pubsub#max_items": ["3"]}), FORM_PUBLISH_OPTIONS
    )
    assert fields == {"pubsub#max_items": ["3"]}
    with pytest.raises(ConfigError):
        parse_form(form(FORM_NODE_CONFIG, {"pubsub#max_items": ["3"]}), FORM_PUBLISH_OPTIONS)
    with pytest.raises(ConfigError):
        parse_form(form(None, {"pubsub#max_items": ["3"]}), FORM_PUBLISH_OPTIONS)
    with pytest.raises(ConfigError):
        parse_form(form(FORM_NODE_CONFIG, {}, type_="form"), FORM_NODE_CONFIG)
    repeated = form(FORM_NODE_CONFIG, {"pubsub#title": ["a"]})
    repeated.append(etree.fromstring(etree.tostring(repeated[1])))
    with pytest.raises(ConfigError):
        parse_form(repeated, FORM_NODE_CONFIG)
    assert parse_form(form(None, {}), FORM_NODE_CONFIG) == {}


def test_config_form_round_trips() -> None:
    config = NodeConfig(
        max_items=50, max_payload_size=1000, access_model="roster", roster_groups_allowed=("f",)
    )
    x = config_form(config, LIMITS)
    fields = {
        f.get("var"): [v.text or "" for v in f.findall(f"{{{NS_DATA}}}value")]
        for f in x.findall(f"{{{NS_DATA}}}field")
    }
    assert fields["FORM_TYPE"] == [FORM_NODE_CONFIG]
    assert fields["pubsub#max_items"] == ["max"]
    x.set("type", "submit")
    assert (
        apply_fields(NodeConfig(max_payload_size=5), parse_form(x, FORM_NODE_CONFIG), LIMITS)
        == config
    )


def test_json_round_trip_and_tolerance() -> None:
    config = NodeConfig(max_items=7, roster_groups_allowed=("a",), title="t")
    assert NodeConfig.from_json(config.to_json(), NodeConfig()) == config
    broken = {"max_items": "many", "title": 3, "unknown": 1, "access_model": "open"}
    restored = NodeConfig.from_json(broken, NodeConfig())
    assert restored == NodeConfig(access_model="open")


def test_node_items_order_max_items_and_select() -> None:
    node = Node(NodeConfig(max_items=3))
    for item_id in ("a", "b", "c"):
        assert node.publish(item_id, Item(f"<x xmlns='urn:{item_id}'/>")) == []
    assert node.publish("a", Item("<x xmlns='urn:a2'/>")) == []  # overwrite: now newest
    assert node.publish("d", Item("<x xmlns='urn:d'/>")) == ["b"]
    assert list(node.items) == ["c", "a", "d"]
    last = node.last()
    assert last is not None
    assert last[0] == "d"
    assert [i for i, _ in node.select(max_items=2)] == ["a", "d"]
    assert [i for i, _ in node.select(ids=["d", "zz", "c"])] == ["d", "c"]
    transient = Node(NodeConfig(persist_items=False))
    assert transient.publish("a", Item("")) == []
    assert transient.last() is None


def test_access_denial() -> None:
    presence = NodeConfig()
    assert access_denial(presence, True, "none", None) is None
    assert access_denial(presence, False, "from", None) is None
    assert access_denial(presence, False, "both", None) is None
    assert access_denial(presence, False, "to", None) == "presence"
    assert access_denial(presence, False, "both", None, "outcast") == "outcast"
    assert access_denial(NodeConfig(access_model="open"), False, "none", None) is None
    whitelist = NodeConfig(access_model="whitelist")
    assert access_denial(whitelist, False, "both", None) == "whitelist"
    assert access_denial(whitelist, False, "none", None, "member") is None
    roster = NodeConfig(access_model="roster", roster_groups_allowed=("friends",))
    assert access_denial(roster, False, "both", {"friends"}) is None
    assert access_denial(roster, False, "both", {"work"}) == "roster"
    assert access_denial(roster, False, "both", None) == "roster"
