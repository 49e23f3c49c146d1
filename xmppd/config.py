"""TOML configuration → frozen dataclasses; every error names the file, key path and reason.

Relative paths resolve against the config file's folder (or the current directory for the
embedded defaults). See `conf/xmppd.toml` for every option with a comment.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from xmppd.jid import JIDError, prep_domain

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(Exception):
    """The configuration is invalid; the message names file, key and reason."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Stream limits (RFC 6120 §13.12 resource exhaustion); tighter before authentication."""

    stanza_size: int = 262144
    max_depth: int = 32
    max_elements: int = 2000
    max_attributes: int = 64
    pre_auth_stanza_size: int = 16384
    pre_auth_max_depth: int = 8
    pre_auth_max_elements: int = 64
    pre_auth_max_attributes: int = 16
    auth_timeout: float = 30.0
    max_backlog: int = 100  # stanzas queued behind a suspended handler before pause_reading
    idle_sweep: float = 1.0  # seconds between sweeps that hibernate idle streams' parsers
    output_high_water: int = 131072  # bytes waiting for a client before its senders pause
    output_max: int = 4194304  # bytes waiting for a client before it is dropped at once
    slow_reader_timeout: float = 30.0  # seconds over the high-water mark before disconnect


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """SASL policy."""

    allow_plain: bool = True  # PLAIN is only ever offered over TLS
    scram_iterations: int = 4096
    throttle_failures: int = 5  # failures within the window before delays start
    throttle_window: float = 60.0
    throttle_max_delay: float = 10.0
    credentials_cache_ttl: float = 30.0  # seconds; 0 disables the login credentials cache


@dataclass(frozen=True, slots=True)
class HostConfig:
    """One local host."""

    domain: str
    modules_enabled: tuple[str, ...] | None = None
    modules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class ComponentConfig:
    """One external component (XEP-0114): its domain and the shared secret of its handshake."""

    domain: str
    secret: str = field(repr=False)  # never in logs or reprs


@dataclass(frozen=True, slots=True)
class Config:
    """The whole server configuration."""

    path: Path | None
    data_dir: Path
    hosts: tuple[HostConfig, ...]
    c2s: tuple[tuple[str, int], ...] = (("127.0.0.1", 5222),)
    c2s_direct_tls: tuple[tuple[str, int], ...] = (("127.0.0.1", 5223),)
    component: tuple[tuple[str, int], ...] = ()  # XEP-0114 listener: none by default
    components: Mapping[str, ComponentConfig] = field(default_factory=dict)
    storage: str = "sqlite"
    database: Path | None = None
    storage_fsync: bool = False  # fsync every group commit (power loss), not only process death
    require_encryption: bool = True
    log_level: str = "info"
    log_levels: Mapping[str, str] = field(default_factory=dict)
    modules_enabled: tuple[str, ...] | None = None
    modules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cert: Path | None = None
    key: Path | None = None
    limits: Limits = Limits()
    auth: AuthConfig = AuthConfig()

    @property
    def database_path(self) -> Path:
        """The SQLite database file."""
        return self.database or self.data_dir / "xmppd.sqlite"

    @property
    def certs_dir(self) -> Path:
        """Where generated and imported certificates live."""
        return self.data_dir / "certs"

    @property
    def admin_socket(self) -> Path:
        """The admin socket used by the CLI to act on a running server."""
        return self.data_dir / "admin.sock"

    def host(self, domain: str) -> HostConfig | None:
        """The host config for `domain`."""
        return next((h for h in self.hosts if h.domain == domain), None)


