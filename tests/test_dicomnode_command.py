from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from pacs.models import DicomNode

pytestmark = pytest.mark.django_db


def test_add_list_change_and_remove(capsys) -> None:  # type: ignore[no-untyped-def]
    call_command("dicomnode", "add", "CT_ROOM1", "10.0.0.5", "104", "--no-retrieve")
    node = DicomNode.objects.get()
    assert (node.host, node.port, node.may_store, node.may_query, node.may_retrieve) == (
        "10.0.0.5",
        104,
        True,
        True,
        False,
    )
    call_command("dicomnode", "add", "CT_ROOM1", "10.0.0.6", "11112")
    assert DicomNode.objects.get().host == "10.0.0.6"
    call_command("dicomnode", "list")
    assert "CT_ROOM1" in capsys.readouterr().out
    call_command("dicomnode", "remove", "CT_ROOM1")
    assert not DicomNode.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "A" * 17, "h", "104"], "not an AE title"),
        (["add", "OK", "h", "70000"], "port must be"),
        (["remove", "NOBODY"], "no node"),
    ],
)
def test_bad_input_is_refused(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("dicomnode", *args)
    assert not DicomNode.objects.exists()
