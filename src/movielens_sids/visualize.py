"""STUB — to be implemented."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HELP = "visualize"


@dataclass
class VisualizeConfig:
    """Settings of the visualize stage."""

    seed: int = 0
    """Seed."""


def add_arguments(p):
    pass


def command(args, cfg, run_dir):
    from .stages import execute

    execute("visualize", cfg, run_dir)


def visualize_stage(run_dir: Path, cfg) -> dict:
    raise NotImplementedError
