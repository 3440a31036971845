"""A study as a zip file, written while it is sent, so that it is never whole in memory.

Entries are named for people: one folder for the study, one per series
("S002_CT_Axial"), one file per instance ("I00017.dcm"); the files are the
stored Part 10 files, byte for byte. No DICOMDIR.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from pacs.models import Instance, Study
from pacs.storage import Storage

CHUNK_SIZE = 1 << 20  # read stored files a megabyte at a time
# Native pixel data deflates to about half at the fastest level; compressed data costs little.
COMPRESSION = zipfile.ZIP_DEFLATED
COMPRESS_LEVEL = 1

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(frozen=True)
class ZipEntry:
    name: str  # the path inside the zip
    relative_path: str  # the stored file, relative to the storage root
    size: int
    modified: dt.datetime


def safe_name(text: str, fallback: str, *, limit: int = 48) -> str:
    """Turn TEXT into a file-name part any system accepts (ASCII letters, digits, . - _)."""
    name = _UNSAFE.sub("_", text).strip("._")[:limit].rstrip("._")
    return name or fallback


def study_folder(study: Study) -> str:
    """The zip's top folder (and file) name: accession or patient ID, and the study date."""
    label = safe_name(study.accession_number or study.dicom_patient_id, "study")
    date = study.study_date.strftime("%Y%m%d") if study.study_date else ""
    return f"{label}_{date}" if date else label


def _unique(stem: str, suffix: str, used: set[str]) -> str:
    """STEM + SUFFIX, or STEM_2 + SUFFIX and so on if USED has it (compared without case)."""
    candidate, counter = stem + suffix, 2
    while candidate.lower() in used:  # case-insensitive file systems too
        candidate = f"{stem}_{counter}{suffix}"
        counter += 1
    used.add(candidate.lower())
    return candidate


def zip_entries(study: Study, instances: Iterable[Instance]) -> list[ZipEntry]:
    """Name each of INSTANCES (with their series, in order) inside the study's zip."""
    top = study_folder(study)
    used: set[str] = set()
    series_folders: dict[int, str] = {}
    names_in_series: dict[int, set[str]] = {}
    position: dict[int, int] = {}
    entries = []
    for instance in instances:
        series = instance.series
        folder = series_folders.get(series.pk)
        if folder is None:
            label = f"S{series.series_number:03d}" if series.series_number is not None else "S"
            parts = [
                label,
                safe_name(series.modality, ""),
                safe_name(series.series_description, ""),
            ]
            folder = _unique("_".join(part for part in parts if part), "", used)
            series_folders[series.pk] = folder
            names_in_series[series.pk] = set()
        position[series.pk] = position.get(series.pk, 0) + 1
        number = instance.instance_number
        if number is None:
            number = position[series.pk]
        name = _unique(f"I{number:05d}", ".dcm", names_in_series[series.pk])
        entries.append(
            ZipEntry(
                name=f"{top}/{folder}/{name}",
                relative_path=instance.file_path,
                size=instance.file_size,
                modified=instance.received_at,
            )
        )
    return entries


class _Pipe(io.RawIOBase):
    """A write-only, unseekable sink whose bytes are taken out as they come."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self.pending = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self.pending += len(chunk)
        return len(chunk)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.pending = 0
        return data


def _zip_time(moment: dt.datetime) -> tuple[int, int, int, int, int, int]:
    local = timezone.localtime(moment) if timezone.is_aware(moment) else moment
    local = max(local, local.replace(year=1980, month=1, day=1, hour=0, minute=0, second=0))
    return (local.year, local.month, local.day, local.hour, local.minute, local.second)


def stream_zip(entries: Iterable[ZipEntry], storage: Storage) -> Iterator[bytes]:
    """Yield a zip of ENTRIES, read from STORAGE, a piece at a time.

    The sink is unseekable, so zipfile writes each entry's sizes and CRC after its
    data (a data descriptor) and the central directory at the end: nothing waits for
    the whole archive, and memory holds about one chunk.
    """
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", compression=COMPRESSION, compresslevel=COMPRESS_LEVEL) as zf:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=_zip_time(entry.modified))
            info.compress_type = COMPRESSION
            info.file_size = entry.size  # lets zipfile choose Zip64 for a file over 4 GB
            with storage.open(entry.relative_path) as source, zf.open(info, "w") as target:
                while chunk := source.read(CHUNK_SIZE):
                    target.write(chunk)
                    if pipe.pending >= CHUNK_SIZE:
                        yield pipe.take()
            if pipe.pending:
                yield pipe.take()
    yield pipe.take()
