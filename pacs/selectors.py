"""Reads of the archive: C-FIND at every level, answered from the index alone.

Matching follows PS3.4 C.2.2.2: single value, wildcard (* and ?), range (DA, TM), list
of UIDs, universal (empty value) matching; person names match without regard to case.
Every query is one SQL statement, whatever the number of matches.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Exists, F, Max, Model, OuterRef, Prefetch, Q, QuerySet, Sum
from guardian.shortcuts import get_objects_for_user
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from core import roles
from core.db import shaped
from core.dicom_elements import trusted_element
from core.permissions import can
from pacs.lookups import wildcard_to_like
from pacs.models import DicomNode, Instance, ReconciliationItem, Series, Study
from ris.models import (
    Order,
    Patient,
    PatientIdentifier,
    RequestedProcedure,
    ScheduledProcedureStep,
)

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
PATIENT_ROOT, STUDY_ROOT = "patient", "study"

# The level of a record an attribute belongs to, and the model it is stored on.
_RECORD_OF_LEVEL = {PATIENT: "study", STUDY: "study", SERIES: "series", IMAGE: "instance"}
# How to reach each record from the model queried at each level.
_PREFIX = {
    PATIENT: {"study": ""},
    STUDY: {"study": ""},
    SERIES: {"study": "study__", "series": ""},
    IMAGE: {"study": "series__study__", "series": "series__", "instance": ""},
}


# Seconds the known nodes are reused before the table is read again (other processes edit it).
NODE_CACHE_SECONDS = 5.0


class _NodeCache:
    """The known DICOM nodes by AE title, read at most every few seconds."""

    def __init__(self) -> None:
        self._nodes: dict[str, DicomNode] = {}
        self._read_at = -NODE_CACHE_SECONDS
        # Counts clear()s: a read that a clear() overtook (the table changed while it ran)
        # is used once but not kept, or a node added meanwhile stays unknown for seconds.
        self._generation = 0

    def nodes(self) -> dict[str, DicomNode]:
        if time.monotonic() - self._read_at > NODE_CACHE_SECONDS:
            generation = self._generation
            nodes = {node.ae_title: node for node in DicomNode.objects.all()}
            if generation == self._generation:
                self._nodes, self._read_at = nodes, time.monotonic()
            return nodes
        return self._nodes

    def clear(self) -> None:
        self._generation += 1
        self._read_at = -NODE_CACHE_SECONDS


node_cache = _NodeCache()


class QueryError(ValueError):
    """The identifier cannot be matched; the message is fit for an ErrorComment."""


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: str
    field: str | None  # None: computed, not matched on a column
    match_field: str | None = None  # a normalised copy to match on (upper-cased names)


ATTRIBUTES = {
    a.keyword: a
    for a in (
        Attribute("PatientName", PATIENT, "patient_name", "patient_name_match"),
        Attribute("PatientID", PATIENT, "dicom_patient_id"),
        Attribute("IssuerOfPatientID", PATIENT, "issuer_of_patient_id"),
        Attribute("PatientBirthDate", PATIENT, "patient_birth_date"),
        Attribute("PatientSex", PATIENT, "patient_sex"),
        Attribute("NumberOfPatientRelatedStudies", PATIENT, None),
        Attribute("NumberOfPatientRelatedSeries", PATIENT, None),
        Attribute("NumberOfPatientRelatedInstances", PATIENT, None),
        Attribute("StudyInstanceUID", STUDY, "study_instance_uid"),
        Attribute("StudyDate", STUDY, "study_date"),
        Attribute("StudyTime", STUDY, "study_time"),
        Attribute("AccessionNumber", STUDY, "accession_number"),
        Attribute("StudyID", STUDY, "study_id"),
        Attribute("StudyDescription", STUDY, "study_description"),
        Attribute("ReferringPhysicianName", STUDY, "referring_physician_name"),
        Attribute("ModalitiesInStudy", STUDY, None),
        Attribute("NumberOfStudyRelatedSeries", STUDY, "number_of_series"),
        Attribute("NumberOfStudyRelatedInstances", STUDY, "number_of_instances"),
        Attribute("SeriesInstanceUID", SERIES, "series_instance_uid"),
        Attribute("Modality", SERIES, "modality"),
        Attribute("SeriesNumber", SERIES, "series_number"),
        Attribute("SeriesDescription", SERIES, "series_description"),
        Attribute("BodyPartExamined", SERIES, "body_part_examined"),
        Attribute("SeriesDate", SERIES, "series_date"),
        Attribute("SeriesTime", SERIES, "series_time"),
        Attribute("StationName", SERIES, "station_name"),
        Attribute("InstitutionName", SERIES, "institution_name"),
        Attribute("NumberOfSeriesRelatedInstances", SERIES, "number_of_instances"),
        Attribute("SOPInstanceUID", IMAGE, "sop_instance_uid"),
        Attribute("SOPClassUID", IMAGE, "sop_class_uid"),
        Attribute("InstanceNumber", IMAGE, "instance_number"),
        Attribute("NumberOfFrames", IMAGE, "number_of_frames"),
        Attribute("Rows", IMAGE, "rows"),
        Attribute("Columns", IMAGE, "columns"),
        Attribute("BitsAllocated", IMAGE, "bits_allocated"),
    )
}


@dataclass(frozen=True)
class SequenceAttribute:
    """A sequence the index answers from related rows: one item per row of MODEL that
    belongs to the study (ITEM_OWNER of the row equals OWNER of the study)."""

    keyword: str
    level: str  # the level a search may match it at (PS3.18 10.6.1.2.1)
    model: type[Model]
    owner: str  # a column of the study
    item_owner: str  # the column of MODEL holding the study's OWNER value
    items: dict[str, str]  # item keyword -> its column of MODEL
    # Rows whose column equals the study's own value are not items (an item column, a study one).
    not_own: tuple[str, str] | None = None
    # Only rows of MODEL matching this filter are items.
    only: Q = dataclasses.field(default_factory=Q)


SEQUENCE_ATTRIBUTES = {
    a.keyword: a
    for a in (
        # PS3.3 C.2.2 Patient Identification: the patient's other identifiers are those the
        # RIS holds for the patient the study is filed under (aliases of merged records too),
        # less the study's own Patient ID.
        SequenceAttribute(
            "OtherPatientIDsSequence",
            PATIENT,
            PatientIdentifier,
            owner="patient_id",
            item_owner="patient_id",
            items={"PatientID": "value", "IssuerOfPatientID": "issuer__namespace_id"},
            not_own=("value", "dicom_patient_id"),
            # Record numbers of other hospitals, not national, passport or insurance
            # numbers: whoever may see a study would otherwise read those too.
            only=Q(
                type__in=(
                    PatientIdentifier.Type.MEDICAL_RECORD,
                    PatientIdentifier.Type.PATIENT_INTERNAL,
                )
            ),
        ),
        # PS3.18 Table 10.6.1-5 (a Series attribute): the order the study was reconciled
        # with, one item per scheduled procedure step of its requested procedure.
        SequenceAttribute(
            "RequestAttributesSequence",
            SERIES,
            ScheduledProcedureStep,
            owner="requested_procedure_id",
            item_owner="requested_procedure_id",
            items={
                "AccessionNumber": "requested_procedure__order__accession_number",
                "RequestedProcedureID": "requested_procedure__requested_procedure_id",
                "RequestedProcedureDescription": "requested_procedure__description",
                "ScheduledProcedureStepID": "sps_id",
                "ScheduledProcedureStepDescription": "description",
                "StudyInstanceUID": "requested_procedure__study_instance_uid",
            },
        ),
    )
}


def sequence_condition(keyword: str, values: dict[str, str], level: str) -> Q:
    """Sequence matching (PS3.4 C.2.2.2.6) of the item keys VALUES in KEYWORD at LEVEL: a
    match when one item matches all of them; no condition when every one is universal."""
    sequence = SEQUENCE_ATTRIBUTES[keyword]
    conditions = Q()
    for item_keyword, value in values.items():
        if value and value != "*":
            conditions &= _value_condition(sequence.items[item_keyword], item_keyword, value)
    if conditions == Q():
        return conditions
    prefix = _PREFIX[level]["study"]
    items = sequence.model._default_manager.filter(
        sequence.only, conditions, **{sequence.item_owner: OuterRef(prefix + sequence.owner)}
    )
    if sequence.not_own is not None:
        item_column, study_column = sequence.not_own
        items = items.exclude(**{item_column: OuterRef(prefix + study_column)})
    return Q(Exists(items))


def attach_sequence_items(
    keyword: str, item_keywords: list[str], matches: list[dict[str, Any]]
) -> None:
    """Put the items of KEYWORD, holding ITEM_KEYWORDS, into each match's records under
    "sequences", read for all MATCHES by one query."""
    sequence = SEQUENCE_ATTRIBUTES[keyword]
    owners = {getattr(records["study"], sequence.owner) for records in matches} - {None}
    columns = [sequence.items[item_keyword] for item_keyword in item_keywords]
    extra = [sequence.not_own[0]] if sequence.not_own else []
    rows: dict[Any, list[dict[str, Any]]] = {}
    if owners:
        found = (
            sequence.model._default_manager.filter(
                sequence.only, **{f"{sequence.item_owner}__in": owners}
            )
            .order_by(sequence.item_owner, "pk")
            .values(sequence.item_owner, *columns, *extra)
        )
        for row in found:
            rows.setdefault(row[sequence.item_owner], []).append(row)
    for records in matches:
        study = records["study"]
        items = []
        for row in rows.get(getattr(study, sequence.owner), []):
            if sequence.not_own and row[sequence.not_own[0]] == getattr(study, sequence.not_own[1]):
                continue
            items.append({k: row[c] for k, c in zip(item_keywords, columns, strict=True)})
        records.setdefault("sequences", {})[keyword] = items


# Keys answered by every level without a column of their own.
_ALWAYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
_UNIQUE_KEY = {
    PATIENT: "PatientID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True)
class FindQuery:
    level: str
    keys: list[str]  # the keywords asked for, in the identifier's order
    conditions: Q


def _path(attribute: Attribute, level: str, field: str) -> str:
    record = _RECORD_OF_LEVEL[attribute.level]
    prefix = _PREFIX[level].get(record)
    if prefix is None:
        raise QueryError(f"{attribute.keyword} is below the {level} level")
    return prefix + field


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(item) for item in value)
    return str(value).strip()


def _parse_date(text: str, keyword: str) -> dt.date:
    try:
        return dt.datetime.strptime(text.replace(".", ""), "%Y%m%d").date()  # noqa: DTZ007
    except ValueError as exc:
        raise QueryError(f"{keyword}: not a date: {text[:20]!r}") from exc


def _date_condition(path: str, value: str, keyword: str) -> Q:
    if "-" not in value:
        return Q(**{path: _parse_date(value, keyword)})
    start, _, end = value.partition("-")
    condition = Q()
    if start:
        condition &= Q(**{f"{path}__gte": _parse_date(start, keyword)})
    if end:
        condition &= Q(**{f"{path}__lte": _parse_date(end, keyword)})
    if not start and not end:
        raise QueryError(f"{keyword}: an empty range")
    return condition


def _normal_time(text: str, keyword: str) -> str:
    text = text.replace(":", "")
    digits = text.split(".", 1)[0]
    if not digits.isdigit() or len(digits) not in (2, 4, 6):
        raise QueryError(f"{keyword}: not a time: {text[:20]!r}")
    return text


def _time_condition(path: str, value: str, keyword: str) -> Q:
    if "-" not in value:
        return Q(**{f"{path}__startswith": _normal_time(value, keyword)})
    start, _, end = value.partition("-")
    condition = Q()
    if start:
        condition &= Q(**{f"{path}__gte": _normal_time(start, keyword)})
    if end:
        # "1200" ends a range at 12:00:59.999999: compare against the next character up.
        condition &= Q(**{f"{path}__lt": _normal_time(end, keyword) + "\x7f"})
    return condition


def _condition(attribute: Attribute, level: str, value: str) -> Q:
    keyword = attribute.keyword
    if attribute.keyword == "ModalitiesInStudy":
        path = _path(attribute, level, "modalities_in_study")
        any_of = Q()
        for modality in value.split("\\"):
            any_of |= Q(**{f"{path}__contains": f"\\{modality.strip()}\\"})
        return any_of
    if attribute.field is None:
        raise QueryError(f"{keyword} cannot be matched, only returned")
    path = _path(attribute, level, attribute.field)
    if dictionary_VR(keyword) == "PN" and attribute.match_field:
        # PS3.4 C.2.2.2.1: names match without regard to case, here on an uppercase copy
        # (compared as it is, so that an index serves a LIKE prefix).
        path, value = _path(attribute, level, attribute.match_field), value.upper()
        if "*" in value or "?" in value:
            return Q(**{f"{path}__dicomlike": wildcard_to_like(value)})
        return Q(**{path: value})
    return _value_condition(path, keyword, value)


def _value_condition(path: str, keyword: str, value: str) -> Q:
    """The C-FIND match of VALUE for KEYWORD on the column at PATH (PS3.4 C.2.2.2)."""
    vr = dictionary_VR(keyword)
    if vr == "DA":
        return _date_condition(path, value, keyword)
    if vr == "TM":
        return _time_condition(path, value, keyword)
    if vr == "UI":
        uids = [uid.strip() for uid in value.split("\\") if uid.strip()]
        if not uids:
            raise QueryError(f"{keyword}: a list of UIDs holding none")
        return Q(**{f"{path}__in": uids}) if len(uids) > 1 else Q(**{path: uids[0]})
    if vr == "IS" or vr in ("US", "UL"):
        try:
            return Q(**{path: int(value)})
        except ValueError as exc:
            raise QueryError(f"{keyword}: not a number: {value[:20]!r}") from exc
    if vr == "PN":
        # PS3.4 C.2.2.2.1: names match without regard to case (UPPER() of the column).
        return _upper_condition(path, value.upper())
    if vr == "CS" and "\\" in value:
        return Q(**{f"{path}__in": value.split("\\")})
    if "*" in value or "?" in value:
        return Q(**{f"{path}__dicomlike": wildcard_to_like(value)})
    return Q(**{path: value})


def _upper_condition(path: str, value: str) -> Q:
    if "*" in value or "?" in value:
        return Q(**{f"{path}__upper__dicomlike": wildcard_to_like(value)})
    return Q(**{f"{path}__iexact": value})


def build_query(identifier: Dataset, model: str) -> FindQuery:
    """Read the level, the matching keys and the return keys of a C-FIND identifier."""
    level = _text(identifier.get("QueryRetrieveLevel", "")).upper()
    if level not in LEVELS:
        raise QueryError(f"QueryRetrieveLevel {level!r} is not PATIENT, STUDY, SERIES or IMAGE")
    if model == STUDY_ROOT and level == PATIENT:
        raise QueryError("the Study Root model has no PATIENT level")
    keys: list[str] = []
    conditions = Q()
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _ALWAYS:
            continue
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or LEVELS.index(attribute.level) > LEVELS.index(level):
            # Unknown or deeper keys are answered empty (PS3.4 C.4.1.1.3.2: return, no match).
            keys.append(keyword)
            continue
        keys.append(keyword)
        value = _text(element.value) if element.VR != "SQ" else ""
        if value and value != "*":
            conditions &= _condition(attribute, level, value)
    return FindQuery(level=level, keys=keys, conditions=conditions)


# How each level's rows reach their study, for restricting a query to visible studies.
_STUDY_LOOKUP = {
    PATIENT: "pk__in",
    STUDY: "pk__in",
    SERIES: "study__in",
    IMAGE: "series__study__in",
}


def level_rows(query: FindQuery, visible: QuerySet[Study] | None = None) -> QuerySet[Any]:
    """The rows matching QUERY at its level, among VISIBLE studies when given, in a stable order
    (compiled once per shape of query: core.db.shaped)."""
    conditions = query.conditions
    if visible is not None:
        lookup = _STUDY_LOOKUP[query.level]
        conditions &= Q(**{lookup: visible.order_by().values("pk")})
    if query.level == PATIENT:
        return (
            shaped(Study)
            .filter(conditions)
            .values("dicom_patient_id", "issuer_of_patient_id")
            .annotate(
                name=Max("patient_name"),
                birth_date=Max("patient_birth_date"),
                sex=Max("patient_sex"),
                n_studies=Count("id"),
                n_series=Sum("number_of_series"),
                n_instances=Sum("number_of_instances"),
            )
            .order_by("dicom_patient_id", "issuer_of_patient_id")
        )
    if query.level == STUDY:
        return shaped(Study).filter(conditions).order_by("study_date", "id")
    if query.level == SERIES:
        return (
            shaped(Series)
            .filter(conditions)
            .select_related("study")
            .order_by("study_id", "series_number", "id")
        )
    return (
        shaped(Instance)
        .filter(conditions)
        .select_related("series__study")
        .order_by("series__study_id", "series_id", "instance_number", "id")
    )


def records_of(row: Any, level: str) -> dict[str, Any]:
    """The study, series and instance rows behind one match at LEVEL, by record name."""
    if level in (PATIENT, STUDY):
        return {"study": row}
    if level == SERIES:
        return {"study": row.study, "series": row}
    return {"study": row.series.study, "series": row.series, "instance": row}


# PATIENT level rows: the key of each value in the aggregated row.
_PATIENT_AGGREGATES = {
    "PatientName": "name",
    "PatientID": "dicom_patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientBirthDate": "birth_date",
    "PatientSex": "sex",
    "NumberOfPatientRelatedStudies": "n_studies",
    "NumberOfPatientRelatedSeries": "n_series",
    "NumberOfPatientRelatedInstances": "n_instances",
}


def index_value(keyword: str, records: dict[str, Any]) -> Any:
    """KEYWORD's value for one match, from the index, as DICOM holds it; None when empty."""
    value = _stored_value(keyword, records)
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    return None if value in ("", []) else value


