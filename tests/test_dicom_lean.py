"""Associations that only verify or query, served on the accepting thread (core.dicom_lean)."""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import OperationalError
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from bench import replay
from core import audit, dicom_lean
from core.dicom_server import ArchiveAE, build_ae, start
from core.models import AuditEvent
from pacs import dimse, selectors
from pacs.dimse import STATUS_CANCEL, STATUS_PENDING, STATUS_SUCCESS
from tests.netutil import DEADLINE, wait_until

SCP_AE_TITLE = "LEANSCP"


@pytest.fixture
def served_by(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The class of the association object each C-ECHO was answered on."""
    seen: list[str] = []

    def handle_echo(event: Any) -> int:
        seen.append(type(event.assoc).__name__)
        return STATUS_SUCCESS

    monkeypatch.setattr(dimse, "handle_echo", handle_echo)
    return seen


@pytest.fixture
def server(settings: Any) -> Iterator[tuple[ArchiveAE, int]]:
    settings.DICOM_SERVICES = [
        "pacs.dimse.access_service",
        "pacs.dimse.verification_service",
        "pacs.dimse.query_service",
        "pacs.dimse.storage_service",
    ]
    settings.DICOM_INTAKE_JOURNAL = False
    settings.DICOM_ACCEPT_UNKNOWN_AE = True
    ae = build_ae(SCP_AE_TITLE)
    listener = start(ae, "127.0.0.1", 0, block=False)
    yield ae, int(listener.server_address[1])
    ae.shutdown()
    # The rows of associations that ended last go in before the test's database goes.
    audit.flush(timeout=DEADLINE)


def _wait_for_row(rows: Any, timeout: float = DEADLINE) -> AuditEvent:
    """The first of ROWS once the listener has written it, the association still open."""

    def first() -> AuditEvent | None:
        try:
            return rows.first()  # type: ignore[no-any-return]
        except OperationalError:  # SQLite's shared test database, while the row goes in
            return None

    return wait_until(first, timeout=timeout, what="the audit row")


def _associate(port: int, contexts: list[str], **kwargs: Any) -> Any:
    scu = AE(ae_title="LEANSCU")
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = DEADLINE
    for context in contexts:
        scu.add_requested_context(context)
    assoc = scu.associate("127.0.0.1", port, ae_title=SCP_AE_TITLE, **kwargs)
    assert assoc.is_established
    return assoc


@pytest.mark.django_db(transaction=True)
def test_an_echo_association_is_served_lean_and_one_that_may_store_by_pynetdicom(
    served_by: list[str], server: tuple[ArchiveAE, int]
) -> None:
    _, port = server
    for contexts in ([Verification], [Verification, CTImageStorage]):
        assoc = _associate(port, contexts)
        assert assoc.send_c_echo().Status == STATUS_SUCCESS
        assoc.release()
    assert served_by == ["LeanAssociation", "Association"]


@pytest.mark.django_db(transaction=True)
def test_a_bound_notification_handler_sends_the_association_to_pynetdicom(
    served_by: list[str], server: tuple[ArchiveAE, int]
) -> None:
    ae, port = server
    seen: list[str] = []
    ae._servers[0].bind(evt.EVT_DIMSE_RECV, lambda event: seen.append("received"))
    assoc = _associate(port, [Verification])
    assoc.send_c_echo()
    assoc.release()
    assert served_by == ["Association"] and seen == ["received"]


def _study(uid: str = "") -> Dataset:
    """A STUDY level identifier: a reply holding UID, or, empty, a query matching every study."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    return ds


def _reply(number: int) -> Dataset:
    return _study(f"1.2.826.0.1.3680043.8.498.77.{number}")


@pytest.mark.django_db(transaction=True)
def test_c_cancel_stops_a_lean_query(
    server: tuple[ArchiveAE, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = server
    cancel_sent = threading.Event()
    total = 2000

    def matches(*args: Any, **kwargs: Any) -> Iterator[Dataset]:
        yield _reply(0)
        # The rest only once the test has sent C-CANCEL: the handler looks for it before
        # each, and must see it long before the last.
        assert cancel_sent.wait(DEADLINE), "the test never sent C-CANCEL"
        for number in range(1, total):
            yield _reply(number)

    monkeypatch.setattr(selectors, "match_rows", lambda query: (list(range(total)), None))
    monkeypatch.setattr(selectors, "responses", matches)
    query = _study()
    assoc = _associate(port, [StudyRootQueryRetrieveInformationModelFind])
    responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, msg_id=9)
    status, _ = next(responses)
    assert status.Status == STATUS_PENDING
    assoc.send_c_cancel(9, None, StudyRootQueryRetrieveInformationModelFind)
    cancel_sent.set()
    statuses = [status.Status for status, _ in responses]
    assoc.release()
    assert statuses[-1] == STATUS_CANCEL
    assert len(statuses) < total - 1
    # One row: what was found, and how much of it was sent before the cancel.
    assert audit.flush(timeout=DEADLINE)
    [detail] = AuditEvent.objects.filter(action="query").values_list("detail", flat=True)
    sent = rf"(\d+) of {total} result\(s\) sent; C-FIND study root cancelled; keys: "
    match = re.match(sent, detail)
    assert match and int(match.group(1)) == len(statuses)  # the first pending, then the rest


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = _exactly(sock, 6)
    pdu_type, _, length = struct.unpack(">BBI", header)
    return pdu_type, _exactly(sock, length)


def _exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return data


@pytest.mark.django_db(transaction=True)
def test_a_release_sent_with_the_query_is_answered_after_its_final_response(
    server: tuple[ArchiveAE, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = server
    monkeypatch.setattr(selectors, "responses", lambda *a, **k: iter([_reply(1), _reply(2)]))
    sock, context_id, implicit = replay.associate(
        port, SCP_AE_TITLE, "LEANSCU", replay.STUDY_ROOT_FIND
    )
    query = _study()
    command = replay._command(replay.C_FIND_RQ, replay.STUDY_ROOT_FIND, replay.DATA_SET)
    encoded = replay._encode(query, implicit=implicit)
    # The peer does not wait for the responses before asking to release (it should).
    sock.sendall(
        replay.p_data(context_id, command, command=True)
        + replay.p_data(context_id, encoded, command=False)
        + replay.RELEASE_RQ
    )
    with sock:
        # As pynetdicom does: the query stops at the release (at most both matches), its
        # final response goes out, then the A-RELEASE-RP.
        assert replay._responses(sock) <= 2
        assert _read_pdu(sock)[0] == dicom_lean.A_RELEASE_RP_PDU


@pytest.mark.django_db(transaction=True)
def test_a_malformed_p_data_aborts_a_lean_association_and_the_server_goes_on(
    served_by: list[str], server: tuple[ArchiveAE, int]
) -> None:
    _, port = server
    sock, context_id, _ = replay.associate(port, SCP_AE_TITLE, "LEANSCU", replay.VERIFICATION)
    with sock:
        # A PDV item claiming more bytes than its PDU holds (PS3.8 9.3.5.1).
        item = struct.pack(">IB", 500, context_id) + b"\x03" + b"\x00" * 10
        sock.sendall(struct.pack(">BBI", dicom_lean.P_DATA_TF_PDU, 0, len(item)) + item)
        pdu_type, body = _read_pdu(sock)
    assert pdu_type == dicom_lean.A_ABORT_PDU
    assert body[2] == dicom_lean.ABORT_SOURCE_PROVIDER
    assert replay.echo(port, SCP_AE_TITLE, "LEANSCU") > 0
    assert served_by == ["LeanAssociation"]


@pytest.mark.django_db(transaction=True)
def test_a_connection_that_has_sent_nothing_does_not_hold_the_server_at_stop(
    settings: Any,
) -> None:
    """The requestor speaks first (PS3.8 9.1.2): a connection wakes the server only with its
    first bytes (TCP_DEFER_ACCEPT), so a silent one takes no thread, and stopping the server
    does not wait for it (the ACSE timeout would hold it 30 s); it is then refused."""
    settings.DICOM_SERVICES = ["pacs.dimse.verification_service"]
    ae = build_ae(SCP_AE_TITLE)
    listener = start(ae, "127.0.0.1", 0, block=False)
    port = int(listener.server_address[1])
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as silent:
        assert replay.echo(port, SCP_AE_TITLE, "LEANSCU") > 0  # served meanwhile
        stopping = threading.Thread(target=ae.shutdown)
        stopping.start()
        stopping.join(DEADLINE)
        assert not stopping.is_alive()
        try:
            silent.sendall(replay.associate_rq(SCP_AE_TITLE, "LEANSCU", replay.VERIFICATION))
            data = silent.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
    assert data in (b"", struct.pack(">BBIBBBB", dicom_lean.A_ABORT_PDU, 0, 4, 0, 0, 2, 0))


def _pynetdicom_accept(request: bytes, results: list[Any], ae: ArchiveAE) -> bytes:
    """The A-ASSOCIATE-AC pynetdicom's ACSE sends for RESULTS (acse.send_accept)."""
    from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
    )

    pdu = A_ASSOCIATE_RQ()
    pdu.decode(request)
    received = pdu.to_primitive()
    primitive = A_ASSOCIATE()
    primitive.application_context_name = dicom_lean.APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = received.calling_ae_title
    primitive.called_ae_title = received.called_ae_title
    primitive.result, primitive.result_source = 0x00, 0x01
    primitive.presentation_context_definition_results_list = results
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = ae.maximum_pdu_size
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = ae.implementation_class_uid
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = ae.implementation_version_name
    primitive.user_information = [maximum, implementation, version]
    accept = A_ASSOCIATE_AC()
    accept.from_primitive(primitive)
    return bytes(accept.encode())


def _request(*contexts: tuple[str, list[str]], user: bytes | None = None) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing CONTEXTS, with USER as its user information."""

    def item(item_type: int, value: bytes) -> bytes:
        return struct.pack(">BBH", item_type, 0, len(value)) + value

    body = struct.pack(">HH", 1, 0) + b"LEANSCP".ljust(16) + b"LEANSCU".ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    for number, (abstract_syntax, syntaxes) in enumerate(contexts):
        value = bytes([2 * number + 1, 0, 0, 0]) + item(0x30, abstract_syntax.encode() + b"\0")
        value += b"".join(item(0x40, syntax.encode()) for syntax in syntaxes)
        body += item(0x20, value)
    if user is None:
        user = item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4")
    body += item(0x50, user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


IMPLICIT, EXPLICIT, JPEG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"


@pytest.mark.parametrize(
    "contexts",
    [
        [(Verification, [IMPLICIT])],
        [(StudyRootQueryRetrieveInformationModelFind, [EXPLICIT, IMPLICIT])],
        [(Verification, [JPEG]), (StudyRootQueryRetrieveInformationModelFind, [EXPLICIT])],
        # Worklist is not offered by this AE: rejected, abstract syntax not supported.
        [(Verification, [EXPLICIT]), ("1.2.840.10008.5.1.4.31", [IMPLICIT])],
    ],
    ids=["echo", "find", "one-syntax-refused", "one-class-refused"],
)
def test_the_request_is_read_and_answered_as_pynetdicom_does(
    settings: Any, contexts: list[tuple[str, list[str]]]
) -> None:
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.presentation import negotiate_as_acceptor

    settings.DICOM_SERVICES = ["pacs.dimse.verification_service", "pacs.dimse.query_service"]
    ae = build_ae(SCP_AE_TITLE)
    data = _request(*contexts)
    server = type("Server", (), {"_handlers": {}})()
    read = dicom_lean.lean_request(data, server)  # type: ignore[arg-type]
    assert read is not None
    theirs = A_ASSOCIATE_RQ()
    theirs.decode(data)
    proposed = theirs.to_primitive().presentation_context_definition_list
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntax) for c in read.contexts] == [
        (c.context_id, c.abstract_syntax, c.transfer_syntax) for c in proposed
    ]
    assert read.maximum_length == 16384
    results, _ = negotiate_as_acceptor(read.contexts, ae.supported_contexts, {})
    ours = dicom_lean.accept_pdu(
        read,
        results,
        ae.maximum_pdu_size,
        ae.implementation_class_uid,
        ae.implementation_version_name,
    )
    assert ours == _pynetdicom_accept(data, results, ae)


@pytest.mark.parametrize(
    "data",
    [
        _request((CTImageStorage, [IMPLICIT])),  # storage: pynetdicom's
        _request(
            (Verification, [IMPLICIT]),
            user=b"\x51\x00\x00\x04\x00\x00\x40\x00" + b"\x54\x00\x00\x05\x00\x01\x01\x01\x01",
        ),  # role selection
        _request((Verification, [IMPLICIT]), user=b""),  # no maximum length
        _request((Verification, [IMPLICIT]))[:-3],  # cut short
    ],
    ids=["storage", "role-selection", "no-maximum-length", "truncated"],
)
def test_anything_else_goes_to_pynetdicom(data: bytes) -> None:
    server = type("Server", (), {"_handlers": {}})()
    assert dicom_lean.lean_request(data, server) is None  # type: ignore[arg-type]


@pytest.mark.django_db(transaction=True)
def test_connections_are_served_on_the_thread_that_accepts_them_kept_and_ended_on_stop(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """core.dicom_reactor._Leaders: the thread that accepts a connection serves it, another
    waits for the next meanwhile; threads are kept from one connection to the next, and
    all end when the server stops."""
    served: list[int] = []

    def handle_echo(event: Any) -> int:
        served.append(threading.get_ident())
        return STATUS_SUCCESS

    monkeypatch.setattr(dimse, "handle_echo", handle_echo)
    settings.DICOM_SERVICES = ["pacs.dimse.verification_service"]
    ae = build_ae(SCP_AE_TITLE)
    listener = start(ae, "127.0.0.1", 0, block=False)
    port = int(listener.server_address[1])
    try:
        held = _associate(port, [Verification])  # its thread stays with it
        assert held.send_c_echo().Status == STATUS_SUCCESS
        for _ in range(3):
            assoc = _associate(port, [Verification])
            assert assoc.send_c_echo().Status == STATUS_SUCCESS
            assoc.release()
            # Its thread waits to lead again once done with it (its audit row written, the
            # peer's close seen); a connection coming before that gets a thread of its own.
            wait_until(lambda: listener._leaders._followers or None, what="a thread back")
        assert held.send_c_echo().Status == STATUS_SUCCESS
        held.release()
        assert served[0] == served[-1]  # the held association's own thread, both times
        assert served[0] not in served[1:4]
        assert len(set(served[1:4])) <= 2  # kept, not one thread per connection
        threads = [
            thread
            for thread in threading.enumerate()
            if thread.name == "dicom-connection" and thread.ident in set(served)
        ]
    finally:
        ae.shutdown()
    for thread in threads:
        thread.join(DEADLINE)
    assert threads and not any(thread.is_alive() for thread in threads)


@pytest.mark.django_db(transaction=True)
def test_a_request_seen_before_is_negotiated_by_each_server_for_itself(settings: Any) -> None:
    """The same A-ASSOCIATE-RQ, read once and kept, to a server that offers the query and
    to one that does not: each answers from its own contexts, the second time too."""
    settings.DICOM_INTAKE_JOURNAL = False
    settings.DICOM_ACCEPT_UNKNOWN_AE = True
    aes, ports = [], []
    for services in (
        ["pacs.dimse.verification_service", "pacs.dimse.query_service"],
        ["pacs.dimse.verification_service"],
    ):
        settings.DICOM_SERVICES = services
        ae = build_ae(SCP_AE_TITLE)
        aes.append(ae)
        ports.append(int(start(ae, "127.0.0.1", 0, block=False).server_address[1]))
    try:
        for _ in range(3):
            sock, _, _ = replay.associate(ports[0], SCP_AE_TITLE, "LEANSCU", replay.STUDY_ROOT_FIND)
            replay.release(sock)
            with pytest.raises(ConnectionError, match="no presentation context accepted"):
                replay.associate(ports[1], SCP_AE_TITLE, "LEANSCU", replay.STUDY_ROOT_FIND)
        kept = [ae._servers[0].lean_negotiated for ae in aes]
        assert [len(negotiated) for negotiated in kept] == [1, 1]
        [accepted], [refused] = (next(iter(negotiated.values())) for negotiated in kept)
        assert (accepted.result, refused.result) == (0x00, 0x03)  # PS3.8 9.3.3.2
    finally:
        for ae in aes:
            ae.shutdown()


@pytest.mark.django_db(transaction=True)
def test_a_lean_association_is_in_the_trail_once_released(
    server: tuple[ArchiveAE, int],
) -> None:
    """Its row is held (core.audit.hold) until the association ends, dated when it was
    accepted; each query's row is sent once its final response is, the association still
    open (core.audit.record_answered)."""
    _, port = server
    assoc = _associate(port, [StudyRootQueryRetrieveInformationModelFind])
    statuses = [
        status.Status
        for status, _ in assoc.send_c_find(_study(), StudyRootQueryRetrieveInformationModelFind)
    ]
    assert statuses == [STATUS_SUCCESS]
    rows = AuditEvent.objects.filter(actor_name="LEANSCU")
    _wait_for_row(rows.filter(action="query"))
    assert [row.action for row in rows] == ["query"]  # not released yet
    assoc.release()
    assoc = _associate(port, [Verification])
    assert assoc.send_c_echo().Status == STATUS_SUCCESS
    assoc.abort()
    assert audit.flush(timeout=DEADLINE)
    rows = AuditEvent.objects.filter(actor_name="LEANSCU").order_by("occurred_at", "id")
    assert [(row.action, row.detail.split(";")[0]) for row in rows] == [
        ("association", f"accepted by {SCP_AE_TITLE}"),
        ("query", "0 result(s)"),
        ("association", f"accepted by {SCP_AE_TITLE}"),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_query_row_is_sent_once_answered_on_an_association_pynetdicom_serves_too(
    served_by: list[str], server: tuple[ArchiveAE, int]
) -> None:
    """An association that may also store is served by pynetdicom's threads: its queries'
    rows go out as each is answered all the same (core.dicom_reactor wraps the serving),
    not only once the association ends."""
    _, port = server
    assoc = _associate(
        port, [StudyRootQueryRetrieveInformationModelFind, CTImageStorage, Verification]
    )
    assert assoc.send_c_echo().Status == STATUS_SUCCESS
    assert served_by == ["Association"]  # pynetdicom's, not the lean one
    statuses = [
        status.Status
        for status, _ in assoc.send_c_find(_study(), StudyRootQueryRetrieveInformationModelFind)
    ]
    assert statuses == [STATUS_SUCCESS]
    rows = AuditEvent.objects.filter(actor_name="LEANSCU", action="query")
    _wait_for_row(rows, timeout=5)  # the association still open
    assoc.release()
    assert audit.flush(timeout=DEADLINE)
    assert [row.detail.split(";")[0] for row in rows] == ["0 result(s)"]


@pytest.mark.django_db(transaction=True)
def test_a_fault_while_serving_aborts_the_association_and_its_row_is_written(
    server: tuple[ArchiveAE, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = server

    def broken(self: Any, *, answer: bool = True) -> None:
        raise RuntimeError("a fault")

    monkeypatch.setattr(dicom_lean.LeanAssociation, "_read_one", broken)
    scu = AE(ae_title="LEANSCU")
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = DEADLINE
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port, ae_title=SCP_AE_TITLE)  # aborted at once
    wait_until(lambda: True if assoc.is_aborted else None, what="the A-ABORT")
    assert audit.flush(timeout=DEADLINE)  # nothing left held
    assert AuditEvent.objects.filter(actor_name="LEANSCU", action="association").count() == 1
    monkeypatch.undo()
    assoc = _associate(port, [Verification])  # the listener goes on
    assert assoc.send_c_echo().Status == STATUS_SUCCESS
    assoc.release()


@pytest.mark.django_db(transaction=True)
def test_a_process_that_stops_leaves_the_shared_socket_to_the_others(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two listeners adopt one listening socket, as the supervisor's processes do
    (core.listeners.SharedListener): one stopping closes only its own descriptor."""
    from core.listeners import LISTEN_FD_VARIABLE, listening_socket

    settings.DICOM_SERVICES = ["pacs.dimse.verification_service"]
    shared = listening_socket("127.0.0.1", 0)
    port = shared.getsockname()[1]
    aes = []
    try:
        for _ in range(2):
            monkeypatch.setenv(LISTEN_FD_VARIABLE, str(os.dup(shared.fileno())))
            ae = build_ae(SCP_AE_TITLE)
            ae.shared = True
            start(ae, "127.0.0.1", port, block=False)
            aes.append(ae)
        aes[0].shutdown()
        for _ in range(3):
            assert replay.echo(port, SCP_AE_TITLE, "LEANSCU") > 0  # the other still serves
    finally:
        for ae in aes[1:]:
            ae.shutdown()
        shared.close()
