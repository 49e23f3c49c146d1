"""XEP-0199: XMPP Ping — the server answers pings to itself and to its accounts' bare JIDs.

The smallest module: copy it to start a new one.
"""

from __future__ import annotations

from xmppd.module_api import IqRequest, Module, Target, iq_handler

NS_PING = "urn:xmpp:ping"


class Ping(Module):
    """Answers <ping/> with an empty result."""

    xeps = (199,)
    features = (NS_PING,)
    account_features = (NS_PING,)
    host_types = ("local", "component")

    @iq_handler("get", NS_PING, "ping")
    async def ping(self, request: IqRequest) -> None:
        """XEP-0199 §4.2: client-to-server ping."""
        return None

    @iq_handler("get", NS_PING, "ping", to=Target.ACCOUNT)
    async def ping_account(self, request: IqRequest) -> None:
        """A ping to a bare JID is answered by the server on the account's behalf."""
        return None
