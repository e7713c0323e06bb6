"""STUB — to be implemented (issue 2): download and verify MovieLens variants."""

from __future__ import annotations

HELP = "download a MovieLens variant from GroupLens, verify its MD5, extract it (a verified copy is reused)"


def add_arguments(p):
    pass


def command(args, cfg, run_dir):
    raise NotImplementedError
