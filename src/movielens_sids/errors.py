"""The one exception type users see: a one-line message that names the bad input.

May import: nothing (the bottom of the package).
"""

from __future__ import annotations


class SidsError(Exception):
    """A user-facing failure (bad input, missing artifact, no network, ...).

    The CLI prints ``error: <message>`` on one line and exits non-zero; no traceback unless
    ``--debug``. Raise it *before* touching any artifact so the run folder stays as it was.
    """

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: multi-line messages from libraries are folded.
        super().__init__(" ".join(str(message).split()))
