"""The MLLP listener: one thread per connection, every frame answered with an ACK.

No inbound message type is handled yet: each well-formed message is rejected (AR)
as not supported, so that the sender holds it rather than believing it delivered.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from functools import partial

from django.conf import settings

from core.listeners import Writer, format_address, stop_signals
from ris.hl7 import ack
from ris.hl7.mllp import MAX_FRAME_SIZE, FrameDecoder, FrameTooLarge, encode_frame

logger = logging.getLogger(__name__)

# Seconds a connection may stay silent before it is closed; senders reconnect as needed.
READ_TIMEOUT = 300.0
RECV_SIZE = 64 * 1024
# How often the accept loop looks for a shutdown request: the most a stop waits.
SHUTDOWN_POLL_INTERVAL = 0.1

Responder = Callable[[bytes], bytes]


def _reply(
    message: str,
    *,
    sending_application: str,
    sending_facility: str,
) -> str:
    try:
        header = ack.parse_header(message)
    except ack.HeaderError as exc:
        logger.warning("HL7 message rejected: %s", exc.text)
        return ack.build_ack(
            None,
            ack.APPLICATION_REJECT,
            exc.text,
            error_code=exc.error_code,
            sending_application=sending_application,
            sending_facility=sending_facility,
        )
    code, trigger = header.message_type
    if not code:
        text, error_code = "MSH-9 message type is empty", ack.REQUIRED_FIELD_MISSING
    else:
        label = f"{code}^{trigger}" if trigger else code
        text, error_code = f"message type {label} not yet supported", ack.UNSUPPORTED_MESSAGE_TYPE
    logger.info("HL7 %s (control id %r) rejected: %s", code or "-", header.control_id, text)
    return ack.build_ack(
        header,
        ack.APPLICATION_REJECT,
        text,
        error_code=error_code,
        sending_application=sending_application,
        sending_facility=sending_facility,
    )


def respond(content: bytes, *, sending_application: str, sending_facility: str) -> bytes:
    """Return the ACK for the message in one MLLP frame; never raise."""
    # Latin-1 maps every byte to one character and back, so whatever the message's
    # character set (MSH-18), the fields echoed in the ACK go back byte for byte.
    message = content.decode("latin-1")
    try:
        reply = _reply(
            message, sending_application=sending_application, sending_facility=sending_facility
        )
    except Exception:  # a bug here must cost one message, not the connection
        logger.exception("HL7 message could not be answered")
        try:
            header: ack.MessageHeader | None = ack.parse_header(message)
        except ack.HeaderError:
            header = None
        reply = ack.build_ack(
            header,
            ack.APPLICATION_ERROR,
            "internal error",
            error_code=ack.APPLICATION_INTERNAL_ERROR,
            sending_application=sending_application,
            sending_facility=sending_facility,
        )
    return reply.encode("latin-1", errors="replace")


def _peer(client_address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    return format_address(str(client_address[0]), int(client_address[1]))


class MLLPRequestHandler(socketserver.BaseRequestHandler):
    """Serve one connection: decode frames, answer each with its ACK, in order."""

    server: MLLPServer
    request: socket.socket

    def handle(self) -> None:
        peer = _peer(self.client_address)
        sock = self.request
        sock.settimeout(self.server.read_timeout)
        decoder = FrameDecoder(self.server.max_frame_size, peer=peer)
        logger.info("MLLP connection from %s", peer)
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except TimeoutError:
                logger.info("MLLP %s: idle for %ss, closing", peer, self.server.read_timeout)
                return
            except OSError as exc:
                logger.info("MLLP %s: connection error: %s", peer, exc)
                return
            if not data:
                if decoder.buffered:
                    logger.warning("MLLP %s: closed inside a frame", peer)
                logger.info("MLLP %s: closed", peer)
                return
            too_large: FrameTooLarge | None = None
            try:
                frames = decoder.feed(data)
            except FrameTooLarge as exc:
                frames, too_large = exc.frames, exc
            for frame in frames:
                try:
                    sock.sendall(encode_frame(self.server.respond(frame)))
                except OSError as exc:
                    logger.info("MLLP %s: cannot send ACK: %s", peer, exc)
                    return
            if too_large is not None:
                logger.warning("MLLP %s: %s, dropping the connection", peer, too_large)
                return


class MLLPServer(socketserver.ThreadingTCPServer):
    """A TCP server speaking MLLP, one daemon thread per connection."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        respond: Responder,
        *,
        read_timeout: float = READ_TIMEOUT,
        max_frame_size: int = MAX_FRAME_SIZE,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.respond = respond
        self.read_timeout = read_timeout
        self.max_frame_size = max_frame_size
        super().__init__(address, MLLPRequestHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: object, client_address: object) -> None:
        logger.exception("MLLP: error serving %s", client_address)

    def stop(self) -> None:
        """Stop accepting connections and close the listening socket."""
        self.shutdown()
        self.server_close()


def build_server(address: str, port: int, *, read_timeout: float = READ_TIMEOUT) -> MLLPServer:
    """Bind the listener on ADDRESS:PORT (0: any free port), answering as configured."""
    responder = partial(
        respond,
        sending_application=settings.HL7_SENDING_APPLICATION,
        sending_facility=settings.HL7_SENDING_FACILITY,
    )
    return MLLPServer((address, port), responder, read_timeout=read_timeout)


def _listen(address: str, port: int, read_timeout: float, stdout: Writer | None) -> MLLPServer:
    server = build_server(address, port, read_timeout=read_timeout)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": SHUTDOWN_POLL_INTERVAL},
        name="mllp-server",
        daemon=True,
    )
    thread.start()
    line = f"HL7 MLLP listening on {format_address(str(server.server_address[0]), server.port)}"
    logger.info("%s", line)
    out = stdout or sys.stdout
    out.write(line + "\n")
    out.flush()
    return server


def start(
    address: str,
    port: int,
    *,
    block: bool = True,
    read_timeout: float = READ_TIMEOUT,
    stdout: Writer | None = None,
) -> MLLPServer:
    """Listen on ADDRESS:PORT; with BLOCK, serve until SIGTERM or SIGINT, then stop."""
    if not block:
        return _listen(address, port, read_timeout, stdout)
    with stop_signals() as stop:
        server = _listen(address, port, read_timeout, stdout)
        try:
            stop.wait()
        finally:
            server.stop()
    return server
