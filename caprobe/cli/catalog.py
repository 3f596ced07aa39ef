"""``caprobe list`` and ``caprobe flops``: what can be built, and what it costs to run."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from caprobe.cli.app import app
from caprobe.cli.options import parse_input_size


@app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List backbones, input profiles and attention specs with their defaults."""
    from caprobe.attention import kinds
    from caprobe.models import BACKBONES, PROFILES

    specs = {name: {"summary": kind.summary, "defaults": kind.defaults(),
                    "options": kind.options()} for name, kind in kinds().items()}
    if as_json:
        typer.echo(json.dumps({"backbones": list(BACKBONES), "profiles": PROFILES,
                               "attention": specs}, indent=2))
        return
    from rich.console import Console

    console = Console()
    console.print("[bold]backbones[/]  " + ", ".join(BACKBONES)
                  + "   (shorthand: <backbone>_<attention>, e.g. mobilenext_ca)")
    console.print("[bold]profiles[/]   "
                  + ", ".join(f"{name} ({size}×{size})" for name, size in PROFILES.items()))
    console.print("[bold]attention[/]  spec = NAME or NAME:key=value,... "
                  "e.g. ca:act=relu,reduction=16")
    for name, info in specs.items():
        defaults = ", ".join(f"{k}={v}" for k, v in info["defaults"].items()) or "-"
        console.print(f"  [cyan]{name:<6}[/] {info['summary']}  [dim]({defaults})[/]",
                      highlight=False)


@app.command("flops")
def flops_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone or shorthand, e.g. "
                                       "mobilenetv2, mobilenext_ca.")] = "mobilenetv2",
    attn: Annotated[str | None, typer.Option(
        "--attn", "-a", help="Attention spec; overrides the shorthand, e.g. "
        "'ca:reduction=16,act=relu'.")] = None,
    width: Annotated[float, typer.Option(help="Width multiplier.")] = 1.0,
    profile: Annotated[str, typer.Option(help="Input profile: imagenet or cifar.")] = "imagenet",
    input_size: Annotated[str | None, typer.Option("--input-size", help="224 or HxW; default: "
                                                   "the profile's size.")] = None,
    num_classes: Annotated[int, typer.Option("--num-classes", help="Classifier outputs.")] = 1000,
    by_module: Annotated[bool, typer.Option("--by-module", help="Also print the per-module "
                                            "breakdown.")] = False,
    depth: Annotated[int, typer.Option(help="Deepest module level shown by --by-module.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Parameters and multiply-adds (fvcore): total, per stage, and the attention's share."""
    size = parse_input_size(input_size, profile)
    from caprobe import build_model, count
    from caprobe.io import to_jsonable

    counts = count(build_model(model, attn=attn, width=width, num_classes=num_classes,
                               profile=profile), size)
    if as_json:
        record = to_jsonable(counts)
        record["attention_share"] = counts.attention_share
        if not by_module:
            record.pop("by_module")
        typer.echo(json.dumps(record, indent=2))
        return
    from rich.console import Console

    from caprobe.cli.tables import counts_tables

    console = Console()
    for table in counts_tables(counts, by_module=by_module, depth=depth):
        console.print(table)
