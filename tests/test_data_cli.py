"""``caprobe data check`` through CliRunner."""

from __future__ import annotations

import json

from test_data_helpers import write_cifar10_batches, write_tree
from typer.testing import CliRunner

import caprobe.cli

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(caprobe.cli.app, ["data", "check", *args])


def test_check_positional_json():
    res = _invoke("--data", "positional", "-o", "n_train=30", "-o", "n_test=8", "-o", "grid=2",
                  "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["splits"]["train"]["count"] == 30
    assert report["splits"]["test"]["per_class"] == {"r0c0": 2, "r0c1": 2, "r1c0": 2, "r1c1": 2}
    assert report["unreadable"] == [] and len(report["checksum"]) == 64


def test_check_cifar_table_and_cache(tmp_path):
    write_cifar10_batches(tmp_path / "c10")
    args = ("--data", "cifar10", "--data-dir", str(tmp_path / "c10"),
            "--cache-dir", str(tmp_path / "cache"))
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    assert "airplane" in res.stdout and "checksum:" in res.stdout and "cache: built" in res.stdout
    again = json.loads(_invoke(*args, "--json").stdout)
    assert again["cache"] == "hit" and again["splits"]["train"]["count"] == 20


def test_check_lists_unreadable_images_and_exits_2(tmp_path):
    root = write_tree(tmp_path / "t", ext="jpg")
    bad = [root / "train" / "cat" / "0001.jpg", root / "test" / "ship" / "0000.jpg"]
    for f in bad:
        f.write_bytes(b"not a jpeg at all")
    res = _invoke("--data", "cifar10", "--data-dir", str(root),
                  "--cache-dir", str(tmp_path / "cache"), "--json")
    assert res.exit_code == 2
    report = json.loads(res.stdout)
    assert [item["file"] for item in report["unreadable"]] == [str(f) for f in bad]
    assert report["checksum"] is None
    assert res.stderr.count("\n") == 1 and "2 unreadable images" in res.stderr


def test_check_missing_folder_one_line_exit_2(tmp_path):
    res = _invoke("--data", "cifar100", "--data-dir", str(tmp_path / "none"))
    assert res.exit_code == 2
    assert res.stderr.startswith("caprobe: error: CIFAR-100 not found")
    assert res.stderr.count("\n") == 1


def test_check_bad_option_syntax():
    res = _invoke("--data", "positional", "-o", "difficulty")
    assert res.exit_code == 2 and "KEY=VALUE" in res.stderr
