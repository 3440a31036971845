from __future__ import annotations

from django.apps import AppConfig


class ReportingConfig(AppConfig):
    name = "reporting"
    verbose_name = "Reporting"

    def ready(self) -> None:
        from reporting import receivers  # noqa: F401  (connects to pacs's signals)
