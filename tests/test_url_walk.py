"""Every URL pattern refuses an anonymous visitor, except the login page and the health check."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

PUBLIC = {"/login/", "/health/", "/admin/login/"}


def _walk(patterns: list, prefix: str = "") -> Iterator[str]:  # type: ignore[type-arg]
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route


def _concrete(route: str) -> str:
    """Turn a route or regex into a path a client can request, with 1 for every parameter."""
    path = re.sub(r"\(\?P<format>[^)]*\)", "json", route)
    path = re.sub(r"\(\?P<\w+>[^)]*\)", "1", path)
    path = re.sub(r"<drf_format_suffix:\w+>", ".json", path)
    path = re.sub(r"<(?:int:)?\w+>", "1", path)
    path = re.sub(r"<(?:str|slug|path):\w+>", "x", path)
    path = path.replace("^", "").replace("$", "").replace("\\Z", "").replace("\\", "")
    path = re.sub(r"[?*+]", "", path)
    return "/" + path.lstrip("/")


ROUTES = sorted({_concrete(route) for route in _walk(get_resolver().url_patterns)})


def test_the_walk_covers_the_applications() -> None:
    assert len(ROUTES) > 40  # admin, api and every app's pages
    for expected in ("/ris/patients/1/", "/core/audit/", "/api/orders/", "/admin/ris/order/"):
        assert expected in ROUTES


@pytest.mark.django_db
@pytest.mark.parametrize("path", ROUTES)
def test_anonymous_is_refused(client, path: str) -> None:  # type: ignore[no-untyped-def]
    for method in (client.get, client.post):
        response = method(path)
        if path in PUBLIC:
            assert response.status_code in (200, 405), path
            continue
        if response.status_code in (301, 302):
            location = response["Location"]
            assert "/login/" in location, f"{path} redirects to {location}, not to the login page"
        else:
            assert response.status_code in (401, 403, 404, 405), (
                f"{path} answered {response.status_code}"
            )
            assert response.status_code != 404 or path.startswith("/static"), path
