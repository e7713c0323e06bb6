"""``movielens-sids retrieval``: the generative-retrieval benchmark of a run's Semantic IDs.

Reads ``R/sids.parquet``, ``R/embeddings.parquet`` (for the content baseline) and a MovieLens
ratings file, trains and evaluates the methods of ``bench.py`` over several seeds on the same test
events, and writes ``R/retrieval/report.json`` (with per-slice intervals and paired differences
against the Semantic-ID model, ``stats.py``), ``R/retrieval/events.parquet`` (every method's rank of
every test event's target, per seed), ``R/retrieval/recall_at_k.png`` and a section of
``R/report.md`` (replaced, never duplicated, when the command runs again).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SidsError
from ..io import read_parquet, run_lock, write_json, write_parquet, write_text
from .config import METHODS, RetrievalConfig, settings_dict

log = logging.getLogger(__name__)

HELP = ("benchmark the SIDs in a generative recommender against random IDs, SASRec, most-popular and a content "
        "baseline (temporal or leave-one-out split; all / warm / cold events; paired bootstrap intervals)")

def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("retrieval benchmark")
    g.add_argument("--dataset", dest="retrieval_dataset", metavar="NAME",
                   help="MovieLens variant whose ratings to use (default: the run's data.dataset)")
    g.add_argument("--ratings", dest="retrieval_ratings", metavar="FILE",
                   help="a ratings.csv or ratings.dat file to use instead of a named dataset")
    g.add_argument("--seeds", dest="retrieval_seeds", type=_int_list, metavar="0,1,2",
                   help="seeds, comma-separated (default 0,1,2)")
    g.add_argument("--methods", dest="retrieval_methods", type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
                   metavar="LIST", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    g.add_argument("--max-users", dest="retrieval_max_users", type=int, metavar="N",
                   help="evaluate a seeded sample of N users (for ml-20m and larger)")
    g.add_argument("--max-epochs", dest="retrieval_max_epochs", type=int, metavar="N",
                   help="upper bound on training epochs per model")
    g.add_argument("--beam-size", dest="retrieval_beam_size", type=int, metavar="W", help="constrained beam width")
    g.add_argument("--device", dest="retrieval_device", metavar="DEV", help="cpu, cuda, mps or auto")
    g.add_argument("--protocol", dest="retrieval_protocol", choices=("temporal", "leave_one_out"),
                   help="temporal (global time split, default) or leave_one_out")
    g.add_argument("--threads", dest="retrieval_threads", type=int, metavar="N", help="CPU threads for torch")
    g.add_argument("--retrieval-set", dest="retrieval_set", action="append", metavar="FIELD=VALUE",
                   help="any RetrievalConfig field, e.g. --retrieval-set d_model=128 (repeatable)")


def _config(args: argparse.Namespace, cfg: Any) -> RetrievalConfig:
    """The run's ``retrieval`` section (when the config has one), overridden by this command's flags."""
    from ..config import _build

    base = getattr(cfg, "retrieval", None)
    values = dataclasses.asdict(base) if isinstance(base, RetrievalConfig) else {}
    for name in ("dataset", "ratings", "protocol", "seeds", "methods", "max_users", "max_epochs", "beam_size",
                 "device", "threads"):
        v = getattr(args, f"retrieval_{name}", None)
        if v is not None:
            values[name] = v
    for item in getattr(args, "retrieval_set", None) or []:
        if "=" not in item:
            raise SidsError(f"--retrieval-set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        import yaml

        values[k.strip()] = yaml.safe_load(v) if v.strip() else None
    return _build(RetrievalConfig, values, "retrieval.")


def read_sids(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(movie_ids (N,), codes (N, L))`` from ``run_dir/sids.parquet``, checked: one length, unique rows."""
    table = read_parquet(Path(run_dir) / "sids.parquet", "assign")
    missing = {"movie_id", "semantic_id"} - set(table.column_names)
    if missing:
        raise SidsError(f"{run_dir / 'sids.parquet'} lacks column(s) {', '.join(sorted(missing))}")
    movie_ids = table.column("movie_id").to_numpy().astype(np.int64)
    lists = table.column("semantic_id").combine_chunks()
    lengths = np.diff(lists.offsets.to_numpy())
    if len(movie_ids) == 0:
        raise SidsError(f"{run_dir / 'sids.parquet'} has no movies")
    if lengths.min() != lengths.max() or lengths[0] == 0 or lists.null_count:
        raise SidsError(f"{run_dir / 'sids.parquet'}: semantic_id lengths differ ({lengths.min()}..{lengths.max()})")
    codes = lists.flatten().to_numpy(zero_copy_only=False).astype(np.int64).reshape(len(movie_ids), -1)
    if (codes < 0).any():
        raise SidsError(f"{run_dir / 'sids.parquet'}: negative tokens in semantic_id")
    if len(np.unique(movie_ids)) != len(movie_ids):
        raise SidsError(f"{run_dir / 'sids.parquet'}: a movie_id appears twice")
    if len(np.unique(codes, axis=0)) != len(codes):
        raise SidsError(f"{run_dir / 'sids.parquet'}: Semantic IDs are not unique; run `movielens-sids assign` again")
    order = np.argsort(movie_ids)
    return movie_ids[order], codes[order]


