"""``caprobe data check``: what was found, counts per split and class, checksum, bad files."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from caprobe.cli.app import app
from caprobe.errors import DataError

data_app = typer.Typer(name="data", help="Inspect and check data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _parse_options(items: list[str] | None) -> dict:
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"option {item!r} is not KEY=VALUE; e.g. --option difficulty=0.5")
        options[key.strip()] = value.strip()
    return options


@data_app.command("check")
def check_command(
    data: Annotated[str, typer.Option("--data", "-d", help="positional, cifar10, cifar100 or "
                                      "imagenette.")] = "positional",
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="Folder or .tar holding "
                                                 "the data set.")] = None,
    cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="Decoded-tensor cache "
                                                  "(default $CAPROBE_CACHE or "
                                                  "~/.cache/caprobe).")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Resize to this size "
                                                   "(imagenette default 128).")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Data-set option "
                                                     "KEY=VALUE, e.g. difficulty=0.5, "
                                                     "label=coarse.")] = None,
    download: Annotated[bool, typer.Option("--download", help="Fetch and verify the official "
                                           "archive if it is missing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Load (decoding and caching if needed) a data set and report what was found."""
    from caprobe.data.check import check_dataset

    report = check_dataset(data, data_dir=data_dir, cache_dir=cache_dir, image_size=image_size,
                           download=download, progress=not as_json,
                           **_parse_options(option))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)
    bad = report["unreadable"]
    if bad:
        raise DataError(f"{len(bad)} unreadable image{'s' if len(bad) > 1 else ''} in "
                        f"{report['found']} (first: {bad[0]['file']}); replace or delete them")


def _print_report(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{r['data']}[/]  found: {r['found']}  ({r['layout']})", highlight=False)
    console.print(f"classes: {r['num_classes']}   image size: {r['image_size']}×"
                  f"{r['image_size']}   augment: {r['augment']}", highlight=False)
    table = Table("class", "train", "test")
    train, test = r["splits"]["train"], r["splits"]["test"]
    for cls in r["classes"]:
        table.add_row(cls, str(train["per_class"][cls]), str(test["per_class"][cls]))
    table.add_row("[bold]total[/]", str(train["count"]), str(test["count"]))
    console.print(table)
    if r["checksum"]:
        mean = ", ".join(f"{v:.4f}" for v in r["mean"])
        std = ", ".join(f"{v:.4f}" for v in r["std"])
        console.print(f"checksum: {r['checksum']}\nmean: ({mean})  std: ({std})", highlight=False)
    console.print(f"cache: {r['cache']}" + (f"  {r['cache_file']}" if r.get("cache_file") else ""),
                  highlight=False)
    if r["unreadable"]:
        console.print(f"[red]unreadable images ({len(r['unreadable'])}):[/]")
        for item in r["unreadable"]:
            console.print(f"  {item['file']}: {item['reason']}", highlight=False, markup=False)
