"""Writes of the archive: ingest an instance durably, delete a study, manage known nodes."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from core import audit
from pacs import journal, reconciliation
from pacs.dicom_header import HeaderError, InstanceHeader, read_header
from pacs.models import DicomNode, Instance, Series, Study
from pacs.storage import FileStorage, default_storage, instance_path
from ris import services as ris_services
from ris.models import Patient

logger = logging.getLogger(__name__)

IMPLEMENTATION_VERSION_NAME = "RISPACS_01"

# What to do when an instance already stored arrives again (settings.DICOM_DUPLICATE_POLICY).
KEEP = "keep"  # keep the stored one, answer success: the sender's retry is harmless
REPLACE = "replace"  # store the new one in its place and re-index it
REJECT = "reject"  # answer a failure, keep the stored one
DUPLICATE_POLICIES = (KEEP, REPLACE, REJECT)


class IngestError(Exception):
    """Storing failed; nothing was kept. `reason` is one of the REASON_* constants."""

    def __init__(self, reason: str, comment: str) -> None:
        super().__init__(comment)
        self.reason = reason
        self.comment = comment[:64]  # ErrorComment is LO (PS3.7 C.4.2.1.4)


REASON_UNREADABLE = "unreadable"
REASON_SOP_CLASS_MISMATCH = "sop-class-mismatch"
REASON_DUPLICATE = "duplicate"
REASON_OUT_OF_RESOURCES = "out-of-resources"


@dataclass
class IngestResult:
    instance_id: int
    study_id: int
    duplicate: bool = False


@dataclass
class AssociationCache:
    """Rows already looked up on this association: a series arrives instance after instance."""

    studies: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # uid -> (study id, patient id)
    series: dict[str, int] = field(default_factory=dict)


def delimited(values: list[str]) -> str:
    """Join VALUES with backslashes, with one at each end too ("\\CT\\SR\\"); empty for none."""
    return "\\" + "\\".join(values) + "\\" if values else ""


def _meta_element(tag: int, vr: bytes, value: bytes, pad: bytes = b" ") -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":  # PS3.5 7.1.2: reserved field and a 4-byte length
        return struct.pack("<HH2sHI", 0x0002, tag, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, tag, vr, len(value)) + value


def file_meta_bytes(header: InstanceHeader, transfer_syntax: str, calling_ae: str) -> bytes:
    """Encode the preamble, prefix and File Meta Information (PS3.10 7.1) for a received dataset:
    explicit VR little endian, byte for byte as pydicom's write_file_meta_info writes it."""
    elements = [
        _meta_element(0x0001, b"OB", b"\x00\x01"),  # File Meta Information Version
        _meta_element(0x0002, b"UI", header.sop_class_uid.encode("ascii"), b"\0"),
        _meta_element(0x0003, b"UI", header.sop_instance_uid.encode("ascii"), b"\0"),
        _meta_element(0x0010, b"UI", transfer_syntax.encode("ascii"), b"\0"),
        _meta_element(0x0012, b"UI", PYDICOM_IMPLEMENTATION_UID.encode("ascii"), b"\0"),
        _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
    ]
    if calling_ae:
        elements.append(_meta_element(0x0016, b"AE", calling_ae.encode("ascii")))
    body = b"".join(elements)
    group_length = _meta_element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


