"""Helpers for tests that talk to real listeners: wait on conditions, run manage.py."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

BASE_DIR = Path(__file__).resolve().parent.parent
DEADLINE = 20.0  # seconds; generous for a loaded CI machine, reached only on failure
LISTENING = re.compile(r"listening on (?P<host>\S+):(?P<port>\d+)")

T = TypeVar("T")


def wait_until(
    attempt: Callable[[], T | None], *, timeout: float = DEADLINE, what: str = "condition"
) -> T:
    """Call ATTEMPT until it returns something other than None (or raises no OSError)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = attempt()
        except OSError as exc:
            result, last_error = None, exc
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")
        time.sleep(0.05)  # a poll interval, not a wait for something to happen


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Return an environment for manage.py with its own SQLite file and storage under TMP_PATH."""
    env = dict(os.environ)
    env.update(
        VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        STORAGE_DIR=str(tmp_path / "storage"),
        PYTHONUNBUFFERED="1",
        # Tests of the listeners speak from throw-away AE titles; access control has its own.
        DICOM_ACCEPT_UNKNOWN_AE="1",
    )
    env.update(extra)
    return env


def read_line(
    proc: subprocess.Popen[str], pattern: re.Pattern[str], *, timeout: float = DEADLINE
) -> re.Match[str]:
    """Read PROC's stdout until a line matches PATTERN; fail at the deadline or on exit."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()  # read the pipe itself: a buffered reader would hide lines
    deadline = time.monotonic() + timeout
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
            # Only whole lines: a port number cut in two by the pipe would still match.
            for line in seen.decode(errors="replace").split("\n")[:-1]:
                match = pattern.search(line)
                if match:
                    return match
    raise AssertionError(f"no line matching {pattern.pattern!r} in output: {seen!r}")


@contextmanager
def manage_py(*args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Run `manage.py ARGS` as a child process; kill it if the test leaves it running."""
    proc = subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), *args],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=DEADLINE)


def stop(proc: subprocess.Popen[str], *, timeout: float = DEADLINE) -> tuple[int, str, str]:
    """Send SIGTERM to PROC and return its exit code, the rest of its stdout, and its stderr."""
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr
