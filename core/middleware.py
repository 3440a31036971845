"""Login required everywhere; the REST API answers 401/403 itself instead of redirecting."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.middleware import LoginRequiredMiddleware as _LoginRequired
from django.http import HttpRequest, HttpResponseBase
from rest_framework.views import APIView


class LoginRequiredMiddleware(_LoginRequired):
    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> HttpResponseBase | None:
        view_class = getattr(view_func, "cls", None)
        if isinstance(view_class, type) and issubclass(view_class, APIView):
            return None  # DRF authenticates (session, Basic) and refuses with 401/403
        return super().process_view(request, view_func, view_args, view_kwargs)
