from __future__ import annotations

import argparse
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.dicom_server import BEAT_TASK_PREFIXES, build_ae, start, validate_ae_title
from core.listeners import supervise


class Command(BaseCommand):
    help = "Run the DICOM listener: one AE with every service in DICOM_SERVICES."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port", type=int, default=None, help="TCP port (default DICOM_PORT; 0: any free port)"
        )
        parser.add_argument("--ae-title", default=None, help="AE title (default DICOM_AE_TITLE)")
        parser.add_argument("--bind", default=None, help="address (default DICOM_BIND_ADDRESS)")
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="listener processes sharing the port (default DICOM_PROCESSES; 1 with --port 0)",
        )
        parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        port = settings.DICOM_PORT if options["port"] is None else options["port"]
        if not 0 <= port <= 65535:
            raise CommandError(f"--port must be between 0 and 65535, got {port}")
        try:
            ae_title = validate_ae_title(options["ae_title"] or settings.DICOM_AE_TITLE)
        except ValueError as exc:
            raise CommandError(f"--ae-title: {exc}") from exc
        address = options["bind"] or settings.DICOM_BIND_ADDRESS
        processes = options["processes"] or settings.DICOM_PROCESSES
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if processes > 1 and port != 0 and not options["worker"]:
            self._supervise(processes, address, port, ae_title)
            return
        ae = build_ae(ae_title)
        ae.shared = options["worker"]
        try:
            # No broker, no beat: the listener (one per machine) runs the archive's sweeps.
            sweep = settings.CELERY_TASK_ALWAYS_EAGER and not options["worker"]
            start(ae, address, port, block=True, stdout=self.stdout, sweep=sweep)
        except OSError as exc:
            raise CommandError(f"cannot listen on {address}:{port}: {exc}") from exc
        self.stdout.write("DICOM listener stopped")

    def _supervise(self, count: int, address: str, port: int, ae_title: str) -> None:
        """Run COUNT listener processes on one port, restart one that dies, stop all on a signal."""
        command = [
            sys.executable,
            sys.argv[0],
            "dicomserver",
            "--worker",
            "--port",
            str(port),
            "--bind",
            address,
            "--ae-title",
            ae_title,
        ]
        supervise(
            command,
            count,
            address=address,
            port=port,
            label="DICOM",
            announce_line=f"DICOM supervisor: {count} processes on {address}:{port}",
            stdout=self.stdout,
            stderr=self.stderr,
            beat_prefixes=BEAT_TASK_PREFIXES,
        )
        self.stdout.write("DICOM listener stopped")
