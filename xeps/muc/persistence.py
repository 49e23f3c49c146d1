"""XEP-0045 §10.2 persistent rooms: room <-> KeyValueStore records, and the service secret.

Layout in the service host's "rooms" key-value store (user "" = service-wide):
``("", "room/<localpart>")`` -> the room's `Room.state()` (with its creator's bare JID, for
max_rooms_per_user) plus ``"archive"``: the room's archive incarnation id (none in records
made before incarnations: the archive keyed by the bare JID), ``("", "archive/<id>")`` -> the
room JID of every incarnation whose archive may exist (written at the incarnation's first
archived message, removed once its archive is deleted: what is left on startup belongs to no
room and is deleted), and ``("", "secret")`` -> the XEP-0421 occupant-id secret (hex), made
once so that occupant ids survive restarts.
"""

from __future__ import annotations

import secrets

from xmppd.jid import JID, JIDError
from xmppd.storage import KeyValueStore

from .config import RoomConfig
from .room import Limits, Room

ROOM_PREFIX = "room/"
ARCHIVE_PREFIX = "archive/"
INCARNATION = "archive"  # the field of a room record holding its archive incarnation id
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


def new_incarnation() -> str:
    """A fresh archive incarnation id."""
    return secrets.token_hex(8)


async def save_room(store: KeyValueStore, room: Room, incarnation: str = "") -> None:
    """Store a persistent room's state and archive incarnation, or forget a room that is no
    longer persistent."""
    key = ROOM_PREFIX + (room.jid.local or "")
    if room.config.persistent and not room.locked:
        state = room.state()
        if incarnation:
            state[INCARNATION] = incarnation
        await store.set("", key, state)  # type: ignore[arg-type]
    else:
        await store.delete("", key)


async def delete_room(store: KeyValueStore, room: JID) -> None:
    """Forget a destroyed room."""
    await store.delete("", ROOM_PREFIX + (room.local or ""))


async def load_rooms(
    store: KeyValueStore, service: str, secret: bytes, limits: Limits
) -> list[tuple[Room, str]]:
    """Every stored room of the service with its archive incarnation ("" for a record that
    has none); records that cannot be read are skipped."""
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
        incarnation = state.get(INCARNATION)
        rooms.append((room, incarnation if isinstance(incarnation, str) else ""))
    return rooms


async def register_archive(store: KeyValueStore, room: JID, incarnation: str) -> None:
    """Note that the archive of `room`'s incarnation may exist (deleted if orphaned)."""
    await store.set("", ARCHIVE_PREFIX + incarnation, str(room.bare))


async def forget_archive(store: KeyValueStore, incarnation: str) -> None:
    """The archive of this incarnation is gone."""
    await store.delete("", ARCHIVE_PREFIX + incarnation)


async def registered_archives(store: KeyValueStore) -> list[tuple[JID, str]]:
    """Every (room JID, incarnation) whose archive may exist."""
    found = []
    for key in await store.keys(""):
        if not key.startswith(ARCHIVE_PREFIX):
            continue
        value = await store.get("", key)
        try:
            jid = JID.parse(value) if isinstance(value, str) else None
        except JIDError:
            jid = None
        incarnation = key[len(ARCHIVE_PREFIX) :]
        if jid is None or not incarnation:
            await store.delete("", key)
            continue
        found.append((jid, incarnation))
    return found
