"""pynetdicom's acceptor, tuned for throughput: wake on data instead of polling.

pynetdicom's two loops per association poll: the DUL reactor sleeps a millisecond
whenever the socket has nothing to read, and the association reactor sleeps a
millisecond before each look for a DIMSE message. Each received PDU and each
message then waits for the next poll, and the socket is read 4 KB at a time.
Measured on a 500-instance CT series, those waits were a third of the time per
C-STORE. Here the same loops block in select() and queue.get() instead, and wake the
moment data or a message arrives (a pipe wakes the DUL when we have a PDU to send), and
data PDUs are sent straight from the thread that answers, not handed over to the DUL's;
sockets are read in large chunks, with Nagle's algorithm off.

Only the waiting changes: the protocol machinery (state machine, ACSE, DIMSE
assembly) is pynetdicom's own. Written against pynetdicom 3.0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from pynetdicom import _config as pynetdicom_config
from pynetdicom import association as association_module
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import (
    _MESSAGE_TYPES,
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_FIND_RQ,
    C_STORE_RQ,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from core import audit, dicom_codec, dicom_lean
from core.listeners import SharedListener

logger = logging.getLogger(__name__)

# The longest any loop blocks without new input: timers (ARTIM, idle timeout) and the
# association's release/abort checks run at least this often.
REACTOR_WAIT = 0.02
# The most one recv() asks for: a PDU of a few hundred kilobytes comes in a few calls.
RECV_CHUNK = 1024 * 1024
# P-DATA-TF PDUs up to this length are read into one buffer allocated up front; a longer
# claim (a peer ignoring our maximum PDU length) is read by pynetdicom, as bytes arrive.
DIRECT_PDU_LIMIT = 16 * 1024 * 1024
# Connection threads kept beyond the most associations allowed at once: a connection over
# the limit still needs a thread to be refused on.
WORKERS_OVER_LIMIT = 4
# How often (seconds) the thread waiting for a connection looks whether the server stops,
# and how long it waits after a failed accept before it tries again.
ACCEPT_POLL = 0.5
ACCEPT_RETRY = 0.1
# Seconds a connection may wait for its first bytes before the kernel hands it over anyway
# (TCP_DEFER_ACCEPT): the requestor speaks first (PS3.8 9.1.2), so a connection wakes a
# thread only once its A-ASSOCIATE-RQ is there to read.
DEFER_ACCEPT = 5
# Room for the PDV item headers (6 bytes each) of a PDU at our maximum length.
_PDV_HEADROOM = 1024
_P_DATA_TF = 0x04  # PS3.8 9.3.1, PDU type
_PDU_HEADER = struct.Struct(">BBL")
_ITEM_LENGTH = struct.Struct(">L")
_NO_DATA_SET = 0x0101  # PS3.7 E.1-1, Command Data Set Type


class FastAssociationSocket(AssociationSocket):
    """Reads a whole PDU with few system calls; sends without Nagle's delay."""

    def __init__(
        self, assoc: Association, client_socket: socket.socket | None = None, **kwargs: Any
    ) -> None:
        super().__init__(assoc, client_socket=client_socket, **kwargs)
        if client_socket is not None:
            with contextlib.suppress(OSError):
                client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._unread = b""

    def unread(self, data: bytes) -> None:
        """Put DATA back: the next recv() returns it first."""
        self._unread = data

    @property
    def ready(self) -> bool:
        # Bytes put back are ready to read, whatever select() says of the socket.
        return bool(self._unread) or bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        # Memory is taken as bytes arrive, never up front: a PDU header may lie about
        # its length (a 4 GB claim must not allocate 4 GB).
        buffer = bytearray()
        if self._unread:
            buffer += self._unread[:nr_bytes]
            self._unread = self._unread[nr_bytes:]
        while len(buffer) < nr_bytes:
            chunk = self.socket.recv(min(nr_bytes - len(buffer), RECV_CHUNK))  # type: ignore[union-attr]
            if not chunk:  # the peer closed the connection: return what came
                break
            buffer += chunk
        return buffer

    def recv_exactly(self, nr_bytes: int) -> bytearray | None:
        """NR_BYTES read into one buffer, or None when the peer closes the connection first."""
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = self.socket.recv_into(view[received:], min(nr_bytes - received, RECV_CHUNK))  # type: ignore[union-attr]
            if not count:
                return None
            received += count
        return buffer


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """The DUL's queue to the association: an A-RELEASE or A-ABORT put here also wakes the
    association's wait for a DIMSE message, so that a release is seen at once."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._assoc.dimse.msg_queue.put((None, None))  # read as "no message": loop goes on


class ReceivedData:
    """A received P-DATA-TF PDU whose presentation data values are views of its buffer."""

    def __init__(self, body: bytearray) -> None:
        view = memoryview(body)
        end = len(view)
        offset = 0
        self.values: list[tuple[int, memoryview]] = []
        while offset < end:
            if offset + 4 > end:
                raise ValueError("PDV item length beyond the PDU")
            (item_length,) = _ITEM_LENGTH.unpack_from(view, offset)
            # PS3.8 9.3.5.1: the context ID and at least the message control header.
            if item_length < 2 or offset + 4 + item_length > end:
                raise ValueError("bad PDV item length")
            self.values.append((view[offset + 4], view[offset + 5 : offset + 4 + item_length]))
            offset += 4 + item_length
        if not self.values:
            raise ValueError("a P-DATA-TF without a PDV item")

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        primitive.presentation_data_value_list.extend(self.values)
        return primitive


class FastDUL(DULServiceProvider):
    """A DUL reactor that blocks in select() on the socket and a wake-up pipe."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self.to_user_queue = _WakingQueue(assoc)
        self._run_loop_delay = 0  # never sleep: _is_transport_event blocks instead
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._send_lock = threading.Lock()

    def send_pdu(self, primitive: Any) -> None:
        if isinstance(primitive, A_ASSOCIATE) and primitive.result not in (None, 0x00):
            # The A-ASSOCIATE-RJ's result, source and reason (PS3.8 9.3.4), as
            # core.dicom_lean keeps them: EVT_REJECTED's handlers read them there.
            self.assoc.rejection = (  # type: ignore[attr-defined]
                primitive.result,
                primitive.result_source,
                primitive.diagnostic,
            )
        if isinstance(primitive, P_DATA) and self.state_machine.current_state == "Sta6":
            # Data transfer (PS3.8 9.2, DT-1 in Sta6) needs no state change: send from the
            # caller's thread rather than hand every response PDU to the reactor thread.
            self._send(P_DATA_TF(primitive))
            return
        super().send_pdu(primitive)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    def _send(self, pdu: Any) -> None:
        with self._send_lock:  # the reactor thread and the association thread both send
            super()._send(pdu)

    def _is_transport_event(self) -> bool:
        if self.event_queue.empty() and self.to_provider_queue.empty():
            self._wait_for_input()
        return bool(super()._is_transport_event())

    def _wait_for_input(self) -> None:
        if getattr(self.socket, "_unread", b""):
            return  # bytes put back (core.dicom_lean read the A-ASSOCIATE-RQ): no wait
        raw = getattr(self.socket, "socket", None)
        if raw is None or getattr(self.socket, "_is_connected", False) is False:
            return
        try:
            readable, _, _ = select.select([raw, self._wake_read], [], [], REACTOR_WAIT)
        except (OSError, ValueError):
            return  # a closed socket: the parent's check reports it
        if self._wake_read in readable:
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_read, 4096)

    def _direct_limit(self) -> int:
        """The longest P-DATA-TF read into one buffer sized up front: what we told the peer
        we receive (PS3.8 D.1, plus its PDV item headers), so that a header claiming more
        and a stalled peer cannot hold more memory than a well-behaved association."""
        maximum = self.assoc.acceptor.maximum_length or DIRECT_PDU_LIMIT
        return min(maximum + _PDV_HEADROOM, DIRECT_PDU_LIMIT)

    def _read_pdu_data(self) -> None:
        """Read a P-DATA-TF PDU (PS3.8 9.3.5) into one buffer and split its PDVs as views of
        it, without pynetdicom's copies of the data; anything else, and any P-DATA-TF that
        somebody watches (EVT_DATA_RECV, EVT_PDU_RECV), as pynetdicom does."""
        sock = self.socket
        if (
            not isinstance(sock, FastAssociationSocket)
            or self.state_machine.current_state != "Sta6"
            or self.assoc.get_handlers(evt.EVT_DATA_RECV)
            or self.assoc.get_handlers(evt.EVT_PDU_RECV)
        ):
            super()._read_pdu_data()
            return
        try:
            header = bytes(sock.recv(6))
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")  # transport connection closed
            return
        if len(header) < 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, length = _PDU_HEADER.unpack(header)
        if pdu_type != _P_DATA_TF or length > self._direct_limit():
            sock.unread(header)
            super()._read_pdu_data()
            return
        try:
            body = sock.recv_exactly(length)
        except (OSError, TimeoutError):
            body = None
        if body is None:
            self.event_queue.put("Evt17")
            return
        try:
            pdu = ReceivedData(body)
        except ValueError:
            # Malformed items: pynetdicom decodes (and refuses) them as it always has.
            sock.unread(header + bytes(body))
            super()._read_pdu_data()
            return
        self.event_queue.put("Evt10")  # P-DATA-TF received
        self._recv_pdu.put(pdu)  # type: ignore[arg-type]  # DT-2 calls its to_primitive()

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            for fd in (self._wake_read, self._wake_write):
                with contextlib.suppress(OSError):
                    os.close(fd)