# PS3.3 C.4.23.1.1: every indexed instance is on the archive's own disks.
INSTANCE_AVAILABILITY = "ONLINE"


def _stored_value(keyword: str, records: dict[str, Any]) -> Any:
    if keyword == "InstanceAvailability":
        return INSTANCE_AVAILABILITY
    if keyword in SEQUENCE_ATTRIBUTES:  # items put there by attach_sequence_items
        return records.get("sequences", {}).get(keyword)
    attribute = ATTRIBUTES.get(keyword)
    if attribute is None:
        return None
    record = records.get(_RECORD_OF_LEVEL[attribute.level])
    if record is None:
        return None
    if isinstance(record, dict):  # PATIENT level rows are dictionaries of aggregates
        key = _PATIENT_AGGREGATES.get(keyword)
        return record.get(key) if key else None
    if keyword == "ModalitiesInStudy":
        return [m for m in record.modalities_in_study.split("\\") if m]
    if attribute.field is None:
        return None
    return getattr(record, attribute.field)


def find(identifier: Dataset, model: str, *, retrieve_ae_title: str) -> Iterator[Dataset]:
    """Yield one response identifier per match of IDENTIFIER, from one SQL query (more
    stream through a cursor)."""
    query = build_query(identifier, model)
    first, rest = match_rows(query)
    yield from responses(itertools.chain(first, rest or ()), query, identifier, retrieve_ae_title)


