"""The HL7 MLLP listener over real sockets: framing, ACK addressing, bad input, concurrency.

What the messages do once received is in test_hl7_inbound.py; here every message is
stored, so each test runs against a database the listener's threads can see.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ris.hl7 import ack, server
from ris.hl7.mllp import START_BLOCK, FrameDecoder, encode_frame
from ris.hl7.server import MLLPServer, build_server, respond, start
from tests.netutil import (
    BASE_DIR,
    DEADLINE,
    LISTENING,
    manage_py,
    read_line,
    stop,
    subprocess_env,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)

SOCKET_TIMEOUT = 10.0


def adt_a01(control_id: str = "MSG00001", *, separator: str = "|") -> bytes:
    """Return a synthetic ADT^A01 (admit) for a made-up patient."""
    segments = [
        "MSH|^~\\&|HIS|GENERAL HOSPITAL|RISPACS|RADIOLOGY|20250301083000||ADT^A01^ADT_A01|"
        f"{control_id}|P|2.5.1",
        "EVN|A01|20250301083000",
        "PID|1||PAT-0001^^^HOSP^MR||TESTPERSON^ALEX||19800101|U",
        "PV1|1|O",
    ]
    text = "\r".join(segments) + "\r"
    return text.replace("|", separator).encode("ascii")


def fields(message: str, segment_id: str) -> list[str]:
    """Return the fields of the first SEGMENT_ID segment, numbered as HL7 does (index n = -n)."""
    for segment in message.split("\r"):
        if segment.startswith(segment_id):
            separator = segment[3]
            parts = segment.split(separator)
            # MSH-1 is the separator itself, so MSH fields shift by one.
            return ["MSH", separator, *parts[1:]] if segment_id == "MSH" else parts
    raise AssertionError(f"no {segment_id} segment in {message!r}")


def receive(sock: socket.socket, count: int) -> list[str]:
    """Read COUNT framed ACKs from SOCK."""
    decoder = FrameDecoder()
    frames: list[bytes] = []
    while len(frames) < count:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed after {len(frames)} of {count} ACK(s)")
        frames += decoder.feed(data)
    assert len(frames) == count
    return [frame.decode("latin-1") for frame in frames]


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    sock.settimeout(SOCKET_TIMEOUT)
    return sock


def wait_for_close(sock: socket.socket) -> bytes:
    """Read until the server closes SOCK and return what came; a socket timeout fails."""
    received = b""
    try:
        while data := sock.recv(65536):
            received += data
    except ConnectionResetError:
        pass
    return received


@pytest.fixture
def hl7_server(settings: Any) -> Iterator[MLLPServer]:
    settings.HL7_SENDING_APPLICATION = "TESTRIS"
    settings.HL7_SENDING_FACILITY = "TESTRAD"
    listener = start("127.0.0.1", 0, block=False)
    yield listener
    listener.stop()


def test_adt_is_accepted_with_the_ack_addressed_back(hl7_server: MLLPServer) -> None:
    with connect(hl7_server.port) as sock:
        sock.sendall(encode_frame(adt_a01("CTRL-42")))
        [reply] = receive(sock, 1)

    msh, msa = fields(reply, "MSH"), fields(reply, "MSA")
    assert msa[1:3] == [ack.APPLICATION_ACCEPT, "CTRL-42"]
    assert "\rERR" not in reply
    assert msh[1:7] == ["|", "^~\\&", "TESTRIS", "TESTRAD", "HIS", "GENERAL HOSPITAL"]
    assert msh[9] == "ACK^A01^ACK"
    assert msh[10] != "CTRL-42"
    assert re.fullmatch(r"[0-9A-F]{20}", msh[10])
    assert msh[11:13] == ["P", "2.5.1"]
    sent_at = datetime.strptime(msh[7], "%Y%m%d%H%M%S%z")
    assert sent_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - sent_at) < timedelta(minutes=5)


def test_each_ack_has_its_own_control_id(hl7_server: MLLPServer) -> None:
    with connect(hl7_server.port) as sock:
        sock.sendall(encode_frame(adt_a01("A")) + encode_frame(adt_a01("B")))
        replies = receive(sock, 2)
    assert fields(replies[0], "MSH")[10] != fields(replies[1], "MSH")[10]


def test_frame_split_across_two_writes_gets_one_ack(hl7_server: MLLPServer) -> None:
    frame = encode_frame(adt_a01("SPLIT-1"))
    with connect(hl7_server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(frame[:37])
        sock.sendall(frame[37:])
        [reply] = receive(sock, 1)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""  # nothing more: exactly one ACK
    assert fields(reply, "MSA")[2] == "SPLIT-1"


def test_two_frames_in_one_write_get_two_acks_in_order(hl7_server: MLLPServer) -> None:
    with connect(hl7_server.port) as sock:
        sock.sendall(encode_frame(adt_a01("FIRST")) + encode_frame(adt_a01("SECOND")))
        replies = receive(sock, 2)
    assert [fields(reply, "MSA")[2] for reply in replies] == ["FIRST", "SECOND"]


def test_garbage_before_a_frame_is_skipped(hl7_server: MLLPServer) -> None:
    with connect(hl7_server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + encode_frame(adt_a01("AFTER-NOISE")))
        [reply] = receive(sock, 1)
    assert fields(reply, "MSA")[1:3] == [ack.APPLICATION_ACCEPT, "AFTER-NOISE"]


def test_frame_without_msh_gets_a_generic_reject_and_the_connection_serves_on(
    hl7_server: MLLPServer,
) -> None:
    with connect(hl7_server.port) as sock:
        sock.sendall(encode_frame(b"PID|1||PAT-0001||TESTPERSON^ALEX\r"))
        [rejected] = receive(sock, 1)
        sock.sendall(encode_frame(adt_a01("NEXT")))
        [reply] = receive(sock, 1)

    msh = fields(rejected, "MSH")
    assert msh[3:7] == ["TESTRIS", "TESTRAD", "", ""]
    assert msh[9] == "ACK"
    assert fields(rejected, "MSA")[1:4] == [ack.APPLICATION_REJECT, "", "no MSH segment"]
    assert fields(rejected, "ERR")[8] == "no MSH segment"
    assert fields(reply, "MSA")[2] == "NEXT"


@pytest.mark.parametrize(
    "content",
    [b"", b"MSH", b"MSHX^~\\&X", b"MSH|^~|HIS|", b"\x00\xff\xfe binary", b"MSH|^~\\&"],
    ids=["empty", "msh-only", "alnum-separator", "short-encoding", "binary", "msh-2-only"],
)
def test_malformed_messages_get_a_reject_not_a_dropped_connection(
    hl7_server: MLLPServer, content: bytes
) -> None:
    with connect(hl7_server.port) as sock:
        sock.sendall(encode_frame(content) + encode_frame(adt_a01("STILL-HERE")))
        rejected, reply = receive(sock, 2)
    assert fields(rejected, "MSA")[1] == ack.APPLICATION_REJECT
    assert fields(reply, "MSA")[2] == "STILL-HERE"


def test_ack_uses_the_delimiters_of_the_message(hl7_server: MLLPServer) -> None:
    with connect(hl7_server.port) as sock:
        sock.sendall(encode_frame(adt_a01("HASH-1", separator="#")))
        [reply] = receive(sock, 1)
    assert reply.startswith("MSH#^~\\&#TESTRIS#TESTRAD#HIS#GENERAL HOSPITAL#")
    assert fields(reply, "MSA")[1:3] == [ack.APPLICATION_ACCEPT, "HASH-1"]


def test_fields_in_another_character_set_are_echoed_byte_for_byte(
    hl7_server: MLLPServer,
) -> None:
    facility = "KLINIKUM MÜNCHEN".encode()
    message = (
        b"MSH|^~\\&|HIS|" + facility + b"|RISPACS|RADIOLOGY|20250301083000||ADT^A08|U8|P|2.5.1"
        b"||||||UNICODE UTF-8\rPID|1||P1||TESTPERSON^ALEX\r"
    )
    with connect(hl7_server.port) as sock:
        sock.sendall(encode_frame(message))
        raw = receive(sock, 1)[0].encode("latin-1")
    msh = raw.split(b"\r")[0].split(b"|")
    assert msh[5] == facility  # MSH-6 (split index 5: MSH-1 is the separator itself)
    assert msh[17] == b"UNICODE UTF-8"  # MSH-18


def test_twenty_concurrent_connections_each_get_their_ack(hl7_server: MLLPServer) -> None:
    count = 20
    all_connected = threading.Barrier(count, timeout=DEADLINE)
    replies: dict[int, str] = {}
    errors: list[BaseException] = []

    def client(number: int) -> None:
        try:
            with connect(hl7_server.port) as sock:
                all_connected.wait()  # every connection is open before any message goes
                sock.sendall(encode_frame(adt_a01(f"CONC-{number:02d}")))
                [replies[number]] = receive(sock, 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not errors
    assert {number: fields(reply, "MSA")[2] for number, reply in replies.items()} == {
        number: f"CONC-{number:02d}" for number in range(count)
    }


def test_oversized_frame_drops_the_connection_but_not_the_server() -> None:
    listener = MLLPServer(
        ("127.0.0.1", 0),
        lambda content, peer: ack.build_ack(
            None, ack.APPLICATION_REJECT, "x", sending_application="A", sending_facility="F"
        ).encode(),
        max_frame_size=1000,
    )
    thread = threading.Thread(target=listener.serve_forever, daemon=True)
    thread.start()
    try:
        with connect(listener.port) as sock:
            sock.sendall(START_BLOCK + b"MSH|" + b"x" * 2000)
            assert wait_for_close(sock) == b""  # dropped, not answered
        with connect(listener.port) as sock:
            sock.sendall(encode_frame(adt_a01()))
            assert len(receive(sock, 1)) == 1
    finally:
        listener.stop()


def test_silent_connection_is_closed_after_the_read_timeout(settings: Any) -> None:
    listener = build_server("127.0.0.1", 0, read_timeout=0.2)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    try:
        with connect(listener.port) as sock:
            assert wait_for_close(sock) == b""  # the server hung up before SOCKET_TIMEOUT
    finally:
        listener.stop()


def test_a_failure_while_answering_gives_an_application_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(content: bytes, **kwargs: str) -> bytes:
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(server.inbound, "receive", broken)
    reply = respond(adt_a01("BUG-1")).decode()
    assert fields(reply, "MSA")[1:3] == [ack.APPLICATION_ERROR, "BUG-1"]
    assert fields(reply, "ERR")[3].startswith(ack.APPLICATION_INTERNAL_ERROR)


def test_escape_uses_the_messages_own_delimiters() -> None:
    assert ack.escape("a|b^c~d\\e&f", "|", "^~\\&") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    assert ack.escape("x^y#z", "|", "^~\\&#") == "x\\S\\y\\P\\z"


def test_hl7server_command_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path, HL7_SENDING_APPLICATION="CMDTEST")
    with manage_py("migrate", "--noinput", env=env) as migrate:
        assert migrate.wait(timeout=120) == 0, migrate.communicate()[1]
    with manage_py("hl7server", "--port", "0", "--bind", "127.0.0.1", env=env) as proc:
        port = int(read_line(proc, LISTENING)["port"])
        with connect(port) as sock:
            sock.sendall(encode_frame(adt_a01("CMD-1")))
            [reply] = receive(sock, 1)
        returncode, stdout, stderr = stop(proc)
    assert fields(reply, "MSH")[3] == "CMDTEST"
    assert fields(reply, "MSA")[1:3] == [ack.APPLICATION_ACCEPT, "CMD-1"]
    assert returncode == 0, stderr
    assert "HL7 listener stopped" in stdout


def test_several_listener_processes_share_the_port_and_stop_together(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a free port, for the workers to share
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = subprocess_env(tmp_path)
    with manage_py("migrate", "--noinput", env=env) as migrate:
        assert migrate.wait(timeout=120) == 0, migrate.communicate()[1]
    args = ["hl7server", "--processes", "2", "--port", str(port), "--bind", "127.0.0.1"]
    with manage_py(*args, env=env) as supervisor:
        read_line(supervisor, re.compile(r"HL7 supervisor: 2 processes"))

        def exchange_one(number: int) -> str | None:
            try:
                with connect(port) as sock:
                    sock.sendall(encode_frame(adt_a01(f"SHARED-{number}")))
                    [reply] = receive(sock, 1)
                    return reply
            except OSError:
                return None  # the workers are still starting

        replies = [
            wait_until(lambda n=n: exchange_one(n), what="an ACK from a worker") for n in range(6)
        ]
        returncode, stdout, _ = stop(supervisor)
    assert [fields(reply, "MSA")[1] for reply in replies] == [ack.APPLICATION_ACCEPT] * 6
    assert returncode == 0 and "stopped" in stdout
    with socket.socket() as again:  # every worker is gone: the port is free
        again.bind(("127.0.0.1", port))


def test_the_stand_in_for_beat_finds_its_tasks_in_a_fresh_process(tmp_path: Path) -> None:
    # A listener process has not imported the apps' tasks modules; Celery finds them lazily.
    code = (
        "import django; django.setup(); "
        "from core.listeners import BeatStandIn; "
        "from core.dicom_server import BEAT_TASK_PREFIXES as DICOM; "
        "from ris.hl7.server import BEAT_TASK_PREFIXES as HL7; "
        "print(sorted(BeatStandIn(HL7).tasks()) + sorted(BeatStandIn(DICOM).tasks()))"
    )
    env = {**subprocess_env(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(
        [
            "ris.hl7.tasks.sweep_outbox",
            "pacs.tasks.sweep_commitment_reports",
            "pacs.tasks.sweep_header_rewrites",
        ]
    )
