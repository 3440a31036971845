"""Import of the procedure catalogue: all rows valid, or nothing imported."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from ris.catalogue import CatalogueError, import_procedure_catalogue
from ris.demo import CATALOGUE_FILE
from ris.models import ProcedureType

HEADER = "code,name,modality,body_part,cpt,duration_minutes,price\n"
GOOD = (
    HEADER
    + "CTHEADWO,CT Head without contrast,CT,HEAD,70450,15,250.00\n"
    + "MRKNEEWO,MRI Knee without contrast,MR,KNEE,73721,30,650\n"
    + '"DXCHEST2V","X-ray Chest, 2 views",DX,CHEST,71046,10,60.5\n'
)


def _fields(code: str) -> tuple[str, str, str, str, int, Decimal]:
    procedure = ProcedureType.objects.get(code=code)
    return (
        procedure.name,
        procedure.modality,
        procedure.body_part,
        procedure.cpt_code,
        procedure.default_duration_minutes,
        procedure.price,
    )


def test_good_file_creates_procedures(db: None) -> None:
    result = import_procedure_catalogue(GOOD)

    assert sorted(result.created) == ["CTHEADWO", "DXCHEST2V", "MRKNEEWO"]
    assert result.updated == [] and result.unchanged == []
    assert _fields("CTHEADWO") == (
        "CT Head without contrast", "CT", "HEAD", "70450", 15, Decimal("250.00")
    )  # fmt: skip
    assert _fields("DXCHEST2V")[0] == "X-ray Chest, 2 views"
    assert _fields("DXCHEST2V")[5] == Decimal("60.50")
    assert _fields("MRKNEEWO")[5] == Decimal("650.00")


def test_second_import_updates_by_code(db: None) -> None:
    import_procedure_catalogue(GOOD)
    changed = (
        HEADER
        + "CTHEADWO,CT Head without contrast,CT,HEAD,70450,20,275.00\n"
        + "MRKNEEWO,MRI Knee without contrast,MR,KNEE,73721,30,650.00\n"
        + "USABDCOMP,US Abdomen complete,US,ABDOMEN,76700,30,180.00\n"
    )

    result = import_procedure_catalogue(changed)

    assert result.created == ["USABDCOMP"]
    assert result.updated == ["CTHEADWO"]
    assert result.unchanged == ["MRKNEEWO"]
    assert _fields("CTHEADWO")[4:] == (20, Decimal("275.00"))
    assert ProcedureType.objects.count() == 4  # DXCHEST2V, not in the file, is kept


def test_bad_rows_are_all_reported_and_nothing_is_imported(db: None) -> None:
    import_procedure_catalogue(GOOD)
    before = {code: _fields(code) for code in ("CTHEADWO", "MRKNEEWO", "DXCHEST2V")}
    bad = (
        HEADER
        + "CTHEADWO,CT Head without contrast,CT,HEAD,70450,25,300.00\n"  # a good update
        + "NEWONE,Something new,XX,HEAD,,15,10.00\n"  # line 3: unknown modality
        + "USABDCOMP,US Abdomen complete,US,ABDOMEN,76700,30,180.00\n"
        + "MRKNEEWO,MRI Knee without contrast,MR,KNEE,73721,0,12.345\n"  # line 5: two faults
    )

    with pytest.raises(CatalogueError) as caught:
        import_procedure_catalogue(bad)

    problems = caught.value.problems
    assert {problem.line for problem in problems} == {3, 5}
    assert {(problem.line, problem.column) for problem in problems} == {
        (3, "modality"),
        (5, "duration_minutes"),
        (5, "price"),
    }
    assert "PS3.3 C.7.3.1.1.1" in str(problems[0])
    assert {code: _fields(code) for code in before} == before
    assert not ProcedureType.objects.filter(code__in=["NEWONE", "USABDCOMP"]).exists()


@pytest.mark.parametrize(
    ("row", "column", "words"),
    [
        (",No code,CT,HEAD,70450,15,1.00", "code", "required"),
        ("WAYTOOLONGCODE123,Long code,CT,HEAD,70450,15,1.00", "code", "longer than 16"),
        ("NONAME,,CT,HEAD,70450,15,1.00", "name", "required"),
        ("NOMOD,No modality,,HEAD,70450,15,1.00", "modality", "required"),
        ("BADDUR,Bad duration,CT,HEAD,70450,fifteen,1.00", "duration_minutes", "whole number"),
        ("NEGDUR,Negative duration,CT,HEAD,70450,-5,1.00", "duration_minutes", "whole number"),
        ("ZERODUR,Zero duration,CT,HEAD,70450,0,1.00", "duration_minutes", "at least 1"),
        ("NEGPRICE,Negative price,CT,HEAD,70450,15,-1.00", "price", "negative"),
        ("TEXTPRICE,Text price,CT,HEAD,70450,15,free", "price", "not a decimal"),
        ("EXPPRICE,Exponent price,CT,HEAD,70450,15,1e3", "price", "not a decimal"),
        ("NOPRICE,No price,CT,HEAD,70450,15,", "price", "required"),
        ("CENTS,Too precise,CT,HEAD,70450,15,1.001", "price", "decimal places"),
        ("SHORT,Too few fields,CT,HEAD", "", "expected 7 fields, found 4"),
    ],
)
def test_each_kind_of_bad_value_is_named(db: None, row: str, column: str, words: str) -> None:
    with pytest.raises(CatalogueError) as caught:
        import_procedure_catalogue(HEADER + row + "\n")

    [problem] = caught.value.problems
    assert (problem.line, problem.column) == (2, column)
    assert words in problem.message
    assert not ProcedureType.objects.exists()


def test_duplicate_code_in_the_file_is_refused(db: None) -> None:
    text = GOOD + "CTHEADWO,CT Head again,CT,HEAD,70450,15,250.00\n"

    with pytest.raises(CatalogueError) as caught:
        import_procedure_catalogue(text)

    [problem] = caught.value.problems
    assert problem.line == 5
    assert "duplicate code 'CTHEADWO' (first on line 2)" in problem.message
    assert not ProcedureType.objects.exists()


def test_missing_and_unknown_columns_are_named(db: None) -> None:
    text = "code,name,modality,body_part,cpt,duration,cost\nCTHEADWO,CT Head,CT,HEAD,70450,15,1\n"

    with pytest.raises(CatalogueError) as caught:
        import_procedure_catalogue(text)

    messages = "\n".join(str(problem) for problem in caught.value.problems)
    assert "missing column(s): duration_minutes, price" in messages
    assert "unknown column(s): 'duration', 'cost'" in messages
    assert not ProcedureType.objects.exists()


def test_columns_may_come_in_any_order(db: None) -> None:
    text = "price,code,modality,name,duration_minutes,cpt,body_part\n12.00,XR1,dx,Film,5,,\n"

    result = import_procedure_catalogue(text)

    assert result.created == ["XR1"]
    assert _fields("XR1") == ("Film", "DX", "", "", 5, Decimal("12.00"))


def test_utf8_bom_and_windows_line_endings(db: None) -> None:
    data = "\ufeff" + (GOOD + "USAÉ,Échographie abdominale,US,ABDOMEN,76700,30,180.00\n")
    raw = data.replace("\n", "\r\n").encode("utf-8")

    result = import_procedure_catalogue(io.BytesIO(raw))

    assert len(result.created) == 4
    assert _fields("USAÉ")[0] == "Échographie abdominale"
    assert _fields("MRKNEEWO")[5] == Decimal("650.00")  # no "\r" left on the last field


def test_line_numbers_count_windows_line_endings_and_blank_lines(db: None) -> None:
    text = HEADER + "\nCTHEADWO,CT Head,CT,HEAD,70450,15,250.00\n,,,,,,\nBAD,Bad,QQ,,,15,1\n"

    with pytest.raises(CatalogueError) as caught:
        import_procedure_catalogue(text.replace("\n", "\r\n"))

    assert [problem.line for problem in caught.value.problems] == [5]


def test_text_that_is_not_utf8_is_refused(db: None) -> None:
    with pytest.raises(CatalogueError, match="not UTF-8"):
        import_procedure_catalogue((HEADER + "US1,Échographie,US,,,30,1\n").encode("latin-1"))


def test_the_demo_catalogue_imports_cleanly(db: None) -> None:
    result = import_procedure_catalogue(CATALOGUE_FILE)

    assert len(result.created) >= 30
    modalities = set(ProcedureType.objects.values_list("modality", flat=True))
    assert {"CT", "MR", "US", "CR", "DX", "MG", "PT", "NM", "ES"} <= modalities


def test_command_prints_counts(db: None, tmp_path: Path) -> None:
    path = tmp_path / "procedures.csv"
    path.write_text(GOOD, encoding="utf-8")
    out = io.StringIO()

    call_command("import_procedures", str(path), stdout=out)
    call_command("import_procedures", str(path), stdout=out)

    assert "3 created, 0 updated, 0 unchanged" in out.getvalue()
    assert "0 created, 0 updated, 3 unchanged" in out.getvalue()


def test_command_fails_on_bad_input_and_imports_nothing(db: None, tmp_path: Path) -> None:
    path = tmp_path / "procedures.csv"
    path.write_text(GOOD + "BAD1,,CT,,,15,1\nBAD2,Bad,CT,,,15,-1\n", encoding="utf-8")

    with pytest.raises(CommandError) as caught:
        call_command("import_procedures", str(path), stdout=io.StringIO())

    message = str(caught.value)
    assert "line 5, name: a name is required" in message
    assert "line 6, price: -1 is negative" in message
    assert "nothing imported" in message
    assert not ProcedureType.objects.exists()


def test_command_fails_on_a_missing_file(db: None, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_procedures", str(tmp_path / "nope.csv"))
