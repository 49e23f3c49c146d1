"""RFC 5802 / RFC 7677: SCRAM-SHA-1 and SCRAM-SHA-256 (plain and -PLUS) as a sans-I/O server.

Theory of operation::

    INITIAL --start(None)--> CLIENT_FIRST --respond(client-first)--> CREDENTIALS
    INITIAL --start(client-first)-------------------------------------> CREDENTIALS
    CREDENTIALS --credentials(creds)--> CLIENT_FINAL   (returns the server-first Challenge)
    CLIENT_FINAL --respond(client-final)--> DONE       (Success carrying "v=", or Failure)

Every `Failure`, and every call made in the wrong state, moves to DONE. An unknown account is
not revealed: the exchange goes on with a salt derived from the username and a per-process
secret, and fails at the proof with not-authorized, like a wrong password.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable

from xmppd.sasl import (
    DEFAULT_ITERATIONS,
    HASH_ALGORITHMS,
    MALFORMED,
    MAX_MESSAGE,
    OUT_OF_ORDER,
    TOO_LONG,
    Challenge,
    ChannelBindings,
    Failure,
    NeedCredentials,
    SaslStep,
    ScramCredentials,
    StoredCredentials,
    Success,
    decode_base64,
)

# Salts for unknown accounts: stable per username within this process, unguessable outside it.
_PROCESS_SECRET = secrets.token_bytes(32)
# RFC 5802 §7: cb-name, printable nonce (no ","), attr-val extensions (value without NUL).
_CB_NAME = re.compile(r"[A-Za-z0-9.\-]+")
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_EXTENSION = re.compile(r"[A-Za-z]=[^\x00]+")


class _State(enum.Enum):
    INITIAL = enum.auto()
    CLIENT_FIRST = enum.auto()
    CREDENTIALS = enum.auto()
    CLIENT_FINAL = enum.auto()
    DONE = enum.auto()


class _MalformedError(ValueError):
    """Peer input that violates the RFC 5802 §7 grammar; becomes malformed-request."""


def _attribute(part: str, name: str) -> str:
    if not part.startswith(name + "="):
        raise _MalformedError(f"expected attribute {name!r}")
    return part[2:]


def _saslname(value: str) -> str:
    """Decode an RFC 5802 saslname: "=2C" is ",", "=3D" is "=", any other "=" is an error."""
    if not value or "\x00" in value:
        raise _MalformedError("empty or invalid saslname")
    first, *rest = value.split("=")
    decoded = [first]
    for chunk in rest:
        escape = {"2C": ",", "3D": "="}.get(chunk[:2].upper())
        if escape is None:
            raise _MalformedError("invalid '=' escape in saslname")
        decoded.append(escape + chunk[2:])
    return "".join(decoded)


def _check_extensions(parts: list[str]) -> None:
    # RFC 5802 §5.1: unknown optional extensions are ignored, but they must be well formed.
    if not all(_EXTENSION.fullmatch(part) for part in parts):
        raise _MalformedError("malformed extension")


def _default_nonce() -> str:
    return base64.b64encode(secrets.token_bytes(24)).decode("ascii")


class Scram:
    """One SCRAM exchange for one hash, with or without channel binding (RFC 5802 §6)."""

    expensive_verify = False

    def __init__(
        self,
        hash_name: str,
        bindings: ChannelBindings,
        *,
        plus: bool,
        nonce_factory: Callable[[], str] = _default_nonce,
        fake_iterations: int = DEFAULT_ITERATIONS,
    ) -> None:
        """Create the mechanism.

        Args:
            hash_name: "SHA-1" or "SHA-256".
            bindings: this connection's channel bindings and whether -PLUS was offered.
            plus: True for the -PLUS variant, which requires channel binding.
            nonce_factory: returns the server nonce part (printable, no ","); tests inject it.
            fake_iterations: iteration count shown for unknown accounts; match the real one.
        """
        self._algorithm = HASH_ALGORITHMS[hash_name]
        self.name = f"SCRAM-{hash_name}{'-PLUS' if plus else ''}"
        self._hash_name = hash_name
        self._bindings = bindings
        self._plus = plus
        self._nonce_factory = nonce_factory
        self._fake_iterations = fake_iterations
        self._state = _State.INITIAL
        self._cb_data = b""
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._username = ""
        self._authzid: str | None = None
        self._creds: ScramCredentials | None = None
        self._known = False

    def start(self, initial: bytes | None) -> SaslStep:
        """Handle ``<auth/>``; without an initial response, ask for client-first."""
        if self._state is not _State.INITIAL:
            return self._finish(OUT_OF_ORDER)
        if initial is None:
            self._state = _State.CLIENT_FIRST
            return Challenge(b"")
        return self._run(initial, self._client_first)

    def respond(self, data: bytes) -> SaslStep:
        """Handle client-first (after an empty challenge) or client-final."""
        if self._state is _State.CLIENT_FIRST:
            return self._run(data, self._client_first)
        if self._state is _State.CLIENT_FINAL:
            return self._run(data, self._client_final)
        return self._finish(OUT_OF_ORDER)

    def credentials(self, creds: StoredCredentials | None) -> SaslStep:
        """Send server-first, with a fake salt if the account or its hash is unknown."""
        if self._state is not _State.CREDENTIALS:
            return self._finish(OUT_OF_ORDER)
        chosen = creds.get(self._hash_name) if creds is not None else None
        self._known = chosen is not None
        if chosen is None:
            # Same work and same message shape as for a real account (RFC 5802 §9).
            tag = f"{self._hash_name}\x00{self._username}".encode()
            size = hashlib.new(self._algorithm).digest_size
            chosen = ScramCredentials(
                self._hash_name,
                hmac.digest(_PROCESS_SECRET, tag, "sha256")[:16],
                self._fake_iterations,
                secrets.token_bytes(size),
                secrets.token_bytes(size),
            )
        self._creds = chosen
        salt_text = base64.b64encode(chosen.salt).decode("ascii")
        self._nonce += self._nonce_factory()
        self._server_first = f"r={self._nonce},s={salt_text},i={chosen.iterations}"
        self._state = _State.CLIENT_FINAL
        return Challenge(self._server_first.encode("ascii"))

    def _finish(self, step: SaslStep) -> SaslStep:
        if isinstance(step, Success | Failure):
            self._state = _State.DONE
        return step

    def _run(self, data: bytes, handler: Callable[[str], SaslStep]) -> SaslStep:
        if len(data) > MAX_MESSAGE:
            return self._finish(TOO_LONG)
        try:
            step = handler(data.decode("utf-8"))
        except _MalformedError as exc:
            step = Failure("malformed-request", str(exc))
        except ValueError:  # invalid UTF-8 or base64
            step = MALFORMED
        return self._finish(step)

    def _client_first(self, text: str) -> SaslStep:
        # RFC 5802 §7: gs2-cbind-flag "," [authzid] "," [reserved-mext ","] username "," nonce
        parts = text.split(",")
        if len(parts) < 4:
            raise _MalformedError("client-first-message too short")
        flag, authz, bare = parts[0], parts[1], parts[2:]
        failure = self._check_cbind_flag(flag)
        if failure is not None:
            return failure
        self._authzid = _saslname(_attribute(authz, "a")) if authz else None
        if bare[0].startswith("m="):
            # RFC 5802 §5.1: an unknown mandatory extension MUST make authentication fail.
            return Failure("malformed-request", "unsupported mandatory extension")
        self._username = _saslname(_attribute(bare[0], "n"))
        self._nonce = _attribute(bare[1], "r")
        if not _NONCE.fullmatch(self._nonce):
            raise _MalformedError("invalid client nonce")
        _check_extensions(bare[2:])
        self._gs2_header = f"{flag},{authz},"
        self._client_first_bare = ",".join(bare)
        self._state = _State.CREDENTIALS
        return NeedCredentials(self._username, self._authzid)

    def _check_cbind_flag(self, flag: str) -> Failure | None:
        if flag.startswith("p="):
            cb_name = flag[2:]
            if not _CB_NAME.fullmatch(cb_name):
                raise _MalformedError("invalid channel-binding type")
            if not self._plus:
                return Failure("malformed-request", "channel binding needs a -PLUS mechanism")
            if cb_name not in self._bindings.data:
                return Failure("not-authorized", "unsupported channel-binding type")
            self._cb_data = self._bindings.data[cb_name]
            return None
        if flag not in ("n", "y"):
            raise _MalformedError("invalid gs2-cbind-flag")
        if self._plus:
            return Failure("malformed-request", "-PLUS mechanism without channel binding")
        if flag == "y" and self._bindings.plus_offered:
            # RFC 5802 §6: the client could bind but believes we cannot, yet we offered -PLUS:
            # someone stripped it from our feature list.
            return Failure("not-authorized", "channel binding downgrade detected")
        return None

    def _client_final(self, text: str) -> SaslStep:
        # RFC 5802 §7: channel-binding "," nonce ["," extensions] "," proof
        parts = text.split(",")
        if len(parts) < 3:
            raise _MalformedError("client-final-message too short")
        cbind = decode_base64(_attribute(parts[0], "c"))
        nonce = _attribute(parts[1], "r")
        proof = decode_base64(_attribute(parts[-1], "p"))
        _check_extensions(parts[2:-1])
        if len(proof) != hashlib.new(self._algorithm).digest_size:
            raise _MalformedError("client proof has the wrong length")
        # RFC 5802 §6: c= is the gs2 header followed by this connection's binding data.
        if not hmac.compare_digest(cbind, self._gs2_header.encode() + self._cb_data):
            return Failure("not-authorized", "channel binding mismatch")
        if not hmac.compare_digest(nonce.encode(), self._nonce.encode()):
            return Failure("not-authorized", "nonce mismatch")
        without_proof = ",".join(parts[:-1])
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        creds = self._creds
        if creds is None:  # unreachable: CLIENT_FINAL is only entered through credentials()
            return Failure("not-authorized")
        # RFC 5802 §3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage).
        signature = hmac.digest(creds.stored_key, auth_message, self._algorithm)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        stored_key = hashlib.new(self._algorithm, client_key).digest()
        if not hmac.compare_digest(stored_key, creds.stored_key) or not self._known:
            return Failure("not-authorized")
        server_signature = hmac.digest(creds.server_key, auth_message, self._algorithm)
        verifier = b"v=" + base64.b64encode(server_signature)
        return Success(self._username, self._authzid, verifier)
