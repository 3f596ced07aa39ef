"""Training: a short run per backbone, reproducibility, resume, NaN guard, atomic checkpoints,
and ``caprobe train`` through CliRunner. Tiny widths, 16-px images, a few steps."""

from __future__ import annotations

import json
import os
import platform
import types

import pytest
import torch

from caprobe.errors import CaprobeError
from caprobe.stats import did_learn
from caprobe.training import RunResult, TrainConfig, load_model, load_run, loop, train
from caprobe.training import checkpoint as ckpt_mod

# --------------------------------------------------------------------------- a tiny data set


def _tiny_dataset(num_classes: int = 4, n_train: int = 48, n_test: int = 24, size: int = 16):
    """A learnable stand-in for caprobe.data: the class is the brightest quadrant-ish band."""
    g = torch.Generator().manual_seed(123)

    def split(n):
        labels = torch.arange(n) % num_classes
        images = torch.randint(0, 60, (n, 3, size, size), generator=g, dtype=torch.uint8)
        band = size // num_classes
        for i, c in enumerate(labels.tolist()):
            images[i, :, c * band:(c + 1) * band, :] += 150
        return types.SimpleNamespace(images=images, labels=labels)

    return types.SimpleNamespace(
        name="tiny", train=split(n_train), test=split(n_test),
        classes=[f"c{i}" for i in range(num_classes)], image_size=size,
        checksum=f"tiny-{num_classes}-{n_train}-{n_test}-{size}",
        mean=(0.2, 0.2, 0.2), std=(0.25, 0.25, 0.25), augment="flip", source="memory",
        num_classes=num_classes)


def _to_input(images, mean, std):
    x = images.float().div_(255)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def _augment_batch(images, *, policy, generator, mean, std):
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return _to_input(images, mean, std)


