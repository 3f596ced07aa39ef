"""compare's plan, run-folder layout, resume checks and CLI input errors (nothing trains)."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from caprobe.cli import app
from caprobe.comparison import CompareOptions, Layout, Plan, load_plan, slug
from caprobe.comparison.plan import canonical_variants, merge_for_resume, option_path, validate
from caprobe.errors import CaprobeError
from caprobe.training import TrainConfig

runner = CliRunner()


def _one_line_exit_2(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caprobe: error:"), result.stderr
    return lines[0]


def test_variants_baseline_first_canonical_unique():
    assert canonical_variants(["ca", "se", "none", "ca:branches=h", "ca_h"]) == [
        "none", "ca", "se", "ca_h"]
    with pytest.raises(CaprobeError, match="no attention"):
        canonical_variants([])
    with pytest.raises(CaprobeError, match="unknown attention"):
        canonical_variants(["se", "nope"])


def test_slugs_are_safe_and_unique():
    names = ["ca", "ca:act=relu", "ca-act-relu", "<script>", "../x"]
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(slugs)
    assert slug("ca") == "ca"
    for s in slugs:
        assert "/" not in s and ".." not in s and s.replace("-", "").replace("_", "").isalnum()


def test_plan_pieces_are_seed_major(tmp_path):
    plan = Plan.from_options(CompareOptions(attn=["se", "ca"], seeds=2,
                                            training=TrainConfig(seed=5)))
    assert plan.variants == ["none", "se", "ca"] and plan.seeds == [5, 6]
    assert plan.pieces[:3] == [("none", 5), ("se", 5), ("ca", 5)]
    plan.save(Layout(tmp_path))
    saved = load_plan(tmp_path)
    assert saved["pieces"][1] == {"variant": "se", "seed": 5, "run_dir": "variants/se/seed-5"}


def test_resume_compares_only_given_options(tmp_path):
    plan = Plan.from_options(CompareOptions(attn=["se"], seeds=2,
                                            training=TrainConfig(epochs=3)))
    plan.save(Layout(tmp_path))
    saved = load_plan(tmp_path)
    # the new command gives --attn se --seeds 2 and --epochs 5 by default only: not compared
    requested = CompareOptions(attn=["se"], seeds=2, training=TrainConfig(epochs=5))
    opts = merge_for_resume(saved, requested, {"attn", "seeds"})
    assert opts.training.epochs == 3 and opts.attn == ["se"]
    assert merge_for_resume(saved, requested, set()).seeds == 2
    assert merge_for_resume(saved).training == saved_training(saved)
    more = CompareOptions(jobs=3, seeds=2)
    assert merge_for_resume(saved, more, {"jobs", "seeds"}).jobs == 3  # jobs: not compared
    with pytest.raises(CaprobeError, match=r"seeds=3 \(plan.json has 2\)"):
        merge_for_resume(saved, CompareOptions(seeds=3), {"seeds"})
    with pytest.raises(CaprobeError, match=r"epochs=5 \(plan.json has 3\)"):
        merge_for_resume(saved, requested, {"training.epochs"})
    with pytest.raises(CaprobeError, match="attn"):
        merge_for_resume(saved, CompareOptions(attn=["se", "ca"]), {"attn"})
    with pytest.raises(CaprobeError, match="schema 1"):
        merge_for_resume({**saved, "schema": 1})


def saved_training(saved):
    return TrainConfig.from_dict(saved["options"]["training"])


def test_each_piece_is_the_template_with_its_variant_and_seed():
    template = TrainConfig(epochs=3, data_options={"n_train": 64}, seed=4)
    options = CompareOptions(attn=["se"], training=template)
    piece = options.piece("se", 5)
    assert piece == dataclasses.replace(template, attn="se", seed=5)
    piece.data_options["n_train"] = 1  # a piece's mapping is its own
    assert template.data_options == {"n_train": 64}
    assert options.seed_list == [4, 5, 6]
    assert option_path("epochs") == "training.epochs" and option_path("seeds") == "seeds"
    with pytest.raises(CaprobeError, match="training.attn"):
        validate(CompareOptions(attn=["se"], training=TrainConfig(attn="ca")))


@pytest.mark.parametrize(("args", "needle"), [
    (["--attn", "nope"], "unknown attention"),
    (["--attn", "se,nope"], "unknown attention 'nope'"),  # a comma list is split first
    (["--attn"], "no attention variants"),
    (["--attn", "--seeds", "2"], "no attention variants"),
    ([], "no attention variants"),
    (["--attn", "se", "--seeds", "0"], "--seeds must be at least 1"),
    (["--attn", "se", "--jobs", "0"], "--jobs must be at least 1"),
    (["--attn", "se", "--image-size", "0"], "--image-size must be a positive integer"),
    (["--attn", "se", "--image-size", "32", "--data-option", "image_size=32"], "given twice"),
    (["--attn", "se", "--model", "resnet"], "unknown model"),
    (["--attn", "se", "--data-option", "oops"], "KEY=VALUE"),
])
def test_compare_bad_inputs(tmp_path, args, needle):
    result = runner.invoke(app, ["compare", *args, "--out", str(tmp_path / "o")])
    line = _one_line_exit_2(result)
    assert needle in line
    assert not (tmp_path / "o").exists()  # nothing written before the plan is valid


def test_resume_refuses_other_options_and_non_runs(tmp_path):
    Plan.from_options(CompareOptions(attn=["se"], seeds=1)).save(Layout(tmp_path / "r"))
    line = _one_line_exit_2(runner.invoke(
        app, ["compare", "--resume", str(tmp_path / "r"), "--attn", "se", "--seeds", "2"]))
    assert "options differ from plan.json" in line and "seeds=2" in line
    line = _one_line_exit_2(runner.invoke(app, ["compare", "--resume", str(tmp_path)]))
    assert "not a caprobe compare run" in line
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    line = _one_line_exit_2(runner.invoke(
        app, ["compare", "--attn", "se", "--out", str(tmp_path / "r")]))
    assert "--resume" in line


def test_resume_keeps_the_plans_reference_and_other_slurm_options(tmp_path):
    from caprobe.comparison.slurm import SlurmOptions

    Plan.from_options(CompareOptions(attn=["se"], reference="ca", executor="local",
                                     slurm=SlurmOptions(partition="gpu", gpus_per_piece=1))
                      ).save(Layout(tmp_path))
    saved = load_plan(tmp_path)
    # --attn se --reference ca: the plan holds se and the reference ca; not a difference
    same = merge_for_resume(saved, CompareOptions(attn=["se"], reference="ca"),
                            {"attn", "reference"})
    assert same.attn == ["se", "ca"]
    # --attn se alone: the plan's reference still counts
    assert merge_for_resume(saved, CompareOptions(attn=["se"]), {"attn"}).attn == ["se", "ca"]
    # --slurm-time 120 changes that field only; the partition and GPUs stay the plan's
    later = merge_for_resume(saved, CompareOptions(slurm=SlurmOptions(time_min=120)),
                             {option_path("slurm_time_min")})
    assert later.slurm == SlurmOptions(partition="gpu", gpus_per_piece=1, time_min=120)
    assert option_path("slurm_partition") == "slurm.partition"
