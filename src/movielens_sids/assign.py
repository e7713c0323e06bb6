"""STUB — to be implemented."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HELP = "assign"


@dataclass
class AssignConfig:
    """Settings of the assign stage."""

    seed: int = 0
    """Seed."""


def add_arguments(p):
    pass


def command(args, cfg, run_dir):
    from .stages import execute

    execute("assign", cfg, run_dir)


def assign_stage(run_dir: Path, cfg) -> dict:
    raise NotImplementedError
