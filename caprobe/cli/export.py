"""``caprobe export``: a trained or freshly built model as an ONNX, ExecuTorch or OpenVINO file,
checked against eager PyTorch, with what the runtime did with each op.

Torch and the runtimes are imported inside the command body only.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from caprobe.cli.app import app
from caprobe.cli.options import parse_input_size
from caprobe.errors import CaprobeError, require_positive

#: Inputs the exported outputs are compared on: this many random batches (fixed seeds).
RANDOM_INPUTS = 2
#: Calibration images for ``--int8`` by default: the first this many training images.
CALIB_IMAGES = 32


def _images(dataset, split: str, count: int, size: tuple[int, int]):
    """The first ``count`` images of a split at ``size`` (antialiased resize when the set's
    size differs), normalised with the set's statistics."""
    import torch

    from caprobe.data.augment import to_input

    images = getattr(dataset, split).images[:count]
    if tuple(images.shape[2:]) != size:
        images = torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear",
                                                 antialias=True).round().clamp(0, 255)
    return to_input(images.to(torch.uint8), dataset.mean, dataset.std)


def _model_and_inputs(run_dir: Path | None, checkpoint: Path | None, model: str | None,
                      attn: str | None, seed: int, width: float, profile: str,
                      num_classes: int | None, data: str | None, hw: tuple[int, int] | None,
                      batch: int, calib_data: str | None, calib_images: int | None):
    """``(model, label, {input name: tensor}, calibration batches or None)``: from a run
    folder (its data set's first test images as the real inputs, its training images for
    calibration), a checkpoint, or built fresh."""
    import torch

    import caprobe
    from caprobe.data.registry import load_dataset

    dataset_kwargs: dict = {}
    if run_dir is not None:
        if model is not None or checkpoint is not None:
            raise CaprobeError("give a run folder or --model/--checkpoint, not both")
        from caprobe.training.loop import load_model, load_run

        config, _, _ = load_run(run_dir)
        net = load_model(run_dir)
        label, profile = f"{config.model} {config.attn} ({run_dir})", config.profile
        data = data or config.data
        calib_data = calib_data or (config.data if calib_images is not None else None)
        dataset_kwargs = config.dataset_kwargs()
    else:
        if model is None:
            raise CaprobeError("nothing to export; pass a run folder, or --model NAME (with "
                               "--checkpoint FILE for trained weights)")
        from caprobe.models import resolve_name

        backbone, spec = resolve_name(model, attn)
        classes = num_classes if num_classes is not None else (10 if profile == "cifar"
                                                               else 1000)
        net = caprobe.build_model(backbone, attn=spec, width=width, num_classes=classes,
                                  profile=profile, seed=seed)
        label = f"{backbone} {spec} (seed {seed})"
        if checkpoint is not None:
            from caprobe.training.checkpoint import load_checkpoint

            if not checkpoint.is_file():
                raise CaprobeError(f"checkpoint {checkpoint} does not exist")
            try:
                net.load_state_dict(load_checkpoint(checkpoint)["model"])
            except (KeyError, RuntimeError) as exc:
                raise CaprobeError(f"{checkpoint} does not hold weights of {backbone} {spec} "
                                   f"width {width} with {classes} classes; pass the --model, "
                                   "--attn, --width and --num-classes it was trained with"
                                   ) from exc
            label = f"{backbone} {spec} ({checkpoint})"
    size = hw or parse_input_size(None, profile)
    gen = torch.Generator().manual_seed(0)
    inputs = {f"random {i}": torch.randn(batch, 3, *size, generator=gen)
              for i in range(RANDOM_INPUTS)}
    sets: dict = {}

    def dataset(name: str):
        if name not in sets:
            sets[name] = load_dataset(name, **(dataset_kwargs if name == (data or "") else {}))
        return sets[name]

    if data is not None:
        inputs[f"{data} test images"] = _images(dataset(data), "test", batch, size)
    calibration = None
    if calib_images is not None:
        if calib_data is None:
            raise CaprobeError("--int8 needs calibration images; pass --calib-data NAME "
                               "(e.g. --calib-data positional, the built-in set)")
        images = _images(dataset(calib_data), "train", calib_images, size)
        if images.shape[0] < batch:
            raise CaprobeError(f"{calib_data} has {images.shape[0]} training images; int8 "
                               f"calibration needs at least --batch {batch}")
        calibration = list(images[: images.shape[0] // batch * batch].split(batch))
    return net.eval(), label, inputs, calibration


@app.command("export")
def export(
    run_dir: Path | None = typer.Argument(None, help="A training run folder (caprobe train): "
                                          "its model with its last checkpoint's weights."),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx, executorch (XNNPACK) or "
                            "openvino; each needs its extra (pip install caprobe with it)."),
    out: Path = typer.Option(..., "--out", "-o", help="The file to write: .onnx, .pte or .xml "
                             "(OpenVINO writes the .bin beside it)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Build this model instead "
                                     "of reading a run, e.g. mobilenetv2_ca."),
    attn: str | None = typer.Option(None, "--attn", "-a", help="Attention spec for --model."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Weights for --model: a "
                                           "caprobe checkpoint.pt."),
    seed: int = typer.Option(0, "--seed", help="Seed of a freshly built --model (the weights "
                             "caprobe.build_model(..., seed=N) gives)."),
    width: float = typer.Option(1.0, "--width", help="Width multiplier of --model."),
    profile: str = typer.Option("imagenet", "--profile", help="imagenet or cifar (--model)."),
    num_classes: int | None = typer.Option(None, "--num-classes",
                                           help="Classifier outputs of --model."),
    input_size: str | None = typer.Option(None, "--input-size", help="Input size: 224 or HxW "
                                          "(default: the profile's); the graph is static."),
    batch: int = typer.Option(1, "--batch", "-b", help="Batch size the graph is built for."),
    data: str | None = typer.Option(None, "--data", help="Also check on this data set's first "
                                    "test images (default for a run folder: its data set)."),
    paper_form: bool = typer.Option(False, "--paper-form", help="Export the papers' equations "
                                    "in plain operators instead of the deployed graph form."),
    int8: bool = typer.Option(False, "--int8", help="Static int8 (onnx: QDQ; executorch: pt2e "
                              "with the XNNPACK quantizer; openvino: NNCF), calibrated on "
                              "training images."),
    calib_data: str | None = typer.Option(None, "--calib-data", help="Data set whose first "
                                          "training images calibrate --int8 (default for a "
                                          "run folder: its data set)."),
    calib_images: int = typer.Option(CALIB_IMAGES, "--calib-images",
                                     help="How many training images calibrate --int8."),
    as_json: bool = typer.Option(False, "--json", help="Print the export record as JSON."),
) -> None:
    """Export a model for a runtime, load it back, and check its outputs against eager
    PyTorch; print what the runtime did with each op."""
    from caprobe.runtimes import FORMATS

    key = fmt.strip().lower()
    if key not in FORMATS:
        raise CaprobeError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    runtime = FORMATS[key]
    if batch < 1:
        raise CaprobeError(f"--batch {batch} is invalid; use an integer >= 1")
    if calib_images < 1:
        raise CaprobeError(f"--calib-images {calib_images} is invalid; use an integer >= 1")
    require_positive(width, "--width")
    profile = profile.strip().lower()
    hw = parse_input_size(input_size, profile) if input_size is not None else None
    if run_dir is not None and not run_dir.is_dir():
        raise CaprobeError(f"run folder {run_dir} does not exist")

    from caprobe.runtimes import backend, coverage_note, export_checked

    suffix = backend(runtime).SUFFIX  # a missing extra fails before any model is built
    if out.suffix != suffix:
        raise CaprobeError(f"a {key} model is written as {suffix}; got --out {out}")
    net, label, inputs, calibration = _model_and_inputs(
        run_dir, checkpoint, model, attn, seed, width, profile, num_classes, data, hw, batch,
        calib_data, calib_images if int8 else None)
    report = export_checked(net, out, runtime, inputs, form="paper" if paper_form else "graph",
                            calibration=calibration)
    if as_json:
        from caprobe.io import to_jsonable

        typer.echo(json.dumps(to_jsonable(report), indent=2))
        return
    shape = "x".join(str(d) for d in report.input_shape)
    precision = report.exported.precision
    if precision == "int8":
        precision += f", calibrated on {report.exported.calibration_images} {calib_data or ''}"
        precision = precision.rstrip() + " training images"
    typer.echo(f"exported {label} ({report.form} form, {precision}, input {shape}) to {out}: "
               f"{report.exported.bytes / 1e6:.2f} MB in {report.exported.export_s:.1f} s")
    for name, err in report.errors.items():
        typer.echo(f"  vs eager PyTorch on {name}: max abs error {err['max_abs']:.2e} "
                   f"(relative {err['max_rel']:.2e})")
    typer.echo(f"  {runtime}: {coverage_note(runtime, report.exported.coverage, report.settings)}")
    left = report.exported.coverage.get("fp32_ops")
    if left is not None:
        typer.echo("  ops left in fp32: " + (", ".join(f"{op} ×{n}" for op, n in left.items())
                                            or "none"))
