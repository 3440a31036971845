"""The one DICOM application entity of the archive, and how it starts and stops.

The services it offers (echo, store, find, ...) are plugged in through
settings.DICOM_SERVICES: dotted paths of functions that take the AE, add their
presentation contexts to it and return their event handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.utils.module_loading import import_string
from pydicom.dataset import Dataset
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from core import audit, dicom_codec
from core.dicom_reactor import FastAssociationServer
from core.dicom_values import is_valid_ae_title
from core.listeners import (
    BeatStandIn,
    Writer,
    announce,
    format_address,
    settle_memory,
    stop_signals,
)

logger = logging.getLogger(__name__)

# The beat entries the DICOM listener runs itself when there is no broker: the archive's
# sweeps (storage commitment results not sent yet, stored headers due for a rewrite).
BEAT_TASK_PREFIXES = ("pacs.tasks.sweep_",)

EventHandler = tuple[Any, ...]
DicomService = Callable[[ApplicationEntity], list[EventHandler]]

# Seconds to wait for A-ASSOCIATE/A-RELEASE replies, for the next DIMSE message of an
# operation, and for any PDU at all before an idle association is aborted.
ACSE_TIMEOUT = 30.0
DIMSE_TIMEOUT = 60.0
NETWORK_TIMEOUT = 120.0
# Seconds to wait for the TCP connection when this AE is the requestor (C-MOVE, commitment).
CONNECTION_TIMEOUT = 15.0


class ArchiveAE(ApplicationEntity):
    """An AE that carries the event handlers of its services until it starts listening.

    A service may set `calling_ae_titles`: a function returning the calling AE titles
    allowed to associate (None: any). pynetdicom reads `require_calling_aet` for every
    association request and rejects the others (PS3.8 7.1.1.3, reason 3).
    """

    def __init__(self, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        self.evt_handlers: list[EventHandler] = []
        self.shared = False  # one of several processes accepting from the supervisor's socket
        self.calling_ae_titles: Callable[[], list[str] | None] | None = None

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        if self.calling_ae_titles is None:
            return self._require_calling_aet
        allowed = self.calling_ae_titles()
        if allowed is None:
            return []  # pynetdicom: an empty list accepts any calling AE title
        # A title no peer can send keeps the list non-empty, so that no node known means none.
        return [*allowed, "\\"]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        ApplicationEntity.require_calling_aet.fset(self, ae_titles)  # type: ignore[attr-defined]

    def make_server(self, address: Any, *args: Any, **kwargs: Any) -> Any:
        """Serve with core.dicom_reactor's waking loops and core.dicom_codec's writer,
        unless DICOM_TUNED_TRANSPORT is off."""
        if settings.DICOM_TUNED_TRANSPORT:
            dicom_codec.install()
            kwargs["server_class"] = _SharedServer if self.shared else FastAssociationServer
        return super().make_server(address, *args, **kwargs)


class _SharedServer(FastAssociationServer):
    shared = True


def validate_ae_title(value: str) -> str:
    """Return VALUE stripped if it is a valid AE title (PS3.5 6.2), else raise ValueError."""
    if not is_valid_ae_title(value):
        raise ValueError(
            f"an AE title is 1-16 printable ASCII characters without a backslash, got {value!r}"
        )
    return value.strip()


# PS3.7 C.4: Error Comment (0000,0902) is an LO, 64 characters at most.
ERROR_COMMENT_LENGTH = 64


def calling(event: Event) -> tuple[str, str]:
    """The calling AE title of EVENT's association, and its peer's address."""
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), f"{requestor.address}:{requestor.port}"


def status_dataset(code: int, comment: str = "", *, tags: tuple[int, ...] = ()) -> Dataset:
    """A DIMSE status with an ErrorComment and the offending elements, when given."""
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:ERROR_COMMENT_LENGTH]
    if tags:
        status.OffendingElement = list(tags)
    return status


def usable_database() -> None:
    """Before serving a request: drop this thread's database connections that broke (an
    error on them, and they no longer answer), keep the working ones. Django's
    close_old_connections closes every one when connections are pooled (CONN_MAX_AGE 0):
    a new connection for each request cost milliseconds of every MWL query."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is None or not connection.errors_occurred:
            continue
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            connection.close()


def _release_database(event: Event) -> None:
    """The association's thread ends: its audit events are committed, and its database
    connection goes back (to the pool)."""
    audit.write_held()
    connections.close_all()


def _peer(event: Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.ae_title}@{requestor.address}:{requestor.port}"


def _log_accepted(event: Event) -> None:
    logger.info("association accepted from %s", _peer(event))


def _log_released(event: Event) -> None:
    logger.info("association released by %s", _peer(event))


def _log_aborted(event: Event) -> None:
    logger.warning("association with %s aborted", _peer(event))