@functools.cache
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    return tag_for_keyword(keyword), dictionary_VR(keyword)  # type: ignore[return-value]


def response_identifier(records: dict[str, Any], keys: list[str]) -> Dataset:
    """One response identifier holding KEYS read from the index RECORDS of a match."""
    response = Dataset()
    # KEYS are public keywords, each once (build_query): Dataset.add's checks would pass.
    elements = response._dict
    non_ascii = False
    for keyword in keys:
        value = index_value(keyword, records)
        value = "" if value is None else value  # every key asked for is answered
        tag, vr = _tag_and_vr(keyword)
        if vr == "SQ":
            response.add(trusted_element(tag, vr, value))  # a sequence knows its dataset
        else:
            elements[tag] = trusted_element(tag, vr, value)  # type: ignore[index]
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
    # PS3.5 6.1.2.3: answer in UTF-8 whenever a value needs more than ASCII.
    if non_ascii:
        response.SpecificCharacterSet = "ISO_IR 192"
    return response


# Most queries match a few rows: those come in one plain query. Past this many, the rest
# streams through a server-side cursor, so that a query matching millions of rows never
# holds them all in memory (the cursor costs four round trips and materialises the rows).
FIRST_ROWS = 100
STREAM_CHUNK = 500


def match_rows(query: FindQuery) -> tuple[list[Any], Iterator[Any] | None]:
    """The rows matching QUERY, in a stable order: the first FIRST_ROWS by one query, and,
    when there may be more, an iterator over the rest through a cursor (else None)."""
    rows = level_rows(query)
    first = list(rows[:FIRST_ROWS])
    if len(first) < FIRST_ROWS:
        return first, None
    return first, rows[FIRST_ROWS:].iterator(chunk_size=STREAM_CHUNK)


