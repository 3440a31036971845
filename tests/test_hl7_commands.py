"""manage.py hl7destination: the systems HL7 is sent to."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from ris.hl7.models import Destination, OutboundMessage

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("hl7destination", *args, stdout=out)
    return out.getvalue()


def test_add_list_change_disable_enable() -> None:
    output = run(
        "add",
        "EMR",
        "emr.example.org",
        "2575",
        "--types",
        "oru, dft,ORU",
        "--receiving-application",
        "EMR",
        "--character-set",
        "8859/1",
    )
    assert "EMR: emr.example.org:2575 types ORU,DFT, enabled" in output
    destination = Destination.objects.get(name="EMR")
    assert (destination.receiving_application, destination.character_set) == ("EMR", "8859/1")
    assert destination.wants("ORU") and not destination.wants("ADT")

    assert "EMR\temr.example.org:2575\tORU,DFT\tenabled\t0 waiting" in run("list")
    run("change", "EMR", "--port", "6661", "--types", "ORU,DFT,ADT")
    destination.refresh_from_db()
    assert (destination.port, destination.types) == (6661, ["ORU", "DFT", "ADT"])
    run("disable", "EMR")
    destination.refresh_from_db()
    assert not destination.enabled and not destination.wants("ORU")
    run("enable", "EMR")
    destination.refresh_from_db()
    assert destination.enabled


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "X", "h", "2575", "--types", "ORU,SIU"], "not SIU"),
        (["add", "X", "h", "2575", "--types", ""], "--types takes"),
        (["add", "X", "h", "70000", "--types", "ORU"], "port"),
        (["change", "NOPE", "--port", "1"], "no destination named 'NOPE'"),
        (["enable", "NOPE"], "no destination named 'NOPE'"),
    ],
)
def test_bad_input_is_refused(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not Destination.objects.filter(name="X").exists()


def test_adding_a_name_twice_is_refused() -> None:
    run("add", "HIS", "h", "2575", "--types", "ORM")
    with pytest.raises(CommandError, match="exists already"):
        run("add", "HIS", "other", "2576", "--types", "ADT")


def test_a_destination_with_messages_is_not_removed() -> None:
    run("add", "HIS", "h", "2575", "--types", "ORM")
    run("add", "OLD", "h", "2576", "--types", "ORM")
    OutboundMessage.objects.create(
        destination=Destination.objects.get(name="HIS"),
        message_type="ORM^O01",
        control_id="C1",
        raw="MSH|^~\\&|\r",
    )
    with pytest.raises(CommandError, match="1 undelivered message"):
        run("remove", "HIS")
    assert "OLD removed" in run("remove", "OLD")
    assert list(Destination.objects.values_list("name", flat=True)) == ["HIS"]
