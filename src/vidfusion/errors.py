"""User-facing errors.

A `VidFusionError` is a problem with the user's input (a path, a checkpoint, a frame count) rather than a bug.
The CLI prints its message as one line and exits non-zero without a traceback, so every message must name
both the problem and the fix.
"""


class VidFusionError(Exception):
    """Bad input from the user; the message says what is wrong and how to fix it."""
