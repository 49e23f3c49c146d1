"""Module loading (xmppd/module_manager.py): registration, unload, options, order, host types.

Uses the real Server (memory storage, no listeners) as the modules' ServerServices.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.helpers.harness import ModuleHarness, error_condition
from xmppd import events as ev
from xmppd import module_manager
from xmppd.config import ConfigError
from xmppd.features import DiscoItem, Identity, Scope
from xmppd.hosts import Host
from xmppd.iq import IqRequest, Target
from xmppd.module_api import Module, StoreKind, hook, iq_handler, nonza_handler
from xmppd.module_manager import (
    ModuleManager,
    build_options,
    load_order,
    module_name,
    resolve,
    shipped_modules,
)
from xmppd.session import Session

NS = "urn:xmppd:test:modules"
NS_SM = "urn:xmpp:sm:3"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(tmp_path, accounts=("alice",)) as harness:
        yield harness


@pytest.fixture
def manager(h: ModuleHarness) -> ModuleManager:
    return ModuleManager(h.server)


def snapshot(host: Host) -> dict[str, Any]:
    """Everything a module can register on a host."""
    return {
        "bus": {key: list(entries) for key, entries in host.bus._handlers.items() if entries},
        "iq": dict(host.iq._handlers),
        "features": host.features.features(Scope.HOST),
        "account_features": host.features.features(Scope.ACCOUNT),
        "identities": host.features.identities(Scope.HOST),
        "account_identities": host.features.identities(Scope.ACCOUNT),
        "items": list(host.features.items),
        "stream_features": list(host.stream_features),
        "nonzas": dict(host.nonza_handlers),
        "send_filters": list(host.send_filters),
        "modules": dict(host.modules),
    }


# --- a module that uses every declaration and every ctx registration -------------------------------


class Everything(Module):
    """Test module: declares and registers one of everything."""

    name = "everything"
    features = ("urn:test:feature",)
    account_features = ("urn:test:account-feature",)
    identities = (Identity("pubsub", "service", "Test"),)
    stores = {"notes": StoreKind.KEYVALUE, "log": StoreKind.ARCHIVE}

    async def load(self) -> None:
        self.calls: list[str] = []
        self.ticks = asyncio.Event()
        ctx = self.ctx
        ctx.add_feature("urn:test:dynamic")
        ctx.add_identity(Identity("account", "registered"), Scope.ACCOUNT)
        ctx.hook(ev.MESSAGE_HOST, self.dynamic_message)
        ctx.hook_notify(ev.SESSION_ENDED, self.dynamic_ended)
        ctx.add_iq_handler("set", f"{{{NS}}}dynamic", self.query)
        ctx.add_nonza_handler(f"{{{NS_SM}}}enable", self.nonza)
        ctx.add_stream_feature(self.stream_feature)
        ctx.add_send_filter(self.send_filter)
        ctx.add_disco_item(DiscoItem("pubsub.localhost", "Test"))
        self.timer = ctx.call_later(3600, lambda: self.calls.append("timer"))
        ctx.every(0.001, self.tick)

    async def tick(self) -> None:
        self.calls.append("tick")
        self.ticks.set()

    @hook(ev.MESSAGE_BARE, priority=ev.Priority.HIGH)
    async def on_message(self, event: ev.StanzaEvent) -> bool:
        self.calls.append("message")
        return False

    @hook(ev.SESSION_BOUND)
    async def on_bound(self, event: ev.SessionEvent) -> None:
        self.calls.append("bound")

    async def dynamic_message(self, event: ev.StanzaEvent) -> bool:
        return False

    async def dynamic_ended(self, event: ev.SessionEnded) -> None:
        return None

    @iq_handler("get", NS, "query")
    @iq_handler("get", NS, "query", to=Target.ACCOUNT)
    async def query(self, request: IqRequest) -> etree._Element:
        self.calls.append(f"query:{request.to}")
        return etree.Element(f"{{{NS}}}query", nsmap={None: NS})

    @nonza_handler(NS_SM, "r")
    async def nonza(self, session: Session, element: etree._Element) -> None:
        self.calls.append("nonza")

    def stream_feature(self, session: Session) -> etree._Element | None:
        return None

    def send_filter(self, session: Session, element: etree._Element) -> etree._Element | None:
        return element


async def test_declared_contract_is_registered_on_host(h: ModuleHarness, manager: ModuleManager):
    host = h.host()

    module = await manager.load_one(host, Everything, "everything", Everything.Options())

    assert isinstance(module, Everything)
    assert host.modules["everything"] is module
    assert {"urn:test:feature", "urn:test:dynamic"} <= set(host.features.features(Scope.HOST))
    assert host.features.features(Scope.ACCOUNT) == ["urn:test:account-feature"]
    assert Identity("pubsub", "service", "Test") in host.features.identities(Scope.HOST)
    assert Identity("account", "registered") in host.features.identities(Scope.ACCOUNT)
    assert host.iq.handles(f"{{{NS}}}query", Target.HOST)
    assert host.iq.handles(f"{{{NS}}}query", Target.ACCOUNT)
    assert host.iq.handles(f"{{{NS}}}dynamic", Target.HOST)
    assert set(host.nonza_handlers) == {f"{{{NS_SM}}}r", f"{{{NS_SM}}}enable"}
    assert host.stream_features == [module.stream_feature]
    assert host.send_filters == [module.send_filter]
    assert DiscoItem("pubsub.localhost", "Test") in host.features.items


async def test_declared_handlers_are_called(h: ModuleHarness, manager: ModuleManager):
    module = await manager.load_one(h.host(), Everything, "everything", Everything.Options())
    assert isinstance(module, Everything)

    alice = await h.connect("alice@localhost/home", priority=0)
    await h.send(alice, "<message to='alice@localhost'><body/></message>")
    await h.send(alice, f"<iq to='localhost' type='get' id='q1'><query xmlns='{NS}'/></iq>")
    await h.send(alice, f"<iq to='alice@localhost' type='get' id='q2'><query xmlns='{NS}'/></iq>")
    await h.host().nonza_handlers[f"{{{NS_SM}}}r"](alice, etree.Element(f"{{{NS_SM}}}r"))

    assert [c for c in module.calls if c != "tick"] == [
        "bound",
        "message",
        "query:localhost",
        "query:alice@localhost",
        "nonza",
    ]
    replies = [r for r in h.take(alice) if r.tag == "{jabber:client}iq"]
    assert [(r.get("id"), r.get("type")) for r in replies] == [("q1", "result"), ("q2", "result")]


async def test_declared_stores_are_opened(h: ModuleHarness, manager: ModuleManager):
    module = await manager.load_one(h.host(), Everything, "everything", Everything.Options())

    await module.ctx.keyvalue("notes").set("alice", "k", {"v": 1})
    await module.ctx.archive("log").append("alice", "entry")

    assert await h.server.keyvalue("localhost", "notes").get("alice", "k") == {"v": 1}
    assert await h.server.archive("localhost", "log").count("alice") == 1
    with pytest.raises(KeyError):
        module.ctx.keyvalue("log")  # declared as an archive, not a key-value store


async def test_unload_all_removes_every_registration(h: ModuleHarness, manager: ModuleManager):
    host = h.host()
    before = snapshot(host)

    module = await manager.load_one(host, Everything, "everything", Everything.Options())
    assert isinstance(module, Everything)
    await asyncio.wait_for(module.ticks.wait(), 5)
    assert snapshot(host) != before

    await manager.unload_all()

    assert snapshot(host) == before
    assert manager.loaded == []
    assert module.timer.cancelled()
    # The periodic job is cancelled: no more ticks.
    module.calls.clear()
    await asyncio.sleep(0.02)
    assert module.calls == []


async def test_unload_all_unloads_in_reverse_order_and_survives_failing_unload(
    h: ModuleHarness, manager: ModuleManager, caplog: pytest.LogCaptureFixture
):
    order: list[str] = []

    class First(Module):
        """Test module."""

        name = "first"
        features = ("urn:test:first",)

        async def unload(self) -> None:
            order.append("first")

    class Broken(Module):
        """Test module whose unload fails."""

        name = "broken"
        features = ("urn:test:broken",)

        async def unload(self) -> None:
            order.append("broken")
            raise RuntimeError("unload bug")

    host = h.host()
    before = snapshot(host)
    await manager.load_one(host, First, "first", First.Options())
    await manager.load_one(host, Broken, "broken", Broken.Options())

    with caplog.at_level(logging.ERROR, logger="xmppd.module_manager"):
        await manager.unload_all()

    assert order == ["broken", "first"]
    assert snapshot(host) == before
    assert any("broken" in r.getMessage() for r in caplog.records)


async def test_module_handlers_stop_answering_after_unload(
    h: ModuleHarness, manager: ModuleManager
):
    await manager.load_one(h.host(), Everything, "everything", Everything.Options())
    alice = await h.connect("alice@localhost/home", priority=0)

    await manager.unload_all()
    await h.send(alice, f"<iq to='localhost' type='get' id='q1'><query xmlns='{NS}'/></iq>")

    assert error_condition(h.take_one(alice)) == "service-unavailable"


# --- options ----------------------------------------------------------------------------------------


class Configurable(Module):
    """Test module with options."""

    name = "configurable"

    @dataclass(frozen=True)
    class Options:
        count: int = 1
        ratio: float = 0.5
        label: str | None = None
        enabled: bool = True
        names: list[str] = field(default_factory=list)


def test_options_defaults():
    options = build_options(Configurable, {}, "modules.configurable")

    assert options == Configurable.Options()


def test_options_are_built_from_config():
    options = build_options(
        Configurable,
        {"count": 3, "ratio": 0.25, "label": "x", "enabled": False, "names": ["a", "b"]},
        "modules.configurable",
    )

    assert options == Configurable.Options(3, 0.25, "x", False, ["a", "b"])


def test_options_accept_int_for_float():
    options = build_options(Configurable, {"ratio": 2}, "modules.configurable")

    assert isinstance(options, Configurable.Options)
    assert options.ratio == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"colour": "red"}, "modules.configurable.colour: unknown option"),
        ({"count": "3"}, "modules.configurable.count: expected"),
        ({"count": True}, "modules.configurable.count: expected"),
        ({"count": 1.5}, "modules.configurable.count: expected"),
        ({"ratio": "0.5"}, "modules.configurable.ratio: expected"),
        ({"ratio": False}, "modules.configurable.ratio: expected"),
        ({"enabled": 1}, "modules.configurable.enabled: expected"),
        ({"label": 5}, "modules.configurable.label: expected"),
        ({"names": "a"}, "modules.configurable.names: expected"),
        ({"names": ["a", 1]}, "modules.configurable.names: expected"),
    ],
)
def test_invalid_options_are_config_errors(raw: dict[str, Any], message: str):
    with pytest.raises(ConfigError) as info:
        build_options(Configurable, raw, "modules.configurable")

    assert str(info.value).startswith(message)


def test_options_for_module_without_options_are_refused():
    class Plain(Module):
        """Test module without options."""

    with pytest.raises(ConfigError, match=r"modules\.plain: module takes no options"):
        build_options(Plain, {"x": 1}, "modules.plain")


def test_missing_required_option_is_a_config_error():
    class Needy(Module):
        """Test module with a required option."""

        @dataclass(frozen=True)
        class Options:
            url: str

    with pytest.raises(ConfigError, match=r"modules\.needy\.url"):
        build_options(Needy, {}, "modules.needy")


# --- loading by name ----------------------------------------------------------------------------------


def registry(monkeypatch: pytest.MonkeyPatch, *classes: type[Module]) -> None:
    """Make `resolve` (as used by ModuleManager.load) find these classes by name."""
    by_name = {module_name(cls): cls for cls in classes}

    def fake_resolve(name: str) -> type[Module]:
        if name not in by_name:
            raise ConfigError(f"modules_enabled: unknown module {name!r}")
        return by_name[name]

    monkeypatch.setattr(module_manager, "resolve", fake_resolve)


def recording(name: str, order: list[str], **attrs: Any) -> type[Module]:
    """A Module class named `name` whose load() appends its name to `order`."""

    async def load(self: Module) -> None:
        order.append(name)

    namespace = {"__doc__": f"Test module {name}.", "name": name, "load": load, **attrs}
    return type(f"Module_{name}", (Module,), namespace)


async def test_load_passes_validated_options(
    h: ModuleHarness, manager: ModuleManager, monkeypatch: pytest.MonkeyPatch
):
    registry(monkeypatch, Configurable)

    await manager.load(h.host(), ["configurable"], {"configurable": {"count": 7}})

    module = h.host().modules["configurable"]
    assert isinstance(module, Configurable)
    assert module.options == Configurable.Options(count=7)
    assert module.ctx.options is module.options


async def test_load_refuses_options_of_module_not_enabled(
    h: ModuleHarness, manager: ModuleManager, monkeypatch: pytest.MonkeyPatch
):
    registry(monkeypatch, Configurable)

    with pytest.raises(ConfigError, match=r"modules\.ping: options for a module that is not"):
        await manager.load(h.host(), ["configurable"], {"ping": {}})
    assert h.host().modules == {}


async def test_load_reports_invalid_options_with_where(
    h: ModuleHarness, manager: ModuleManager, monkeypatch: pytest.MonkeyPatch
):
    registry(monkeypatch, Configurable)

    with pytest.raises(ConfigError, match=r'host\."localhost"\.modules\.configurable\.count'):
        await manager.load(
            h.host(),
            ["configurable"],
            {"configurable": {"count": "x"}},
            'host."localhost".modules',
        )


async def test_load_orders_by_dependencies(
    h: ModuleHarness, manager: ModuleManager, monkeypatch: pytest.MonkeyPatch
):
    order: list[str] = []
    classes = [
        recording("app", order, depends=("storage", "transport")),
        recording("transport", order, depends=("storage",)),
        recording("storage", order),
        recording("standalone", order, depends=("not-enabled",)),
    ]
    registry(monkeypatch, *classes)

    await manager.load(h.host(), ["app", "transport", "storage", "standalone"], {})

    assert order.index("storage") < order.index("transport") < order.index("app")
    assert sorted(order) == ["app", "standalone", "storage", "transport"]


def test_load_order_keeps_given_order_without_dependencies():
    order: list[str] = []
    classes = [recording(n, order) for n in ("c", "a", "b")]

    assert [module_name(c) for c in load_order(classes)] == ["c", "a", "b"]


@pytest.mark.parametrize(
    "depends",
    [
        {"a": ("b",), "b": ("a",)},
        {"a": ("b",), "b": ("c",), "c": ("a",)},
        {"a": ("a",)},
    ],
)
def test_dependency_cycle_is_a_config_error(depends: dict[str, tuple[str, ...]]):
    classes = [recording(n, [], depends=d) for n, d in depends.items()]

    with pytest.raises(ConfigError, match="dependency cycle"):
        load_order(classes)


async def test_unknown_module_name_is_a_config_error(h: ModuleHarness, manager: ModuleManager):
    with pytest.raises(ConfigError, match="unknown module 'no_such_module'"):
        await manager.load(h.host(), ["no_such_module"], {})


# --- host types -----------------------------------------------------------------------------------------


async def test_component_only_module_is_not_loaded_on_local_host(
    h: ModuleHarness, manager: ModuleManager, monkeypatch: pytest.MonkeyPatch
):
    order: list[str] = []
    registry(
        monkeypatch,
        recording("room", order, host_types=("component",)),
        recording("either", order, host_types=("local", "component")),
        recording("local", order),
    )

    await manager.load(h.host(), ["room", "either", "local"], {})

    assert order == ["either", "local"]
    assert set(h.host().modules) == {"either", "local"}


async def test_local_only_module_is_not_loaded_on_service_host(
    h: ModuleHarness, manager: ModuleManager, monkeypatch: pytest.MonkeyPatch
):
    order: list[str] = []
    registry(
        monkeypatch,
        recording("room", order, host_types=("component",)),
        recording("local", order),
    )
    service = h.server.add_service_host(h.host(), "conference")

    await manager.load(service, ["room", "local"], {})

    assert order == ["room"]


# --- service hosts --------------------------------------------------------------------------------------


class Conference(Module):
    """Test module that creates a service subdomain."""

    name = "conference"

    async def load(self) -> None:
        self.service = self.ctx.add_service_host("conference")


async def test_add_service_host_creates_subdomain_with_disco_item(
    h: ModuleHarness, manager: ModuleManager
):
    module = await manager.load_one(h.host(), Conference, "conference", Conference.Options())
    assert isinstance(module, Conference)

    service = h.server.hosts["conference.localhost"]
    assert service is module.service
    assert service.parent is h.host()
    assert not service.is_local
    assert DiscoItem("conference.localhost") in h.host().features.items


async def test_service_host_gets_core_delivery(h: ModuleHarness, manager: ModuleManager):
    await manager.load_one(h.host(), Conference, "conference", Conference.Options())
    alice = await h.connect("alice@localhost/home", priority=0)

    await h.send(alice, "<iq to='conference.localhost' type='get' id='c1'><q xmlns='urn:q'/></iq>")

    reply = h.take_one(alice)
    assert reply.get("from") == "conference.localhost"
    assert error_condition(reply) == "service-unavailable"


async def test_unload_removes_service_host_disco_item(h: ModuleHarness, manager: ModuleManager):
    await manager.load_one(h.host(), Conference, "conference", Conference.Options())

    await manager.unload_all()

    assert h.host().features.items == []


async def test_unload_removes_service_host(h: ModuleHarness, manager: ModuleManager):
    await manager.load_one(h.host(), Conference, "conference", Conference.Options())

    await manager.unload_all()

    assert "conference.localhost" not in h.server.hosts


class Rooms(Module):
    """Test module that serves an IQ on its own service subdomain."""

    name = "rooms"

    async def load(self) -> None:
        self.service = self.ctx.service_context("rooms")
        self.service.add_iq_handler("get", f"{{{NS}}}q", self.answer)
        self.service.add_feature(NS)
        self.service.open_store("state", StoreKind.KEYVALUE)

    async def answer(self, request: IqRequest) -> etree._Element | None:
        return etree.Element(f"{{{NS}}}q", served_by=self.service.host.domain)


async def test_service_context_registers_on_the_subdomain(h: ModuleHarness, manager: ModuleManager):
    module = await manager.load_one(h.host(), Rooms, "rooms", Rooms.Options())
    assert isinstance(module, Rooms)
    alice = await h.connect("alice@localhost/home", priority=0)

    await h.send(alice, f"<iq to='rooms.localhost' type='get' id='r1'><q xmlns='{NS}'/></iq>")
    await h.send(alice, f"<iq to='localhost' type='get' id='r2'><q xmlns='{NS}'/></iq>")

    served, unserved = h.take(alice)
    assert served.get("type") == "result"
    assert served[0].get("served_by") == "rooms.localhost"
    assert error_condition(unserved) == "service-unavailable"
    assert NS in h.server.hosts["rooms.localhost"].features.features(Scope.HOST)
    assert NS not in h.host().features.features(Scope.HOST)
    await module.service.keyvalue("state").set("room", "k", {"v": 1})
    assert await h.server.keyvalue("rooms.localhost", "state").get("room", "k") == {"v": 1}


async def test_service_context_registrations_go_on_unload(h: ModuleHarness, manager: ModuleManager):
    module = await manager.load_one(h.host(), Rooms, "rooms", Rooms.Options())
    assert isinstance(module, Rooms)
    service = module.service.host

    await manager.unload_all()

    assert "rooms.localhost" not in h.server.hosts
    assert service.iq._handlers == {}
    assert service.features.features(Scope.HOST) == []


async def test_send_many_gives_each_recipient_its_own_copy(
    h: ModuleHarness, manager: ModuleManager
):
    module = await manager.load_one(h.host(), Rooms, "rooms", Rooms.Options())
    assert isinstance(module, Rooms)
    alice = await h.connect("alice@localhost/home", priority=0)
    phone = await h.connect("alice@localhost/phone", priority=0)
    message = etree.Element("{jabber:client}message", type="groupchat")
    message.set("from", "room@rooms.localhost/nick")
    etree.SubElement(message, "{jabber:client}body").text = "<hi> & 'all'"

    await module.service.send_many(
        message, ["alice@localhost/home", "alice@localhost/phone", "alice@localhost/home"]
    )

    home = h.take(alice)
    assert [m.get("to") for m in home] == ["alice@localhost/home"] * 2
    (on_phone,) = h.take(phone)
    assert on_phone.get("to") == "alice@localhost/phone"
    assert on_phone.findtext("{jabber:client}body") == "<hi> & 'all'"
    assert on_phone.get("from") == "room@rooms.localhost/nick"
    assert message.get("to") is None  # the caller's element is left as it was


async def test_send_many_bounces_for_absent_recipients(h: ModuleHarness, manager: ModuleManager):
    module = await manager.load_one(h.host(), Rooms, "rooms", Rooms.Options())
    assert isinstance(module, Rooms)
    alice = await h.connect("alice@localhost/home", priority=0)
    seen: list[str | None] = []

    async def on_error(event: ev.StanzaEvent) -> bool:
        seen.append(event.stanza.element.get("from"))
        return True

    module.service.hook(ev.MESSAGE_FULL, on_error)
    message = etree.Element("{jabber:client}message", type="groupchat")
    message.set("from", "room@rooms.localhost/nick")

    await module.service.send_many(message, ["alice@localhost/gone", "alice@localhost/home"])

    assert [m.get("to") for m in h.take(alice)] == ["alice@localhost/home"]
    assert seen == ["alice@localhost/gone"]  # RFC 6121 §8.5.3.2.1: the error goes to the room


async def test_send_many_routes_what_is_not_groupchat_or_presence(
    h: ModuleHarness, manager: ModuleManager
):
    # A private message (chat) must pass the recipient host's hooks (archive, carbons);
    # groupchat and presence go straight to the session.
    module = await manager.load_one(h.host(), Rooms, "rooms", Rooms.Options())
    assert isinstance(module, Rooms)
    alice = await h.connect("alice@localhost/home", priority=0)
    seen: list[str | None] = []

    def watch(event: ev.StanzaEvent) -> bool:
        seen.append(event.stanza.element.get("type"))
        return False

    h.host().bus.add_chain(ev.MESSAGE_FULL, watch, 0)
    for type_ in ("chat", "groupchat", "normal"):
        message = etree.Element("{jabber:client}message", type=type_)
        message.set("from", "room@rooms.localhost/nick")
        await module.service.send_many(message, ["alice@localhost/home"])

    assert seen == ["chat", "normal"]
    assert [m.get("type") for m in h.take(alice)] == ["chat", "groupchat", "normal"]


# --- shipped modules ----------------------------------------------------------------------------------


def test_shipped_modules_include_core_set():
    names = shipped_modules()

    assert {"disco", "ping", "time", "version"} <= set(names)
    assert names == sorted(names)
    assert not any(name.startswith("_") for name in names)


@pytest.mark.parametrize("name", shipped_modules())
def test_shipped_module_resolves_to_one_documented_module_class(name: str):
    cls = resolve(name)

    assert issubclass(cls, Module)
    assert module_name(cls) == name
    # DESIGN §2.3: the first docstring line names the specification.
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert doc.startswith(("XEP-", "RFC ")), doc.splitlines()[:1]


async def test_shipped_modules_load_and_unload_cleanly(h: ModuleHarness, manager: ModuleManager):
    host = h.host()
    before = snapshot(host)

    await manager.load(host, shipped_modules(), {})

    assert set(host.modules) == set(shipped_modules())
    await manager.unload_all()
    assert snapshot(host) == before


def test_example_config_documents_every_module_option_with_its_default() -> None:
    """conf/xmppd.toml shows each [modules.<name>] option with the module's real default,
    and every module that has options has its table."""
    import dataclasses
    import tomllib

    from xmppd.module_api import NoOptions
    from xmppd.module_manager import resolve, shipped_modules

    example = Path(__file__).resolve().parents[2] / "conf" / "xmppd.toml"
    tables = tomllib.loads(example.read_text())["modules"]
    for name in shipped_modules():
        options = resolve(name).Options
        if options is NoOptions or not dataclasses.fields(options):
            continue
        assert name in tables, f"[modules.{name}] missing from conf/xmppd.toml"
        defaults = {
            f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            for f in dataclasses.fields(options)
        }
        for key, value in tables[name].items():
            assert key in defaults, f"modules.{name}.{key} is not an option"
            assert value == defaults[key], f"modules.{name}.{key}: {value!r} != {defaults[key]!r}"
        missing = set(defaults) - set(tables[name])
        assert not missing, f"modules.{name}: undocumented {sorted(missing)}"
