"""Permission checks that combine role (model) permissions with per-object grants."""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest
from guardian.shortcuts import get_objects_for_user
from rest_framework.permissions import DjangoModelPermissions
from rest_framework.request import Request

M = TypeVar("M", bound=models.Model)


def can(user: Any, perm: str, obj: models.Model | None = None) -> bool:
    """Tell whether USER holds PERM, for the whole model (role) or for OBJ (guardian grant)."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.has_perm(perm):
        return True
    return obj is not None and user.has_perm(perm, obj)


def visible(user: Any, perm: str, queryset: models.QuerySet[M]) -> models.QuerySet[M]:
    """Narrow QUERYSET to the rows USER may see under PERM (all, with the model permission)."""
    if not user.is_authenticated or not user.is_active:
        return queryset.none()
    return get_objects_for_user(user, perm, klass=queryset, accept_global_perms=True)


class ModelViewPermission(DjangoModelPermissions):
    """DRF: reading needs the view permission too, not just a login."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        if getattr(view, "queryset", None) is None and not hasattr(view, "get_queryset"):
            return True  # a view over no model (the API root) needs only the login
        # Read access may come from object grants alone; the queryset is narrowed by `visible`.
        if request.method in ("GET", "HEAD", "OPTIONS") and getattr(view, "object_grants", False):
            return True
        return super().has_permission(request, view)


def acting_user(request: HttpRequest) -> User:
    """Return the logged-in person behind REQUEST (login is required everywhere but /login/)."""
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        raise PermissionDenied("Log in first.")
    return user
