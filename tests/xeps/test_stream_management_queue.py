"""XEP-0198 §4 counters and queue, without sockets: wrap-around, acks, too-high acks."""

from __future__ import annotations

import pytest

from xeps.stream_management.queue import MOD, HandledCountTooHighError, SmState, parse_h


def _msg(i: int) -> bytes:
    return b"<message id='%d'/>" % i


def test_ack_drops_exactly_the_acknowledged_stanzas() -> None:
    sm = SmState("id", resumable=True)
    for i in range(5):
        sm.push(_msg(i))
    assert sm.ack(2) == 2
    assert list(sm.unacked) == [_msg(2), _msg(3), _msg(4)]
    assert sm.ack(2) == 0  # a repeated ack changes nothing
    assert sm.ack(5) == 3
    assert not sm.unacked


def test_counters_wrap_at_two_to_the_32() -> None:
    sm = SmState("id", resumable=True)
    sm.sent = sm.acked = MOD - 2
    for i in range(4):
        sm.push(_msg(i))
    assert sm.sent == 2
    assert sm.ack(MOD - 1) == 1
    assert sm.ack(1) == 2
    assert list(sm.unacked) == [_msg(3)]
    assert sm.acked == 1
    sm.received = MOD - 1
    sm.handled()
    assert sm.received == 0


def test_ack_beyond_what_was_sent_raises() -> None:
    sm = SmState("id", resumable=True)
    sm.push(_msg(0))
    with pytest.raises(HandledCountTooHighError) as info:
        sm.ack(2)
    assert (info.value.h, info.value.sent) == (2, 1)
    assert len(sm.unacked) == 1  # nothing was dropped


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("4294967295", MOD - 1),
        ("4294967296", None),
        ("-1", None),
        ("1e3", None),
        ("", None),
        (None, None),
        ("٣", None),
        (" 1", None),
        ("99999999999", None),
    ],
)
def test_parse_h_accepts_unsigned_32_bit_only(text: str | None, value: int | None) -> None:
    assert parse_h(text) == value
