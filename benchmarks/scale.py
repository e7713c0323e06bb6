"""Benchmark: how each stage's time and memory grow with the catalog, from 10k to 1M synthetic items.

Usage:
    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--out scale.json] [--work DIR]

For each size N a synthetic catalog is built: N unit vectors (384-d) drawn from a seeded Gaussian
mixture of ``--components`` components (so that there is structure for the codes to find), a
``movies.csv`` in the official MovieLens format (fake titles, years and genres; the genres follow
the component, so genre purity means something), then:

    catalog --source DIR   ->  embed --from vectors.npy --ids ids.npy  ->  train  ->  assign
    ->  evaluate  ->  visualize  ->  export

every command with ``--config ml-32m`` (the ``ml-32m`` tokenizer settings), each in its own
subprocess, so that each stage's peak RSS is its own (``os.wait4``'s ``ru_maxrss``). The table
gives, per stage and size, the stage's own seconds (from its ``.stages`` record: no interpreter
start-up), the process's wall seconds and its peak RSS, and the exponent b of a least-squares fit
``time ~ N^b`` (and ``RSS ~ N^b``) over the sizes. Wall times on a shared machine depend on its
load: the load average before each stage is kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from record import write_record

STAGES = ("catalog", "embed", "train", "assign", "evaluate", "visualize", "export")
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
DIM = 384


def synthetic_catalog(folder: Path, n: int, *, components: int, seed: int, chunk: int = 65536) -> None:
    """Write ``movies.csv`` (official format), ``vectors.npy`` (N, DIM) float32 unit vectors and ``ids.npy``.

    Each item is its component's centre plus isotropic noise (cosine to the centre about 0.7), normalised;
    written in chunks to a memory-mapped file, so memory stays at one chunk.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(components, DIM)).astype(np.float32)  # (C, D)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    genre_of = rng.integers(0, len(GENRES), size=(components, 2))  # two genres per component
    folder.mkdir(parents=True, exist_ok=True)
    vec = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, DIM))
    ids = np.arange(1, n + 1, dtype=np.int64)
    np.save(folder / "ids.npy", ids)
    with open(folder / "movies.csv", "w", encoding="utf-8") as f:
        f.write("movieId,title,genres\n")
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            comp = rng.integers(0, components, b - a)  # (B,)
            x = centres[comp] + rng.normal(scale=1.0 / np.sqrt(DIM), size=(b - a, DIM)).astype(np.float32)
            vec[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
            years = 1920 + (comp * 7 + np.arange(a, b)) % 100
            f.writelines(f'{i},"Item {i} of c{c} ({y})",{GENRES[genre_of[c, 0]]}|{GENRES[genre_of[c, 1]]}\n'
                         for i, c, y in zip(ids[a:b].tolist(), comp.tolist(), years.tolist()))
    vec.flush()
    del vec


def stage_command(stage: str, run_dir: Path, data: Path) -> list[str]:
    """The CLI command of one stage of the benchmark's run."""
    cmd = [sys.executable, "-m", "movielens_sids", stage, "--run-dir", str(run_dir), "--config", "ml-32m", "-q"]
    if stage == "catalog":
        cmd += ["--source", str(data)]
    elif stage == "embed":
        cmd += ["--from", str(data / "vectors.npy"), "--ids", str(data / "ids.npy")]
    elif stage == "train":
        cmd += ["--no-progress-bar"]
    return cmd


def run_stage(stage: str, run_dir: Path, data: Path, log_file: Path) -> dict[str, float]:
    """Run one stage in a subprocess: its wall seconds, its own recorded seconds and its peak RSS (MB)."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(stage_command(stage, run_dir, data))}\n")
        log.flush()
        proc = subprocess.Popen(stage_command(stage, run_dir, data), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}); see {log_file}")
    record = json.loads((run_dir / ".stages" / f"{stage}.json").read_text())
    return {"wall_s": round(wall, 2), "stage_s": float(record["seconds"]),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "load_before": round(load, 2)}


def exponent(sizes: list[int], values: list[float]) -> float | None:
    """b of the least-squares fit ``log value = a + b log N`` (None with fewer than two sizes)."""
    if len(sizes) < 2 or min(values) <= 0:
        return None
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def table(results: dict[str, dict[int, dict[str, float]]], sizes: list[int]) -> str:
    """The log-log table: per stage, stage seconds / wall seconds / peak RSS at each size, and the exponents."""
    head = ["stage"] + [f"N={n:,}: s (wall) / MB" for n in sizes] + ["time exp.", "RSS exp."]
    rows = []
    for stage, per in results.items():
        got = [n for n in sizes if n in per]
        cells = [f"{per[n]['stage_s']:.1f} ({per[n]['wall_s']:.1f}) / {per[n]['peak_rss_mb']:.0f}"
                 if n in per else "-" for n in sizes]
        b_t = exponent(got, [per[n]["stage_s"] for n in got])
        b_m = exponent(got, [per[n]["peak_rss_mb"] for n in got])
        rows.append([stage, *cells, "-" if b_t is None else f"{b_t:.2f}", "-" if b_m is None else f"{b_m:.2f}"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated catalog sizes")
    ap.add_argument("--out", type=Path, default=Path("scale.json"), help="where the JSON results go")
    ap.add_argument("--work", type=Path, default=None, help="folder for the catalogs and runs (default: a temp dir)")
    ap.add_argument("--components", type=int, default=2000, help="Gaussian mixture components")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default=",".join(STAGES), help="stages to time (all are run)")
    ap.add_argument("--markdown", type=Path, help="also write the table as a docs record (command, machine, date)")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    timed = [s for s in STAGES if s in args.stages.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="sids-scale-"))
    results: dict[str, dict[int, dict[str, float]]] = {s: {} for s in timed}
    for n in sizes:
        data, run_dir = work / f"data-{n}", work / f"run-{n}"
        t0 = time.perf_counter()
        synthetic_catalog(data, n, components=args.components, seed=args.seed)
        print(f"N={n:,}: synthetic catalog in {time.perf_counter() - t0:.1f}s ({work})", flush=True)
        for stage in STAGES:
            r = run_stage(stage, run_dir, data, work / f"log-{n}.txt")
            if stage in results:
                results[stage][n] = r
            print(f"  {stage:<9} {r['stage_s']:8.1f}s stage, {r['wall_s']:8.1f}s wall, {r['peak_rss_mb']:8.0f} MB "
                  f"(load {r['load_before']})", flush=True)
        args.out.write_text(json.dumps(_summary(results, sizes, args), indent=2))
    print(table(results, sizes))
    write_record(args.markdown, table(results, sizes), title=f"Scaling: {args.sizes} synthetic movies")
    print(f"\nwritten {args.out}")
    return 0


def _summary(results: dict, sizes: list[int], args: argparse.Namespace) -> dict:
    return {
        "sizes": sizes, "components": args.components, "seed": args.seed, "dim": DIM, "cpus": os.cpu_count(),
        "stages": {s: {str(n): v for n, v in per.items()} for s, per in results.items()},
        "exponents": {s: {"time": exponent(sorted(per), [per[n]["stage_s"] for n in sorted(per)]),
                          "peak_rss": exponent(sorted(per), [per[n]["peak_rss_mb"] for n in sorted(per)])}
                      for s, per in results.items()},
    }


if __name__ == "__main__":
    raise SystemExit(main())
