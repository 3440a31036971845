"""The diagnostic viewer page: one study in Cornerstone3D, reading our DICOMweb (/dicomweb/).

Who may open it is who may open the study in the study browser: a study out of sight
answers 404, the same as one that does not exist, and the refusal is audited. The page
itself carries only the study's identification, its series and the patient's prior
studies; the images come through DICOMweb, where each retrieval is audited again.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import Count, F, Prefetch, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from core import audit
from pacs import selectors
from pacs.models import Series, Study

# The reporting app may offer the study's report as an HTML fragment under this URL name,
# taking the study's pk; the viewer shows it beside the images when it exists.
REPORT_URL_NAME = "reporting:viewer-report"
MAX_PRIORS = 20


def _image_series() -> QuerySet[Series]:
    """Series with at least one image (not only SR, KO, PR), in number order."""
    return (
        Series.objects.annotate(images=Count("instances", filter=Q(instances__rows__isnull=False)))
        .filter(images__gt=0)
        .order_by(F("series_number").asc(nulls_last=True), "id")
    )


def _visible_study(request: HttpRequest, study_instance_uid: str) -> Study:
    """The study if this person may see it; else 404, the refusal audited when it exists."""
    if not selectors.may_browse_studies(request.user):
        audit.record(
            audit.Action.DENIED,
            request=request,
            outcome=audit.Outcome.FAILURE,
            object_type="pacs.study",
            detail="open the viewer",
        )
        raise PermissionDenied("You may not view images.")
    study = (
        selectors.studies_visible_to(request.user)
        .filter(study_instance_uid=study_instance_uid)
        .select_related("patient")
        .first()
    )
    if study is None:
        denied = (
            Study.objects.filter(study_instance_uid=study_instance_uid)
            .select_related("patient")
            .first()
        )
        if denied is not None:
            audit.record(
                audit.Action.DENIED, denied, request=request, outcome=audit.Outcome.FAILURE
            )
        raise Http404("No such study.")
    return study


def _series_config(series: Series) -> dict[str, Any]:
    """What the page script knows of a series."""
    return {
        "uid": series.series_instance_uid,
        "number": series.series_number,
        "modality": series.modality,
        "description": series.series_description,
        "images": series.images,  # type: ignore[attr-defined]
    }


def _study_facts(study: Study) -> dict[str, Any]:
    """The study's identification for the overlays (from the index, not the files)."""
    return {
        "uid": study.study_instance_uid,
        "patientName": study.patient_name.replace("^", " ").strip(),
        "patientId": study.dicom_patient_id,
        "birthDate": study.patient_birth_date.isoformat() if study.patient_birth_date else "",
        "sex": study.patient_sex,
        "date": study.study_date.isoformat() if study.study_date else "",
        "description": study.study_description,
        "accession": study.accession_number,
        "modalities": study.modalities_in_study,
    }


def _report_url(study: Study) -> str:
    """Where the study's report fragment is, when the reporting app offers one."""
    try:
        return reverse(REPORT_URL_NAME, args=[study.pk])
    except NoReverseMatch:
        return ""


def viewer_config(request: HttpRequest, study: Study) -> dict[str, Any]:
    """What the page script needs: the study, its image series, the priors, where things are."""
    series = [_series_config(item) for item in _image_series().filter(study=study)]
    priors = (
        selectors.studies_visible_to(request.user)
        .filter(patient=study.patient)
        .exclude(pk=study.pk)
        .prefetch_related(Prefetch("series", queryset=_image_series(), to_attr="image_series"))
    )[:MAX_PRIORS]
    return {
        "dicomweb": reverse("dicomweb:studies").removesuffix("/studies"),
        "wasmBase": static("viewer/codecs/"),
        "study": _study_facts(study),
        "series": series,
        "priors": [
            {
                **_study_facts(prior),
                "url": reverse("viewer", args=[prior.study_instance_uid]),
                "series": [_series_config(item) for item in prior.image_series],  # type: ignore[attr-defined]
            }
            for prior in priors
        ],
        "reportUrl": _report_url(study),
    }


@require_GET
def viewer(request: HttpRequest, study_instance_uid: str) -> HttpResponse:
    """Show one study in the diagnostic viewer."""
    study = _visible_study(request, study_instance_uid)
    config = viewer_config(request, study)
    audit.record(audit.Action.VIEW, study, request=request, detail="viewer")
    return render(
        request,
        "pacs/viewer.html",
        {"study": study, "config": config, "series_list": config["series"]},
    )
