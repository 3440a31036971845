"""The DICOM listener: C-ECHO from pynetdicom and DCMTK, malformed PDUs, the real command."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from core.dicom_server import NETWORK_TIMEOUT, ArchiveAE, build_ae, start
from pacs.dimse import STATUS_SUCCESS
from tests import dcmtk
from tests.netutil import (
    DEADLINE,
    LISTENING,
    manage_py,
    read_line,
    stop,
    subprocess_env,
    wait_until,
)

SCP_AE_TITLE = "TESTSCP"


def echo(port: int, called_ae_title: str = SCP_AE_TITLE) -> int | None:
    """Send one C-ECHO as an SCU; return its status, or None if no association was made."""
    scu = AE(ae_title="TESTSCU")
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 10
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port, ae_title=called_ae_title)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    return int(status.Status) if "Status" in status else None


@pytest.fixture(autouse=True)
def _verification_only(settings: Any) -> None:
    """These tests are about the listener itself: echo only, no database behind it."""
    settings.DICOM_SERVICES = ["pacs.dimse.verification_service"]


@pytest.fixture
def dicom_server() -> Iterator[tuple[ArchiveAE, int]]:
    ae = build_ae(SCP_AE_TITLE)
    server = start(ae, "127.0.0.1", 0, block=False)
    yield ae, int(server.server_address[1])
    ae.shutdown()


def test_build_ae_offers_the_configured_services_with_the_configured_limits(
    settings: Any,
) -> None:
    settings.DICOM_MAX_PDU = 65536
    ae = build_ae("ARCHIVE1")
    assert ae.ae_title == "ARCHIVE1"
    assert [context.abstract_syntax for context in ae.supported_contexts] == [Verification]
    assert ae.maximum_pdu_size == 65536
    assert ae.network_timeout == NETWORK_TIMEOUT


def test_build_ae_names_a_service_that_cannot_be_imported(settings: Any) -> None:
    settings.DICOM_SERVICES = ["pacs.dimse.no_such_service"]
    with pytest.raises(ImproperlyConfigured, match=r"pacs\.dimse\.no_such_service"):
        build_ae("ARCHIVE1")


def test_pynetdicom_echo_succeeds(dicom_server: tuple[ArchiveAE, int], settings: Any) -> None:
    _, port = dicom_server
    scu = AE(ae_title="TESTSCU")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port, ae_title=SCP_AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_echo()
        # PS3.8 D.1: the acceptor announces the largest PDU it will take.
        assert assoc.acceptor.maximum_length == settings.DICOM_MAX_PDU
        assert assoc.acceptor.ae_title == SCP_AE_TITLE
    finally:
        assoc.release()
    assert status.Status == STATUS_SUCCESS


@pytest.mark.dcmtk
def test_dcmtk_echoscu_succeeds(dicom_server: tuple[ArchiveAE, int]) -> None:
    echoscu = dcmtk.tool("echoscu")
    _, port = dicom_server
    result = subprocess.run(
        [echoscu, "-aet", "DCMTKSCU", "-aec", SCP_AE_TITLE, "-to", "10", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _pdu(pdu_type: int, body: bytes, *, length: int | None = None) -> bytes:
    # PS3.8 9.3.1: PDU type, reserved byte, 32-bit big-endian length, then the body.
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"GET / HTTP/1.1\r\nHost: archive\r\n\r\n",
        bytes(range(256)) * 4,
        _pdu(0x01, b"\x00\x01"),  # A-ASSOCIATE-RQ cut short
        _pdu(0x01, b"", length=0xFFFFFFFF),  # claims a 4 GiB body, sends none
        _pdu(0x04, b"\x00" * 16),  # P-DATA-TF before any association
        _pdu(0x7F, b"\xff" * 32),  # no such PDU type
    ],
    ids=["nothing", "http", "noise", "short-rq", "huge-length", "early-pdata", "bad-type"],
)
def test_server_survives_garbage_and_answers_the_next_echo(
    dicom_server: tuple[ArchiveAE, int], payload: bytes
) -> None:
    _, port = dicom_server
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(payload)
    assert echo(port) == STATUS_SUCCESS


def test_dicomserver_command_rejects_a_bad_ae_title() -> None:
    with pytest.raises(CommandError, match="--ae-title"):
        call_command("dicomserver", "--ae-title", "A" * 17)


def test_dicomserver_command_answers_echo_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path)
    args = ["dicomserver", "--port", "0", "--bind", "127.0.0.1", "--ae-title", "CMDSCP"]
    with manage_py(*args, env=env) as proc:
        port = int(read_line(proc, LISTENING)["port"])
        status = wait_until(lambda: echo(port, "CMDSCP"), what="C-ECHO to manage.py dicomserver")
        returncode, stdout, stderr = stop(proc)
    assert status == STATUS_SUCCESS
    assert returncode == 0, stderr
    assert "DICOM listener stopped" in stdout


def serving_process(assoc: Any) -> int | None:
    """The pid of the local process holding the other end of ASSOC's connection (Linux /proc)."""
    local_port = assoc.dul.socket.socket.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == local_port and fields[3] == "01":  # established, towards our port
            inode = fields[9]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if f"socket:[{inode}]" in links:
            return int(proc.name)
    return None


