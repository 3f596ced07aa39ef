"""``caprobe compare`` (the ablation end to end) and ``caprobe report`` (re-render / merge)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from caprobe.cli.app import app
from caprobe.cli.options import multi_value_command, parse_key_values, split_commas
from caprobe.errors import CaprobeError
from caprobe.formatting import finite, fmt_count, fmt_number, fmt_pct, fmt_ratio_pct


def _explicit(ctx: typer.Context) -> set[str]:
    """The options the user gave (not left at their defaults), as CompareOptions paths."""
    from caprobe.comparison.plan import option_path

    given = set()
    for name in ctx.params:
        src = ctx.get_parameter_source(name)
        if name not in _NOT_OPTIONS and src is not None \
                and src.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.add(option_path(name))
    return given


#: parameters of ``compare`` that are not options of the comparison
_NOT_OPTIONS = frozenset({"out", "resume", "as_json"})


@app.command("compare", cls=multi_value_command("--attn", "-a", "--runtime", "-r"))
def compare(
    ctx: typer.Context,
    attn: Annotated[list[str] | None, typer.Option(
        "--attn", "-a", help="Attention specs to compare with the baseline 'none' "
        "(always included), e.g. --attn se cbam ca \"ca:act=relu\" (or --attn se,cbam,ca).")
    ] = None,
    reference: Annotated[str, typer.Option(
        "--reference", help="Also give paired top-1 deltas against this variant, e.g. "
        "--reference se for 'does CA beat SE?' (added to --attn when missing).")] = "none",
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Backbone: mobilenetv2 or mobilenext.")] = "mobilenetv2",
    data: Annotated[str, typer.Option(
        "--data", help="Data set (positional is synthetic and built in; cifar10 needs "
        "--data-dir).")] = "positional",
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Where the data set lives.")] = None,
    data_options: Annotated[list[str] | None, typer.Option(
        "--data-option", help="Data set option KEY=VALUE (repeatable).")] = None,
    width: Annotated[float | None, typer.Option("--width", help="Width multiplier.")] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile", help="imagenet or cifar layout (default: the data set's).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs.")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Stop each training after this many steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Training batch size.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate.")] = None,
    curve_subset: Annotated[int | None, typer.Option(
        "--curve-subset", help="Evaluate the epochs before the last on a fixed slice of N "
        "test images (curves); the last on all of them.")] = None,
    train_subset: Annotated[int | None, typer.Option(
        "--train-subset", help="Train on this many images (same per seed).")] = None,
    seeds: Annotated[int, typer.Option(
        "--seeds", help="Seeds per variant, paired across variants (3 give a paired 95% "
        "interval; 1 gives none).")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="First seed.")] = 0,
    train: Annotated[bool, typer.Option(
        "--train/--no-train", help="--no-train: cost only (counts and latency).")] = True,
    device: Annotated[str, typer.Option(
        "--device", help="Device for training and latency: auto, cpu, cuda.")] = "auto",
    latency_device: Annotated[str | None, typer.Option(
        "--latency-device", help="Time latency on this device instead (default: "
        "--device).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads per job (per training at once), also used for "
        "latency. (default: cores // jobs of the plan's first session)",
        show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", help="Trainings at once, each in its own process; --jobs 1 trains "
        "them one after the other in this process. Results depend on the threads per "
        "training, fixed when the plan is made, not on --jobs. (default: 2 on a machine with "
        "2+ cores when 2+ trainings are left, else 1)", show_default=False)] = None,
    nproc_per_node: Annotated[int, typer.Option(
        "--nproc-per-node", help="Train each piece as DDP over N processes under torchrun "
        "(gloo on CPU, one GPU each on CUDA); part of the plan. The --threads of a training "
        "are shared among them.")] = 1,
    latency_batch: Annotated[int, typer.Option(
        "--latency-batch", help="Batch size for latency.")] = 1,
    latency_min_time: Annotated[float, typer.Option(
        "--min-time", help="Timed seconds per variant for latency.")] = 0.5,
    paper_form: Annotated[bool, typer.Option(
        "--paper-form", help="Time the models as built (the trainable form) instead of "
        "caprobe.deploy(model).")] = False,
    input_size: Annotated[int | None, typer.Option(
        "--input-size", help="Input side for counts and latency (default: the data's image "
        "size).")] = None,
    image_size: Annotated[int | None, typer.Option(
        "--image-size", help="Image size of the data set (resized once; default: its own, "
        "imagenette 128).")] = None,
    runtimes: Annotated[list[str] | None, typer.Option(
        "--runtime", "-r", help="Also time the trained models in these exported runtimes: "
        "onnxruntime, executorch, openvino (each needs its extra, e.g. caprobe\\[onnx]).")] = None,
    int8: Annotated[bool, typer.Option(
        "--int8", help="Also quantise each trained model statically in each --runtime "
        "(calibrated on the same first training images for every variant), evaluate it on "
        "the test set and time it.")] = False,
    executor: Annotated[str, typer.Option(
        "--executor", help="Where the trainings run: local (this machine, --jobs worker "
        "processes) or slurm (one job array through submitit; needs caprobe\\[slurm] and a "
        "run folder every node sees).")] = "local",
    slurm_partition: Annotated[str | None, typer.Option(
        "--slurm-partition", help="Slurm partition of the pieces (default: the cluster's "
        "default).")] = None,
    slurm_time_min: Annotated[int, typer.Option(
        "--slurm-time", help="Time limit of each piece in minutes; a piece warned before it "
        "requeues itself and continues from its checkpoint.")] = 60,
    slurm_gpus_per_piece: Annotated[int, typer.Option(
        "--slurm-gpus-per-piece", help="GPUs of each piece.")] = 0,
    slurm_cpus_per_piece: Annotated[int | None, typer.Option(
        "--slurm-cpus-per-piece", help="CPUs of each piece (default: the plan's threads per "
        "training).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run folder to create (default runs/compare-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Finish the run in this folder: skips finished pieces, reuses "
        "partial checkpoints.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the results as JSON only.")] = False,
) -> None:
    """Run the ablation: counts, latency and training of every variant x seed, then results
    (CSV/JSON) and a self-contained HTML report."""
    from caprobe.comparison import CompareOptions, run_compare
    from caprobe.comparison.slurm import SlurmOptions
    from caprobe.training import TrainConfig

    options = CompareOptions(
        executor=executor, slurm=SlurmOptions(
            partition=slurm_partition, time_min=slurm_time_min, gpus_per_piece=slurm_gpus_per_piece,
            cpus_per_piece=slurm_cpus_per_piece),
        attn=split_commas(attn, specs=True) or [], reference=reference, seeds=seeds,
        train=train, jobs=jobs,
        latency_batch=latency_batch, latency_min_time=latency_min_time,
        latency_device=latency_device, paper_form=paper_form, input_size=input_size,
        runtimes=[r for r in split_commas(runtimes) or [] if r.strip()], int8=int8,
        training=TrainConfig(
            model=model, data=data, data_dir=str(data_dir) if data_dir is not None else None,
            data_options=parse_key_values(data_options, "--data-option", "n_train=512"),
            image_size=image_size, width=width, profile=profile, epochs=epochs, steps=steps,
            batch_size=batch_size, lr=lr, curve_subset=curve_subset,
            train_subset=train_subset, seed=seed, device=device, threads=threads,
            nproc_per_node=nproc_per_node))
    if not options.attn and (resume is None or "attn" in _explicit(ctx)):
        raise CaprobeError("no attention variants given; pass e.g. --attn se cbam ca")
    if resume is not None:
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise CaprobeError("--out and --resume name different folders; --resume DIR "
                               "continues the run in DIR")
        outcome = run_compare(options, resume, resume=True, given=_explicit(ctx),
                              progress=not as_json, argv=_argv())
    else:
        outcome = run_compare(options, out, progress=not as_json, argv=_argv())
    report = _render_report(outcome)
    if as_json:
        typer.echo(json.dumps({
            "out": str(outcome.out), "report": str(report) if report else None,
            "results_csv": str(outcome.results_csv), "results_json": str(outcome.results_json),
            "ran": outcome.ran, "skipped": outcome.skipped,
            "aggregates": outcome.results["aggregates"], "runs": outcome.results["runs"],
        }, indent=2))
        return
    _print_summary(outcome, report)


def _render_report(outcome: Any) -> Path:
    """``report.html`` of the run folder, rendered from its saved results (kept as it is when
    this session computed nothing new)."""
    from caprobe.comparison import Layout
    from caprobe.reporting import render_report
    from caprobe.runtime import environmental_cause, failure_line, is_environmental

    path = Layout(outcome.out).report
    if not outcome.ran and path.is_file():
        return path
    try:
        return render_report([outcome.out], path)
    except Exception as exc:
        if not is_environmental(exc):
            raise
        raise CaprobeError(failure_line(*environmental_cause(exc),
                                        f"writing the report of {outcome.out}",
                                        f"render it with caprobe report {outcome.out}")) from exc


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


def _print_summary(outcome: Any, report: Path | None) -> None:
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
    if report:
        console.print(f"report:       {report}", highlight=False, soft_wrap=True)
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
    runs: Annotated[list[Path], typer.Argument(
        help="Run folder(s) written by caprobe compare; several are merged into one page "
        "(same data set).")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="HTML file to write (default: DIR/report.html for one run, "
        "report.html for several).")] = None,
) -> None:
    """Render the HTML report from saved results only (re-render one run or merge several)."""
    from caprobe.reporting import render_report

    if out is None and len(runs) > 1:
        out = Path("report.html")
    path = render_report(list(runs), out)
    typer.echo(str(path))


@app.command("status")
def status(
    run: Annotated[Path, typer.Argument(help="Run folder written by caprobe compare.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON only.")] = False,
) -> None:
    """Where each training piece of a run stands: done, running, queued (Slurm job ids),
    failed or not submitted."""
    from caprobe.comparison import Layout, load_plan
    from caprobe.comparison.slurm import status_rows

    plan = load_plan(run)
    rows = status_rows(Layout(run), [(p["variant"], p["seed"]) for p in plan["pieces"]])
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"caprobe status: {run}", title_justify="left")
    for name in ("variant", "seed", "status", "job", "tries"):
        table.add_column(name, justify="right" if name in ("seed", "tries") else "left")
    for r in rows:
        table.add_row(r["variant"], str(r["seed"]), r["status"], r["job_id"] or "–",
                      str(r["attempts"]))
    console = Console()
    console.print(table)
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(
        r["status"] for r in rows)}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)
