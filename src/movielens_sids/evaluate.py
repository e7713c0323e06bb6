"""STUB — to be implemented."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HELP = "evaluate"


@dataclass
class EvaluateConfig:
    """Settings of the evaluate stage."""

    seed: int = 0
    """Seed."""


def add_arguments(p):
    pass


def command(args, cfg, run_dir):
    from .stages import execute

    execute("evaluate", cfg, run_dir)


def evaluate_stage(run_dir: Path, cfg) -> dict:
    raise NotImplementedError
