"""The one exception type for bad user input.

The CLI turns a `SynthError` into one line on stderr and exit code 2; any other exception is a bug and
keeps its traceback.
"""


class SynthError(Exception):
    """Bad input or environment: the message says what, where, and how to fix it."""
