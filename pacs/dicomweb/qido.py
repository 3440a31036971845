"""QIDO-RS (PS3.18 10.6): query parameters to a C-FIND identifier, answered from the index.

The parameters become a pydicom identifier that `pacs.selectors.build_query` reads, so
matching is exactly C-FIND's (PS3.4 C.2.2.2). The rows are narrowed to the studies the
person may see, paged with limit and offset, and read in one SQL statement; no file is
opened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
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
    SEQUENCE_ATTRIBUTES,
    SERIES,
    STUDY,
    STUDY_ROOT,
    attach_sequence_items,
    build_query,
    index_value,
    level_rows,
    records_of,
    sequence_condition,
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
    # Sequence matching keys: sequence keyword -> {item keyword: value} (one item, as C-FIND).
    sequences: dict[str, dict[str, str]] = field(default_factory=dict)
    # Sequence return keys: sequence keyword -> the item keywords to return.
    sequence_keys: dict[str, list[str]] = field(default_factory=dict)
    # Matching keys the index cannot answer, as the request named them; matched universally.
    unsupported: list[str] = field(default_factory=list)


# PS3.5 7.8.1: private groups are odd, but not 0001, 0003, 0005, 0007 or FFFF.
_NOT_PRIVATE_GROUPS = frozenset({0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF})


def _attribute_id(text: str) -> str | None:
    """The keyword of one attribute-id (PS3.18 8.3.4.1: a keyword or a tag of eight hex
    digits); None for a private data element, which the index never holds."""
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        tag = int(text, 16)
        keyword = keyword_for_tag(tag)
        if keyword:
            return str(keyword)
        group = tag >> 16
        if group % 2 and group not in _NOT_PRIVATE_GROUPS:
            return None
        raise QidoError(f"{text}: not a tag of the DICOM dictionary")
    if tag_for_keyword(text) is None:
        raise QidoError(f"{text}: not a DICOM keyword or tag")
    return text


def _attribute(text: str) -> list[str | None]:
    """The keywords along an attribute (PS3.18 8.3.4.1: attribute-ids joined by ".", each
    but the last a sequence)."""
    path = [_attribute_id(item) for item in text.strip().split(".")]
    for keyword in path[:-1]:
        if keyword is not None and dictionary_VR(keyword) != "SQ":
            raise QidoError(f"{text}: {keyword} is not a sequence")
    return path


def _keyword(attribute_id: str) -> str:
    """The keyword of a QIDO attributeID: a keyword or a tag of eight hex digits."""
    text = attribute_id.strip()
    if "." in text:
        raise QidoError(f"{text}: a path into a sequence is not a keyword here")
    keyword = _attribute_id(text)
    if keyword is None:
        raise QidoError(f"{text}: private data elements are not held by the archive")
    return keyword


def _level_of(keyword: str) -> str | None:
    attribute = ATTRIBUTES.get(keyword) or SEQUENCE_ATTRIBUTES.get(keyword)
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


def _check_level(name: str, keyword: str, level: str) -> None:
    attribute_level = _level_of(keyword)
    if attribute_level is not None and LEVELS.index(attribute_level) > LEVELS.index(level):
        raise QidoError(f"{name}: {keyword} is below the {level.lower()} level searched")


def _match_value(keyword: str, value: str) -> str:
    # PS3.18 8.3.4.1: a UID list is comma-separated in a URL; C-FIND separates by "\".
    return value.replace(",", "\\") if dictionary_VR(keyword) == "UI" else value


def parse_search(params: Any, level: str, fixed: dict[str, str], *, top: str) -> Search:
    """Read the query PARAMS (a QueryDict) of a search at LEVEL.

    FIXED holds the UIDs given in the path; TOP is the highest level whose attributes are
    returned by default (STUDY for /series and /instances outside a study).

    A matching key the index cannot answer (an attribute it does not hold, a private data
    element, an item of a sequence it does not hold) is not refused: as C-FIND does with an
    optional key it does not support (PS3.4 C.2.2.1.3), it is matched universally and not
    returned (PS3.18 10.6.3.3: the response holds the attributes passed "that are supported
    by the origin server"), and the view names it in a Warning (PS3.18 8.3.4.2 and 8.3.5.1.1
    warn of what was not supported in the same way).
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    includes: list[str] = []
    include_all = False
    sequences: dict[str, dict[str, str]] = {}
    sequence_keys: dict[str, list[str]] = {}
    unsupported: list[str] = []
    for name in params:
        if name in _CONTROL:
            continue
        path = _attribute(name)
        values = params.getlist(name)
        if len(values) > 1:
            raise QidoError(f"{name}: given more than once")
        top_keyword = path[0]
        if top_keyword is not None:
            _check_level(name, top_keyword, level)
        if len(path) == 1 and top_keyword in ATTRIBUTES:
            identifier.add(_element(top_keyword, _match_value(top_keyword, values[0])))
            continue
        sequence = SEQUENCE_ATTRIBUTES.get(top_keyword or "")
        item = path[1] if len(path) == 2 else None
        if sequence is not None and item is not None and item in sequence.items:
            sequences.setdefault(sequence.keyword, {})[item] = _match_value(item, values[0])
            sequence_keys.setdefault(sequence.keyword, []).append(item)
            continue
        if sequence is not None and len(path) == 1 and not values[0]:
            sequence_keys[sequence.keyword] = list(sequence.items)  # universal (C.2.2.2.6)
            continue
        unsupported.append(name)
    for keyword, uid in fixed.items():
        if keyword in identifier:
            raise QidoError(f"{keyword} is given in the path already")
        identifier.add(_element(keyword, uid))
    for value in params.getlist("includefield"):
        for item in value.split(","):
            text = item.strip()
            if text.lower() == "all":
                include_all = True
            elif "." in text:
                path = _attribute(text)
                sequence = SEQUENCE_ATTRIBUTES.get(path[0] or "")
                if sequence is not None and len(path) == 2 and path[1] in sequence.items:
                    sequence_keys.setdefault(sequence.keyword, []).append(str(path[1]))
            elif text:
                if _attribute_id(text) is None:
                    continue  # a private element: not held, so not returned (10.6.3.3)
                keyword = _keyword(text)
                if keyword in SEQUENCE_ATTRIBUTES:
                    sequence_keys[keyword] = list(SEQUENCE_ATTRIBUTES[keyword].items)
                else:
                    includes.append(keyword)
    fuzzy = params.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise QidoError("fuzzymatching: true or false")
    limit = min(_number(params, "limit", MAX_LIMIT), MAX_LIMIT)
    offset = _number(params, "offset", 0)
    keys = _return_keys(level, top, includes, include_all)
    if include_all:  # the sequences the index holds are attributes "available" too (8.3.4.3)
        for keyword, sequence in SEQUENCE_ATTRIBUTES.items():
            sequence_keys.setdefault(keyword, list(sequence.items))
    for keyword in keys:
        if keyword not in identifier:
            identifier.add(_element(keyword, ""))
    sequence_keys = {
        keyword: list(dict.fromkeys(items))
        for keyword, items in sequence_keys.items()
        if LEVELS.index(_level_of(keyword) or STUDY) <= LEVELS.index(level)
    }
    keys += list(sequence_keys)
    return Search(
        level,
        identifier,
        keys,
        limit,
        offset,
        fuzzy == "true",
        sequences,
        sequence_keys,
        unsupported,
    )


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
) -> tuple[list[dict[str, Any]], int]:
    """The matches of PARSED among VISIBLE studies in the DICOM JSON model, and how many more
    follow past the limit (PS3.18 8.3.4.4.1: "remaining"; counted only when there are some)."""
    query = build_query(parsed.identifier, STUDY_ROOT)
    conditions = query.conditions
    for keyword, values in parsed.sequences.items():
        conditions &= sequence_condition(keyword, values, parsed.level)
    query = replace(query, conditions=conditions)
    rows = list(level_rows(query, visible)[parsed.offset : parsed.offset + parsed.limit + 1])
    more = len(rows) > parsed.limit
    matches = [records_of(row, parsed.level) for row in rows[: parsed.limit]]
    for keyword, item_keywords in parsed.sequence_keys.items():
        attach_sequence_items(keyword, item_keywords, matches)  # one query per sequence
    results = [json_item(records, parsed.keys, retrieve_url(records)) for records in matches]
    remaining = level_rows(query, visible).count() - parsed.offset - len(results) if more else 0
    return results, remaining


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
    values = {keyword: index_value(keyword, records) for keyword in keys}
    values["RetrieveURL"] = retrieve_url
    item, non_ascii = _json_object(values)
    if non_ascii:  # as the C-FIND answer says it (PS3.5 6.1.2.3)
        item["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    return dict(sorted(item.items()))


def _json_object(values: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """VALUES by keyword as a DICOM JSON object, and whether a value needs more than ASCII;
    a sequence's value is a list of such dictionaries (PS3.18 F.2.2)."""
    item: dict[str, Any] = {}
    non_ascii = False
    for keyword, value in values.items():
        tag, vr = _json_key(keyword)
        element: dict[str, Any] = {"vr": vr}
        if vr == "SQ":
            if value:
                objects = [_json_object(one) for one in value]
                element["Value"] = [dict(sorted(one.items())) for one, _ in objects]
                non_ascii = non_ascii or any(flag for _, flag in objects)
            item[tag] = element
            continue
        found = value if isinstance(value, list) else [] if value in (None, "") else [value]
        if found:
            element["Value"] = [_json_value(v, vr) for v in found]
            non_ascii = non_ascii or any(isinstance(v, str) and not v.isascii() for v in found)
        item[tag] = element
    return item, non_ascii


def uids(records: dict[str, Any]) -> Iterator[str]:
    """The study, series and SOP instance UIDs of a result's records, as far as they go."""
    yield records["study"].study_instance_uid
    if "series" in records:
        yield records["series"].series_instance_uid
    if "instance" in records:
        yield records["instance"].sop_instance_uid
