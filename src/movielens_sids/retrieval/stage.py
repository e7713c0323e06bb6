"""The generative-retrieval benchmark as a stage: read a run's SIDs, embeddings and ratings; write the report.

``retrieval_stage(run_dir, cfg)`` trains and evaluates the methods of ``bench.py`` over several seeds
on the same test events (``sequences.py``), and writes ``R/retrieval/report.json`` (per-slice
intervals and paired differences against the Semantic-ID model, ``stats.py``),
``R/retrieval/events.parquet`` (every method's rank of every test event's target, per seed) and
``R/retrieval/recall_at_k.png``; ``report.md`` is then rewritten by its one writer
(``reports.markdown.write_page``), which renders this report's section. Not a stage of ``run``.

May import: errors, io, artifacts, data.catalog, reports, and this package.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts
from ..data import catalog
from ..errors import SidsError
from ..io import write_json, write_parquet
from ..reports.markdown import write_page
from ..settings import DataConfig
from .config import RetrievalConfig, settings_dict
from .report import events_table, summarize
from .sequences import build_split, read_ratings

log = logging.getLogger(__name__)


def read_codes(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(movie_ids (N,), codes (N, L))`` from ``sids.parquet``, sorted by movie id; one length, rows distinct."""
    sids = artifacts.read_sids(run_dir)
    if sids.lengths.min() != sids.lengths.max():
        raise SidsError(f"{sids.path}: semantic_id lengths differ ({sids.lengths.min()}..{sids.lengths.max()})")
    if len(np.unique(sids.tokens, axis=0)) != len(sids.tokens):
        raise SidsError(f"{sids.path}: Semantic IDs are not unique; run `movielens-sids assign` again")
    return sids.movie_ids, sids.tokens


def resolve_ratings(rcfg: RetrievalConfig, cfg: Any) -> tuple[str, Any]:
    """``(dataset label, ratings DataFrame)`` from ``--ratings``, ``--dataset`` or the run's data settings."""
    if rcfg.ratings:
        return Path(rcfg.ratings).name, read_ratings(rcfg.ratings)
    data = getattr(cfg, "data", None) or DataConfig()
    if rcfg.dataset:
        data = dataclasses.replace(data, dataset=rcfg.dataset, source=None)
    src = catalog.open_source(data)
    try:
        if "ratings" not in src.members:
            raise SidsError(f"{src.label} has no ratings file; pass --ratings FILE")
        spec = dataclasses.replace(catalog.RATINGS, kinds={"userId": "id", "movieId": "id", "timestamp": "id"})
        df = catalog.read_table(src, spec, skip_bad_rows=getattr(data, "skip_bad_rows", False))
    finally:
        src.close()
    df = df.rename(columns={"userId": "user_id", "movieId": "movie_id"})[["user_id", "movie_id", "timestamp"]]
    if df.empty:
        raise SidsError(f"{src.label}: no ratings")
    return (data.source or data.dataset), df.astype("int64")


def content_vectors(run_dir: Path, movie_ids: np.ndarray) -> np.ndarray:
    """(N, D) float32 unit-norm content embeddings of ``movie_ids`` (sorted) from ``embeddings.parquet``."""
    emb = artifacts.read_embeddings(run_dir)
    pos = np.searchsorted(emb.movie_ids, movie_ids)
    found = pos < len(emb.movie_ids)
    if not found.all() or (emb.movie_ids[pos[found]] != movie_ids).any():
        raise SidsError(f"{emb.path} lacks movies that have a SID: run `movielens-sids embed` and `assign` again")
    x = emb.x[pos]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_stage(run_dir: Path, cfg: Any) -> dict:
    """Run the benchmark on ``run_dir``'s SIDs with ``cfg.retrieval``; write its report, events and chart.

    Returns:
        The report (a dict; its keys are documented in the README).
    """
    from ..reports.charts import recall_curve_chart  # matplotlib: imported when a chart is drawn
    from .bench import run_benchmark  # torch and Lightning: imported when the benchmark runs

    run_dir = Path(run_dir)
    rcfg: RetrievalConfig = getattr(cfg, "retrieval", None) or RetrievalConfig()
    t0 = time.perf_counter()
    movie_ids, codes = read_codes(run_dir)
    dataset, ratings = resolve_ratings(rcfg, cfg)
    split = build_split(ratings, movie_ids, protocol=rcfg.protocol, min_ratings=rcfg.min_ratings,
                        test_fraction=rcfg.test_fraction, valid_fraction=rcfg.valid_fraction, cutoff=rcfg.cutoff,
                        max_valid_events=rcfg.max_valid_events, max_test_events=rcfg.max_test_events,
                        max_users=rcfg.max_users, seed=rcfg.seeds[0])
    # Only movies with a SID are targets; the models' catalogue is every movie with a SID.
    item_codes = codes[np.searchsorted(movie_ids, split.movie_ids)]
    vectors = content_vectors(run_dir, split.movie_ids) if "content_knn" in rcfg.methods else None
    log.info("%s (%s): %d users, %d interactions, %d test events; %d ratings of %d movies without a SID dropped",
             dataset, rcfg.protocol, split.info["n_users"], split.info["n_interactions"], len(split.test),
             split.info["n_ratings_dropped_no_sid"], split.info["n_movies_dropped_no_sid"])
    results = run_benchmark(split, item_codes, rcfg, vectors)
    summary = summarize(split, results, rcfg)
    report = {
        "dataset": dataset,
        "protocol": rcfg.protocol,
        **({"cutoff": split.info["cutoff"]} if rcfg.protocol == "temporal" else {}),
        "seeds": list(rcfg.seeds),
        "slices": summary["slices"],
        "methods": summary["methods"],
        "paired": summary["paired"],
        "recall_curve": summary["recall_curve"],
        "split": split.info,
        "sids": {"n_movies": int(len(movie_ids)), "length": int(codes.shape[1]),
                 "level_sizes": [int(codes[:, j].max()) + 1 for j in range(codes.shape[1])]},
        "settings": settings_dict(rcfg),
        "ranking": ("no method recommends a movie the user rated before the event" if rcfg.exclude_seen else
                    "only content_knn leaves out the movies the user rated before the event"),
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    recall_curve_chart(summary["recall_curve"], run_dir / "retrieval" / "recall_at_k.png")
    write_parquet(run_dir / "retrieval" / "events.parquet", events_table(split, results))
    write_json(run_dir / "retrieval" / "report.json", report)
    write_page(run_dir)
    return report
