"""XEP-0049: Private XML Storage — per-account XML fragments keyed by their namespace.

Only the account itself may read or write its private data (forbidden otherwise). A get names
one namespace (what is stored under it comes back, or the element as sent, empty, when
nothing is); a set stores its children under their namespaces, several elements of one
namespace together (XEP-0049 §2). The reserved namespaces jabber:client,
jabber:server and jabber:iq:private, and a query without a namespaced child, are refused with
not-acceptable (XEP-0049 §2). What one namespace holds is limited to `max_size` bytes.

With a PEP module loaded, the bookmarks module answers ``storage:bookmarks`` requests itself
(XEP-0402 §5.3: the list is kept as Bookmarks 2 items); everything else is stored here.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.module_api import IqRequest, Module, StoreKind, Target, iq_handler
from xmppd.storage import JsonValue

NS_PRIVATE = "jabber:iq:private"
STORE = "private"
RESERVED = frozenset({"jabber:client", "jabber:server", NS_PRIVATE})


def _key(element: etree._Element) -> str:
    """Storage key of a fragment: its namespace (XEP-0049 keys by namespace)."""
    namespace = etree.QName(element).namespace
    if not isinstance(element.tag, str) or not namespace or namespace in RESERVED:
        raise StanzaError("not-acceptable", "private data needs a non-reserved namespace")
    return namespace


class Private(Module):
    """Private XML storage."""

    xeps = (49,)
    features = (NS_PRIVATE,)
    account_features = (NS_PRIVATE,)
    stores = {STORE: StoreKind.KEYVALUE}

    @dataclass(frozen=True)
    class Options:
        """`max_size`: most bytes one namespace may hold (serialised); `max_namespaces`: most
        namespaces one account may store under."""

        max_size: int = 65536
        max_namespaces: int = 100

    @staticmethod
    def _children(request: IqRequest) -> list[etree._Element]:
        request.own_account("its private data")
        children = [c for c in request.payload if isinstance(c.tag, str)]
        if not children:
            raise StanzaError("not-acceptable", "the query must contain a namespaced element")
        return children

    @iq_handler("get", NS_PRIVATE, "query", to=Target.ACCOUNT)
    async def get(self, request: IqRequest) -> etree._Element:
        """Return what is stored under the namespace of the single child (§2: one per get)."""
        children = self._children(request)
        if len({_key(c) for c in children}) != 1:
            raise StanzaError("not-acceptable", "retrieve one namespace at a time")
        child = children[0]
        namespace = _key(child)
        stored = await self.ctx.keyvalue(STORE).get(request.to.local or "", namespace)
        query = etree.Element(f"{{{NS_PRIVATE}}}query", nsmap={None: NS_PRIVATE})
        fragments = stored if isinstance(stored, list) else []
        try:
            for fragment in fragments:
                # Rows stored before tails were dropped may carry one: read without it.
                wrapper = etree.fromstring(f"<w>{fragment}</w>".encode())
                for element in list(wrapper):
                    if isinstance(element.tag, str):
                        element.tail = None
                        query.append(element)
        except etree.XMLSyntaxError:
            self.ctx.log.error("stored private data of %s is corrupt", request.to)
            del query[:]
        if len(query) == 0:
            # Nothing stored: the request's element comes back empty.
            empty = etree.SubElement(query, child.tag, nsmap={None: namespace})
            empty.attrib.update(child.attrib)
        return query

    @iq_handler("set", NS_PRIVATE, "query", to=Target.ACCOUNT)
    async def set(self, request: IqRequest) -> None:
        """Store the children, grouped by namespace (§2: several elements of one namespace
        are kept together), each group replacing what its namespace held."""
        children = self._children(request)
        groups: dict[str, list[JsonValue]] = {}
        sizes: dict[str, int] = {}
        for child in children:
            namespace = _key(child)
            data = etree.tostring(child, with_tail=False)  # text after it is not its data
            sizes[namespace] = sizes.get(namespace, 0) + len(data)
            if sizes[namespace] > self.options.max_size:
                raise StanzaError(
                    "not-acceptable", f"private data is larger than {self.options.max_size} bytes"
                )
            groups.setdefault(namespace, []).append(data.decode())
        store = self.ctx.keyvalue(STORE)
        existing = set(await store.keys(request.to.local or ""))
        if len(existing | groups.keys()) > self.options.max_namespaces:
            raise StanzaError(
                "not-acceptable", f"at most {self.options.max_namespaces} namespaces are kept"
            )
        for namespace, fragments in groups.items():
            await store.set(request.to.local or "", namespace, fragments)
