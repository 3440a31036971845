"""Search keys for person names: upper case, accents stripped, so "muller" finds "Müller"."""

from __future__ import annotations

import unicodedata

# Letters that NFKD does not take apart into a base letter and a combining mark.
_FOLDED = str.maketrans(
    {
        "ß": "SS",
        "ẞ": "SS",
        "Æ": "AE",
        "æ": "AE",
        "Ø": "O",
        "ø": "O",
        "Œ": "OE",
        "œ": "OE",
        "Ł": "L",
        "ł": "L",
        "Đ": "D",
        "đ": "D",
        "Þ": "TH",
        "þ": "TH",
        "\u0131": "I",  # dotless i
    }
)


def search_key(*parts: str) -> str:
    """Fold PARTS into one search key: accents stripped, upper case, single spaces."""
    text = " ".join(part for part in parts if part).translate(_FOLDED)
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(bare.upper().split())


def patient_search_key(family_name: str, given_name: str = "", middle_name: str = "") -> str:
    """The key stored in Patient.search_name: family, given and middle names."""
    return search_key(family_name, given_name, middle_name)
