"""Log-ins, log-outs and failed log-ins go into the audit trail."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from core import audit


@receiver(user_logged_in)
def _logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    audit.record(audit.Action.LOGIN, request=request, actor=user)


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None:
        audit.record(audit.Action.LOGOUT, request=request, actor=user)


@receiver(user_login_failed)
def _login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
) -> None:
    audit.record(
        audit.Action.LOGIN_FAILED,
        request=request,
        actor_name=str(credentials.get("username", ""))[:150],
        outcome=audit.Outcome.FAILURE,
        channel=None if request is not None else audit.Channel.SYSTEM,
    )
