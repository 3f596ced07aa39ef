"""``caprobe compare`` (the ablation end to end) and ``caprobe report`` (re-render / merge)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from caprobe.cli.app import app
from caprobe.cli.options import multi_value_command, parse_key_values
from caprobe.errors import CaprobeError
from caprobe.formatting import finite, fmt_count, fmt_number, fmt_pct, fmt_ratio_pct

_OPTION_NAMES = {  # CLI parameter -> CompareOptions field
    "model": "model", "attn": "attn", "reference": "reference", "width": "width",
    "profile": "profile", "data": "data",
    "data_dir": "data_dir", "data_option": "data_options", "train_subset": "train_subset",
    "curve_subset": "curve_subset",
    "epochs": "epochs", "steps": "steps", "batch_size": "batch_size", "lr": "lr",
    "seeds": "seeds", "seed": "seed", "no_train": "train", "device": "device",
    "threads": "threads", "jobs": "jobs", "latency_batch": "latency_batch",
    "min_time": "latency_min_time", "paper_form": "latency_form",
    "latency_device": "latency_device", "input_size": "input_size",
    "image_size": "image_size",
}


def _explicit(ctx) -> set[str]:  # noqa: ANN001
    """CLI parameters the user gave (not left at their defaults)."""
    given = set()
    for name in _OPTION_NAMES:
        src = ctx.get_parameter_source(name)
        if src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.add(name)
    return given


@app.command("compare", cls=multi_value_command("--attn", "-a"))
def compare(
    ctx: typer.Context,
    attn: list[str] | None = typer.Option(
        None, "--attn", "-a", help="Attention specs to compare with the baseline 'none' "
        "(always included), e.g. --attn se cbam ca \"ca:act=relu\"."),
    reference: str = typer.Option("none", "--reference", help="Also give paired top-1 deltas "
                                  "against this variant, e.g. --reference se for 'does CA beat "
                                  "SE?' (added to --attn when missing)."),
    model: str = typer.Option("mobilenetv2", "--model", "-m", help="Backbone: mobilenetv2 or "
                              "mobilenext."),
    data: str = typer.Option("positional", "--data", help="Data set (positional is synthetic "
                             "and built in; cifar10 needs --data-dir)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Where the data set lives."),
    data_option: list[str] | None = typer.Option(None, "--data-option",
                                                 help="Data set option KEY=VALUE (repeatable)."),
    width: float | None = typer.Option(None, "--width", help="Width multiplier."),
    profile: str | None = typer.Option(None, "--profile", help="imagenet or cifar layout "
                                       "(default: the data set's)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs."),
    steps: int | None = typer.Option(None, "--steps", help="Stop each training after this "
                                     "many steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Training batch size."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate."),
    curve_subset: int | None = typer.Option(None, "--curve-subset", help="Evaluate the epochs "
                                            "before the last on a fixed slice of N test "
                                            "images (curves); the last on all of them."),
    train_subset: int | None = typer.Option(None, "--train-subset",
                                            help="Train on this many images (same per seed)."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per variant, paired across variants "
                               "(3 give a paired 95% interval; 1 gives none)."),
    seed: int = typer.Option(0, "--seed", help="First seed."),
    no_train: bool = typer.Option(False, "--no-train", help="Cost only: counts and latency."),
    device: str = typer.Option("auto", "--device", help="Device for training and latency: "
                               "auto, cpu, cuda."),
    latency_device: str | None = typer.Option(None, "--latency-device", help="Time latency "
                                              "on this device instead (default: --device)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads per job (per "
                                       "training at once), also used for latency. (default: "
                                       "cores // jobs of the plan's first session)",
                                       show_default=False),
    jobs: int | None = typer.Option(None, "--jobs", "-j", help="Trainings at once, each in "
                                    "its own process; --jobs 1 trains them one after the "
                                    "other in this process. Results depend on the threads per "
                                    "training, fixed when the plan is made, not on --jobs. "
                                    "(default: 2 on a machine with 2+ cores "
                                    "when 2+ trainings are left, else 1)", show_default=False),
    latency_batch: int = typer.Option(1, "--latency-batch", help="Batch size for latency."),
    min_time: float = typer.Option(0.5, "--min-time", help="Timed seconds per variant for "
                                   "latency."),
    paper_form: bool = typer.Option(False, "--paper-form", help="Time the models as built (the "
                                    "trainable form) instead of caprobe.deploy(model)."),
    input_size: int | None = typer.Option(None, "--input-size", help="Input side for counts "
                                          "and latency (default: the data's image size)."),
    image_size: int | None = typer.Option(None, "--image-size", help="Image size of the data "
                                          "set (resized once; default: its own, imagenette "
                                          "128)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder to create (default "
                                    "runs/compare-<time>)."),
    resume: Path | None = typer.Option(None, "--resume", help="Finish the run in this folder: "
                                       "skips finished pieces, reuses partial checkpoints."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON only."),
) -> None:
    """Run the ablation: counts, latency and training of every variant x seed, then results
    (CSV/JSON) and a self-contained HTML report."""
    from caprobe.comparison import CompareOptions, run_compare

    values = {
        "model": model, "attn": list(attn or []), "reference": reference, "width": width,
        "profile": profile,
        "data": data, "data_dir": str(data_dir) if data_dir is not None else None,
        "data_option": parse_key_values(data_option, "--data-option", "n_train=512"),
        "train_subset": train_subset, "curve_subset": curve_subset,
        "epochs": epochs, "steps": steps, "batch_size": batch_size, "lr": lr, "seeds": seeds,
        "seed": seed, "no_train": not no_train, "device": device, "threads": threads,
        "jobs": jobs, "latency_batch": latency_batch, "min_time": min_time,
        "paper_form": "paper" if paper_form else "deployed", "latency_device": latency_device,
        "input_size": input_size, "image_size": image_size,
    }
    fields = {_OPTION_NAMES[k]: v for k, v in values.items()}
    if resume is not None:
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise CaprobeError("--out and --resume name different folders; --resume DIR "
                               "continues the run in DIR")
        given = {_OPTION_NAMES[k]: values[k] for k in _explicit(ctx)}
        if "attn" in given and not given["attn"]:
            raise CaprobeError("no attention variants given; pass e.g. --attn se cbam ca")
        outcome = run_compare(None, resume, resume=True, given=given, progress=not as_json,
                              argv=_argv())
    else:
        if not attn:
            raise CaprobeError("no attention variants given; pass e.g. --attn se cbam ca")
        outcome = run_compare(CompareOptions(**fields), out, progress=not as_json,
                              argv=_argv())
    if as_json:
        typer.echo(json.dumps({
            "out": str(outcome.out), "report": str(outcome.report) if outcome.report else None,
            "results_csv": str(outcome.results_csv), "results_json": str(outcome.results_json),
            "ran": outcome.ran, "skipped": outcome.skipped,
            "aggregates": outcome.results["aggregates"], "runs": outcome.results["runs"],
        }, indent=2))
        return
    _print_summary(outcome)


def _argv() -> list[str]:
    argv = list(sys.argv)
    if argv:
        argv[0] = "caprobe" if argv[0].endswith("caprobe") or argv[0].endswith(".py") \
            else argv[0]
    return argv


def _count(v: Any) -> str:
    """Counts in the 80-column table: three significant digits, no space (``1.23M``)."""
    return fmt_count(v, ".3g", sep="")


def _delta_cell(r: dict[str, Any], prefix: str) -> str:
    """A paired top-1 delta and, below, its 95% interval."""
    mean = r.get(f"{prefix}_mean")
    text = fmt_number(mean, "+.2f")
    if r.get(f"{prefix}_ci_low") is not None:
        text += f"\n[{r[f'{prefix}_ci_low']:+.1f}, {r[f'{prefix}_ci_high']:+.1f}]"
    elif mean is not None:
        text += "\nno CI: 1 seed"
    return text


def _print_summary(outcome) -> None:  # noqa: ANN001
    """A table that fits 80 columns: each cell holds a value and, below, its delta/spread."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from caprobe.comparison.results import DID_NOT_LEARN

    console = Console()
    table = Table(title=f"caprobe compare: {outcome.out}", box=box.SIMPLE_HEAD,
                  title_justify="left", pad_edge=False)
    reference = outcome.results.get("reference") or "none"
    table.add_column("variant", overflow="fold", max_width=18)
    names = ["params", "MAdds", "latency", "top-1 %", "Δ top-1"]
    if reference != "none":
        names.append(f"Δ vs {reference}")
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("status", overflow="fold", max_width=13)
    errors = []
    for r in outcome.results["aggregates"]:
        lat = fmt_number(r.get("latency_median_ms"), ".2f") + " ms"
        if finite(r.get("latency_overhead")):
            lat += f"\n{fmt_ratio_pct(r['latency_overhead'])}"
        top = fmt_number(r.get("top1_mean"), ".2f")
        if r.get("top1_ci_low") is not None:
            top += f"\n± {(r['top1_ci_high'] - r['top1_ci_low']) / 2:.2f}"
        deltas = [_delta_cell(r, "delta_top1")]
        if reference != "none":
            deltas.append(_delta_cell(r, "ref_delta_top1"))
        if r.get("error"):
            errors.append(f"{r['variant']}: {r['error']}")
        status = str(r.get("status"))
        if r.get("n_not_learned") and status != DID_NOT_LEARN:
            status += f"\n{r['n_learned']}/{r['n_finished']} learned"
        table.add_row(
            r["variant"],
            f"{_count(r.get('params'))}\n{fmt_pct(r.get('params_delta_pct'), missing='')}"
            .rstrip(),
            f"{_count(r.get('madds'))}\n{fmt_pct(r.get('madds_delta_pct'), missing='')}"
            .rstrip(),
            lat, top, *deltas, status)
    console.print(table)
    console.print("Δ against none; latency: median and overhead; top-1 ± 95% CI half-width; "
                  "Δ top-1 paired by seed [95% CI].", style="dim", highlight=False)
    for line in errors:
        console.print(f"error: {line}", highlight=False, soft_wrap=True)
    if outcome.report:
        console.print(f"report:       {outcome.report}", highlight=False, soft_wrap=True)
    console.print(f"results.csv:  {outcome.results_csv}", highlight=False, soft_wrap=True)
    console.print(f"results.json: {outcome.results_json}", highlight=False, soft_wrap=True)
    aggs = outcome.results["aggregates"]
    bad = [r["variant"] for r in aggs if r.get("status") not in ("ok", DID_NOT_LEARN)]
    if bad:
        typer.echo(f"caprobe: warning: not every piece finished for: {', '.join(bad)} "
                   "(see the status column)", err=True)
    unlearned = [f"{r['variant']} ({r['n_not_learned']}/{r['n_finished']})" for r in aggs
                 if r.get("n_not_learned")]
    if unlearned:
        typer.echo(f"caprobe: warning: runs that did not learn (top-1 at chance or a flat "
                   f"training loss) are left out of top-1 and deltas: {', '.join(unlearned)}",
                   err=True)


@app.command("report")
def report(
    runs: list[Path] = typer.Argument(..., help="Run folder(s) written by caprobe compare; "
                                      "several are merged into one page (same data set)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write (default: "
                                    "DIR/report.html for one run, report.html for several)."),
) -> None:
    """Render the HTML report from saved results only (re-render one run or merge several)."""
    from caprobe.reporting import render_report

    if out is None and len(runs) > 1:
        out = Path("report.html")
    path = render_report(list(runs), out)
    typer.echo(str(path))
