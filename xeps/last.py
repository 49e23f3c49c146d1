"""XEP-0012: Last Activity — server uptime, and how long ago an account was last online.

A query to the server answers its uptime in seconds. A query to an account's bare JID is
answered by the server (§4): 0 seconds while the account has an available resource, otherwise
the seconds since its last resource went offline, with the status of its last unavailable
presence. Only requesters allowed to see the account's presence may ask (§4, forbidden
otherwise): the account itself and contacts with a "from" or "both" subscription (asked of the
roster module through ROSTER_QUERY).
"""

from __future__ import annotations

import time

from lxml import etree

from xmppd import events as ev
from xmppd.errors import StanzaError
from xmppd.events import Priority, SessionEnded, StanzaEvent
from xmppd.jid import JID
from xmppd.module_api import IqRequest, Module, StoreKind, Target, hook, iq_handler

NS_LAST = "jabber:iq:last"
STORE = "last"
KEY = "logout"


class _Status:
    """Session state key: the status of the session's last unavailable presence."""


def _query(seconds: int, status: str = "") -> etree._Element:
    query = etree.Element(f"{{{NS_LAST}}}query", nsmap={None: NS_LAST}, seconds=str(seconds))
    if status:
        query.text = status
    return query


class LastActivity(Module):
    """Last activity of the server and of offline accounts."""

    name = "last"
    xeps = (12,)
    features = (NS_LAST,)
    account_features = (NS_LAST,)
    stores = {STORE: StoreKind.KEYVALUE}

    async def load(self) -> None:
        """Uptime is counted from the module's start (the server's)."""
        self._started = time.monotonic()

    @iq_handler("get", NS_LAST, "query")
    async def uptime(self, request: IqRequest) -> etree._Element:
        """§5: a query to a server returns its uptime."""
        return _query(int(time.monotonic() - self._started))

    async def may_see_presence(self, requester: JID, account: JID) -> bool:
        """Whether `requester` may know the presence of `account` (XEP-0012 §4)."""
        if requester.bare == account.bare:
            return True
        query = ev.RosterQuery(account.bare, requester.bare)
        if not await self.ctx.fire(ev.ROSTER_QUERY, query):
            return False  # no roster module: nobody is subscribed
        return query.subscription(requester.bare) in ("from", "both")

    @iq_handler("get", NS_LAST, "query", to=Target.ACCOUNT)
    async def account(self, request: IqRequest) -> etree._Element:
        """§4: seconds since the account was last available, and its last status."""
        account = request.to.bare
        if not await self.may_see_presence(request.from_, account):
            raise StanzaError("forbidden")
        if self.ctx.sessions.available(account):
            return _query(0)
        stored = await self.ctx.keyvalue(STORE).get(account.local or "", KEY)
        if not isinstance(stored, dict) or not isinstance(stored.get("when"), int | float):
            raise StanzaError("item-not-found", "no last activity is known for this account")
        when = stored["when"]
        assert isinstance(when, int | float)  # checked above; narrows for mypy
        status = stored.get("status")
        seconds = max(0, int(time.time() - when))
        return _query(seconds, status if isinstance(status, str) else "")

    @hook(ev.PRE_PRESENCE, priority=Priority.HIGH)
    async def unavailable(self, event: StanzaEvent) -> bool:
        """Keep the status of a session's unavailable presence; record it if it was the last."""
        session = event.origin
        stanza = event.stanza
        if session is None or stanza.type != "unavailable" or stanza.to is not None:
            return False
        status = stanza.element.findtext("{jabber:client}status") or ""
        session.set_state(_Status, status)
        others = [s for s in self.ctx.sessions.available(stanza.from_.bare) if s is not session]
        if not others:
            await self._record(session.username or "", status)
        return False

    @hook(ev.SESSION_ENDED)
    async def ended(self, event: SessionEnded) -> None:
        """The account's last session ended: store the time and the last status."""
        session = event.session
        if session.jid is None or self.ctx.sessions.available(session.jid.bare):
            return
        status = session.state(_Status)
        await self._record(session.username or "", status if isinstance(status, str) else "")

    async def _record(self, username: str, status: str) -> None:
        await self.ctx.keyvalue(STORE).set(username, KEY, {"when": time.time(), "status": status})
