"""Errors a user can fix. The CLI turns them into one line on stderr and exit code 2."""

import math


class CaprobeError(ValueError):
    """Bad input from the user (unknown name, impossible size, malformed spec, ...).

    Subclasses ValueError so library callers can catch the usual exception type.
    The message is one sentence naming the problem and how to fix it.
    """


class DataError(CaprobeError):
    """A data set is missing, corrupt, or laid out wrongly."""


def require_positive(value: object, what: str) -> float:
    """``value`` as a float when it is a finite number > 0, else a :class:`CaprobeError` naming
    ``what`` (say ``"--width"``): the one rule for widths, rates and times in every command
    (``inf`` overflows the channel arithmetic, ``nan`` compares false with everything)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not (math.isfinite(value) and value > 0):
        raise CaprobeError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def input_hw(input_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224`` or ``(160, 224)`` → ``(H, W)``, checked to be positive integers: the one rule
    for input sizes (counts, latency, the CLI's ``--input-size`` once parsed)."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise CaprobeError(f"input size must be a positive integer or H,W pair, got {input_size!r}")
    return size  # type: ignore[return-value]


def error_line(exc: BaseException, limit: int = 240) -> str:
    """A library's exception as one short line, ``Type: first line`` (compilers' and
    runtimes' messages run to pages)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {first[:limit]}"