class FastMessage(DIMSEMessage):
    """A DIMSE message being received: the command set of a C-STORE-RQ, C-FIND-RQ, C-ECHO-RQ
    or C-CANCEL-RQ is read directly (core.dicom_codec.decode_request) rather than by pydicom
    (a C-ECHO's took 0.3 ms that way), and a C-STORE-RQ's data set's fragments, views of the
    PDUs' buffers, are joined once at the end (pynetdicom grows a BytesIO fragment by
    fragment, and copies it again when the handler reads it)."""

    fields: dict[str, Any]  # the command set, once a DirectRequest
    fragments: list[Any]  # a C-STORE-RQ's data set, as it comes

    def decode_msg(self, primitive: P_DATA, assoc: Association | None = None) -> bool:
        if pynetdicom_config.STORE_RECV_CHUNKED_DATASET or not isinstance(primitive, P_DATA):
            return bool(super().decode_msg(primitive, assoc))
        # PS3.8 E.2: bit 0 of the message control header, command or data set; bit 1, the
        # last fragment.
        for context_id, data in primitive.presentation_data_value_list:
            control = data[0]
            if not control & 1:
                if isinstance(self, StoreRequest):
                    self.fragments.append(data[1:])
                    if control & 2:
                        self.data_set = BytesIO(b"".join(self.fragments))
                        self.fragments = []
                        return True
                    continue
                self.data_set.write(data[1:])  # type: ignore[union-attr]
                if control & 2:
                    return True
                continue
            self.encoded_command_set.write(data[1:])
            if not control & 2:
                continue
            self.context_id = context_id
            fields = dicom_codec.decode_request(self.encoded_command_set.getvalue())
            if fields is not None:
                self.__class__ = _DIRECT_REQUESTS[fields["CommandField"]]
                self.fields = fields
                self.fragments = []
                if fields["CommandDataSetType"] == _NO_DATA_SET:
                    return True
                continue
            self.command_set = decode(self.encoded_command_set, True, True)
            self.__class__ = _MESSAGE_TYPES[int(self.command_set.CommandField)][1]  # type: ignore[assignment]
            if self.command_set.CommandDataSetType == _NO_DATA_SET:
                return True
        return False


