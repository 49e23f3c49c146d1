"""The admin socket: a Unix socket in data_dir (mode 0600) through which the CLI acts on a
running server. One JSON object per line each way: {"cmd": ..., ...} → {"ok": bool, ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Command = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 1 << 20  # bytes in one request line (an announcement's text fits with room)
# `announce`: characters of the text and of the subject (JSON escapes take up to 12 bytes each).
ANNOUNCE_MAX_BODY = 10_000
ANNOUNCE_MAX_SUBJECT = 1_000


class AdminServer:
    """Serves admin commands on a Unix socket."""

    def __init__(self, path: Path, commands: dict[str, Command]) -> None:
        self.path = path
        self.commands = commands
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket (owner-only permissions), replacing a stale one."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        """Close the socket and remove its file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await _read_line(reader)
                except RequestTooLargeError:
                    writer.write(b'{"ok": false, "error": "request too large"}\n')
                    await writer.drain()
                    continue
                if line is None:
                    return
                try:
                    request = json.loads(line)
                    command = self.commands.get(str(request.get("cmd")))
                    if command is None:
                        reply: dict[str, Any] = {"ok": False, "error": "unknown command"}
                    else:
                        reply = await command(request)
                except (ValueError, AttributeError) as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                except Exception as exc:
                    logger.exception("admin command failed")
                    reply = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()


class RequestTooLargeError(Exception):
    """A request line over MAX_REQUEST (skipped whole)."""


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next request line (None at end of input).

    Raises:
        RequestTooLargeError: the line was over the reader's limit; it was skipped whole, so the
            next call reads the next request from its start.
    """
    too_large = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # end of input
            if too_large or not exc.partial:
                return None
            return exc.partial
        except asyncio.LimitOverrunError as exc:  # what is buffered stays: drop it and go on
            too_large = True
            await reader.readexactly(exc.consumed)
            continue
        if too_large:
            raise RequestTooLargeError
        return line


async def call(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any] | None:
    """Send one command to a running server; None when no server listens there."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        result: dict[str, Any] = json.loads(line) if line else {"ok": False, "error": "no reply"}
        return result
    finally:
        writer.close()
