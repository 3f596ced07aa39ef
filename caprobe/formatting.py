"""Numbers as the terminal and the report print them: the one home of every formatter.

Each returns ``missing`` for a value that is not a finite number (None, NaN, a string), so a
gap in a record prints as a dash, never as ``nan``.
"""

from __future__ import annotations

import math
from typing import Any

DASH = "–"


def finite(v: Any) -> bool:
    """A real, finite number (bools are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_number(v: Any, spec: str, *, missing: str = DASH, unit: str = "") -> str:
    """``format(v, spec) + unit``, or ``missing``."""
    return f"{format(v, spec)}{unit}" if finite(v) else missing


def fmt_count(v: Any, spec: str = ".2f", *, sep: str = " ", missing: str = DASH) -> str:
    """1234567 → ``1.23 M`` (k, M, G); the report's default; the terminal table uses
    ``spec=".3g", sep=""`` (``1.23M``)."""
    if not finite(v):
        return missing
    v = float(v)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{format(v / div, spec)}{sep}{unit}"
    return f"{v:.0f}"


def fmt_pct(v: Any, digits: int = 1, *, missing: str = DASH) -> str:
    """A signed percentage: ``+12.7%``."""
    return fmt_number(v, f"+.{digits}f", missing=missing, unit="%")


def fmt_ratio_pct(r: Any, *, missing: str = DASH) -> str:
    """An overhead ratio (1.27) as a percent change (+27.0%)."""
    return fmt_pct(100.0 * (r - 1.0), missing=missing) if finite(r) else missing


def fmt_acc(v: Any) -> str:
    """Top-1 in percent: ``81.23``."""
    return fmt_number(v, ".2f")


def fmt_delta(v: Any) -> str:
    """A signed top-1 delta: ``+0.42``."""
    return fmt_number(v, "+.2f")


def fmt_ms(v: Any, *, missing: str = DASH) -> str:
    """Milliseconds with three significant digits or more: 1.234, 12.34, 123.4."""
    if not finite(v):
        return missing
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"
