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
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_MOVE, C_STORE
from pynetdicom.dsutils import decode as dsutils_decode

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


# -- C-STORE-RQ command sets, read directly -----------------------------------------------


def store_requests() -> list[C_STORE]:
    """C-STORE requests as modalities and C-MOVE sub-operations send them: UIDs of odd and
    even lengths, every priority, message IDs at their limits, with and without a move
    originator."""
    requests = []
    for number in range(60):
        request = C_STORE()
        request.MessageID = (1, 65535, 2 + number * 997 % 65533)[number % 3]
        request.AffectedSOPClassUID = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4")[
            number % 2
        ]
        request.AffectedSOPInstanceUID = f"{generate_uid()[:50].rstrip('.')}.{number * 7}"
        request.Priority = number % 3
        if number % 4 == 0:
            request.MoveOriginatorApplicationEntityTitle = ("MOVER", "A", "SIXTEEN_CHARS_AE")[
                number % 3
            ]
            request.MoveOriginatorMessageID = number + 1
        request.DataSet = BytesIO(make.encoded(make.ct_instance()))
        requests.append(request)
    return requests


def request_p_data(primitive: Any, max_pdu: int) -> list[Any]:
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(primitive)
    return list(message.encode_msg(1, max_pdu))


def received(message: Any, p_data: list[Any]) -> Any:
    for pdata in p_data:
        if message.decode_msg(pdata):
            return message
    raise AssertionError("the message never completed")


def store_parameters(primitive: Any) -> tuple[Any, ...]:
    return (
        type(primitive),
        primitive.MessageID,
        primitive.AffectedSOPClassUID,
        primitive.AffectedSOPInstanceUID,
        primitive.Priority,
        primitive.MoveOriginatorApplicationEntityTitle,
        primitive.MoveOriginatorMessageID,
        primitive._context_id,
        primitive.DataSet.getvalue(),
    )


def fast_message() -> Any:
    from core.dicom_reactor import FastMessage

    message = dimse_messages.DIMSEMessage()
    message.__class__ = FastMessage
    return message


def as_views(p_data: list[Any]) -> list[Any]:
    """The P-DATA primitives as core.dicom_reactor.ReceivedData makes them: memoryviews."""
    out = []
    for pdata in p_data:
        copy = type(pdata)()
        copy.presentation_data_value_list.extend(
            (context_id, memoryview(bytearray(value)))
            for context_id, value in pdata.presentation_data_value_list
        )
        out.append(copy)
    return out


def decode_store_request(command: bytes) -> dict[str, Any] | None:
    """dicom_codec.decode_request's fields of a C-STORE-RQ command set, else None."""
    fields = dicom_codec.decode_request(command)
    if fields is None or fields["CommandField"] != dicom_codec.C_STORE_RQ_FIELD:
        return None
    return fields


def test_store_request_commands_are_read_as_pydicom_reads_them() -> None:
    for request in store_requests():
        command = request_p_data(request, 0)[0].presentation_data_value_list[0][1][1:]
        by_pydicom = dsutils_decode(BytesIO(command), True, True)
        expected = {element.keyword: element.value for element in by_pydicom}
        assert decode_store_request(command) == expected


@pytest.mark.parametrize("max_pdu", [0, 16382, 64])
def test_store_requests_received_directly_are_those_pynetdicom_receives(max_pdu: int) -> None:
    from core.dicom_reactor import StoreRequest

    for request in store_requests():
        p_data = request_p_data(request, max_pdu)
        theirs = received(dimse_messages.DIMSEMessage(), p_data)
        ours = received(fast_message(), as_views(p_data))
        assert isinstance(ours, StoreRequest)  # read directly, not by pydicom
        assert store_parameters(ours.message_to_primitive()) == store_parameters(
            theirs.message_to_primitive()
        )
        assert ours.command_set == theirs.command_set  # pydicom's reading, when asked for


def command_bytes(ds: Dataset) -> bytes:
    body = pydicom_bytes(ds, implicit=True)
    length = Dataset()
    length.CommandGroupLength = len(body)
    return pydicom_bytes(length, implicit=True) + body


