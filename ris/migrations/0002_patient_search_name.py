"""Patient.search_name: the accent- and case-folded name the front desk searches by."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models

from ris.names import patient_search_key

BATCH_SIZE = 500


def fill_search_names(apps: Any, schema_editor: Any) -> None:
    """Compute search_name for the patients already registered."""
    patient_model = apps.get_model("ris", "Patient")
    batch = []
    for patient in patient_model.objects.only("family_name", "given_name", "middle_name").iterator(
        chunk_size=BATCH_SIZE
    ):
        patient.search_name = patient_search_key(
            patient.family_name, patient.given_name, patient.middle_name
        )
        batch.append(patient)
        if len(batch) >= BATCH_SIZE:
            patient_model.objects.bulk_update(batch, ["search_name"])
            batch = []
    if batch:
        patient_model.objects.bulk_update(batch, ["search_name"])


class Migration(migrations.Migration):
    dependencies = [
        ("ris", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="patient",
            name="search_name",
            field=models.CharField(blank=True, editable=False, max_length=200),
        ),
        migrations.AddIndex(
            model_name="patient",
            index=models.Index(
                fields=["search_name"],
                name="patient_search_name",
                opclasses=["varchar_pattern_ops"],
            ),
        ),
        migrations.RunPython(fill_search_names, migrations.RunPython.noop, elidable=True),
    ]
