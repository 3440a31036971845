"""How many HL7 messages a second the MLLP listener applies and acknowledges.

Starts `manage.py hl7server` on a free port against a scratch database, then sends
ADT^A04 + ORM^O01 pairs (a new patient and an order for them), first over one
connection waiting for each ACK, then over several connections at once, and prints
messages per second. Every ACK must be AA: the figure counts applied messages only.

    .venv/bin/python bench/hl7.py                      # SQLite in a temporary folder
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rispacs .venv/bin/python bench/hl7.py

With a PostgreSQL URL a fresh database is created on that server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from ris.hl7.mllp import FrameDecoder, encode_frame  # noqa: E402

LISTENING = re.compile(r"listening on (?P<host>\S+):(?P<port>\d+)")
PROCEDURE = "CTHEADWO"  # in ris/fixtures/procedures.csv


def adt(run: str, number: int) -> bytes:
    mrn = f"{run}{number:06d}"
    segments = [
        f"MSH|^~\\&|HIS|GENERAL HOSPITAL|RISPACS|RADIOLOGY|20250301083000||ADT^A04^ADT_A01|"
        f"A{mrn}|P|2.5.1",
        "EVN|A04|20250301083000",
        f"PID|1||{mrn}^^^HOSP^MR~N{mrn}^^^NATION^NI||BENCHPERSON^ALEX^J||19800101|F|||"
        "1 Main St^^Springfield^^12345||555-0100",
        "PV1|1|O|RAD^1",
    ]
    return ("\r".join(segments) + "\r").encode()


def orm(run: str, number: int) -> bytes:
    mrn = f"{run}{number:06d}"
    segments = [
        f"MSH|^~\\&|HIS|GENERAL HOSPITAL|RISPACS|RADIOLOGY|20250301083100||ORM^O01^ORM_O01|"
        f"O{mrn}|P|2.3",
        f"PID|1||{mrn}^^^HOSP^MR||BENCHPERSON^ALEX^J||19800101|F",
        "PV1|1|O|RAD^1",
        f"ORC|NW|P{mrn}|||||^^^20250302100000^^R||20250301083100|||1234^REFERRER^RITA",
        f"OBR|1|P{mrn}||{PROCEDURE}^CT head^L|||||||||Headache",
    ]
    return ("\r".join(segments) + "\r").encode()


def send_pairs(port: int, run: str, numbers: range) -> int:
    """Send an ADT and an ORM for each number, each after the ACK of the one before."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = FrameDecoder()
        for number in numbers:
            for content in (adt(run, number), orm(run, number)):
                sock.sendall(encode_frame(content))
                frames: list[bytes] = []
                while not frames:
                    data = sock.recv(65536)
                    if not data:
                        raise SystemExit("the listener closed the connection")
                    frames = decoder.feed(data)
                if b"MSA|AA|" not in frames[0]:
                    raise SystemExit(f"not accepted: {frames[0].decode(errors='replace')!r}")
                sent += 1
    return sent


def measure(port: int, pairs: int, connections: int) -> float:
    """Return messages per second for PAIRS pairs spread over CONNECTIONS connections."""
    run = uuid.uuid4().hex[:6].upper()
    share = -(-pairs // connections)
    ranges = [range(i * share, min((i + 1) * share, pairs)) for i in range(connections)]
    counts = [0] * connections
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            counts[index] = send_pairs(port, run, ranges[index])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"client failed: {errors[0]!r}")
    return sum(counts) / elapsed


@contextmanager
def scratch_database(url: str, folder: Path) -> Iterator[str]:
    """Yield a DATABASE_URL of an empty database: a new SQLite file, or a new PostgreSQL one."""
    if not url.startswith(("postgres://", "postgresql://")):
        yield f"sqlite:///{folder / 'bench.sqlite3'}"
        return
    import psycopg

    parts = urlsplit(url)
    name = f"bench_hl7_{uuid.uuid4().hex[:8]}"
    # The server's maintenance database: the one in the URL need not exist.
    admin_url = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def wait_for_port(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            match = LISTENING.search(seen.decode(errors="replace"))
            if match and seen.endswith(b"\n"):
                return int(match["port"])
    raise SystemExit(f"the listener did not start: {seen!r}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) process PID and its children use so far (Linux)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # itself, or a listener it runs
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def report(label: str, messages: int, rate: float, cpu: float) -> None:
    # CPU per message is what the listener itself costs, whatever else the machine runs.
    per_message = 1000 * cpu / messages
    print(
        f"{label}: {rate:.0f} msg/s; listener CPU {per_message:.1f} ms/msg "
        f"(at most {1000 / per_message:.0f} msg/s per core)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=500, help="ADT+ORM pairs per run (500)")
    parser.add_argument("--connections", type=int, default=4, help="for the second run (4)")
    parser.add_argument("--keep", action="store_true", help="print the scratch folder, keep it")
    parser.add_argument(
        "--processes", type=int, default=1, help="listener processes sharing the port (1)"
    )
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-hl7-"))
    with scratch_database(os.environ.get("DATABASE_URL", ""), folder) as database_url:
        # Production mode, as a department runs it (DEBUG logs and keeps every SQL query).
        env = {
            **common.archive_env(database_url, folder / "storage"),
            "CELERY_BROKER_URL": "",
            "PYTHONUNBUFFERED": "1",
        }
        engine = database_url.split(":", 1)[0]
        print(
            f"database: {engine} (scratch); CPUs: {os.cpu_count()}; "
            f"listener processes: {args.processes}"
        )
        manage(env, "migrate", "--noinput")
        manage(env, "import_procedures", str(ROOT / "ris" / "fixtures" / "procedures.csv"))
        log = (folder / "hl7server.log").open("wb")
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "hl7server",
                "--port",
                str(free_port() if args.processes > 1 else 0),
                "--processes",
                str(args.processes),
                "--bind",
                "127.0.0.1",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            port = wait_for_port(server)
            measure(port, 20, 1)  # warm up: imports, connections, caches
            messages = 2 * args.pairs
            before = cpu_seconds(server.pid)
            single = measure(port, args.pairs, 1)
            middle = cpu_seconds(server.pid)
            label = f"1 connection, {messages} messages, each after the ACK of the last"
            report(label, messages, single, middle - before)
            several = measure(port, args.pairs, args.connections)
            label = f"{args.connections} connections, {messages} messages"
            report(label, messages, several, cpu_seconds(server.pid) - middle)
            print(f"load average: {os.getloadavg()[0]:.1f} (other processes share the CPUs)")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            log.close()
    if args.keep:
        print(f"scratch folder: {folder}")


if __name__ == "__main__":
    main()
