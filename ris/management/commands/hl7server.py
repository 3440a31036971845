from __future__ import annotations

import argparse
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.listeners import supervise
from ris.hl7.server import BEAT_TASK_PREFIXES, READ_TIMEOUT, start


class Command(BaseCommand):
    help = "Run the HL7 v2 MLLP listener."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port", type=int, default=None, help="TCP port (default HL7_PORT; 0: any free port)"
        )
        parser.add_argument("--bind", default=None, help="address (default HL7_BIND_ADDRESS)")
        parser.add_argument(
            "--read-timeout",
            type=float,
            default=READ_TIMEOUT,
            help=f"seconds a silent connection stays open (default {READ_TIMEOUT:g})",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="listener processes sharing the port (default HL7_PROCESSES; 1 with --port 0)",
        )
        parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        port = settings.HL7_PORT if options["port"] is None else options["port"]
        if not 0 <= port <= 65535:
            raise CommandError(f"--port must be between 0 and 65535, got {port}")
        if options["read_timeout"] <= 0:
            raise CommandError("--read-timeout must be positive")
        address = options["bind"] or settings.HL7_BIND_ADDRESS
        processes = options["processes"] or settings.HL7_PROCESSES
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if processes > 1 and port != 0 and not options["worker"]:
            command = [sys.executable, sys.argv[0], "hl7server", "--worker", "--port", str(port)]
            command += ["--bind", address, "--read-timeout", str(options["read_timeout"])]
            supervise(
                command,
                processes,
                address=address,
                port=port,
                label="HL7",
                announce_line=f"HL7 supervisor: {processes} processes on {address}:{port}",
                stdout=self.stdout,
                stderr=self.stderr,
                beat_prefixes=BEAT_TASK_PREFIXES,
            )
            self.stdout.write("HL7 listener stopped")
            return
        try:
            start(
                address,
                port,
                block=True,
                read_timeout=options["read_timeout"],
                stdout=self.stdout,
                # No broker, no beat: the listener (one per machine) sends what the outbox holds.
                sweep=settings.CELERY_TASK_ALWAYS_EAGER and not options["worker"],
                shared=options["worker"],
            )
        except OSError as exc:
            raise CommandError(f"cannot listen on {address}:{port}: {exc}") from exc
        self.stdout.write("HL7 listener stopped")
