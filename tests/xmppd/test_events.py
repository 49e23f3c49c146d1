"""The typed event bus (xmppd/events.py): priority order, chain and notify semantics, removal."""

from __future__ import annotations

import logging

import pytest

from xmppd.events import ChainKey, EventBus, NotifyKey, Priority

CHAIN: ChainKey[str] = ChainKey("test/chain")
OTHER_CHAIN: ChainKey[str] = ChainKey("test/other")
NOTIFY: NotifyKey[str] = NotifyKey("test/notify")


def fresh() -> tuple[EventBus, list[str]]:
    """A new bus and a list for handlers to record their calls in."""
    return EventBus(), []


def chain_handler(calls: list[str], name: str, result: bool = False):
    async def handler(payload: str) -> bool:
        calls.append(f"{name}:{payload}")
        return result

    handler.__name__ = name
    return handler


def notify_handler(calls: list[str], name: str):
    async def handler(payload: str) -> None:
        calls.append(f"{name}:{payload}")

    handler.__name__ = name
    return handler


def test_priority_names_are_ordered():
    assert Priority.FIRST > Priority.HIGH > Priority.NORMAL > Priority.LOW > Priority.DEFAULT


async def test_chain_runs_higher_priority_first():
    bus, calls = fresh()
    bus.add_chain(CHAIN, chain_handler(calls, "default"), Priority.DEFAULT)
    bus.add_chain(CHAIN, chain_handler(calls, "first"), Priority.FIRST)
    bus.add_chain(CHAIN, chain_handler(calls, "low"), Priority.LOW)
    bus.add_chain(CHAIN, chain_handler(calls, "high"), Priority.HIGH)
    bus.add_chain(CHAIN, chain_handler(calls, "custom"), 7)

    consumed = await bus.chain(CHAIN, "x")

    assert consumed is False
    assert calls == ["first:x", "high:x", "custom:x", "low:x", "default:x"]


async def test_equal_priorities_keep_registration_order():
    bus, calls = fresh()
    for name in ("a", "b", "c"):
        bus.add_chain(CHAIN, chain_handler(calls, name), Priority.NORMAL)
    bus.add_chain(CHAIN, chain_handler(calls, "early"), Priority.HIGH)
    bus.add_chain(CHAIN, chain_handler(calls, "d"), Priority.NORMAL)

    await bus.chain(CHAIN, "x")

    assert calls == ["early:x", "a:x", "b:x", "c:x", "d:x"]


async def test_chain_stops_at_first_handler_returning_true():
    bus, calls = fresh()
    bus.add_chain(CHAIN, chain_handler(calls, "first"), Priority.HIGH)
    bus.add_chain(CHAIN, chain_handler(calls, "consumer", result=True), Priority.NORMAL)
    bus.add_chain(CHAIN, chain_handler(calls, "default"), Priority.DEFAULT)

    consumed = await bus.chain(CHAIN, "x")

    assert consumed is True
    assert calls == ["first:x", "consumer:x"]


async def test_chain_without_handlers_is_not_consumed():
    bus = EventBus()

    assert await bus.chain(CHAIN, "x") is False
    assert not bus.has_handlers(CHAIN)


async def test_chain_propagates_handler_exception():
    bus, calls = fresh()

    async def broken(payload: str) -> bool:
        raise RuntimeError("boom")

    bus.add_chain(CHAIN, broken, Priority.HIGH)
    bus.add_chain(CHAIN, chain_handler(calls, "later"), Priority.NORMAL)

    with pytest.raises(RuntimeError, match="boom"):
        await bus.chain(CHAIN, "x")
    assert calls == []


async def test_keys_are_independent():
    bus, calls = fresh()
    bus.add_chain(CHAIN, chain_handler(calls, "chain"), Priority.NORMAL)
    bus.add_chain(OTHER_CHAIN, chain_handler(calls, "other"), Priority.NORMAL)
    bus.add_chain(ChainKey("test/chain"), chain_handler(calls, "same-name"), Priority.NORMAL)

    await bus.chain(CHAIN, "x")

    # Keys are compared by identity, never by their string name.
    assert calls == ["chain:x"]


async def test_notify_runs_every_handler_in_priority_order():
    bus, calls = fresh()
    bus.add_notify(NOTIFY, notify_handler(calls, "low"), Priority.LOW)
    bus.add_notify(NOTIFY, notify_handler(calls, "high"), Priority.HIGH)
    bus.add_notify(NOTIFY, notify_handler(calls, "normal"), Priority.NORMAL)

    await bus.notify(NOTIFY, "x")

    assert calls == ["high:x", "normal:x", "low:x"]