def responses(
    rows: Iterable[Any], query: FindQuery, identifier: Dataset, retrieve_ae_title: str
) -> Iterator[Dataset]:
    """Yield the response identifier of each of ROWS, matches of QUERY (built from IDENTIFIER)."""
    for row in rows:
        response = response_identifier(records_of(row, query.level), query.keys)
        response.QueryRetrieveLevel = query.level
        if "RetrieveAETitle" in identifier:
            response.RetrieveAETitle = retrieve_ae_title
        yield response


def unique_key(level: str) -> str:
    return _UNIQUE_KEY[level]


# The study browser: who may see which studies, and searching them from a web form.


@dataclass(frozen=True)
class StudySearch:
    """What a person searches studies by in the browser; an empty field matches everything."""

    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    modality: str = ""
    referring_physician: str = ""

    def described(self) -> str:
        """The criteria given, as "name=value" pairs for the audit trail."""
        return " ".join(
            f"{name}={value}" for name, value in vars(self).items() if value not in ("", None)
        )


def may_browse_studies(user: Any) -> bool:
    """Tell whether USER may use the study browser at all (what they find is narrowed further)."""
    return (
        can(user, "pacs.view_study")
        or roles.has_role(user, roles.REFERRING_PHYSICIAN)
        or roles.has_role(user, roles.PATIENT)
    )


