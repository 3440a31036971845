from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from core.services import sync_roles


class Command(BaseCommand):
    help = "Create the role groups (front desk, technologist, ...) with their model permissions."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            counts = sync_roles()
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        for name, count in counts.items():
            self.stdout.write(f"{name}: {count} permission(s)")
