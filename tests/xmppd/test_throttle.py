"""Failed-authentication throttling (xmppd/throttle.py) with an injected clock."""

from __future__ import annotations

import pytest

from xmppd.throttle import AuthThrottle

IP = "192.0.2.1"
OTHER_IP = "198.51.100.7"
ACCOUNT = "juliet@example.com"


class Clock:
    """A manual monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, **kwargs) -> AuthThrottle:
    params = {"failures": 3, "window": 60.0, "max_delay": 8.0} | kwargs
    return AuthThrottle(clock=clock, **params)


def fail(throttle: AuthThrottle, times: int, ip: str = IP, account: str | None = ACCOUNT) -> None:
    for _ in range(times):
        throttle.failed(ip, account)


def test_no_delay_without_failures(clock: Clock):
    assert make(clock).delay(IP, ACCOUNT) == 0.0


def test_no_delay_below_threshold(clock: Clock):
    throttle = make(clock)
    fail(throttle, 2)

    assert throttle.delay(IP, ACCOUNT) == 0.0


def test_delay_grows_exponentially_from_threshold(clock: Clock):
    throttle = make(clock, max_delay=100.0)
    delays = []
    for _ in range(6):
        throttle.failed(IP, ACCOUNT)
        delays.append(throttle.delay(IP, ACCOUNT))

    assert delays == [0.0, 0.0, 0.5, 1.0, 2.0, 4.0]


def test_delay_is_capped(clock: Clock):
    throttle = make(clock, max_delay=3.0)
    fail(throttle, 20)

    assert throttle.delay(IP, ACCOUNT) == 3.0


def test_failures_expire_after_window(clock: Clock):
    throttle = make(clock)
    fail(throttle, 3)
    assert throttle.delay(IP, ACCOUNT) > 0

    clock.now += 60.0

    assert throttle.delay(IP, ACCOUNT) == 0.0


def test_window_slides_over_individual_failures(clock: Clock):
    throttle = make(clock, max_delay=100.0)
    fail(throttle, 2)
    clock.now += 30.0
    fail(throttle, 2)
    assert throttle.delay(IP, ACCOUNT) == 1.0  # 4 recent failures

    clock.now += 30.0  # the first two fall out of the window

    assert throttle.delay(IP, ACCOUNT) == 0.0  # 2 recent failures
    clock.now += 29.0
    assert throttle.delay(IP, ACCOUNT) == 0.0
    throttle.failed(IP, ACCOUNT)
    assert throttle.delay(IP, ACCOUNT) == 0.5


def test_ip_failures_delay_any_account_from_that_ip(clock: Clock):
    throttle = make(clock)
    for n in range(3):
        throttle.failed(IP, f"user{n}@example.com")

    assert throttle.delay(IP, "someone-else@example.com") == 0.5
    assert throttle.delay(IP, None) == 0.5
    assert throttle.delay(OTHER_IP, "someone-else@example.com") == 0.0


def test_account_failures_delay_that_account_from_any_ip(clock: Clock):
    throttle = make(clock)
    for n in range(3):
        throttle.failed(f"203.0.113.{n}", ACCOUNT)

    assert throttle.delay(OTHER_IP, ACCOUNT) == 0.5
    assert throttle.delay(OTHER_IP, "romeo@example.com") == 0.0
    assert throttle.delay(OTHER_IP, None) == 0.0


def test_delay_uses_the_larger_of_ip_and_account_counts(clock: Clock):
    throttle = make(clock, max_delay=100.0)
    fail(throttle, 4, ip=IP, account=None)
    fail(throttle, 3, ip=OTHER_IP, account=ACCOUNT)

    assert throttle.delay(IP, ACCOUNT) == 1.0  # ip count 4
    assert throttle.delay(OTHER_IP, ACCOUNT) == 0.5  # both 3


def test_failure_without_account_counts_only_for_ip(clock: Clock):
    throttle = make(clock)
    fail(throttle, 3, account=None)

    assert throttle.delay(OTHER_IP, ACCOUNT) == 0.0
    assert throttle.delay(IP, ACCOUNT) == 0.5


def test_expired_keys_are_forgotten(clock: Clock):
    throttle = make(clock)
    fail(throttle, 2)
    clock.now += 61.0

    throttle.delay(IP, ACCOUNT)

    assert throttle._log == {}


def test_key_count_is_bounded_under_address_spray(clock: Clock):
    throttle = make(clock, max_keys=100)
    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}", None)
        assert len(throttle._log) <= 100

    # The newest addresses are still tracked; the oldest were dropped.
    assert "ip:10.0.3.231" in throttle._log
    assert "ip:10.0.0.0" not in throttle._log


def test_key_count_is_bounded_with_small_limit(clock: Clock):
    throttle = make(clock, max_keys=5)
    for n in range(50):
        throttle.failed(f"10.0.0.{n}", None)

    assert len(throttle._log) <= 5