def studies_visible_to(user: Any, search: StudySearch | None = None) -> QuerySet[Study]:
    """Studies USER may see that match SEARCH, newest first.

    The study role permission shows every study. Otherwise a person sees the studies of
    the orders granted to them (a referring physician's referrals) and those of their own
    patient record, nothing else.
    """
    if not user.is_authenticated or not user.is_active:
        return Study.objects.none()
    studies = Study.objects.all()
    if not can(user, "pacs.view_study"):
        # Object grants only: a role-wide ris.view_order (front desk) must not open every study.
        referred = get_objects_for_user(
            user, "ris.view_order", klass=Order, accept_global_perms=False
        )
        studies = studies.filter(
            Q(
                requested_procedure__in=RequestedProcedure.objects.filter(
                    order__in=referred.values("pk")
                ).values("pk")
            )
            | Q(patient__in=Patient.objects.filter(user=user).values("pk"))
        )
    if search is not None:
        studies = studies.filter(_study_search_conditions(search))
    return studies.order_by(F("study_date").desc(nulls_last=True), "-id")


def _person_name_condition(keyword: str, text: str) -> Q:
    """Match a name as C-FIND does (any case, * and ?); a plain word starts any name component."""
    attribute = ATTRIBUTES[keyword]
    if "*" in text or "?" in text:
        return _condition(attribute, STUDY, text)
    return _condition(attribute, STUDY, f"{text}*") | _condition(attribute, STUDY, f"*^{text}*")


