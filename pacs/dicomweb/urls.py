"""DICOMweb under /dicomweb/ (PS3.18): QIDO-RS, WADO-RS, STOW-RS and WADO-URI."""

from __future__ import annotations

from django.urls import path

from pacs.dicomweb import rendered_views, views
from pacs.selectors import IMAGE, SERIES

app_name = "dicomweb"

_STUDY = "studies/<str:study>"
_SERIES = f"{_STUDY}/series/<str:series>"
_INSTANCE = f"{_SERIES}/instances/<str:instance>"

urlpatterns = [
    path("studies", views.StudySearchView.as_view(), name="studies"),
    path("series", views.SearchView.as_view(level=SERIES), name="series"),
    path("instances", views.SearchView.as_view(level=IMAGE), name="instances"),
    path(_STUDY, views.StudyView.as_view(), name="study"),
    path(f"{_STUDY}/metadata", views.MetadataView.as_view(), name="study-metadata"),
    path(
        f"{_STUDY}/series",
        views.SearchView.as_view(level=SERIES, top=SERIES),
        name="study-series",
    ),
    path(
        f"{_STUDY}/instances",
        views.SearchView.as_view(level=IMAGE, top=SERIES),
        name="study-instances",
    ),
    path(_SERIES, views.RetrieveView.as_view(), name="series-retrieve"),
    path(f"{_SERIES}/metadata", views.MetadataView.as_view(), name="series-metadata"),
    path(
        f"{_SERIES}/instances",
        views.SearchView.as_view(level=IMAGE, top=IMAGE),
        name="series-instances",
    ),
    path(_INSTANCE, views.RetrieveView.as_view(), name="instance"),
    path(f"{_INSTANCE}/metadata", views.MetadataView.as_view(), name="instance-metadata"),
    path(f"{_INSTANCE}/bulkdata/<str:tag>", views.BulkDataView.as_view(), name="bulkdata"),
    path(f"{_INSTANCE}/frames/<str:frames>", views.FramesView.as_view(), name="frames"),
    path("wado", views.WadoUriView.as_view(), name="wado"),
    # Rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.4.1.1.4).
    path(f"{_INSTANCE}/rendered", rendered_views.RenderedView.as_view(), name="rendered"),
    path(
        f"{_INSTANCE}/frames/<str:frames>/rendered",
        rendered_views.RenderedView.as_view(),
        name="frame-rendered",
    ),
    path(f"{_STUDY}/rendered", rendered_views.RenderedView.as_view(), name="study-rendered"),
    path(f"{_SERIES}/rendered", rendered_views.RenderedView.as_view(), name="series-rendered"),
    path(f"{_STUDY}/thumbnail", rendered_views.ThumbnailView.as_view(), name="study-thumbnail"),
    path(f"{_SERIES}/thumbnail", rendered_views.ThumbnailView.as_view(), name="series-thumbnail"),
    path(f"{_INSTANCE}/thumbnail", rendered_views.ThumbnailView.as_view(), name="thumbnail"),
    path(
        f"{_INSTANCE}/frames/<str:frames>/thumbnail",
        rendered_views.ThumbnailView.as_view(),
        name="frame-thumbnail",
    ),
]
