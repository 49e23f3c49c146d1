"""XEP-0012 Last Activity with real slixmpp clients over sockets."""

from __future__ import annotations

import pytest
from slixmpp.exceptions import IqError

from tests.conftest import ClientFactory

pytestmark = pytest.mark.interop


async def test_server_uptime_and_own_account(connect: ClientFactory) -> None:
    alice = await connect("alice@localhost/a")
    alice.register_plugin("xep_0012")
    uptime = await alice.plugin["xep_0012"].get_last_activity("localhost")
    assert int(uptime["last_activity"]["seconds"]) >= 0
    own = await alice.plugin["xep_0012"].get_last_activity("alice@localhost")
    assert int(own["last_activity"]["seconds"]) == 0  # online


async def test_stranger_is_forbidden(connect: ClientFactory) -> None:
    bob = await connect("bob@localhost/b")
    bob.register_plugin("xep_0012")
    with pytest.raises(IqError) as info:
        await bob.plugin["xep_0012"].get_last_activity("carol@localhost")
    assert info.value.condition == "forbidden"
