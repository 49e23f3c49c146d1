"""xmppd extension modules: one file (or package) per extension, named by function.

The first docstring line of each module names the specification it implements
("XEP-0199: XMPP Ping"); its `xeps` attribute lists the XEP numbers.
"""
