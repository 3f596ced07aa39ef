"""``caprobe export``: a trained or freshly built model as an ONNX, ExecuTorch or OpenVINO file,
checked against eager PyTorch, with what the runtime did with each op.

Torch and the runtimes are imported inside the command body only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from caprobe.cli.app import app
from caprobe.cli.options import default_num_classes, parse_input_size
from caprobe.errors import CaprobeError, require_positive
from caprobe.runtimes import CALIBRATION_IMAGES

if TYPE_CHECKING:
    import torch

#: Inputs the exported outputs are compared on: this many random batches (fixed seeds).
RANDOM_INPUTS = 2


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


@dataclass(frozen=True, kw_only=True)
class _ExportSource:
    """What ``caprobe export`` exports and checks it on: a run folder, a checkpoint or a fresh
    model, the batch and input size the graph is built for, and the data sets behind its real
    and calibration inputs."""

    run_dir: Path | None
    checkpoint: Path | None
    model: str | None
    attn: str | None
    seed: int
    width: float
    profile: str
    num_classes: int | None  # None: the profile's default
    data: str | None
    hw: tuple[int, int] | None  # None: the profile's input size
    batch: int
    calib_data: str | None
    calib_images: int | None  # None: no calibration (not --int8)


def _model_and_inputs(src: _ExportSource) -> tuple[
        torch.nn.Module, str, dict[str, torch.Tensor], list[torch.Tensor] | None]:
    """``(model, label, {input name: tensor}, calibration batches or None)``: from a run
    folder (its data set's first test images as the real inputs, its training images for
    calibration), a checkpoint, or built fresh."""
    import torch

    import caprobe
    from caprobe.data.registry import load_dataset

    profile, data, calib_data = src.profile, src.data, src.calib_data
    dataset_kwargs: dict = {}
    if src.run_dir is not None:
        if src.model is not None or src.checkpoint is not None:
            raise CaprobeError("give a run folder or --model/--checkpoint, not both")
        from caprobe.training.loop import load_model, load_run

        config, _, _ = load_run(src.run_dir)
        net = load_model(src.run_dir)
        label, profile = f"{config.model} {config.attn} ({src.run_dir})", config.profile
        data = data or config.data
        calib_data = calib_data or (config.data if src.calib_images is not None else None)
        dataset_kwargs = config.dataset_kwargs()
    else:
        if src.model is None:
            raise CaprobeError("nothing to export; pass a run folder, or --model NAME (with "
                               "--checkpoint FILE for trained weights)")
        from caprobe.models import resolve_name

        backbone, spec = resolve_name(src.model, src.attn)
        classes = (src.num_classes if src.num_classes is not None
                   else default_num_classes(profile))
        net = caprobe.build_model(backbone, attn=spec, width=src.width, num_classes=classes,
                                  profile=profile, seed=src.seed)
        label = f"{backbone} {spec} (seed {src.seed})"
        checkpoint = src.checkpoint
        if checkpoint is not None:
            from caprobe.training.checkpoint import load_checkpoint

            if not checkpoint.is_file():
                raise CaprobeError(f"checkpoint {checkpoint} does not exist")
            try:
                net.load_state_dict(load_checkpoint(checkpoint)["model"])
            except (KeyError, RuntimeError) as exc:
                raise CaprobeError(f"{checkpoint} does not hold weights of {backbone} {spec} "
                                   f"width {src.width} with {classes} classes; pass the "
                                   "--model, --attn, --width and --num-classes it was trained "
                                   "with") from exc
            label = f"{backbone} {spec} ({checkpoint})"
    size = src.hw or parse_input_size(None, profile)
    batch = src.batch
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
    if src.calib_images is not None:
        if calib_data is None:
            raise CaprobeError("--int8 needs calibration images; pass --calib-data NAME "
                               "(e.g. --calib-data positional, the built-in set)")
        images = _images(dataset(calib_data), "train", src.calib_images, size)
        if images.shape[0] < batch:
            raise CaprobeError(f"{calib_data} has {images.shape[0]} training images; int8 "
                               f"calibration needs at least --batch {batch}")
        calibration = list(images[: images.shape[0] // batch * batch].split(batch))
    return net.eval(), label, inputs, calibration


@app.command("export")
def export(
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help="onnx, executorch (XNNPACK) or openvino; each needs its extra "
        "(pip install caprobe with it).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The file to write: .onnx, .pte or .xml (OpenVINO writes the .bin "
        "beside it).")],
    run_dir: Annotated[Path | None, typer.Argument(
        help="A training run folder (caprobe train): its model with its last checkpoint's "
        "weights.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Build this model instead of reading a run, e.g. "
        "mobilenetv2_ca.")] = None,
    attn: Annotated[str | None, typer.Option(
        "--attn", "-a", help="Attention spec for --model.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="Weights for --model: a caprobe checkpoint.pt.")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of a freshly built --model (the weights "
        "caprobe.build_model(..., seed=N) gives).")] = 0,
    width: Annotated[float, typer.Option("--width", help="Width multiplier of --model.")] = 1.0,
    profile: Annotated[str, typer.Option(
        "--profile", help="imagenet or cifar (--model).")] = "imagenet",
    num_classes: Annotated[int | None, typer.Option(
        "--num-classes", help="Classifier outputs of --model.")] = None,
    input_size: Annotated[str | None, typer.Option(
        "--input-size", help="Input size: 224 or HxW (default: the profile's); the graph is "
        "static.")] = None,
    batch: Annotated[int, typer.Option(
        "--batch", "-b", help="Batch size the graph is built for.")] = 1,
    data: Annotated[str | None, typer.Option(
        "--data", help="Also check on this data set's first test images (default for a run "
        "folder: its data set).")] = None,
    paper_form: Annotated[bool, typer.Option(
        "--paper-form", help="Export the papers' equations in plain operators instead of the "
        "deployed form.")] = False,
    deploy_target: Annotated[str, typer.Option(
        "--deploy-target", help="The deployed form: auto (the fastest for this runtime on "
        "this machine: nchwc for onnx in fp32 where ONNX Runtime blocks channels, else "
        "graph), graph (every runtime and CPU), or nchwc (ONNX Runtime on x86).")] = "auto",
    int8: Annotated[bool, typer.Option(
        "--int8", help="Static int8 (onnx: QDQ; executorch: pt2e with the XNNPACK quantizer; "
        "openvino: NNCF), calibrated on training images.")] = False,
    calib_data: Annotated[str | None, typer.Option(
        "--calib-data", help="Data set whose first training images calibrate --int8 (default "
        "for a run folder: its data set).")] = None,
    calib_images: Annotated[int, typer.Option(
        "--calib-images", help="How many training images calibrate --int8.")] = CALIBRATION_IMAGES,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the export record as JSON.")] = False,
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
    from caprobe.deployment import TARGETS

    target = deploy_target.strip().lower()
    choices = ["auto", *(t for t in TARGETS if t != "eager")]  # eager forms do not export
    if target not in choices:
        raise CaprobeError(f"unknown --deploy-target {deploy_target!r}; choose "
                           f"{', '.join(choices[:-1])} or {choices[-1]}")
    if paper_form and target != "auto":
        raise CaprobeError("--paper-form exports no deployed form; drop --deploy-target")

    from caprobe.runtimes import backend, coverage_note, export_checked

    suffix = backend(runtime).SUFFIX  # a missing extra fails before any model is built
    if out.suffix != suffix:
        raise CaprobeError(f"a {key} model is written as {suffix}; got --out {out}")
    net, label, inputs, calibration = _model_and_inputs(_ExportSource(
        run_dir=run_dir, checkpoint=checkpoint, model=model, attn=attn, seed=seed, width=width,
        profile=profile, num_classes=num_classes, data=data, hw=hw, batch=batch,
        calib_data=calib_data, calib_images=calib_images if int8 else None))
    report = export_checked(net, out, runtime, inputs, form="paper" if paper_form else "graph",
                            target=None if target == "auto" else target,
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
