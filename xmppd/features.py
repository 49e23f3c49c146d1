"""XEP-0030 data contributed by modules: features, identities and items, scoped per host.

Scopes: `host` answers disco on the server JID; `account` answers disco on a local user's bare
JID, which the server answers on the account's behalf (as MAM, PEP and push require).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lxml import etree


class Scope(Enum):
    """Who a feature or identity is advertised for."""

    HOST = "host"
    ACCOUNT = "account"


@dataclass(frozen=True, slots=True)
class Identity:
    """A disco identity (XEP-0030 §3.1)."""

    category: str
    type: str
    name: str | None = None
    lang: str | None = None


@dataclass(frozen=True, slots=True)
class DiscoItem:
    """A disco item (XEP-0030 §4.1), e.g. a service subdomain."""

    jid: str
    name: str | None = None
    node: str | None = None


class FeatureRegistry:
    """What one host advertises; modules add and remove entries through their context."""

    __slots__ = ("_extensions", "_features", "_identities", "items")

    def __init__(self) -> None:
        self._features: dict[Scope, list[str]] = {Scope.HOST: [], Scope.ACCOUNT: []}
        self._identities: dict[Scope, list[Identity]] = {Scope.HOST: [], Scope.ACCOUNT: []}
        self.items: list[DiscoItem] = []
        self._extensions: list[etree._Element] = []

    def add_feature(self, var: str, scope: Scope = Scope.HOST) -> None:
        """Advertise a feature var (duplicates are kept once in output)."""
        self._features[scope].append(var)

    def remove_feature(self, var: str, scope: Scope = Scope.HOST) -> None:
        """Withdraw one registration of `var`."""
        if var in self._features[scope]:
            self._features[scope].remove(var)

    def add_identity(self, identity: Identity, scope: Scope = Scope.HOST) -> None:
        """Advertise an identity."""
        self._identities[scope].append(identity)

    def remove_identity(self, identity: Identity, scope: Scope = Scope.HOST) -> None:
        """Withdraw one registration of `identity`."""
        if identity in self._identities[scope]:
            self._identities[scope].remove(identity)

    def features(self, scope: Scope = Scope.HOST) -> list[str]:
        """Sorted, de-duplicated feature vars."""
        return sorted(set(self._features[scope]))

    def identities(self, scope: Scope = Scope.HOST) -> list[Identity]:
        """Identities in registration order, de-duplicated."""
        return list(dict.fromkeys(self._identities[scope]))

    def add_extension(self, form: etree._Element) -> None:
        """Add an XEP-0128 extended-information data form (type "result", with a FORM_TYPE)."""
        self._extensions.append(form)

    def remove_extension(self, form: etree._Element) -> None:
        """Withdraw an extended-information form."""
        if form in self._extensions:
            self._extensions.remove(form)

    def extensions(self) -> list[etree._Element]:
        """Extended-information forms of the host JID, in registration order."""
        return list(self._extensions)
