"""STUB — to be implemented (issue 4): train the tokenizer with Lightning, write model/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

HELP = "train the RQ-VAE (or residual k-means) on embeddings.parquet and write model/"


@dataclass
class TrainConfig:
    """Optimisation and the Lightning Trainer."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"accelerator", "devices", "strategy", "num_workers"})

    tokenizer: Literal["rqvae", "rqkmeans"] = "rqvae"
    """rqvae (learned encoder + residual quantizer + decoder) or rqkmeans (residual k-means on FAISS)."""
    seed: int = 0
    """Seeds the split, the k-means init and the weights."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, mps."""
    devices: str = "auto"
    """Lightning devices: auto, 1, 2, ..."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, ..."""
    precision: str = "32-true"
    """Lightning precision."""
    num_workers: int = 0
    """Unused with on-device data; kept for Lightning parity."""


def add_arguments(p):
    pass


def command(args, cfg, run_dir):
    from .stages import execute

    execute("train", cfg, run_dir)


def train_stage(run_dir: Path, cfg) -> dict:
    raise NotImplementedError