def new_message() -> FastMessage:
    """A message to receive into (DIMSEMessage's __init__ knows only its own class and the
    message types by name)."""
    message = DIMSEMessage()
    message.__class__ = FastMessage
    return message  # type: ignore[return-value]


class DirectRequest(FastMessage):
    """A request whose command set was read directly: pydicom reads it only if asked."""

    primitive_class: type[Any]
    data_set_keyword = ""  # the primitive's attribute for the data set, if one follows

    @property  # type: ignore[override]
    def command_set(self) -> Any:
        if "_command_set" not in self.__dict__:
            self.__dict__["_command_set"] = decode(self.encoded_command_set, True, True)
        return self.__dict__["_command_set"]

    @command_set.setter
    def command_set(self, value: Any) -> None:
        self.__dict__["_command_set"] = value

    def message_to_primitive(self) -> Any:
        """As pynetdicom's, from the elements read directly."""
        primitive = self.primitive_class()
        for keyword, value in self.fields.items():
            if hasattr(primitive, keyword):
                setattr(primitive, keyword, value)
        if self.data_set_keyword:
            setattr(primitive, self.data_set_keyword, self.data_set)
        primitive._context_id = self.context_id
        return primitive


# pynetdicom reads a message's class name: each is named as pynetdicom's own.
class StoreRequest(DirectRequest, C_STORE_RQ):
    primitive_class = C_STORE
    data_set_keyword = "DataSet"


