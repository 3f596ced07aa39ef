"""`caprobe list` / `caprobe flops` through Typer's runner; --help stays free of torch."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from caprobe.cli import app

runner = CliRunner()


def test_help_does_not_import_torch():
    code = ("import sys\nfrom caprobe.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("NO-TORCH")
    assert "flops" in out.stdout and "list" in out.stdout


def test_list_shows_backbones_and_attention_defaults():
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["backbones"] == ["mobilenetv2", "mobilenext"]
    assert data["attention"]["ca"]["defaults"]["reduction"] == 32
    assert data["attention"]["ca"]["defaults"]["act"] == "hswish"
    text = runner.invoke(app, ["list"]).output
    assert "ca_h" in text and "cbam" in text


def test_flops_json_has_the_documented_keys():
    result = runner.invoke(app, ["flops", "--model", "mobilenetv2", "--attn",
                                 "ca:reduction=16,act=relu", "--input-size", "160", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in ("model", "attn", "input_size", "params", "madds", "madds_total",
                "attention_params", "attention_madds"):
        assert key in data
    assert data["attn"] == "ca:act=relu,reduction=16" and data["input_size"] == [160, 160]


def test_flops_table_and_breakdown():
    result = runner.invoke(app, ["flops", "--model", "mobilenext_ca", "--by-module",
                                 "--depth", "4"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "3,971,626" in result.output and "stage8" in result.output
    assert "features.stage3.1.attn" in result.output


def test_flops_defaults_to_the_profile_input_size():
    data = json.loads(runner.invoke(app, ["flops", "--profile", "cifar", "--width", "0.5",
                                          "--num-classes", "10", "--json"]).output)
    assert data["input_size"] == [32, 32]


@pytest.mark.parametrize("args,fragment", [
    (["flops", "--model", "resnet"], "unknown model 'resnet'"),
    (["flops", "--attn", "foo"], "unknown attention 'foo'; valid names"),
    (["flops", "--attn", "ca:act=tanh"], "choose one of relu, relu6, hswish, silu"),
    (["flops", "--attn", "ca:reduction"], "malformed attention spec"),
    (["flops", "--width", "0"], "width must be a finite number > 0"),
    (["flops", "--width", "inf"], "width must be a finite number > 0, got inf"),
    (["flops", "--input-size", "0"], "input size '0' is not valid"),
    (["flops", "--input-size", "abc"], "input size 'abc' is not valid"),
    (["flops", "--profile", "mnist"], "valid profiles: imagenet, cifar"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, fragment):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caprobe: error: ") and fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [
    ["compare", "--attn", "se", "--steps", "1", "--seeds", "1"],
    ["train", "--steps", "1"],
])
def test_out_that_names_a_file_is_one_line_and_exit_code_2(tmp_path, command):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    result = runner.invoke(app, [*command, "--out", str(target)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "is a file, not a folder" in lines[0]
    assert target.read_text() == "keep me"
