"""caprobe's command line. Each command lives in its own module and registers on ``app``."""

from caprobe.cli.app import app, main
from caprobe.cli import catalog  # noqa: F401  (registers `list` and `flops`)

__all__ = ["app", "main"]
