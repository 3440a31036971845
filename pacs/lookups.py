"""A SQL LIKE lookup with an explicit escape character, for DICOM wildcard matching."""

from __future__ import annotations

from typing import Any

from django.db.models import CharField, Lookup
from django.db.models.functions import Upper


@CharField.register_lookup
class DicomLike(Lookup):  # type: ignore[type-arg]
    """`field__dicomlike=pattern`: pattern uses % and _, escaped with a backslash."""

    lookup_name = "dicomlike"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        # SQLite's LIKE ignores ASCII case, PostgreSQL's does not: callers upper-case both
        # sides wherever case must not matter (person names), so both give the same answers there.
        return f"{lhs} LIKE {rhs} ESCAPE '\\'", [*lhs_params, *rhs_params]


def wildcard_to_like(value: str) -> str:
    """Turn a DICOM wildcard value (* any run, ? one character) into a LIKE pattern."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


CharField.register_lookup(Upper)  # `field__upper__dicomlike=...` for names without a match copy
