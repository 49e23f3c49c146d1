"""XEP-0045 §10.2, §15.5.3: the muc#roomconfig form and the muc#roominfo form of a room.

`RoomConfig` is the room's settings as a frozen value; `config_form` builds the form an owner
gets, `apply_form` reads a submitted one (unknown fields are ignored, XEP-0004 §3.4), and
`roominfo_form` is the XEP-0128 extension of a room's disco#info (§6.4).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.lib.forms import Field, SubmittedForm, build_form
from xmppd.ns import NS_DATA

NS_ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
NS_ROOMINFO = "http://jabber.org/protocol/muc#roominfo"

WHOIS = ("moderators", "anyone")
ALLOW_PM = ("anyone", "participants", "moderators", "none")
MAX_USERS_CHOICES = ("10", "20", "30", "50", "100", "200", "500", "1000")
_TRUE = frozenset({"1", "true"})
_FALSE = frozenset({"0", "false"})


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """A room's configuration (defaults: an open, temporary, public, semi-anonymous room)."""

    name: str = ""
    description: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    password_protected: bool = False
    password: str = ""
    max_users: int = 100
    history_length: int = 20
    whois: str = "moderators"
    allow_pm: str = "anyone"
    change_subject: bool = False
    allow_invites: bool = False
    archiving: bool = True
    language: str = ""

    @property
    def non_anonymous(self) -> bool:
        """Whether every occupant sees occupants' real JIDs."""
        return self.whois == "anyone"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoomConfig:
        """Read back `to_dict` output; unknown keys (older or newer versions) are skipped."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            spec = known.get(key)
            if spec is None:
                continue
            default = spec.default
            if (
                (isinstance(default, bool) and isinstance(value, bool))
                or (
                    isinstance(default, int)
                    and isinstance(value, int)
                    and not isinstance(value, bool)
                )
                or (isinstance(default, str) and isinstance(value, str))
            ):
                values[key] = value
        return cls(**values)


def _bool(value: bool) -> str:
    return "1" if value else "0"


def _options(*pairs: tuple[str, str]) -> tuple[etree._Element, ...]:
    out = []
    for label, value in pairs:
        option = etree.Element(f"{{{NS_DATA}}}option", label=label)
        etree.SubElement(option, f"{{{NS_DATA}}}value").text = value
        out.append(option)
    return tuple(out)


def config_form(config: RoomConfig, *, max_history: int, max_users: int) -> etree._Element:
    """The muc#roomconfig form with the room's current values (§10.2)."""
    users = [v for v in MAX_USERS_CHOICES if int(v) <= max_users]
    if str(config.max_users) not in users:
        users.append(str(config.max_users))
    fields = [
        Field("muc#roomconfig_roomname", "text-single", [config.name], "Room name"),
        Field("muc#roomconfig_roomdesc", "text-single", [config.description], "Description"),
        Field("muc#roomconfig_lang", "text-single", [config.language], "Language"),
        Field("muc#roomconfig_persistentroom", "boolean", [_bool(config.persistent)], "Persistent"),
        Field("muc#roomconfig_publicroom", "boolean", [_bool(config.public)], "Listed publicly"),
        Field(
            "muc#roomconfig_membersonly", "boolean", [_bool(config.members_only)], "Members only"
        ),
        Field("muc#roomconfig_moderatedroom", "boolean", [_bool(config.moderated)], "Moderated"),
        Field(
            "muc#roomconfig_passwordprotectedroom",
            "boolean",
            [_bool(config.password_protected)],
            "Password protected",
        ),
        Field("muc#roomconfig_roomsecret", "text-private", [config.password], "Password"),
        Field(
            "muc#roomconfig_maxusers",
            "list-single",
            [str(config.max_users)],
            "Maximum number of occupants",
            _options(*((v, v) for v in users)),
        ),
        Field(
            "muc#maxhistoryfetch",
            "text-single",
            [str(config.history_length)],
            f"Messages of discussion history kept (at most {max_history})",
        ),
        Field(
            "muc#roomconfig_whois",
            "list-single",
            [config.whois],
            "Who may discover real JIDs",
            _options(("Moderators only", "moderators"), ("Anyone", "anyone")),
        ),
        Field(
            "muc#roomconfig_allowpm",
            "list-single",
            [config.allow_pm],
            "Who may send private messages",
            _options(
                ("Anyone", "anyone"),
                ("Participants and moderators", "participants"),
                ("Moderators only", "moderators"),
                ("Nobody", "none"),
            ),
        ),
        Field(
            "muc#roomconfig_changesubject",
            "boolean",
            [_bool(config.change_subject)],
            "Participants may change the subject",
        ),
        Field(
            "muc#roomconfig_allowinvites",
            "boolean",
            [_bool(config.allow_invites)],
            "Occupants may invite others",
        ),
        Field(
            "muc#roomconfig_enablearchiving",
            "boolean",
            [_bool(config.archiving)],
            "Archive messages (XEP-0313)",
        ),
    ]
    return build_form(NS_ROOMCONFIG, fields)


