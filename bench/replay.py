"""One whole association replayed from a raw socket: what a server takes to serve it.

DCMTK's findscu and echoscu spend most of their time starting up (about 20 ms here), which
the server has no part in and which swings with the machine's load. This client sends the
same PDUs as they do, from an already running process: A-ASSOCIATE-RQ, then a C-ECHO or a
C-FIND request, reads every response, then A-RELEASE-RQ, and times connect() to
A-RELEASE-RP: the server's own share of a query, PS3.8 and PS3.7 byte for byte.
"""

from __future__ import annotations

import socket
import struct
import time

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1"
C_ECHO_RQ, C_FIND_RQ = 0x0030, 0x0020  # PS3.7 E.1-1, Command Field
NO_DATA_SET, DATA_SET = 0x0101, 0x0000
PENDING = (0xFF00, 0xFF01)


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def associate_rq(called: str, calling: str, abstract_syntax: str) -> bytes:
    """A-ASSOCIATE-RQ proposing ABSTRACT_SYNTAX in both little endian syntaxes (PS3.8 9.3.2)."""
    context = (
        struct.pack(">BBBB", 1, 0, 0, 0)
        + _item(0x30, _uid(abstract_syntax))
        + _item(0x40, _uid(EXPLICIT_VR_LITTLE_ENDIAN))
        + _item(0x40, _uid(IMPLICIT_VR_LITTLE_ENDIAN))
    )
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, _uid(IMPLEMENTATION_CLASS_UID))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode("ascii")
        + calling.ljust(16).encode("ascii")
        + bytes(32)
        + _item(0x10, _uid(APPLICATION_CONTEXT))
        + _item(0x20, context)
        + _item(0x50, user)
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _encode(ds: Dataset, *, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _command(field: int, sop_class: str, data_set_type: int) -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = sop_class
    command.CommandField = field
    command.MessageID = 1
    if field == C_FIND_RQ:
        command.Priority = 0
    command.CommandDataSetType = data_set_type
    encoded = _encode(command, implicit=True)
    group_length = Dataset()
    group_length.CommandGroupLength = len(encoded)
    return _encode(group_length, implicit=True) + encoded


def p_data(context_id: int, fragment: bytes, *, command: bool) -> bytes:
    """One P-DATA-TF PDU holding FRAGMENT as the last fragment (PS3.8 9.3.5, E.2)."""
    header = 0x03 if command else 0x02
    value = struct.pack(">IBB", len(fragment) + 2, context_id, header) + fragment
    return struct.pack(">BBI", 0x04, 0, len(value)) + value


RELEASE_RQ = struct.pack(">BBIHH", 0x05, 0, 4, 0, 0)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = _read(sock, 6)
    pdu_type, _, length = struct.unpack(">BBI", header)
    return pdu_type, _read(sock, length)


def _read(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return bytes(data)


def _accepted_context(body: bytes) -> tuple[int, bool]:
    """The accepted presentation context's ID and whether its syntax is implicit VR."""
    offset = 68
    while offset < len(body):
        item_type, _, length = struct.unpack_from(">BBH", body, offset)
        if item_type == 0x21 and body[offset + 6] == 0:  # result 0: acceptance
            syntax = body[offset + 12 : offset + 4 + length].rstrip(b"\0 ").decode()
            return body[offset + 4], syntax == IMPLICIT_VR_LITTLE_ENDIAN
        offset += 4 + length
    raise ConnectionError("no presentation context accepted")


def _status(command: bytes) -> int:
    """Status (0000,0900) of an Implicit VR Little Endian command set."""
    offset = 0
    while offset < len(command):
        group, element, length = struct.unpack_from("<HHI", command, offset)
        if (group, element) == (0x0000, 0x0900):
            return int(struct.unpack_from("<H", command, offset + 8)[0])
        offset += 8 + length
    raise ConnectionError("a response without a status")


def _responses(sock: socket.socket) -> int:
    """Read DIMSE responses until the final one; return how many were pending."""
    pending = 0
    command = bytearray()
    while True:
        pdu_type, body = _read_pdu(sock)
        if pdu_type != 0x04:
            raise ConnectionError(f"PDU type {pdu_type:#x} instead of P-DATA-TF")
        offset = 0
        while offset < len(body):
            (length,) = struct.unpack_from(">I", body, offset)
            control = body[offset + 5]
            if control & 1:
                command += body[offset + 6 : offset + 4 + length]
                if control & 2:
                    if _status(bytes(command)) not in PENDING:
                        return pending
                    pending += 1
                    command = bytearray()
            offset += 4 + length


def associate(
    port: int, called: str, calling: str, abstract_syntax: str
) -> tuple[socket.socket, int, bool]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(associate_rq(called, calling, abstract_syntax))
    pdu_type, body = _read_pdu(sock)
    if pdu_type != 0x02:
        sock.close()
        raise ConnectionError(f"association not accepted (PDU type {pdu_type:#x})")
    context_id, implicit = _accepted_context(body)
    return sock, context_id, implicit


def release(sock: socket.socket) -> None:
    sock.sendall(RELEASE_RQ)
    pdu_type, _ = _read_pdu(sock)
    if pdu_type != 0x06:
        raise ConnectionError(f"PDU type {pdu_type:#x} instead of A-RELEASE-RP")
    sock.close()


def echo(port: int, called: str, calling: str) -> float:
    """Seconds for one whole C-ECHO association."""
    started = time.perf_counter()
    sock, context_id, _ = associate(port, called, calling, VERIFICATION)
    sock.sendall(p_data(context_id, _command(C_ECHO_RQ, VERIFICATION, NO_DATA_SET), command=True))
    _responses(sock)
    release(sock)
    return time.perf_counter() - started


def find(port: int, called: str, calling: str, identifier: Dataset) -> tuple[float, int]:
    """Seconds for one whole Study Root C-FIND association, and the number of matches."""
    started = time.perf_counter()
    sock, context_id, implicit = associate(port, called, calling, STUDY_ROOT_FIND)
    command = _command(C_FIND_RQ, STUDY_ROOT_FIND, DATA_SET)
    sock.sendall(
        p_data(context_id, command, command=True)
        + p_data(context_id, _encode(identifier, implicit=implicit), command=False)
    )
    matches = _responses(sock)
    release(sock)
    return time.perf_counter() - started, matches
