"""caprobe's command line. Each command lives in its own module and registers on ``app``."""

from caprobe.cli import bench  # noqa: F401
from caprobe.cli import catalog  # noqa: F401
from caprobe.cli import compare  # noqa: F401
from caprobe.cli import data  # noqa: F401
from caprobe.cli import train  # noqa: F401
from caprobe.cli.app import app, main

__all__ = ["app", "main"]
