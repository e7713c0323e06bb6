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

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts
from ..data import catalog
from ..errors import SidsError
from ..io import read_parquet, write_json, write_parquet
from ..reports.markdown import write_page
from ..settings import DataConfig
from .config import RetrievalConfig, settings_dict
from .report import events_table, rescored, summarize
from .sequences import availability, folds_of, train_fingerprint

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
    data = getattr(cfg, "data", None) or DataConfig()
    label, df = catalog.benchmark_ratings(data, rcfg.ratings, rcfg.dataset)
    if df is None:
        raise SidsError(f"{label} has no ratings file; pass --ratings FILE")
    return label, df


def movie_years(run_dir: Path, movie_ids: np.ndarray) -> np.ndarray:
    """(N,) float64 release years of ``movie_ids`` (sorted) from ``catalog.parquet``, NaN where unknown."""
    cat = artifacts.read_catalog(run_dir, ("movie_id", "year"))
    ids = cat.column("movie_id").to_numpy().astype(np.int64)
    years = cat.column("year").to_numpy(zero_copy_only=False).astype(np.float64)
    pos = np.searchsorted(ids, movie_ids)
    if (pos >= len(ids)).any() or (ids[np.minimum(pos, len(ids) - 1)] != movie_ids).any():
        raise SidsError(f"{run_dir / 'catalog.parquet'} lacks movies that have a SID: run `movielens-sids run` again")
    return years[pos]


def candidate_times(rcfg: RetrievalConfig, ratings: Any, movie_ids: np.ndarray, years: np.ndarray | None
                    ) -> np.ndarray | None:
    """(N,) the first second each movie may be recommended (``retrieval.candidates: existing``: its release year
    (``movie_years``), or its first rating by anyone), or None for ``all``."""
    return None if rcfg.candidates == "all" else availability(ratings, movie_ids, years)


def check_collab_split(run_dir: Path, split) -> None:
    """When the run's SIDs were built with collaborative vectors, they must come from exactly this split's
    training interactions: otherwise validation or test events could have shaped the IDs scored on them."""
    collab = artifacts.read_collab(run_dir)
    if collab is None:
        return
    if collab.split.get("train_fingerprint") != train_fingerprint(split):
        raise SidsError(f"{collab.path} was built from the training interactions of another split "
                        f"({collab.split.get('protocol')}, cut-off {collab.split.get('cutoff')}) than this benchmark's "
                        f"({split.protocol}, cut-off {split.info.get('cutoff')}); run `movielens-sids run` with the "
                        "same retrieval.* settings first, so that no test event shapes the IDs")


def _rows(emb: artifacts.Embeddings, movie_ids: np.ndarray) -> np.ndarray:
    """The rows of ``emb`` of ``movie_ids`` (sorted), or a ``SidsError`` when one has none."""
    pos = np.searchsorted(emb.movie_ids, movie_ids)
    found = pos < len(emb.movie_ids)
    if not found.all() or (emb.movie_ids[pos[found]] != movie_ids).any():
        raise SidsError(f"{emb.path} lacks movies that have a SID: run `movielens-sids embed` and `assign` again")
    return pos


def content_vectors(emb: artifacts.Embeddings, movie_ids: np.ndarray) -> np.ndarray:
    """(N, D) float32 unit-norm content embeddings of ``movie_ids`` (sorted) from the run's embeddings."""
    x = emb.x[_rows(emb, movie_ids)]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def item_vectors(run_dir: Path, emb: artifacts.Embeddings, movie_ids: np.ndarray) -> np.ndarray:
    """(N, D') float32 what the run's tokenizer read of each of ``movie_ids`` (sorted): its content embedding,
    and its collaborative vector where the tokenizer read one (from the benchmark split's training interactions,
    ``check_collab_split``): the vectors the generative model with content input and a dense head reads. A run
    folder with SIDs and no model (SIDs imported from elsewhere) gives the content embeddings."""
    from ..model.serialization import CONFIG_NAME, load_tokenizer

    x = emb.x  # (N_emb, D')
    if (run_dir / artifacts.MODEL / CONFIG_NAME).is_file():
        x = artifacts.model_input(run_dir, load_tokenizer(run_dir / artifacts.MODEL), emb)
    return np.ascontiguousarray(x[_rows(emb, movie_ids)], dtype=np.float32)


def joint_recommender(run_dir: Path, rcfg: RetrievalConfig) -> tuple[dict, dict]:
    """The (weights, shape) of the recommender a ``joint`` run trained with its tokenizer (method ``joint``)."""
    from ..joint import RECOMMENDER, load_recommender

    path = Path(run_dir) / artifacts.MODEL / RECOMMENDER
    if not path.exists():
        raise SidsError(f"method joint needs {path}: a run trained with joint.cycles > 0 (--config joint)")
    weights, shape = load_recommender(path)
    if shape["max_history"] != rcfg.max_history:
        raise SidsError(f"method joint: {path} reads {shape['max_history']} movies of history, "
                        f"retrieval.max_history is {rcfg.max_history}: set them equal")
    return weights, shape


