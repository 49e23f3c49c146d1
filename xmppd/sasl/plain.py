"""RFC 4616: the PLAIN SASL mechanism, verified against stored SCRAM credentials.

Theory of operation::

    INITIAL --start(None)--> MESSAGE --respond(message)--> CREDENTIALS
    INITIAL --start(message)-----------------------------> CREDENTIALS
    CREDENTIALS --credentials(creds)--> DONE   (Success or Failure)

Every `Failure`, and every call made in the wrong state, moves to DONE. `credentials` runs
PBKDF2 (hence ``expensive_verify``), and runs it for unknown accounts too, against dummy
credentials, so that response time does not tell whether an account exists.
"""

from __future__ import annotations

import enum
import secrets

from xmppd.sasl import (
    DEFAULT_ITERATIONS,
    MALFORMED,
    MAX_MESSAGE,
    OUT_OF_ORDER,
    TOO_LONG,
    Challenge,
    Failure,
    NeedCredentials,
    SaslStep,
    ScramCredentials,
    StoredCredentials,
    Success,
    verify_password,
)

# Never matches: random keys that no password derives to in practice.
_DUMMY: StoredCredentials = {
    "SHA-256": ScramCredentials(
        "SHA-256",
        secrets.token_bytes(16),
        DEFAULT_ITERATIONS,
        secrets.token_bytes(32),
        secrets.token_bytes(32),
    )
}


class _State(enum.Enum):
    INITIAL = enum.auto()
    MESSAGE = enum.auto()
    CREDENTIALS = enum.auto()
    DONE = enum.auto()


class Plain:
    """One PLAIN exchange: ``[authzid] NUL authcid NUL passwd`` (RFC 4616 §2)."""

    name = "PLAIN"
    expensive_verify = True

    def __init__(self) -> None:
        """Create the mechanism in its initial state."""
        self._state = _State.INITIAL
        self._username = ""
        self._authzid: str | None = None
        self._password: str | None = None

    def start(self, initial: bytes | None) -> SaslStep:
        """Handle ``<auth/>``; without an initial response, send an empty challenge."""
        if self._state is not _State.INITIAL:
            return self._finish(OUT_OF_ORDER)
        if initial is None:
            self._state = _State.MESSAGE
            return Challenge(b"")
        return self._message(initial)

    def respond(self, data: bytes) -> SaslStep:
        """Handle the PLAIN message sent after the empty challenge."""
        if self._state is not _State.MESSAGE:
            return self._finish(OUT_OF_ORDER)
        return self._message(data)

    def credentials(self, creds: StoredCredentials | None) -> SaslStep:
        """Verify the password; slow (PBKDF2), so the caller runs it in a thread."""
        password = self._password
        if self._state is not _State.CREDENTIALS or password is None:
            return self._finish(OUT_OF_ORDER)
        self._password = None  # do not keep the clear-text password around
        # Unknown account: do the same PBKDF2 work against dummy credentials, then fail.
        valid = verify_password(creds or _DUMMY, password) and bool(creds)
        if not valid:
            return self._finish(Failure("not-authorized"))
        return self._finish(Success(self._username, self._authzid, None))

    def _finish(self, step: SaslStep) -> SaslStep:
        self._state = _State.DONE
        return step

    def _message(self, data: bytes) -> SaslStep:
        if len(data) > MAX_MESSAGE:
            return self._finish(TOO_LONG)
        # RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
        fields = data.split(b"\x00")
        if len(fields) != 3:
            return self._finish(MALFORMED)
        try:
            authzid, authcid, password = (field.decode("utf-8") for field in fields)
        except UnicodeDecodeError:
            return self._finish(MALFORMED)
        if not authcid or not password:
            return self._finish(MALFORMED)
        self._username, self._authzid, self._password = authcid, authzid or None, password
        self._state = _State.CREDENTIALS
        return NeedCredentials(authcid, self._authzid)
