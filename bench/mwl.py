#!/usr/bin/env python3
"""Modality Worklist latency: DCMTK findscu against `manage.py dicomserver` with 10,000 steps.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/mwl.py

(DATABASE_URL is used when BENCH_DATABASE_URL is not set; with neither, a scratch SQLite
file.) Fills a scratch database with STEPS scheduled procedure steps (bulk inserts, not
the booking service: 10 stations over 50 days, the past ones completed, a few
cancelled), starts the DICOM server as a department runs it, and times findscu -W for
a station's worklist for today and for a patient name wildcard. The C-FIND's latency is
read from findscu's own log (request sent to final response); the whole findscu process
and echoscu's (process start, association, C-ECHO, release) are given beside it.
A script, not a test: the figures go into the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

STATIONS = [f"CT{number}" for number in range(1, 6)] + [f"MR{number}" for number in range(1, 6)]
FAMILY_NAMES = [
    f"{stem}{suffix}"
    for stem in ("Bench", "Sample", "Probe", "Trial", "Dummy", "Proxy", "Model", "Mock")
    for suffix in ("ers", "man", "sen", "ova", "ez", "ini", "berg", "ström", "ley", "ford")
] + ["Müller", "山田"]
GIVEN_NAMES = ["Alex", "Kim", "Sam", "Robin", "Jo", "Charlie", "Taylor", "Noa"]
WILDCARD_NAME = "probeberg^s*"


def populate(database_url: str, steps: int) -> dt.date:
    """Write STEPS scheduled steps, with their patients, orders and procedures, in bulk.

    Return the department's today, the middle of the schedule.
    """
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(common.ROOT))
    import django

    django.setup()
    from django.db import connections, transaction
    from django.utils import timezone

    from ris.models import (
        AssigningAuthority,
        Order,
        Patient,
        PatientIdentifier,
        ProcedureType,
        RequestedProcedure,
        Room,
        ScheduledProcedureStep,
    )

    zone = timezone.get_current_timezone()
    today = timezone.localdate()
    with transaction.atomic():
        issuer = AssigningAuthority.objects.create(namespace_id="BENCH")
        procedures = {
            modality: ProcedureType.objects.create(
                code=f"{modality}BENCH", name=f"{modality} bench procedure", modality=modality
            )
            for modality in ("CT", "MR")
        }
        rooms = {
            station: Room.objects.create(
                name=f"Room {station}",
                modality=station[:2],
                station_ae_title=station,
                station_name=f"ROOM {station}",
                location="Level 1",
            )
            for station in STATIONS
        }
        patient_count = steps // 5
        patients = Patient.objects.bulk_create(
            Patient(
                family_name=FAMILY_NAMES[number % len(FAMILY_NAMES)],
                given_name=GIVEN_NAMES[number % len(GIVEN_NAMES)],
                birth_date=dt.date(1940 + number % 60, number % 12 + 1, number % 28 + 1),
                sex="FMOU"[number % 4],
            )
            for number in range(patient_count)
        )
        PatientIdentifier.objects.bulk_create(
            PatientIdentifier(patient=patient, value=f"MRN{number:07d}", issuer=issuer)
            for number, patient in enumerate(patients)
        )
        orders = Order.objects.bulk_create(
            Order(
                accession_number=f"B{number:09d}",
                filler_order_number=f"B{number:09d}",
                patient=patients[number % patient_count],
                referring_physician_name="Referrer^Rob",
                status=Order.Status.SCHEDULED,
            )
            for number in range(steps)
        )
        days = 50
        per_day = steps // (days * len(STATIONS)) or 1
        plan = []
        for number, order in enumerate(orders):
            station = STATIONS[number % len(STATIONS)]
            day_offset = (number // len(STATIONS)) // per_day - days // 2
            slot = (number // len(STATIONS)) % per_day
            start = dt.datetime.combine(
                today + dt.timedelta(days=day_offset), dt.time(7, 0), tzinfo=zone
            ) + dt.timedelta(minutes=30 * slot)
            if day_offset < 0:
                status = ScheduledProcedureStep.Status.COMPLETED
            elif number % 50 == 0:
                status = ScheduledProcedureStep.Status.CANCELLED
            else:
                status = ScheduledProcedureStep.Status.SCHEDULED
            plan.append((order, station, start, status))
        requested = RequestedProcedure.objects.bulk_create(
            RequestedProcedure(
                order=order,
                requested_procedure_id="1",
                procedure_type=procedures[station[:2]],
                description=procedures[station[:2]].name,
                study_instance_uid=generate_uid(),
            )
            for order, station, _, _ in plan
        )
        ScheduledProcedureStep.objects.bulk_create(
            ScheduledProcedureStep(
                requested_procedure=procedure,
                sps_id=f"S{number:09d}",
                modality=station[:2],
                station_ae_title=station,
                station_name=rooms[station].station_name,
                room=rooms[station],
                scheduled_start=start,
                scheduled_end=start + dt.timedelta(minutes=20),
                description=procedure.description,
                status=status,
            )
            for number, (procedure, (_, station, start, status)) in enumerate(
                zip(requested, plan, strict=True)
            )
        )
    connections.close_all()
    return today


def query_file(folder: Path, name: str, **keys: str) -> Path:
    """A modality's MWL query, with its usual return keys, as a Part 10 file for findscu."""
    sys.path.insert(0, str(common.ROOT))
    from tests.mwl_query import worklist_query

    ds = worklist_query(**keys)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.31")  # MWL FIND
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def count_replies(command: list[str], env: dict[str, str], folder: Path) -> int:
    folder.mkdir()
    subprocess.run([*command[:-3], "-X", "-od", str(folder), *command[-3:]], env=env, check=True)
    return len(list(folder.glob("rsp*.dcm")))