async def test_notify_survives_raising_handler_and_logs_it(caplog: pytest.LogCaptureFixture):
    bus, calls = fresh()

    async def broken(payload: str) -> None:
        raise RuntimeError("boom")

    bus.add_notify(NOTIFY, notify_handler(calls, "before"), Priority.HIGH)
    bus.add_notify(NOTIFY, broken, Priority.NORMAL)
    bus.add_notify(NOTIFY, notify_handler(calls, "after"), Priority.LOW)

    with caplog.at_level(logging.ERROR, logger="xmppd.events"):
        await bus.notify(NOTIFY, "x")

    assert calls == ["before:x", "after:x"]
    errors = [r for r in caplog.records if r.name == "xmppd.events" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


async def test_notify_without_handlers_does_nothing():
    await EventBus().notify(NOTIFY, "x")


async def test_remove_unregisters_handler():
    bus, calls = fresh()
    keep = chain_handler(calls, "keep")
    drop = chain_handler(calls, "drop")
    bus.add_chain(CHAIN, keep, Priority.NORMAL)
    bus.add_chain(CHAIN, drop, Priority.HIGH)

    bus.remove(CHAIN, drop)
    await bus.chain(CHAIN, "x")

    assert calls == ["keep:x"]
    bus.remove(CHAIN, keep)
    assert not bus.has_handlers(CHAIN)


async def test_remove_absent_handler_is_no_error():
    bus, calls = fresh()
    bus.add_notify(NOTIFY, notify_handler(calls, "kept"), Priority.NORMAL)

    bus.remove(NOTIFY, notify_handler(calls, "never-added"))
    bus.remove(ChainKey("never-used"), notify_handler(calls, "never-added"))
    await bus.notify(NOTIFY, "x")

    assert calls == ["kept:x"]


async def test_remove_only_affects_its_key():
    bus, calls = fresh()
    shared = chain_handler(calls, "shared")
    bus.add_chain(CHAIN, shared, Priority.NORMAL)
    bus.add_chain(OTHER_CHAIN, shared, Priority.NORMAL)

    bus.remove(CHAIN, shared)

    assert not bus.has_handlers(CHAIN)
    assert await bus.chain(OTHER_CHAIN, "y") is False
    assert calls == ["shared:y"]


async def test_remove_bound_method_by_equal_bound_method():
    class Module:
        def __init__(self) -> None:
            self.calls: list[str] = []

        async def on_event(self, payload: str) -> bool:
            self.calls.append(payload)
            return False

    bus, module = EventBus(), Module()
    bus.add_chain(CHAIN, module.on_event, Priority.NORMAL)

    # A bound method is a new object on each access: removal must go by equality.
    bus.remove(CHAIN, module.on_event)

    assert not bus.has_handlers(CHAIN)


async def test_notify_handler_removing_itself_does_not_skip_others():
    bus, calls = fresh()

    async def once(payload: str) -> None:
        calls.append("once")
        bus.remove(NOTIFY, once)

    bus.add_notify(NOTIFY, once, Priority.HIGH)
    bus.add_notify(NOTIFY, notify_handler(calls, "next"), Priority.NORMAL)
    bus.add_notify(NOTIFY, notify_handler(calls, "last"), Priority.LOW)

    await bus.notify(NOTIFY, "x")
    await bus.notify(NOTIFY, "y")

    assert calls == ["once", "next:x", "last:x", "next:y", "last:y"]


async def test_chain_handler_removing_itself_does_not_skip_others():
    bus, calls = fresh()

    async def once(payload: str) -> bool:
        calls.append("once")
        bus.remove(CHAIN, once)
        return False

    bus.add_chain(CHAIN, once, Priority.HIGH)
    bus.add_chain(CHAIN, chain_handler(calls, "next"), Priority.NORMAL)
    bus.add_chain(CHAIN, chain_handler(calls, "default"), Priority.DEFAULT)

    await bus.chain(CHAIN, "x")

    assert calls == ["once", "next:x", "default:x"]


async def test_chain_mixes_plain_and_async_handlers_in_priority_order():
    """A plain function returns its verdict directly; one may also return an awaitable."""
    bus, calls = fresh()

    def plain(payload: str) -> bool:
        calls.append(f"plain:{payload}")
        return False

    def sometimes_async(payload: str):  # goes async only when it must
        calls.append(f"maybe:{payload}")
        return chain_handler(calls, "awaited", result=payload == "consume")(payload)

    def never_reached(payload: str) -> bool:
        calls.append("never")
        return True

    bus.add_chain(CHAIN, plain, Priority.FIRST)
    bus.add_chain(CHAIN, chain_handler(calls, "async"), Priority.HIGH)
    bus.add_chain(CHAIN, sometimes_async, Priority.NORMAL)
    bus.add_chain(CHAIN, never_reached, Priority.LOW)

    assert await bus.chain(CHAIN, "consume") is True
    assert calls == ["plain:consume", "async:consume", "maybe:consume", "awaited:consume"]
    calls.clear()
    assert await bus.chain(CHAIN, "pass") is True
    assert calls == ["plain:pass", "async:pass", "maybe:pass", "awaited:pass", "never"]


async def test_chain_plain_handler_returning_true_consumes_and_its_exception_propagates():
    bus, calls = fresh()

    def consumer(payload: str) -> bool:
        return True

    bus.add_chain(CHAIN, consumer, Priority.HIGH)
    bus.add_chain(CHAIN, chain_handler(calls, "later"), Priority.NORMAL)
    assert await bus.chain(CHAIN, "x") is True
    assert calls == []

    def broken(payload: str) -> bool:
        raise RuntimeError("plain boom")

    bus.add_chain(OTHER_CHAIN, broken, Priority.HIGH)
    with pytest.raises(RuntimeError, match="plain boom"):
        await bus.chain(OTHER_CHAIN, "x")