def test_several_processes_share_the_port_and_stop_together(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a free port, for the workers to share
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = subprocess_env(tmp_path, DICOM_SERVICES="pacs.dimse.verification_service")
    args = [
        "dicomserver",
        "--processes",
        "2",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--ae-title",
        "SHAREDSCP",
    ]
    with manage_py(*args, env=env) as supervisor:
        statuses = [
            wait_until(lambda: echo(port, "SHAREDSCP"), what="C-ECHO to the worker processes")
            for _ in range(6)
        ]
        # Both workers accept from the one socket: two associations at once reach two
        # processes (the second worker may still be starting, and a loaded machine may be
        # slow to wake it: tries for a while). How a busy worker defers to an idle one is
        # tested below.
        client = AE(ae_title="BALANCE")
        client.add_requested_context(Verification)
        first = client.associate("127.0.0.1", port, ae_title="SHAREDSCP")
        servers: set[int | None] = set()
        try:
            deadline = time.monotonic() + 30
            while len(servers) < 2 and time.monotonic() < deadline:
                second = client.associate("127.0.0.1", port, ae_title="SHAREDSCP")
                servers = {serving_process(first), serving_process(second)}
                second.release()
                if len(servers) < 2:
                    time.sleep(0.5)
        finally:
            first.release()
        returncode, stdout, _ = stop(supervisor)
    assert statuses == [STATUS_SUCCESS] * 6
    assert len(servers) == 2 and None not in servers
    assert returncode == 0
    assert "2 processes" in stdout and "stopped" in stdout
    with socket.socket() as again:  # every worker is gone: the port is free
        again.bind(("127.0.0.1", port))


def test_a_busy_listener_lets_an_idle_sibling_accept_first() -> None:
    from core.listeners import BUSY_ACCEPT_DELAY, SharedListener

    class Base:
        def get_request(self) -> str:
            return "accepted"

    class Listener(SharedListener, Base):
        connections = 0

        def busy(self) -> int:
            return self.connections

    listener = Listener()
    listener.shared = True
    started = time.monotonic()
    assert listener.get_request() == "accepted"
    assert time.monotonic() - started < BUSY_ACCEPT_DELAY  # idle: at once
    listener.connections = 2
    started = time.monotonic()
    assert listener.get_request() == "accepted"
    assert time.monotonic() - started >= 2 * BUSY_ACCEPT_DELAY


def test_supervisor_says_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"cannot listen on 127.0.0.1:{port}"):
            call_command(
                "dicomserver", "--processes", "2", "--port", str(port), "--bind", "127.0.0.1"
            )


@pytest.mark.django_db(transaction=True)
def test_usable_database_keeps_a_working_connection_and_drops_a_broken_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import connection

    from core.dicom_server import usable_database

    connection.ensure_connection()
    working = connection.connection
    usable_database()
    assert connection.connection is working  # kept: no new connection per request
    connection.errors_occurred = True
    usable_database()
    assert connection.connection is working and not connection.errors_occurred
    # The server went away under it. (Not by closing the real connection: SQLite's test
    # database lives in memory and would go with it, for every later test of the worker.)
    closed: list[bool] = []
    monkeypatch.setattr(connection, "is_usable", lambda: False)
    monkeypatch.setattr(connection, "close", lambda: closed.append(True))
    connection.errors_occurred = True
    usable_database()
    assert closed == [True]
