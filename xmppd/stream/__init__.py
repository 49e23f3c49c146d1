"""RFC 6120 §4: the XML stream layer that turns bytes into stanzas and back."""