def load_services(paths: list[str]) -> list[DicomService]:
    """Import the service functions named by dotted PATHS."""
    services: list[DicomService] = []
    for path in paths:
        try:
            services.append(import_string(path))
        except ImportError as exc:
            raise ImproperlyConfigured(f"DICOM_SERVICES: cannot import {path!r}: {exc}") from exc
    return services


def quiet_pynetdicom() -> None:
    """Skip pynetdicom's message logging unless its logger would print it.

    pynetdicom formats every PDU, DIMSE message and identifier for its log (decoding each
    C-FIND request and pretty-printing each response) whatever the log level: a third of
    an MWL query's CPU time. With DICOM_LOG_LEVEL at INFO or DEBUG it logs as before.
    """
    verbose = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if verbose else "none"
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = verbose
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = verbose


def build_ae(ae_title: str | None = None) -> ArchiveAE:
    """Build the AE with every service in settings.DICOM_SERVICES."""
    quiet_pynetdicom()
    ae = ArchiveAE(validate_ae_title(ae_title or settings.DICOM_AE_TITLE))
    ae.acse_timeout = ACSE_TIMEOUT
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.network_timeout = NETWORK_TIMEOUT
    ae.connection_timeout = CONNECTION_TIMEOUT
    # PS3.8 D.1: the largest P-DATA-TF PDU we accept, sent in A-ASSOCIATE-AC; 0: no limit.
    ae.maximum_pdu_size = settings.DICOM_MAX_PDU
    ae.maximum_associations = settings.DICOM_MAX_ASSOCIATIONS
    ae.evt_handlers = [
        (evt.EVT_ACCEPTED, _log_accepted),
        (evt.EVT_RELEASED, _log_released),
        (evt.EVT_ABORTED, _log_aborted),
        # Each association runs on a thread of its own, which opens its own connection.
        (evt.EVT_RELEASED, _release_database),
        (evt.EVT_ABORTED, _release_database),
        (evt.EVT_REJECTED, _release_database),
    ]
    routes: dict[Any, dict[str, Callable[[Event], Any]]] = {}
    for service in load_services(list(settings.DICOM_SERVICES)):
        before = {str(context.abstract_syntax) for context in ae.supported_contexts}
        handlers = service(ae)
        added = {str(context.abstract_syntax) for context in ae.supported_contexts} - before
        for handler in handlers:
            event = handler[0]
            if event.is_intervention:
                # pynetdicom binds one handler per intervention event (C-FIND, N-ACTION ...):
                # several services sharing one are routed by the SOP class they added.
                route_to: Callable[[Event], Any] = handler[1]
                routes.setdefault(event, {}).update(dict.fromkeys(added, route_to))
            else:
                ae.evt_handlers.append(handler)
    for event, by_sop_class in routes.items():
        ae.evt_handlers.append((event, _router(event, by_sop_class)))
    if not ae.supported_contexts:
        raise ImproperlyConfigured("DICOM_SERVICES added no presentation contexts")
    return ae


def _router(event: Any, by_sop_class: dict[str, Callable[[Event], Any]]) -> Callable[[Event], Any]:
    handlers = set(by_sop_class.values())
    if len(handlers) == 1:
        return handlers.pop()

    def route(request: Event) -> Any:
        return by_sop_class[str(request.context.abstract_syntax)](request)

    route.__name__ = f"route_{event.name}"
    return route


def _listen(
    ae: ArchiveAE, address: str, port: int, stdout: Writer | None
) -> ThreadedAssociationServer:
    server = ae.start_server((address, port), block=False, evt_handlers=ae.evt_handlers)
    assert server is not None  # start_server(block=False) always returns the server
    host, bound_port = server.server_address[:2]
    announce(
        f"DICOM listening on {format_address(str(host), int(bound_port))} as {ae.ae_title}", stdout
    )
    return server


def start(
    ae: ArchiveAE,
    address: str,
    port: int,
    *,
    block: bool = True,
    stdout: Writer | None = None,
    sweep: bool = False,
) -> ThreadedAssociationServer:
    """Listen on ADDRESS:PORT (0: any free port); with BLOCK, serve until SIGTERM or SIGINT.

    With SWEEP, also run the archive's beat entries (commitment reports, header rewrites)
    for set-ups without beat.
    """
    if not block:
        return _listen(ae, address, port, stdout)
    sweeper = BeatStandIn(BEAT_TASK_PREFIXES) if sweep else None
    settle_memory()
    # The handlers go in before the port opens: a peer that sees the port may stop us.
    with stop_signals() as stop:
        server = _listen(ae, address, port, stdout)
        if sweeper is not None:
            sweeper.start()
        try:
            stop.wait()
        finally:
            # Aborts the associations still open and closes the listening socket.
            ae.shutdown()
            if sweeper is not None:
                sweeper.stop()
    return server
