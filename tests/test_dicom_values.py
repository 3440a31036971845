from __future__ import annotations

import pytest

from core.dicom_values import person_name_for_display


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("Referrer^Demo^^Dr", "Dr Demo Referrer"),
        ("Testperson^Alex^J^^III", "Alex J Testperson, III"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Tarou Yamada"),
        ("Plain text name", "Plain text name"),
        ("", ""),
    ],
)
def test_person_name_for_display(value: str, shown: str) -> None:
    assert person_name_for_display(value) == shown
