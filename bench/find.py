#!/usr/bin/env python3
"""C-FIND latency: DCMTK findscu against this archive holding 100,000 studies and against
Orthanc (Debian's package) holding 2,000, for a PatientID match, a name wildcard and a
date range. Median of repeated queries; findscu's own start-up is measured with echoscu.
Both servers run at once and each measure alternates between them, so that the machine's
drift (these machines are shared) weighs on both alike. Then the same associations are
replayed from this process (bench/replay.py): connect to A-RELEASE-RP, the servers' own
share without findscu's start-up.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/x .venv/bin/python bench/find.py

The archive's index is filled straight into the database (no files: C-FIND answers from
the index alone); Orthanc's through C-STORE of one small instance per study.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import replay
from pydicom.dataset import Dataset

FAMILY = [
    "Smith",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Lopez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
]
GIVEN = ["Alex", "Sam", "Robin", "Kim", "Lee", "Jordan", "Casey", "Morgan", "Taylor", "Jamie"]


# Both servers hold the same five "needle" studies (the first five), so that each query
# matches the same few studies in both however many others there are.
NEEDLES = 5


def synthetic_study(number: int, rng: random.Random) -> dict[str, object]:
    day = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(365 * 6))
    family = f"{rng.choice(FAMILY)}{number % 97}"
    if number < NEEDLES:
        day, family = dt.date(2019, 6, 12 + number), f"Needle{number}"
    return {
        "patient_name": f"{family}^{rng.choice(GIVEN)}",
        "patient_id": f"PID{number:07d}",
        "study_date": day,
        "accession": f"ACC{number:08d}",
        "modality": rng.choice(["CT", "MR", "US", "CR", "MG"]),
    }


def fill_archive(env: dict[str, str], count: int) -> None:
    """Insert COUNT studies (with a patient, a series and an instance row each) in bulk."""
    code = f"""
import random, django
django.setup()
from django.db import transaction
from pacs.models import Study, Series, Instance
from ris.models import Patient
import find as bench
rng = random.Random(1)
batch = 5000
for start in range(0, {count}, batch):
    rows = [bench.synthetic_study(n, rng) for n in range(start, min(start + batch, {count}))]
    with transaction.atomic():
        patients = Patient.objects.bulk_create(
            [Patient(family_name=r["patient_name"].split("^")[0]) for r in rows])
        studies = Study.objects.bulk_create([
            Study(study_instance_uid=f"1.2.826.0.1.3680043.8.498.{{n + 1}}", patient=p,
                  patient_name=r["patient_name"], patient_name_match=r["patient_name"].upper(),
                  dicom_patient_id=r["patient_id"], study_date=r["study_date"],
                  study_time="101500", accession_number=r["accession"],
                  modalities_in_study="\\\\" + r["modality"] + "\\\\",
                  number_of_series=1, number_of_instances=1)
            for n, (r, p) in enumerate(zip(rows, patients), start=start)])
        series = Series.objects.bulk_create([
            Series(study=s, series_instance_uid=s.study_instance_uid + ".1", modality=r["modality"],
                   number_of_instances=1) for s, r in zip(studies, rows)])
        Instance.objects.bulk_create([
            Instance(series=se, sop_instance_uid=se.series_instance_uid + ".1",
                     sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                     transfer_syntax_uid="1.2.840.10008.1.2.1",
                     file_path="none") for se in series])
from django.db import connection
if connection.vendor == "postgresql":
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
"""
    subprocess.run(
        [common.PYTHON, "-c", code],
        cwd=common.ROOT,
        check=True,
        env={
            **env,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONPATH": f"{common.ROOT}:{Path(__file__).resolve().parent}",
        },
    )


def fill_orthanc(port: int, count: int, folder: Path) -> None:
    """Store COUNT one-instance studies into Orthanc with storescu."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = random.Random(1)
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        study = synthetic_study(number, rng)
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientName, ds.PatientID = study["patient_name"], study["patient_id"]
        ds.StudyDate = study["study_date"].strftime("%Y%m%d")  # type: ignore[attr-defined]
        ds.StudyTime, ds.AccessionNumber, ds.Modality = (
            "101500",
            study["accession"],
            study["modality"],
        )
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = b"\0" * 128
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{number:06d}.dcm", enforce_file_format=True)
    files = sorted(str(p) for p in folder.iterdir())
    for start in range(0, len(files), 500):
        subprocess.run(
            [
                common.dcmtk("storescu"),
                "-aec",
                "ORTHANC",
                "127.0.0.1",
                str(port),
                *files[start : start + 500],
            ],
            check=True,
            capture_output=True,
            env=dict(os.environ, TCP_NODELAY="1"),
        )


