"""RFC 6120 §6 / RFC 4422: sans-I/O SASL mechanisms, their step results and stored credentials.

Theory of operation: the c2s state machine picks a mechanism with `create_mechanism` and feeds
it raw (already base64-decoded) payloads. Each call returns one `SaslStep`:

* `Challenge`: send ``<challenge/>`` and pass the next ``<response/>`` to `Mechanism.respond`;
* `NeedCredentials`: prep the username as a JID localpart, look the account up and call
  `Mechanism.credentials` with its `StoredCredentials` (or None when there is no such account);
  run that call in a thread when `Mechanism.expensive_verify` is true;
* `Success` / `Failure`: the exchange is over; the caller still checks the authzid.

Mechanisms never raise on peer input and never see the password store, only the SCRAM keys
(RFC 5802 §3) derived here; the password itself is never stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import precis_i18n

# RFC 5802 / RFC 7677 hash names (as in the mechanism names) -> hashlib names.
HASH_ALGORITHMS: Mapping[str, str] = {"SHA-1": "sha1", "SHA-256": "sha256"}
# RFC 7677 §4: at least 4096 iterations.
MIN_ITERATIONS = 4096
DEFAULT_ITERATIONS = 4096


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """The RFC 5802 §3 verifier stored per account and hash: never the password itself."""

    hash_name: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def __post_init__(self) -> None:
        algorithm = HASH_ALGORITHMS.get(self.hash_name)
        if algorithm is None or not self.salt or self.iterations < MIN_ITERATIONS:
            raise ValueError("SCRAM credentials need a known hash, a salt and >= 4096 iterations")
        size = hashlib.new(algorithm).digest_size
        if len(self.stored_key) != size or len(self.server_key) != size:
            raise ValueError(f"SCRAM keys must be {size} bytes for {self.hash_name}")

    def to_json(self) -> dict[str, str | int]:
        """Return a JSON-compatible dict with the byte fields in base64."""
        return {
            "hash_name": self.hash_name,
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "iterations": self.iterations,
            "stored_key": base64.b64encode(self.stored_key).decode("ascii"),
            "server_key": base64.b64encode(self.server_key).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ScramCredentials:
        """Rebuild credentials stored by `to_json`.

        Raises:
            ValueError: on a missing or mistyped field, bad base64 or invalid values.
        """

        def b64(key: str) -> bytes:
            value = data.get(key)
            if not isinstance(value, str):
                raise ValueError(f"SCRAM credentials: {key} must be a base64 string")
            return decode_base64(value)

        hash_name, iterations = data.get("hash_name"), data.get("iterations")
        if not isinstance(hash_name, str):
            raise ValueError("SCRAM credentials: hash_name must be a string")
        if not isinstance(iterations, int) or isinstance(iterations, bool):
            raise ValueError("SCRAM credentials: iterations must be an integer")
        return cls(hash_name, b64("salt"), iterations, b64("stored_key"), b64("server_key"))


StoredCredentials = Mapping[str, ScramCredentials]


def decode_base64(text: str) -> bytes:
    """Decode strict RFC 4648 base64 (no whitespace, correct padding).

    Raises:
        ValueError: if `text` is not valid base64.
    """
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValueError("invalid base64") from exc


def derive_credentials(
    password: str,
    hash_name: str,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    salt: bytes | None = None,
) -> ScramCredentials:
    """Derive the RFC 5802 §3 verifier for `password` (Hi() is PBKDF2-HMAC).

    Args:
        password: the clear-text password, prepared with the PRECIS OpaqueString profile
            (RFC 8265 §4.2, as RFC 7677 §4 and RFC 6120 §6.3.8 require).
        hash_name: "SHA-1" or "SHA-256".
        iterations: PBKDF2 iteration count, at least 4096.
        salt: the salt; 16 random bytes when omitted.

    Raises:
        ValueError: if the password fails preparation or the parameters are invalid.
    """
    try:
        prepared = str(precis_i18n.get_profile("OpaqueString").enforce(password))
    except UnicodeError as exc:
        raise ValueError(f"password rejected by PRECIS OpaqueString: {exc}") from exc
    algorithm = HASH_ALGORITHMS.get(hash_name)
    if algorithm is None or iterations < MIN_ITERATIONS:
        raise ValueError(f"unknown SCRAM hash {hash_name!r} or fewer than 4096 iterations")
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac(algorithm, prepared.encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", algorithm)
    stored_key = hashlib.new(algorithm, client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", algorithm)
    return ScramCredentials(hash_name, salt, iterations, stored_key, server_key)


def derive_all(
    password: str, *, iterations: int = DEFAULT_ITERATIONS
) -> dict[str, ScramCredentials]:
    """Derive credentials for every supported hash (SHA-1 and SHA-256), each with its own salt.

    Raises:
        ValueError: if the password fails PRECIS preparation.
    """
    return {
        name: derive_credentials(password, name, iterations=iterations) for name in HASH_ALGORITHMS
    }


def verify_password(creds: StoredCredentials, password: str) -> bool:
    """Check a clear-text password (SASL PLAIN) against stored SCRAM credentials.

    Uses SHA-256 credentials when present, else SHA-1, and compares in constant time.
    """
    chosen = creds.get("SHA-256") or creds.get("SHA-1")
    if chosen is None:
        return False
    try:
        candidate = derive_credentials(
            password, chosen.hash_name, iterations=chosen.iterations, salt=chosen.salt
        )
    except ValueError:
        return False
    return hmac.compare_digest(candidate.stored_key, chosen.stored_key)


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``<challenge/>`` with this payload and wait for a response."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    """Look up `username` (not yet prepped) and call `Mechanism.credentials`."""

    username: str
    authzid: str | None


@dataclass(frozen=True, slots=True)
class Success:
    """Authenticated as `username`; `additional_data` goes into ``<success/>``."""

    username: str
    authzid: str | None
    additional_data: bytes | None


@dataclass(frozen=True, slots=True)
class Failure:
    """Send ``<failure/>`` with this RFC 6120 §6.5 condition; the exchange is over."""

    condition: str
    text: str | None = None


SaslStep = Challenge | NeedCredentials | Success | Failure

# RFC 6120 §6.4.2 leaves payload limits to the server; no legitimate message comes close.
MAX_MESSAGE = 4096
MALFORMED = Failure("malformed-request")
OUT_OF_ORDER = Failure("malformed-request", "unexpected SASL step")
TOO_LONG = Failure("malformed-request", "SASL message too long")


class Mechanism(Protocol):
    """One SASL exchange. Never raises on peer input: bad input yields `Failure`."""

    name: str
    expensive_verify: bool

    def start(self, initial: bytes | None) -> SaslStep:
        """Handle ``<auth/>``: its payload, None if absent, b"" for "=" (RFC 6120 §6.4.2)."""
        ...

    def respond(self, data: bytes) -> SaslStep:
        """Handle a ``<response/>`` payload."""
        ...

    def credentials(self, creds: StoredCredentials | None) -> SaslStep:
        """Continue after `NeedCredentials`; None means there is no such account."""
        ...


@dataclass(frozen=True, slots=True)
class ChannelBindings:
    """RFC 5056 channel bindings of this connection, by type (RFC 5929, RFC 9266)."""

    data: Mapping[str, bytes]
    plus_offered: bool


SCRAM_MECHANISMS: Mapping[str, tuple[str, bool]] = {
    "SCRAM-SHA-256-PLUS": ("SHA-256", True),
    "SCRAM-SHA-1-PLUS": ("SHA-1", True),
    "SCRAM-SHA-256": ("SHA-256", False),
    "SCRAM-SHA-1": ("SHA-1", False),
}


def mechanisms_for(secure: bool, bindings: ChannelBindings) -> list[str]:
    """Return the mechanism names to advertise, strongest first.

    Args:
        secure: whether the stream is encrypted; PLAIN is only offered then (RFC 6120 §6.4.4).
        bindings: this connection's channel bindings; -PLUS needs at least one.
    """
    names = [name for name, (_, plus) in SCRAM_MECHANISMS.items() if bindings.data or not plus]
    if secure:
        names.append("PLAIN")
    return names


def create_mechanism(name: str, bindings: ChannelBindings) -> Mechanism | None:
    """Instantiate mechanism `name`, or return None if it is unknown or cannot be offered.

    The caller must still check that `name` was advertised (PLAIN depends on `secure`).
    """
    # Imported here: the mechanism modules import the types defined above.
    from xmppd.sasl.plain import Plain
    from xmppd.sasl.scram import Scram

    if name == "PLAIN":
        return Plain()
    if name not in SCRAM_MECHANISMS:
        return None
    hash_name, plus = SCRAM_MECHANISMS[name]
    if plus and not bindings.data:
        return None
    return Scram(hash_name, bindings, plus=plus)