def _balanced_subset(labels, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(labels.shape[0], generator=g)[:n]


@pytest.fixture
def fake_data(monkeypatch):
    datasets = {"tiny": _tiny_dataset(), "tiny10": _tiny_dataset(num_classes=10, n_train=40,
                                                                  n_test=20)}

    def load_dataset(name, **kwargs):
        if name not in datasets:
            raise CaprobeError(f"unknown data set {name!r}")
        return datasets[name]

    api = types.SimpleNamespace(load_dataset=load_dataset, augment_batch=_augment_batch,
                                to_input=_to_input, balanced_subset=_balanced_subset)
    monkeypatch.setattr(loop, "_data_api", lambda: api)
    return api


def _cfg(**kw) -> TrainConfig:
    base = dict(model="mobilenetv2", width=0.25, data="tiny", batch_size=16, epochs=2,
                lr=0.05, warmup_epochs=0.5, weight_decay=1e-4, threads=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- runs


@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenext"])
def test_two_step_run_per_backbone(fake_data, tmp_path, backbone):
    res = train(_cfg(model=backbone, attn="ca", steps=2), out=tmp_path / "run", progress=False)
    assert res.status == "finished", res.error
    assert res.steps_done == 2 and res.epochs_done == 1
    assert 0 <= res.top1 <= 100 and res.top5 is None  # 4 classes: no top-5
    assert set(res.per_class_acc) == {"c0", "c1", "c2", "c3"}
    assert res.images_per_s > 0 and 0 <= res.data_wait_share < 1
    config, rows, saved = load_run(tmp_path / "run")
    assert config.model == backbone and config.attn == "ca" and config.profile == "cifar"
    assert config.channels_last is True and config.eval_batch_size == 32
    assert len(rows) == 1 and rows[0]["step"] == 2
    assert {"train_loss", "train_acc", "test_loss", "test_top1", "lr", "epoch_time_s",
            "images_per_s"} <= rows[0].keys()
    assert saved.status == "finished" and saved.top1 == res.top1
    assert saved.chance_top1 == 25.0 and saved.learned is res.learned is not None
    assert res.learned is did_learn(res.top1, 4, [row["train_loss"] for row in rows])
    assert saved.env["torch"] == torch.__version__ and saved.env["threads"] == 1
    expected_malloc = "system" if os.environ.get("CAPROBE_MALLOC") == "system" or \
        platform.libc_ver()[0] != "glibc" else "kept"
    assert saved.env["malloc"] == expected_malloc  # caprobe.runtime.keep_freed_memory
    assert saved.data_checksum.startswith("tiny-")
    model = load_model(tmp_path / "run")
    assert not model.training


def test_top5_with_many_classes_and_no_run_folder(fake_data):
    res = train(_cfg(data="tiny10", steps=1, batch_size=8), progress=False)
    assert res.status == "finished" and res.top5 is not None and res.run_dir is None
    assert res.top5 >= res.top1


def test_same_seed_same_metrics_other_seed_differs(fake_data):
    kw = dict(epochs=2, train_subset=32)
    a = train(_cfg(**kw), progress=False)
    b = train(_cfg(**kw), progress=False)
    c = train(_cfg(seed=1, **kw), progress=False)
    strip = ("wall_time_s", "images_per_s", "env", "data_wait_share")
    da = {k: v for k, v in a.to_dict().items() if k not in strip}
    db = {k: v for k, v in b.to_dict().items() if k not in strip}
    assert da == db
    assert (a.train_loss, a.test_loss) != (c.train_loss, c.test_loss)


def test_interrupt_then_resume_equals_uninterrupted(fake_data, tmp_path):
    cfg = _cfg(epochs=3, model="mobilenext", attn="se")
    full = train(cfg, out=tmp_path / "full", progress=False)
    assert full.status == "finished"

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=tmp_path / "cut", progress=False, on_epoch=stop_after_first)
    _, rows, res = load_run(tmp_path / "cut")
    assert res.status == "interrupted" and res.epochs_done == 1 and len(rows) == 1
    resumed = train(cfg, out=tmp_path / "cut", resume=True, progress=False)
    assert resumed.status == "finished" and resumed.epochs_done == 3
    _same_state(ckpt_mod.load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"],
                ckpt_mod.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"])
    assert (resumed.top1, resumed.test_loss, resumed.train_loss) == \
        (full.top1, full.test_loss, full.train_loss)
    _, rows_full, _ = load_run(tmp_path / "full")
    _, rows_cut, _ = load_run(tmp_path / "cut")
    assert [r["test_loss"] for r in rows_full] == [r["test_loss"] for r in rows_cut]


def test_interrupt_mid_epoch_then_resume_equals_uninterrupted(fake_data, tmp_path,
                                                             monkeypatch):
    cfg = _cfg(epochs=2, train_subset=32)
    full = train(cfg, out=tmp_path / "full", progress=False)
    calls = {"n": 0}
    real = fake_data.augment_batch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # second step of epoch 2 (2 steps per epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fake_data, "augment_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=tmp_path / "cut", progress=False)
    monkeypatch.setattr(fake_data, "augment_batch", real)
    assert load_run(tmp_path / "cut")[2].status == "interrupted"
    assert ckpt_mod.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    resumed = train(cfg, out=tmp_path / "cut", resume=True, progress=False)
    _same_state(ckpt_mod.load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"],
                ckpt_mod.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"])
    assert resumed.test_loss == full.test_loss


def test_real_positional_data_through_the_cli(tmp_path):
    r = _cli(["train", "--model", "mobilenext_ca", "--width", "0.25", "--steps", "2",
              "--batch-size", "16", "--data-option", "n_train=48", "--data-option",
              "n_test=24", "--threads", "1", "--out", str(tmp_path / "p"), "-q"])
    assert r.exit_code == 0, r.output
    config, rows, res = load_run(tmp_path / "p")
    assert config.data == "positional" and config.data_options == {"n_train": 48, "n_test": 24}
    from caprobe.data import load_dataset

    classes = load_dataset("positional", n_train=48, n_test=24).classes
    assert res.status == "finished" and res.data_checksum
    assert list(res.per_class_acc) == list(classes)


def test_resume_refuses_a_different_config_and_a_non_run(fake_data, tmp_path):
    train(_cfg(steps=1), out=tmp_path / "run", progress=False)
    with pytest.raises(CaprobeError, match="lr"):
        train(_cfg(steps=1, lr=0.5), out=tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CaprobeError, match="already holds"):
        train(_cfg(steps=1), out=tmp_path / "run", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(CaprobeError, match="not a caprobe training run"):
        train(_cfg(steps=1), out=tmp_path / "junk", resume=True, progress=False)


def test_nan_loss_stops_as_diverged(fake_data, tmp_path, monkeypatch):
    real = torch.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def poisoned(self, logits, target):
        calls["n"] += 1
        loss = real(self, logits, target)
        return loss * float("nan") if calls["n"] >= 2 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    res = train(_cfg(epochs=2), out=tmp_path / "run", progress=False)
    assert res.status == "diverged" and "nan" in res.error and res.top1 is None
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["status"] == "diverged" and saved["train_loss"] is None


def test_checkpoint_write_failure_keeps_the_good_one(fake_data, tmp_path, monkeypatch):
    train(_cfg(steps=1), out=tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoint.pt"
    good = path.read_bytes()

    class Boom(OSError):
        pass

    import caprobe.io as io_mod

    def failing_replace(src, dst):
        raise Boom("disk full")

    monkeypatch.setattr(io_mod.os, "replace", failing_replace)
    with pytest.raises(Boom):
        ckpt_mod.save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert ckpt_mod.load_checkpoint(path)["step"] == 1


def test_bad_config_values_raise_before_writing(fake_data, tmp_path):
    for kw, match in [(dict(epochs=0), "epochs"), (dict(amp="fp16"), "fp16"),
                      (dict(amp="int4"), "amp"), (dict(model="resnet"), "unknown model"),
                      (dict(batch_size=-1), "batch-size"), (dict(lr=0), "lr"),
                      (dict(train_subset=10_000), "train-subset")]:
        with pytest.raises(CaprobeError, match=match):
            train(_cfg(**kw), out=tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


def test_result_roundtrip_and_callable_module():
    import caprobe

    r = RunResult(status="finished", top1=float("nan"))
    assert r.to_dict()["top1"] is None
    assert caprobe.train is caprobe.training.train and caprobe.training.TrainConfig is TrainConfig
    assert caprobe.TrainConfig is TrainConfig


# --------------------------------------------------------------------------- CLI


def _cli(args):
    from typer.testing import CliRunner

    from caprobe.cli import app

    return CliRunner().invoke(app, args)


def test_cli_train_json_and_summary(fake_data, tmp_path):
    args = ["train", "--data", "tiny", "--model", "mobilenetv2_eca", "--width", "0.25",
            "--steps", "2", "--batch-size", "16", "--threads", "1", "--device", "cpu"]
    r = _cli([*args, "--out", str(tmp_path / "a"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["status"] == "finished" and out["steps_done"] == 2
    r = _cli([*args, "--out", str(tmp_path / "b"), "-q"])
    assert r.exit_code == 0, r.output
    assert r.stdout.count("\n") == 1 and "mobilenetv2_eca seed 0: finished, top-1" in r.stdout
    # resume of a finished run trains nothing more and gives the same summary
    r2 = _cli(["train", "--resume", str(tmp_path / "b"), "-q"])
    assert r2.exit_code == 0, r2.output
    assert r2.stdout.split(" in ")[0] == r.stdout.split(" in ")[0]


@pytest.mark.parametrize("args, needle", [
    (["--amp", "fp16", "--device", "cpu"], "fp16"),
    (["--model", "resnet50"], "unknown model"),
    (["--epochs", "0"], "epochs"),
    (["--data-option", "novalue"], "KEY=VALUE"),
])
def test_cli_errors_are_one_line_exit_2(fake_data, tmp_path, args, needle):
    r = _cli(["train", "--data", "tiny", "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and needle in r.stderr and "Traceback" not in r.output


def test_cli_resume_of_a_folder_that_is_not_a_run(tmp_path):
    r = _cli(["train", "--resume", str(tmp_path)])
    assert r.exit_code == 2 and "not a caprobe training run" in r.stderr
    assert r.stderr.count("\n") == 1


def test_progress_task_on_a_callers_bar_is_removed(fake_data):
    import io

    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(file=io.StringIO(), force_terminal=False))
    with bar:
        overall = bar.add_task("plan", total=1)
        res = train(_cfg(steps=1), progress=bar)
        assert res.status == "finished"
        assert [t.id for t in bar.tasks] == [overall]


def test_a_config_saved_before_a_field_existed_still_resumes():
    """config.json written before ``coords`` / ``image_size`` existed: missing = the default."""
    from caprobe.training.config import TrainConfig, differences

    now = TrainConfig(seed=3).to_dict()
    old = {k: v for k, v in now.items() if k not in ("coords", "image_size")}
    assert differences(old, now) == []
    assert differences(old, {**now, "coords": True}) == ["coords: False → True"]


def test_curve_subset_evaluates_a_fixed_slice_until_the_last_epoch(fake_data, tmp_path):
    """Epochs before the last see a fixed slice of the test set (the same for every seed);
    the last epoch, and so the result, sees all of it: equal to a run without the option."""
    calls = []
    real = fake_data.balanced_subset

    def spy(labels, n, seed):
        calls.append((len(labels), n, seed))
        return real(labels, n, seed)

    fake_data.balanced_subset = spy
    runs = {}
    for name, kw in (("sliced", {"curve_subset": 8}), ("sliced-s1", {"curve_subset": 8,
                                                                      "seed": 1}),
                     ("full", {})):
        res = train(_cfg(epochs=3, **kw), out=tmp_path / name, progress=False)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        runs[name] = (res, rows)
    (sliced, rows), (full, full_rows) = runs["sliced"], runs["full"]
    assert [r["eval_images"] for r in rows] == [8, 8, 24]
    assert [r["eval_images"] for r in full_rows] == [24, 24, 24]
    assert sliced.top1 == full.top1 and rows[-1]["test_top1"] == full_rows[-1]["test_top1"]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in full_rows]
    # one slice of the 24 test images, drawn the same way for seed 0 and seed 1
    curve_calls = [c for c in calls if c[:2] == (24, 8)]
    assert len(curve_calls) == 2 and curve_calls[0] == curve_calls[1]
    with pytest.raises(CaprobeError, match="--curve-subset must be a positive integer"):
        train(_cfg(curve_subset=0), progress=False)