def odd_commands() -> list[bytes]:
    store = C_STORE()
    store.MessageID, store.Priority = 7, 0
    store.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    store.AffectedSOPInstanceUID = "1.2.3.4"
    store.DataSet = BytesIO(b"\x08\x00\x18\x00\x00\x00\x00\x00")
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(store)
    plain = message.command_set
    extra = Dataset()
    extra.update(plain)
    extra.MoveDestination = "SOMEWHERE"  # not an element of C-STORE-RQ
    no_data = Dataset()
    no_data.update(plain)
    no_data.CommandDataSetType = 0x0101
    two_uids = Dataset()
    two_uids.update(plain)
    two_uids.AffectedSOPInstanceUID = ["1.2.3", "1.2.4"]
    echo = Dataset()
    echo.AffectedSOPClassUID, echo.CommandField, echo.MessageID = "1.2.840.10008.1.1", 0x0030, 1
    echo.CommandDataSetType = 0x0101
    good = command_bytes(plain)
    not_ascii = good.replace(b"1.2.3.4", b"1.2.3\xe9")
    return [
        command_bytes(extra),
        command_bytes(no_data),
        command_bytes(two_uids),
        command_bytes(echo),
        good[:-3],  # cut inside the last element
        good[:20] + b"\xff",  # an element header cut short
        not_ascii,
    ]


def test_other_and_odd_commands_are_left_to_pydicom() -> None:
    for command in odd_commands():
        assert decode_store_request(command) is None, command


def test_an_odd_store_request_is_received_as_pynetdicom_receives_it() -> None:
    from pynetdicom.pdu_primitives import P_DATA

    from core.dicom_reactor import StoreRequest

    command = odd_commands()[2]  # two SOP instance UIDs: pynetdicom takes the first
    p_data = P_DATA()
    p_data.presentation_data_value_list.extend(
        [(1, b"\x03" + command), (1, b"\x02" + b"\x08\x00\x18\x00\x00\x00\x00\x00")]
    )
    theirs = received(dimse_messages.DIMSEMessage(), [p_data])
    ours = received(fast_message(), as_views([p_data]))
    assert not isinstance(ours, StoreRequest)
    assert store_parameters(ours.message_to_primitive()) == store_parameters(
        theirs.message_to_primitive()
    )


def other_requests() -> list[tuple[Any, Any]]:
    """C-ECHO, C-FIND and C-CANCEL requests as workstations send them, each with the
    pynetdicom message class that encodes it."""
    requests: list[tuple[Any, Any]] = []
    for number in range(12):
        message_id = (1, 65535, 2 + number * 997 % 65533)[number % 3]
        echo = C_ECHO()
        echo.MessageID, echo.AffectedSOPClassUID = message_id, "1.2.840.10008.1.1"
        requests.append((echo, dimse_messages.C_ECHO_RQ))
        find = C_FIND()
        find.MessageID, find.Priority = message_id, number % 3
        find.AffectedSOPClassUID = ("1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.31")[
            number % 2
        ]
        identifier = Dataset()
        identifier.QueryRetrieveLevel, identifier.PatientName = "STUDY", f"DOE{number}*"
        identifier.StudyInstanceUID = ""
        find.Identifier = BytesIO(pydicom_bytes(identifier, implicit=number % 2 == 0))
        requests.append((find, dimse_messages.C_FIND_RQ))
        cancel = C_CANCEL()
        cancel.MessageIDBeingRespondedTo = message_id
        requests.append((cancel, dimse_messages.C_CANCEL_RQ))
    return requests


def request_parameters(primitive: Any) -> tuple[Any, ...]:
    names = ("MessageID", "MessageIDBeingRespondedTo", "AffectedSOPClassUID", "Priority")
    data_set = getattr(primitive, "Identifier", None)
    return (
        type(primitive),
        *(getattr(primitive, name, None) for name in names),
        primitive._context_id,
        data_set.getvalue() if data_set is not None else None,
    )


