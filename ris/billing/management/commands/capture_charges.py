"""Capture the charges of completed exams that have none (no exam without a charge)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ris.billing import selectors, services


class Command(BaseCommand):
    help = "Create the missing charges of completed exams; --dry-run only lists them."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--dry-run", action="store_true", help="list, change nothing")

    def handle(self, *args: Any, dry_run: bool = False, **options: Any) -> None:
        if dry_run:
            for requested in selectors.exams_without_charge():
                order = requested.order
                self.stdout.write(
                    f"{order.accession_number} {requested.procedure_type.code} {order.patient}"
                )
            return
        created = services.capture_missing_charges()
        for charge in created:
            self.stdout.write(f"captured: {charge}")
        self.stdout.write(f"{len(created)} charge(s) captured")