def _study_search_conditions(search: StudySearch) -> Q:
    conditions = Q()
    if search.patient_name.strip():
        conditions &= _person_name_condition("PatientName", search.patient_name.strip())
    if search.referring_physician.strip():
        conditions &= _person_name_condition(
            "ReferringPhysicianName", search.referring_physician.strip()
        )
    if search.patient_id.strip():
        conditions &= _condition(ATTRIBUTES["PatientID"], STUDY, search.patient_id.strip())
    if search.accession_number.strip():
        conditions &= _condition(
            ATTRIBUTES["AccessionNumber"], STUDY, search.accession_number.strip()
        )
    if search.date_from is not None:
        conditions &= Q(study_date__gte=search.date_from)
    if search.date_to is not None:
        conditions &= Q(study_date__lte=search.date_to)
    if search.modality.strip():
        conditions &= _condition(
            ATTRIBUTES["ModalitiesInStudy"], STUDY, search.modality.strip().upper()
        )
    return conditions


def study_series(study: Study) -> list[Series]:
    """STUDY's series in number order, each with its instances and its size (three queries)."""
    instances = Instance.objects.order_by("instance_number", "id")
    return list(
        Series.objects.filter(study=study)
        .annotate(size_bytes=Sum("instances__file_size"))
        .prefetch_related(Prefetch("instances", queryset=instances))
        .order_by(F("series_number").asc(nulls_last=True), "id")
    )