def _parse_bool(var: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise StanzaError("not-acceptable", f"{var} must be a boolean")


def _parse_int(var: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise StanzaError("not-acceptable", f"{var} must be a number") from None
    if not low <= number <= high:
        raise StanzaError("not-acceptable", f"{var} must be between {low} and {high}")
    return number


_TEXT = {
    "muc#roomconfig_roomname": "name",
    "muc#roomconfig_roomdesc": "description",
    "muc#roomconfig_lang": "language",
    "muc#roomconfig_roomsecret": "password",
}
_BOOL = {
    "muc#roomconfig_persistentroom": "persistent",
    "muc#roomconfig_publicroom": "public",
    "muc#roomconfig_membersonly": "members_only",
    "muc#roomconfig_moderatedroom": "moderated",
    "muc#roomconfig_passwordprotectedroom": "password_protected",
    "muc#roomconfig_changesubject": "change_subject",
    "muc#roomconfig_allowinvites": "allow_invites",
    "muc#roomconfig_enablearchiving": "archiving",
    "muc#roomconfig_enablelogging": "archiving",
    "mam": "archiving",
}
MAX_TEXT = 1024


def apply_form(
    config: RoomConfig, form: SubmittedForm, *, max_history: int, max_users: int
) -> RoomConfig:
    """The configuration after an owner's submitted form; absent fields keep their value.

    Raises:
        StanzaError: bad-request for another FORM_TYPE; not-acceptable for a bad value (also a
            password-protected room without a password).
    """
    if form.form_type not in (None, NS_ROOMCONFIG):
        raise StanzaError("bad-request", "not a muc#roomconfig form")
    changes: dict[str, Any] = {}
    for var, attr in _TEXT.items():
        if var in form.values:
            text = form.single(var) or ""
            if len(text) > MAX_TEXT:
                raise StanzaError("not-acceptable", f"{var} is too long")
            changes[attr] = text
    for var, attr in _BOOL.items():
        flag = form.single(var)
        if flag is not None:
            changes[attr] = _parse_bool(var, flag)
    value: str | None = form.single("muc#roomconfig_maxusers")
    if value is not None:
        if value.strip().lower() == "none":
            changes["max_users"] = max_users
        else:
            changes["max_users"] = _parse_int("muc#roomconfig_maxusers", value, 1, max_users)
    for var in ("muc#maxhistoryfetch", "muc#roomconfig_historylength"):
        value = form.single(var)
        if value is not None:
            changes["history_length"] = _parse_int(var, value, 0, max_history)
    value = form.single("muc#roomconfig_whois")
    if value is not None:
        if value not in WHOIS:
            raise StanzaError("not-acceptable", "muc#roomconfig_whois: moderators or anyone")
        changes["whois"] = value
    value = form.single("muc#roomconfig_allowpm")
    if value is not None:
        if value not in ALLOW_PM:
            raise StanzaError("not-acceptable", "muc#roomconfig_allowpm: unknown value")
        changes["allow_pm"] = value
    new = dataclasses.replace(config, **changes)
    if new.password_protected and not new.password:
        raise StanzaError("not-acceptable", "a password-protected room needs a password")
    if not new.password_protected and new.password and "password_protected" not in changes:
        # Setting a secret alone turns protection on (as most clients expect).
        new = dataclasses.replace(new, password_protected=True)
    return new


def roominfo_form(config: RoomConfig, occupants: int, subject: str) -> etree._Element:
    """The muc#roominfo extended disco#info form of a room (§6.4, §15.5.4)."""
    fields = [
        Field("muc#roominfo_description", "text-single", [config.description]),
        Field("muc#roominfo_occupants", "text-single", [str(occupants)]),
        Field("muc#roominfo_subject", "text-single", [subject]),
        Field("muc#roomconfig_roomname", "text-single", [config.name]),
        Field("muc#roominfo_lang", "text-single", [config.language]),
        Field("muc#roomconfig_changesubject", "boolean", [_bool(config.change_subject)]),
        Field("muc#maxhistoryfetch", "text-single", [str(config.history_length)]),
    ]
    return build_form(NS_ROOMINFO, fields, type_="result")
