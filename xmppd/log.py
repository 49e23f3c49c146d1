"""Logging setup: stderr, one line per record, a global level plus per-logger levels."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup(level: str = "info", levels: Mapping[str, str] | None = None) -> None:
    """(Re)configure logging; safe to call again on SIGHUP."""
    root = logging.getLogger()
    if not any(getattr(h, "_xmppd", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._xmppd = True  # type: ignore[attr-defined]  # marks our handler for reloads
        root.addHandler(handler)
    root.setLevel(level.upper())
    for name, lvl in (levels or {}).items():
        logging.getLogger(name).setLevel(lvl.upper())