def ingest_instance(
    encoded: bytes,
    *,
    transfer_syntax: str,
    context_sop_class: str | None = None,
    calling_ae: str = "",
    source_address: str = "",
    storage: FileStorage | None = None,
    cache: AssociationCache | None = None,
) -> IngestResult:
    """Store ENCODED (a dataset as received, no file meta) durably, then index it.

    The file is written and fsynced before the index row commits, and the row commits
    before this returns: a caller that answers success after it never loses the instance.
    On any failure nothing stays behind, and IngestError says why.
    """
    header = _checked_header(encoded, transfer_syntax, context_sop_class)
    storage = storage or default_storage()
    cache = cache if cache is not None else AssociationCache()
    policy = settings.DICOM_DUPLICATE_POLICY
    relative = instance_path(
        header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
    )
    chunks = [file_meta_bytes(header, transfer_syntax, calling_ae), encoded]
    try:
        try:
            # Never over an existing file: one being there is the sign of a duplicate, and
            # finding it costs no query on the usual path, where there is none.
            size = storage.write(relative, chunks, replace=policy == REPLACE)
        except FileExistsError:
            stored = _stored(header.sop_instance_uid)
            if stored is not None:
                return _duplicate(stored, policy)
            # A file no row knows: left by a crash between its fsync and its commit.
            size = storage.write(relative, chunks, replace=True)
    except OSError as exc:
        logger.exception("cannot write %s", relative)
        raise IngestError(REASON_OUT_OF_RESOURCES, f"cannot write file: {exc.strerror}") from exc
    try:
        return _index(header, relative, size, transfer_syntax, calling_ae, source_address, cache)
    except _AlreadyIndexed:
        # Another association stored the same SOP instance meanwhile; the file at this
        # path serves its row too, so it stays.
        stored = _stored(header.sop_instance_uid)
        assert stored is not None
        return _duplicate(stored, policy)
    except Exception as exc:
        cache.studies.clear()
        cache.series.clear()
        if _stored(header.sop_instance_uid) is None:
            storage.delete(relative)  # nothing half-written stays behind
        logger.exception("cannot index %s", header.sop_instance_uid)
        raise IngestError(REASON_OUT_OF_RESOURCES, f"cannot index: {type(exc).__name__}") from exc


def _checked_header(
    encoded: bytes, transfer_syntax: str, context_sop_class: str | None
) -> InstanceHeader:
    try:
        header = read_header(encoded, transfer_syntax)
    except HeaderError as exc:
        raise IngestError(REASON_UNREADABLE, str(exc)) from exc
    if context_sop_class and header.sop_class_uid != context_sop_class:
        raise IngestError(
            REASON_SOP_CLASS_MISMATCH, "SOPClassUID does not match the presentation context"
        )
    return header


def receive_instance(
    encoded: bytes,
    *,
    transfer_syntax: str,
    context_sop_class: str | None = None,
    calling_ae: str = "",
    source_address: str = "",
    cache: AssociationCache | None = None,
) -> None:
    """C-STORE's intake: check ENCODED and make it durable before this returns.

    With the intake journal running (the dicomserver), the instance is durable in the
    journal when this returns and its index row follows a moment later (pacs.journal);
    without it, this is ingest_instance.
    """
    intake = journal.current()
    if intake is None:
        ingest_instance(
            encoded,
            transfer_syntax=transfer_syntax,
            context_sop_class=context_sop_class,
            calling_ae=calling_ae,
            source_address=source_address,
            cache=cache,
        )
        return
    header = _checked_header(encoded, transfer_syntax, context_sop_class)
    if settings.DICOM_DUPLICATE_POLICY == REJECT and _stored(header.sop_instance_uid):
        raise IngestError(REASON_DUPLICATE, "SOP instance already stored")
    try:
        intake.accept(
            header,
            [file_meta_bytes(header, transfer_syntax, calling_ae), encoded],
            transfer_syntax=transfer_syntax,
            calling_ae=calling_ae,
            source_address=source_address,
        )
    except OSError as exc:
        logger.exception("cannot journal %s", header.sop_instance_uid)
        raise IngestError(REASON_OUT_OF_RESOURCES, f"cannot write file: {exc.strerror}") from exc


# Study and series rows the indexer thread has looked up (it indexes for every association).
_INDEXER_CACHE = AssociationCache()
_INDEXER_CACHE_LIMIT = 10_000


def index_journal_entry(entry: journal.Entry, storage: FileStorage) -> None:
    """Give a journaled instance its place in the archive and its index row (idempotent)."""
    header = entry.header
    relative = instance_path(
        header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
    )
    replace = settings.DICOM_DUPLICATE_POLICY == REPLACE
    try:
        storage.adopt(entry.path, relative, replace=replace)
    except FileExistsError:
        if _stored(header.sop_instance_uid) is not None:
            return  # the same instance again: the stored one is kept
        storage.adopt(entry.path, relative, replace=True)  # left by a crash before its commit
    cache = _INDEXER_CACHE
    if len(cache.series) > _INDEXER_CACHE_LIMIT:
        cache.studies.clear()
        cache.series.clear()
    try:
        _index(
            header,
            relative,
            entry.size,
            entry.transfer_syntax,
            entry.calling_ae,
            entry.source_address,
            cache,
        )
    except _AlreadyIndexed:
        return
    except Exception:
        cache.studies.clear()
        cache.series.clear()
        if _stored(header.sop_instance_uid) is None:
            storage.delete(relative)  # the journal entry still holds it; retried from there
        raise


