"""``caprobe bench``: interleaved latency of attention variants, with spread and paired overhead.

Torch, the models and rich are imported inside the command body so ``caprobe --help`` stays
instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from caprobe.cli.app import app
from caprobe.cli.options import (
    default_num_classes,
    multi_value_command,
    parse_input_size,
    split_commas,
)
from caprobe.errors import CaprobeError, require_positive
from caprobe.formatting import fmt_ms, fmt_number

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from caprobe.measure.latency import LatencyResult

# Options that take several space-separated values: ``--attn none se ca --batch 1 32``.
_MultiValueCommand = multi_value_command("--model", "-m", "--attn", "-a", "--batch", "-b",
                                         "--runtime", "-r")


def _variants(model: str, attns: list[str] | None) -> list[tuple[str, str, str]]:
    """(label, backbone, canonical spec) for every variant of one ``--model``; ``none`` leads.

    Without ``--attn`` the model is timed as named (``mobilenext_ca``), alone. With it, the
    ``none`` baseline is added when missing; labels are canonical specs, duplicates dropped.
    """
    from caprobe.models import resolve_name

    if attns is None:
        backbone, spec = resolve_name(model, None)
        return [(spec, backbone, spec)]
    wanted = [a.strip() for a in split_commas(attns, specs=True) if a.strip()]
    if not wanted:
        raise CaprobeError("--attn was given without any attention name; pass e.g. "
                           "--attn none se ca")
    variants: dict[str, tuple[str, str, str]] = {}
    for a in ["none", *wanted]:
        backbone, spec = resolve_name(model, a)
        variants.setdefault(spec, (spec, backbone, spec))
    return list(variants.values())


def _ms(v: float) -> str:
    return fmt_ms(v, missing="-")


def _table(results: list[LatencyResult]) -> Table:
    from rich.table import Table

    table = Table()
    for name in ("attention", "median ms", "IQR ms", "p90 ms", "CV", "img/s",
                 "vs none", "95% CI", "n"):
        if name == "attention":
            table.add_column(name, justify="left", no_wrap=True)
        else:
            table.add_column(name, justify="right")
    for r in results:
        if r.overhead is None:
            over, ci = ("baseline" if r.label == "none" else "-"), ""
        else:
            over = f"{r.overhead:.3f}x"
            ci = (f"{r.overhead_ci[0]:.3f}-{r.overhead_ci[1]:.3f}" if r.overhead_ci
                  else "too few runs")
        table.add_row(r.label, _ms(r.median_ms), _ms(r.iqr_ms), _ms(r.p90_ms),
                      fmt_number(100 * r.cv, ".1f", unit="%", missing="-"),
                      f"{r.images_per_s:,.1f}", over, ci, str(r.n))
    return table


@app.command("bench", cls=_MultiValueCommand)
def bench(
    model: Annotated[list[str], typer.Option(
        "--model", "-m", help="Model name(s), e.g. mobilenetv2 mobilenext_ca.")
    ] = ["mobilenetv2"],  # noqa: B006 - typer hands the command a fresh list
    attn: Annotated[list[str] | None, typer.Option(
        "--attn", "-a", help="Attention variants to compare, e.g. none se cbam ca (the none "
        "baseline is always added).")] = None,
    batch: Annotated[list[int], typer.Option(
        "--batch", "-b", help="Batch size(s), e.g. 1 32.")] = [1],  # noqa: B006 - as --model
    input_size: Annotated[str | None, typer.Option(
        "--input-size", help="Input size: 224 or HxW (default: profile's).")] = None,
    profile: Annotated[str, typer.Option("--profile", help="imagenet or cifar.")] = "imagenet",
    width: Annotated[float, typer.Option("--width", help="Width multiplier.")] = 1.0,
    num_classes: Annotated[int | None, typer.Option(
        "--num-classes", help="Classifier outputs (default: profile's).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(
        "--dtype", help="fp32, bf16 or fp16 (CUDA only).")] = "fp32",
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", help="Use the channels-last memory format.")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads (torch.set_num_threads); recorded.")] = None,
    min_time: Annotated[float, typer.Option(
        "--min-time", help="Timed seconds per variant (warm-up comes on top).")] = 1.0,
    compile: Annotated[bool, typer.Option(
        "--compile", help="torch.compile each model first; compile time is reported "
        "apart.")] = False,
    paper_form: Annotated[bool, typer.Option(
        "--paper-form", help="Time the models as built (the trainable form, the papers' "
        "math; in an exported runtime the papers' equations in plain operators) instead of "
        "their deployed form, caprobe.deploy(model).")] = False,
    runtime: Annotated[list[str], typer.Option(
        "--runtime", "-r", help="Where to time: eager (PyTorch) and/or onnxruntime, "
        "executorch (XNNPACK), openvino; each needs its extra (onnx, executorch or openvino: "
        "pip install caprobe with it).")] = ["eager"],  # noqa: B006 - as --model
    int8: Annotated[bool, typer.Option(
        "--int8", help="Time the exported runtimes in static int8 (calibrated on random "
        "batches: latency only).")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON list of results only.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Also save the JSON results here (written atomically).")] = None,
) -> None:
    """Time attention variants interleaved (A B C A B C ...) and report latency with spread
    and the overhead over the none baseline with a confidence interval."""
    profile = profile.strip().lower()
    bad = [b for b in batch if b < 1]
    if bad:
        raise CaprobeError(f"batch size {bad[0]} is invalid; use integers >= 1 such as "
                           "--batch 1 32")
    if threads is not None and threads < 1:
        raise CaprobeError(f"--threads {threads} is invalid; use an integer >= 1")
    require_positive(min_time, "--min-time")
    require_positive(width, "--width")
    hw = parse_input_size(input_size, profile)
    classes = num_classes if num_classes is not None else default_num_classes(profile)
    from caprobe.runtimes import check_runtime, runtime_notes

    runtimes = list(dict.fromkeys(check_runtime(r) for r in split_commas(runtime) if r.strip()))
    if not runtimes:
        raise CaprobeError("--runtime was given without a name; pass e.g. --runtime eager "
                           "onnxruntime")

    import caprobe
    from caprobe.io import to_jsonable, write_json
    from caprobe.measure.latency import TimingOptions, resolve_dtype, time_variants
    from caprobe.runtime import resolve_device

    dev = resolve_device(device)
    dkey = resolve_dtype(dtype, dev)
    if int8 and runtimes == ["eager"]:
        raise CaprobeError("--int8 times the exported runtimes; add --runtime onnxruntime, "
                           "executorch or openvino")
    for rt in runtimes:  # a runtime that cannot run these settings, or lacks its extra
        TimingOptions(batch=1, input_size=hw, device=dev, dtype=dkey, runtime=rt,
                      channels_last=channels_last, compile=compile,
                      int8=int8 and rt != "eager").validated()

    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # pipes and files: room for every column
        console = Console(width=120)
    err = Console(stderr=True)
    all_results = []
    groups = [(m, b, rt) for m in dict.fromkeys(model) for b in dict.fromkeys(batch)
              for rt in runtimes]
    for model_name, b, rt in groups:
        variants = _variants(model_name, attn)
        built, meta = {}, {}
        for label, backbone, spec in variants:
            built[label] = caprobe.build_model(backbone, attn=spec, width=width,
                                               num_classes=classes, profile=profile, seed=0)
            meta[label] = {"model": backbone, "attn": spec, "width": width,
                           "profile": profile, "num_classes": classes,
                           "requested_model": model_name}
        if not as_json:
            err.print(f"[dim]timing {model_name} batch {b} in {rt}: "
                      f"{', '.join(built)} ...[/dim]", highlight=False)
        results = time_variants(built, batch=b, input_size=hw, device=dev, dtype=dkey,
                                channels_last=channels_last, threads=threads,
                                min_time=min_time, compile=compile, baseline="none",
                                form="paper" if paper_form else "deployed", runtime=rt,
                                int8=int8 and rt != "eager", meta=meta)
        all_results.extend(results)
        if out is not None:  # saved after each group: an interrupt keeps finished work
            write_json(out, all_results)
        if not as_json:
            r0 = results[0]
            title = (f"{model_name} · {rt} · batch {b} · {hw[0]}x{hw[1]} · {r0.device} "
                     f"({r0.env.get('device_name')}) · {r0.dtype}"
                     f"{' · channels_last' if channels_last else ''} · "
                     f"threads {r0.threads} · torch {r0.env.get('torch')} · "
                     f"{r0.form} form")
            # the header on a line of its own, never wrapped: a table title wraps at the
            # table's width, which a long CPU name exceeds
            console.print(title, highlight=False, markup=False, soft_wrap=True)
            console.print(_table(results))
            for warning in r0.env.get("warnings", []):
                err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False,
                          soft_wrap=True)
            for line in runtime_notes(results):
                console.print(line, highlight=False, soft_wrap=True)
            compiled = [r for r in results if r.compile_time_s is not None]
            if compiled:
                console.print("compile time: " + ", ".join(
                    f"{r.label} {r.compile_time_s:.1f} s" for r in compiled))
    if as_json:
        typer.echo(json.dumps(to_jsonable(all_results), indent=2))
    elif out is not None:
        err.print(f"saved {len(all_results)} results to {out}", highlight=False)
