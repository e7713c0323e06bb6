"""Benchmark: wall time of `evaluate` and `visualize` on a whole run folder, and the size of the page.

Usage:
    python benchmarks/evaluate.py --run-dir runs/tiger [--repeats 3] [--skip-visualize]

The run folder needs catalog.parquet, embeddings.parquet, model/ and sids.parquet (for the 87,585
movies of MovieLens-32M: ``catalog --source .../ml-32m``, ``embed``, ``train --config tiger``,
``assign``). Everything runs in this one process on a temporary copy of the folder (the original
is not touched), the way the CLI runs it, with the recorded stage timings kept:

- ``evaluate, cold``: no cached embedding k-NN, so the exact k-NN (``metrics.knn``) is included (first run);
- ``evaluate, cached k-NN``: what a re-evaluation after retraining costs (median of --repeats);
- ``visualize, cold``: PCA + UMAP from scratch, numba's JIT compilation included (first run);
- ``visualize, cached UMAP``: re-drawing the page after a new assign (median of --repeats);
- the page's size, against the 30 MB budget, and the split of evaluate's time into its parts.

Wall times on a shared machine depend on its load, so each line also gives the process's CPU
seconds (all threads) and the load average is printed: on an idle two-core machine the wall time
lies between CPU / 2 and CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from movielens_sids.config import Config
from movielens_sids.stages.evaluate import evaluate_stage
from movielens_sids.stages.visualize import visualize_stage

INPUTS = ("catalog.parquet", "embeddings.parquet", "sids.parquet", "model", ".stages")


def timed(fn) -> tuple[float, object]:
    """Wall seconds of ``fn()`` and its result; the process's CPU seconds are added to ``CPU``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    CPU.append(time.process_time() - c0)
    return time.perf_counter() - t0, out


CPU: list[float] = []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="a finished run folder (catalog ... sids)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each cached (warm) measurement")
    ap.add_argument("--skip-visualize", action="store_true", help="only time evaluate")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    for name in INPUTS[:4]:
        if not (args.run_dir / name).exists():
            print(f"error: {args.run_dir / name} not found (run catalog, embed, train and assign first)",
                  file=sys.stderr)
            return 2
    cfg = Config()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        run = Path(tmp) / args.run_dir.resolve().name
        run.mkdir()
        for name in INPUTS:
            src = args.run_dir / name
            if src.is_dir():
                shutil.copytree(src, run / name)
            elif src.exists():
                shutil.copy2(src, run / name)

        load0 = os.getloadavg()[0]
        cold, _ = timed(lambda: evaluate_stage(run, cfg))
        cold_cpu = CPU[-1]
        report = json.loads((run / "report.json").read_text())
        warm = [timed(lambda: evaluate_stage(run, cfg))[0] for _ in range(args.repeats)]
        warm_cpu = statistics.median(CPU[-args.repeats:])
        n = report["n_movies"]
        rows += [
            ("movies", f"{n:,}"),
            ("evaluate, cold (exact k-NN computed)", f"{cold:.1f} s wall, {cold_cpu:.1f} s CPU  (budget 30 s)"),
            (f"evaluate, cached k-NN (median of {args.repeats})",
             f"{statistics.median(warm):.1f} s wall, {warm_cpu:.1f} s CPU"),
            ("  of which embedding k-NN, cold run", f"{report['compute_s']['embedding_knn']:.1f} s"),
            ("  of which SID k-NN (final + raw codes)", f"{report['compute_s']['sid_knn']:.1f} s"),
            ("overlap@10 / first-token match / random",
             "{overlap_at_10:.4f} / {first_token_match_at_10:.4f} / {random_first_token_match:.4f}".format(
                 **report["neighbors"])),
        ]
        if not args.skip_visualize:
            vcold, res = timed(lambda: visualize_stage(run, cfg))
            vcold_cpu = CPU[-1]
            vwarm = [timed(lambda: visualize_stage(run, cfg))[0] for _ in range(args.repeats)]
            vwarm_cpu = statistics.median(CPU[-args.repeats:])
            size = (run / "visualization.html").stat().st_size
            rows += [
                ("visualize, cold (PCA + UMAP + JIT)", f"{vcold:.1f} s wall, {vcold_cpu:.1f} s CPU  (budget 300 s)"),
                (f"visualize, cached UMAP (median of {args.repeats})",
                 f"{statistics.median(vwarm):.1f} s wall, {vwarm_cpu:.1f} s CPU"),
                ("visualization.html", f"{size / 1e6:.1f} MB for {res['n_points']:,} points  (budget 30 MB)"),
            ]
    load = f"{load0:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    rows.append(("load average (1 min) at start / end", load))
    width = max(len(k) for k, _ in rows)
    print(f"benchmark: evaluate / visualize on {args.run_dir}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
