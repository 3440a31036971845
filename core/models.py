"""Cross-cutting data: the audit trail and the worker heartbeat."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """One access to or change of patient data, or a security event. Written only by core.audit."""

    class Action(models.TextChoices):
        VIEW = "view", "View"
        QUERY = "query", "Query"
        CREATE = "create", "Create"
        UPDATE = "update", "Update"
        DELETE = "delete", "Delete"
        EXPORT = "export", "Export"
        LOGIN = "login", "Log in"
        LOGOUT = "logout", "Log out"
        LOGIN_FAILED = "login_failed", "Failed log in"
        ASSOCIATION = "association", "DICOM association"
        DENIED = "denied", "Access denied"

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILURE = "failure", "Failure"

    class Channel(models.TextChoices):
        WEB = "web", "Web"
        API = "api", "REST API"
        DICOM = "dicom", "DICOM"
        HL7 = "hl7", "HL7"
        SYSTEM = "system", "System"

    # When it happened: given by core.audit (an association's row may be written later).
    occurred_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who acted, as text: the username, a calling AE title, an HL7 sending application.
    # Kept even when the user row is later removed.
    actor_name = models.CharField(max_length=150, blank=True, db_index=True)
    channel = models.CharField(max_length=10, choices=Channel.choices, default=Channel.WEB)
    source_address = models.CharField(max_length=255, blank=True)
    action = models.CharField(max_length=20, choices=Action.choices, db_index=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    object_type = models.CharField(max_length=100, blank=True, db_index=True)
    object_id = models.CharField(max_length=128, blank=True)
    object_repr = models.CharField(max_length=255, blank=True)
    # The patient the event concerns, when there is one: its primary key, for filtering.
    patient_key = models.CharField(max_length=64, blank=True, db_index=True)
    patient_repr = models.CharField(max_length=255, blank=True)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        when = f"{self.occurred_at:%Y-%m-%d %H:%M:%S}"
        return f"{when} {self.actor_name} {self.action} {self.object_repr}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError("audit events are never changed once written")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ValueError("audit events are never deleted")


class WorkerHeartbeat(models.Model):
    """When a Celery worker last ran the heartbeat task; the health endpoint reports it."""

    hostname = models.CharField(max_length=255, unique=True)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.hostname} at {self.seen_at:%Y-%m-%d %H:%M:%S}"
