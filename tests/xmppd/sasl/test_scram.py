"""Tests for SCRAM (RFC 5802, RFC 7677), the stored credentials and mechanism selection."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from collections.abc import Callable

import pytest

from xmppd.sasl import (
    Challenge,
    ChannelBindings,
    Failure,
    NeedCredentials,
    StoredCredentials,
    Success,
    create_mechanism,
    derive_all,
    derive_credentials,
    mechanisms_for,
)
from xmppd.sasl.scram import Scram

NO_TLS = ChannelBindings({}, plus_offered=False)
TLS = ChannelBindings({"tls-server-end-point": b"\x01" * 32}, plus_offered=True)
HASHES = ["SHA-1", "SHA-256"]
CREDS = derive_all("pencil")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ScramClient:
    """A minimal RFC 5802 client, enough to drive the server side."""

    def __init__(
        self,
        hash_name: str,
        username: str = "user",
        password: str = "pencil",
        *,
        gs2_header: str = "n,,",
        cb_data: bytes = b"",
        nonce: str = "cl1entN0nce+/=",
    ) -> None:
        self.algorithm = {"SHA-1": "sha1", "SHA-256": "sha256"}[hash_name]
        self.password, self.gs2_header, self.cb_data = password, gs2_header, cb_data
        self.bare = f"n={username.replace('=', '=3D').replace(',', '=2C')},r={nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return (self.gs2_header + self.bare).encode()

    def final(self, server_first: bytes, *, cbind: bytes | None = None) -> bytes:
        attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
        salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
        salted = hashlib.pbkdf2_hmac(self.algorithm, self.password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", self.algorithm)
        stored_key = hashlib.new(self.algorithm, client_key).digest()
        cbind = self.gs2_header.encode() + self.cb_data if cbind is None else cbind
        without_proof = f"c={b64(cbind)},r={attrs['r']}"
        auth = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth, self.algorithm)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self.algorithm)
        self.server_signature = hmac.digest(server_key, auth, self.algorithm)
        return f"{without_proof},p={b64(proof)}".encode()


def server_first(
    mech: Scram, client: ScramClient, creds: StoredCredentials | None = CREDS
) -> bytes:
    assert isinstance(mech.start(client.first()), NeedCredentials)
    challenge = mech.credentials(creds)
    assert isinstance(challenge, Challenge)
    return challenge.data


def exchange(
    mech: Scram, client: ScramClient, creds: StoredCredentials | None = CREDS, **final: bytes
) -> NeedCredentials | Challenge | Success | Failure:
    """Run a whole exchange and return the last step (or the first unexpected one)."""
    step = mech.start(client.first())
    if not isinstance(step, NeedCredentials):
        return step
    challenge = mech.credentials(creds)
    assert isinstance(challenge, Challenge)
    return mech.respond(client.final(challenge.data, **final))


def test_rfc7677_sha256_test_vector() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    creds = {"SHA-256": derive_credentials("pencil", "SHA-256", salt=salt)}
    mech = Scram(
        "SHA-256", NO_TLS, plus=False, nonce_factory=lambda: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    assert mech.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == NeedCredentials("user", None)
    server_first = f"r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode()
    assert mech.credentials(creds) == Challenge(server_first)
    final = f"c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    verifier = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert mech.respond(final.encode()) == Success("user", None, verifier)


def test_rfc5802_sha1_test_vector() -> None:
    creds = {
        "SHA-1": derive_credentials("pencil", "SHA-1", salt=base64.b64decode("QSXCR+Q6sek8bf92"))
    }
    mech = Scram("SHA-1", NO_TLS, plus=False, nonce_factory=lambda: "3rfcNHYJY1ZVvWVs7j")
    nonce = "fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j"
    assert mech.start(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL") == NeedCredentials("user", None)
    assert mech.credentials(creds) == Challenge(f"r={nonce},s=QSXCR+Q6sek8bf92,i=4096".encode())
    final = f"c=biws,r={nonce},p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    assert mech.respond(final.encode()) == Success("user", None, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")


@pytest.mark.parametrize("hash_name", HASHES)
def test_round_trip_server_signature_verifies(hash_name: str) -> None:
    client = ScramClient(hash_name)
    step = exchange(Scram(hash_name, NO_TLS, plus=False), client)
    assert step == Success("user", None, b"v=" + base64.b64encode(client.server_signature))


def test_default_server_nonce_is_long_and_fresh() -> None:
    client = ScramClient("SHA-256", nonce="abc")
    first, second = (server_first(Scram("SHA-256", NO_TLS, plus=False), client) for _ in "12")
    assert first.startswith(b"r=abc")
    assert len(first.split(b",")[0]) >= len("r=abc") + 32  # 24 random bytes in base64
    assert first.split(b",")[0] != second.split(b",")[0]


def test_no_initial_response_gets_empty_challenge_first() -> None:
    mech, client = Scram("SHA-256", NO_TLS, plus=False), ScramClient("SHA-256")
    assert mech.start(None) == Challenge(b"")
    assert mech.respond(client.first()) == NeedCredentials("user", None)
    challenge = mech.credentials(CREDS)
    assert isinstance(challenge, Challenge)
    assert isinstance(mech.respond(client.final(challenge.data)), Success)


def test_empty_initial_response_is_malformed() -> None:
    assert Scram("SHA-256", NO_TLS, plus=False).start(b"") == Failure(
        "malformed-request", "client-first-message too short"
    )


@pytest.mark.parametrize("hash_name", HASHES)
def test_plus_with_tls_server_end_point_and_authzid(hash_name: str) -> None:
    gs2 = "p=tls-server-end-point,a=admin=2C=3Dx@example.org,"
    client = ScramClient(hash_name, gs2_header=gs2, cb_data=b"\x01" * 32)
    step = exchange(Scram(hash_name, TLS, plus=True), client)
    assert isinstance(step, Success)
    assert (step.username, step.authzid) == ("user", "admin,=x@example.org")


@pytest.mark.parametrize(
    ("plus", "bindings", "gs2_header", "cb_data", "expected"),
    [
        # RFC 5802 §6: -PLUS binds to this connection; a wrong binding is a MITM.
        (True, TLS, "p=tls-server-end-point,,", b"\x02" * 32, "not-authorized: channel binding"),
        (True, TLS, "p=tls-unique,,", b"", "not-authorized: unsupported channel-binding type"),
        (True, TLS, "n,,", b"", "malformed-request: -PLUS mechanism without channel"),
        (True, TLS, "y,,", b"", "malformed-request: -PLUS mechanism without channel"),
        (False, TLS, "p=tls-server-end-point,,", b"\x01" * 32, "malformed-request: channel"),
        # "y": the client can bind but thinks we cannot, yet -PLUS was offered: a downgrade.
        (False, TLS, "y,,", b"", "not-authorized: channel binding downgrade detected"),
        (False, ChannelBindings({"tls-exporter": b"x"}, False), "y,,", b"", None),
        (False, NO_TLS, "y,,", b"", None),
    ],
)
def test_channel_binding_rules(
    plus: bool, bindings: ChannelBindings, gs2_header: str, cb_data: bytes, expected: str | None
) -> None:
    client = ScramClient("SHA-256", gs2_header=gs2_header, cb_data=cb_data)
    step = exchange(Scram("SHA-256", bindings, plus=plus), client)
    if expected is None:
        assert isinstance(step, Success)
    else:
        assert isinstance(step, Failure)
        assert f"{step.condition}: {step.text}".startswith(expected)


def test_c_attribute_must_repeat_the_gs2_header() -> None:
    step = exchange(Scram("SHA-256", NO_TLS, plus=False), ScramClient("SHA-256"), cbind=b"y,,")
    assert step == Failure("not-authorized", "channel binding mismatch")


@pytest.mark.parametrize("hash_name", HASHES)
def test_wrong_password_is_not_authorized(hash_name: str) -> None:
    client = ScramClient(hash_name, password="pencil2")
    assert exchange(Scram(hash_name, NO_TLS, plus=False), client) == Failure("not-authorized")


def test_unknown_account_looks_like_a_real_one_until_the_proof() -> None:
    def salt_and_iterations(username: str) -> list[bytes]:
        mech = Scram("SHA-256", NO_TLS, plus=False)
        return server_first(mech, ScramClient("SHA-256", username), None).split(b",")[1:]

    ghost = salt_and_iterations("ghost")
    assert ghost == salt_and_iterations("ghost")  # same salt every time: no oracle
    assert ghost != salt_and_iterations("phantom")
    assert len(base64.b64decode(ghost[0][2:])) == 16
    assert ghost[1] == b"i=4096"
    step = exchange(Scram("SHA-256", NO_TLS, plus=False), ScramClient("SHA-256"), None)
    assert step == Failure("not-authorized")


def test_account_without_this_hash_is_treated_as_unknown() -> None:
    sha1_only = {"SHA-1": CREDS["SHA-1"]}
    step = exchange(Scram("SHA-256", NO_TLS, plus=False), ScramClient("SHA-256"), sha1_only)
    assert step == Failure("not-authorized")


# fmt: off
MALFORMED_CLIENT_FIRST = [
    b"n,,n=user", b"n,", b"n,,r=abc,n=user", b"n,,n=user,r=abc," + b"x" * 4096,  # shape, length
    b"x,,n=user,r=abc", b"p=,,n=user,r=abc", b"p=tls unique,,n=user,r=abc",  # gs2 flag
    b"n,z=admin,n=user,r=abc", b"n,a=,n=user,r=abc", b"n,a=ad=41min,n=user,r=abc",  # authzid
    b"n,,n=us=er,r=abc", b"n,,n=user=2,r=abc", b"n,,n=,r=abc", b"n,,n=us\x00er,r=abc",  # name
    b"n,,n=\xff\xfe,r=abc", b"n,,n=user,r=", b"n,,n=user,r=a b", b"n,,n=user,r=ab\x7f",  # nonce
    b"n,,n=user,r=abc,1=x", b"n,,n=user,r=abc,e=", b"n,,m=ext,n=user,r=abc",  # extensions
]
# fmt: on


@pytest.mark.parametrize("message", MALFORMED_CLIENT_FIRST)
def test_malformed_client_first_fails(message: bytes) -> None:
    step = Scram("SHA-256", NO_TLS, plus=False).start(message)
    assert isinstance(step, Failure)
    assert step.condition == "malformed-request"


@pytest.mark.parametrize(
    ("message", "username"),
    [(b"n,,n=a=2Cb=3dc,r=xyz", "a,b=c"), (b"n,,n=user,r=abc,x=ext=val", "user")],
)
def test_client_first_escapes_are_decoded_and_extensions_ignored(
    message: bytes, username: str
) -> None:
    assert Scram("SHA-256", NO_TLS, plus=False).start(message) == NeedCredentials(username, None)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda m: m.replace(b"c=biws", b"c=b!ws"),
        lambda m: m.replace(b"c=biws", b"c=biw"),
        lambda m: m.replace(b"c=biws,", b""),
        lambda m: m[: m.index(b",p=")],
        lambda m: m[: m.index(b",p=")] + b",p=AAAA",
        lambda m: m[: m.index(b",p=")] + b",p=",
        lambda m: m.replace(b"r=", b"n="),
        lambda m: m.replace(b",p=", b",9=x,p="),
        lambda m: m + b"\xff",
        lambda m: m + b"=" * 4096,
        lambda m: b"",
    ],
)
def test_malformed_client_final_fails(mangle: Callable[[bytes], bytes]) -> None:
    mech, client = Scram("SHA-256", NO_TLS, plus=False), ScramClient("SHA-256")
    step = mech.respond(mangle(client.final(server_first(mech, client))))
    assert isinstance(step, Failure)
    assert step.condition == "malformed-request"


def test_client_final_with_other_nonce_is_not_authorized() -> None:
    mech, client = Scram("SHA-256", NO_TLS, plus=False), ScramClient("SHA-256")
    forged = server_first(mech, client).replace(b"r=", b"r=X", 1)
    assert mech.respond(client.final(forged)) == Failure("not-authorized", "nonce mismatch")


def test_steps_out_of_order_fail_without_raising() -> None:
    client = ScramClient("SHA-256")
    out_of_order = Failure("malformed-request", "unexpected SASL step")
    assert Scram("SHA-256", NO_TLS, plus=False).respond(client.first()) == out_of_order
    assert isinstance(Scram("SHA-256", NO_TLS, plus=False).credentials(CREDS), Failure)
    mech = Scram("SHA-256", NO_TLS, plus=False)
    mech.start(client.first())
    assert isinstance(mech.start(client.first()), Failure)
    assert isinstance(mech.credentials(CREDS), Failure)  # already failed: stays failed
    mech = Scram("SHA-256", NO_TLS, plus=False)
    assert isinstance(exchange(mech, client), Success)
    assert mech.respond(b"c=biws") == out_of_order
    assert isinstance(mech.credentials(CREDS), Failure)


def test_random_garbage_never_raises() -> None:
    rng = random.Random(5802)
    client = ScramClient("SHA-256", gs2_header="p=tls-server-end-point,a=x,", cb_data=b"\x01" * 32)
    first = client.first()
    for _ in range(300):
        mech = Scram("SHA-256", TLS, plus=True)
        data = bytearray(first)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.choice(b",=\x00\xffanpry")
        step = mech.start(bytes(data))
        if isinstance(step, NeedCredentials):
            challenge = mech.credentials(rng.choice([CREDS, None]))
            assert isinstance(challenge, Challenge)
            final = bytearray(client.final(challenge.data))
            final[rng.randrange(len(final))] = rng.randrange(256)
            step = mech.respond(bytes(final))
        assert isinstance(step, Failure | Success | NeedCredentials)


def test_mechanisms_for_orders_strongest_first() -> None:
    assert mechanisms_for(False, NO_TLS) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
    expected = "SCRAM-SHA-256-PLUS SCRAM-SHA-1-PLUS SCRAM-SHA-256 SCRAM-SHA-1 PLAIN"
    assert mechanisms_for(True, TLS) == expected.split()


def test_create_mechanism_by_name() -> None:
    for name in mechanisms_for(True, TLS):
        mech = create_mechanism(name, TLS)
        assert mech is not None
        assert mech.name == name
        assert mech.expensive_verify == (name == "PLAIN")
    assert create_mechanism("SCRAM-SHA-256-PLUS", NO_TLS) is None
    assert create_mechanism("DIGEST-MD5", TLS) is None
    assert create_mechanism("scram-sha-256", TLS) is None
