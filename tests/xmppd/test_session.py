"""Session lifecycle hooks for stream management: SESSION_LOST keeps a session detached,
re-attaching resumes delivery, ModuleContext.end_session ends it for good."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.harness import FakeConnection, ModuleHarness
from xmppd import events as ev
from xmppd.module_api import Module, hook
from xmppd.session import Session


class Keeper(Module):
    """Keeps every lost session (as XEP-0198 hibernation will) and records ends."""

    name = "keeper"

    def __init__(self, ctx):  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.kept: list[Session] = []
        self.ended: list[str] = []

    @hook(ev.SESSION_LOST)
    async def keep(self, event: ev.SessionEvent) -> bool:
        self.kept.append(event.session)
        return True

    @hook(ev.SESSION_ENDED)
    async def record(self, event: ev.SessionEnded) -> None:
        self.ended.append(event.reason)


async def test_lost_session_ends_when_no_module_keeps_it(tmp_path: Path) -> None:
    async with ModuleHarness.started(tmp_path, accounts=("alice", "bob")) as h:
        bob = await h.connect("bob@localhost/b", priority=0)
        bob.conn = None
        await h.server.connection_lost(bob, "gone", resumable=True)
        assert h.server.sessions.get(bob.full_jid) is None


async def test_session_closed_on_purpose_ends_without_asking_modules(tmp_path: Path) -> None:
    async with ModuleHarness.started(tmp_path, accounts=("alice", "bob")) as h:
        keeper = await h.load(Keeper)
        assert isinstance(keeper, Keeper)
        bob = await h.connect("bob@localhost/b", priority=0)
        bob.conn = None
        await h.server.connection_lost(bob, "closed by the client", resumable=False)
        assert keeper.kept == []
        assert keeper.ended == ["closed by the client"]
        assert h.server.sessions.get(bob.full_jid) is None


async def test_kept_session_stays_bound_detached_and_resumes_on_attach(tmp_path: Path) -> None:
    async with ModuleHarness.started(tmp_path, accounts=("alice", "bob")) as h:
        keeper = await h.load(Keeper)
        assert isinstance(keeper, Keeper)
        alice = await h.connect("alice@localhost/a", priority=0)
        bob = await h.connect("bob@localhost/b", priority=0)
        bob.conn = None
        await h.server.connection_lost(bob, "network dropped", resumable=True)
        assert keeper.kept == [bob]
        assert bob.detached
        assert h.server.sessions.get(bob.full_jid) is bob  # still bound: its JID is reserved
        await h.send(alice, "<message to='bob@localhost/b' type='chat'><body>1</body></message>")
        fresh = FakeConnection()
        bob.attach(fresh)
        assert not bob.detached
        await h.send(alice, "<message to='bob@localhost/b' type='chat'><body>2</body></message>")
        assert [m.findtext("{jabber:client}body") for m in fresh.take()] == ["2"]
        await keeper.ctx.end_session(bob, "hibernation timed out")
        assert h.server.sessions.get(bob.full_jid) is None
        assert keeper.ended == ["hibernation timed out"]
        assert fresh.closed
