from __future__ import annotations

from django.apps import AppConfig


class HL7Config(AppConfig):
    name = "ris.hl7"
    label = "hl7"
    verbose_name = "HL7 v2 interface: messages in and out, destinations"

    def ready(self) -> None:
        import ris.hl7.receivers  # noqa: F401  (connects to ris's signals)