def compared_codes(rcfg: RetrievalConfig, split) -> dict[str, np.ndarray]:
    """``{"semantic_id@<folder>": (N, L') codes}`` of ``retrieval.compare_sids``' runs, over ``split``'s movies
    (the first fold's: their collaborative vectors must come from its training interactions)."""
    compared = {}
    for other in rcfg.compare_sids:
        ids, other_codes = read_codes(Path(other))
        check_collab_split(Path(other), split)
        pos = np.searchsorted(ids, split.movie_ids)
        if (pos >= len(ids)).any() or (ids[np.minimum(pos, len(ids) - 1)] != split.movie_ids).any():
            raise SidsError(f"{Path(other) / 'sids.parquet'} lacks movies of this run: "
                            "compare runs of the same catalog")
        compared[f"semantic_id@{other}"] = other_codes[pos]
    return compared


def retrieval_stage(run_dir: Path, cfg: Any) -> dict:
    """Run the benchmark on ``run_dir``'s SIDs with ``cfg.retrieval``; write its report, events and chart.

    Returns:
        The report (a dict; its keys are documented in docs/retrieval.md).
    """
    from ..reports.charts import recall_curve_chart  # matplotlib: imported when a chart is drawn
    from .bench import run_benchmark  # torch and Lightning: imported when the benchmark runs

    run_dir = Path(run_dir)
    rcfg: RetrievalConfig = getattr(cfg, "retrieval", None) or RetrievalConfig()
    t0 = time.perf_counter()
    movie_ids, codes = read_codes(run_dir)
    dataset, ratings = resolve_ratings(rcfg, cfg)
    splits = folds_of(ratings, movie_ids, rcfg)
    split = splits[-1]
    check_collab_split(run_dir, splits[0])
    item_codes = codes[np.searchsorted(movie_ids, split.movie_ids)]  # the catalogue: every movie with a SID
    reads = rcfg.content_input or rcfg.dense_weight > 0
    fused = reads and bool({"semantic_id", "random_id"} & set(rcfg.methods) or rcfg.compare_sids)
    emb = artifacts.read_embeddings(run_dir) if fused or "content_knn" in rcfg.methods else None
    vectors = None if emb is None else content_vectors(emb, split.movie_ids)  # content_knn's, the cold movies'
    inputs = item_vectors(run_dir, emb, split.movie_ids) if fused else None
    aged = inputs is not None and rcfg.dense_age
    years = movie_years(run_dir, split.movie_ids) if aged or rcfg.candidates == "existing" else None
    available = candidate_times(rcfg, ratings, split.movie_ids, years)
    years = years if aged else None
    log.info("%s (%s, %d fold(s)): %d users, %d interactions, %d scored events; %d ratings of %d movies without a SID "
             "dropped", dataset, rcfg.protocol, len(splits), split.info["n_users"], split.info["n_interactions"],
             sum(len(s.test) for s in splits), split.info["n_ratings_dropped_no_sid"],
             split.info["n_movies_dropped_no_sid"])
    compared = compared_codes(rcfg, splits[0])
    results = run_benchmark(splits, item_codes, rcfg, vectors, compared, available, inputs, years,
                            joint=joint_recommender(run_dir, rcfg) if "joint" in rcfg.methods else None)
    summary = summarize(splits, results, rcfg, available)
    report = {
        "dataset": dataset,
        "protocol": rcfg.protocol,
        **({"cutoff": split.info["cutoff"]} if rcfg.protocol == "temporal" else {}),
        "seeds": list(rcfg.seeds),
        "scored_events": "validation" if rcfg.validation_only else "test",
        "slices": summary["slices"],
        "candidates": summary["candidates"],
        "methods": summary["methods"],
        "paired": summary["paired"],
        "recall_curve": summary["recall_curve"],
        "split": split.info,
        **({"folds": [s.info for s in splits]} if len(splits) > 1 else {}),
        "sids": {"n_movies": int(len(movie_ids)), "length": int(codes.shape[1]),
                 "level_sizes": [int(codes[:, j].max()) + 1 for j in range(codes.shape[1])]},
        "settings": settings_dict(rcfg),
        "ranking": ("no method recommends a movie the user rated before the event" if rcfg.exclude_seen else
                    "only content_knn leaves out the movies the user rated before the event"),
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    recall_curve_chart(summary["recall_curve"], run_dir / "retrieval" / "recall_at_k.png")
    write_parquet(run_dir / "retrieval" / "events.parquet", events_table(splits, results))
    write_json(run_dir / "retrieval" / "report.json", report)
    write_page(run_dir)
    return report


def rescore_stage(run_dir: Path, cfg: Any) -> dict:
    """Compute a finished benchmark's intervals and paired differences again from ``retrieval/events.parquet``
    (with this version's statistics and ``retrieval.bootstrap_*``), without training; rewrite its report."""
    run_dir = Path(run_dir)
    rcfg: RetrievalConfig = getattr(cfg, "retrieval", None) or RetrievalConfig()
    path, events_path = run_dir / "retrieval" / "report.json", run_dir / "retrieval" / "events.parquet"
    if not path.is_file() or not events_path.is_file():
        raise SidsError(f"{run_dir / 'retrieval'} holds no finished benchmark: run `movielens-sids retrieval` first")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SidsError(f"{path}: not a benchmark report ({type(e).__name__}); run `movielens-sids retrieval`") from e
    report = rescored(report, read_parquet(events_path, "retrieval events").to_pandas(), rcfg)
    report["settings"] = {**report["settings"], "bootstrap_samples": rcfg.bootstrap_samples,
                          "bootstrap_unit": rcfg.bootstrap_unit}
    write_json(path, report)
    write_page(run_dir)
    return report
