"""TOML configuration (xmppd/config.py): defaults, path resolution and error reporting."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from xmppd.config import AuthConfig, Config, ConfigError, Limits, load, parse

REPO = Path(__file__).resolve().parents[2]


def parse_dict(data: dict[str, Any], base: Path = Path("/srv/xmppd")) -> Config:
    return parse(data, base=base, origin="/srv/xmppd/xmppd.toml", path=None)


def config_error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_dict(data)
    message = str(info.value)
    assert message.startswith("/srv/xmppd/xmppd.toml: "), message
    return message


def write(tmp_path: Path, text: str, name: str = "xmppd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults -------------------------------------------------------------------------------------


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)

    config = load(None)

    assert config.path is None
    assert [h.domain for h in config.hosts] == ["localhost"]
    assert config.data_dir == tmp_path / "data"
    assert config.database_path == tmp_path / "data" / "xmppd.sqlite"
    assert config.certs_dir == tmp_path / "data" / "certs"
    assert config.admin_socket == tmp_path / "data" / "admin.sock"
    assert config.c2s == (("127.0.0.1", 5222),)
    assert config.c2s_direct_tls == (("127.0.0.1", 5223),)
    assert config.storage == "sqlite"
    assert config.storage_fsync is False
    assert config.require_encryption is True
    assert config.log_level == "info"
    assert config.modules_enabled is None
    assert config.modules == {}
    assert config.cert is None
    assert config.key is None
    assert config.limits == Limits()
    assert config.auth == AuthConfig()
    assert config.auth.scram_iterations == 4096


def test_shipped_example_config_matches_embedded_defaults():
    example = REPO / "conf" / "xmppd.toml"

    from_file = load(example)
    defaults = parse({}, base=example.parent, origin="<defaults>", path=None)

    assert from_file.path == example
    assert from_file.data_dir == example.parent / "data"
    for field in dataclasses.fields(Config):
        if field.name not in ("path", "modules"):
            assert getattr(from_file, field.name) == getattr(defaults, field.name), field.name


def test_empty_file_gives_defaults_relative_to_its_folder(tmp_path: Path):
    path = write(tmp_path, "")

    config = load(path)

    assert config.path == path
    assert config.data_dir == tmp_path / "data"
    assert [h.domain for h in config.hosts] == ["localhost"]


# --- paths ----------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    etc = tmp_path / "etc"
    etc.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        etc,
        """
        data_dir = "var/xmppd"
        database = "db/main.sqlite"
        hosts = ["example.org"]
        [tls]
        cert = "certs/all.crt"
        key = "certs/all.key"
        [host."example.org"]
        cert = "certs/example.crt"
        key = "/abs/example.key"
        """,
    )

    config = load(path)

    assert config.data_dir == etc / "var" / "xmppd"
    assert config.database_path == etc / "var" / "xmppd" / "db" / "main.sqlite"  # data_dir-relative
    assert config.cert == etc / "certs" / "all.crt"
    assert config.key == etc / "certs" / "all.key"
    host = config.host("example.org")
    assert host is not None
    assert host.cert == etc / "certs" / "example.crt"
    assert host.key == Path("/abs/example.key")


def test_relative_config_path_resolves_against_its_folder_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", 'data_dir = "state"')
    monkeypatch.chdir(tmp_path)

    config = load(Path("conf/xmppd.toml"))

    assert config.data_dir == tmp_path / "conf" / "state"


def test_absolute_data_dir_is_kept():
    config = parse_dict({"data_dir": "/var/lib/xmppd"})

    assert config.data_dir == Path("/var/lib/xmppd")


# --- values ---------------------------------------------------------------------------------------


def test_full_config_is_read(tmp_path: Path):
    path = write(
        tmp_path,
        """
        hosts = ["Example.ORG", "chat.example.net"]
        storage = "memory"
        storage_fsync = true
        c2s_require_encryption = false
        modules_enabled = ["disco", "ping"]
        [listen]
        c2s = [":5222", "[::1]:15222"]
        c2s_direct_tls = []
        [auth]
        allow_plain = false
        scram_iterations = 10000
        throttle_window = 30
        [limits]
        stanza_size = 65536
        auth_timeout = 5
        [log]
        level = "DEBUG"
        [log.levels]
        "xmppd.router" = "warning"
        [modules.version]
        show_os = true
        [host."chat.example.net"]
        modules_enabled = ["ping"]
        [host."chat.example.net".modules.ping]
        """,
    )

    config = load(path)

    assert [h.domain for h in config.hosts] == ["example.org", "chat.example.net"]
    assert config.storage == "memory"
    assert config.storage_fsync is True
    assert config.require_encryption is False
    assert config.modules_enabled == ("disco", "ping")
    assert config.c2s == (("0.0.0.0", 5222), ("::1", 15222))
    assert config.c2s_direct_tls == ()
    assert config.auth.allow_plain is False
    assert config.auth.scram_iterations == 10000
    assert config.auth.throttle_window == 30.0
    assert isinstance(config.auth.throttle_window, float)
    assert config.limits.stanza_size == 65536
    assert config.limits.auth_timeout == 5.0
    assert config.log_level == "debug"
    assert config.log_levels == {"xmppd.router": "warning"}
    assert config.modules == {"version": {"show_os": True}}
    chat = config.host("chat.example.net")
    assert chat is not None
    assert chat.modules_enabled == ("ping",)
    assert chat.modules == {"ping": {}}
    example = config.host("example.org")
    assert example is not None
    assert example.modules_enabled is None


# --- errors: each names the file, the key path and the reason -------------------------------------


@pytest.mark.parametrize(
    ("data", "key_path"),
    [
        ({"colour": "blue"}, "colour: unknown key"),
        ({"listen": {"c2s": [], "s2s": []}}, "listen.s2s: unknown key"),
        ({"log": {"lvl": "info"}}, "log.lvl: unknown key"),
        ({"auth": {"plain": True}}, "auth.plain: unknown key"),
        ({"limits": {"stanza_bytes": 1}}, "limits.stanza_bytes: unknown key"),
        ({"tls": {"certificate": "x"}}, "tls.certificate: unknown key"),
        (
            {"hosts": ["example.org"], "host": {"example.org": {"domain": "x"}}},
            'host."example.org".domain: unknown key',
        ),
    ],
)
def test_unknown_key_is_an_error(data: dict[str, Any], key_path: str):
    assert key_path in config_error(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"data_dir": 5}, "data_dir: expected str, got int"),
        ({"hosts": "localhost"}, "hosts: expected a list of strings"),
        ({"hosts": ["localhost", 1]}, "hosts: expected a list of strings"),
        ({"storage": 1}, "storage: expected str, got int"),
        ({"storage_fsync": "yes"}, "storage_fsync: expected bool, got str"),
        ({"c2s_require_encryption": "yes"}, "c2s_require_encryption: expected bool, got str"),
        ({"listen": ["127.0.0.1:5222"]}, "listen: expected a table"),
        ({"listen": {"c2s": "127.0.0.1:5222"}}, "listen.c2s: expected a list of strings"),
        ({"auth": {"allow_plain": 1}}, "auth.allow_plain: expected bool, got int"),
        ({"auth": {"scram_iterations": 4096.5}}, "auth.scram_iterations: expected int, got float"),
        ({"auth": {"throttle_window": "60"}}, "auth.throttle_window: expected float, got str"),
        ({"limits": {"stanza_size": True}}, "limits.stanza_size: expected int, got bool"),
        ({"limits": {"max_depth": 0}}, "limits.max_depth: must be positive"),
        ({"limits": {"auth_timeout": -1.0}}, "limits.auth_timeout: must be positive"),
        ({"modules": {"version": 1}}, "modules.version: expected a table"),
        ({"modules_enabled": "ping"}, "modules_enabled: expected a list of strings"),
        (
            {"hosts": ["example.org"], "host": {"example.org": {"modules_enabled": "ping"}}},
            'host."example.org".modules_enabled: expected a list of strings',
        ),
        ({"storage": "postgres"}, "storage: must be 'sqlite' or 'memory'"),
        ({"hosts": []}, "hosts: at least one host is required"),
        ({"hosts": ["not a domain"]}, "hosts: 'not a domain' is not a valid domain"),
    ],
)
def test_wrong_type_or_value_is_an_error(data: dict[str, Any], message: str):
    assert message in config_error(data)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:65536", "[::1]:-1"]
)
def test_bad_listen_address_is_an_error(address: str):
    message = config_error({"listen": {"c2s_direct_tls": [address]}})

    assert f"listen.c2s_direct_tls: {address!r} is not 'address:port'" in message


def test_bad_log_level_is_an_error():
    assert "log.level: must be one of debug, info" in config_error({"log": {"level": "loud"}})


def test_bad_per_logger_level_is_an_error():
    message = config_error({"log": {"levels": {"xmppd.router": "verbose"}}})

    assert "log.levels.xmppd.router: must be one of" in message


def test_too_few_scram_iterations_is_an_error():
    message = config_error({"auth": {"scram_iterations": 4095}})

    assert "auth.scram_iterations: must be at least 4096" in message


def test_minimum_scram_iterations_is_accepted():
    assert parse_dict({"auth": {"scram_iterations": 4096}}).auth.scram_iterations == 4096


def test_host_table_for_unlisted_host_is_an_error():
    message = config_error({"hosts": ["example.org"], "host": {"example.net": {}}})

    assert "host.\"example.net\": not listed in 'hosts'" in message


@pytest.mark.parametrize("given", ["cert", "key"])
def test_tls_cert_without_key_is_an_error(given: str):
    message = config_error({"tls": {given: "/etc/xmppd/x.pem"}})

    assert "tls: cert and key must be given together" in message


@pytest.mark.parametrize("given", ["cert", "key"])
def test_host_cert_without_key_is_an_error(given: str):
    message = config_error({"hosts": ["example.org"], "host": {"example.org": {given: "/x.pem"}}})

    assert 'host."example.org".' in message
    assert "cert and key" in message


def test_duplicate_host_is_an_error():
    message = config_error({"hosts": ["example.org", "EXAMPLE.org"]})

    assert "hosts: 'EXAMPLE.org'" in message


def test_missing_file_is_an_error(tmp_path: Path):
    path = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match="no such config file") as info:
        load(path)

    assert str(path) in str(info.value)


def test_invalid_toml_is_an_error(tmp_path: Path):
    path = write(tmp_path, 'hosts = ["localhost"\n')

    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load(path)

    assert str(info.value).startswith(f"{path}: ")


def test_error_in_file_names_the_file(tmp_path: Path):
    path = write(tmp_path, "[auth]\nscram_iterations = 100\n")

    with pytest.raises(ConfigError) as info:
        load(path)

    assert str(info.value).startswith(f"{path}: auth.scram_iterations: ")


# --- XEP-0114 components --------------------------------------------------------------------------


def test_component_listener_and_secrets() -> None:
    config = parse_dict(
        {
            "listen": {"component": ["127.0.0.1:5347"]},
            "component": {"Push.Localhost": {"secret": "abc"}},
        }
    )

    assert config.component == (("127.0.0.1", 5347),)
    assert list(config.components) == ["push.localhost"]
    assert config.components["push.localhost"].secret == "abc"
    assert "abc" not in repr(config.components["push.localhost"])


def test_no_component_listener_by_default() -> None:
    config = parse_dict({})

    assert config.component == ()
    assert config.components == {}


def test_component_without_secret_is_refused() -> None:
    message = config_error({"component": {"push.localhost": {}}})

    assert 'component."push.localhost".secret: a non-empty shared secret is required' in message


def test_component_with_empty_secret_is_refused() -> None:
    message = config_error({"component": {"push.localhost": {"secret": ""}}})

    assert 'component."push.localhost".secret' in message


def test_component_secret_must_be_a_string() -> None:
    message = config_error({"component": {"push.localhost": {"secret": 42}}})

    assert 'component."push.localhost".secret: expected str, got int' in message


def test_component_on_a_local_host_is_refused() -> None:
    message = config_error({"component": {"localhost": {"secret": "x"}}})

    assert "component.\"localhost\": a component cannot take a domain listed in 'hosts'" in message


def test_component_with_invalid_domain_is_refused() -> None:
    message = config_error({"component": {"bad domain!": {"secret": "x"}}})

    assert 'component."bad domain!": ' in message
    assert "not a valid domain" in message


def test_component_unknown_key_is_refused() -> None:
    message = config_error({"component": {"push.localhost": {"secret": "x", "port": 1}}})

    assert 'component."push.localhost".port: unknown key' in message


def test_component_listener_address_is_checked() -> None:
    message = config_error({"listen": {"component": ["localhost"]}})

    assert "listen.component: 'localhost' is not 'address:port'" in message
