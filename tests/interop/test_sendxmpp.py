"""go-sendxmpp (Debian package `go-sendxmpp`, a Go client on the go-xmpp library) against xmppd.

It connects with STARTTLS to the test server, whose certificate is self-signed for
``localhost``: Go reads extra trust anchors from SSL_CERT_FILE, so the certificate is verified
rather than skipped. One test sends a message to a slixmpp user, one listens for one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, TIMEOUT, ClientFactory
from xmppd.events import INITIAL_PRESENCE, Priority, SessionEvent
from xmppd.jid import JID
from xmppd.server import Server

GO_SENDXMPP = shutil.which("go-sendxmpp")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        GO_SENDXMPP is None,
        reason="go-sendxmpp is not installed (`./dev test` installs it with apt-get when root)",
    ),
]


def environment(server: Server, tmp_path: Path) -> dict[str, str]:
    """A clean HOME (no user config) and the server's certificate as the trust anchor."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    cert = server.config.data_dir / "certs" / "localhost.crt"
    assert cert.exists(), cert
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "SSL_CERT_FILE": str(cert),
    }


def base_args(server: Server, user: str) -> list[str]:
    assert GO_SENDXMPP is not None
    return [
        GO_SENDXMPP,
        "--username", f"{user}@localhost",
        "--password", PASSWORD,
        "--jserver", f"localhost:{server.ports['c2s'][0]}",
        "--timeout", "10",
    ]  # fmt: skip


async def test_go_sendxmpp_sends_to_a_slixmpp_user(
    connect: ClientFactory, server: Server, tmp_path: Path
) -> None:
    bob = await connect("bob@localhost/b")
    proc = await asyncio.create_subprocess_exec(
        *base_args(server, "alice"),
        "bob@localhost",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(server, tmp_path),
    )
    out, err = await asyncio.wait_for(proc.communicate(b"hello from go-sendxmpp\n"), TIMEOUT)
    assert proc.returncode == 0, (out, err)
    msg = await bob.next_message()
    assert msg["body"].strip() == "hello from go-sendxmpp"
    assert JID.parse(str(msg["from"])).bare == JID.parse("alice@localhost")


async def test_go_sendxmpp_listens_for_a_message(
    connect: ClientFactory, server: Server, tmp_path: Path
) -> None:
    online: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def came_online(event: SessionEvent) -> None:
        if event.session.username == "carol" and not online.done():
            online.set_result(None)

    server.hosts["localhost"].bus.add_notify(INITIAL_PRESENCE, came_online, Priority.NORMAL)
    proc = await asyncio.create_subprocess_exec(
        *base_args(server, "carol"),
        "--listen",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(server, tmp_path),
    )
    try:
        exited = asyncio.ensure_future(proc.wait())
        done, _ = await asyncio.wait(
            {online, exited}, timeout=TIMEOUT, return_when="FIRST_COMPLETED"
        )
        assert online in done, f"go-sendxmpp did not come online: {proc.returncode=}"
        alice = await connect("alice@localhost/a")
        alice.send_message(mto="carol@localhost", mbody="hello go-sendxmpp", mtype="chat")
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert b"hello go-sendxmpp" in line
        assert b"alice@localhost" in line
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
