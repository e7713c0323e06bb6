"""STUB — to be implemented (issue 7)."""

from __future__ import annotations

HELP = "run every stage in order, skipping those already up to date"


def add_arguments(p):
    pass


def command(args, cfg, run_dir):
    raise NotImplementedError
