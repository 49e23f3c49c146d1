"""RFC 6120 §4-7 client-to-server stream negotiation as a sans-I/O state machine.

Theory of operation. `receive(event)` takes parser events and returns `Action`s; requests that
need I/O (credential lookup, resource binding) leave as actions and come back through
`credentials()`, `bound()` / `bind_failed()`; `tls_established()` reports the handshake.

States:
  HEADER       waiting for a stream header (initial, after STARTTLS, after SASL success)
  NEGOTIATING  header answered with features; expecting <starttls/> or <auth/>
  SASL         a SASL exchange is in progress (<response/> / <abort/> expected)
  BIND         authenticated stream restarted; only the bind IQ (or nonzas such as
               XEP-0198 <resume/>) is accepted (RFC 6120 §7)
  ESTABLISHED  stanzas are delivered
  CLOSED       nothing more is accepted
Any stanza before ESTABLISHED gets the stream error <not-authorized/> and nothing is routed,
with one exception: when the connection wires up `pre_auth_features` (a host's offers before
authentication, such as XEP-0077 in-band registration), an IQ get/set received over TLS while
NEGOTIATING leaves as a `PreAuthIq` action for the connection to answer.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from enum import Enum

from lxml import etree

from xmppd import ns
from xmppd.errors import StreamError
from xmppd.jid import JID, JIDError
from xmppd.sasl import (
    Challenge,
    ChannelBindings,
    Failure,
    Mechanism,
    NeedCredentials,
    SaslStep,
    StoredCredentials,
    Success,
    create_mechanism,
    mechanisms_for,
)
from xmppd.stanza import IQ, STANZA_TAGS
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
from xmppd.stream.parser import ElementReceived, ParseEvent, StreamClosed, StreamOpened
from xmppd.stream.serializer import serialize, stream_header

STREAM_TAG = f"{{{ns.NS_STREAMS}}}stream"
STARTTLS = f"{{{ns.NS_TLS}}}starttls"
SASL_AUTH = f"{{{ns.NS_SASL}}}auth"
SASL_RESPONSE = f"{{{ns.NS_SASL}}}response"
SASL_ABORT = f"{{{ns.NS_SASL}}}abort"
BIND = f"{{{ns.NS_BIND}}}bind"
SESSION = f"{{{ns.NS_SESSION}}}session"
MAX_SASL_ATTEMPTS = 5
# Serialised pre-authentication features by (secure, tls, required, mechanisms, cb types):
# a handful of combinations per server, so the cache stays tiny.
_FEATURES_CACHE: dict[tuple[object, ...], bytes] = {}
_NO_BINDINGS = ChannelBindings({}, plus_offered=False)


class State(Enum):
    """Negotiation states (see module docstring)."""

    HEADER = "header"
    NEGOTIATING = "negotiating"
    SASL = "sasl"
    BIND = "bind"
    ESTABLISHED = "established"
    CLOSED = "closed"


def _el(tag: str, nsuri: str) -> etree._Element:
    return etree.Element(f"{{{nsuri}}}{tag}", nsmap={None: nsuri})


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    ns_uri = etree.QName(parent).namespace
    child = etree.SubElement(parent, f"{{{ns_uri}}}{tag}")
    if text is not None:
        child.text = text
    return child


class C2SStream:
    """One client stream's negotiation state."""

    __slots__ = (
        "_attempts",
        "_mech",
        "_offered",
        "allow_plain",
        "authenticated",
        "bindings",
        "domain",
        "domains",
        "header_sent",
        "post_auth_features",
        "pre_auth_features",
        "require_encryption",
        "secure",
        "state",
        "stream_id",
        "tls_available",
        "username",
    )

    def __init__(
        self,
        *,
        domains: frozenset[str],
        tls_available: bool,
        secure: bool,
        require_encryption: bool = True,
        allow_plain: bool = True,
        post_auth_features: Callable[[], list[etree._Element]] = list,
        pre_auth_features: Callable[[str], list[etree._Element]] | None = None,
    ) -> None:
        self.domains = domains
        self.tls_available = tls_available
        self.secure = secure  # TLS in place (direct TLS from the start, or after STARTTLS)
        self.require_encryption = require_encryption
        self.allow_plain = allow_plain
        self.post_auth_features = post_auth_features
        # None: nothing is offered before authentication and no pre-auth IQ is accepted.
        self.pre_auth_features = pre_auth_features
        self.state = State.HEADER
        self.header_sent = False  # our header for the current stream (reset on restarts)
        self.domain: str | None = None
        self.stream_id = ""
        self.username: str | None = None  # prepared, once known
        self.authenticated = False
        self.bindings = _NO_BINDINGS
        self._mech: Mechanism | None = None
        self._offered: list[str] = []
        self._attempts = 0

    # --- inputs -------------------------------------------------------------------------
    def receive(self, event: ParseEvent) -> list[Action]:
        """Process one parser event."""
        if self.state is State.CLOSED:
            return []
        if isinstance(event, StreamOpened):
            return self._header(event)
        if isinstance(event, StreamClosed):
            self.state = State.CLOSED
            return [Close()]
        return self._element(event)

    def tls_established(self, bindings: ChannelBindings) -> None:
        """The TLS handshake finished; the client now restarts the stream (RFC 6120 §5.4.3.3)."""
        self.secure = True
        self.bindings = bindings
        self.state = State.HEADER
        self.header_sent = False

    def credentials(self, username: str | None, creds: StoredCredentials | None) -> list[Action]:
        """Result of a LookupCredentials: the prepared username (None if it did not prep)."""
        if self._mech is None:
            return []
        self.username = username
        return self._sasl_step(self._mech.credentials(creds if username else None))

    def bound(self, request: etree._Element, jid: str) -> list[Action]:
        """The resource was bound: answer the bind IQ and start routing stanzas."""
        reply = etree.Element(IQ, type="result", nsmap={None: ns.NS_CLIENT})
        if request.get("id") is not None:
            reply.set("id", request.get("id") or "")
        bind = etree.SubElement(reply, BIND, nsmap={None: ns.NS_BIND})
        etree.SubElement(bind, f"{{{ns.NS_BIND}}}jid").text = jid
        self.state = State.ESTABLISHED
        return [Send(serialize(reply))]

    def bind_failed(self, request: etree._Element, condition: str, type_: str) -> list[Action]:
        """Binding was refused (RFC 6120 §7.6.2): answer the IQ with an error."""
        reply = etree.Element(IQ, type="error", nsmap={None: ns.NS_CLIENT})
        if request.get("id") is not None:
            reply.set("id", request.get("id") or "")
        error = etree.SubElement(reply, f"{{{ns.NS_CLIENT}}}error", type=type_)
        etree.SubElement(error, f"{{{ns.NS_STANZAS}}}{condition}", nsmap={None: ns.NS_STANZAS})
        return [Send(serialize(reply))]

    # --- stream header ------------------------------------------------------------------
    def _header(self, event: StreamOpened) -> list[Action]:
        to = event.attrs.get("to", "").lower().rstrip(".")
        domain = self.domain or (to if to in self.domains else min(self.domains))
        # RFC 6120 §4.9.1.1: even when refusing, first send our own stream header.
        out: list[Action] = [Send(self.header(domain))]
        error = None
        if event.tag != STREAM_TAG:
            error = StreamError("invalid-namespace", "the stream namespace must be streams")
        elif event.default_ns != ns.NS_CLIENT:
            error = StreamError("invalid-namespace", "the content namespace must be jabber:client")
        elif to not in self.domains or (self.domain is not None and to != self.domain):
            error = StreamError("host-unknown", "this server does not serve that domain")
        elif not _version_ok(event.attrs.get("version")):
            error = StreamError("unsupported-version", "XMPP 1.0 or later is required")
        if error is not None:
            self.state = State.CLOSED
            return [*out, Close(error)]
        self.domain = to
        out.append(Send(self._features_bytes()))
        self.state = State.BIND if self.authenticated else State.NEGOTIATING
        return out

    def header(self, domain: str | None = None) -> bytes:
        """Our stream header for the current stream (also used before an early stream error)."""
        self.stream_id = secrets.token_urlsafe(12)
        self.header_sent = True
        domain = domain or self.domain or min(self.domains)
        return stream_header(from_=domain, to=None, id_=self.stream_id, version="1.0")

    def _features_bytes(self) -> bytes:
        """Serialised features; the pre-authentication ones depend only on a few flags and are
        built once per combination (a login goes through two of them)."""
        if self.authenticated:
            return serialize(self._features())
        if self.secure or not (self.tls_available and self.require_encryption):
            self.bindings = ChannelBindings(
                self.bindings.data, plus_offered=bool(self.bindings.data)
            )
            self._offered = [
                m
                for m in mechanisms_for(self.secure, self.bindings)
                if m != "PLAIN" or self.allow_plain
            ]
        extra = self._pre_auth_extra()
        key = (
            self.secure,
            self.tls_available,
            self.require_encryption,
            tuple(self._offered),
            tuple(self.bindings.data),
            tuple(serialize(e) for e in extra),
        )
        cached = _FEATURES_CACHE.get(key)
        if cached is None:
            cached = _FEATURES_CACHE[key] = serialize(self._features(extra))
        return cached

    def _pre_auth_extra(self) -> list[etree._Element]:
        """Features a host offers before authentication: over TLS only."""
        if self.pre_auth_features is None or not self.secure or self.domain is None:
            return []
        return self.pre_auth_features(self.domain)

    def _features(self, extra: list[etree._Element] | None = None) -> etree._Element:
        features = etree.Element(f"{{{ns.NS_STREAMS}}}features", nsmap={"stream": ns.NS_STREAMS})
        if self.authenticated:
            features.append(_el("bind", ns.NS_BIND))
            session = _el("session", ns.NS_SESSION)  # RFC 3921 legacy, optional (RFC 6121 App. E)
            _sub(session, "optional")
            features.append(session)
            features.extend(self.post_auth_features())
            return features
        if not self.secure and self.tls_available:
            starttls = _el("starttls", ns.NS_TLS)
            if self.require_encryption:
                _sub(starttls, "required")
            features.append(starttls)
            if self.require_encryption:
                return features
        mechanisms = _el("mechanisms", ns.NS_SASL)
        for name in self._offered:
            _sub(mechanisms, "mechanism", name)
        features.append(mechanisms)
        if self.bindings.data:
            # XEP-0440: advertise the channel-binding types this connection supports.
            cb = _el("sasl-channel-binding", ns.NS_SASL_CB)
            for cb_type in self.bindings.data:
                _sub(cb, "channel-binding").set("type", cb_type)
            features.append(cb)
        features.extend(extra or ())
        return features

    # --- top-level elements -------------------------------------------------------------
    def _element(self, event: ElementReceived) -> list[Action]:
        element = event.element
        tag = element.tag
        state = self.state
        if state is State.ESTABLISHED:
            if tag in STANZA_TAGS:
                if is_session_iq(element):
                    return [Send(serialize(_empty_result(element)))]
                return [Deliver(element)]
            if isinstance(tag, str) and etree.QName(tag).namespace != ns.NS_CLIENT:
                return [Nonza(element)]
            return self._close("unsupported-stanza-type")
        if tag in STANZA_TAGS:
            if state is State.BIND and tag == IQ and _child_tag(element) == BIND:
                return self._bind(element)
            if (
                state is State.NEGOTIATING
                and tag == IQ
                and self.secure
                and self.pre_auth_features is not None
                and element.get("type") in ("get", "set")
                and _child_tag(element) is not None
            ):
                # e.g. XEP-0077 registration: answered by the host, never routed.
                return [PreAuthIq(element)]
            # Stanzas before authentication and binding are never routed.
            return self._close("not-authorized", "authenticate and bind a resource first")
        if state is State.BIND:
            return [Nonza(element)]
        if state is State.NEGOTIATING:
            if tag == STARTTLS:
                return self._starttls()
            if tag == SASL_AUTH:
                return self._auth(element)
        elif state is State.SASL:
            if tag == SASL_RESPONSE:
                data = self._decode(element)
                if data is None or self._mech is None:
                    return self._sasl_step(Failure("incorrect-encoding"))
                return self._sasl_step(self._mech.respond(data))
            if tag == SASL_ABORT:
                return self._sasl_step(Failure("aborted"))
        return self._close("unsupported-stanza-type", "not expected at this point")

    def _starttls(self) -> list[Action]:
        if self.secure or not self.tls_available:
            failure = _el("failure", ns.NS_TLS)
            self.state = State.CLOSED
            return [Send(serialize(failure)), Close()]
        self.state = State.HEADER
        self.header_sent = False
        return [Send(serialize(_el("proceed", ns.NS_TLS))), StartTls()]

    def _auth(self, element: etree._Element) -> list[Action]:
        if not self.secure and self.require_encryption:
            return self._sasl_failure("encryption-required")
        name = element.get("mechanism", "")
        mech = create_mechanism(name, self.bindings) if name in self._offered else None
        if mech is None:
            return self._sasl_failure("invalid-mechanism")
        data = self._decode(element)
        if data is None:
            return self._sasl_failure("incorrect-encoding")
        self._mech = mech
        self.state = State.SASL
        # RFC 6120 §6.4.2: no initial response -> element empty; "=" -> empty response.
        return self._sasl_step(mech.start(data if (element.text or "").strip() else None))

    def _sasl_step(self, step: SaslStep) -> list[Action]:
        if isinstance(step, Challenge):
            challenge = _el("challenge", ns.NS_SASL)
            challenge.text = base64.b64encode(step.data).decode("ascii")
            return [Send(serialize(challenge))]
        if isinstance(step, NeedCredentials):
            return [
                LookupCredentials(step.username, bool(self._mech and self._mech.expensive_verify))
            ]
        if isinstance(step, Success):
            username = self.username
            if username is None:  # pragma: no cover - a mechanism never succeeds unlooked-up
                return self._sasl_failure("not-authorized")
            if step.authzid and not self._own_authzid(step.authzid, username):
                # RFC 6120 §6.4.6: we do not let one user act as another.
                return self._sasl_failure("invalid-authzid")
            success = _el("success", ns.NS_SASL)
            if step.additional_data:
                success.text = base64.b64encode(step.additional_data).decode("ascii")
            self.authenticated = True
            self._mech = None
            # Negotiation state is not needed any more: keep idle sessions small.
            self.bindings = _NO_BINDINGS
            self._offered = []
            self.state = State.HEADER
            self.header_sent = False
            return [Send(serialize(success)), Authenticated(username), ResetParser()]
        assert isinstance(step, Failure)
        return self._sasl_failure(step.condition, record=step.condition == "not-authorized")

    def _own_authzid(self, authzid: str, username: str) -> bool:
        """Whether the authzid names the authenticated account itself (compared prepared)."""
        try:
            return JID.parse(authzid) == JID(username, self.domain or "", None)
        except JIDError:
            return False

    def _sasl_failure(self, condition: str, *, record: bool = False) -> list[Action]:
        failure = _el("failure", ns.NS_SASL)
        _sub(failure, condition)
        self._mech = None
        self.state = State.NEGOTIATING
        self._attempts += 1
        out: list[Action] = [Send(serialize(failure))]
        if record:
            out.append(AuthFailed(self.username))
        self.username = None
        if self._attempts >= MAX_SASL_ATTEMPTS:
            # RFC 6120 §6.4.5: the server may limit retries; then close the stream.
            out.extend(self._close("policy-violation", "too many failed authentication attempts"))
        return out

    @staticmethod
    def _decode(element: etree._Element) -> bytes | None:
        text = (element.text or "").strip()
        if text == "=":
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None

    def _bind(self, iq: etree._Element) -> list[Action]:
        if iq.get("type") != "set":
            return self.bind_failed(iq, "bad-request", "modify")
        bind = iq[0]
        resource = bind.findtext(f"{{{ns.NS_BIND}}}resource")
        return [BindResource(resource.strip() if resource else None, iq)]

    def _close(self, condition: str, text: str | None = None) -> list[Action]:
        self.state = State.CLOSED
        return [Close(StreamError(condition, text))]


def is_session_iq(element: etree._Element) -> bool:
    """An RFC 3921 legacy session establishment request (answered by the stream itself)."""
    return element.tag == IQ and element.get("type") == "set" and _child_tag(element) == SESSION


def _child_tag(element: etree._Element) -> str | None:
    return element[0].tag if len(element) == 1 and isinstance(element[0].tag, str) else None


def _empty_result(iq: etree._Element) -> etree._Element:
    reply = etree.Element(IQ, type="result", nsmap={None: ns.NS_CLIENT})
    if iq.get("id") is not None:
        reply.set("id", iq.get("id") or "")
    return reply


def _version_ok(version: str | None) -> bool:
    """RFC 6120 §4.7.5: major version 1 or later is required here."""
    if not version:
        return False
    major, _, _minor = version.partition(".")
    return major.isdigit() and int(major) >= 1
