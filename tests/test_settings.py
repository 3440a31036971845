"""The settings module: typed environment variables, refusals that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import env

ROOT = Path(__file__).resolve().parent.parent


def _settings_in_subprocess(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}
    }
    environment.update(
        {"VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings", **variables}
    )
    code = (
        "from django.conf import settings; "
        "print(settings.DATABASES['default']['ENGINE'], settings.DICOM_PORT)"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    result = _settings_in_subprocess(tmp_path, DEBUG="0", ALLOWED_HOSTS="pacs.example.org")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_production_refuses_to_start_without_allowed_hosts(tmp_path: Path) -> None:
    result = _settings_in_subprocess(tmp_path, DEBUG="0", SECRET_KEY="s" * 50)
    assert result.returncode != 0
    assert "ALLOWED_HOSTS must be set when DEBUG is off" in result.stderr


def test_production_starts_with_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("k" * 50 + "\n")
    result = _settings_in_subprocess(
        tmp_path,
        DEBUG="0",
        SECRET_KEY_FILE=str(secret),
        ALLOWED_HOSTS="pacs.example.org",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/anything",
        DICOM_PORT="104",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.postgresql", "104"]


def test_a_bad_value_names_the_variable(tmp_path: Path) -> None:
    result = _settings_in_subprocess(tmp_path, DICOM_PORT="eleven")
    assert result.returncode != 0
    assert "DICOM_PORT must be an integer, got 'eleven'" in result.stderr


def test_embedded_default_is_sqlite_in_var_dir(tmp_path: Path) -> None:
    result = _settings_in_subprocess(tmp_path, DATABASE_URL="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.sqlite3", "11112"]


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("yes", True), ("off", False), ("0", False), ("", False)]
)
def test_env_bool(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("SOME_FLAG", raw)
    assert env.env_bool("SOME_FLAG", not expected) is expected


def test_env_bool_rejects_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="SOME_FLAG must be a boolean"):
        env.env_bool("SOME_FLAG", False)


def test_env_int_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_PORT", "70000")
    with pytest.raises(ImproperlyConfigured, match="SOME_PORT must be between 1 and 65535"):
        env.env_int("SOME_PORT", 1, minimum=1, maximum=65535)
    monkeypatch.delenv("SOME_PORT")
    assert env.env_int("SOME_PORT", 42) == 42


@pytest.mark.parametrize("title", ["", "A" * 17, "BAD\\AE", "ÄE"])
def test_ae_title_is_checked(monkeypatch: pytest.MonkeyPatch, title: str) -> None:
    monkeypatch.setenv("SOME_AE", title)
    with pytest.raises(ImproperlyConfigured, match="SOME_AE must be 1-16"):
        env.env_ae_title("SOME_AE", "DEFAULT")


def test_env_list_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOME_HOSTS", "a.example, b.example,,")
    assert env.env_list("SOME_HOSTS", []) == ["a.example", "b.example"]
    monkeypatch.setenv("SOME_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="SOME_SECRET_FILE: cannot read"):
        env.env_str("SOME_SECRET")
