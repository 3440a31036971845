"""The MLLP listener: one thread per connection, every frame answered with an ACK.

Each message is stored and applied by ris.hl7.inbound, and its ACK goes back only after
that transaction committed. Without a Celery broker the listener also sweeps the outbox
now and then, as beat does otherwise.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connections

from core.listeners import (
    BeatStandIn,
    SharedListener,
    Writer,
    announce,
    format_address,
    settle_memory,
    stop_signals,
)
from ris.hl7 import ack, inbound
from ris.hl7.mllp import MAX_FRAME_SIZE, FrameDecoder, FrameTooLarge, encode_frame

logger = logging.getLogger(__name__)

# The beat entries this listener runs itself when there is no broker.
BEAT_TASK_PREFIXES = ("ris.hl7.",)

# Seconds a connection may stay silent before it is closed; senders reconnect as needed.
READ_TIMEOUT = 300.0
RECV_SIZE = 64 * 1024
# How often the accept loop looks for a shutdown request: the most a stop waits.
SHUTDOWN_POLL_INTERVAL = 0.1

# Takes the content of one frame and the peer's address; returns the ACK to send back.
Responder = Callable[[bytes, str], bytes]


def respond(content: bytes, peer: str = "") -> bytes:
    """Return the ACK for the message in one MLLP frame; never raise."""
    try:
        return inbound.receive(content, peer=peer)
    except Exception:  # the database is gone, or a bug: this message only, not the connection
        logger.exception("HL7 message from %s could not be stored or answered", peer or "-")
        try:
            header: ack.MessageHeader | None = ack.parse_header(content.decode("latin-1"))
        except ack.HeaderError:
            header = None
        reply = ack.build_ack(
            header,
            ack.APPLICATION_ERROR,
            "internal error; send the message again later",
            error_code=ack.APPLICATION_INTERNAL_ERROR,
            sending_application=settings.HL7_SENDING_APPLICATION,
            sending_facility=settings.HL7_SENDING_FACILITY,
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
        try:
            self._serve(sock, decoder, peer)
        finally:
            connections.close_all()  # this thread's database connections end with it

    def _serve(self, sock: socket.socket, decoder: FrameDecoder, peer: str) -> None:
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
                    sock.sendall(encode_frame(self.server.respond(frame, peer)))
                except OSError as exc:
                    logger.info("MLLP %s: cannot send ACK: %s", peer, exc)
                    return
            if too_large is not None:
                logger.warning("MLLP %s: %s, dropping the connection", peer, too_large)
                return


class MLLPServer(SharedListener, socketserver.ThreadingTCPServer):
    """A TCP server speaking MLLP, one daemon thread per connection.

    With `shared`, one of several processes accepting from the supervisor's socket.
    """

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
        shared: bool = False,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.shared = shared
        self._connections = 0
        self._connections_lock = threading.Lock()
        self.respond = respond
        self.read_timeout = read_timeout
        self.max_frame_size = max_frame_size
        super().__init__(address, MLLPRequestHandler)

    def busy(self) -> int:
        return self._connections

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # The connection's own thread, from start to end: counted while it lives.
        with self._connections_lock:
            self._connections += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections -= 1

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: object, client_address: object) -> None:
        logger.exception("MLLP: error serving %s", client_address)

    def stop(self) -> None:
        """Stop accepting connections and close the listening socket."""
        self.shutdown()
        self.server_close()


def build_server(
    address: str, port: int, *, read_timeout: float = READ_TIMEOUT, shared: bool = False
) -> MLLPServer:
    """Bind the listener on ADDRESS:PORT (0: any free port)."""
    return MLLPServer((address, port), respond, read_timeout=read_timeout, shared=shared)


def _listen(
    address: str, port: int, read_timeout: float, stdout: Writer | None, shared: bool = False
) -> MLLPServer:
    server = build_server(address, port, read_timeout=read_timeout, shared=shared)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": SHUTDOWN_POLL_INTERVAL},
        name="mllp-server",
        daemon=True,
    )
    thread.start()
    address = format_address(str(server.server_address[0]), server.port)
    announce(f"HL7 MLLP listening on {address}", stdout)
    return server


def start(
    address: str,
    port: int,
    *,
    block: bool = True,
    read_timeout: float = READ_TIMEOUT,
    stdout: Writer | None = None,
    sweep: bool = False,
    shared: bool = False,
) -> MLLPServer:
    """Listen on ADDRESS:PORT; with BLOCK, serve until SIGTERM or SIGINT, then stop.

    With SWEEP, also run the HL7 interface's beat entries (the outbox sweep) for set-ups
    without beat; with SHARED, accept from the supervisor's socket with other listener processes.
    """
    if not block:
        return _listen(address, port, read_timeout, stdout, shared)
    sweeper = BeatStandIn(BEAT_TASK_PREFIXES) if sweep else None
    settle_memory()
    with stop_signals() as stop:
        server = _listen(address, port, read_timeout, stdout, shared)
        if sweeper is not None:
            sweeper.start()
        try:
            stop.wait()
        finally:
            server.stop()
            if sweeper is not None:
                sweeper.stop()
    return server
