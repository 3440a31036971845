"""C-MOVE and C-GET: to known nodes only, byte for byte, decompressed when the peer needs it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.models import Instance
from pacs.services import add_node
from tests import dicom_factory as make
from tests.archive import association, query, running_archive, store

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def archive():  # type: ignore[no-untyped-def]
    with running_archive() as port:
        yield port


@contextmanager
def storage_scp(
    ae_title: str, syntaxes: list[str]
) -> Iterator[tuple[int, list[tuple[Dataset, bytes]]]]:
    """A C-STORE SCP that keeps what it receives: (dataset, encoded bytes as received)."""
    received: list[tuple[Dataset, bytes]] = []
    lock = threading.Lock()

    def on_store(event):  # type: ignore[no-untyped-def]
        with lock:
            received.append((event.dataset, event.encoded_dataset(include_meta=False)))
        return 0x0000

    ae = AE(ae_title=ae_title)
    for sop_class in (CTImageStorage,):
        ae.add_supported_context(sop_class, syntaxes)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield server.server_address[1], received
    finally:
        ae.shutdown()


def _move(
    port: int,
    identifier: Dataset,
    destination: str,
    model=StudyRootQueryRetrieveInformationModelMove,
):  # type: ignore[no-untyped-def]
    with association(port, [build_context(model)]) as assoc:
        responses = list(assoc.send_c_move(identifier, destination, model))
    return responses[-1][0]


def test_c_move_sends_a_study_byte_for_byte_to_a_known_node(archive: int) -> None:
    datasets = make.series(3)
    store(archive, datasets)
    with storage_scp("WORKSTN", [ExplicitVRLittleEndian]) as (port, received):
        add_node("WORKSTN", "127.0.0.1", port)
        final = _move(
            archive, query("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID), "WORKSTN"
        )
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 3
    sent = {ds.SOPInstanceUID: make.encoded(ds) for ds in datasets}
    assert {ds.SOPInstanceUID: raw for ds, raw in received} == sent


def test_c_move_to_an_unknown_destination_is_refused(archive: int) -> None:
    ds = make.ct_instance()
    store(archive, [ds])
    final = _move(archive, query("STUDY", StudyInstanceUID=ds.StudyInstanceUID), "NOBODY")
    assert final.Status == 0xA801


def test_c_move_patient_root_by_patient_id(archive: int) -> None:
    store(archive, make.series(2, patient_id="MOVEPAT"))
    store(archive, make.series(1, patient_id="OTHER"))
    with storage_scp("WORKSTN", [ExplicitVRLittleEndian]) as (port, received):
        add_node("WORKSTN", "127.0.0.1", port)
        final = _move(
            archive,
            query("PATIENT", PatientID="MOVEPAT"),
            "WORKSTN",
            PatientRootQueryRetrieveInformationModelMove,
        )
    assert final.NumberOfCompletedSuboperations == 2
    assert {ds.PatientID for ds, _ in received} == {"MOVEPAT"}


@pytest.mark.parametrize("compressed", [RLELossless, JPEG2000Lossless])
def test_compressed_instance_is_decompressed_for_a_peer_that_takes_only_uncompressed(
    archive: int, compressed: str
) -> None:
    ds = make.ct_instance(size=64)
    pixels = ds.pixel_array.copy()
    ds.compress(compressed)
    assert store(archive, [ds])[0].Status == 0x0000
    assert Instance.objects.get().transfer_syntax_uid == compressed
    with storage_scp("PLAINWS", [ImplicitVRLittleEndian]) as (port, received):
        add_node("PLAINWS", "127.0.0.1", port)
        final = _move(archive, query("STUDY", StudyInstanceUID=ds.StudyInstanceUID), "PLAINWS")
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 1
    got = received[0][0]
    got.file_meta = Dataset()
    got.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, pixels)


def test_c_get_returns_the_series_on_the_same_association(archive: int) -> None:
    datasets = make.series(2)
    store(archive, datasets)
    received: list[bytes] = []

    def on_store(event):  # type: ignore[no-untyped-def]
        received.append(event.encoded_dataset(include_meta=False))
        return 0x0000

    contexts = [
        build_context(StudyRootQueryRetrieveInformationModelGet),
        build_context(CTImageStorage, [ExplicitVRLittleEndian]),
    ]
    with association(
        archive,
        contexts,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    ) as assoc:
        identifier = query(
            "SERIES",
            StudyInstanceUID=datasets[0].StudyInstanceUID,
            SeriesInstanceUID=datasets[0].SeriesInstanceUID,
        )
        responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 2
    assert sorted(received) == sorted(make.encoded(ds) for ds in datasets)


def test_retrieve_without_the_unique_key_is_refused(archive: int) -> None:
    store(archive, [make.ct_instance()])
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    with association(archive, contexts) as assoc:
        responses = list(
            assoc.send_c_get(
                query("STUDY", PatientID="X"), StudyRootQueryRetrieveInformationModelGet
            )
        )
    final = responses[-1][0]
    assert final.Status == 0xC000
    assert "StudyInstanceUID is required" in final.ErrorComment


def test_files_are_spread_over_hashed_folders(archive: int) -> None:
    store(archive, [make.ct_instance()])
    relative = Path(Instance.objects.get().file_path)
    assert len(relative.parts) == 5 and len(relative.parts[0]) == 2 and len(relative.parts[1]) == 2
    assert (Path(settings.STORAGE_DIR) / relative).exists()
