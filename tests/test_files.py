"""Files appear whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from winback.files import written_atomically


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "scores.csv"
    with pytest.raises(RuntimeError), written_atomically(target) as tmp:
        tmp.write_text("half a file")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_a_directory_replaces_an_old_version_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    with written_atomically(target) as staging:
        staging.mkdir()
        (staging / "model.pkl").write_bytes(b"model")
    assert (target / "model.pkl").read_bytes() == b"model"
    with pytest.raises(ValueError), written_atomically(tmp_path / "v2") as staging:
        staging.mkdir()
        (staging / "model.pkl").write_bytes(b"half")
        raise ValueError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]
