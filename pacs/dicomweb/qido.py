"""QIDO-RS (PS3.18 10.6): query parameters to a C-FIND identifier, answered from the index.

The parameters become a pydicom identifier that `pacs.selectors.build_query` reads, so
matching is exactly C-FIND's (PS3.4 C.2.2.2). The rows are narrowed to the studies the
person may see, paged with limit and offset, and read in one SQL statement; no file is
opened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from pacs.models import Study
from pacs.selectors import (
    ATTRIBUTES,
    IMAGE,
    LEVELS,
    SERIES,
    STUDY,
    STUDY_ROOT,
    build_query,
    index_value,
    level_rows,
    records_of,
)

# Results per response at most, whatever limit asks (PS3.18 8.3.4.4: the server may cap).
MAX_LIMIT = 1000

_CONTROL = {"limit", "offset", "fuzzymatching", "includefield"}

# Attributes returned without includefield (PS3.18 Tables 10.6.3-3, -4 and -5), of those
# the index holds; "*" marks the attributes of the levels above, returned by /series and
# /instances searched outside a study.
# PS3.18 Tables 10.6.3-3 to 10.6.3-5: what every match carries at its level (with
# RetrieveURL); Timezone Offset From UTC is left out, the index does not know it.
DEFAULT_KEYS = {
    STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    SERIES: (
        "Modality",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
    ),
    IMAGE: (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}
_PATIENT_LEVEL = "PATIENT"


class QidoError(ValueError):
    """A query parameter cannot be used; the message says which and why (answered with 400)."""


@dataclass(frozen=True)
class Search:
    level: str
    identifier: Dataset
    keys: list[str]
    limit: int
    offset: int
    fuzzy_asked: bool


def _keyword(attribute_id: str) -> str:
    """The keyword of a QIDO attributeID: a keyword or a tag of eight hex digits."""
    text = attribute_id.strip()
    if "." in text:
        raise QidoError(f"{text}: matching inside sequences is not supported")
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        keyword = keyword_for_tag(int(text, 16))
        if not keyword:
            raise QidoError(f"{text}: not a tag of the DICOM dictionary")
        return keyword
    if tag_for_keyword(text) is None:
        raise QidoError(f"{text}: not a DICOM keyword or tag")
    return text


def _level_of(keyword: str) -> str | None:
    attribute = ATTRIBUTES.get(keyword)
    if attribute is None:
        return None
    return STUDY if attribute.level == _PATIENT_LEVEL else attribute.level


def _number(params: Any, name: str, default: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit():
        raise QidoError(f"{name}: not a whole number: {text[:20]!r}")
    return int(text)


def _element(keyword: str, value: str) -> DataElement:
    # Values are matching keys (ranges, wildcards, UID lists): never validated as values.
    return DataElement(
        tag_for_keyword(keyword),  # type: ignore[arg-type]
        dictionary_VR(keyword),
        value,
        validation_mode=pydicom_config.IGNORE,
    )


def parse_search(params: Any, level: str, fixed: dict[str, str], *, top: str) -> Search:
    """Read the query PARAMS (a QueryDict) of a search at LEVEL.

    FIXED holds the UIDs given in the path; TOP is the highest level whose attributes are
    returned by default (STUDY for /series and /instances outside a study).
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    includes: list[str] = []
    include_all = False
    for name in params:
        if name in _CONTROL:
            continue
        keyword = _keyword(name)
        values = params.getlist(name)
        if len(values) > 1:
            raise QidoError(f"{name}: given more than once")
        attribute_level = _level_of(keyword)
        if attribute_level is None:
            raise QidoError(f"{name}: the archive cannot match on {keyword}")
        if LEVELS.index(attribute_level) > LEVELS.index(level):
            raise QidoError(f"{name}: {keyword} is below the {level.lower()} level searched")
        identifier.add(_element(keyword, values[0]))
    for keyword, uid in fixed.items():
        if keyword in identifier:
            raise QidoError(f"{keyword} is given in the path already")
        identifier.add(_element(keyword, uid))
    for value in params.getlist("includefield"):
        for item in value.split(","):
            if item.strip().lower() == "all":
                include_all = True
            elif item.strip():
                includes.append(_keyword(item))
    fuzzy = params.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise QidoError("fuzzymatching: true or false")
    limit = min(_number(params, "limit", MAX_LIMIT), MAX_LIMIT)
    offset = _number(params, "offset", 0)
    keys = _return_keys(level, top, includes, include_all)
    for keyword in keys:
        if keyword not in identifier:
            identifier.add(_element(keyword, ""))
    return Search(level, identifier, keys, limit, offset, fuzzy == "true")


