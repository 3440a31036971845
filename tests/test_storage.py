"""The local-disk storage tier: paths stay under the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs.storage import FileStorage, instance_path


def test_paths_stay_under_the_root(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "storage")
    relative = instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert storage.path(relative) == tmp_path / "storage" / relative
    for escaping in ("../outside.dcm", "ab/../../outside.dcm", "/etc/passwd", ""):
        with pytest.raises(ValueError, match="escapes the storage root"):
            storage.path(escaping)


def test_write_is_durable_and_refuses_to_overwrite(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    relative = instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert storage.write(relative, [b"abc", b"def"]) == 6
    with pytest.raises(FileExistsError):
        storage.write(relative, [b"other"])
    assert storage.path(relative).read_bytes() == b"abcdef"
    assert storage.write(relative, [b"new"], replace=True) == 3
    assert storage.path(relative).read_bytes() == b"new"
    assert not list(storage.path(relative).parent.glob("*.tmp"))