def study_instances(study: Study) -> QuerySet[Instance]:
    """STUDY's instances with their series, in series then instance order (for export)."""
    return (
        Instance.objects.filter(series__study=study)
        .select_related("series")
        .order_by(
            F("series__series_number").asc(nulls_last=True),
            "series_id",
            F("instance_number").asc(nulls_last=True),
            "id",
        )
    )


def reconciliation_queue(status: str = "open") -> QuerySet[ReconciliationItem]:
    """Reconciliation items in STATUS, oldest first, with what the list shows (no N+1)."""
    return (
        ReconciliationItem.objects.filter(status=status)
        .select_related("study", "requested_procedure__order__patient", "resolved_by")
        .order_by("created_at", "id")
    )


def may_reconcile(user: Any) -> bool:
    return can(user, "pacs.change_reconciliationitem")


def may_see_reconciliation_flags(user: Any) -> bool:
    """Whether the boards flag studies received without an order for USER (not: may fix them)."""
    return can(user, "pacs.view_reconciliationitem")


def studies_without_order(limit: int) -> tuple[list[ReconciliationItem], int]:
    """The newest LIMIT open items of studies received with no order found, and how many."""
    items = ReconciliationItem.objects.filter(
        status=ReconciliationItem.Status.OPEN, reason=ReconciliationItem.Reason.NO_ORDER
    )
    newest = list(items.select_related("study").order_by("-created_at", "-id")[:limit])
    return newest, (len(newest) if len(newest) < limit else items.count())
