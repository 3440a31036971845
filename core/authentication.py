"""How API clients (DICOMweb, the REST API) prove who they are, besides Basic and the session.

A token in "Authorization: Bearer <key>" (what DICOMweb clients and OHIF send) or DRF's own
"Authorization: Token <key>". A token costs one indexed lookup, where HTTP Basic runs the
password hash (PBKDF2, a few hundred milliseconds) on every request. Tokens are made and
renewed with `manage.py drf_create_token USERNAME [-r]`, or in the admin.
"""

from __future__ import annotations

from rest_framework.authentication import TokenAuthentication


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"
