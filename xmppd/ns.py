"""Namespace constants used by the core (RFC 6120, RFC 6121 and the core XEPs)."""

NS_CLIENT = "jabber:client"
NS_SERVER = "jabber:server"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"  # XEP-0440
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DELAY = "urn:xmpp:delay"
NS_DATA = "jabber:x:data"
NS_RSM = "http://jabber.org/protocol/rsm"

XML_LANG = "{%s}lang" % NS_XML
