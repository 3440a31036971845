from __future__ import annotations

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "ris.billing"
    label = "billing"
    verbose_name = "Billing: charges captured from exams, insurance coverage"

    def ready(self) -> None:
        import ris.billing.receivers  # noqa: F401  (connects to ris's signals)