def resolve_ratings(rcfg: RetrievalConfig, cfg: Any) -> tuple[str, Any]:
    """``(dataset label, ratings DataFrame)`` from ``--ratings``, ``--dataset`` or the run's data settings."""
    if rcfg.ratings:
        from .sequences import read_ratings

        return Path(rcfg.ratings).name, read_ratings(rcfg.ratings)
    from ..data import catalog

    data = getattr(cfg, "data", None) or catalog.DataConfig()
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
    """(N, D) float32 unit-norm content embeddings of ``movie_ids`` from ``run_dir/embeddings.parquet``."""
    from ..evaluate import _embedding_matrix  # TODO(issue 13): the one embeddings reader of artifacts.py

    path = Path(run_dir) / "embeddings.parquet"
    table = read_parquet(path, "embed")
    ids = table.column("movie_id").to_numpy().astype(np.int64)
    x = _embedding_matrix(table, path)
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], movie_ids)
    if (pos >= len(ids)).any() or (ids[order][np.minimum(pos, len(ids) - 1)] != movie_ids).any():
        raise SidsError(f"{path} lacks movies that have a SID: run `movielens-sids embed` and `assign` again")
    x = x[order][pos]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_stage(run_dir: Path, cfg: Any, rcfg: RetrievalConfig | None = None) -> dict:
    """Run the benchmark on ``run_dir``'s SIDs; write ``retrieval/report.json``, its chart and report.md's section.

    Returns:
        The report (a dict; its keys are documented in the README).
    """
    from ..report_charts import recall_curve_chart
    from .bench import run_benchmark
    from .report import events_table, replace_section, report_section, summarize
    from .sequences import build_split

    run_dir = Path(run_dir)
    rcfg = rcfg or RetrievalConfig()
    t0 = time.perf_counter()
    movie_ids, codes = read_sids(run_dir)
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
    md = run_dir / "report.md"
    old = md.read_text(encoding="utf-8") if md.exists() else ""
    write_text(md, replace_section(old, report_section(report)))
    return report


def command(args: argparse.Namespace, cfg: Any, run_dir: Path) -> int:
    rcfg = _config(args, cfg)
    if not (Path(run_dir) / "sids.parquet").exists():  # before taking the lock: a bad run folder is not created
        raise SidsError(f"{Path(run_dir) / 'sids.parquet'} not found: run `movielens-sids assign` first")
    from .report import markdown_table, paired_table

    with run_lock(run_dir):
        report = retrieval_stage(Path(run_dir), cfg, rcfg)
    sl = report["slices"]
    print(f"{report['dataset']}, {report['protocol']}: {sl['all']['events']:,} test events "
          f"({sl['warm']['events']:,} warm, {sl['cold']['events']:,} cold), {len(report['seeds'])} seeds\n")
    print(markdown_table(report["methods"]))
    if report["paired"]:
        print("\n" + paired_table(report["paired"]))
    print(f"\nwall time {report['wall_time_s']:.0f} s; wrote {Path(run_dir) / 'retrieval' / 'report.json'} "
          "and the retrieval section of report.md")
    return 0
