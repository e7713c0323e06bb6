"""``movielens-sids retrieval``: the generative-retrieval benchmark of a run's Semantic IDs.

Reads ``R/sids.parquet`` and a MovieLens ratings file, trains and evaluates the four methods of
``bench.py`` over several seeds, and writes ``R/retrieval/report.json`` plus a section of
``R/report.md`` (replaced, never duplicated, when the command runs again).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SidsError
from ..io import read_parquet, run_lock, write_json, write_text
from .config import METHODS, METRICS, RetrievalConfig, settings_dict

log = logging.getLogger(__name__)

HELP = "benchmark the SIDs in a generative recommender vs random IDs, SASRec and most-popular (Recall/NDCG@5,10)"

SECTION_START = "<!-- retrieval:start -->"
SECTION_END = "<!-- retrieval:end -->"
LABELS = {
    "semantic_id": "Generative, Semantic IDs",
    "random_id": "Generative, random IDs (same shape)",
    "sasrec": "SASRec (movie ids)",
    "most_popular": "Most popular",
}


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
    g.add_argument("--device", dest="retrieval_device", metavar="DEV", help="cpu, gpu or auto")
    g.add_argument("--threads", dest="retrieval_threads", type=int, metavar="N", help="CPU threads for torch")
    g.add_argument("--retrieval-set", dest="retrieval_set", action="append", metavar="FIELD=VALUE",
                   help="any RetrievalConfig field, e.g. --retrieval-set d_model=128 (repeatable)")


def _config(args: argparse.Namespace, cfg: Any) -> RetrievalConfig:
    """The run's ``retrieval`` section (when the config has one), overridden by this command's flags."""
    from ..config import _build

    base = getattr(cfg, "retrieval", None)
    values = dataclasses.asdict(base) if isinstance(base, RetrievalConfig) else {}
    for name in ("dataset", "ratings", "seeds", "methods", "max_users", "max_epochs", "beam_size", "device",
                 "threads"):
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


def markdown_table(methods: dict[str, dict]) -> str:
    """The four-way table: mean ± std (sample std over seeds) per metric, and the seed count."""
    lines = ["| method | " + " | ".join(m.replace("recall", "Recall").replace("ndcg", "NDCG") for m in METRICS)
             + " | seeds |", "| --- |" + " ---: |" * (len(METRICS) + 1)]
    for name in METHODS:
        if name not in methods:
            continue
        r = methods[name]
        cells = [f"{r['mean'][m]:.4f} ± {r['std'][m]:.4f}" for m in METRICS]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {len(r['per_seed'])} |")
    return "\n".join(lines)


def comparison(methods: dict[str, dict]) -> dict | None:
    """Semantic minus random IDs on Recall@10: mean difference, its per-seed values and the spreads."""
    if "semantic_id" not in methods or "random_id" not in methods:
        return None
    s, r = methods["semantic_id"], methods["random_id"]
    per_seed = {k: s["per_seed"][k]["recall@10"] - r["per_seed"][k]["recall@10"] for k in s["per_seed"]}
    diffs = np.array(list(per_seed.values()))
    return {
        "metric": "recall@10",
        "semantic_minus_random": float(diffs.mean()),
        "relative": float(diffs.mean() / r["mean"]["recall@10"]) if r["mean"]["recall@10"] else None,
        "per_seed": per_seed,
        "std_of_difference": float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0,
        "semantic_std": s["std"]["recall@10"],
        "random_std": r["std"]["recall@10"],
        "semantic_wins": bool(diffs.mean() > 0),
        "semantic_wins_every_seed": bool((diffs > 0).all()),
    }


def report_section(report: dict) -> str:
    """The markdown section for ``report.md`` (between markers, so a rerun replaces it)."""
    sp, st = report["split"], report["settings"]
    lines = [SECTION_START, "## Generative retrieval", "",
             f"Next-movie prediction on **{report['dataset']}**: {sp['n_users']} users, {sp['n_interactions']:,} "
             f"ratings of {sp['n_movies_rated']:,} movies; leave-one-out (last movie = test, the one before = "
             f"validation), users with fewer than {sp['min_ratings']} ratings dropped "
             f"({sp['n_users_dropped_few_ratings']}), {sp['n_ratings_dropped_no_sid']:,} ratings of "
             f"{sp['n_movies_dropped_no_sid']:,} movies without a SID dropped. Metrics on every test user; "
             f"mean ± sample std over {len(st['seeds'])} seeds ({', '.join(map(str, st['seeds']))}).", "",
             markdown_table(report["methods"]), ""]
    cmp = report.get("semantic_vs_random")
    if cmp:
        verdict = "beat" if cmp["semantic_wins"] else "did not beat"
        lines.append(f"Semantic IDs {verdict} random IDs on Recall@10 by {cmp['semantic_minus_random']:+.4f} "
                     f"(per seed: {', '.join(f'{v:+.4f}' for v in cmp['per_seed'].values())}; spreads "
                     f"{cmp['semantic_std']:.4f} and {cmp['random_std']:.4f}).")
        lines.append("")
    lines += [f"Models: d_model {st['d_model']}, {st['n_layers']} layers, {st['n_heads']} heads, history "
              f"{st['max_history']} movies, beam {st['beam_size']}, early stopping on validation Recall@10 "
              f"(patience {st['patience']}, at most {st['max_epochs']} epochs). No movie is filtered from the "
              f"ranked lists. Wall time {report['wall_time_s'] / 60:.1f} min. Details: `retrieval/report.json`.",
              SECTION_END]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """``text`` with its retrieval section replaced by ``section`` (appended when it has none)."""
    pattern = re.compile(re.escape(SECTION_START) + r".*?" + re.escape(SECTION_END) + r"\n?", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text, count=1)
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + section


def retrieval_stage(run_dir: Path, cfg: Any, rcfg: RetrievalConfig | None = None) -> dict:
    """Run the benchmark on ``run_dir``'s SIDs and write ``retrieval/report.json`` and the ``report.md`` section.

    Returns:
        The report (a dict).
    """
    from .bench import run_benchmark
    from .sequences import build_split

    run_dir = Path(run_dir)
    rcfg = rcfg or RetrievalConfig()
    t0 = time.perf_counter()
    movie_ids, codes = read_sids(run_dir)
    dataset, ratings = resolve_ratings(rcfg, cfg)
    split = build_split(ratings, movie_ids, min_ratings=rcfg.min_ratings, max_users=rcfg.max_users,
                               seed=rcfg.seeds[0])
    # Only movies with a SID are targets; the model's catalogue is every movie with a SID.
    item_codes = codes[np.searchsorted(movie_ids, split.movie_ids)]
    log.info("%s: %d users, %d interactions; %d ratings of %d movies without a SID dropped", dataset,
             split.info["n_users"], split.info["n_interactions"], split.info["n_ratings_dropped_no_sid"],
             split.info["n_movies_dropped_no_sid"])
    methods = run_benchmark(split, item_codes, rcfg)
    report = {
        "dataset": dataset,
        "n_users": split.info["n_users"],
        "split": {**split.info, "protocol": "leave-one-out: last movie test, second to last validation, rest "
                                            "training; time order, ties by movie id"},
        "sids": {"n_movies": int(len(movie_ids)), "length": int(codes.shape[1]),
                 "level_sizes": [int(codes[:, j].max()) + 1 for j in range(codes.shape[1])]},
        "settings": settings_dict(rcfg),
        "ranking": "no filtering: already-rated movies stay in every method's ranked list",
        "methods": methods,
        "semantic_vs_random": comparison(methods),
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    write_json(run_dir / "retrieval" / "report.json", report)
    md = run_dir / "report.md"
    old = md.read_text(encoding="utf-8") if md.exists() else ""
    write_text(md, replace_section(old, report_section(report)))
    return report


def command(args: argparse.Namespace, cfg: Any, run_dir: Path) -> int:
    rcfg = _config(args, cfg)
    if not (Path(run_dir) / "sids.parquet").exists():  # before taking the lock: a bad run folder is not created
        raise SidsError(f"{Path(run_dir) / 'sids.parquet'} not found: run `movielens-sids assign` first")
    with run_lock(run_dir):
        report = retrieval_stage(Path(run_dir), cfg, rcfg)
    print(markdown_table(report["methods"]))
    cmp = report.get("semantic_vs_random")
    if cmp:
        print(f"\nsemantic - random, Recall@10: {cmp['semantic_minus_random']:+.4f} "
              f"(per seed {', '.join(f'{v:+.4f}' for v in cmp['per_seed'].values())})")
    print(f"\n{report['dataset']}: {report['n_users']} users; wall time {report['wall_time_s']:.0f} s; "
          f"wrote {Path(run_dir) / 'retrieval' / 'report.json'} and the retrieval section of report.md")
    return 0
