"""core.db.insert_row writes what Model.save() writes for a new row, in one statement."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db.models import Model
from django.forms.models import model_to_dict
from django.utils import timezone

from core.db import insert_row
from pacs.models import DicomNode
from pacs.selectors import node_cache
from ris.models import Order, Patient
from tests import factories

pytestmark = pytest.mark.django_db


def _stored(instance: Model) -> dict[str, Any]:
    """INSTANCE's row as read back, without its primary key."""
    row = model_to_dict(type(instance)._default_manager.get(pk=instance.pk))
    row.pop("id")
    return row


def test_a_row_written_by_insert_row_equals_one_written_by_save(
    django_assert_num_queries: Any,
) -> None:
    before = timezone.now()
    patient = factories.patient()
    saved = Order(accession_number="SAVE-1", patient=patient, reason="Headache")
    saved.save()
    inserted = Order(accession_number="INSERT-1", patient=patient, reason="Headache")
    with django_assert_num_queries(1):
        insert_row(inserted)
    assert inserted.pk is not None and inserted.pk != saved.pk
    assert not inserted._state.adding
    read_saved, read_inserted = _stored(saved), _stored(inserted)
    assert read_inserted.pop("accession_number") == "INSERT-1"
    read_saved.pop("accession_number")
    assert read_inserted == read_saved  # defaults, foreign keys, blank fields alike
    # auto_now_add and auto_now are filled in, as save() fills them.
    stored = Order.objects.get(pk=inserted.pk)
    assert before <= stored.ordered_at <= timezone.now()
    assert abs(stored.updated_at - stored.ordered_at) < dt.timedelta(seconds=1)


def test_a_model_with_a_save_receiver_is_saved_with_save() -> None:
    node_cache.clear()
    assert "INSERTED" not in node_cache.nodes()  # the cache now holds the table without it
    node = DicomNode(ae_title="INSERTED", host="127.0.0.1", port=11112)
    insert_row(node)
    # pacs.receivers empties the cache on post_save: the new node is found at once.
    found = node_cache.nodes().get("INSERTED")
    assert found is not None and found.port == 11112


def test_a_row_written_already_is_refused() -> None:
    patient = factories.patient()
    patient.family_name = "CHANGED"
    with pytest.raises(ValueError, match="written already"):
        insert_row(patient)
    assert not Patient.objects.filter(family_name="CHANGED").exists()
