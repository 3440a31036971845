from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from reporting.services import load_default_templates


class Command(BaseCommand):
    help = "Add the default report template of each modality that has none yet. Safe to rerun."

    def handle(self, *args: Any, **options: Any) -> None:
        added = load_default_templates()
        self.stdout.write(f"{added} default report template(s) added.")
