from __future__ import annotations

from django.apps import AppConfig


class PacsConfig(AppConfig):
    name = "pacs"
    verbose_name = "PACS: the image archive"

    def ready(self) -> None:
        from pacs import receivers  # noqa: F401  (connects to ris's signals)
