"""XEP-0157 Contact Addresses for XMPP Services (xeps/contact_info.py).

Tier 2: a real Server on memory storage; the form is read from the host's disco registry
(XEP-0128 extension) and from the caps node query, which answers with the extensions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.harness import ModuleHarness
from xeps.caps import Caps

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"
MODULES = ["disco", "caps", "contact_info"]
CONTACTS = {
    "admin": ["mailto:admin@example.org", "xmpp:admin@example.org"],
    "abuse": ["mailto:abuse@example.org"],
}


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[ModuleHarness]:
    async with ModuleHarness.started(
        tmp_path, modules_enabled=MODULES, modules={"contact_info": CONTACTS}
    ) as harness:
        yield harness


async def test_contact_addresses_form(h: ModuleHarness) -> None:
    (form,) = h.host().features.extensions()
    fields = {f.get("var"): [v.text for v in f] for f in form}
    assert fields["FORM_TYPE"] == ["http://jabber.org/network/serverinfo"]
    assert fields["admin-addresses"] == CONTACTS["admin"]
    assert fields["abuse-addresses"] == CONTACTS["abuse"]
    assert "support-addresses" not in fields  # unset roles are left out
    assert form.get("type") == "result"


async def test_no_form_without_addresses(tmp_path: Path) -> None:
    async with ModuleHarness.started(tmp_path, modules_enabled=MODULES) as h:
        assert h.host().features.extensions() == []


async def test_form_is_served_in_disco_info_of_the_caps_node(h: ModuleHarness) -> None:
    module = h.host().modules["caps"]
    assert isinstance(module, Caps)
    alice = await h.connect("alice@localhost/home")
    node = f"{module.options.node}#{module.ver()}"
    await h.send(
        alice,
        f"<iq type='get' id='c1' to='localhost'><query xmlns='{NS_INFO}' node='{node}'/></iq>",
    )
    (form,) = h.take_one(alice).iter(f"{{{NS_DATA}}}x")
    values = [v.text for v in form.iter(f"{{{NS_DATA}}}value")]
    assert "http://jabber.org/network/serverinfo" in values
    assert "mailto:abuse@example.org" in values


async def test_unknown_role_option_is_a_config_error(tmp_path: Path) -> None:
    from xmppd.config import ConfigError

    with pytest.raises(ConfigError, match=r"contact_info\.sales_team"):
        async with ModuleHarness.started(
            tmp_path, modules_enabled=MODULES, modules={"contact_info": {"sales_team": ["x"]}}
        ):
            pass


async def test_form_is_in_server_disco_info(h: ModuleHarness) -> None:
    alice = await h.connect("alice@localhost/home")
    await h.send(alice, f"<iq type='get' id='d1' to='localhost'><query xmlns='{NS_INFO}'/></iq>")
    (form,) = h.take_one(alice).iter(f"{{{NS_DATA}}}x")
    values = [v.text for v in form.iter(f"{{{NS_DATA}}}value")]
    assert values[0] == "http://jabber.org/network/serverinfo"
    assert "mailto:admin@example.org" in values
