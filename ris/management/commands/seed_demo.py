from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ris.demo import DEMO_USERS, DemoRefused, seed_demo


class Command(BaseCommand):
    help = (
        "Load demo data: one login per role, the procedure catalogue, rooms, synthetic "
        "patients and today's orders. Safe to run again. Refused with DEBUG off unless --force."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force",
            action="store_true",
            help="run even with DEBUG off (creates logins with publicly known passwords)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            summary = seed_demo(force=options["force"])
        except DemoRefused as exc:
            raise CommandError(f"{exc}; pass --force if you really mean it") from exc
        except (LookupError, ValidationError) as exc:
            raise CommandError(f"demo data not loaded: {exc}") from exc
        if not summary.changed:
            self.stdout.write("Demo data is already there; nothing changed.")
            return
        self.stdout.write(str(summary))
        self.stdout.write("Demo logins (username / password):")
        for user in DEMO_USERS:
            self.stdout.write(f"  {user.username:<12} {user.password:<18} {user.role}")