class _Reader:
    """Typed access to one TOML table that remembers which keys were used."""

    def __init__(self, table: Mapping[str, Any], where: str, origin: str) -> None:
        self.table = table
        self.where = where
        self.origin = origin
        self.used: set[str] = set()

    def error(self, key: str, reason: str) -> ConfigError:
        path = f"{self.where}.{key}" if self.where else key
        return ConfigError(f"{self.origin}: {path}: {reason}")

    def get(self, key: str, kind: type[T], default: T) -> T:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def strings(self, key: str, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected a list of strings")
        return tuple(value)

    def table_of(self, key: str) -> _Reader:
        self.used.add(key)
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, "expected a table")
        return _Reader(value, f"{self.where}.{key}" if self.where else key, self.origin)

    def positive(self, key: str, kind: type[T], default: T) -> T:
        value = self.get(key, kind, default)
        if value <= 0:  # type: ignore[operator]  # only used with int/float
            raise self.error(key, "must be positive")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _address(text: str, reader: _Reader, key: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise reader.error(key, f"{text!r} is not 'address:port'")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - explicit ':port' means all


def _path(base: Path, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _module_tables(reader: _Reader) -> dict[str, dict[str, Any]]:
    modules = reader.table_of("modules")
    out: dict[str, dict[str, Any]] = {}
    for name in modules.table:
        out[name] = dict(modules.table_of(name).table)  # validated against Options by the loader
    return out


def _limits(reader: _Reader) -> Limits:
    d = Limits()
    lim = reader.table_of("limits")
    result = Limits(
        **{
            name: lim.positive(name, type(getattr(d, name)), getattr(d, name))
            for name in Limits.__dataclass_fields__
        }
    )
    lim.finish()
    return result


def _auth(reader: _Reader) -> AuthConfig:
    d = AuthConfig()
    auth = reader.table_of("auth")
    result = AuthConfig(
        allow_plain=auth.get("allow_plain", bool, d.allow_plain),
        scram_iterations=auth.positive("scram_iterations", int, d.scram_iterations),
        throttle_failures=auth.positive("throttle_failures", int, d.throttle_failures),
        throttle_window=auth.positive("throttle_window", float, d.throttle_window),
        throttle_max_delay=auth.positive("throttle_max_delay", float, d.throttle_max_delay),
        credentials_cache_ttl=auth.get("credentials_cache_ttl", float, d.credentials_cache_ttl),
    )
    if result.credentials_cache_ttl < 0:
        raise auth.error("credentials_cache_ttl", "must not be negative")
    if result.scram_iterations < 4096:
        raise auth.error("scram_iterations", "must be at least 4096 (RFC 7677)")
    auth.finish()
    return result


def _components(reader: _Reader, local: set[str]) -> dict[str, ComponentConfig]:
    """`[component."<domain>"]` tables: XEP-0114 external components and their secrets."""
    tables = reader.table_of("component")
    out: dict[str, ComponentConfig] = {}
    for raw in tables.table:
        key = f'"{raw}"'
        try:
            domain = prep_domain(raw)
        except JIDError as exc:
            raise tables.error(key, f"{raw!r} is not a valid domain: {exc}") from exc
        if domain in local:
            raise tables.error(key, "a component cannot take a domain listed in 'hosts'")
        if domain in out:
            raise tables.error(key, "this component domain is configured twice")
        table = tables.table_of(raw)
        table.where = f'component."{raw}"'
        secret = table.get("secret", str, "")
        if not secret:
            raise table.error("secret", "a non-empty shared secret is required")
        table.finish()
        out[domain] = ComponentConfig(domain, secret)
    return out


def parse(data: Mapping[str, Any], *, base: Path, origin: str, path: Path | None) -> Config:
    """Build a Config from a parsed TOML document."""
    top = _Reader(data, "", origin)
    data_dir = _path(base, top.get("data_dir", str, "data")) or base / "data"
    domains = top.strings("hosts", ("localhost",)) or ()
    if not domains:
        raise top.error("hosts", "at least one host is required")
    host_tables = top.table_of("host")
    hosts: list[HostConfig] = []
    for raw in domains:
        try:
            domain = prep_domain(raw)
        except JIDError as exc:
            raise top.error("hosts", f"{raw!r} is not a valid domain: {exc}") from exc
        if any(h.domain == domain for h in hosts):
            raise top.error("hosts", f"{raw!r} is listed twice")
        ht = host_tables.table_of(raw) if raw in host_tables.table else _Reader({}, "", origin)
        ht.where = f'host."{raw}"'
        host = HostConfig(
            domain=domain,
            modules_enabled=ht.strings("modules_enabled", None),
            modules=_module_tables(ht),
            cert=_path(base, ht.get("cert", str, "")),
            key=_path(base, ht.get("key", str, "")),
        )
        if bool(host.cert) != bool(host.key):
            raise ht.error("cert" if host.cert is None else "key", "cert and key go together")
        hosts.append(host)
        ht.finish()
    for raw in host_tables.table:
        if raw not in domains:
            raise host_tables.error(f'"{raw}"', "not listed in 'hosts'")
    host_tables.used.update(host_tables.table)
    listen = top.table_of("listen")
    c2s = tuple(
        _address(a, listen, "c2s") for a in listen.strings("c2s", ("127.0.0.1:5222",)) or ()
    )
    direct = tuple(
        _address(a, listen, "c2s_direct_tls")
        for a in listen.strings("c2s_direct_tls", ("127.0.0.1:5223",)) or ()
    )
    component_listen = tuple(
        _address(a, listen, "component") for a in listen.strings("component", ()) or ()
    )
    listen.finish()
    components = _components(top, {h.domain for h in hosts})
    log = top.table_of("log")
    log_level = log.get("level", str, "info").lower()
    if log_level not in LOG_LEVELS:
        raise log.error("level", f"must be one of {', '.join(LOG_LEVELS)}")
    levels_reader = log.table_of("levels")
    levels = {}
    for logger_name in levels_reader.table:
        level = levels_reader.get(logger_name, str, "info").lower()
        if level not in LOG_LEVELS:
            raise levels_reader.error(logger_name, f"must be one of {', '.join(LOG_LEVELS)}")
        levels[logger_name] = level
    log.finish()
    storage = top.get("storage", str, "sqlite")
    if storage not in ("sqlite", "memory"):
        raise top.error("storage", "must be 'sqlite' or 'memory'")
    tls = top.table_of("tls")
    config = Config(
        path=path,
        data_dir=data_dir,
        hosts=tuple(hosts),
        c2s=c2s,
        c2s_direct_tls=direct,
        component=component_listen,
        components=components,
        storage=storage,
        database=_path(data_dir, top.get("database", str, "")),
        storage_fsync=top.get("storage_fsync", bool, False),
        require_encryption=top.get("c2s_require_encryption", bool, True),
        log_level=log_level,
        log_levels=levels,
        modules_enabled=top.strings("modules_enabled", None),
        modules=_module_tables(top),
        cert=_path(base, tls.get("cert", str, "")),
        key=_path(base, tls.get("key", str, "")),
        limits=_limits(top),
        auth=_auth(top),
    )
    tls.finish()
    top.finish()
    if bool(config.cert) != bool(config.key):
        raise ConfigError(f"{origin}: tls: cert and key must be given together")
    return config


def load(path: Path | None) -> Config:
    """Load `path`, or the embedded defaults when None (relative to the current directory)."""
    if path is None:
        return parse({}, base=Path.cwd(), origin="<defaults>", path=None)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse(data, base=path.resolve().parent, origin=str(path), path=path)