class FindRequest(DirectRequest, C_FIND_RQ):
    primitive_class = C_FIND
    data_set_keyword = "Identifier"


class EchoRequest(DirectRequest, C_ECHO_RQ):
    primitive_class = C_ECHO


class CancelRequest(DirectRequest, C_CANCEL_RQ):
    primitive_class = C_CANCEL


_DIRECT_REQUESTS: dict[int, type[DirectRequest]] = {
    dicom_codec.C_STORE_RQ_FIELD: StoreRequest,
    dicom_codec.C_FIND_RQ_FIELD: FindRequest,
    dicom_codec.C_ECHO_RQ_FIELD: EchoRequest,
    dicom_codec.C_CANCEL_RQ_FIELD: CancelRequest,
}
for _request, _name in (
    (StoreRequest, "C_STORE_RQ"),
    (FindRequest, "C_FIND_RQ"),
    (EchoRequest, "C_ECHO_RQ"),
    (CancelRequest, "C_CANCEL_RQ"),
):
    _request.__name__ = _request.__qualname__ = _name


class FastDIMSE(DIMSEServiceProvider):
    """The association reactor's non-blocking look for a message waits a little instead, and
    responses are written straight to P-DATA (core.dicom_codec) when nobody watches them;
    requests are received as FastMessage."""

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self.message is None:
            self.message = new_message()
        super().receive_primitive(primitive)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        encoded = None
        if not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            encoded = dicom_codec.encode_response(primitive)
        if encoded is None:
            super().send_msg(primitive, context_id)
            return
        command, data_set = encoded
        for pdata in dicom_codec.p_data(context_id, command, data_set, self.maximum_pdu_size):
            self.dul.send_pdu(pdata)

    def get_msg(self, block: bool = False) -> Any:
        if block:
            return super().get_msg(block=True)
        try:
            return self.msg_queue.get(timeout=REACTOR_WAIT)
        except queue.Empty:
            return None, None


