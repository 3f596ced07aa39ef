"""Errors a user can fix. The CLI turns them into one line on stderr and exit code 2."""


class CaprobeError(ValueError):
    """Bad input from the user (unknown name, impossible size, malformed spec, ...).

    Subclasses ValueError so library callers can catch the usual exception type.
    The message is one sentence naming the problem and how to fix it.
    """


class DataError(CaprobeError):
    """A data set is missing, corrupt, or laid out wrongly."""