@pytest.mark.parametrize("max_pdu", [0, 16382, 64])
def test_echo_find_and_cancel_requests_are_read_directly_as_pynetdicom_reads_them(
    max_pdu: int,
) -> None:
    from core.dicom_reactor import DirectRequest

    for request, message_class in other_requests():
        message = message_class()
        message.primitive_to_message(request)
        p_data = list(message.encode_msg(3, max_pdu))
        command = b"".join(
            bytes(value[1:])
            for pdata in p_data
            for _, value in pdata.presentation_data_value_list
            if value[0] & 1
        )
        by_pydicom = dsutils_decode(BytesIO(command), True, True)
        assert dicom_codec.decode_request(command) == {e.keyword: e.value for e in by_pydicom}
        theirs = received(dimse_messages.DIMSEMessage(), p_data)
        ours = received(fast_message(), as_views(p_data))
        assert isinstance(ours, DirectRequest)  # read directly, not by pydicom
        assert type(ours).__name__ == type(theirs).__name__  # pynetdicom goes by the name
        assert request_parameters(ours.message_to_primitive()) == request_parameters(
            theirs.message_to_primitive()
        )
        assert ours.command_set == theirs.command_set  # pydicom's reading, when asked for


def test_odd_echo_find_and_cancel_requests_are_left_to_pydicom() -> None:
    def command(**elements: Any) -> bytes:
        ds = Dataset()
        for keyword, value in elements.items():
            setattr(ds, keyword, value)
        return command_bytes(ds)

    echo = {"AffectedSOPClassUID": "1.2.840.10008.1.1", "CommandField": 0x0030, "MessageID": 1}
    find = {**echo, "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.2.2.1", "CommandField": 0x20}
    assert dicom_codec.decode_request(command(**echo, CommandDataSetType=0x0101)) is not None
    for odd in (
        command(**echo, CommandDataSetType=0x0000),  # a data set after a C-ECHO-RQ
        command(**echo),  # no Command Data Set Type
        command(**echo, Priority=0, CommandDataSetType=0x0101),  # not an element of C-ECHO-RQ
        command(**find, Priority=0, CommandDataSetType=0x0101),  # a C-FIND-RQ without one
        command(CommandField=0x0FFF, MessageID=1, CommandDataSetType=0x0101),  # C-CANCEL-RQ
        command(**{**echo, "CommandField": 0x0021}, Priority=0, CommandDataSetType=0),  # C-MOVE
    ):
        assert dicom_codec.decode_request(odd) is None, odd


def test_p_data_items_are_split_as_pynetdicom_splits_them() -> None:
    from pynetdicom.pdu import P_DATA_TF

    from core.dicom_reactor import ReceivedData

    request = store_requests()[1]
    for pdata in request_p_data(request, 16382):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        encoded = pdu.encode()
        theirs = P_DATA_TF()
        theirs.decode(encoded)
        ours = ReceivedData(bytearray(encoded[6:])).to_primitive()
        assert [(c, bytes(v)) for c, v in ours.presentation_data_value_list] == [
            (c, bytes(v)) for c, v in theirs.to_primitive().presentation_data_value_list
        ]
    for body in (b"", b"\x00\x00\x00\x05\x01\x03", b"\x00\x00\x00\x01\x01", b"\x00\x00"):
        with pytest.raises(ValueError):
            ReceivedData(bytearray(body))  # pynetdicom decodes (and refuses) these itself


@pytest.mark.parametrize(
    ("maximum", "limit"), [(262144, 262144 + 1024), (0, 16 * 1024 * 1024), (None, 16 * 1024 * 1024)]
)
def test_a_p_data_longer_than_we_receive_is_not_read_into_a_buffer_sized_up_front(
    maximum: int | None, limit: int
) -> None:
    """A header may claim up to 4 GB and the peer then stall: only a PDU within the length
    we told the peer (PS3.8 D.1) gets a buffer of its claimed size; a longer one is read by
    pynetdicom as its bytes arrive."""
    from types import SimpleNamespace

    from core.dicom_reactor import FastDUL

    dul = object.__new__(FastDUL)
    dul._assoc = SimpleNamespace(acceptor=SimpleNamespace(maximum_length=maximum))  # type: ignore[assignment]
    assert dul._direct_limit() == limit
