"""XEP-0060 node model for PEP (XEP-0163): node configuration, items, access checks. Pure.

A node is an ordered key-value store of items (§"Data Model"): publication order, newest
last; publishing an existing ItemID moves it to the newest place; beyond `max_items` the
oldest items are dropped. Configuration fields are the `pubsub#…` fields of the node_config
form (§16.4.4); publish-options (§7.1.5) are checked by applying them to the current
configuration and comparing.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = "http://jabber.org/protocol/pubsub#owner"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_DATA = "jabber:x:data"
FORM_NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
FORM_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"

ACCESS_MODELS = ("presence", "open", "roster", "whitelist")
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")
NOTIFICATION_TYPES = ("headline", "normal")
PUBLISH_MODELS = ("publishers",)  # PEP: the owner is the only publisher
ITEMREPLY = ("owner", "publisher")


class ConfigError(Exception):
    """A configuration field that is unknown (`unknown`) or has a bad value."""

    def __init__(self, var: str, unknown: bool, reason: str) -> None:
        super().__init__(f"{var}: {reason}")
        self.var = var
        self.unknown = unknown
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """Server-imposed limits (module options)."""

    max_items: int = 256  # what "max" means, and the largest accepted pubsub#max_items
    max_payload_size: int = 65536  # bytes of one serialized payload


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The node configuration (XEP-0060 §16.4.4 fields this service implements)."""

    access_model: str = "presence"  # XEP-0163 §1: presence by default
    roster_groups_allowed: tuple[str, ...] = ()
    persist_items: bool = True
    max_items: int = 1
    max_payload_size: int = 65536
    send_last_published_item: str = "on_sub_and_presence"  # XEP-0163 §5
    deliver_notifications: bool = True
    deliver_payloads: bool = True
    notify_retract: bool = True
    notify_delete: bool = True
    notify_config: bool = False
    notification_type: str = "headline"
    publish_model: str = "publishers"
    itemreply: str = "owner"
    presence_based_delivery: bool = True  # PEP: notifications follow the contacts' presence
    title: str = ""
    description: str = ""
    type: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        data = dataclasses.asdict(self)
        data["roster_groups_allowed"] = list(self.roster_groups_allowed)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], default: NodeConfig) -> NodeConfig:
        """Rebuild from `to_json` output; unknown or mistyped keys keep `default`'s value."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            current = getattr(default, f.name)
            if isinstance(current, tuple) and isinstance(value, list):
                values[f.name] = tuple(str(v) for v in value)
            elif type(value) is type(current):
                values[f.name] = value
        return dataclasses.replace(default, **values)


# Field var -> (attribute, XEP-0004 field type, label).
FIELDS: dict[str, tuple[str, str, str]] = {
    "pubsub#access_model": ("access_model", "list-single", "Who may subscribe and retrieve"),
    "pubsub#roster_groups_allowed": (
        "roster_groups_allowed",
        "list-multi",
        "Roster groups allowed to subscribe",
    ),
    "pubsub#persist_items": ("persist_items", "boolean", "Persist items to storage"),
    "pubsub#max_items": ("max_items", "text-single", "Max # of items to persist"),
    "pubsub#max_payload_size": ("max_payload_size", "text-single", "Max payload size in bytes"),
    "pubsub#send_last_published_item": (
        "send_last_published_item",
        "list-single",
        "When to send the last published item",
    ),
    "pubsub#deliver_notifications": (
        "deliver_notifications",
        "boolean",
        "Deliver event notifications",
    ),
    "pubsub#deliver_payloads": (
        "deliver_payloads",
        "boolean",
        "Deliver payloads with event notifications",
    ),
    "pubsub#notify_retract": ("notify_retract", "boolean", "Notify when items are removed"),
    "pubsub#notify_delete": ("notify_delete", "boolean", "Notify when the node is deleted"),
    "pubsub#notify_config": ("notify_config", "boolean", "Notify when the configuration changes"),
    "pubsub#notification_type": (
        "notification_type",
        "list-single",
        "Message type of notifications",
    ),
    "pubsub#publish_model": ("publish_model", "list-single", "Who may publish"),
    "pubsub#itemreply": ("itemreply", "list-single", "Whom replies to items go to"),
    "pubsub#presence_based_delivery": (
        "presence_based_delivery",
        "boolean",
        "Deliver notifications only to available users",
    ),
    "pubsub#title": ("title", "text-single", "A friendly name for the node"),
    "pubsub#description": ("description", "text-single", "A description of the node"),
    "pubsub#type": ("type", "text-single", "Payload type (namespace of the payload)"),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "access_model": ACCESS_MODELS,
    "send_last_published_item": SEND_LAST,
    "notification_type": NOTIFICATION_TYPES,
    "publish_model": PUBLISH_MODELS,
    "itemreply": ITEMREPLY,
}
_FIXED = {"presence_based_delivery": True}  # PEP delivery follows presence, always


def _boolean(var: str, values: list[str]) -> bool:
    if len(values) != 1 or values[0] not in ("0", "1", "true", "false"):
        raise ConfigError(var, False, "expected one boolean value")
    return values[0] in ("1", "true")


def _integer(var: str, values: list[str], upper: int, allow_max: bool) -> int:
    if len(values) != 1:
        raise ConfigError(var, False, "expected one value")
    text = values[0].strip()
    if allow_max and text == "max":
        return upper
    if not text.isdigit() or len(text) > 12:
        raise ConfigError(var, False, "expected a positive integer")
    number = int(text)
    if number < 1 or number > upper:
        raise ConfigError(var, False, f"must be between 1 and {upper}")
    return number


def apply_fields(config: NodeConfig, fields: Mapping[str, list[str]], limits: Limits) -> NodeConfig:
    """`config` changed by submitted form `fields` (FORM_TYPE excluded).

    Raises:
        ConfigError: an unknown field, or a value of the wrong type or out of range.
    """
    changes: dict[str, Any] = {}
    for var, values in fields.items():
        spec = FIELDS.get(var)
        if spec is None:
            raise ConfigError(var, True, "unknown configuration field")
        attr, kind, _label = spec
        value: Any
        if kind == "boolean":
            value = _boolean(var, values)
        elif attr == "max_items":
            value = _integer(var, values, limits.max_items, allow_max=True)
        elif attr == "max_payload_size":
            value = _integer(var, values, limits.max_payload_size, allow_max=True)
        elif kind == "list-multi":
            if any(len(v) > 1023 for v in values) or len(values) > 256:
                raise ConfigError(var, False, "too many or too long values")
            value = tuple(sorted(set(values)))
        else:
            if len(values) > 1:
                raise ConfigError(var, False, "expected at most one value")
            value = values[0] if values else ""
            if len(value) > 1023:
                raise ConfigError(var, False, "value too long")
            choices = _CHOICES.get(attr)
            if choices is not None and value not in choices:
                raise ConfigError(var, False, f"unsupported value {value!r}")
        if attr in _FIXED and value != _FIXED[attr]:
            raise ConfigError(var, False, "not configurable on this service")
        changes[attr] = value
    return dataclasses.replace(config, **changes)


def parse_form(form: etree._Element, form_type: str) -> dict[str, list[str]]:
    """The fields of a submitted data form (XEP-0004), FORM_TYPE checked and left out.

    Raises:
        ConfigError: not a submit form, a wrong FORM_TYPE, or a field repeated.
    """
    if form.tag != f"{{{NS_DATA}}}x" or form.get("type") not in ("submit", None):
        raise ConfigError("FORM_TYPE", False, "expected a data form of type submit")
    fields: dict[str, list[str]] = {}
    seen_type = None
    for el in form.iterchildren(f"{{{NS_DATA}}}field"):
        var = el.get("var")
        values = [v.text or "" for v in el.iterchildren(f"{{{NS_DATA}}}value")]
        if not var:
            raise ConfigError("", False, "field without var")
        if var == "FORM_TYPE":
            seen_type = values[0] if values else ""
            continue
        if var in fields:
            raise ConfigError(var, False, "field repeated")
        fields[var] = values
    if seen_type is not None and seen_type != form_type:
        raise ConfigError("FORM_TYPE", False, f"expected FORM_TYPE {form_type}")
    if seen_type is None and fields:
        raise ConfigError("FORM_TYPE", False, "missing FORM_TYPE")
    return fields


def config_form(config: NodeConfig, limits: Limits, groups: Iterable[str] = ()) -> etree._Element:
    """The node_config form (type form) of `config` (§8.2.1)."""
    x = etree.Element(f"{{{NS_DATA}}}x", nsmap={None: NS_DATA}, type="form")
    ft = etree.SubElement(x, f"{{{NS_DATA}}}field", var="FORM_TYPE", type="hidden")
    etree.SubElement(ft, f"{{{NS_DATA}}}value").text = FORM_NODE_CONFIG
    for var, (attr, kind, label) in FIELDS.items():
        el = etree.SubElement(x, f"{{{NS_DATA}}}field", var=var, type=kind, label=label)
        value = getattr(config, attr)
        options: Iterable[str] = _CHOICES.get(attr, ())
        if attr == "roster_groups_allowed":
            options = sorted(set(groups) | set(value))
        for option in options:
            opt = etree.SubElement(el, f"{{{NS_DATA}}}option")
            etree.SubElement(opt, f"{{{NS_DATA}}}value").text = option
        if isinstance(value, bool):
            values = ["1" if value else "0"]
        elif isinstance(value, tuple):
            values = list(value)
        elif attr == "max_items" and value == limits.max_items:
            values = ["max"]
        else:
            values = [str(value)] if value != "" else []
        for v in values:
            etree.SubElement(el, f"{{{NS_DATA}}}value").text = v
    return x


@dataclass(slots=True)
class Item:
    """One stored item: its payload (serialized XML, or "" for none) and publisher."""

    payload: str
    publisher: str = ""

    def element(self) -> etree._Element | None:
        """The payload as an element (None when the item has none)."""
        return etree.fromstring(self.payload) if self.payload else None


@dataclass(slots=True)
class Node:
    """A leaf node: configuration plus items in publication order (oldest first)."""

    config: NodeConfig
    items: OrderedDict[str, Item] = field(default_factory=OrderedDict)
    affiliations: dict[str, str] = field(default_factory=dict)  # bare JID -> affiliation

    def publish(self, item_id: str, item: Item) -> list[str]:
        """Store (or overwrite) an item as the newest; return the ids dropped by max_items."""
        if not self.config.persist_items:
            return []
        self.items.pop(item_id, None)
        self.items[item_id] = item
        return self.trim()

    def trim(self) -> list[str]:
        """Drop the oldest items beyond max_items; return their ids."""
        dropped: list[str] = []
        while len(self.items) > self.config.max_items:
            old, _ = self.items.popitem(last=False)
            dropped.append(old)
        return dropped

    def last(self) -> tuple[str, Item] | None:
        """The newest item."""
        if not self.items:
            return None
        item_id = next(reversed(self.items))
        return item_id, self.items[item_id]

    def select(
        self, max_items: int | None = None, ids: list[str] | None = None
    ) -> list[tuple[str, Item]]:
        """Items by id (in request order, unknown ids left out), or the newest `max_items`
        (all when None), oldest first."""
        if ids:
            return [(i, self.items[i]) for i in ids if i in self.items]
        items = list(self.items.items())
        if max_items is not None:
            items = items[-max_items:] if max_items > 0 else []
        return items


def access_denial(
    config: NodeConfig,
    is_owner: bool,
    subscription: str,
    groups: Iterable[str] | None,
    affiliation: str = "none",
) -> str | None:
    """Why the requester may not see the node's items, or None when it may (§6.1.3, §6.5.9).

    `subscription` is the owner's roster subscription state of the requester ("from"/"both"
    mean it sees the owner's presence); `groups` its roster groups (None when unknown).
    Returns "presence", "roster", "whitelist" or "outcast".
    """
    if is_owner:
        return None
    if affiliation == "outcast":
        return "outcast"
    model = config.access_model
    if model == "open":
        return None
    if affiliation in ("member", "publisher", "publish-only", "owner"):
        return None
    if model == "presence":
        return None if subscription in ("from", "both") else "presence"
    if model == "roster":
        if groups is not None and set(groups) & set(config.roster_groups_allowed):
            return None
        return "roster"
    return "whitelist"
