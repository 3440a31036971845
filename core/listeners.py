"""What the network listeners (DICOM, HL7 MLLP) share: addresses, output, clean stops."""

from __future__ import annotations

import gc
import importlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Protocol

from django.conf import settings
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


def supervise(
    command: list[str],
    count: int,
    *,
    label: str,
    announce_line: str,
    stdout: Writer,
    stderr: Writer,
    beat_prefixes: tuple[str, ...] = (),
) -> None:
    """Run COUNT copies of COMMAND (listeners sharing one port with SO_REUSEPORT), start one
    again when it dies, stop them all on SIGTERM or SIGINT. Without a broker, this process
    (one per machine) runs the beat entries of BEAT_PREFIXES."""
    sweeper = (
        BeatStandIn(beat_prefixes) if beat_prefixes and settings.CELERY_TASK_ALWAYS_EAGER else None
    )
    with stop_signals() as stop:
        workers = [subprocess.Popen(command) for _ in range(count)]  # noqa: S603
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
                    workers[index] = subprocess.Popen(command)  # noqa: S603
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
        if sweeper is not None:
            sweeper.stop()
