"""Tests for SASL PLAIN (RFC 4616) and the stored SCRAM credentials it verifies against."""

from __future__ import annotations

import base64

import pytest

import xmppd.sasl.plain
from xmppd.sasl import (
    Challenge,
    Failure,
    NeedCredentials,
    ScramCredentials,
    StoredCredentials,
    Success,
    derive_all,
    derive_credentials,
    verify_password,
)
from xmppd.sasl.plain import Plain

CREDS = derive_all("pencil")


def test_initial_response_success() -> None:
    mech = Plain()
    assert mech.start(b"\x00user\x00pencil") == NeedCredentials("user", None)
    assert mech.credentials(CREDS) == Success("user", None, None)


def test_authzid_is_returned_for_the_caller_to_check() -> None:
    mech = Plain()
    assert mech.start("admin@example.org\x00usér\x00pencil".encode()) == NeedCredentials(
        "usér", "admin@example.org"
    )
    assert mech.credentials(CREDS) == Success("usér", "admin@example.org", None)


def test_no_initial_response_gets_empty_challenge() -> None:
    mech = Plain()
    assert mech.start(None) == Challenge(b"")
    assert mech.respond(b"\x00user\x00pencil") == NeedCredentials("user", None)
    assert isinstance(mech.credentials(CREDS), Success)


def test_sha1_only_credentials_verify() -> None:
    mech = Plain()
    mech.start(b"\x00user\x00pencil")
    assert isinstance(mech.credentials({"SHA-1": CREDS["SHA-1"]}), Success)


@pytest.mark.parametrize("password", ["pencil2", "Pencil", "pencil\x07", " pencil"])
def test_wrong_password_is_not_authorized(password: str) -> None:
    mech = Plain()
    mech.start(f"\x00user\x00{password}".encode())
    assert mech.credentials(CREDS) == Failure("not-authorized")


@pytest.mark.parametrize("creds", [None, {}])
def test_unknown_account_does_the_same_work(
    creds: StoredCredentials | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def spy(stored: StoredCredentials, password: str) -> bool:
        calls.append(password)
        return verify_password(stored, password)

    monkeypatch.setattr(xmppd.sasl.plain, "verify_password", spy)
    mech = Plain()
    mech.start(b"\x00ghost\x00pencil")
    assert mech.credentials(creds) == Failure("not-authorized")
    assert calls == ["pencil"]  # a PBKDF2 run against dummy credentials: no timing oracle


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"user\x00pencil",
        b"\x00user\x00pencil\x00extra",
        b"\x00\x00pencil",
        b"\x00user\x00",
        b"\x00us\xffer\x00pencil",
        b"\xc3\x00user\x00pencil",
        b"\x00user\x00" + b"p" * 4096,
    ],
)
def test_malformed_message_fails(message: bytes) -> None:
    mech = Plain()
    step = mech.start(message)
    assert isinstance(step, Failure)
    assert step.condition == "malformed-request"
    assert isinstance(mech.credentials(CREDS), Failure)  # the exchange is over


def test_malformed_response_after_empty_challenge_fails() -> None:
    mech = Plain()
    mech.start(None)
    assert mech.respond(b"user\x00pencil") == Failure("malformed-request")


def test_steps_out_of_order_fail_without_raising() -> None:
    out_of_order = Failure("malformed-request", "unexpected SASL step")
    assert Plain().respond(b"\x00user\x00pencil") == out_of_order
    assert Plain().credentials(CREDS) == out_of_order
    mech = Plain()
    mech.start(b"\x00user\x00pencil")
    assert mech.respond(b"\x00user\x00pencil") == out_of_order
    assert mech.credentials(CREDS) == out_of_order  # failed exchanges stay failed
    mech = Plain()
    mech.start(b"\x00user\x00pencil")
    assert isinstance(mech.credentials(CREDS), Success)
    assert mech.credentials(CREDS) == out_of_order
    assert mech.start(b"\x00user\x00pencil") == out_of_order


def test_verify_password_applies_precis_opaque_string() -> None:
    # RFC 8265 §4.2: non-ASCII spaces map to U+0020 and the result is NFC.
    creds = derive_all("p\u00a0caf\u00e9")
    assert verify_password(creds, "p cafe\u0301")
    assert not verify_password(creds, "p cafe")
    assert not verify_password(creds, "")
    assert not verify_password({}, "p café")


def test_verify_password_prefers_sha256() -> None:
    mixed = {"SHA-256": CREDS["SHA-256"], "SHA-1": derive_credentials("other", "SHA-1")}
    assert verify_password(mixed, "pencil")
    assert not verify_password(mixed, "other")


def test_credentials_json_round_trip() -> None:
    creds = CREDS["SHA-256"]
    assert ScramCredentials.from_json(creds.to_json()) == creds


@pytest.mark.parametrize(
    "change",
    [
        {"hash_name": "MD5"},
        {"hash_name": None},
        {"salt": "not base64!"},
        {"salt": ""},
        {"iterations": "4096"},
        {"iterations": True},
        {"iterations": 1000},
        {"stored_key": base64.b64encode(b"short").decode()},
        {"server_key": 42},
    ],
)
def test_credentials_from_bad_json_raise_value_error(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"SCRAM|base64"):
        ScramCredentials.from_json({**CREDS["SHA-1"].to_json(), **change})


def test_derive_credentials_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="PRECIS"):
        derive_credentials("", "SHA-256")
    with pytest.raises(ValueError, match="unknown SCRAM hash"):
        derive_credentials("pencil", "SHA-512")
    with pytest.raises(ValueError, match="4096"):
        derive_credentials("pencil", "SHA-256", iterations=100)
