"""WADO-RS rendered and thumbnail endpoints (PS3.18 10.4.1.1.3, 10.4.1.1.4): thin views.

Authentication, permissions, audit and 404s are those of the other WADO-RS resources
(`pacs.dicomweb.views.DicomWebView`). A study or series thumbnail is the middle image of
its first series with pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from rest_framework.request import Request

from pacs.dicomweb import multipart, rendered, wado
from pacs.dicomweb.views import DicomWebView, _audit_retrieval, _not_found, _text
from pacs.models import Instance
from pacs.storage import default_storage

logger = logging.getLogger(__name__)


def _representative(instances: list[Instance]) -> Instance | None:
    """The middle image of the first series with pixel data among INSTANCES."""
    with_pixels = [item for item in instances if item.rows]
    if not with_pixels:
        return None
    first_series = with_pixels[0].series_id
    series = [item for item in with_pixels if item.series_id == first_series]
    return series[len(series) // 2]


# The most images one study or series rendering sends (PS3.18 10.4.1.1.3 allows a limit).
MAX_RENDERED_PARTS = 2000


def _rendered_parts(
    request: Request, instances: list[Instance], how: rendered.Rendering
) -> HttpResponseBase:
    """A study or series rendered: the first frame of each image, one part each, in order."""
    images = [item for item in instances if item.rows][:MAX_RENDERED_PARTS]
    if not images:
        return _text(404, "Nothing here has pixel data to render.")
    storage = default_storage()
    missing = [item for item in images if not storage.exists(item.file_path)]
    if missing:
        return _text(500, f"{len(missing)} of these files are missing from the archive.")
    _audit_retrieval(request, images, "WADO-RS rendered")

    def parts() -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        for item in images:
            location = f"{wado.instance_location(item)}/rendered"
            try:
                body = rendered.render_file(storage.path(item.file_path), 1, how)
            except rendered.RenderError as exc:  # one image that cannot be drawn: the others go
                logger.warning("%s not rendered: %s", location, exc)
                continue
            yield {"Content-Type": how.media_type, "Content-Location": location}, iter([body])

    boundary = multipart.new_boundary()
    response = StreamingHttpResponse(
        multipart.stream_parts(parts(), boundary),
        content_type=f'multipart/related; type="{how.media_type}"; boundary={boundary}',
    )
    response["Cache-Control"] = "private, no-store"
    return response


class RenderedView(DicomWebView):
    """An instance or one of its frames rendered as image/jpeg or image/png."""

    thumbnail = False

    def get(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        frames: str | None = None,
    ) -> HttpResponseBase:
        visible = self.visible(request)
        selection = wado.Selection(study, series, instance)
        try:
            how = rendered.parse_rendering(
                request.GET,
                multipart.split_accept(request.META.get("HTTP_ACCEPT", "")),
                thumbnail=self.thumbnail,
            )
            numbers = wado.frame_numbers(frames) if frames else [1]
        except rendered.UnacceptableMedia as exc:
            return _text(406, str(exc))
        except ValueError as exc:  # RenderError, FrameError
            return _text(400, str(exc))
        if len(numbers) != 1:
            return _text(400, "Render one frame at a time.")
        instances = wado.selected_instances(selection, visible)
        if not instances:
            raise _not_found(request, selection)
        if instance is None and not self.thumbnail:
            return _rendered_parts(request, instances, how)
        chosen = instances[0] if instance else _representative(instances)
        if chosen is None:
            return _text(404, "Nothing here has pixel data to render.")
        storage = default_storage()
        if not storage.exists(chosen.file_path):
            return _text(500, "The file is missing from the archive.")
        try:
            body = rendered.render_file(storage.path(chosen.file_path), numbers[0], how)
        except rendered.RenderError as exc:
            return _text(400, str(exc))
        kind = "thumbnail" if self.thumbnail else "rendered"
        _audit_retrieval(request, [chosen], f"WADO-RS {kind} frame {numbers[0]}")
        response = HttpResponse(body, content_type=how.media_type)
        response["Cache-Control"] = "private, no-store"
        return response


class ThumbnailView(RenderedView):
    """A small rendered image of a study, series, instance or frame."""

    thumbnail = True
