"""What the network listeners (DICOM, HL7 MLLP) share: addresses, output, clean stops."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Protocol

from django.conf import settings
from django.core.management.base import CommandError
from django.db import connections

logger = logging.getLogger(__name__)

# The signals that stop a blocking server cleanly: honcho and systemd send SIGTERM.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def format_address(host: str, port: int) -> str:
    """Return HOST:PORT, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Writer(Protocol):
    def write(self, text: str, /) -> Any: ...
    def flush(self) -> Any: ...


@contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """Within the block, SIGTERM and SIGINT set the yielded event instead of killing."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def wait_drained(work: queue.Queue[Any], timeout: float) -> bool:
    """Wait until every item put on WORK has been marked done; False after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    with work.all_tasks_done:
        while work.unfinished_tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            work.all_tasks_done.wait(remaining)
    return True


def settle_memory() -> None:
    """Before a listener serves: what start-up made (Django, the apps, pydicom's and hl7apy's
    dictionaries) lives as long as the process, so take it out of the cycle collector's
    sight; its full collections then pause every thread for far less."""
    gc.collect()
    gc.freeze()


def announce(line: str, stdout: Writer | None) -> None:
    """Log LINE and print it, flushed: scripts and tests wait for a listener's line."""
    logger.info("%s", line)
    out = stdout or sys.stdout
    out.write(line + "\n")
    out.flush()


class BeatStandIn(threading.Thread):
    """Without a broker there is no beat: run the beat entries whose task names start with
    one of PREFIXES here, each on its own schedule (the listener's app sweeps for itself).
    """

    def __init__(self, prefixes: tuple[str, ...], *, interval: float | None = None) -> None:
        super().__init__(name=f"beat-stand-in[{','.join(prefixes)}]", daemon=True)
        schedule: dict[str, dict[str, Any]] = settings.CELERY_BEAT_SCHEDULE
        self.entries = {
            str(entry["task"]): float(interval or entry["schedule"])
            for entry in schedule.values()
            if str(entry["task"]).startswith(prefixes)
        }
        self.stopped = threading.Event()

    def tasks(self) -> dict[str, Any]:
        """The Celery tasks of the entries: their modules imported here, since a listener
        process may not have imported them (Celery finds tasks lazily)."""
        from config.celery import app

        for name in self.entries:
            importlib.import_module(name.rsplit(".", 1)[0])
        return {name: app.tasks[name] for name in self.entries}

    def run(self) -> None:
        tasks = self.tasks()
        due = {task: time.monotonic() + every for task, every in self.entries.items()}
        while due and not self.stopped.wait(max(0.0, min(due.values()) - time.monotonic())):
            for task, at in due.items():
                if at > time.monotonic():
                    continue
                try:
                    tasks[task]()  # in this thread, as beat's worker would run it
                except Exception:  # keep sweeping: the next round may find the database back
                    logger.exception("%s failed", task)
                finally:
                    connections.close_all()
                due[task] = time.monotonic() + self.entries[task]

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=max(self.entries.values(), default=0) + 30)


# A worker process that dies is started again after this many seconds.
RESTART_DELAY = 1.0
# The supervisor's listening socket, as the file descriptor number its workers inherit.
LISTEN_FD_VARIABLE = "RISPACS_LISTEN_FD"
# A worker serving connections already waits this long per connection (up to four) before
# it accepts a new one, so that an idle sibling takes it first.
BUSY_ACCEPT_DELAY = 0.005


def listening_socket(address: str, port: int) -> socket.socket:
    """The supervisor's socket on ADDRESS:PORT, which every worker accepts from."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.create_server((address, port), family=family, backlog=128)


class SharedListener:
    """A socketserver mixin: with `shared` set, accept from the socket the supervisor made
    (inherited through LISTEN_FD_VARIABLE) rather than bind one's own.

    Every worker waits on the one socket and the kernel wakes them all; the first to accept
    gets the connection. A worker busy with connections (`busy()`) waits a little before it
    tries, so new connections go to idle workers: two modalities sending at once land on
    two processes, each with its own interpreter lock and core. (SO_REUSEPORT, used
    before, spread connections by a hash of their addresses: both often landed on one.)
    """

    shared = False
    adopted = False  # the socket is the supervisor's: already bound and listening
    socket: Any
    server_address: Any

    def busy(self) -> int:
        """How many connections this process serves now."""
        return 0

    def _inherited(self) -> socket.socket | None:
        fd = os.environ.get(LISTEN_FD_VARIABLE, "") if self.shared else ""
        return socket.socket(fileno=int(fd)) if fd.isdigit() else None

    def server_bind(self) -> None:
        inherited = self._inherited()
        if inherited is None:
            super().server_bind()  # type: ignore[misc]
            return
        self.socket.close()
        self.socket = inherited
        self.socket.setblocking(False)  # a sibling may take the connection first
        self.server_address = self.socket.getsockname()
        self.adopted = True

    def server_activate(self) -> None:
        if not self.adopted:
            super().server_activate()  # type: ignore[misc]

    def get_request(self) -> Any:
        if self.shared:
            waiting = min(self.busy(), 4)
            if waiting:
                time.sleep(waiting * BUSY_ACCEPT_DELAY)
        return super().get_request()  # type: ignore[misc]  # BlockingIOError: a sibling took it


def supervise(
    command: list[str],
    count: int,
    *,
    address: str,
    port: int,
    label: str,
    announce_line: str,
    stdout: Writer,
    stderr: Writer,
    beat_prefixes: tuple[str, ...] = (),
) -> None:
    """Listen on ADDRESS:PORT and run COUNT copies of COMMAND accepting from that socket
    (SharedListener); start one again when it dies, stop them all on SIGTERM or SIGINT.
    Without a broker, this process (one per machine) runs the beat entries of BEAT_PREFIXES.
    Raises CommandError when the port cannot be had."""
    sweeper = (
        BeatStandIn(beat_prefixes) if beat_prefixes and settings.CELERY_TASK_ALWAYS_EAGER else None
    )
    try:
        listener = listening_socket(address, port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {format_address(address, port)}: {exc}") from exc
    fd = listener.fileno()
    environment = {**os.environ, LISTEN_FD_VARIABLE: str(fd)}

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, pass_fds=(fd,), env=environment)  # noqa: S603

    with listener, stop_signals() as stop:
        workers = [spawn() for _ in range(count)]
        if sweeper is not None:
            sweeper.start()
        announce(announce_line, stdout)
        while not stop.wait(0.5):
            for index, worker in enumerate(workers):
                if worker.poll() is not None:
                    stderr.write(
                        f"{label} process {worker.pid} exited ({worker.returncode}); restarting\n"
                    )
                    time.sleep(RESTART_DELAY)
                    workers[index] = spawn()
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
        if sweeper is not None:
            sweeper.stop()
