"""Import of the procedure catalogue from CSV: validate every row, then write all or nothing.

The file has a header with exactly the columns of `COLUMNS` (in any order). Rows are
matched to `ProcedureType` by code: a new code is created, a known one updated. Codes
that are not in the file are left as they are, and so are `active` and the preparation
instructions, which the file does not carry. The source is the CSV text (str or bytes),
an open file (text or binary), or a `Path`; UTF-8, with or without a byte order mark.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO

from django.core.exceptions import ValidationError
from django.db import transaction

from ris.models import ProcedureType

COLUMNS = ("code", "name", "modality", "body_part", "cpt", "duration_minutes", "price")

# Defined Terms of Modality (0008,0060), PS3.3 C.7.3.1.1.1 (retired terms left out).
DICOM_MODALITIES = frozenset(
    {
        "ANN", "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CR", "CT", "CTPROTOCOL", "DG", "DMS",
        "DOC", "DX", "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO",
        "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LS", "M3D", "MG", "MR", "NM", "OAM", "OCT",
        "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS", "OT", "PLAN", "POS", "PR", "PT",
        "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD",
        "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN",
        "TEXTUREMAP", "TG", "US", "VA", "XA", "XAPROTOCOL", "XC",
    }
)  # fmt: skip

# The model's limits, so a bad value is a clear row error rather than a database error.
MAX_CODE = ProcedureType._meta.get_field("code").max_length or 16
MAX_NAME = ProcedureType._meta.get_field("name").max_length or 200
MAX_BODY_PART = ProcedureType._meta.get_field("body_part").max_length or 64
MAX_CPT = ProcedureType._meta.get_field("cpt_code").max_length or 16
MAX_DURATION_MINUTES = 24 * 60
PRICE_MAX_DIGITS = 10
PRICE_DECIMAL_PLACES = 2

Source = str | bytes | os.PathLike[str] | IO[str] | IO[bytes]
_Report = Callable[[str, str], None]  # (column, message)
_DECIMAL = re.compile(r"-?(\d+(\.\d*)?|\.\d+)")  # plain notation: no exponent, sign or "_"

_UPDATED_FIELDS = ["name", "modality", "body_part", "cpt_code", "default_duration_minutes", "price"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file: where (line, column) and why."""

    line: int | None
    message: str
    column: str = ""

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        if self.column:
            where = f"{where}, {self.column}"
        return f"{where}: {self.message}"


class CatalogueError(ValidationError):
    """The file was refused; `problems` lists every reason, and nothing was imported."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__([str(problem) for problem in problems])


@dataclass
class ImportResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged"
        )


@dataclass(frozen=True)
class _Row:
    """One valid line of the file, in ProcedureType's field names."""

    code: str
    name: str
    modality: str
    body_part: str
    cpt_code: str
    default_duration_minutes: int
    price: Decimal


def import_procedure_catalogue(source: Source) -> ImportResult:
    """Create or update procedure types from a CSV catalogue; any bad row imports nothing."""
    rows = _parse(_read_text(source))
    return _apply(rows)


def _read_text(source: Source) -> str:
    data: str | bytes
    if isinstance(source, os.PathLike):
        data = Path(source).read_bytes()
    elif isinstance(source, str | bytes):
        data = source
    else:
        data = source.read()
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CatalogueError(
                [Problem(None, f"not UTF-8 text (bad byte at offset {exc.start})")]
            ) from exc
    # A text stream opened without utf-8-sig still carries the byte order mark.
    return data.removeprefix("\ufeff")


def _parse(text: str) -> list[_Row]:
    # newline="" lets csv see \r\n, \r and \n alike, and keeps line numbers right.
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or not any(cell.strip() for cell in header):
        raise CatalogueError(
            [Problem(1, f"the file has no header; expected the columns {', '.join(COLUMNS)}")]
        )
    columns = [cell.strip().lower() for cell in header]
    header_problems = _check_header(columns)
    if header_problems:
        raise CatalogueError(header_problems)

    problems: list[Problem] = []
    rows: list[_Row] = []
    first_line_of_code: dict[str, int] = {}
    end_of_previous = reader.line_num
    for cells in reader:
        line = end_of_previous + 1  # a quoted field may span lines; report where the row starts
        end_of_previous = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # blank lines and spreadsheets' trailing ",,,,,,"
        if len(cells) != len(columns):
            problems.append(Problem(line, f"expected {len(columns)} fields, found {len(cells)}"))
            continue
        record = {column: cell.strip() for column, cell in zip(columns, cells, strict=True)}
        row, row_problems = _clean(line, record)
        problems.extend(row_problems)
        code = record["code"]
        if code:
            if code in first_line_of_code:
                problems.append(
                    Problem(
                        line,
                        f"duplicate code {code!r} (first on line {first_line_of_code[code]})",
                        "code",
                    )
                )
            else:
                first_line_of_code[code] = line
        if row is not None:
            rows.append(row)
    if problems:
        raise CatalogueError(problems)
    return rows


def _check_header(columns: list[str]) -> list[Problem]:
    problems = []
    missing = [column for column in COLUMNS if column not in columns]
    unknown = [column for column in columns if column not in COLUMNS]
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if missing:
        problems.append(Problem(1, f"missing column(s): {', '.join(missing)}"))
    if unknown:
        shown = ", ".join(repr(column) if column else "(empty)" for column in unknown)
        problems.append(Problem(1, f"unknown column(s): {shown}"))
    if repeated:
        problems.append(Problem(1, f"repeated column(s): {', '.join(repeated)}"))
    if problems:
        problems.append(Problem(1, f"the header must be exactly: {','.join(COLUMNS)}"))
    return problems


def _clean(line: int, record: dict[str, str]) -> tuple[_Row | None, list[Problem]]:
    problems: list[Problem] = []

    def problem(column: str, message: str) -> None:
        problems.append(Problem(line, message, column))

    code = record["code"]
    if not code:
        problem("code", "a code is required")
    elif len(code) > MAX_CODE:
        problem("code", f"{code!r} is longer than {MAX_CODE} characters")

    name = record["name"]
    if not name:
        problem("name", "a name is required")
    elif len(name) > MAX_NAME:
        problem("name", f"longer than {MAX_NAME} characters")

    # Modality is a DICOM CS value: upper case; accept "ct" for "CT".
    modality = record["modality"].upper()
    if not modality:
        problem("modality", "a modality is required")
    elif modality not in DICOM_MODALITIES:
        problem(
            "modality",
            f"{record['modality']!r} is not a DICOM modality code (PS3.3 C.7.3.1.1.1)",
        )

    body_part = record["body_part"]
    if len(body_part) > MAX_BODY_PART:
        problem("body_part", f"longer than {MAX_BODY_PART} characters")

    cpt = record["cpt"]
    if len(cpt) > MAX_CPT:
        problem("cpt", f"{cpt!r} is longer than {MAX_CPT} characters")

    duration = _clean_duration(record["duration_minutes"], problem)
    price = _clean_price(record["price"], problem)

    if problems or duration is None or price is None:
        return None, problems
    return _Row(code, name, modality, body_part, cpt, duration, price), problems


def _clean_duration(raw: str, problem: _Report) -> int | None:
    if not raw:
        problem("duration_minutes", "a duration is required")
        return None
    if not raw.isascii() or not raw.isdigit():
        problem("duration_minutes", f"{raw!r} is not a positive whole number of minutes")
        return None
    minutes = int(raw)
    if minutes <= 0:
        problem("duration_minutes", "must be at least 1 minute")
        return None
    if minutes > MAX_DURATION_MINUTES:
        problem("duration_minutes", f"{minutes} is more than a day ({MAX_DURATION_MINUTES})")
        return None
    return minutes


def _clean_price(raw: str, problem: _Report) -> Decimal | None:
    if not raw:
        problem("price", "a price is required")
        return None
    if _DECIMAL.fullmatch(raw) is None:
        problem("price", f"{raw!r} is not a decimal number like 120.50")
        return None
    price = Decimal(raw)
    if price < 0:
        problem("price", f"{raw} is negative")
        return None
    fraction = raw.partition(".")[2]
    if len(fraction) > PRICE_DECIMAL_PLACES:
        problem("price", f"{raw} has more than {PRICE_DECIMAL_PLACES} decimal places")
        return None
    if price >= Decimal(10) ** (PRICE_MAX_DIGITS - PRICE_DECIMAL_PLACES):
        problem("price", f"{raw} is too large")
        return None
    return price.quantize(Decimal(1).scaleb(-PRICE_DECIMAL_PLACES))


@transaction.atomic
def _apply(rows: Iterable[_Row]) -> ImportResult:
    rows = list(rows)
    codes = [row.code for row in rows]
    existing = {
        procedure.code: procedure
        for procedure in ProcedureType.objects.select_for_update().filter(code__in=codes)
    }
    result = ImportResult()
    to_create: list[ProcedureType] = []
    to_update: list[ProcedureType] = []
    for row in rows:
        procedure = existing.get(row.code)
        if procedure is None:
            to_create.append(ProcedureType(**asdict(row)))
            result.created.append(row.code)
            continue
        changed = False
        for name in _UPDATED_FIELDS:
            value = getattr(row, name)
            if getattr(procedure, name) != value:
                setattr(procedure, name, value)
                changed = True
        if changed:
            to_update.append(procedure)
            result.updated.append(row.code)
        else:
            result.unchanged.append(row.code)
    ProcedureType.objects.bulk_create(to_create)
    if to_update:
        ProcedureType.objects.bulk_update(to_update, _UPDATED_FIELDS)
    return result
