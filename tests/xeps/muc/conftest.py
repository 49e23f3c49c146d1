"""Fixtures shared by the MUC module tests: three bound sessions on the test module's `h`
harness (each test file makes its own, with the modules it needs)."""

from __future__ import annotations

import pytest

from tests.helpers.harness import ModuleHarness
from xmppd.session import Session


@pytest.fixture
async def alice(h: ModuleHarness) -> Session:
    return await h.connect("alice@localhost/phone", priority=0)


@pytest.fixture
async def bob(h: ModuleHarness) -> Session:
    return await h.connect("bob@localhost/pc", priority=0)


@pytest.fixture
async def carol(h: ModuleHarness) -> Session:
    return await h.connect("carol@localhost/tab", priority=0)