def index_journal_entries(
    entries: list[journal.Entry], storage: FileStorage
) -> list[journal.Entry]:
    """Index journaled instances of series already indexed together: their names made
    durable with one fsync per folder, their rows inserted and counted in one statement
    (PostgreSQL). Return the entries left for index_journal_entry, one at a time: those of
    new series, a name already taken, an instance twice, or any other vendor or policy."""
    if connection.vendor != "postgresql" or settings.DICOM_DUPLICATE_POLICY == REPLACE:
        return entries
    cache = _INDEXER_CACHE
    together: list[journal.Entry] = []
    left: list[journal.Entry] = []
    seen: set[str] = set()
    for entry in entries:
        header = entry.header
        if header.series_instance_uid in cache.series and header.sop_instance_uid not in seen:
            seen.add(header.sop_instance_uid)
            together.append(entry)
        else:
            left.append(entry)
    if len(together) < 2:
        return entries
    paths = [
        instance_path(
            entry.header.study_instance_uid,
            entry.header.series_instance_uid,
            entry.header.sop_instance_uid,
        )
        for entry in together
    ]
    pairs = [(entry.path, path) for entry, path in zip(together, paths, strict=True)]
    adopted = storage.adopt_all(pairs)
    rows = []
    for entry, path, new_name in zip(together, paths, adopted, strict=True):
        if not new_name:
            left.append(entry)  # stored before, or left by a crash: index_journal_entry knows
            continue
        header = entry.header
        rows.append(
            _instance_row(
                header,
                cache.series[header.series_instance_uid],
                entry.transfer_syntax,
                path,
                entry.size,
            )
        )
    if rows:
        try:
            _insert_all_counted_postgresql(rows)
        except Exception:
            cache.studies.clear()
            cache.series.clear()
            raise  # the journal indexes them one at a time (the names it has are reused)
    return left


def _insert_all_sql(count: int) -> str:
    instance, series, study = Instance._meta, Series._meta, Study._meta
    columns = [str(getattr(instance.get_field(name), "column")) for name in _ROW_FIELDS]  # noqa: B009
    placeholders = "(" + ", ".join(["%s"] * len(_ROW_FIELDS)) + ", NOW())"
    series_study = str(getattr(series.get_field("study"), "column"))  # noqa: B009
    # Only table and column names of our own models are formatted in; values are parameters.
    return (
        f'WITH new AS (INSERT INTO "{instance.db_table}" ({", ".join(columns)}, received_at) '  # noqa: S608
        f"VALUES {', '.join([placeholders] * count)} ON CONFLICT (sop_instance_uid) DO NOTHING "
        f"RETURNING series_id, file_size), "
        f"per_series AS (SELECT series_id, COUNT(*) AS n, SUM(file_size) AS size FROM new "
        f"GROUP BY series_id), "
        f'counted_series AS (UPDATE "{series.db_table}" AS s SET number_of_instances = '
        f"s.number_of_instances + p.n FROM per_series AS p WHERE s.id = p.series_id "
        f"RETURNING s.{series_study} AS study_id, p.n, p.size), "
        f'counted_study AS (UPDATE "{study.db_table}" AS t SET number_of_instances = '
        f"t.number_of_instances + c.n, size_bytes = t.size_bytes + c.size, updated_at = NOW() "
        f"FROM (SELECT study_id, SUM(n) AS n, SUM(size) AS size FROM counted_series "
        f"GROUP BY study_id) AS c WHERE t.id = c.study_id) "
        f"SELECT COUNT(*) FROM new"
    )


def _insert_all_counted_postgresql(rows: list[dict[str, Any]]) -> int:
    """Insert ROWS (a row already there is kept), counted in their series and studies, in
    one statement; return how many were new."""
    params = [row[name] for row in rows for name in _ROW_FIELDS]
    with connection.cursor() as cursor:
        cursor.execute(_insert_all_sql(len(rows)), params)
        found = cursor.fetchone()
    return int(found[0]) if found else 0


class _AlreadyIndexed(Exception):
    """The instance row exists already (inserted by a parallel association)."""


