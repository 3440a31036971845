"""Eight modalities at once: one patient row, one study row, one row per series, every instance."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from pacs.models import Instance, Series, Study
from ris.models import Patient
from tests import dicom_factory as make
from tests.archive import running_archive, store

pytestmark = pytest.mark.django_db(transaction=True)

MODALITIES = 8
PER_MODALITY = 6


@pytest.mark.parametrize("journal", [True, False], ids=["intake-journal", "index-before-ack"])
def test_parallel_associations_share_rows(settings, journal: bool) -> None:  # type: ignore[no-untyped-def]
    if connection.vendor == "sqlite" and not journal:
        pytest.skip("SQLite serialises writers; the race is PostgreSQL's")
    settings.DICOM_INTAKE_JOURNAL = journal
    study_uid, shared_series = make.uid(), make.uid()
    batches = [
        make.series(
            PER_MODALITY,
            study_uid=study_uid,
            series_uid=shared_series if n % 2 else None,
            patient_id="PARALLEL1",
            patient_name="Parallel^Pat",
        )
        for n in range(MODALITIES)
    ]
    failures: list[str] = []
    with running_archive() as port:
        start = threading.Barrier(MODALITIES)

        def send(batch: list) -> None:  # type: ignore[type-arg]
            start.wait()
            statuses = store(port, batch, ae_title="MODALITY")
            failures.extend(str(s.Status) for s in statuses if s.Status != 0)

        threads = [threading.Thread(target=send, args=(batch,)) for batch in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert failures == []
    assert Patient.objects.count() == 1
    assert Study.objects.count() == 1
    # Odd modalities share one series; the four even ones each have their own.
    assert Series.objects.count() == 1 + MODALITIES // 2
    assert Instance.objects.count() == MODALITIES * PER_MODALITY
    study = Study.objects.get()
    assert study.number_of_instances == MODALITIES * PER_MODALITY
    assert study.number_of_series == 1 + MODALITIES // 2
    assert (
        sum(Series.objects.values_list("number_of_instances", flat=True))
        == MODALITIES * PER_MODALITY
    )
