"""The fast DIMSE dataset writer gives pydicom's bytes exactly, or hands the dataset back."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from pynetdicom import dimse, dimse_messages, service_class
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_MOVE, C_STORE

from core import dicom_codec
from tests import dicom_factory as make
from tests.mwl_query import worklist_query


def pydicom_bytes(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds)
    return fp.getvalue()


def find_response(name: str, charset: str | None) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    ds.PatientID = "SYN-0001"
    ds.IssuerOfPatientID = ""
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = "20260105"
    ds.ModalitiesInStudy = ["CT", "SR"]
    ds.NumberOfStudyRelatedInstances = 12
    ds.NumberOfStudyRelatedSeries = "3"
    ds.RetrieveAETitle = "RISPACS"
    ds.ReferencedStudySequence = []
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "CTHEAD", "99RISPACS", "CT"
    ds.ProcedureCodeSequence = [item, Dataset()]
    return ds


def command_sets() -> list[Dataset]:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.31"
    rsp.Status = 0xFF00
    rsp.Identifier = BytesIO(b"\x08\x00\x50\x00\x00\x00\x00\x00")
    store = C_STORE()
    store.MessageIDBeingRespondedTo = 3
    store.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    store.AffectedSOPInstanceUID = generate_uid()
    store.Status = 0xA700
    store.ErrorComment = "odd length comment"  # type: ignore[assignment]
    sets = []
    for primitive in (rsp, store):
        message = (
            dimse_messages.C_FIND_RSP()
            if isinstance(primitive, C_FIND)
            else dimse_messages.C_STORE_RSP()
        )
        message.primitive_to_message(primitive)
        sets.append(message.command_set)
    return sets


def cases() -> list[tuple[str, Dataset]]:
    found = [
        ("ascii", find_response("Testperson^Alex", None)),
        ("latin-1", find_response("Müller^Jörg", "ISO_IR 100")),
        ("utf-8", find_response("山田^太郎=やまだ^たろう", "ISO_IR 192")),
        ("worklist query", worklist_query(PatientName="TEST*", Modality="CT")),
        ("ct header", make.ct_instance()),
    ]
    found += [(f"command {n}", ds) for n, ds in enumerate(command_sets())]
    for path in get_charset_files("*.dcm"):
        ds = dcmread(path)
        ds.decode()  # values as a handler would set them, not raw bytes
        found.append((Path(path).name, ds))
    return found


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_written_exactly_as_pydicom_writes_or_handed_back(implicit: bool) -> None:
    written = 0
    for label, ds in cases():
        ours = dicom_codec.encode_little_endian(ds, implicit)
        if ours is not None:
            written += 1
            assert ours == pydicom_bytes(ds, implicit), label
    # The query datasets, the command sets and the single-byte and UTF-8 files are ours.
    assert written >= 10


def test_code_extensions_and_raw_elements_go_to_pydicom() -> None:
    ds = find_response("Yamada^Tarou", None)
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    assert dicom_codec.encode_little_endian(ds, True) is None
    raw = dcmread(str(get_testdata_file("CT_small.dcm")))  # elements still raw: as read
    assert dicom_codec.encode_little_endian(raw, False) is None


def test_install_wraps_pynetdicom_once_and_falls_back() -> None:
    dicom_codec.install()
    dicom_codec.install()
    assert dimse_messages.encode.wrapped.__module__ == "pynetdicom.dsutils"  # type: ignore[attr-defined]
    ds = find_response("Testperson^Alex", None)
    assert service_class.encode(ds, False, False) == pydicom_bytes_big_endian(ds)


def pydicom_bytes_big_endian(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, False
    write_dataset(fp, ds)
    return fp.getvalue()


def pynetdicom_p_data(primitive: Any, max_pdu: int) -> list[tuple[int, bytes]]:
    message = dimse._RSP_TO_MESSAGE[type(primitive)]()
    message.primitive_to_message(primitive)
    return [
        item
        for pdata in message.encode_msg(1, max_pdu)
        for item in pdata.presentation_data_value_list
    ]


def responses() -> list[Any]:
    identifier = pydicom_bytes(find_response("Testperson^Alex", None), implicit=False)
    pending = C_FIND()
    pending.MessageIDBeingRespondedTo, pending.Status = 7, 0xFF00
    pending.AffectedSOPClassUID = "1.2.840.10008.5.1.4.31"
    pending.Identifier = BytesIO(identifier)
    final = C_FIND()
    final.MessageIDBeingRespondedTo, final.Status = 7, 0x0000
    final.AffectedSOPClassUID = "1.2.840.10008.5.1.4.31"
    refused = C_FIND()
    refused.MessageIDBeingRespondedTo, refused.Status = 8, 0xA900
    refused.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    refused.ErrorComment = "StudyDate: not a date"  # type: ignore[assignment]
    refused.OffendingElement = [0x00080020]  # type: ignore[assignment]
    stored = C_STORE()
    stored.MessageIDBeingRespondedTo, stored.Status = 3, 0x0000
    stored.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    stored.AffectedSOPInstanceUID = generate_uid()
    echoed = C_ECHO()
    echoed.MessageIDBeingRespondedTo, echoed.Status = 1, 0x0000
    echoed.AffectedSOPClassUID = "1.2.840.10008.1.1"
    moving = C_MOVE()
    moving.MessageIDBeingRespondedTo, moving.Status = 5, 0xFF00
    moving.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    moving.NumberOfRemainingSuboperations = 3
    moving.NumberOfCompletedSuboperations = 1
    moving.NumberOfFailedSuboperations = 0
    moving.NumberOfWarningSuboperations = 0
    return [pending, final, refused, stored, echoed, moving]


@pytest.mark.parametrize("max_pdu", [0, 16382, 64])
def test_responses_go_out_in_the_same_p_data_as_pynetdicom_sends(max_pdu: int) -> None:
    for primitive in responses():
        encoded = dicom_codec.encode_response(primitive)
        assert encoded is not None, primitive
        ours = [
            item
            for pdata in dicom_codec.p_data(1, *encoded, max_pdu)
            for item in pdata.presentation_data_value_list
        ]
        assert ours == pynetdicom_p_data(primitive, max_pdu), type(primitive).__name__


def test_requests_and_odd_responses_are_left_to_pynetdicom() -> None:
    request = C_FIND()
    request.MessageID = 1
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.31"
    assert dicom_codec.encode_response(request) is None  # a request, not a response
    odd = C_STORE()
    odd.MessageIDBeingRespondedTo, odd.Status = 3, 0x0000
    odd.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    odd.ErrorComment = "Comment in Ω"  # type: ignore[assignment]  # not ASCII: pydicom's
    assert dicom_codec.encode_response(odd) is None
