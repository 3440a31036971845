from __future__ import annotations

from django import template

from core.dicom_values import person_name_for_display

register = template.Library()


@register.filter
def person_name(value: str) -> str:
    """Render a DICOM person name for people to read."""
    return person_name_for_display(value)
