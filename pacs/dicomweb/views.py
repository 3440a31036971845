"""DICOMweb endpoints (PS3.18): thin views over pacs.dicomweb's modules.

Authentication is DRF's (HTTP Basic, then the browser session): an anonymous client gets
401 with WWW-Authenticate. Reading needs what the study browser needs
(`pacs.selectors.may_browse_studies`) and sees only `studies_visible_to`; a study out of
sight answers 404 like one that does not exist, and the refusal is audited. Storing
(STOW-RS) is for technologists and administrators, who load images from outside media.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from django.conf import settings
from django.db.models import QuerySet
from django.http import Http404, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.urls import reverse
from pydicom import dcmread
from pydicom.tag import Tag
from rest_framework.exceptions import PermissionDenied
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from core import audit, roles
from pacs import selectors
from pacs.dicomweb import dicom_json, multipart, qido, stow, wado
from pacs.models import Instance, Study
from pacs.selectors import IMAGE, SERIES, STUDY
from pacs.storage import default_storage

logger = logging.getLogger(__name__)

DICOM_JSON = dicom_json.MEDIA_TYPE
STORING_ROLES = (roles.TECHNOLOGIST, roles.ADMINISTRATOR)


class _AnyAccept(BaseContentNegotiation):
    """DICOMweb media types are chosen by the views; DRF renders only its own error bodies."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        return renderers[0], renderers[0].media_type


def _text(status: int, message: str) -> HttpResponse:
    return HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")


def _base(request: Request) -> str:
    return request.build_absolute_uri(reverse("dicomweb:studies"))


def _retrieve_url(base: str, study: str, series: str | None = None, sop: str | None = None) -> str:
    url = f"{base}/{study}"
    if series:
        url += f"/series/{series}"
    if sop:
        url += f"/instances/{sop}"
    return url


