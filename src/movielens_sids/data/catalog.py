"""STUB — to be implemented (issue 2): MovieLens files -> catalog.parquet."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

HELP = "build catalog.parquet from --dataset NAME or --source PATH (folder or official zip)"


@dataclass
class DataConfig:
    """Which MovieLens files become the catalog."""

    dataset: str = "ml-latest-small"
    """A MovieLens variant by name (see `fetch`); ignored when `source` is given."""
    source: str | None = None
    """A local folder or official zip with movies.csv / movies.dat (and optionally links, tags, ratings)."""
    enrich: str | None = None
    """A CSV, Parquet or JSONL file joined on movieId, imdbId or tmdbId that adds text columns."""
    data_dir: str | None = None
    """Where downloads are cached (default: $MOVIELENS_SIDS_DATA or the user cache dir)."""
    limit: int | None = None
    """Keep only this many movies, chosen reproducibly (smoke runs)."""
    seed: int = 0
    """Seed for `limit`'s sample."""
    skip_bad_rows: bool = False
    """Drop rows that cannot be parsed (with a count) instead of failing."""


def input_files(cfg: DataConfig) -> list[Path]:
    return []


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def command(args, cfg, run_dir):
    from ..stages import execute

    execute("catalog", cfg, run_dir)


def catalog_stage(run_dir: Path, cfg) -> dict:
    raise NotImplementedError
