"""`xmppd announce`: the CLI, through the admin socket, sends a headline from the host to every
available session; real slixmpp clients on a real server, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import Client, ClientFactory
from tests.helpers.harness import ModuleHarness
from xmppd import admin
from xmppd.server import Server

pytestmark = pytest.mark.interop

XMPPD = [sys.executable, "-m", "xmppd"]


def cli_config(data_dir: Path) -> Path:
    """A config for the CLI naming the data dir (hence the admin socket) of `data_dir`."""
    path = data_dir.parent / "cli.toml"
    path.write_text(f'data_dir = "{data_dir}"\nhosts = ["localhost"]\n')
    return path


async def announce(config: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run `xmppd announce ARGS` (the server keeps serving in this loop meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        *XMPPD,
        "--config",
        str(config),
        "announce",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def first_message_is(client: Client, body: str) -> None:
    """The next message `client` gets has `body` (so nothing was queued before it)."""
    msg = await client.next_message()
    assert msg["body"] == body, f"expected {body!r}, got {msg['type']} {msg['body']!r}"


async def test_online_users_get_the_announcement_offline_users_do_not(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice@localhost/desk")
    bob = await connect("bob@localhost/phone")
    # Bound but never available (no initial presence): not an online user yet.
    quiet = await connect("alice@localhost/quiet", presence=False)
    config = cli_config(server.config.data_dir)

    code, out, err = await announce(
        config, "--subject", "Maintenance", "The server restarts at noon."
    )

    assert code == 0, err
    assert "announced to 2 session(s) on localhost" in out
    for client, jid in ((alice, "alice@localhost/desk"), (bob, "bob@localhost/phone")):
        msg = await client.next_message()
        assert msg["type"] == "headline"
        assert str(msg["from"]) == "localhost"
        assert str(msg["to"]) == jid
        assert msg["subject"] == "Maintenance"
        assert msg["body"] == "The server restarts at noon."
    # carol was offline: she finds no stored copy when she comes online; nor does the session
    # that was not available. A message sent afterwards is the first either of them gets.
    carol = await connect("carol@localhost/late")
    bob.send_message(mto="carol@localhost/late", mbody="marker", mtype="chat")
    bob.send_message(mto="alice@localhost/quiet", mbody="marker", mtype="chat")
    await first_message_is(carol, "marker")
    await first_message_is(quiet, "marker")


async def test_text_from_stdin_and_host_is_prepared(server: Server, connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/desk")

    code, out, err = await announce(
        cli_config(server.config.data_dir), "--host", "LocalHost", stdin="line one\nline two\n"
    )

    assert code == 0, err
    assert "announced to 1 session(s) on localhost" in out
    msg = await alice.next_message()
    assert msg["type"] == "headline"
    assert msg["body"] == "line one\nline two"
    assert msg.xml.find("{jabber:client}subject") is None  # none given


@pytest.mark.parametrize("host", ["otherhost", "alice@localhost", "localhost/res", "a@@b"])
async def test_bad_host_is_refused_and_nothing_is_sent(
    server: Server, connect: ClientFactory, host: str
) -> None:
    alice = await connect("alice@localhost/desk")

    code, out, err = await announce(cli_config(server.config.data_dir), "--host", host, "hello")

    assert code == 1
    assert out == ""
    assert err == f"xmppd: {host} is not a host of this server\n"
    bob = await connect("bob@localhost/b")
    bob.send_message(mto="alice@localhost/desk", mbody="marker", mtype="chat")
    await first_message_is(alice, "marker")


@pytest.mark.parametrize("stdin", ["", "\n", "  \n\n"])
async def test_empty_text_is_refused(server: Server, stdin: str) -> None:
    code, _, err = await announce(cli_config(server.config.data_dir), stdin=stdin)
    assert code == 1
    assert "text is empty" in err


async def test_no_server_running_is_a_clear_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = cli_config(data_dir)
    code, out, err = await announce(config, "hello")
    assert (code, out) == (1, "")
    assert err == "xmppd: no server is running on this data_dir\n"
    # A socket left behind by a server that died: the same answer, not a traceback.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(data_dir / "admin.sock"))
    stale.close()
    code, out, err = await announce(config, "hello")
    assert (code, out) == (1, "")
    assert err == "xmppd: no server is running on this data_dir\n"


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({}, "text is missing or empty"),
        ({"body": 42}, "text is missing or empty"),
        ({"body": ["x"]}, "text is missing or empty"),
        ({"body": " \n\t"}, "text is missing or empty"),
        ({"body": "hi", "subject": 7}, "subject must be text"),
        ({"body": "bell\x07"}, "text has characters XML cannot carry"),
        ({"body": "nul\x00"}, "text has characters XML cannot carry"),
        ({"body": "hi", "subject": "\ufffe"}, "subject has characters XML cannot carry"),
        ({"body": "x" * (admin.ANNOUNCE_MAX_BODY + 1)}, "text is longer than"),
        ({"body": "hi", "subject": "s" * 1001}, "subject is longer than"),
        ({"body": "hi", "host": ""}, "is not a host of this server"),
        ({"body": "hi", "host": ["localhost"]}, "is not a host of this server"),
        ({"body": "hi", "host": "conference.localhost"}, "is not a host of this server"),
    ],
)
async def test_hostile_admin_requests_are_refused(
    server: Server, connect: ClientFactory, request_: dict[str, object], error: str
) -> None:
    alice = await connect("alice@localhost/desk")

    reply = await admin.call(server.config.admin_socket, {"cmd": "announce", **request_})

    assert reply is not None
    assert reply["ok"] is False
    assert error in reply["error"]
    bob = await connect("bob@localhost/b")
    bob.send_message(mto="alice@localhost/desk", mbody="marker", mtype="chat")
    await first_message_is(alice, "marker")


async def test_request_over_the_admin_line_limit_is_answered(server: Server) -> None:
    huge = {"cmd": "announce", "body": "x" * admin.MAX_REQUEST}
    reply = await admin.call(server.config.admin_socket, huge)
    assert reply == {"ok": False, "error": "request too large"}
    # The admin socket still serves the next request.
    reply = await admin.call(server.config.admin_socket, {"cmd": "announce", "body": "hi"})
    assert reply == {"ok": True, "sent": 0, "hosts": ["localhost"]}


async def test_over_long_line_is_skipped_whole_on_a_kept_connection(server: Server) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server.config.admin_socket))
    try:
        # Sent in one go, so that the over-long line and the next request share a buffer.
        writer.write(b"x" * (admin.MAX_REQUEST + 10) + b"\n" + b'{"cmd": "status"}\n')
        await writer.drain()
        first = await asyncio.wait_for(reader.readline(), 10)
        second = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    assert json.loads(first) == {"ok": False, "error": "request too large"}
    assert json.loads(second)["ok"] is True


async def test_largest_unicode_announcement_arrives_whole(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice@localhost/desk")
    text = "🎉" * admin.ANNOUNCE_MAX_BODY  # 12 bytes each in the JSON request line
    reply = await admin.call(server.config.admin_socket, {"cmd": "announce", "body": text})
    assert reply == {"ok": True, "sent": 1, "hosts": ["localhost"]}
    msg = await alice.next_message()
    assert msg["body"] == text


async def test_without_host_every_host_announces_to_its_own_users(tmp_path: Path) -> None:
    """Two hosts (fake sessions: no certificates for a second domain are needed)."""
    async with ModuleHarness.started(tmp_path, hosts=("localhost", "example.test")) as h:
        local = await h.connect("alice@localhost/a", priority=0)
        negative = await h.connect("bob@localhost/b", priority=-1)  # available all the same
        other = await h.connect("carol@example.test/c", priority=0)
        sock = h.server.config.admin_socket

        reply = await admin.call(sock, {"cmd": "announce", "body": "all", "subject": " S "})

        assert reply == {"ok": True, "sent": 3, "hosts": ["example.test", "localhost"]}
        for session, host in (
            (local, "localhost"),
            (negative, "localhost"),
            (other, "example.test"),
        ):
            msg = h.take_one(session)
            assert msg.get("type") == "headline"
            assert msg.get("from") == host
            assert msg.get("to") == str(session.jid)
            assert msg.findtext("{jabber:client}subject") == "S"
            assert msg.findtext("{jabber:client}body") == "all"

        reply = await admin.call(sock, {"cmd": "announce", "body": "one", "host": "example.test"})

        assert reply == {"ok": True, "sent": 1, "hosts": ["example.test"]}
        assert h.take(local) == []
        assert h.take(negative) == []
        assert h.take_one(other).findtext("{jabber:client}body") == "one"
