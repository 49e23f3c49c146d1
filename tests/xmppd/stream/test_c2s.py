"""RFC 6120 §4-7 c2s negotiation (xmppd/stream/c2s.py) as transcripts: client XML in, actions out.

Tier 1: no event loop and no sockets. Client bytes go through the real StreamParser; the
requests that need I/O (credentials, binding, TLS) are answered by calling the state machine's
`credentials()`, `bound()` and `tls_established()` as the connection would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest
from lxml import etree

from xmppd.ns import NS_BIND, NS_CLIENT, NS_SASL, NS_SASL_CB, NS_SESSION, NS_STREAMS, NS_TLS
from xmppd.sasl import ChannelBindings, derive_all
from xmppd.stream.actions import (
    Action,
    Authenticated,
    AuthFailed,
    BindResource,
    Close,
    Deliver,
    LookupCredentials,
    Nonza,
    PreAuthIq,
    ResetParser,
    Send,
    StartTls,
)
from xmppd.stream.c2s import MAX_SASL_ATTEMPTS, C2SStream, State
from xmppd.stream.parser import StreamParser

DOMAIN = "example.com"
PASSWORD = "pencil and paper"
CREDS = derive_all(PASSWORD)
CB_DATA = b"\x5a" * 32
BINDINGS = ChannelBindings({"tls-server-end-point": CB_DATA}, plus_offered=True)
NS_SM = "urn:xmpp:sm:3"

STARTTLS = f"<starttls xmlns='{NS_TLS}'/>"
ABORT = f"<abort xmlns='{NS_SASL}'/>"
BIND_IQ = (
    f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>balcony</resource></bind></iq>"
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def header(to: str | None = DOMAIN, **attrs: str) -> str:
    """A client stream header; attrs override the defaults (empty values are left out)."""
    values = {
        "xmlns": NS_CLIENT,
        "xmlns:stream": NS_STREAMS,
        "to": to,
        "version": "1.0",
        "xml:lang": "en",
        **attrs,
    }
    rendered = " ".join(f"{k}='{v}'" for k, v in values.items() if v)
    return f"<?xml version='1.0'?><stream:stream {rendered}>"


def auth(mechanism: str, payload: bytes | None = None) -> str:
    text = "" if payload is None else (b64(payload) or "=")
    return f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{text}</auth>"


def response(payload: bytes) -> str:
    return f"<response xmlns='{NS_SASL}'>{b64(payload) or '='}</response>"


def plain(username: str = "juliet", password: str = PASSWORD, authzid: str = "") -> bytes:
    return f"{authzid}\x00{username}\x00{password}".encode()


class ScramClient:
    """A minimal RFC 5802 client: enough to drive the server through a real exchange."""

    def __init__(
        self,
        hash_name: str = "SHA-256",
        username: str = "juliet",
        password: str = PASSWORD,
        *,
        authzid: str | None = None,
        cb_type: str | None = None,
        cb_data: bytes = b"",
    ) -> None:
        self.algorithm = {"SHA-1": "sha1", "SHA-256": "sha256"}[hash_name]
        self.password = password
        flag = f"p={cb_type}" if cb_type else "n"
        self.gs2_header = f"{flag},{f'a={authzid}' if authzid else ''},"
        self.cb_data = cb_data
        self.nonce = "rOprNGfwEbeRWgbNEkqO"
        self.first_bare = f"n={username},r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return (self.gs2_header + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
        assert attrs["r"].startswith(self.nonce)
        assert attrs["r"] != self.nonce  # the server appended its own part
        salted = hashlib.pbkdf2_hmac(
            self.algorithm, self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", self.algorithm)
        stored_key = hashlib.new(self.algorithm, client_key).digest()
        channel = b64(self.gs2_header.encode() + self.cb_data)
        without_proof = f"c={channel},r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, self.algorithm)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self.algorithm)
        self.server_signature = hmac.digest(server_key, auth_message, self.algorithm)
        return f"{without_proof},p={b64(proof)}".encode()


class Transcript:
    """Drives a C2SStream with raw client XML, as C2SConnection does."""

    def __init__(self, stream: C2SStream) -> None:
        self.stream = stream
        self.parser = StreamParser()

    def send(self, xml: str) -> list[Action]:
        actions: list[Action] = []
        for event in self.parser.feed(xml.encode()):
            actions.extend(self.stream.receive(event))
        return self.follow(actions)

    def follow(self, actions: list[Action]) -> list[Action]:
        """Apply the parser resets the connection does for StartTls and ResetParser."""
        if any(isinstance(a, ResetParser | StartTls) for a in actions):
            self.parser.reset()
        return actions

    def open(self, to: str | None = DOMAIN, **attrs: str) -> list[Action]:
        return self.send(header(to, **attrs))

    def starttls(self, bindings: ChannelBindings = BINDINGS) -> None:
        self.open()
        assert kinds(self.send(STARTTLS)) == ["Send", "StartTls"]
        self.stream.tls_established(bindings)

    def login(self, username: str = "juliet") -> list[Action]:
        """Authenticate with PLAIN (the stream must be secure); return the success actions."""
        lookup = self.send(auth("PLAIN", plain(username)))
        assert lookup == [LookupCredentials(username, True)]
        return self.follow(self.stream.credentials(username, CREDS))

    def bind(self) -> None:
        (request,) = self.send(BIND_IQ)
        assert isinstance(request, BindResource)
        self.stream.bound(request.request, f"juliet@{DOMAIN}/balcony")


def make_stream(**kwargs: object) -> C2SStream:
    params: dict[str, object] = {
        "domains": frozenset({DOMAIN, "example.net"}),
        "tls_available": True,
        "secure": False,
    }
    params.update(kwargs)
    return C2SStream(**params)  # type: ignore[arg-type]  # test helper


def secured(**kwargs: object) -> Transcript:
    """A stream after STARTTLS, before its new header."""
    t = Transcript(make_stream(**kwargs))
    t.starttls()
    return t


def negotiating(**kwargs: object) -> Transcript:
    """A secure stream whose features were sent: ready for <auth/>."""
    t = secured(**kwargs)
    t.open()
    return t


def established(**kwargs: object) -> Transcript:
    t = negotiating(**kwargs)
    t.login()
    t.open()
    t.bind()
    assert t.stream.state is State.ESTABLISHED
    return t


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def sent(actions: list[Action]) -> list[etree._Element]:
    """The elements sent (stream headers left out)."""
    return [
        etree.fromstring(a.data)
        for a in actions
        if isinstance(a, Send) and not a.data.startswith(b"<?xml")
    ]


def stream_header(actions: list[Action]) -> etree._Element:
    (data,) = [a.data for a in actions if isinstance(a, Send) and a.data.startswith(b"<?xml")]
    return etree.fromstring(data + b"</stream:stream>")


def features(actions: list[Action]) -> etree._Element:
    (element,) = [e for e in sent(actions) if e.tag == f"{{{NS_STREAMS}}}features"]
    return element


def mechanisms(element: etree._Element) -> list[str]:
    return [
        m.text or "" for m in element.iterfind(f"{{{NS_SASL}}}mechanisms/{{{NS_SASL}}}mechanism")
    ]


def sasl_failure(actions: list[Action]) -> str:
    """The condition of the single SASL <failure/> sent."""
    (failure,) = [e for e in sent(actions) if e.tag == f"{{{NS_SASL}}}failure"]
    (condition,) = [etree.QName(c).localname for c in failure]
    return condition


def stream_error(actions: list[Action]) -> str | None:
    closes = [a for a in actions if isinstance(a, Close)]
    assert len(closes) == 1, actions
    return closes[0].error.condition if closes[0].error else None


# --- stream header and features before TLS ------------------------------------------------------


def test_header_is_answered_with_header_and_features():
    t = Transcript(make_stream())

    actions = t.open()

    assert kinds(actions) == ["Send", "Send"]
    ours = stream_header(actions)
    assert ours.tag == f"{{{NS_STREAMS}}}stream"
    assert ours.get("from") == DOMAIN
    assert ours.get("version") == "1.0"
    assert ours.get("id")
    assert ours.get("to") is None
    assert ours.nsmap[None] == NS_CLIENT
    assert t.stream.state is State.NEGOTIATING
    assert t.stream.domain == DOMAIN


def test_header_from_is_the_requested_domain():
    t = Transcript(make_stream())

    assert stream_header(t.open("example.net")).get("from") == "example.net"


def test_header_to_is_matched_case_insensitively_and_without_trailing_dot():
    t = Transcript(make_stream())

    actions = t.open("Example.COM.")

    assert kinds(actions) == ["Send", "Send"]
    assert t.stream.domain == DOMAIN


def test_features_require_starttls_and_offer_no_mechanisms_before_tls():
    t = Transcript(make_stream(require_encryption=True))

    offered = features(t.open())

    assert [child.tag for child in offered] == [f"{{{NS_TLS}}}starttls"]
    assert [child.tag for child in offered[0]] == [f"{{{NS_TLS}}}required"]
    assert mechanisms(offered) == []


def test_features_offer_optional_starttls_and_scram_when_encryption_not_required():
    t = Transcript(make_stream(require_encryption=False))

    offered = features(t.open())

    starttls = offered.find(f"{{{NS_TLS}}}starttls")
    assert starttls is not None
    assert len(starttls) == 0  # not <required/>
    # RFC 6120 §6.4.4 (and RFC 4616 §5): no PLAIN over an unencrypted stream; no -PLUS without TLS.
    assert mechanisms(offered) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
    assert offered.find(f"{{{NS_SASL_CB}}}sasl-channel-binding") is None


def test_starttls_is_answered_with_proceed_and_restart():
    t = Transcript(make_stream())
    t.open()

    actions = t.send(STARTTLS)

    assert kinds(actions) == ["Send", "StartTls"]
    assert [e.tag for e in sent(actions)] == [f"{{{NS_TLS}}}proceed"]
    assert t.stream.state is State.HEADER


# --- after TLS --------------------------------------------------------------------------------------


def test_features_after_tls_offer_plus_mechanisms_and_channel_binding_types():
    t = secured()
    t.stream.tls_established(
        ChannelBindings({"tls-server-end-point": CB_DATA, "tls-unique": b"u" * 12}, True)
    )

    offered = features(t.open())

    assert offered.find(f"{{{NS_TLS}}}starttls") is None
    assert mechanisms(offered) == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ]
    # XEP-0440: the channel-binding types this connection supports.
    cb = offered.find(f"{{{NS_SASL_CB}}}sasl-channel-binding")
    assert cb is not None
    assert sorted(c.get("type") or "" for c in cb.iterfind(f"{{{NS_SASL_CB}}}channel-binding")) == [
        "tls-server-end-point",
        "tls-unique",
    ]


def test_features_after_tls_without_bindings_offer_no_plus():
    t = Transcript(make_stream())
    t.starttls(ChannelBindings({}, plus_offered=False))

    offered = features(t.open())

    assert mechanisms(offered) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    assert offered.find(f"{{{NS_SASL_CB}}}sasl-channel-binding") is None


def test_features_leave_out_plain_when_disallowed():
    t = secured(allow_plain=False)

    assert "PLAIN" not in mechanisms(features(t.open()))


def test_direct_tls_stream_offers_mechanisms_at_once():
    t = Transcript(make_stream(secure=True))

    offered = features(t.open())

    assert offered.find(f"{{{NS_TLS}}}starttls") is None
    assert mechanisms(offered) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]


# --- SASL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mechanism", "client"),
    [
        ("SCRAM-SHA-256", lambda: ScramClient("SHA-256")),
        ("SCRAM-SHA-1", lambda: ScramClient("SHA-1")),
        (
            "SCRAM-SHA-256-PLUS",
            lambda: ScramClient("SHA-256", cb_type="tls-server-end-point", cb_data=CB_DATA),
        ),
    ],
)
def test_scram_exchange_authenticates(mechanism: str, client: Callable[[], ScramClient]):
    t = negotiating()
    scram = client()

    lookup = t.send(auth(mechanism, scram.first()))
    assert lookup == [LookupCredentials("juliet", False)]
    assert t.stream.state is State.SASL

    challenge_actions = t.stream.credentials("juliet", CREDS)
    (challenge,) = sent(challenge_actions)
    assert challenge.tag == f"{{{NS_SASL}}}challenge"

    final = t.send(response(scram.final(base64.b64decode(challenge.text or ""))))

    assert kinds(final) == ["Send", "Authenticated", "ResetParser"]
    (success,) = sent(final)
    assert success.tag == f"{{{NS_SASL}}}success"
    # RFC 5802 §5.1: the server proves it knows the password too.
    assert base64.b64decode(success.text or "") == b"v=" + b64(scram.server_signature).encode()
    assert final[1] == Authenticated("juliet")
    assert t.stream.authenticated
    assert t.stream.state is State.HEADER


def test_scram_without_initial_response_starts_with_empty_challenge():
    t = negotiating()
    scram = ScramClient()

    first = t.send(auth("SCRAM-SHA-256"))
    (challenge,) = sent(first)
    assert challenge.tag == f"{{{NS_SASL}}}challenge"
    assert not challenge.text

    assert t.send(response(scram.first())) == [LookupCredentials("juliet", False)]


def test_plain_authenticates_with_expensive_lookup():
    t = negotiating()

    lookup = t.send(auth("PLAIN", plain()))
    assert lookup == [LookupCredentials("juliet", True)]

    actions = t.stream.credentials("juliet", CREDS)

    assert kinds(actions) == ["Send", "Authenticated", "ResetParser"]
    (success,) = sent(actions)
    assert success.tag == f"{{{NS_SASL}}}success"
    assert not success.text


def test_plain_with_own_authzid_authenticates():
    t = negotiating()
    t.send(auth("PLAIN", plain(authzid=f"juliet@{DOMAIN}")))

    assert Authenticated("juliet") in t.stream.credentials("juliet", CREDS)


def test_wrong_password_fails_not_authorized_and_is_recorded():
    t = negotiating()
    scram = ScramClient(password="wrong password")
    t.send(auth("SCRAM-SHA-256", scram.first()))
    (challenge,) = sent(t.stream.credentials("juliet", CREDS))

    actions = t.send(response(scram.final(base64.b64decode(challenge.text or ""))))

    assert kinds(actions) == ["Send", "AuthFailed"]
    assert sasl_failure(actions) == "not-authorized"
    assert actions[1] == AuthFailed("juliet")
    assert not t.stream.authenticated
    assert t.stream.state is State.NEGOTIATING  # RFC 6120 §6.4.5: the client may retry


def test_unknown_account_fails_like_wrong_password():
    t = negotiating()
    t.send(auth("PLAIN", plain("nobody")))

    actions = t.stream.credentials("nobody", None)

    assert sasl_failure(actions) == "not-authorized"
    assert AuthFailed("nobody") in actions


def test_username_that_does_not_prepare_fails_not_authorized():
    t = negotiating()
    t.send(auth("PLAIN", plain("bad@name")))

    actions = t.stream.credentials(None, None)

    assert sasl_failure(actions) == "not-authorized"
    assert AuthFailed(None) in actions


def test_retry_after_failure_can_succeed():
    t = negotiating()
    t.send(auth("PLAIN", plain(password="nope")))
    assert sasl_failure(t.stream.credentials("juliet", CREDS)) == "not-authorized"

    assert Authenticated("juliet") in t.login()


def test_authzid_of_another_user_is_invalid_authzid():
    t = negotiating()
    t.send(auth("PLAIN", plain(authzid=f"romeo@{DOMAIN}")))

    actions = t.stream.credentials("juliet", CREDS)

    assert sasl_failure(actions) == "invalid-authzid"
    assert not any(isinstance(a, Authenticated | AuthFailed) for a in actions)
    assert not t.stream.authenticated


def test_scram_authzid_of_another_user_is_invalid_authzid():
    t = negotiating()
    scram = ScramClient(authzid=f"romeo@{DOMAIN}")
    t.send(auth("SCRAM-SHA-256", scram.first()))
    (challenge,) = sent(t.stream.credentials("juliet", CREDS))

    actions = t.send(response(scram.final(base64.b64decode(challenge.text or ""))))

    assert sasl_failure(actions) == "invalid-authzid"
    assert not t.stream.authenticated


def test_own_authzid_is_compared_after_preparation():
    # RFC 7622 §3: JIDs are compared in their prepared form; this is juliet's own JID.
    t = negotiating()
    t.send(auth("PLAIN", plain(username="Juliet", authzid="Juliet@Example.COM")))

    assert Authenticated("juliet") in t.stream.credentials("juliet", CREDS)


def test_auth_with_unoffered_plain_is_invalid_mechanism():
    t = negotiating(allow_plain=False)

    actions = t.send(auth("PLAIN", plain()))

    assert kinds(actions) == ["Send"]
    assert sasl_failure(actions) == "invalid-mechanism"
    assert t.stream.state is State.NEGOTIATING


@pytest.mark.parametrize("mechanism", ["DIGEST-MD5", "scram-sha-256", ""])
def test_auth_with_unknown_mechanism_is_invalid_mechanism(mechanism: str):
    t = negotiating()

    assert sasl_failure(t.send(auth(mechanism, b"x"))) == "invalid-mechanism"


def test_auth_with_plus_mechanism_without_channel_binding_is_invalid_mechanism():
    t = secured()
    t.stream.tls_established(ChannelBindings({}, plus_offered=False))
    t.open()

    assert sasl_failure(t.send(auth("SCRAM-SHA-256-PLUS", b"p=tls-unique,,n=j,r=x"))) == (
        "invalid-mechanism"
    )


def test_auth_before_tls_is_encryption_required():
    t = Transcript(make_stream(require_encryption=True))
    t.open()

    actions = t.send(auth("SCRAM-SHA-256", ScramClient().first()))

    assert sasl_failure(actions) == "encryption-required"
    assert not any(isinstance(a, LookupCredentials) for a in actions)


def test_auth_without_tls_is_allowed_when_encryption_not_required():
    t = Transcript(make_stream(require_encryption=False))
    t.open()

    assert t.send(auth("SCRAM-SHA-256", ScramClient().first())) == [
        LookupCredentials("juliet", False)
    ]


def test_auth_with_invalid_base64_is_incorrect_encoding():
    t = negotiating()

    actions = t.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>not*base64!</auth>")

    assert sasl_failure(actions) == "incorrect-encoding"
    assert t.stream.state is State.NEGOTIATING


def test_response_with_invalid_base64_is_incorrect_encoding():
    t = negotiating()
    t.send(auth("SCRAM-SHA-256"))

    actions = t.send(f"<response xmlns='{NS_SASL}'>%%%</response>")

    assert sasl_failure(actions) == "incorrect-encoding"
    assert t.stream.state is State.NEGOTIATING


def test_auth_with_equals_sign_is_an_empty_initial_response():
    # RFC 6120 §6.4.2: "=" is a present but empty response, unlike an empty element.
    t = negotiating()

    actions = t.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>=</auth>")

    assert sasl_failure(actions) == "malformed-request"


def test_abort_ends_exchange_with_aborted():
    t = negotiating()
    t.send(auth("SCRAM-SHA-256"))

    actions = t.send(ABORT)

    assert kinds(actions) == ["Send"]
    assert sasl_failure(actions) == "aborted"
    assert t.stream.state is State.NEGOTIATING
    assert t.stream.credentials("juliet", CREDS) == []  # the old exchange is gone


def test_too_many_failures_close_with_policy_violation():
    t = negotiating()
    for _ in range(MAX_SASL_ATTEMPTS - 1):
        t.send(auth("PLAIN", plain(password="nope")))
        actions = t.stream.credentials("juliet", CREDS)
        assert not any(isinstance(a, Close) for a in actions)

    t.send(auth("PLAIN", plain(password="nope")))
    actions = t.stream.credentials("juliet", CREDS)

    assert kinds(actions) == ["Send", "AuthFailed", "Close"]
    assert sasl_failure(actions) == "not-authorized"
    assert stream_error(actions) == "policy-violation"
    assert t.stream.state is State.CLOSED
    assert t.send(auth("PLAIN", plain())) == []


def test_every_kind_of_failure_counts_towards_the_limit():
    t = negotiating(allow_plain=False)
    results = [t.send(auth("PLAIN", plain())) for _ in range(MAX_SASL_ATTEMPTS)]

    assert all(sasl_failure(r) == "invalid-mechanism" for r in results)
    assert stream_error(results[-1]) == "policy-violation"


def test_starttls_when_already_secure_fails_and_closes():
    t = negotiating()

    actions = t.send(STARTTLS)

    assert kinds(actions) == ["Send", "Close"]
    assert [e.tag for e in sent(actions)] == [f"{{{NS_TLS}}}failure"]
    assert stream_error(actions) is None  # RFC 6120 §5.4.2.2: <failure/>, then close
    assert t.stream.state is State.CLOSED


def test_starttls_without_tls_available_fails_and_closes():
    t = Transcript(make_stream(tls_available=False, require_encryption=False))
    assert features(t.open()).find(f"{{{NS_TLS}}}starttls") is None

    actions = t.send(STARTTLS)

    assert [e.tag for e in sent(actions)] == [f"{{{NS_TLS}}}failure"]
    assert stream_error(actions) is None


def test_sasl_element_outside_exchange_closes_stream():
    t = negotiating()

    actions = t.send(response(b"x"))

    assert stream_error(actions) == "unsupported-stanza-type"
    assert t.stream.state is State.CLOSED


def test_credentials_without_exchange_do_nothing():
    t = negotiating()

    assert t.stream.credentials("juliet", CREDS) == []
    assert not t.stream.authenticated


# --- resource binding -------------------------------------------------------------------------


def test_authenticated_restart_offers_bind_and_optional_session():
    extra = etree.Element(f"{{{NS_SM}}}sm", nsmap={None: NS_SM})
    t = negotiating(post_auth_features=lambda: [extra])
    t.login()

    actions = t.open()

    offered = features(actions)
    assert [c.tag for c in offered] == [
        f"{{{NS_BIND}}}bind",
        f"{{{NS_SESSION}}}session",
        f"{{{NS_SM}}}sm",
    ]
    assert [c.tag for c in offered[1]] == [f"{{{NS_SESSION}}}optional"]
    assert mechanisms(offered) == []
    assert t.stream.state is State.BIND


def test_bind_request_leaves_as_bind_resource():
    t = negotiating()
    t.login()
    t.open()

    (request,) = t.send(BIND_IQ)

    assert isinstance(request, BindResource)
    assert request.resource == "balcony"
    assert request.request.get("id") == "bind1"


def test_bind_without_resource_asks_for_server_generated_one():
    t = negotiating()
    t.login()
    t.open()

    (request,) = t.send(f"<iq type='set' id='b2'><bind xmlns='{NS_BIND}'/></iq>")

    assert isinstance(request, BindResource)
    assert request.resource is None


def test_bound_answers_with_jid_and_establishes():
    t = negotiating()
    t.login()
    t.open()
    (request,) = t.send(BIND_IQ)
    assert isinstance(request, BindResource)

    actions = t.stream.bound(request.request, f"juliet@{DOMAIN}/balcony")

    (reply,) = sent(actions)
    assert reply.tag == f"{{{NS_CLIENT}}}iq"
    assert reply.get("type") == "result"
    assert reply.get("id") == "bind1"
    assert reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid") == f"juliet@{DOMAIN}/balcony"
    assert t.stream.state is State.ESTABLISHED


def test_bind_get_is_bad_request():
    t = negotiating()
    t.login()
    t.open()

    actions = t.send(f"<iq type='get' id='b3'><bind xmlns='{NS_BIND}'/></iq>")

    (reply,) = sent(actions)
    assert reply.get("type") == "error"
    assert reply.get("id") == "b3"
    assert (
        reply.find(f"{{{NS_CLIENT}}}error/{{urn:ietf:params:xml:ns:xmpp-stanzas}}bad-request")
        is not None
    )
    assert t.stream.state is State.BIND


def test_bind_failed_answers_with_error_and_stays_in_bind():
    t = negotiating()
    t.login()
    t.open()
    (request,) = t.send(BIND_IQ)
    assert isinstance(request, BindResource)

    (reply,) = sent(t.stream.bind_failed(request.request, "conflict", "cancel"))

    error = reply.find(f"{{{NS_CLIENT}}}error")
    assert error is not None
    assert error.get("type") == "cancel"
    assert [etree.QName(c).localname for c in error] == ["conflict"]
    assert t.stream.state is State.BIND


def test_nonza_before_bind_is_handed_over():
    t = negotiating()
    t.login()
    t.open()

    (action,) = t.send(f"<enable xmlns='{NS_SM}'/>")

    assert isinstance(action, Nonza)
    assert action.element.tag == f"{{{NS_SM}}}enable"


def test_stanza_before_bind_closes_not_authorized():
    t = negotiating()
    t.login()
    t.open()

    actions = t.send("<message to='romeo@example.net'><body>hi</body></message>")

    assert stream_error(actions) == "not-authorized"
    assert not any(isinstance(a, Deliver) for a in actions)


@pytest.mark.parametrize(
    "stanza",
    [
        "<message to='romeo@example.net'><body>hi</body></message>",
        "<presence/>",
        "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
        BIND_IQ,
    ],
)
def test_stanza_before_authentication_closes_not_authorized(stanza: str):
    t = negotiating()

    actions = t.send(stanza)

    assert kinds(actions) == ["Close"]
    assert stream_error(actions) == "not-authorized"
    assert t.stream.state is State.CLOSED


# --- established stream ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stanza", "kind"),
    [
        ("<message to='romeo@example.net' type='chat'><body>hi</body></message>", "message"),
        ("<presence><show>away</show></presence>", "presence"),
        ("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>", "iq"),
    ],
)
def test_stanzas_are_delivered_once_established(stanza: str, kind: str):
    t = established()

    (action,) = t.send(stanza)

    assert isinstance(action, Deliver)
    assert action.element.tag == f"{{{NS_CLIENT}}}{kind}"


def test_legacy_session_iq_is_answered_with_empty_result():
    t = established()

    actions = t.send(f"<iq type='set' id='sess1'><session xmlns='{NS_SESSION}'/></iq>")

    (reply,) = sent(actions)
    assert kinds(actions) == ["Send"]
    assert reply.tag == f"{{{NS_CLIENT}}}iq"
    assert dict(reply.attrib) == {"type": "result", "id": "sess1"}
    assert len(reply) == 0


def test_non_client_namespace_element_is_a_nonza():
    t = established()

    (action,) = t.send(f"<r xmlns='{NS_SM}'/>")

    assert isinstance(action, Nonza)
    assert action.element.tag == f"{{{NS_SM}}}r"


def test_unknown_client_namespace_element_closes_unsupported_stanza_type():
    t = established()

    actions = t.send("<note><body>x</body></note>")

    assert kinds(actions) == ["Close"]
    assert stream_error(actions) == "unsupported-stanza-type"
    assert t.stream.state is State.CLOSED
    assert t.send("<message><body>late</body></message>") == []


def test_stream_close_closes_without_error():
    t = established()

    actions = t.send("</stream:stream>")

    assert actions == [Close()]
    assert t.stream.state is State.CLOSED


# --- stream header errors (RFC 6120 §4.9.3) ----------------------------------------------------


@pytest.mark.parametrize(
    ("client_header", "condition"),
    [
        (header(**{"xmlns:stream": "http://example.com/streams"}), "invalid-namespace"),
        (header(xmlns="jabber:server"), "invalid-namespace"),
        (header(xmlns="urn:example:wrong"), "invalid-namespace"),
        (header("example.org"), "host-unknown"),
        (header(None), "host-unknown"),
        (header(version=""), "unsupported-version"),
        (header(version="0.9"), "unsupported-version"),
    ],
    ids=[
        "stream-ns",
        "server-ns",
        "other-ns",
        "unknown-to",
        "missing-to",
        "missing-version",
        "old-version",
    ],
)
def test_bad_header_gets_our_header_then_stream_error(client_header: str, condition: str):
    t = Transcript(make_stream())

    actions = t.send(client_header)

    # RFC 6120 §4.9.1.1: even when refusing, the receiving entity first sends its own header.
    assert kinds(actions) == ["Send", "Close"]
    assert stream_header(actions).get("from") in (DOMAIN, "example.net")
    assert stream_error(actions) == condition
    assert t.stream.state is State.CLOSED
    assert t.stream.header_sent


def test_later_minor_version_is_accepted():
    t = Transcript(make_stream())

    assert kinds(t.open(version="1.1")) == ["Send", "Send"]


def test_restart_to_another_domain_is_host_unknown():
    t = secured()

    actions = t.open("example.net")

    assert stream_error(actions) == "host-unknown"


def test_each_stream_gets_a_new_id():
    t = negotiating()
    ids = [t.stream.stream_id]
    t.login()
    ids.append(stream_header(t.open()).get("id") or "")

    assert len(set(ids)) == 2
    assert all(ids)


# --- header_sent ---------------------------------------------------------------------------------


def test_header_sent_tracks_our_header_per_stream():
    stream = make_stream()
    t = Transcript(stream)
    assert not stream.header_sent

    t.open()
    assert stream.header_sent

    t.send(STARTTLS)
    assert not stream.header_sent  # the stream restarts after TLS
    stream.tls_established(BINDINGS)
    assert not stream.header_sent

    t.open()
    assert stream.header_sent

    t.login()
    assert not stream.header_sent  # restart after SASL success (RFC 6120 §6.4.6)

    t.open()
    assert stream.header_sent


def test_early_header_for_stream_error_marks_header_sent():
    stream = make_stream()

    data = stream.header()

    assert stream.header_sent
    assert data.startswith(b"<?xml version='1.0'?><stream:stream ")
    assert f"from='{min(stream.domains)}'".encode() in data


# --- pre-authentication IQs (XEP-0077 in-band registration) ---------------------------------

NS_IQ_REGISTER = "http://jabber.org/features/iq-register"
REGISTER_GET = "<iq type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>"


def register_feature(domain: str) -> list[etree._Element]:
    assert domain == DOMAIN
    return [etree.Element(f"{{{NS_IQ_REGISTER}}}register", nsmap={None: NS_IQ_REGISTER})]


def test_pre_auth_features_are_offered_over_tls_after_mechanisms():
    t = secured(pre_auth_features=register_feature)

    offered = features(t.open())

    assert [etree.QName(c).localname for c in offered][-1] == "register"
    assert offered.find(f"{{{NS_IQ_REGISTER}}}register") is not None
    assert mechanisms(offered)


def test_pre_auth_features_are_not_offered_in_plaintext():
    t = Transcript(make_stream(pre_auth_features=register_feature, require_encryption=False))

    offered = features(t.open())

    assert offered.find(f"{{{NS_IQ_REGISTER}}}register") is None
    assert mechanisms(offered)  # SASL is offered: only registration waits for TLS


def test_pre_auth_features_are_not_offered_after_authentication():
    t = negotiating(pre_auth_features=register_feature)
    t.login()

    offered = features(t.open())

    assert offered.find(f"{{{NS_IQ_REGISTER}}}register") is None


def test_pre_auth_iq_over_tls_leaves_as_pre_auth_action():
    t = negotiating(pre_auth_features=register_feature)

    (action,) = t.send(REGISTER_GET)

    assert isinstance(action, PreAuthIq)
    assert action.element.get("id") == "reg1"
    assert t.stream.state is State.NEGOTIATING  # SASL may follow


def test_pre_auth_iq_in_plaintext_closes_not_authorized():
    t = Transcript(make_stream(pre_auth_features=register_feature, require_encryption=False))
    t.open()

    assert stream_error(t.send(REGISTER_GET)) == "not-authorized"


def test_pre_auth_iq_without_pre_auth_support_closes_not_authorized():
    t = negotiating()

    assert stream_error(t.send(REGISTER_GET)) == "not-authorized"


@pytest.mark.parametrize(
    "stanza",
    [
        "<iq type='result' id='r1'/>",
        "<iq type='get' id='r2'/>",
        "<message><body>hi</body></message>",
        "<presence/>",
    ],
)
def test_other_stanzas_before_authentication_still_close_with_pre_auth(stanza: str):
    t = negotiating(pre_auth_features=register_feature)

    assert stream_error(t.send(stanza)) == "not-authorized"


def test_pre_auth_iq_during_sasl_exchange_closes():
    t = negotiating(pre_auth_features=register_feature)
    t.send(auth("SCRAM-SHA-256", ScramClient().first()))

    assert stream_error(t.send(REGISTER_GET)) == "not-authorized"
