"""DCMTK's command-line tools, the independent DICOM peer of the tests.

pynetdicom installs console scripts with the same names (echoscu, storescu, ...) into
the virtual environment, so the search skips the environment's own bin folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def tool(name: str) -> str:
    """Return the path of DCMTK's NAME, or skip the test when DCMTK is not installed."""
    venv_bin = Path(sys.prefix, "bin").resolve()
    dirs = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and Path(d).resolve() != venv_bin
    ]
    for folder in [*dirs, "/usr/bin", "/usr/local/bin"]:
        found = shutil.which(name, path=folder)
        if found:
            return found
    missing = f"DCMTK's {name} is not installed (Debian package dcmtk; `make test` installs it)"
    if os.environ.get("CI"):
        pytest.fail(missing)  # CI must run the independent peer, not skip it
    pytest.skip(missing)
