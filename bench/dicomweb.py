#!/usr/bin/env python3
"""DICOMweb: QIDO-RS study search and WADO-RS series retrieve, this archive beside Orthanc's
DICOMweb plugin (Debian's orthanc and orthanc-dicomweb), and the viewer's time to first image.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/x .venv/bin/python bench/dicomweb.py

The archive's index holds --studies studies (filled straight into the database, as
bench/find.py does) and Orthanc --orthanc-studies (through C-STORE); both then receive the
same --count-instance CT series by storescu. QIDO is timed over one kept-alive HTTP
connection (median); WADO-RS retrieves the whole series as multipart/related (median MB/s of
--rounds) twice, each server asked the same: with `transfer-syntax=*` (as stored) and with no
transfer-syntax parameter (PS3.18's default, Explicit VR Little Endian; the series is stored in
it, so neither needs to rewrite a file). The viewer is timed in Debian's Chromium from
navigation to the first image drawn (median).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import find
import ingest

BENCH_USER = "benchrad"
BENCH_PASSWORD = "bench-only-password-42"  # noqa: S105
# The Accept headers WADO-RS is timed with, by the label printed beside the rate.
WADO_ACCEPTS = {
    "ts=*": 'multipart/related; type="application/dicom"; transfer-syntax=*',
    "default": 'multipart/related; type="application/dicom"',
}
QUERIES = {
    "PatientID match (1 study)": {"PatientID": "PID0000003"},
    "name wildcard (5 studies)": {"PatientName": "Needle*"},
    "date range (5 studies)": {"StudyDate": "20190610-20190620"},
}
LIT_CANVAS = """() => {
  const canvas = document.querySelector('.viewer-viewport canvas');
  if (!canvas || !canvas.width) return false;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < data.length; i += 4) if (data[i] > 10) return true;
  return false;
}"""


def prepare_web(env: dict[str, str]) -> None:
    """Roles, a radiologist to log in as, and the collected static files (production mode)."""
    manage = [common.PYTHON, "manage.py"]
    subprocess.run([*manage, "create_roles"], cwd=common.ROOT, env=env, check=True)
    subprocess.run(
        [*manage, "collectstatic", "--noinput", "-v0"], cwd=common.ROOT, env=env, check=True
    )
    code = (
        "from django.contrib.auth.models import Group, User;"
        f"u = User.objects.create_user({BENCH_USER!r}, password={BENCH_PASSWORD!r});"
        "u.groups.add(Group.objects.get(name='radiologist'))"
    )
    subprocess.run([*manage, "shell", "-c", code], cwd=common.ROOT, env=env, check=True)


@contextlib.contextmanager
def running_web(env: dict[str, str], port: int) -> Iterator[str]:
    """gunicorn as the Procfile runs it, on PORT; yield its base URL."""
    process = subprocess.Popen(
        [
            str(Path(common.PYTHON).parent / "gunicorn"),
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "4",
        ],
        cwd=common.ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/health/", timeout=2).ok:
                    break
            time.sleep(0.2)
        else:
            sys.exit("the web server did not start")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def logged_in_session(base: str) -> requests.Session:
    """A session logged in through the login page, as the viewer's browser is.

    HTTP Basic checks the password (PBKDF2) on every request; the session cookie does not.
    The cookie is Secure in production mode, so it is sent by hand over plain HTTP here.
    """
    session = requests.Session()
    page = session.get(f"{base}/login/")
    token = page.cookies["csrftoken"]
    response = session.post(
        f"{base}/login/",
        data={"username": BENCH_USER, "password": BENCH_PASSWORD, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{base}/login/", "Cookie": f"csrftoken={token}"},
        allow_redirects=False,
    )
    if response.status_code != 302:
        sys.exit(f"log-in failed: {response.status_code}")
    session.headers["Cookie"] = f"sessionid={response.cookies['sessionid']}"
    return session


def time_qido(name: str, session: requests.Session, root: str, repeat: int) -> None:
    for label, params in QUERIES.items():
        # Wildcards as they are: a client that sends %2A asks for a literal asterisk.
        query = urllib.parse.urlencode(params, safe="*")
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = session.get(
                f"{root}/studies?{query}", headers={"Accept": "application/dicom+json"}
            )
            times.append(time.perf_counter() - started)
            response.raise_for_status()
        count = len(response.json()) if response.content else 0
        print(
            f"{name:8s} {'QIDO ' + label:35s} median {common.median(times) * 1000:6.1f} ms"
            f" ({count} found)"
        )


def time_wado(
    name: str, session: requests.Session, root: str, study: str, series: str, rounds: int
) -> None:
    for label, accept in WADO_ACCEPTS.items():
        rates, size = [], 0
        for _ in range(rounds):
            started = time.perf_counter()
            with session.get(
                f"{root}/studies/{study}/series/{series}",
                headers={"Accept": accept},
                stream=True,
            ) as response:
                response.raise_for_status()
                size = sum(len(chunk) for chunk in response.iter_content(1 << 20))
            rates.append(size / (time.perf_counter() - started) / 1e6)
        print(
            f"{name:8s} {f'WADO-RS series ({size / 1e6:.0f} MB, {label})':35s} median "
            f"{common.median(rates):6.1f} MB/s   Accept: {accept}"
        )


def time_viewer(base: str, study: str, repeat: int) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("viewer: Playwright is not installed (make install-test); skipped")
        return
    sys.path.insert(0, str(common.ROOT))
    from tests.browser import CHROMIUM_FLAGS, chromium_path

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{base}/login/")
        page.fill("#id_username", BENCH_USER)
        page.fill("#id_password", BENCH_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/**")
        times = []
        for _ in range(repeat):
            page.goto(f"{base}/viewer/{study}/")
            page.wait_for_function(LIT_CANVAS, polling=5, timeout=60_000)
            times.append(page.evaluate("performance.now()") / 1000)
        browser.close()
    print(
        f"archive  {'viewer: navigation to first image':35s} median "
        f"{common.median(times) * 1000:6.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--orthanc-studies", type=int, default=2_000)
    parser.add_argument("--count", type=int, default=500, help="instances of the WADO series")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-orthanc", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    files = ingest.make_series(work / "series", args.count, args.size, "WADO")
    from pydicom import dcmread

    head = dcmread(files[0], stop_before_pixels=True)
    study, series = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)

    database = common.scratch_database("rispacs_bench_dicomweb")
    env = common.archive_env(database, work / "storage")
    env["ALLOWED_HOSTS"] = "localhost,127.0.0.1"
    common.migrate(env)
    started = time.perf_counter()
    find.fill_archive(env, args.studies)
    print(f"archive holds {args.studies} studies (filled in {time.perf_counter() - started:.0f} s)")
    dicom_port = common.free_port()
    with common.running_archive(env, dicom_port):
        ingest.send(dicom_port, common.ARCHIVE_AE, [files])
    prepare_web(env)
    with running_web(env, common.free_port()) as base:
        session = logged_in_session(base)
        time_qido("archive", session, f"{base}/dicomweb", args.repeat)
        time_wado("archive", session, f"{base}/dicomweb", study, series, args.rounds)
        basic = requests.Session()
        basic.auth = (BENCH_USER, BENCH_PASSWORD)
        time_qido("basic", basic, f"{base}/dicomweb", max(3, args.repeat // 4))
        time_viewer(base, study, max(3, args.repeat // 4))
    if not args.skip_orthanc:
        orthanc = common.orthanc_peer_module()
        dicom_port, http_port = common.free_port(), common.free_port()
        with orthanc.peer(dicom_port, http_port, dicomweb=True):
            find.fill_orthanc(dicom_port, args.orthanc_studies, work / "orthanc-files")
            ingest.send(dicom_port, "ORTHANC", [files])
            print(f"orthanc holds {args.orthanc_studies + 1} studies")
            session = requests.Session()
            root = f"http://127.0.0.1:{http_port}/dicom-web"
            time_qido("orthanc", session, root, args.repeat)
            time_wado("orthanc", session, root, study, series, args.rounds)
    common.cleanup(work)


if __name__ == "__main__":
    main()
