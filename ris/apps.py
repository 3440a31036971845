from __future__ import annotations

from django.apps import AppConfig


class RisConfig(AppConfig):
    name = "ris"
    verbose_name = "RIS: patients, orders, scheduling"
