"""caprobe's command line. Each command lives in its own module and registers on ``app``."""

from caprobe.cli import bench, catalog, compare, data, train  # noqa: F401  (register commands)
from caprobe.cli.app import app, main

__all__ = ["app", "main"]
