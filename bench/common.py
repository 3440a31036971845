"""What the bench scripts share: the archive under test in its own process, Orthanc beside it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ARCHIVE_AE = "RISPACS"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dcmtk(tool: str) -> str:
    """DCMTK's tool, not pynetdicom's console script of the same name in the venv."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        path = Path(folder, tool)
        if path.exists():
            return str(path)
    sys.exit(f"DCMTK's {tool} is missing: apt-get install dcmtk")


def orthanc_peer_module():  # type: ignore[no-untyped-def]
    """Import ../shared/bench/orthanc_peer.py (the peer the workplace provides)."""
    candidates = [os.environ.get("ORTHANC_PEER_DIR", ""), str(ROOT.parent / "shared" / "bench")]
    for folder in candidates:
        if folder and Path(folder, "orthanc_peer.py").exists():
            sys.path.insert(0, folder)
            import orthanc_peer  # type: ignore[import-not-found]

            return orthanc_peer
    sys.exit("orthanc_peer.py not found: set ORTHANC_PEER_DIR to ../shared/bench")


def scratch_database(name: str) -> str:
    """A fresh database: PostgreSQL when BENCH_DATABASE_URL names a server, else SQLite."""
    base = os.environ.get("BENCH_DATABASE_URL", "")
    if base.startswith("postgres"):
        admin = re.sub(r"/[^/]*$", "/postgres", base)
        # FORCE: a listener started by hand may still be connected to the last one.
        drop = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        for statement in (drop, f"CREATE DATABASE {name}"):
            subprocess.run(["psql", admin, "-qc", statement], check=True, capture_output=True)
        return re.sub(r"/[^/]*$", f"/{name}", base)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    return f"sqlite:///{folder / 'bench.sqlite3'}"


def archive_env(database_url: str, storage: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        STORAGE_DIR=str(storage),
        VAR_DIR=str(storage.parent / "var"),
        DICOM_ACCEPT_UNKNOWN_AE="1",
        DICOM_AE_TITLE=ARCHIVE_AE,
        TCP_NODELAY="1",
        LOG_LEVEL="WARNING",
        # Production mode, as a department runs it (DEBUG keeps every SQL query in memory).
        DEBUG="0",
        SECRET_KEY="bench-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz",  # noqa: S106
        ALLOWED_HOSTS="localhost",
        **extra,
    )
    return env


def migrate(env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)


def wait_echo(port: int, ae_title: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(
            [dcmtk("echoscu"), "-to", "2", "-aec", ae_title, "127.0.0.1", str(port)],
            capture_output=True,
        )
        if result.returncode == 0:
            return
        time.sleep(0.2)
    sys.exit(f"nothing answered C-ECHO on {port} as {ae_title}")


@contextlib.contextmanager
def running_archive(
    env: dict[str, str], port: int, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`manage.py dicomserver` on PORT until the block ends."""
    process = subprocess.Popen(
        [PYTHON, "manage.py", "dicomserver", "--port", str(port), "--bind", "127.0.0.1", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_echo(port, ARCHIVE_AE)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def cleanup(*folders: Path) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
