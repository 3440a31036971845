"""What the network listeners (DICOM, HL7 MLLP) share: addresses, output, clean stops."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Protocol

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


def announce(line: str, stdout: Writer | None) -> None:
    """Log LINE and print it, flushed: scripts and tests wait for a listener's line."""
    logger.info("%s", line)
    out = stdout or sys.stdout
    out.write(line + "\n")
    out.flush()
