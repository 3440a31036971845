"""The archive's DICOM listener in-process, and SCU helpers, for tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from core import audit
from core.dicom_server import build_ae, start
from pacs import journal
from pacs.selectors import node_cache

ARCHIVE_AE = "ARCHIVE"
SCU_AE = "TESTSCU"


@contextmanager
def running_archive() -> Iterator[int]:
    """Start the archive's AE with every configured service on a free port; yield the port."""
    node_cache.clear()
    ae = build_ae(ARCHIVE_AE)
    server = start(ae, "127.0.0.1", 0, block=False)
    try:
        yield int(server.server_address[1])
    finally:
        ae.shutdown()
        # The rows of associations that ended last go in before the test's database goes.
        audit.flush(timeout=30)
        node_cache.clear()
        intake = journal.current()
        if intake is not None:
            intake.stop()


def scu(ae_title: str = SCU_AE) -> AE:
    client = AE(ae_title=ae_title)
    client.acse_timeout = client.dimse_timeout = client.network_timeout = 30
    return client


@contextmanager
def association(
    port: int, contexts: list[Any], ae_title: str = SCU_AE, **kwargs: Any
) -> Iterator[Any]:
    client = scu(ae_title)
    assoc = client.associate("127.0.0.1", port, ae_title=ARCHIVE_AE, contexts=contexts, **kwargs)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def store(port: int, datasets: list[Dataset], ae_title: str = SCU_AE) -> list[Dataset]:
    """C-STORE DATASETS over one association; return the response statuses."""
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets})
    classes = sorted({str(ds.SOPClassUID) for ds in datasets})
    contexts = [build_context(sop_class, syntaxes) for sop_class in classes]
    with association(port, contexts, ae_title) as assoc:
        assert assoc.is_established, "association rejected"
        statuses = [assoc.send_c_store(ds) for ds in datasets]
    flush()
    return statuses


def flush() -> None:
    """Wait until what the archive acknowledged is indexed too (the intake journal lags)."""
    assert journal.flush(30), "the archive's indexer did not catch up"


def find(
    port: int, query: Dataset, model: str = "study", ae_title: str = SCU_AE
) -> tuple[list[Dataset], Dataset]:
    """C-FIND; return the matches and the final status dataset."""
    sop_class = (
        StudyRootQueryRetrieveInformationModelFind
        if model == "study"
        else PatientRootQueryRetrieveInformationModelFind
    )
    with association(port, [build_context(sop_class)], ae_title) as assoc:
        assert assoc.is_established, "association rejected"
        matches, final = [], None
        for status, identifier in assoc.send_c_find(query, sop_class):
            if status.Status in (0xFF00, 0xFF01):
                matches.append(identifier)
            else:
                final = status
        assert final is not None
        return matches, final


def query(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


STORAGE_CONTEXTS = StoragePresentationContexts


@contextmanager
def study_with_a_wrong_patient_id(instances: int = 2) -> Iterator[tuple[Any, Any]]:
    """An order, and a study for it sent with a wrong patient id: one open queue item.

    Yields the ReconciliationItem and the order's RequestedProcedure while the archive runs.
    """
    from pacs.models import ReconciliationItem
    from ris import services as ris_services
    from tests import dicom_factory, factories

    patient = factories.patient(
        "Testperson",
        "Alex",
        birth_date=dt.date(1970, 1, 1),
        sex="F",
        identifiers=[ris_services.IdentifierInput("MRN4242", "DEMO")],
    )
    requested = factories.order(patient).requested_procedures.get()
    with running_archive() as port:
        store(
            port,
            dicom_factory.series(
                instances,
                study_uid=requested.study_instance_uid,
                accession=requested.order.accession_number,
                patient_id="WRONG99",
                issuer="DEMO",
            ),
        )
        yield ReconciliationItem.objects.get(), requested
