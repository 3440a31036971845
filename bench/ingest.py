#!/usr/bin/env python3
"""Ingest speed: DCMTK storescu sends a 500-instance 512x512 16-bit CT series to this archive
and to Orthanc (Debian's package), over one association and over two in parallel.

    TCP_NODELAY=1 BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/x \
        .venv/bin/python bench/ingest.py

Prints instances/s and MB/s for each server and each case. Both servers are durable:
Orthanc fsyncs each file by default; this archive fsyncs file and folder and commits the
index row before it answers. A script, not a test: the figures go into the README.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def make_series(folder: Path, count: int, size: int, label: str) -> list[Path]:
    """COUNT synthetic CT images of one series, written as Part 10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 4095, size=(size, size), dtype=np.uint16).tobytes()
    paths = []
    for number in range(1, count + 1):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = f"Bench^{label}", f"BENCH-{label}"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", f"B{label}"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, number
        ds.ImagePositionPatient = [0, 0, number]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(port: int, ae_title: str, batches: list[list[Path]]) -> float:
    """Send each batch over its own association, all at once; return the wall time."""
    env = dict(os.environ, TCP_NODELAY="1")
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                common.dcmtk("storescu"),
                "-aec",
                ae_title,
                "-xe",
                "127.0.0.1",
                str(port),
                *map(str, batch),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for batch in batches
    ]
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            sys.exit(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - started


def report(name: str, case: str, count: int, megabytes: float, seconds: float) -> dict[str, float]:
    rate = count / seconds
    print(
        f"{name:10s} {case:16s} {count:5d} instances {seconds:7.2f} s "
        f"{rate:8.1f} instances/s {megabytes / seconds:8.1f} MB/s",
        flush=True,
    )
    return {"rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds; medians reported"
    )
    parser.add_argument("--skip-orthanc", action="store_true")
    parser.add_argument(
        "--server-args", default="", help="extra arguments for manage.py dicomserver"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    database = common.scratch_database("rispacs_bench_ingest")
    env = common.archive_env(database, work / "archive" / "storage")
    common.migrate(env)
    servers = {"archive": (common.free_port(), common.ARCHIVE_AE)}
    rates: dict[tuple[str, int], list[float]] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            common.running_archive(env, servers["archive"][0], *args.server_args.split())
        )
        if not args.skip_orthanc:
            orthanc = common.orthanc_peer_module()
            dicom_port, http_port = common.free_port(), common.free_port()
            stack.enter_context(orthanc.peer(dicom_port, http_port))
            servers["orthanc"] = (dicom_port, "ORTHANC")
        for round_number in range(args.rounds):
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for name in order:
                port, ae_title = servers[name]
                # Fresh instances for every send: a duplicate would cost the archive nothing.
                label = f"{name[0].upper()}{round_number}"
                one = make_series(work / f"{label}-one", args.count, args.size, f"{label}A")
                two = make_series(work / f"{label}-two", args.count, args.size, f"{label}B")
                megabytes = sum(p.stat().st_size for p in one) / 1e6
                for associations, batches in ((1, [one]), (2, [two[::2], two[1::2]])):
                    os.sync()  # start each send with no earlier writes pending on the disk
                    seconds = send(port, ae_title, batches)
                    rate = report(
                        name, f"{associations} association(s)", args.count, megabytes, seconds
                    )["rate"]
                    rates.setdefault((name, associations), []).append(rate)
                common.cleanup(work / f"{label}-one", work / f"{label}-two")
    print(
        f"{args.count} CT instances of {args.size}x{args.size}x16 bit per send; "
        f"median of {args.rounds} round(s):"
    )
    for (name, associations), values in sorted(rates.items()):
        print(
            f"  {name:8s} {associations} association(s): {common.median(values):7.1f} instances/s"
        )
    if not args.skip_orthanc:
        for associations in (1, 2):
            ratio = common.median(rates[("archive", associations)]) / common.median(
                rates[("orthanc", associations)]
            )
            print(f"ratio archive/orthanc over {associations} association(s): {ratio:.2f}")
    common.cleanup(work)


if __name__ == "__main__":
    main()
