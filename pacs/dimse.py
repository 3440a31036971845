"""DIMSE services of the archive: each adds its presentation contexts and returns its handlers.

Every function named in settings.DICOM_SERVICES takes the one AE, adds the SOP classes
it serves as supported presentation contexts, and returns the (event, handler) pairs
that core.dicom_server binds when the AE starts listening.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

logger = logging.getLogger(__name__)

EventHandler = tuple[Any, ...]

# PS3.7 C.1.1: the one Success status of every DIMSE service.
STATUS_SUCCESS = 0x0000


def handle_echo(event: Event) -> int:
    """Answer a C-ECHO request (PS3.4 A.4): the association works, nothing more."""
    return STATUS_SUCCESS


def verification_service(ae: ApplicationEntity) -> list[EventHandler]:
    """Offer the Verification SOP Class as SCP (PS3.4 Annex A)."""
    ae.add_supported_context(Verification)
    return [(evt.EVT_C_ECHO, handle_echo)]
