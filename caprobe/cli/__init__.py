"""caprobe's command line. Each command lives in its own module and registers on ``app``."""

from caprobe.cli.app import app, main


__all__ = ["app", "main"]