class DicomWebView(APIView):
    permission_classes = [IsAuthenticated]
    content_negotiation_class = _AnyAccept
    renderer_classes = [JSONRenderer]
    parser_classes: list[Any] = []

    def finalize_response(
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        response = super().finalize_response(request, response, *args, **kwargs)
        origin = request.META.get("HTTP_ORIGIN", "")
        if origin and origin in settings.DICOMWEB_CORS_ORIGINS:
            response["Access-Control-Allow-Origin"] = origin
            response["Access-Control-Allow-Credentials"] = "true"
            response["Access-Control-Expose-Headers"] = "Content-Type, Content-Location, Warning"
            response["Vary"] = "Origin"
        return response

    def options(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
        # A CORS preflight carries no credentials (Fetch standard): answered without them.
        response = HttpResponse(status=204)
        origin = request.META.get("HTTP_ORIGIN", "")
        if origin and origin in settings.DICOMWEB_CORS_ORIGINS:
            response["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept"
            response["Access-Control-Max-Age"] = "600"
        response["Allow"] = "GET, POST, OPTIONS"
        return response

    def check_permissions(self, request: Request) -> None:
        if request.method == "OPTIONS":
            return
        super().check_permissions(request)

    def visible(self, request: Request) -> QuerySet[Study]:
        """The studies this person may read; refuse (403, audited) one who may read none."""
        if not selectors.may_browse_studies(request.user):
            self.refuse(request, "read images")
        return selectors.studies_visible_to(request.user)

    def refuse(self, request: Request, what: str) -> NoReturn:
        audit.record(
            audit.Action.DENIED,
            request=request,
            channel=audit.Channel.API,
            outcome=audit.Outcome.FAILURE,
            object_type="pacs.study",
            detail=f"DICOMweb: {what}",
        )
        raise PermissionDenied(f"You may not {what}.")


def _not_found(request: Request, selection: wado.Selection) -> Http404:
    """404 for SELECTION, the refusal audited when it exists but is out of sight."""
    denied = wado.exists(selection)
    if denied is not None:
        audit.record(
            audit.Action.DENIED,
            denied,
            request=request,
            channel=audit.Channel.API,
            outcome=audit.Outcome.FAILURE,
        )
    return Http404("No such study, series or instance.")


class SearchView(DicomWebView):
    """QIDO-RS: studies, series or instances matching the query parameters (PS3.18 10.6)."""

    level = STUDY
    top = STUDY  # the highest level returned by default

    def get(
        self, request: Request, study: str | None = None, series: str | None = None
    ) -> HttpResponseBase:
        visible = self.visible(request)
        fixed = {"StudyInstanceUID": study} if study else {}
        if series:
            fixed["SeriesInstanceUID"] = series
        try:
            parsed = qido.parse_search(request.GET, self.level, fixed, top=self.top)
            base = _base(request)
            results, remaining = qido.search(
                parsed, visible, lambda records: _retrieve_url(base, *qido.uids(records))
            )
        except ValueError as exc:  # QidoError, and the C-FIND QueryError of a bad value
            return _text(400, f"Bad query: {exc}")
        audit.record(
            audit.Action.QUERY,
            request=request,
            channel=audit.Channel.API,
            object_type={STUDY: "pacs.study", SERIES: "pacs.series", IMAGE: "pacs.instance"}[
                self.level
            ],
            detail=f"QIDO-RS: {len(results)} result(s); {request.GET.urlencode()}"[:2000],
        )
        response = HttpResponse(
            b"".join(dicom_json.dumps(results)),
            content_type=DICOM_JSON,
        )
        warnings = []
        if remaining:  # PS3.18 8.3.4.4.1
            warnings.append(f"There are {remaining} additional results that can be requested")
        if parsed.fuzzy_asked:  # PS3.18 8.3.4.2
            warnings.append(
                "The fuzzymatching parameter is not supported. "
                "Only literal matching has been performed."
            )
        if parsed.unsupported:  # universal matching instead; see qido.parse_search
            warnings.append(
                "The following attributes are not supported for matching: "
                + ", ".join(parsed.unsupported)
            )
        if warnings:
            # PS3.18 gives each as "299 <service>: <text>", <service> the origin server's base
            # URI; several go in one field, separated by commas (RFC 7234 5.5).
            service = base.removesuffix("/studies")
            response["Warning"] = ", ".join(f"299 {service}: {text}" for text in warnings)
        return response


class StudySearchView(SearchView):
    """QIDO-RS on /studies; STOW-RS on POST."""

    def post(self, request: Request, study: str | None = None) -> HttpResponseBase:
        return _store(self, request, study)


def _store(view: DicomWebView, request: Request, study: str | None) -> HttpResponseBase:
    """STOW-RS (PS3.18 10.5): store every part; report what was stored and what failed."""
    if not any(roles.has_role(request.user, role) for role in STORING_ROLES):
        view.refuse(request, "store images")
    content_type = multipart.parse_media_type(request.META.get("CONTENT_TYPE", ""))
    inner = content_type.parameters.get("type", stow.DICOM)
    if content_type.type != "multipart/related" or inner != stow.DICOM:
        return _text(415, 'Send multipart/related; type="application/dicom".')
    outcome = stow.store_parts(
        multipart.read_parts(request._request.read, content_type.parameters.get("boundary", "")),
        study_instance_uid=study,
        source_address=audit.client_address(request),
    )
    if outcome.body_error and not outcome.stored:
        return _text(400, f"Bad multipart body: {outcome.body_error}")
    for stored_study in Study.objects.filter(pk__in=outcome.study_ids).select_related("patient"):
        count = sum(1 for item in outcome.stored if item[2] == stored_study.study_instance_uid)
        audit.record(
            audit.Action.CREATE,
            stored_study,
            request=request,
            channel=audit.Channel.API,
            detail=f"STOW-RS: {count} instance(s) stored",
        )
    if outcome.failed:
        audit.record(
            audit.Action.CREATE,
            request=request,
            channel=audit.Channel.API,
            outcome=audit.Outcome.FAILURE,
            object_type="pacs.instance",
            detail="STOW-RS failed: "
            + "; ".join(f"{sop or '?'}: {why}" for _, sop, _, why in outcome.failed)[:2000],
        )
    if not outcome.stored and not outcome.failed:
        return _text(400, "The body holds no part.")
    base = _base(request)
    body = stow.response_dataset(
        outcome, retrieve_url=lambda *uids: _retrieve_url(base, *uids), study=study
    )
    status = 200 if not outcome.failed else 202 if outcome.stored else 409
    return HttpResponse(dicom_json.dumps_one(body), status=status, content_type=DICOM_JSON)


class RetrieveView(DicomWebView):
    """WADO-RS: a study, series or instance as multipart/related application/dicom."""

    def get(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> HttpResponseBase:
        visible = self.visible(request)
        selection = wado.Selection(study, series, instance)
        try:
            wanted = wado.dicom_syntaxes(
                multipart.split_accept(request.META.get("HTTP_ACCEPT", ""))
            )
        except wado.NotAcceptable as exc:
            return _text(406, str(exc))
        instances = wado.selected_instances(selection, visible)
        if not instances:
            raise _not_found(request, selection)
        storage = default_storage()
        missing = [i for i in instances if not storage.exists(i.file_path)]
        if missing:
            logger.error("WADO-RS %s: %d stored file(s) missing", study, len(missing))
            return _text(500, f"{len(missing)} of these files are missing from the archive.")
        # Each instance in the first syntax asked for that it can be sent in (PS3.18 8.7.8.2
        # note 1: parts may differ), all decided before the first byte goes out.
        plan = [(i, wado.sent_syntax(i, wanted)) for i in instances]
        refused = [i for i, syntax in plan if syntax is None]
        if refused:
            return _text(406, _unsendable(refused, len(instances)))
        _audit_retrieval(request, instances, "WADO-RS")
        boundary = multipart.new_boundary()
        parts = (wado.instance_part(i, syntax, storage) for i, syntax in plan if syntax)
        response = StreamingHttpResponse(
            multipart.stream_parts(parts, boundary),
            content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        )
        response["Cache-Control"] = "private, no-store"
        return response


def _unsendable(refused: list[Instance], total: int) -> str:
    """A 406's text: which instances cannot be sent as asked, and what they can be sent as."""
    first = refused[0]
    offered = ", ".join(wado.offered_syntaxes(first)) or "none"
    return (
        f"{len(refused)} of {total} instance(s) cannot be sent in the transfer syntax asked for; "
        f"{first.sop_instance_uid} is stored as {first.transfer_syntax_uid} and can be sent as "
        f"{offered}, or as stored with transfer-syntax=*."
    )


def _audit_retrieval(request: Request, instances: list[Instance], how: str) -> None:
    study = instances[0].series.study
    audit.record(
        audit.Action.EXPORT,
        study,
        request=request,
        channel=audit.Channel.API,
        detail=f"{how}: {len(instances)} instance(s)",
    )


class StudyView(RetrieveView):
    """WADO-RS of a study; STOW-RS on POST, refusing instances of other studies."""

    def post(self, request: Request, study: str) -> HttpResponseBase:
        return _store(self, request, study)


class MetadataView(DicomWebView):
    """WADO-RS metadata: DICOM JSON of the stored files, large values by BulkDataURI."""

    def get(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> HttpResponseBase:
        visible = self.visible(request)
        selection = wado.Selection(study, series, instance)
        instances = wado.selected_instances(selection, visible)
        if not instances:
            raise _not_found(request, selection)
        audit.record(
            audit.Action.VIEW,
            instances[0].series.study,
            request=request,
            channel=audit.Channel.API,
            detail=f"WADO-RS metadata: {len(instances)} instance(s)",
        )
        base = _base(request)
        storage = default_storage()

        def metadata(item: Instance) -> dict[str, Any]:
            location = _retrieve_url(
                base, study, item.series.series_instance_uid, item.sop_instance_uid
            )
            return dicom_json.file_metadata(
                storage.path(item.file_path),
                lambda tag: f"{location}/bulkdata/{dicom_json.tag_hex(tag)}",
                has_pixels=item.rows is not None,
            )

        response = StreamingHttpResponse(
            dicom_json.dumps(metadata(item) for item in instances), content_type=DICOM_JSON
        )
        response["Cache-Control"] = "private, no-store"
        return response


class BulkDataView(DicomWebView):
    """WADO-RS bulk data: one top-level value of an instance, as application/octet-stream."""

    def get(
        self, request: Request, study: str, series: str, instance: str, tag: str
    ) -> HttpResponseBase:
        visible = self.visible(request)
        selection = wado.Selection(study, series, instance)
        try:
            element_tag = Tag(int(tag, 16))
        except ValueError:
            return _text(400, f"Not a tag: {tag[:20]!r}")
        instances = wado.selected_instances(selection, visible)
        if not instances:
            raise _not_found(request, selection)
        dataset = dcmread(default_storage().path(instances[0].file_path))
        if element_tag not in dataset:
            raise Http404("The instance has no such attribute.")
        if element_tag == dicom_json.PIXEL_DATA and (
            dataset.file_meta.TransferSyntaxUID.is_compressed
        ):
            dataset.decompress(as_rgb=True)  # as the metadata says
        value = dataset[element_tag].value
        if not isinstance(value, bytes):
            return _text(400, f"{tag} is not a bulk data attribute.")
        _audit_retrieval(request, instances, f"WADO-RS bulk data {tag}")
        boundary = multipart.new_boundary()
        # PS3.18 B.10: the part names the bulk data URI it answers in Content-Location.
        part = {"Content-Type": "application/octet-stream", "Content-Location": request.path}
        body = b"".join(multipart.stream_parts([(part, [value])], boundary))
        return HttpResponse(
            body,
            content_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}',
        )


class FramesView(DicomWebView):
    """WADO-RS frames: uncompressed pixel data of the frames asked for (PS3.18 10.4.1.1.4)."""

    def get(
        self, request: Request, study: str, series: str, instance: str, frames: str
    ) -> HttpResponseBase:
        visible = self.visible(request)
        selection = wado.Selection(study, series, instance)
        instances = wado.selected_instances(selection, visible)
        if not instances:
            raise _not_found(request, selection)
        try:
            numbers = wado.frame_numbers(frames)
            accept = multipart.split_accept(request.META.get("HTTP_ACCEPT", ""))
            found = wado.frame_parts(instances[0], numbers, accept, default_storage())
        except wado.FrameError as exc:
            return _text(400, str(exc))
        except wado.NotAcceptable as exc:
            return _text(406, str(exc))
        _audit_retrieval(request, instances, f"WADO-RS frames {frames}"[:200])
        location = wado.instance_location(instances[0])
        boundary = multipart.new_boundary()
        body = b"".join(
            multipart.stream_parts(
                [
                    (
                        {
                            "Content-Type": content_type,
                            "Content-Location": f"{location}/frames/{number}",
                        },
                        [value],
                    )
                    for number, (content_type, value) in zip(numbers, found, strict=True)
                ],
                boundary,
            )
        )
        part_type = found[0][0].split(";")[0]  # every part is in the same syntax
        return HttpResponse(
            body, content_type=f'multipart/related; type="{part_type}"; boundary={boundary}'
        )


class WadoUriView(DicomWebView):
    """WADO-URI (PS3.18 9): one instance, ?requestType=WADO&studyUID&seriesUID&objectUID."""

    def get(self, request: Request) -> HttpResponseBase:
        params = request.GET
        if params.get("requestType") != "WADO":
            return _text(400, "requestType must be WADO.")
        missing = [name for name in ("studyUID", "seriesUID", "objectUID") if not params.get(name)]
        if missing:
            return _text(400, f"Missing: {', '.join(missing)}.")
        if params.get("contentType", "image/jpeg") != "application/dicom":
            return _text(406, "Only contentType=application/dicom is offered.")
        visible = self.visible(request)
        selection = wado.Selection(params["studyUID"], params["seriesUID"], params["objectUID"])
        instances = wado.selected_instances(selection, visible)
        if not instances:
            raise _not_found(request, selection)
        # PS3.18 9.4.2.4: no transferSyntax, Explicit VR Little Endian (with 8.7.3's exceptions).
        syntax = wado.sent_syntax(
            instances[0], [params.get("transferSyntax") or wado.DEFAULT_SYNTAX]
        )
        if syntax is None:
            return _text(406, _unsendable(instances, 1))
        storage = default_storage()
        if not storage.exists(instances[0].file_path):
            return _text(500, "The file is missing from the archive.")
        _audit_retrieval(request, instances, "WADO-URI")
        _headers, body = wado.instance_part(instances[0], syntax, storage)
        response = StreamingHttpResponse(body, content_type="application/dicom")
        response["Cache-Control"] = "private, no-store"
        return response
