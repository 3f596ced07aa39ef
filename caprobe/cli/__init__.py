"""caprobe's command line. Each command lives in its own module and registers on ``app``."""

from caprobe.cli import bench, catalog, compare, data, export, train  # noqa: F401  (register)
from caprobe.cli.app import app, main

__all__ = ["app", "main"]
