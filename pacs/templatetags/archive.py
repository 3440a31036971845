"""Template filters of the archive's pages."""

from __future__ import annotations

from django import template
from pydicom.uid import UID

register = template.Library()


@register.filter
def uid_name(value: str) -> str:
    """The name of a well-known UID (a SOP class, a transfer syntax), else the UID itself."""
    if not value:
        return ""
    return str(UID(value).name)


@register.filter
def modalities(value: str) -> str:
    """ModalitiesInStudy as stored ("\\CT\\SR\\") for people to read ("CT, SR")."""
    return ", ".join(part for part in value.split("\\") if part)


@register.filter
def dicom_time(value: str) -> str:
    """A TM value as received ("101500.123") for people to read ("10:15:00")."""
    digits = (value or "").replace(":", "").split(".", 1)[0]
    if not digits.isdigit() or len(digits) not in (2, 4, 6):
        return value or ""
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))
