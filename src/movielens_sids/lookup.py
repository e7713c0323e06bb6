"""STUB — to be implemented (issue 5)."""

from __future__ import annotations

HELP = "find a movie's SID (--movie), the movies under a SID prefix (--sid), or a movie's nearest by SID (--neighbors)"


def add_arguments(p):
    pass


def command(args, cfg, run_dir):
    raise NotImplementedError
