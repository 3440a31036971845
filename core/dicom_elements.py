"""Data elements of the archive's own data, made without pydicom's value setter.

C-FIND and MWL replies are built from the index and the RIS, element by element, for every
match; pydicom's DataElement validates and converts each value as it is set, which was the
larger part of a reply's cost. Values that come from our own tables are valid by
construction, so the common text VRs are made from a per-tag template instead
(tests/test_worklist_matching.py checks that both ways give equal elements).
"""

from __future__ import annotations

from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.uid import UID
from pydicom.valuerep import PersonName

# Text VRs whose single str value pydicom keeps as it is (LT even with a backslash), and the
# two it wraps (PN in PersonName, UI in UID).
_KEPT_AS_STR = frozenset({"AE", "CS", "DA", "TM", "LO", "SH", "LT"})
_ELEMENT_TEMPLATES: dict[tuple[int, str], dict[str, Any]] = {}


def trusted_element(tag: int, vr: str, value: Any) -> DataElement:
    """An element of the RIS's or the index's own data, valid by construction: not
    validated again. Anything else (a list, a number, several values) is made by pydicom."""
    if (
        type(value) is not str
        or (vr not in _KEPT_AS_STR and vr not in ("PN", "UI"))
        or ("\\" in value and vr != "LT")
        or config.datetime_conversion
    ):
        return DataElement(tag, vr, value, validation_mode=config.IGNORE)
    template = _ELEMENT_TEMPLATES.get((tag, vr))
    if template is None:
        made = DataElement(tag, vr, None, validation_mode=config.IGNORE)
        template = _ELEMENT_TEMPLATES.setdefault((tag, vr), dict(vars(made)))
    element = object.__new__(DataElement)
    vars(element).update(template)
    if vr == "PN":
        element._value = PersonName(value, validation_mode=config.IGNORE)
    elif vr == "UI":
        element._value = UID(value, config.IGNORE)
    else:
        element._value = value
    return element
