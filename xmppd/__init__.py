"""xmppd: an XMPP server with a small core stanza router and pluggable extension modules."""

__version__ = "0.1.0"