class _AcceptorClock:
    """What pynetdicom.association sees as its `time` module: the same, except that the
    acceptor loop's nap before each look for a message (time.sleep(0.001)) is skipped on
    the associations served here, whose FastDIMSE.get_msg waits for the message itself.
    The nap delayed every request that followed another, and every release, by a
    millisecond or more."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if seconds == 0.001 and isinstance(getattr(thread, "dimse", None), FastDIMSE):
            return
        time.sleep(seconds)


class FastRequestHandler(RequestHandler):
    """Serves an association that only verifies or queries on this thread (core.dicom_lean);
    hands any other to pynetdicom, with the bytes of its A-ASSOCIATE-RQ put back."""

    server: FastAssociationServer
    _prefix = b""

    def handle(self) -> None:
        if self.server.lean:
            with contextlib.suppress(OSError):
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.server.lean_connection(self.request):
                data = dicom_lean.read_request(self.request, self.server.ae.acse_timeout)
                if not data:  # closed or silent before a PDU: nothing to answer (PS3.8 9.1.5)
                    self.server.shutdown_request(self.request)
                    return
                request = dicom_lean.lean_request(data, self.server)
                if request is not None:
                    dicom_lean.serve(self.server, self.request, self.client_address, request)
                    return
            self._prefix = data
            self.request.settimeout(None)  # pynetdicom's socket is blocking, timed by its DUL
        super().handle()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # Swap in the waking providers before the association's threads start.
        assoc.dul = FastDUL(assoc)
        assoc.dimse = FastDIMSE(assoc)
        # The timeouts' setters also set the DUL's timers: apply them to the new DUL.
        for attribute in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(assoc, attribute, getattr(assoc, attribute))
        sock = FastAssociationSocket(assoc, client_socket=self.request)
        if self._prefix:
            sock.unread(self._prefix)
        assoc.set_socket(sock)
        serve = assoc._serve_request

        def serve_answering(msg: Any, context_id: int) -> None:
            # Its rows are written once it is answered. Not later: pynetdicom may end the
            # association on another thread (an abort), which would not write them.
            with audit.answering():
                serve(msg, context_id)

        assoc._serve_request = serve_answering  # type: ignore[method-assign]
        return assoc


class _Leaders:
    """Threads that take turns waiting for a connection (leader and followers): the one
    waiting, on getting a connection, lets the next wait and serves the connection itself.
    Daemons, as pynetdicom's association threads are: a stop never waits for a peer.

    A thread that only accepted, handing each connection to a worker, cost two wake-ups in
    a row (the acceptor's, then the worker's, each waiting for the interpreter lock): about
    0.3 ms of every association, measured from the A-ASSOCIATE-RQ's arrival. There are as
    many threads as connections served at once, and one more, up to LIMIT."""

    def __init__(self, server: FastAssociationServer, limit: int) -> None:
        self._server = server
        self._limit = limit
        self._lead = threading.Lock()  # held by the thread waiting for a connection
        self._counts = threading.Lock()
        self._threads = 0
        self._followers = 0  # threads waiting to lead
        self.stopping = threading.Event()

    def start(self) -> None:
        with self._counts:
            if not self._threads:
                self._spawn()

    def _spawn(self) -> None:
        self._threads += 1
        threading.Thread(target=self._run, name="dicom-connection", daemon=True).start()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                with self._counts:
                    self._followers += 1
                with self._lead:
                    with self._counts:
                        self._followers -= 1
                    connection = self._server.await_connection(self.stopping)
                    if connection is None:
                        return
                    with self._counts:
                        if not self._followers and self._threads < self._limit:
                            self._spawn()
                try:
                    self._server.process_request_thread(*connection)
                except Exception:  # the server's own handler logged it; the thread goes on
                    logger.exception("serving a DICOM connection failed")
        finally:
            with self._counts:
                self._threads -= 1


class _SharedContexts(list):  # type: ignore[type-arg]
    """The server's supported contexts, shared by every association.

    pynetdicom deep-copies them for every association; with every storage SOP class in
    every transfer syntax that is some 5,000 objects, tens of milliseconds per association
    (half of a C-FIND's time). Negotiation (presentation.negotiate_as_acceptor, the only
    reader) builds new contexts for its results and never changes these.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return self


# socketserver.BaseServer's own flags (name-mangled there): shutdown() sets the request,
# then waits for the event that serve_forever sets on its way out.
_SHUTDOWN_REQUEST = "_BaseServer__shutdown_request"
_IS_SHUT_DOWN = "_BaseServer__is_shut_down"


