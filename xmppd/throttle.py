"""Failed-authentication throttling per IP address and per account (sans-I/O, injectable clock).

Below `failures` failures within `window` seconds nothing is delayed, so a correct password is
never refused for throttling; above it every attempt on that IP or account waits an
exponentially growing delay (capped) before it is evaluated. The answer to a failure is always
``<not-authorized/>``, whether the account exists or not (no enumeration).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class AuthThrottle:
    """Sliding-window failure counters keyed by "ip:<addr>" and "user:<jid>"."""

    def __init__(
        self,
        failures: int = 5,
        window: float = 60.0,
        max_delay: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.failures = failures
        self.window = window
        self.max_delay = max_delay
        self.clock = clock
        self.max_keys = max_keys
        self._log: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> int:
        entries = self._log.get(key)
        if not entries:
            return 0
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        if not entries:
            del self._log[key]
            return 0
        return len(entries)

    def delay(self, ip: str, account: str | None) -> float:
        """Seconds to wait before evaluating an attempt from `ip` for `account`."""
        now = self.clock()
        count = max(
            self._recent(f"ip:{ip}", now), self._recent(f"user:{account}", now) if account else 0
        )
        if count < self.failures:
            return 0.0
        return float(min(self.max_delay, 0.5 * 2.0 ** (count - self.failures)))

    def failed(self, ip: str, account: str | None) -> None:
        """Record a failed attempt."""
        now = self.clock()
        if len(self._log) >= self.max_keys:
            # Bounded memory under a spray of addresses: drop the oldest keys.
            for key in list(self._log)[: max(1, self.max_keys // 10)]:
                del self._log[key]
        keys = [f"ip:{ip}"] + ([f"user:{account}"] if account else [])
        for key in keys:
            self._log.setdefault(key, deque()).append(now)
