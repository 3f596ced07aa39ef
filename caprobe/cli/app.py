"""The Typer application object and the error policy shared by every command.

Command modules import ``app`` from here and register themselves; keep them thin:
parse options, call the library, print. Torch is imported inside command bodies only,
so ``caprobe --help`` stays instant.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from caprobe.errors import CaprobeError


class _CaprobeGroup(TyperGroup):
    """Turns a :class:`CaprobeError` raised by any command into one line on stderr, exit 2."""

    def invoke(self, ctx):  # noqa: ANN001 (typer's vendored click Context)
        from caprobe.runtime import kernel_setting, malloc_setting  # no torch: --help instant

        try:
            malloc_setting()  # an environment typo stops every command before it starts
            kernel_setting()
            return super().invoke(ctx)
        except CaprobeError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("caprobe: interrupted; finished results are saved, rerun with --resume "
                       "where the command offers it", err=True)
            raise typer.Exit(130) from None


def fail(message: str) -> None:
    """Print ``caprobe: error: <message>`` on one line and exit with code 2."""
    typer.echo(f"caprobe: error: {' '.join(message.split())}", err=True)
    raise typer.Exit(2)


app = typer.Typer(
    cls=_CaprobeGroup,
    name="caprobe",
    help="Does this attention module pay for itself? Build, count, time, train and compare "
    "attention modules (SE, CBAM, ECA, Coordinate Attention) in MobileNetV2 and MobileNeXt.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