def _stored(sop_instance_uid: str) -> tuple[int, int] | None:
    """(instance id, study id) of a stored SOP instance, or None."""
    return (
        Instance.objects.filter(sop_instance_uid=sop_instance_uid)
        .values_list("pk", "series__study_id")
        .first()
    )


def _duplicate(stored: tuple[int, int], policy: str) -> IngestResult:
    if policy == REJECT:
        raise IngestError(REASON_DUPLICATE, "SOP instance already stored")
    return IngestResult(instance_id=stored[0], study_id=stored[1], duplicate=True)


def _patient_for(header: InstanceHeader, calling_ae: str, source_address: str) -> Patient:
    """The RIS patient with this PatientID from this issuer; registered from the header if new."""
    issuer = header.issuer_of_patient_id or settings.DICOM_DEFAULT_ISSUER
    if header.patient_id:
        found = ris_services.find_patient_by_identifier(header.patient_id, issuer)
        if found is not None:
            return found
    family, given, middle = ([*header.patient_name.split("=", 1)[0].split("^"), "", ""])[:3]
    data = ris_services.PatientInput(
        family_name=family.strip() or "UNKNOWN",
        given_name=given.strip(),
        middle_name=middle.strip(),
        birth_date=header.patient_birth_date,
        sex=header.patient_sex if header.patient_sex in ("M", "F", "O") else "U",
        identifiers=(
            [ris_services.IdentifierInput(header.patient_id, issuer)] if header.patient_id else []
        ),
    )
    try:
        with transaction.atomic():
            return ris_services.register_patient(
                data,
                actor_name=calling_ae,
                channel=audit.Channel.DICOM,
                source_address=source_address,
            )
    except Exception:
        # Registered by a parallel association a moment ago (identifier unique per issuer).
        found = (
            ris_services.find_patient_by_identifier(header.patient_id, issuer)
            if header.patient_id
            else None
        )
        if found is None:
            raise
        return found


def _study_for(
    header: InstanceHeader, calling_ae: str, source_address: str, cache: AssociationCache
) -> tuple[int, int, bool]:
    """(study id, patient id, whether the row was created now)."""
    cached = cache.studies.get(header.study_instance_uid)
    if cached is not None:
        return (*cached, False)
    created = False
    row = (
        Study.objects.filter(study_instance_uid=header.study_instance_uid)
        .values_list("pk", "patient_id")
        .first()
    )
    if row is None:
        patient = _patient_for(header, calling_ae, source_address)
        study, created = Study.objects.get_or_create(
            study_instance_uid=header.study_instance_uid,
            defaults={
                "patient": patient,
                "patient_name": header.patient_name,
                "patient_name_match": header.patient_name.upper(),
                "dicom_patient_id": header.patient_id,
                "issuer_of_patient_id": header.issuer_of_patient_id,
                "patient_birth_date": header.patient_birth_date,
                "patient_sex": header.patient_sex,
                "study_date": header.study_date,
                "study_time": header.study_time,
                "accession_number": header.accession_number,
                "study_id": header.study_id,
                "study_description": header.study_description,
                "referring_physician_name": header.referring_physician_name,
                "specific_character_set": header.specific_character_set,
            },
        )
        row = (study.pk, study.patient_id)
    cache.studies[header.study_instance_uid] = row
    return (*row, created)


def _series_for(
    header: InstanceHeader, study_id: int, calling_ae: str, cache: AssociationCache
) -> tuple[int, bool]:
    """(series id, whether the row was created now)."""
    cached = cache.series.get(header.series_instance_uid)
    if cached is not None:
        return cached, False
    created = False
    series_id = (
        Series.objects.filter(series_instance_uid=header.series_instance_uid)
        .values_list("pk", flat=True)
        .first()
    )
    if series_id is None:
        series, created = Series.objects.get_or_create(
            series_instance_uid=header.series_instance_uid,
            defaults={
                "study_id": study_id,
                "modality": header.modality,
                "series_number": header.series_number,
                "series_description": header.series_description,
                "body_part_examined": header.body_part_examined,
                "series_date": header.series_date,
                "series_time": header.series_time,
                "station_name": header.station_name,
                "institution_name": header.institution_name,
                "sending_ae_title": calling_ae,
            },
        )
        series_id = series.pk
        if created:
            _count_new_series(study_id)
    cache.series[header.series_instance_uid] = series_id
    return series_id, created


