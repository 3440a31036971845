"""DICOM value helpers that need no Django: person names and the like."""

from __future__ import annotations


def person_name_for_display(value: str) -> str:
    """Show a DICOM PN (Family^Given^Middle^Prefix^Suffix, PS3.5 6.2.1) for people to read.

    Only the alphabetic group is shown; the ideographic and phonetic ones after '=' are not.
    """
    alphabetic = (value or "").split("=", 1)[0]
    if "^" not in alphabetic:
        return alphabetic.strip()
    family, given, middle, prefix, suffix = ([*alphabetic.split("^"), "", "", "", ""])[:5]
    name = " ".join(part.strip() for part in (prefix, given, middle, family) if part.strip())
    return f"{name}, {suffix.strip()}" if suffix.strip() else name


def is_valid_ae_title(value: str) -> bool:
    """Tell whether VALUE is an AE title: 1-16 printable ASCII, no backslash (PS3.5 6.2)."""
    stripped = value.strip()
    return (
        0 < len(stripped) <= 16
        and "\\" not in stripped
        and stripped.isascii()
        and stripped.isprintable()
    )
