"""ServerProcess: `xmppd --config X serve` as a subprocess on a SQLite data dir, for crash tests.

The process can be SIGKILLed and started again on the same data dir and the same ports. Its
stderr (the log) is drained continuously (a full pipe would block the server) and kept in
`log` for failure messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

XMPPD = [sys.executable, "-m", "xmppd"]
PASSWORD = "correct horse battery staple"
START_TIMEOUT = 30.0


def free_port() -> int:
    """An ephemeral TCP port free right now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One data dir and config; start(), kill() (SIGKILL), stop() (SIGTERM), restart()."""

    def __init__(
        self,
        root: Path,
        *,
        users: Iterable[str] = ("alice", "bob", "carol"),
        password: str = PASSWORD,
        extra_toml: str = "",
        log_level: str = "info",
    ) -> None:
        self.root = root
        self.users = tuple(users)
        self.password = password
        self.c2s_port = free_port()
        self.direct_tls_port = free_port()
        self.config = root / "xmppd.toml"
        self.config.write_text(
            'data_dir = "data"\nhosts = ["localhost"]\nstorage = "sqlite"\n'
            f'[listen]\nc2s = ["127.0.0.1:{self.c2s_port}"]\n'
            f'c2s_direct_tls = ["127.0.0.1:{self.direct_tls_port}"]\n'
            f'[log]\nlevel = "{log_level}"\n' + extra_toml
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self.starts = 0
        self._drain: asyncio.Task[None] | None = None

    async def cli(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        """Run another xmppd verb on the same config; (returncode, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            *XMPPD,
            "--config",
            str(self.config),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.root,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def create_accounts(self) -> None:
        """Create `users` (user@localhost, `password`) with one `adduser --batch`."""
        if not self.users:
            return
        lines = "".join(f"{u}@localhost {self.password}\n" for u in self.users)
        code, out, err = await self.cli("adduser", "--batch", stdin=lines)
        assert code == 0, out + err

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int:
        """The process id of the running server."""
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start `xmppd serve`; return once it logged "serving" (its ports are listening)."""
        assert not self.running, "already running"
        self.starts += 1
        self.log.append(f"--- start #{self.starts} ---")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("XMPPD_CONFIG", None)
        self.proc = await asyncio.create_subprocess_exec(
            *XMPPD,
            "--config",
            str(self.config),
            "serve",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.root,
            env=env,
        )
        serving: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain = asyncio.get_running_loop().create_task(self._read_log(self.proc, serving))
        try:
            await asyncio.wait_for(asyncio.shield(serving), timeout)
        except BaseException:
            await self.kill()
            raise

    async def _read_log(
        self, proc: asyncio.subprocess.Process, serving: asyncio.Future[None]
    ) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.log.append(text)
            if not serving.done() and " serving " in f"{text} ":
                serving.set_result(None)
        if not serving.done():
            serving.set_exception(
                RuntimeError("xmppd exited before serving:\n" + "\n".join(self.log[-30:]))
            )

    async def kill(self) -> None:
        """SIGKILL the server (no shutdown of any kind) and reap it."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        await self._reap()

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a clean shutdown); returns the exit status."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
        await self._reap()
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def restart(self) -> None:
        """SIGKILL if running, then start again on the same data dir and ports."""
        await self.kill()
        await self.start()

    async def _reap(self) -> None:
        assert self.proc is not None
        await self.proc.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 5)
            self._drain = None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server log, for assertion messages."""
        return "\n".join(self.log[-lines:])
