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