class FastAssociationServer(SharedListener, ThreadedAssociationServer):
    """The threaded association server, with the waking request handler.

    With `shared`, it is one of several processes accepting from the supervisor's socket
    (core.listeners.SharedListener): each process has its own interpreter lock and core.
    """

    # Associations that only verify or query are served by core.dicom_lean, on the accepting
    # thread: a daemon, as pynetdicom's association threads are, so that a stop never
    # waits for a peer.
    lean = True
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["request_handler"] = FastRequestHandler
        association_module.time = _AcceptorClock()  # type: ignore[assignment]
        super().__init__(*args, **kwargs)
        self.contexts = _SharedContexts(self.contexts)
        self._lean_count = 0
        # A-ASSOCIATE-RQ items -> the contexts they negotiate to here (core.dicom_lean).
        self.lean_negotiated: dict[bytes, list[Any]] = {}
        self._lean_lock = threading.Lock()
        # Connections being read or served on their accepting thread, closed on shutdown.
        self._lean_sockets: set[socket.socket] = set()
        self._leaders = _Leaders(self, self.ae.maximum_associations + WORKERS_OVER_LIMIT)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)

    def serve_forever(self, poll_interval: float = ACCEPT_POLL) -> None:
        """Run the connection threads (_Leaders) until shutdown(); this thread only waits.

        socketserver's loop, one thread accepting and handing each connection over, is
        replaced; serve_forever and shutdown keep its contract, through BaseServer's flags.
        """
        stopping = self._leaders.stopping
        shut_down: threading.Event = getattr(self, _IS_SHUT_DOWN)
        shut_down.clear()
        try:
            self._leaders.start()
            while not (stopping.is_set() or getattr(self, _SHUTDOWN_REQUEST)):
                stopping.wait(poll_interval)
        finally:
            stopping.set()
            setattr(self, _SHUTDOWN_REQUEST, False)
            shut_down.set()

    def shutdown(self) -> None:
        self._leaders.stopping.set()  # serve_forever and the waiting thread end at once
        super().shutdown()

    def await_connection(self, stopping: threading.Event) -> tuple[Any, Any] | None:
        """Wait for a connection and accept it; None once the server stops."""
        poller = select.poll()
        with contextlib.suppress(OSError, ValueError):
            poller.register(self.socket, select.POLLIN)
        while not stopping.is_set():
            try:
                if not poller.poll(ACCEPT_POLL * 1000):
                    continue
                request, address = self.get_request()
            except (BlockingIOError, InterruptedError, TimeoutError):
                continue  # a sibling process took it, or nothing after all
            except (OSError, ValueError):
                if stopping.is_set() or self.socket.fileno() < 0:
                    return None
                logger.exception("accepting a DICOM connection failed")
                stopping.wait(ACCEPT_RETRY)  # out of descriptors, say: not a busy loop
                continue
            if self.verify_request(request, address):
                return request, address
            self.shutdown_request(request)
        return None

    def lean_started(self) -> None:
        with self._lean_lock:
            self._lean_count += 1

    def lean_ended(self) -> None:
        with self._lean_lock:
            self._lean_count -= 1

    @contextlib.contextmanager
    def lean_connection(self, sock: socket.socket) -> Iterator[None]:
        with self._lean_lock:
            self._lean_sockets.add(sock)
        try:
            yield
        finally:
            with self._lean_lock:
                self._lean_sockets.discard(sock)

    def busy(self) -> int:
        return len(self.active_associations) + self._lean_count

    def server_close(self) -> None:
        """Abort the associations served on accepting threads (as pynetdicom's shutdown
        aborts its own), so that closing, which waits for those threads, ends at once."""
        with self._lean_lock:
            sockets = list(self._lean_sockets)
        for sock in sockets:
            dicom_lean.abort_connection(sock)
        self._leaders.stopping.set()
        if self.adopted:
            # The supervisor's socket, which the other processes go on accepting from:
            # shutting it down (pynetdicom's server_close) would stop theirs too.
            self.socket.close()
        else:
            super().server_close()

    def service_actions(self) -> None:
        """pynetdicom runs a full gc.collect() every 60 turns of the accept loop, and each
        association is a turn: under many short associations (C-ECHO, C-FIND) that pause
        was a quarter of the process's time. Python's own collector frees what the
        finished associations leave (their reference cycles) without it."""
