"""Test helpers: a raw XML client and slixmpp client factories."""