# findscu's own log, with microsecond timestamps: the C-FIND as DCMTK sees it, from
# the request sent to the final response, without process start or association.
LOGGER_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.ImmediateFlush = true
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%Q} %m%n
log4cplus.logger.dcmtk.dcmnet.responses = OFF
log4cplus.logger.dcmtk.apps.findscu = OFF
"""
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3})\.(\d{3}) (.*)$")


def _seconds(line: str) -> tuple[float, str] | None:
    match = _STAMP.match(line)
    if not match:
        return None
    hours, minutes, seconds, millis, micros, text = match.groups()
    moment = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return moment + int(millis) / 1e3 + int(micros) / 1e6, text


def c_find_time(log: str) -> float:
    """Seconds from "Sending Find Request" to "Received Final Find Response" in findscu's log."""
    sent = received = None
    for line in log.splitlines():
        parsed = _seconds(line)
        if parsed is None:
            continue
        moment, text = parsed
        if text.startswith("Sending Find Request"):
            sent = moment
        elif text.startswith("Received Final Find Response"):
            received = moment
    if sent is None or received is None:
        sys.exit(f"findscu's log lacks the request or the final response:\n{log}")
    return (received - sent) % 86400  # across midnight too


def timed_find(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run findscu; return the C-FIND's own time and the whole process's, in seconds."""
    start = time.perf_counter()
    result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    return c_find_time(result.stdout + result.stderr), elapsed


def drop_database(database_url: str) -> None:
    """Remove the scratch PostgreSQL database (a SQLite one goes with its folder)."""
    if database_url.startswith("postgres"):
        admin, name = database_url.rsplit("/", 1)
        subprocess.run(
            # FORCE: autovacuum may still be analysing the bulk inserts.
            ["psql", f"{admin}/postgres", "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
            check=False,
            capture_output=True,
        )
    else:
        common.cleanup(Path(database_url.removeprefix("sqlite:///")).parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=40, help="timed findscu runs per query")
    args = parser.parse_args()
    if not os.environ.get("BENCH_DATABASE_URL") and os.environ.get("DATABASE_URL"):
        os.environ["BENCH_DATABASE_URL"] = os.environ["DATABASE_URL"]
    database_url = common.scratch_database(f"rispacs_bench_mwl_{os.getpid()}")
    folder = Path(tempfile.mkdtemp(prefix="bench-mwl-"))
    env = common.archive_env(database_url, folder / "storage")
    try:
        common.migrate(env)
        started = time.perf_counter()
        today = populate(database_url, args.steps)
        print(f"{args.steps} steps written in {time.perf_counter() - started:.1f} s")
        print(f"database: {database_url.split('@')[-1]}")
        port = common.free_port()
        tools = dict(env, TCP_NODELAY="1")
        findscu, echoscu = common.dcmtk("findscu"), common.dcmtk("echoscu")
        target = ["-aet", "BENCHSCU", "-aec", common.ARCHIVE_AE, "127.0.0.1", str(port)]
        queries = {
            "station CT3, today": query_file(
                folder,
                "station",
                ScheduledStationAETitle="CT3",
                ScheduledProcedureStepStartDate=today.strftime("%Y%m%d"),
            ),
            f"patient name {WILDCARD_NAME}": query_file(folder, "name", PatientName=WILDCARD_NAME),
        }
        config = folder / "findscu-logger.cfg"
        config.write_text(LOGGER_CONFIG)
        with common.running_archive(env, port):
            echo = [echoscu, *target]
            for _ in range(3):
                timed(echo, tools)
            echo_median = common.median([timed(echo, tools) for _ in range(args.runs)])
            print(
                f"echoscu, whole process (start, association, C-ECHO, release): "
                f"median {echo_median * 1000:.1f} ms"
            )
            for label, path in queries.items():
                command = [findscu, "-W", *target, str(path)]
                replies = count_replies(command, tools, folder / label.split()[0])
                logged = [findscu, "-W", "-lc", str(config), *target, str(path)]
                for _ in range(3):
                    timed_find(logged, tools)
                runs = [timed_find(logged, tools) for _ in range(args.runs)]
                own = common.median([run[0] for run in runs])
                whole = common.median([run[1] for run in runs])
                print(
                    f"findscu -W {label}: {replies} match(es); C-FIND request to final "
                    f"response median {own * 1000:.1f} ms; whole process {whole * 1000:.1f} ms"
                )
    finally:
        common.cleanup(folder)
        drop_database(database_url)


if __name__ == "__main__":
    main()
