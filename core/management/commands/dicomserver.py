from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.dicom_server import build_ae, start, validate_ae_title


class Command(BaseCommand):
    help = "Run the DICOM listener: one AE with every service in DICOM_SERVICES."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port", type=int, default=None, help="TCP port (default DICOM_PORT; 0: any free port)"
        )
        parser.add_argument("--ae-title", default=None, help="AE title (default DICOM_AE_TITLE)")
        parser.add_argument("--bind", default=None, help="address (default DICOM_BIND_ADDRESS)")

    def handle(self, *args: Any, **options: Any) -> None:
        port = settings.DICOM_PORT if options["port"] is None else options["port"]
        if not 0 <= port <= 65535:
            raise CommandError(f"--port must be between 0 and 65535, got {port}")
        try:
            ae_title = validate_ae_title(options["ae_title"] or settings.DICOM_AE_TITLE)
        except ValueError as exc:
            raise CommandError(f"--ae-title: {exc}") from exc
        address = options["bind"] or settings.DICOM_BIND_ADDRESS
        ae = build_ae(ae_title)
        try:
            start(ae, address, port, block=True, stdout=self.stdout)
        except OSError as exc:
            raise CommandError(f"cannot listen on {address}:{port}: {exc}") from exc
        self.stdout.write("DICOM listener stopped")
