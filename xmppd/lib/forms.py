"""XEP-0004: Data Forms — build forms and read submitted ones.

Only what modules need so far: a form of typed fields (the 'form' a service offers) and the
values of a submitted form, keyed by field var, with its FORM_TYPE (XEP-0068).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lxml import etree

from xmppd.errors import StanzaError
from xmppd.ns import NS_DATA

X = f"{{{NS_DATA}}}x"
FIELD = f"{{{NS_DATA}}}field"
VALUE = f"{{{NS_DATA}}}value"
FORM_TYPE = "FORM_TYPE"


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a form: its var, type and default values, plus raw extra children."""

    var: str
    type: str = "text-single"
    values: Sequence[str] = ()
    label: str | None = None
    extra: Sequence[etree._Element] = field(default_factory=tuple)


def build_form(form_type: str, fields: Sequence[Field], type_: str = "form") -> etree._Element:
    """An <x xmlns='jabber:x:data' type=`type_`/> with a hidden FORM_TYPE and `fields`."""
    form = etree.Element(X, nsmap={None: NS_DATA}, type=type_)
    hidden = etree.SubElement(form, FIELD, var=FORM_TYPE, type="hidden")
    etree.SubElement(hidden, VALUE).text = form_type
    for spec in fields:
        element = etree.SubElement(form, FIELD, var=spec.var, type=spec.type)
        if spec.label is not None:
            element.set("label", spec.label)
        for value in spec.values:
            etree.SubElement(element, VALUE).text = value
        for extra in spec.extra:
            element.append(extra)
    return form


@dataclass(frozen=True, slots=True)
class SubmittedForm:
    """A parsed form: its FORM_TYPE (None when absent) and each field's values."""

    form_type: str | None
    values: dict[str, list[str]]

    def single(self, var: str) -> str | None:
        """The one value of `var` (None when absent or empty).

        Raises:
            StanzaError: bad-request when the field has several values.
        """
        values = self.values.get(var)
        if not values:
            return None
        if len(values) > 1:
            raise StanzaError("bad-request", f"form field {var!r} takes one value")
        return values[0]


def parse_submitted(form: etree._Element, *, max_fields: int = 64) -> SubmittedForm:
    """Read a submitted form (type 'submit'; XEP-0004 §3.2).

    Raises:
        StanzaError: bad-request for another form type, a field without var, a field given
            twice, or more than `max_fields` fields.
    """
    if form.get("type") != "submit":
        raise StanzaError("bad-request", "the data form must be of type 'submit'")
    values: dict[str, list[str]] = {}
    form_type: str | None = None
    for element in form.iterchildren(FIELD):
        var = element.get("var")
        if not var:
            raise StanzaError("bad-request", "a submitted form field needs a 'var'")
        if var in values or (var == FORM_TYPE and form_type is not None):
            raise StanzaError("bad-request", f"form field {var!r} given twice")
        texts = [value.text or "" for value in element.iterchildren(VALUE)]
        if var == FORM_TYPE:
            form_type = texts[0] if len(texts) == 1 else ""
            continue
        values[var] = texts
        if len(values) > max_fields:
            raise StanzaError("bad-request", "too many form fields")
    return SubmittedForm(form_type, values)