def _count_new_series(study_id: int) -> None:
    """Recount the study's series and modalities, under the study's row lock."""
    study = Study.objects.select_for_update().get(pk=study_id)
    modalities = sorted(
        set(Series.objects.filter(study_id=study_id).values_list("modality", flat=True)) - {""}
    )
    study.number_of_series = Series.objects.filter(study_id=study_id).count()
    study.modalities_in_study = delimited(modalities)
    study.save(update_fields=["number_of_series", "modalities_in_study", "updated_at"])


def _index(
    header: InstanceHeader,
    relative: str,
    size: int,
    transfer_syntax: str,
    calling_ae: str,
    source_address: str,
    cache: AssociationCache,
) -> IngestResult:
    if header.series_instance_uid not in cache.series:
        with transaction.atomic():
            study_id, _patient_id, new_study = _study_for(header, calling_ae, source_address, cache)
            _series_id, new_series = _series_for(header, study_id, calling_ae, cache)
        if new_study or new_series:
            # Once per new study (match it to its order), once per new series (re-check its
            # identity); instances of known series cost nothing here.
            reconciliation.after_index(study_id, header, new_study=new_study)
    study_id, _ = cache.studies[header.study_instance_uid]
    series_id = cache.series[header.series_instance_uid]
    row = _instance_row(header, series_id, transfer_syntax, relative, size)
    if settings.DICOM_DUPLICATE_POLICY == REPLACE and _stored(header.sop_instance_uid):
        return _reindex(row, study_id, size)
    if connection.vendor == "postgresql":
        instance_id = _insert_counted_postgresql(row, study_id, size)
    else:
        instance_id = _insert_counted(row, study_id, size)
    if instance_id is None:
        raise _AlreadyIndexed
    return IngestResult(instance_id=instance_id, study_id=study_id)


def _instance_row(
    header: InstanceHeader, series_id: int, transfer_syntax: str, relative: str, size: int
) -> dict[str, Any]:
    """The index row of one stored instance, by field name (see _ROW_FIELDS)."""
    return {
        "series_id": series_id,
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "instance_number": header.instance_number,
        "number_of_frames": header.number_of_frames,
        "rows": header.rows,
        "columns": header.columns,
        "bits_allocated": header.bits_allocated,
        "transfer_syntax_uid": transfer_syntax,
        "file_path": relative,
        "file_size": size,
    }


