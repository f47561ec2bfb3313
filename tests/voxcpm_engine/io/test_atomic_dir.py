"""Tests of voxcpm_engine.io.atomic_dir: a directory appears complete or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxcpm_engine.io.atomic_dir import atomic_directory, check_new_directory


def test_success_renames_the_filled_directory_into_place(tmp_path: Path):
    out = tmp_path / "deep" / "out"
    with atomic_directory(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".out.") and not out.exists()
        (tmp / "a.txt").write_text("hello")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"\x00\x01")
    assert (out / "a.txt").read_text() == "hello" and (out / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporary left beside it


def test_an_exception_leaves_nothing_half_written(tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(out) as tmp:
        (tmp / "partial.txt").write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), atomic_directory(out) as tmp:  # BaseException too
        (tmp / "partial.txt").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_an_existing_empty_directory_is_replaced_but_a_non_empty_one_refused(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    with atomic_directory(out) as tmp:
        (tmp / "x").write_text("1")
    assert [p.name for p in out.iterdir()] == ["x"]
    with pytest.raises(FileExistsError, match=rf"{out}: exists and is not an empty directory"):
        with atomic_directory(out):
            pytest.fail("the body must not run")
    assert [p.name for p in out.iterdir()] == ["x"]
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(FileExistsError, match="exists and is not an empty directory"):
        check_new_directory(a_file)
    check_new_directory(tmp_path / "absent")  # absent is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]
