"""Every CLI verb end to end, as users run it: `xmppd` subprocesses on a real data dir."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.wire import RawClient

pytestmark = pytest.mark.interop

XMPPD = [sys.executable, "-m", "xmppd"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, **extra: str) -> Path:
    c2s, direct = free_port(), free_port()
    text = (
        'data_dir = "data"\nhosts = ["localhost"]\n'
        f'[listen]\nc2s = ["127.0.0.1:{c2s}"]\nc2s_direct_tls = ["127.0.0.1:{direct}"]\n'
    )
    text += "".join(f"{k} = {v}\n" for k, v in extra.items())
    path = tmp_path / "xmppd.toml"
    path.write_text(text)
    return path


def run(
    config: Path | None, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [*XMPPD, *(["--config", str(config)] if config else []), *args]
    return subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=config.parent if config else None,
    )


def test_adduser_users_passwd_deluser(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run(config, "adduser", "alice@localhost", stdin="secret1\n").returncode == 0
    again = run(config, "adduser", "alice@localhost", stdin="secret1\n")
    assert again.returncode == 1
    assert "exists" in again.stderr
    assert run(config, "users").stdout.split() == ["alice@localhost"]
    assert run(config, "passwd", "alice@localhost", stdin="secret2\n").returncode == 0
    assert run(config, "passwd", "nobody@localhost", stdin="x\n").returncode == 1
    assert run(config, "deluser", "alice@localhost").returncode == 0
    assert run(config, "users").stdout.split() == []
    assert run(config, "deluser", "alice@localhost").returncode == 1


@pytest.mark.parametrize(
    "jid", ["not a jid@@", "alice@otherhost", "localhost", "alice@localhost/res"]
)
def test_adduser_refuses_bad_jids(tmp_path: Path, jid: str) -> None:
    result = run(write_config(tmp_path), "adduser", jid, stdin="pw\n")
    assert result.returncode == 1
    assert result.stderr.startswith("xmppd:")


def test_adduser_refuses_empty_password(tmp_path: Path) -> None:
    result = run(write_config(tmp_path), "adduser", "bob@localhost", stdin="\n")
    assert result.returncode == 1
    assert "empty" in result.stderr


def test_batch_adduser_reports_each_failure(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    lines = [f"user{i}@localhost pw{i}" for i in range(300)]
    lines += ["bad@@jid pw", "nopassword@localhost", "user0@localhost again"]
    result = run(config, "adduser", "--batch", stdin="\n".join(lines) + "\n")
    assert result.returncode == 1
    assert "created 300 account(s), 3 failure(s)" in result.stdout
    assert result.stderr.count("line ") == 3
    assert len(run(config, "users", "localhost").stdout.split()) == 300


def test_check_accepts_a_good_config_and_reports_a_broken_one(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    ok = run(config, "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = write_config(tmp_path, unknown_option='"x"')
    bad = run(broken, "check")
    assert bad.returncode == 2
    assert "unknown_option" in bad.stderr
    assert str(broken) in bad.stderr
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('hosts = "localhost"\n')
    result = run(wrong_type, "check")
    assert result.returncode == 2
    assert "hosts" in result.stderr
    bad_module = tmp_path / "mod.toml"
    bad_module.write_text('modules_enabled = ["ping", "no_such_module"]\n')
    assert run(bad_module, "check").returncode == 1


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    result = run(None, "--config", str(tmp_path / "nope.toml"), "users")
    assert result.returncode == 2
    assert "no such config file" in result.stderr


def test_cert_generate_writes_a_private_key(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run(config, "cert", "generate", "localhost")
    assert result.returncode == 0, result.stderr
    key = tmp_path / "data" / "certs" / "localhost.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert run(config, "check").returncode == 0


def test_modules_lists_contracts(tmp_path: Path) -> None:
    out = run(write_config(tmp_path), "modules").stdout
    assert "ping: XEP-0199" in out
    assert "XEP-0030" in out


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[tuple[Path, asyncio.subprocess.Process]]:
    config = write_config(tmp_path)
    assert run(config, "adduser", "alice@localhost", stdin="pw\n").returncode == 0
    proc = await asyncio.create_subprocess_exec(
        *XMPPD, "--config", str(config), "serve", stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert line, "server exited early"
        if "serving" in line:
            break
    yield config, proc
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def _c2s_port(config: Path) -> int:
    text = config.read_text()
    return int(text.split('c2s = ["127.0.0.1:')[1].split('"')[0])


async def test_serve_deluser_ends_sessions_and_sigterm_shuts_down(
    serve: tuple[Path, asyncio.subprocess.Process],
) -> None:
    config, proc = serve
    port = _c2s_port(config)
    raw = await RawClient.connect(port)
    await raw.login("alice", "pw")
    # adding an account while serving works and is seen at once (no cached absence)
    result = await asyncio.to_thread(run, config, "adduser", "late@localhost", stdin="pw2\n")
    assert result.returncode == 0
    late = await RawClient.connect(port)
    await late.login("late", "pw2")
    # SIGHUP reloads certificates and log levels; sessions are kept.
    proc.send_signal(signal.SIGHUP)
    await raw.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert (await raw.expect("{jabber:client}iq")).get("type") == "result"
    # a password changed by the CLI takes effect at once despite the login credentials cache
    result = await asyncio.to_thread(run, config, "passwd", "late@localhost", stdin="pw3\n")
    assert result.returncode == 0
    stale = await RawClient.connect(port)
    with pytest.raises(AssertionError, match="failure"):
        await stale.login("late", "pw2")
    await stale.close()
    fresh = await RawClient.connect(port)
    await fresh.login("late", "pw3", resource="fresh")
    await fresh.close()
    status = await asyncio.to_thread(run, config, "status")
    assert "sessions: 2" in status.stdout
    assert "output_buffered_bytes: " in status.stdout
    assert "rss_kib: " in status.stdout
    result = await asyncio.to_thread(run, config, "deluser", "alice@localhost")
    assert result.returncode == 0
    assert "ended 1 session" in result.stdout
    assert await raw.stream_error() == "not-authorized"
    proc.send_signal(signal.SIGTERM)
    assert await late.stream_error() == "system-shutdown"
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert not (config.parent / "data" / "admin.sock").exists()


def test_cert_import_lets_encrypt_layout(tmp_path: Path) -> None:
    from xmppd.certs import generate_self_signed

    live = tmp_path / "letsencrypt" / "live"
    generate_self_signed(
        ["localhost"], live / "localhost" / "fullchain.pem", live / "localhost" / "privkey.pem"
    )
    config = write_config(tmp_path)
    result = run(config, "cert", "import", str(live))
    assert result.returncode == 0, result.stderr
    assert "imported localhost" in result.stdout
    key = tmp_path / "data" / "certs" / "localhost.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert run(config, "check").returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(config, "cert", "import", str(empty)).returncode == 1
