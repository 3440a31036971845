"""Associations that only verify or query, served whole on the thread that accepted them.

pynetdicom serves every association with two threads of its own besides the accepting
one (the association reactor and the DUL reactor), a state machine, and queues between
them: every PDU crosses threads twice. For C-STORE that pipelining pays (the next PDU is
read while an instance is written). For the short associations of workstations and
modalities that only ask (C-ECHO, C-FIND, the worklist), it was nearly all of the work:
3 to 4 ms of CPU for an echo, where Orthanc takes 0.2.

So an association whose every proposed context is Verification or a FIND model, and that
asks for no extended negotiation, is served here: the A-ASSOCIATE-RQ is read and
negotiated (pynetdicom's presentation.negotiate_as_acceptor), then PDUs are read and
answered in turn (PS3.8 9.3, Annex E) on this one thread. The services themselves are
still pynetdicom's service classes and this archive's event handlers, unchanged: an
association object here offers them what they use of pynetdicom's Association. Anything
else, and anything bound that this path does not trigger (PDU or DIMSE logging, say),
goes to pynetdicom as before, with the bytes already read handed back to it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import select
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from pynetdicom.dimse import _RSP_TO_MESSAGE
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
    uid_to_service_class,
)

from core import audit, dicom_codec

if TYPE_CHECKING:
    from core.dicom_reactor import FastAssociationServer

logger = logging.getLogger(__name__)

# The SOP classes whose associations are served here: each request is answered before the
# next is read, and none needs a sub-association or a role of its own.
LEAN_SOP_CLASSES = frozenset(
    {
        str(Verification),
        str(PatientRootQueryRetrieveInformationModelFind),
        str(StudyRootQueryRetrieveInformationModelFind),
        str(ModalityWorklistInformationFind),
    }
)
# The notification events this path triggers; a handler bound to any other sends the
# association to pynetdicom, which triggers them all.
LEAN_NOTIFICATIONS = frozenset(
    {evt.EVT_ACCEPTED, evt.EVT_REJECTED, evt.EVT_RELEASED, evt.EVT_ABORTED}
)
# PS3.8 9.3.2 and Annex D: the items of an A-ASSOCIATE-RQ read here. User information
# sub-items other than these (asynchronous operations, role selection, extended
# negotiation, user identity) send the association to pynetdicom.
APPLICATION_CONTEXT_ITEM, PRESENTATION_CONTEXT_ITEM, USER_INFORMATION_ITEM = 0x10, 0x20, 0x50
PRESENTATION_CONTEXT_AC_ITEM = 0x21
ABSTRACT_SYNTAX_ITEM, TRANSFER_SYNTAX_ITEM = 0x30, 0x40
MAXIMUM_LENGTH_ITEM, IMPLEMENTATION_CLASS_UID_ITEM, IMPLEMENTATION_VERSION_ITEM = 0x51, 0x52, 0x55
_ITEM_HEADER = struct.Struct(">BBH")
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1

# PS3.8 9.3.1: PDU types.
A_ASSOCIATE_RQ_PDU, A_ASSOCIATE_RJ_PDU, P_DATA_TF_PDU = 0x01, 0x03, 0x04
A_RELEASE_RQ_PDU, A_RELEASE_RP_PDU, A_ABORT_PDU = 0x05, 0x06, 0x07
_PDU_HEADER = struct.Struct(">BBI")
# The longest A-ASSOCIATE-RQ read here; a longer one goes to pynetdicom as it arrives.
MAX_REQUEST_PDU = 256 * 1024
# PS3.8 9.3.8, Table 9-26: A-ABORT sources and A-P-ABORT reasons.
ABORT_SOURCE_USER, ABORT_SOURCE_PROVIDER = 0x00, 0x02
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06
# PS3.8 9.3.4, Table 9-21: A-ASSOCIATE-RJ result, source and reason.
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02
SOURCE_SERVICE_USER, SOURCE_PRESENTATION = 0x01, 0x03
CALLING_AE_NOT_RECOGNISED, CALLED_AE_NOT_RECOGNISED = 0x03, 0x07
LOCAL_LIMIT_EXCEEDED = 0x02


class _Closed(Exception):
    """The peer closed the connection, aborted, or went silent too long."""


def read_request(sock: socket.socket, timeout: float | None) -> bytes:
    """The first PDU of a new connection, whole when it is an A-ASSOCIATE-RQ of a usual
    size; otherwise as much of it as was read (pynetdicom reads the rest). Empty when the
    peer sent nothing in time."""
    sock.settimeout(timeout)
    try:
        header = _recv_exactly(sock, 6)
        pdu_type, _, length = _PDU_HEADER.unpack(header)
        if pdu_type != A_ASSOCIATE_RQ_PDU or length > MAX_REQUEST_PDU:
            return header
        return header + _recv_exactly(sock, length)
    except (_Closed, OSError):
        return b""


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise _Closed
        data += chunk
    return bytes(data)


@dataclass
class AssociateRequest:
    """What this path reads of an A-ASSOCIATE-RQ (PS3.8 9.3.2)."""

    called_ae_title: bytes
    calling_ae_title: bytes
    contexts: list[PresentationContext]
    maximum_length: int  # PS3.8 D.1: the longest P-DATA-TF the requestor takes; 0, any
    items: bytes  # the variable items as received (from byte 74), which key the caches


# What recent A-ASSOCIATE-RQs' variable items read as, and what they negotiated to on a
# server: a modality or workstation asks in the same words every time, and reading and
# negotiating make PresentationContexts whose setters check every UID (about 0.25 ms of a
# C-ECHO association in all). Kept for at most KEPT different requests.
_READ: dict[bytes, tuple[list[PresentationContext], int] | None] = {}
KEPT = 64


def lean_request(data: bytes, server: FastAssociationServer) -> AssociateRequest | None:
    """The A-ASSOCIATE-RQ in DATA if this path can serve its association, else None."""
    if len(data) < 6 or data[0] != A_ASSOCIATE_RQ_PDU:
        return None
    for event, handlers in server._handlers.items():
        if (
            isinstance(event, evt.NotificationEvent)
            and handlers
            and event not in LEAN_NOTIFICATIONS
        ):
            return None
    try:
        request = _read_associate_rq(memoryview(data))
    except (ValueError, struct.error, UnicodeDecodeError):
        return None  # pynetdicom reads it again, and answers what is wrong with it
    if request is None or not request.contexts:
        return None
    return request


def _items(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    offset = 0
    while offset < len(data):
        item_type, _, length = _ITEM_HEADER.unpack_from(data, offset)
        if offset + 4 + length > len(data):
            raise ValueError("an item longer than its PDU")
        yield item_type, data[offset + 4 : offset + 4 + length]
        offset += 4 + length


def _uid_of(value: memoryview) -> str:
    return bytes(value).rstrip(b"\0 ").decode("ascii")


def _read_associate_rq(data: memoryview) -> AssociateRequest | None:
    """Read an A-ASSOCIATE-RQ PDU (PS3.8 9.3.2): None when it holds anything but one
    application context, presentation contexts of the SOP classes served here, and the
    plain user information (maximum length, implementation class UID and version)."""
    (length,) = struct.unpack_from(">I", data, 2)
    if length != len(data) - 6 or length < 68:
        raise ValueError("the PDU length does not match")
    (version,) = struct.unpack_from(">H", data, 6)
    if not version & 1:  # PS3.8 9.3.2: bit 0, protocol version 1
        return None
    items = bytes(data[74:])
    read = _READ.get(items, _UNREAD)
    if read is _UNREAD:
        read = _read_items(data[74:])
        if len(_READ) >= KEPT:
            _READ.clear()
        _READ[items] = read
    if read is None:
        return None
    contexts, maximum_length = read
    return AssociateRequest(bytes(data[10:26]), bytes(data[26:42]), contexts, maximum_length, items)


_UNREAD: Any = object()


def _read_items(data: memoryview) -> tuple[list[PresentationContext], int] | None:
    """The presentation contexts and maximum length in the variable items DATA of an
    A-ASSOCIATE-RQ, or None for anything else (see _read_associate_rq)."""
    contexts: list[PresentationContext] = []
    maximum_length: int | None = None
    application_context = ""
    for item_type, value in _items(data):
        if item_type == APPLICATION_CONTEXT_ITEM:
            application_context = _uid_of(value)
        elif item_type == PRESENTATION_CONTEXT_ITEM:
            abstract_syntax, transfer_syntaxes = "", []
            for sub_type, sub_value in _items(value[4:]):
                if sub_type == ABSTRACT_SYNTAX_ITEM:
                    abstract_syntax = _uid_of(sub_value)
                elif sub_type == TRANSFER_SYNTAX_ITEM:
                    transfer_syntaxes.append(_uid_of(sub_value))
                else:
                    return None
            if abstract_syntax not in LEAN_SOP_CLASSES or not transfer_syntaxes:
                return None
            context = PresentationContext()
            context.context_id = value[0]
            context.abstract_syntax = abstract_syntax  # type: ignore[assignment]
            context.transfer_syntax = transfer_syntaxes  # type: ignore[assignment]
            contexts.append(context)
        elif item_type == USER_INFORMATION_ITEM:
            for sub_type, sub_value in _items(value):
                if sub_type == MAXIMUM_LENGTH_ITEM:
                    (maximum_length,) = struct.unpack(">I", sub_value)
                elif sub_type not in (IMPLEMENTATION_CLASS_UID_ITEM, IMPLEMENTATION_VERSION_ITEM):
                    return None
        else:
            return None
    if application_context != APPLICATION_CONTEXT_NAME or maximum_length is None:
        return None  # PS3.7 D.3.3.1: the maximum length is mandatory
    return contexts, maximum_length


def accept_pdu(
    request: AssociateRequest,
    results: list[PresentationContext],
    maximum_length: int,
    implementation_class_uid: str,
    implementation_version_name: str | None,
) -> bytes:
    """The A-ASSOCIATE-AC (PS3.8 9.3.3) answering REQUEST with the negotiated RESULTS."""

    def item(item_type: int, value: bytes) -> bytes:
        return _ITEM_HEADER.pack(item_type, 0, len(value)) + value

    parts = [item(APPLICATION_CONTEXT_ITEM, APPLICATION_CONTEXT_NAME.encode())]
    for context in results:
        syntax = context.transfer_syntax[0].encode() if context.transfer_syntax else b""
        parts.append(
            item(
                PRESENTATION_CONTEXT_AC_ITEM,
                bytes([context.context_id, 0, context.result, 0])  # type: ignore[list-item]
                + item(TRANSFER_SYNTAX_ITEM, syntax),
            )
        )
    user = item(MAXIMUM_LENGTH_ITEM, struct.pack(">I", maximum_length)) + item(
        IMPLEMENTATION_CLASS_UID_ITEM, implementation_class_uid.encode()
    )
    if implementation_version_name:
        user += item(IMPLEMENTATION_VERSION_ITEM, implementation_version_name.encode())
    parts.append(item(USER_INFORMATION_ITEM, user))
    # Called and calling AE titles as received; the reserved field as pynetdicom sends it.
    body = (
        struct.pack(">HH", 1, 0)
        + request.called_ae_title
        + request.calling_ae_title
        + bytes(32)
        + b"".join(parts)
    )
    return _PDU_HEADER.pack(0x02, 0, len(body)) + body


class _User:
    """What the handlers read of a service user (pynetdicom's ServiceUser)."""

    def __init__(self, ae_title: str, address: str, port: int, maximum_length: int) -> None:
        self.ae_title = ae_title
        self.address = address
        self.port = port
        self.maximum_length = maximum_length
        self.primitive: AssociateRequest | None = None


class _ACSE:
    def __init__(self, assoc: LeanAssociation) -> None:
        self._assoc = assoc

    def is_aborted(self, abort_type: str = "both") -> bool:
        self._assoc.poll()
        return self._assoc.is_aborted

    def is_release_requested(self) -> bool:
        self._assoc.poll()
        return self._assoc.release_requested


class _DIMSE:
    """Sends responses; C-CANCEL requests that arrived meanwhile are read when asked for."""

    def __init__(self, assoc: LeanAssociation) -> None:
        self._assoc = assoc
        self._cancel_req: dict[int, C_CANCEL] = {}

    @property
    def cancel_req(self) -> dict[int, C_CANCEL]:
        self._assoc.poll()
        return self._cancel_req

    @cancel_req.setter
    def cancel_req(self, value: dict[int, C_CANCEL]) -> None:
        self._cancel_req = value

    @property
    def maximum_pdu_size(self) -> int:
        return self._assoc.requestor.maximum_length

    def send_msg(self, primitive: Any, context_id: int) -> None:
        encoded = dicom_codec.encode_response(primitive)
        if encoded is not None:
            command, data_set = encoded
            values = dicom_codec.p_data(context_id, command, data_set, self.maximum_pdu_size)
        else:  # a response the direct writer does not know: pynetdicom's encoder
            message = _RSP_TO_MESSAGE[primitive.__class__]()
            message.primitive_to_message(primitive)
            values = list(message.encode_msg(context_id, self.maximum_pdu_size))
        self._assoc.send(b"".join(_p_data_tf(value) for value in values))


def _p_data_tf(primitive: Any) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5) of the presentation data values of PRIMITIVE."""
    items = b"".join(
        struct.pack(">IB", len(value) + 1, context_id) + bytes(value)
        for context_id, value in primitive.presentation_data_value_list
    )
    return _PDU_HEADER.pack(P_DATA_TF_PDU, 0, len(items)) + items


class LeanAssociation:
    """One association served on the accepting thread: what pynetdicom's service classes and
    the archive's handlers use of an Association, and the loop that reads and answers."""

    is_acceptor = True
    is_requestor = False
    mode = "acceptor"

    def __init__(
        self,
        server: FastAssociationServer,
        sock: socket.socket,
        client_address: Any,
        request: AssociateRequest,
    ) -> None:
        ae = server.ae
        self._server = server
        self._socket = sock
        self.ae = ae
        self.name = f"LeanAcceptor@{threading.get_ident()}"
        self.requestor = _User(
            request.calling_ae_title.decode("ascii").strip(),
            str(client_address[0]),
            int(client_address[1]),
            request.maximum_length,
        )
        self.requestor.primitive = request
        local = server.server_address
        self.acceptor = _User(
            str(server.ae_title).strip(), str(local[0]), int(local[1]), ae.maximum_pdu_size
        )
        self.acse = _ACSE(self)
        self.dimse = _DIMSE(self)
        self.network_timeout = ae.network_timeout
        self.dimse_timeout = ae.dimse_timeout
        self.acse_timeout = ae.acse_timeout
        self.is_established = False
        self.is_rejected = False
        # (result, source, reason/diag.) of the A-ASSOCIATE-RJ sent, for the audit trail.
        self.rejection: tuple[int, int, int] | None = None
        self.is_aborted = False
        self.is_released = False
        self.release_requested = False
        self._sent_release = False
        self._accepted_cx: dict[int, PresentationContext] = {}
        self._rejected_cx: list[PresentationContext] = []
        self._message: DIMSEMessage | None = None
        # Requests read while another was being answered (the peer did not wait).
        self._waiting: deque[tuple[Any, int]] = deque()
        self.abort = self._abort_blocking
        self._longest: int | None = None  # the longest PDU taken (_longest_pdu)
        self._counted = False  # among the server's associations (serve, _leave)

    # -- what pynetdicom's Association offers -------------------------------------------

    @property
    def accepted_contexts(self) -> list[PresentationContext]:
        return list(self._accepted_cx.values())

    @property
    def rejected_contexts(self) -> list[PresentationContext]:
        return list(self._rejected_cx)

    def get_handlers(self, event: Any) -> Any:
        return self._server.get_handlers(event)

    def _abort_blocking(self, block: bool = True) -> None:
        if self.is_established or not (self.is_aborted or self.is_released):
            self._send_abort(ABORT_SOURCE_USER, 0)
        self._end_aborted()

    _abort_nonblocking = _abort_blocking

    def release(self) -> None:  # an SCP does not request a release: abort as pynetdicom would
        self.abort()

    # -- the association's life ---------------------------------------------------------

    def serve(self) -> None:
        """Negotiate, then answer every request until the peer releases or aborts."""
        self._server.lean_started()
        self._counted = True
        try:
            if not self._negotiate():
                return
            self._socket.settimeout(self.network_timeout)
            while self.is_established:
                if self._waiting:  # in the order they came, before a release that followed
                    primitive, context_id = self._waiting.popleft()
                    self._serve_request(primitive, context_id)
                elif self.release_requested:
                    self._release()
                else:
                    self._send_audit_when_idle()
                    self._read_one()
        except _Closed:
            if self.is_established:
                logger.info("association with %s closed without release", self.requestor.ae_title)
                self._end_aborted()
        except Exception:  # a fault here: the peer is told, and the association ends as aborted
            logger.exception("association with %s: aborting", self.requestor.ae_title)
            if self.is_established:
                self._send_abort(ABORT_SOURCE_PROVIDER, 0)
                self._end_aborted()
        finally:
            self._leave()
            self._await_close()

    def _await_close(self) -> None:
        """Let the peer close the connection first (PS3.8 9.2, Sta13: the requestor closes it
        once it has the A-RELEASE-RP, A-ASSOCIATE-RJ or A-ABORT), for at most the ARTIM
        time: the side that closes first keeps the port in TIME_WAIT, and that should be
        the requestor's ephemeral port, not ours."""
        with contextlib.suppress(OSError):
            self._socket.settimeout(self.acse_timeout)
            while self._socket.recv(65536):
                pass
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()

    def _negotiate(self) -> bool:
        """Accept or reject the association (PS3.8 7.1.1, as pynetdicom's ACSE does)."""
        ae = self.ae
        request = self.requestor.primitive
        assert request is not None
        rejection: tuple[int, int, int] | None = None
        allowed = ae.require_calling_aet
        if allowed and self.requestor.ae_title not in [title.strip() for title in allowed]:
            rejection = (REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        called = request.called_ae_title.decode("ascii").strip()
        if ae.require_called_aet and called != self.acceptor.ae_title:
            rejection = (REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLED_AE_NOT_RECOGNISED)
        if self._server.busy() > ae.maximum_associations:
            rejection = (REJECTED_TRANSIENT, SOURCE_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
        if rejection is not None:
            logger.info("rejecting association from %s", self.requestor.ae_title)
            self.send(struct.pack(">BBIBBBB", A_ASSOCIATE_RJ_PDU, 0, 4, 0, *rejection))
            self.is_rejected = True
            self.rejection = rejection
            self._notify(evt.EVT_REJECTED)
            return False
        results = self._negotiated(request)
        self._accepted_cx = {int(c.context_id): c for c in results if c.result == 0x00}  # type: ignore[arg-type]
        self._rejected_cx = [c for c in results if c.result != 0x00]
        self.send(
            accept_pdu(
                request,
                results,
                self.ae.maximum_pdu_size,
                self.ae.implementation_class_uid,
                self.ae.implementation_version_name,
            )
        )
        self._notify(evt.EVT_ACCEPTED)
        self.is_established = True
        return True

    def _negotiated(self, request: AssociateRequest) -> list[PresentationContext]:
        """The presentation contexts REQUEST negotiates to on this server (PS3.8 9.3.3.2),
        each this association's own copy."""
        kept = self._server.lean_negotiated
        results = kept.get(request.items)
        if results is None:
            results, _ = negotiate_as_acceptor(request.contexts, self._server.contexts, {})
            if len(kept) >= KEPT:
                kept.clear()
            kept[request.items] = results
        return [copy.copy(context) for context in results]

    def send(self, data: bytes) -> None:
        try:
            self._socket.sendall(data)
        except OSError as exc:
            raise _Closed from exc

    def poll(self) -> None:
        """Read what the peer sent meanwhile (a C-CANCEL, a release, an abort), without
        waiting for more."""
        while self.is_established and not self.release_requested:
            try:
                readable, _, _ = select.select([self._socket], [], [], 0)
            except (OSError, ValueError):
                return
            if not readable:
                return
            try:
                self._read_one(answer=False)
            except _Closed:
                self._end_aborted()
                return

    def _read_one(self, *, answer: bool = True) -> None:
        """Read one PDU and act on it: a complete request is answered or, with ANSWER false
        (read while another is answered), kept for later."""
        pdu_type, body = self._read_pdu()
        if pdu_type == P_DATA_TF_PDU:
            self._receive_data(body, answer)
        elif pdu_type == A_RELEASE_RQ_PDU:
            self.release_requested = True  # answered once the requests before it are
        elif pdu_type == A_ABORT_PDU:
            logger.info("association aborted by %s", self.requestor.ae_title)
            self._end_aborted()
        else:
            logger.warning(
                "association with %s: unexpected PDU type %#x", self.requestor.ae_title, pdu_type
            )
            self._send_abort(ABORT_SOURCE_PROVIDER, REASON_UNEXPECTED_PDU)
            self._end_aborted()

    def _read_pdu(self) -> tuple[int, bytes]:
        try:
            header = _recv_exactly(self._socket, 6)
            pdu_type, _, length = _PDU_HEADER.unpack(header)
            if length > self._longest_pdu():
                self._send_abort(ABORT_SOURCE_PROVIDER, REASON_INVALID_PARAMETER)
                self._end_aborted()
                raise _Closed
            return pdu_type, _recv_exactly(self._socket, length)
        except (TimeoutError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                logger.error(
                    "network timeout: aborting association with %s", self.requestor.ae_title
                )
                self._send_abort(ABORT_SOURCE_PROVIDER, 0)
                self._end_aborted()
            raise _Closed from exc

    def _longest_pdu(self) -> int:
        if self._longest is None:
            from core.dicom_reactor import _PDV_HEADROOM, DIRECT_PDU_LIMIT

            maximum = self.ae.maximum_pdu_size or DIRECT_PDU_LIMIT
            self._longest = min(maximum + _PDV_HEADROOM, DIRECT_PDU_LIMIT)
        return self._longest

    def _receive_data(self, body: bytes, answer: bool) -> None:
        from core.dicom_reactor import ReceivedData, new_message

        try:
            values = ReceivedData(bytearray(body)).to_primitive()
            if self._message is None:
                self._message = new_message()
            complete = self._message.decode_msg(values)
        except Exception:
            logger.warning("association with %s: malformed P-DATA", self.requestor.ae_title)
            self._send_abort(ABORT_SOURCE_PROVIDER, REASON_INVALID_PARAMETER)
            self._end_aborted()
            return
        if not complete:
            return
        message, self._message = self._message, None
        context_id = int(message.context_id)  # type: ignore[arg-type]
        try:
            primitive = message.message_to_primitive()
        except Exception:
            logger.warning("association with %s: unreadable DIMSE message", self.requestor.ae_title)
            self._send_abort(ABORT_SOURCE_PROVIDER, REASON_INVALID_PARAMETER)
            self._end_aborted()
            return
        if isinstance(primitive, C_CANCEL):
            self.dimse._cancel_req[int(primitive.MessageIDBeingRespondedTo)] = primitive  # type: ignore[arg-type]
        elif answer:
            self._serve_request(primitive, context_id)
        else:
            self._waiting.append((primitive, context_id))

    def _serve_request(self, primitive: Any, context_id: int) -> None:
        """Run the service class of the request's SOP class (pynetdicom's _serve_request)."""
        if not getattr(primitive, "is_valid_request", False):
            logger.warning(
                "unexpected %s message from %s", type(primitive).__name__, self.requestor.ae_title
            )
            return
        context = self._accepted_cx.get(context_id)
        if context is None:
            logger.info("DIMSE message on an unaccepted context %s: aborting", context_id)
            self.abort()
            return
        try:
            self.dimse.cancel_req = {}
            service = uid_to_service_class(primitive.AffectedSOPClassUID)
            with audit.answering(later=True):  # its rows go once the peer is idle
                service(self).SCP(primitive, context)  # type: ignore[arg-type]  # duck-typed
            self.dimse.cancel_req = {}
        except Exception:
            logger.exception(
                "serving %s from %s", type(primitive).__name__, self.requestor.ae_title
            )
            self.abort()

    def _send_audit_when_idle(self) -> None:
        """Before waiting for the peer's next PDU: the audit rows of the requests answered
        (a query's) are sent once the peer has been silent a moment (audit.SEND_WITHIN
        after the oldest was recorded), or with the association's end. Sent at once after
        the final response, their statement took the CPU that the peer's release and its
        answer needed (two cores, shared with PostgreSQL): a replayed PatientID C-FIND
        association took 4.7 ms that way, 4.0 with its rows sent after the release."""
        left = audit.send_when_due()
        if left is None:
            return
        with contextlib.suppress(OSError, ValueError):
            readable, _, _ = select.select([self._socket], [], [], left)
            if readable:
                return  # served first; the rows go after it at the latest
        audit.send_answered()

    def _release(self) -> None:
        """Answer A-RELEASE-RQ (PS3.8 9.3.7) and end the association."""
        self._sent_release = True
        with contextlib.suppress(_Closed):
            self.send(_PDU_HEADER.pack(A_RELEASE_RP_PDU, 0, 4) + bytes(4))
        self.is_established = False
        self.is_released = True
        self._leave()
        self._notify(evt.EVT_RELEASED)

    def _send_abort(self, source: int, reason: int) -> None:
        with contextlib.suppress(_Closed):
            self.send(_PDU_HEADER.pack(A_ABORT_PDU, 0, 4) + bytes([0, 0, source, reason]))

    def _end_aborted(self) -> None:
        if self.is_aborted or self.is_released:
            return
        self.is_established = False
        self.is_aborted = True
        self._leave()
        self._notify(evt.EVT_ABORTED)

    def _leave(self) -> None:
        """No longer count among the server's associations (FastAssociationServer.busy): once
        it is over for the peer, before what follows (its audit row, the peer's close), so
        that the next connection is not held back as if this process were busy."""
        if self._counted:
            self._counted = False
            self._server.lean_ended()

    def _notify(self, event: Any) -> None:
        """Call the handlers bound to a notification EVENT; their errors are logged, as
        pynetdicom's trigger does."""
        handlers: Any = self._server.get_handlers(event) or []
        if not handlers:
            return
        occurrence = evt.Event(self, event, {})  # type: ignore[arg-type]
        for handler, args in handlers:
            try:
                handler(occurrence, *(args or []))
            except Exception:
                logger.exception("handler of %s failed", event.name)


def abort_connection(sock: socket.socket) -> None:
    """A-ABORT (PS3.8 9.3.8, from the service provider) and close SOCK, from another thread:
    its reader wakes with the connection closed."""
    with contextlib.suppress(OSError):
        sock.send(_PDU_HEADER.pack(A_ABORT_PDU, 0, 4) + bytes([0, 0, ABORT_SOURCE_PROVIDER, 0]))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def serve(
    server: FastAssociationServer,
    sock: socket.socket,
    client_address: Any,
    request: AssociateRequest,
) -> None:
    """Serve the association of REQUEST on this thread, counted as the server's until it is
    released or aborted."""
    LeanAssociation(server, sock, client_address, request).serve()
