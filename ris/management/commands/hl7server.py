from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ris.hl7.server import READ_TIMEOUT, start


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

    def handle(self, *args: Any, **options: Any) -> None:
        port = settings.HL7_PORT if options["port"] is None else options["port"]
        if not 0 <= port <= 65535:
            raise CommandError(f"--port must be between 0 and 65535, got {port}")
        if options["read_timeout"] <= 0:
            raise CommandError("--read-timeout must be positive")
        address = options["bind"] or settings.HL7_BIND_ADDRESS
        try:
            start(
                address,
                port,
                block=True,
                read_timeout=options["read_timeout"],
                stdout=self.stdout,
                # No broker, no beat: the listener sends what the outbox holds.
                sweep=settings.CELERY_TASK_ALWAYS_EAGER,
            )
        except OSError as exc:
            raise CommandError(f"cannot listen on {address}:{port}: {exc}") from exc
        self.stdout.write("HL7 listener stopped")