QUERIES = {
    "PatientID match (1 study)": ["-k", "PatientID=PID0000003"],
    "name wildcard (5 studies)": ["-k", "PatientName=needle*"],
    "date range (5 studies)": ["-k", "StudyDate=20190610-20190620"],
}


def time_command(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, env=dict(os.environ, TCP_NODELAY="1"))
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed: {result.stderr.decode()[-400:]}")
    return elapsed


def _findscu(port: int, ae_title: str, keys: list[str]) -> list[str]:
    return [
        common.dcmtk("findscu"),
        "-S",
        "-aec",
        ae_title,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID",
        "-k",
        "PatientName",
        "-k",
        "PatientID",
        "-k",
        "StudyDate",
        "-k",
        "AccessionNumber",
        "-k",
        "ModalitiesInStudy",
        "-k",
        "NumberOfStudyRelatedInstances",
        *keys,
        "127.0.0.1",
        str(port),
    ]


def _identifier(keys: list[str]) -> Dataset:
    """The identifier findscu sends for KEYS, for the replayed association."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in (
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    ):
        setattr(ds, keyword, "")
    for key in keys[1::2]:
        keyword, value = key.split("=", 1)
        setattr(ds, keyword, value)
    return ds


def _findscu_timer(keys: list[str]) -> Callable[[int, str], float]:
    return lambda port, ae: time_command(_findscu(port, ae, keys))


def _replay_timer(keys: list[str]) -> Callable[[int, str], float]:
    return lambda port, ae: replay.find(port, ae, "FINDSCU", _identifier(keys))[0]


def measure(servers: dict[str, tuple[int, str]], repeat: int) -> None:
    """Median latencies for each server, their runs alternated (archive, Orthanc, Orthanc,
    archive, ...) so that the machine's drift weighs on both alike."""
    lines: list[tuple[str, str, str]] = []
    tools: dict[str, Callable[[int, str], float]] = {
        "echoscu (start-up and association)": lambda port, ae: time_command(
            [common.dcmtk("echoscu"), "-aec", ae, "127.0.0.1", str(port)]
        ),
    }
    for label, keys in QUERIES.items():
        tools[label] = _findscu_timer(keys)
    # The server's own share: the same association replayed from a running process.
    tools["C-ECHO association, replayed"] = lambda port, ae: replay.echo(port, ae, "FINDSCU")
    for label, keys in QUERIES.items():
        tools[f"{label.split(' (')[0]}, replayed"] = _replay_timer(keys)
    order = list(servers.items())
    for label, tool in tools.items():
        times: dict[str, list[float]] = {name: [] for name in servers}
        for turn in range(repeat):
            # Each server goes first every other turn: what one leaves to do after its
            # answer (its audit rows, closing) then weighs on both alike.
            for name, (port, ae_title) in order[:: -1 if turn % 2 else 1]:
                times[name].append(tool(port, ae_title))
        for name in servers:
            lines.append((name, label, f"median {common.median(times[name]) * 1000:6.1f} ms"))
        if len(servers) == 2:
            # findscu's own start-up swings by several ms from run to run: the median of the
            # differences between the two runs of each turn says more than two medians.
            first, second = (times[name] for name in servers)
            gaps = [a - b for a, b in zip(first, second, strict=True)]
            names = " - ".join(servers)
            figure = f"median {common.median(gaps) * 1000:+6.2f} ms"
            lines.append(("~" + names, label, figure))
    for name, label, figure in sorted(lines, key=lambda line: line[0]):
        print(f"{name:8s} {label:42s} {figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--orthanc-studies", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=201)
    parser.add_argument("--skip-orthanc", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-find-"))
    database = common.scratch_database("rispacs_bench_find")
    env = common.archive_env(database, work / "storage")
    common.migrate(env)
    started = time.perf_counter()
    fill_archive(env, args.studies)
    print(f"archive holds {args.studies} studies (filled in {time.perf_counter() - started:.0f} s)")
    port = common.free_port()
    with contextlib.ExitStack() as stack:
        stack.enter_context(common.running_archive(env, port))
        servers = {"archive": (port, common.ARCHIVE_AE)}
        if not args.skip_orthanc:
            orthanc = common.orthanc_peer_module()
            dicom_port, http_port = common.free_port(), common.free_port()
            stack.enter_context(orthanc.peer(dicom_port, http_port))
            fill_orthanc(dicom_port, args.orthanc_studies, work / "orthanc-files")
            print(f"orthanc holds {args.orthanc_studies} studies")
            servers["orthanc"] = (dicom_port, "ORTHANC")
        measure(servers, args.repeat)
    common.cleanup(work)


if __name__ == "__main__":
    main()
