"""XEP-0198 §4: the stream management counters and the queue of unacknowledged stanzas (sans-I/O).

Theory of operation. One `SmState` per session that enabled stream management:

- inbound: `received` counts the client's stanzas the server has routed; the `h` reported in
  <a/>, <resumed/> and <failed/> is that count (once the storage writes of those stanzas are
  committed, which the module waits for);
- outbound: `sent` counts stanzas written to (or kept for) the client; `unacked` holds those
  the client has not acknowledged, oldest first, as the bytes written (a replay writes them
  again; holding bytes rather than lxml trees keeps the queue small and lets each tree be
  freed as soon as it is sent); `ack(h)` drops the first ``h - acked`` of them.

Every counter is an unsigned 32-bit value that wraps (§4: "h ... MUST be reset to zero when it
reaches 2^32"), so differences are taken modulo 2^32.
"""

from __future__ import annotations

from collections import deque

MOD = 2**32


class HandledCountTooHighError(Exception):
    """The client acknowledged more stanzas than were sent (XEP-0198 §4 error)."""

    def __init__(self, h: int, sent: int) -> None:
        super().__init__(f"client acknowledged {h}, only {sent} sent")
        self.h = h
        self.sent = sent


class SmState:
    """Counters and unacked queue of one session."""

    __slots__ = (
        "acked",
        "answered",
        "ending",
        "expires",
        "id",
        "received",
        "requested",
        "resumable",
        "sent",
        "timer",
        "unacked",
    )

    def __init__(self, id_: str, *, resumable: bool) -> None:
        self.id = id_
        self.resumable = resumable
        self.received = 0  # client stanzas routed (mod 2^32)
        self.sent = 0  # stanzas sent to the client (mod 2^32)
        self.acked = 0  # stanzas the client acknowledged (mod 2^32)
        self.answered = 0  # the last h this side sent in <a/> (never goes backwards)
        self.unacked: deque[bytes] = deque()
        self.requested = False  # an <r/> is outstanding
        self.timer: object | None = None  # the module's timer handle (ack request or hibernation)
        self.expires = 0.0  # seconds a hibernated session waits for its resumption
        self.ending = False  # the session is being ended (too many unacknowledged)

    def handled(self) -> None:
        """One more client stanza was routed."""
        self.received = (self.received + 1) % MOD

    def push(self, data: bytes) -> None:
        """A stanza goes to the client: count it and keep it until acknowledged."""
        self.unacked.append(data)
        self.sent = (self.sent + 1) % MOD

    def ack(self, h: int) -> int:
        """The client handled `h` stanzas in all: drop the newly acknowledged ones; return
        how many they were.

        Raises:
            HandledCountTooHighError: `h` acknowledges stanzas never sent.
        """
        newly = (h - self.acked) % MOD
        unacked = self.unacked
        if newly > len(unacked):
            raise HandledCountTooHighError(h, self.sent)
        self.acked = h % MOD
        for _ in range(newly):
            unacked.popleft()
        return newly

    def take_unacked(self) -> list[bytes]:
        """Empty the queue (the session ends): what the client never acknowledged."""
        out = list(self.unacked)
        self.unacked.clear()
        return out


def parse_h(value: str | None) -> int | None:
    """An `h` attribute: an unsigned 32-bit integer (xs:unsignedInt), else None."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 10:
        return None
    h = int(value)
    return h if h < MOD else None