def _return_keys(level: str, top: str, includes: list[str], include_all: bool) -> list[str]:
    levels = [name for name in (STUDY, SERIES, IMAGE) if LEVELS.index(top) <= LEVELS.index(name)]
    levels = [name for name in levels if LEVELS.index(name) <= LEVELS.index(level)]
    keys = [keyword for name in levels for keyword in DEFAULT_KEYS[name]]
    if include_all:
        keys += [
            keyword
            for keyword, attribute in ATTRIBUTES.items()
            if (_level_of(keyword) in levels)
            and (attribute.field is not None or keyword == "ModalitiesInStudy")
        ]
    keys += includes
    return list(dict.fromkeys(keys))


def search(
    parsed: Search, visible: QuerySet[Study], retrieve_url: Callable[[dict[str, Any]], str]
) -> tuple[list[dict[str, Any]], bool]:
    """The matches of PARSED among VISIBLE studies in the DICOM JSON model, and whether more
    follow past the limit."""
    query = build_query(parsed.identifier, STUDY_ROOT)
    rows = list(level_rows(query, visible)[parsed.offset : parsed.offset + parsed.limit + 1])
    more = len(rows) > parsed.limit
    results = []
    for row in rows[: parsed.limit]:
        records = records_of(row, parsed.level)
        results.append(json_item(records, parsed.keys, retrieve_url(records)))
    return results, more


# Per keyword: its tag as DICOM JSON names it, and its VR (PS3.18 F.2.2, F.2.3).
_JSON_KEYS: dict[str, tuple[str, str]] = {}
_NUMBER_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})
_PERSON_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")  # PS3.18 F.2.4


def _json_key(keyword: str) -> tuple[str, str]:
    known = _JSON_KEYS.get(keyword)
    if known is None:
        tag = tag_for_keyword(keyword)
        known = _JSON_KEYS[keyword] = (f"{tag:08X}", dictionary_VR(keyword))
    return known


def _json_value(value: Any, vr: str) -> Any:
    if vr == "PN":
        groups = str(value).split("=")[: len(_PERSON_NAME_GROUPS)]
        return {
            name: group for name, group in zip(_PERSON_NAME_GROUPS, groups, strict=False) if group
        }
    if vr in _NUMBER_VRS:
        number = float(value)
        return int(number) if number.is_integer() and vr != "DS" else number
    return str(value)


def json_item(records: dict[str, Any], keys: list[str], retrieve_url: str) -> dict[str, Any]:
    """One QIDO-RS result in the DICOM JSON model, written from the index records directly
    (as pydicom's to_json_dict would write the same values, without building a Dataset)."""
    item: dict[str, Any] = {}
    non_ascii = False
    for keyword in [*keys, "RetrieveURL"]:
        tag, vr = _json_key(keyword)
        value = retrieve_url if keyword == "RetrieveURL" else index_value(keyword, records)
        values = value if isinstance(value, list) else [] if value in (None, "") else [value]
        element: dict[str, Any] = {"vr": vr}
        if values:
            element["Value"] = [_json_value(v, vr) for v in values]
            non_ascii = non_ascii or any(isinstance(v, str) and not v.isascii() for v in values)
        item[tag] = element
    if non_ascii:  # as the C-FIND answer says it (PS3.5 6.1.2.3)
        item["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    return dict(sorted(item.items()))


def uids(records: dict[str, Any]) -> Iterator[str]:
    """The study, series and SOP instance UIDs of a result's records, as far as they go."""
    yield records["study"].study_instance_uid
    if "series" in records:
        yield records["series"].series_instance_uid
    if "instance" in records:
        yield records["instance"].sop_instance_uid
