"""HL7 test helpers: synthetic messages, an MLLP client, and a receiver that plays the HIS."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ris.hl7 import ack
from ris.hl7.mllp import FrameDecoder, encode_frame

SOCKET_TIMEOUT = 10.0

MSH = "MSH|^~\\&|{app}|{facility}|RISPACS|RADIOLOGY|20250301083000||{type}|{control}|P|{version}"


def message(
    control_id: str,
    message_type: str,
    *segments: str,
    version: str = "2.5.1",
    app: str = "HIS",
    facility: str = "GENERAL HOSPITAL",
    charset: str = "",
) -> bytes:
    """Return a message: MSH with these values, then SEGMENTS, CR-terminated, as UTF-8."""
    msh = MSH.format(
        app=app, facility=facility, type=message_type, control=control_id, version=version
    )
    if charset:
        msh += "||||||" + charset
    return ("\r".join([msh, *segments]) + "\r").encode("utf-8")


def pid(
    identifiers: str = "PAT-0001^^^HOSP^MR",
    name: str = "TESTPERSON^ALEX",
    birth: str = "19800101",
    sex: str = "F",
    *more: str,
) -> str:
    return "|".join(["PID", "1", "", identifiers, "", name, "", birth, sex, *more])


def adt(
    control_id: str,
    trigger: str = "A04",
    identifiers: str = "PAT-0001^^^HOSP^MR",
    name: str = "TESTPERSON^ALEX",
    birth: str = "19800101",
    sex: str = "F",
    **kwargs: str,
) -> bytes:
    return message(
        control_id,
        f"ADT^{trigger}^ADT_A01",
        f"EVN|{trigger}|20250301083000",
        pid(identifiers, name, birth, sex),
        "PV1|1|O",
        **kwargs,
    )


def orm(
    control_id: str,
    control: str = "NW",
    placer: str = "PLC-1",
    code: str = "CTHEAD",
    start: str = "20250302100000",
    identifiers: str = "PAT-0001^^^HOSP^MR",
    filler: str = "",
    priority: str = "R",
    status: str = "",
    version: str = "2.3",
    **kwargs: str,
) -> bytes:
    return message(
        control_id,
        "ORM^O01",
        pid(identifiers),
        "PV1|1|O",
        f"ORC|{control}|{placer}|{filler}||{status}||^^^{start}^^{priority}||20250301083000"
        "|||1234^REFERRER^RITA",
        f"OBR|1|{placer}|{filler}|{code}^Procedure {code}^L|||||||||Headache",
        version=version,
        **kwargs,
    )


def fields(reply: str, segment_id: str) -> list[str]:
    """Return the fields of the first SEGMENT_ID segment: index n is field n."""
    for segment in reply.split("\r"):
        if segment.startswith(segment_id):
            separator = segment[3]
            parts = segment.split(separator)
            return ["MSH", separator, *parts[1:]] if segment_id == "MSH" else parts
    raise AssertionError(f"no {segment_id} segment in {reply!r}")


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    sock.settimeout(SOCKET_TIMEOUT)
    return sock


def receive(sock: socket.socket, count: int, decoder: FrameDecoder | None = None) -> list[str]:
    """Read COUNT framed replies from SOCK."""
    decoder = decoder or FrameDecoder()
    frames: list[bytes] = []
    while len(frames) < count:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed after {len(frames)} of {count} ACK(s)")
        frames += decoder.feed(data)
    assert len(frames) == count
    return [frame.decode("latin-1") for frame in frames]


def exchange(port: int, *messages: bytes) -> list[str]:
    """Send MESSAGES over one connection, each after the ACK of the one before."""
    replies: list[str] = []
    with connect(port) as sock:
        decoder = FrameDecoder()
        for content in messages:
            sock.sendall(encode_frame(content))
            replies += receive(sock, 1, decoder)
    return replies


def ack_code(reply: str) -> str:
    return fields(reply, "MSA")[1]


# ---------------------------------------------------------------- a receiver for the outbox


@dataclass
class Received:
    control_id: str
    message_type: str
    text: str


@dataclass
class MLLPReceiver:
    """A system we send to: records every message and answers with the ACK `answer` picks.

    Bound at once to a free port but not listening until `up()`: while down, connecting
    is refused, as when the HIS's interface engine is stopped.
    """

    answer: Callable[[Received], str] = lambda received: ack.APPLICATION_ACCEPT
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._server: socketserver.ThreadingTCPServer | None = None

    def up(self) -> None:
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                decoder = FrameDecoder()
                while data := self.request.recv(65536):
                    for frame in decoder.feed(data):
                        answer = receiver.reply(frame)
                        if answer is not None:  # None: never answer, like a hung engine
                            self.request.sendall(encode_frame(answer))

        server = socketserver.ThreadingTCPServer(
            ("127.0.0.1", self.port), Handler, bind_and_activate=False
        )
        server.daemon_threads = True
        server.socket.close()
        server.socket = self._socket  # the port reserved since the start
        self._socket.listen(16)
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def reply(self, frame: bytes) -> bytes | None:
        text = frame.decode("utf-8", errors="replace")
        header = ack.parse_header(text)
        code, trigger = header.message_type
        received = Received(header.control_id, f"{code}^{trigger}", text)
        answer = self.answer(received)
        with self.lock:
            self.received.append(received)
        return ack.build_ack(
            header,
            answer,
            "" if answer == "AA" else "test says no",
            sending_application="HIS",
            sending_facility="HOSP",
        ).encode("utf-8")

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        else:
            self._socket.close()

    def control_ids(self) -> list[str]:
        with self.lock:
            return [r.control_id for r in self.received]
