"""Module loading: resolve names to `Module` classes, validate options, register, unload.

Names resolve to `xeps.<name>` (imported dynamically, so the core never imports xeps
statically) or to an entry point in the `xmppd.modules` group. With no `modules_enabled`, every
shipped module is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
import types
import typing
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from xmppd.config import ConfigError
from xmppd.events import ChainKey
from xmppd.features import Scope
from xmppd.hosts import Host
from xmppd.module_api import HookSpec, IqSpec, Module, ModuleContext, NonzaSpec, ServerServices

logger = logging.getLogger(__name__)


def shipped_modules() -> list[str]:
    """Names of the modules shipped in the `xeps` package."""
    package = importlib.import_module("xeps")
    return sorted(
        m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")
    )


def resolve(name: str) -> type[Module]:
    """The Module class for `name`.

    Raises:
        ConfigError: no such module, or it defines no (or several) Module classes.
    """
    try:
        mod: types.ModuleType = importlib.import_module(f"xeps.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"xeps.{name}":
            raise
        found = [ep for ep in entry_points(group="xmppd.modules") if ep.name == name]
        if not found:
            raise ConfigError(f"modules_enabled: unknown module {name!r}") from None
        cls = found[0].load()
        if not (isinstance(cls, type) and issubclass(cls, Module)):
            raise ConfigError(f"module {name!r}: entry point is not a Module class") from None
        return cls
    classes = [
        obj
        for obj in vars(mod).values()
        if isinstance(obj, type)
        and issubclass(obj, Module)
        and obj is not Module
        and obj.__module__.startswith(mod.__name__)
    ]
    if len(classes) != 1:
        raise ConfigError(f"module {name!r} must define exactly one Module class")
    return classes[0]


def module_name(cls: type[Module]) -> str:
    """The config name of a module class."""
    return cls.name or cls.__module__.rsplit(".", 1)[-1]


def build_options(cls: type[Module], raw: Mapping[str, Any], where: str) -> object:
    """Validate `[modules.<name>]` against the module's Options dataclass.

    Raises:
        ConfigError: unknown key or wrong type, naming the key path.
    """
    options_cls = cls.Options
    if not dataclasses.is_dataclass(options_cls):
        if raw:
            raise ConfigError(f"{where}: module takes no options (got {sorted(raw)[0]!r})")
        return options_cls()
    hints = typing.get_type_hints(options_cls)
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    for name, field in fields.items():
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        if required and name not in raw:
            raise ConfigError(f"{where}.{name}: required option missing")
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown option")
        if not _matches(value, hints[key]):
            raise ConfigError(f"{where}.{key}: expected {hints[key]}, got {type(value).__name__}")
    return options_cls(**raw)


def _matches(value: object, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        (item, *_rest) = typing.get_args(hint) or (object,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def load_order(classes: Sequence[type[Module]]) -> list[type[Module]]:
    """Order classes so that each comes after the modules it depends on (if enabled)."""
    by_name = {module_name(c): c for c in classes}
    ordered: list[type[Module]] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        cls = by_name[name]
        if cls in ordered:
            return
        if name in visiting:
            raise ConfigError(f"module dependency cycle through {name!r}")
        visiting.add(name)
        for dep in cls.depends:
            if dep in by_name:
                visit(dep)
        visiting.discard(name)
        ordered.append(cls)

    for name in by_name:
        visit(name)
    return ordered


class ModuleManager:
    """Loads modules onto hosts and keeps what is needed to unload them."""

    def __init__(self, services: ServerServices) -> None:
        self.services = services
        self.loaded: list[tuple[Host, Module]] = []

    async def load(
        self,
        host: Host,
        names: Sequence[str],
        options: Mapping[str, Mapping[str, Any]],
        where: str = "modules",
    ) -> None:
        """Resolve, validate and load `names` on `host` (a ConfigError names the culprit)."""
        classes = [resolve(n) for n in names]
        for name in options:
            if name not in names:
                raise ConfigError(f"{where}.{name}: options for a module that is not enabled")
        host_type = "local" if host.is_local else "component"
        for cls in load_order(classes):
            name = module_name(cls)
            if host_type not in cls.host_types:
                continue
            opts = build_options(cls, options.get(name, {}), f"{where}.{name}")
            await self.load_one(host, cls, name, opts)

    async def load_one(self, host: Host, cls: type[Module], name: str, options: object) -> Module:
        """Instantiate and register one module on one host."""
        ctx = ModuleContext(self.services, host, name, options)
        for store, kind in cls.stores.items():
            ctx.open_store(store, kind)
        for var in cls.features:
            ctx.add_feature(var)
        for var in cls.account_features:
            ctx.add_feature(var, Scope.ACCOUNT)
        for identity in cls.identities:
            ctx.add_identity(identity)
        module = cls(ctx)
        for attr in dir(cls):
            func = getattr(cls, attr, None)
            specs = getattr(func, "_xmppd_specs", None)
            if not specs:
                continue
            bound = getattr(module, attr)
            for spec in specs:
                if isinstance(spec, HookSpec):
                    if isinstance(spec.key, ChainKey):
                        ctx.hook(spec.key, bound, spec.priority)
                    else:
                        ctx.hook_notify(spec.key, bound, spec.priority)
                elif isinstance(spec, IqSpec):
                    ctx.add_iq_handler(spec.type, spec.tag, bound, spec.target)
                elif isinstance(spec, NonzaSpec):
                    ctx.add_nonza_handler(spec.tag, bound)
        await module.load()
        host.modules[name] = module
        self.loaded.append((host, module))
        logger.info("loaded module %s on %s", name, host.domain)
        return module

    async def unload_all(self) -> None:
        """Unload every module, last loaded first."""
        while self.loaded:
            host, module = self.loaded.pop()
            try:
                await module.unload()
            except Exception:
                logger.exception("module %s failed to unload", module.ctx.name)
            module.ctx.undo_all()
            host.modules.pop(module.ctx.name, None)
