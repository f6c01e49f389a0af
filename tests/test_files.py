"""Files appear whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from winback.files import written_atomically


class CrashError(Exception):
    """What a crash mid-write looks like to the code around it."""


def _write_and_crash(target: Path, *, directory: bool = False) -> None:
    with written_atomically(target) as tmp:
        if directory:
            tmp.mkdir()
            (tmp / "model.pkl").write_bytes(b"half")
        else:
            tmp.write_text("half a file")
        raise CrashError


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "scores.csv"
    with pytest.raises(CrashError):
        _write_and_crash(target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_a_directory_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    with written_atomically(target) as staging:
        staging.mkdir()
        (staging / "model.pkl").write_bytes(b"model")
    assert (target / "model.pkl").read_bytes() == b"model"
    with pytest.raises(CrashError):
        _write_and_crash(tmp_path / "v2", directory=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]
