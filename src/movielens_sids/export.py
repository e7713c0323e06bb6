"""STUB — to be implemented."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HELP = "export"


@dataclass
class ExportConfig:
    """Settings of the export stage."""

    seed: int = 0
    """Seed."""


def add_arguments(p):
    pass


def command(args, cfg, run_dir):
    from .stages import execute

    execute("export", cfg, run_dir)


def export_stage(run_dir: Path, cfg) -> dict:
    raise NotImplementedError
