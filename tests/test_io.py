"""Atomic writes and JSON-lines reading (caprobe.io)."""

from __future__ import annotations

import os
import stat

import pytest

from caprobe.io import atomic_write_text, atomic_writer, read_jsonl


def test_atomic_writer_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_text(path, "good")
    with pytest.raises(RuntimeError), atomic_writer(path) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]      # no temp file left


def test_atomic_writer_gives_plain_open_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_read_jsonl_stops_at_a_torn_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 1}\n\n{"epoch": 2}\n{"epo')
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []
