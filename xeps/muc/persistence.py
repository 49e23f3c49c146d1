"""XEP-0045 §10.2 persistent rooms: room <-> KeyValueStore records, and the service secret.

Layout in the service host's "rooms" key-value store (user "" = service-wide):
``("", "room/<localpart>")`` -> the room's `Room.state()`, and ``("", "secret")`` -> the
XEP-0421 occupant-id secret (hex), made once so that occupant ids survive restarts.
"""

from __future__ import annotations

import secrets

from xmppd.jid import JID, JIDError
from xmppd.storage import KeyValueStore

from .config import RoomConfig
from .room import Limits, Room

ROOM_PREFIX = "room/"
SECRET_KEY = "secret"  # noqa: S105 - a store key, not a password


async def service_secret(store: KeyValueStore) -> bytes:
    """The per-service secret for occupant ids, created on first use."""
    value = await store.get("", SECRET_KEY)
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    secret = secrets.token_bytes(32)
    await store.set("", SECRET_KEY, secret.hex())
    return secret


async def save_room(store: KeyValueStore, room: Room) -> None:
    """Store a persistent room's state, or forget a room that is no longer persistent."""
    key = ROOM_PREFIX + (room.jid.local or "")
    if room.config.persistent and not room.locked:
        await store.set("", key, room.state())  # type: ignore[arg-type]
    else:
        await store.delete("", key)


async def delete_room(store: KeyValueStore, room: JID) -> None:
    """Forget a destroyed room."""
    await store.delete("", ROOM_PREFIX + (room.local or ""))


async def load_rooms(
    store: KeyValueStore, service: str, secret: bytes, limits: Limits
) -> list[Room]:
    """Every stored room of the service (records that cannot be read are skipped)."""
    rooms = []
    for key in await store.keys(""):
        if not key.startswith(ROOM_PREFIX):
            continue
        state = await store.get("", key)
        if not isinstance(state, dict):
            continue
        try:
            jid = JID.parse(f"{key[len(ROOM_PREFIX) :]}@{service}")
        except JIDError:
            continue
        room = Room(jid, RoomConfig(), secret, limits=limits)
        room.restore(state)
        rooms.append(room)
    return rooms
