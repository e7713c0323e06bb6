"""What reaches the terminal: our log lines, the libraries' only with ``--verbose``, progress bars only on a TTY.

``setup(level)`` is called once by the CLI: ``-1`` (``--quiet``: warnings and errors), ``0`` (default:
our lines; a library's lines, banners and Python warnings are dropped), ``1`` (``--verbose``: theirs too),
``2`` (``--debug``). ``adopt(name)`` is called right after importing a library that attaches its own
console handler (Lightning does, on import), so its lines go through ours once instead of twice.

May import: the standard library only.
"""

from __future__ import annotations

import logging
import os
import sys

OURS = ("movielens_sids", "root", "__main__")
"""Loggers whose info lines are the program's own output."""
LIBRARIES = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning", "faiss",
             "faiss.loader", "sentence_transformers", "transformers", "torch", "httpx", "urllib3", "numba",
             "filelock", "huggingface_hub", "matplotlib", "PIL", "umap", "pynndescent")
"""Libraries whose lines are shown only with --verbose (their errors always)."""


class OursOrErrors(logging.Filter):
    """Below --verbose, a library's record passes only when it is an error. A filter on our handler, not a
    level on their loggers: Lightning sets its loggers' levels when it is imported, after the CLI starts."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return self.level >= 1 or record.name.split(".")[0] in OURS or record.levelno >= logging.ERROR


def current_level() -> int:
    """The level ``setup`` was given in this process (0 when it was not called), for worker processes to copy."""
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, OursOrErrors):
                return f.level
    return 0


def setup(level: int) -> None:
    """Log to stderr at ``level`` (-1 quiet, 0 default, 1 verbose, 2 debug); see the module docstring."""
    import warnings

    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(
        level=logging.DEBUG if level >= 2 else logging.WARNING if level < 0 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if level >= 2 else "%(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("movielens_sids").setLevel(logging.WARNING if level < 0 else logging.NOTSET)
    for handler in (h for h in root.handlers if h not in before):  # ours, not a test harness's
        handler.addFilter(OursOrErrors(level))
    for name in LIBRARIES:
        adopt(name)
    if level < 1:
        warnings.filterwarnings("ignore")  # libraries' deprecations and hints; --verbose shows them
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if level < 0 or not sys.stderr.isatty():  # a log file gets no bar redrawn at every step
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def adopt(name: str) -> None:
    """Remove the console handlers a library put on its own logger, so that its records reach the root
    logger's handler once. Nothing changes when the root logger has no handler (a program that did not set
    up logging keeps the library's own output)."""
    if not logging.getLogger().handlers:
        return
    lib = logging.getLogger(name)
    for h in list(lib.handlers):
        if type(h) is logging.StreamHandler:
            lib.removeHandler(h)
    lib.propagate = True