def _insert_counted(row: dict[str, Any], study_id: int, size: int) -> int | None:
    """Insert the instance row and count it in its series and study, in one transaction."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                instance_id = Instance.objects.create(**row).pk
        except IntegrityError:
            return None
        Series.objects.filter(pk=row["series_id"]).update(
            number_of_instances=F("number_of_instances") + 1
        )
        Study.objects.filter(pk=study_id).update(
            number_of_instances=F("number_of_instances") + 1, size_bytes=F("size_bytes") + size
        )
    return instance_id


def _postgresql_insert_sql() -> str:
    instance, series, study = Instance._meta, Series._meta, Study._meta
    columns = [str(getattr(instance.get_field(name), "column")) for name in _ROW_FIELDS]  # noqa: B009
    values = ", ".join(f"%({name})s" for name in _ROW_FIELDS)
    # Only table and column names of our own models are formatted in; values are parameters.
    return (
        f'WITH new AS (INSERT INTO "{instance.db_table}" ({", ".join(columns)}, received_at) '  # noqa: S608
        f"VALUES ({values}, NOW()) ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id), "
        f'counted_series AS (UPDATE "{series.db_table}" SET number_of_instances = '
        f"number_of_instances + 1 WHERE id = %(series_id)s AND EXISTS (SELECT 1 FROM new)), "
        f'counted_study AS (UPDATE "{study.db_table}" SET number_of_instances = '
        f"number_of_instances + 1, size_bytes = size_bytes + %(size)s, updated_at = NOW() "
        f"WHERE id = %(study_id)s AND EXISTS (SELECT 1 FROM new)) "
        f"SELECT id FROM new"
    )


_ROW_FIELDS = (
    "series_id",
    "sop_instance_uid",
    "sop_class_uid",
    "instance_number",
    "number_of_frames",
    "rows",
    "columns",
    "bits_allocated",
    "transfer_syntax_uid",
    "file_path",
    "file_size",
)
_INSERT_SQL: list[str] = []


def _insert_counted_postgresql(row: dict[str, Any], study_id: int, size: int) -> int | None:
    """The same as _insert_counted in one statement: one round trip, one commit (hot path)."""
    if not _INSERT_SQL:
        _INSERT_SQL.append(_postgresql_insert_sql())
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_SQL[0], {**row, "study_id": study_id, "size": size})
        found = cursor.fetchone()
    return int(found[0]) if found else None


def _reindex(row: dict[str, Any], study_id: int, size: int) -> IngestResult:
    """The REPLACE policy: the same row takes the new file and attributes."""
    with transaction.atomic():
        replaced = Instance.objects.select_for_update().get(
            sop_instance_uid=row["sop_instance_uid"]
        )
        old_size, old_series = replaced.file_size, replaced.series_id
        Instance.objects.filter(pk=replaced.pk).update(**row)
        Series.objects.filter(pk=old_series).update(
            number_of_instances=F("number_of_instances") - 1
        )
        Study.objects.filter(series__pk=old_series).update(
            number_of_instances=F("number_of_instances") - 1, size_bytes=F("size_bytes") - old_size
        )
        Series.objects.filter(pk=row["series_id"]).update(
            number_of_instances=F("number_of_instances") + 1
        )
        Study.objects.filter(pk=study_id).update(
            number_of_instances=F("number_of_instances") + 1, size_bytes=F("size_bytes") + size
        )
    return IngestResult(instance_id=replaced.pk, study_id=study_id)


def add_node(
    ae_title: str,
    host: str,
    port: int,
    *,
    may_store: bool = True,
    may_query: bool = True,
    may_retrieve: bool = True,
    description: str = "",
) -> DicomNode:
    """Register (or update) a known DICOM node."""
    node, _ = DicomNode.objects.update_or_create(
        ae_title=ae_title,
        defaults={
            "host": host,
            "port": port,
            "may_store": may_store,
            "may_query": may_query,
            "may_retrieve": may_retrieve,
            "description": description,
        },
    )
    return node


def remove_node(ae_title: str) -> bool:
    deleted, _ = DicomNode.objects.filter(ae_title=ae_title).delete()
    return bool(deleted)


def delete_study(
    study: Study,
    *,
    actor: Any,
    reason: str = "",
    source_address: str = "",
    channel: str = audit.Channel.WEB,
    storage: FileStorage | None = None,
) -> int:
    """Delete STUDY from the index, audited, and its files once that has committed.

    ACTOR is the person deleting (a User). Returns the number of instances deleted.
    The files go only after the commit, so a failed commit never leaves rows pointing
    at missing files; a crash between the two leaves orphan files, which is harmless.
    """
    storage = storage or default_storage()
    with transaction.atomic():
        locked = Study.objects.select_for_update().filter(pk=study.pk).first()
        if locked is None:
            raise Study.DoesNotExist(f"study {study.pk} is already deleted")
        files = list(
            Instance.objects.filter(series__study=locked).values_list("file_path", "file_size")
        )
        detail = f"{len(files)} instance(s), {sum(size for _, size in files)} bytes"
        audit.record(
            audit.Action.DELETE,
            locked,
            actor=actor,
            channel=channel,
            source_address=source_address,
            detail=f"{detail}; reason: {reason.strip()}" if reason.strip() else detail,
        )
        Instance.objects.filter(series__study=locked).delete()
        Series.objects.filter(study=locked).delete()
        locked.delete()
        paths = [path for path, _ in files]
        transaction.on_commit(lambda: _remove_study_files(paths, storage), robust=True)
    return len(files)


def _remove_study_files(paths: list[str], storage: FileStorage) -> None:
    """Remove the files of a deleted study, sparing any that a new row has taken since."""
    taken: set[str] = set()
    for start in range(0, len(paths), 500):
        taken.update(
            Instance.objects.filter(file_path__in=paths[start : start + 500]).values_list(
                "file_path", flat=True
            )
        )
    for path in paths:
        if path in taken:
            continue  # the same instance was stored again after the deletion
        try:
            storage.delete(path)
        except OSError:
            logger.exception("cannot remove %s of a deleted study", path)
