"""The demo's cold wall time: `movielens-sids run --config demo` in a new run folder, several times, with the
per-stage split; optionally alternated with another checkout of the project (paired ratios).

Each run is its own process, timed from outside (start-up and exit included); the stages' seconds are
read from the run folder's stage records (``.stages/<stage>.json``). With ``--vs SRC``, runs of this
checkout (A) and of the package under SRC (B, put first on ``PYTHONPATH``) take turns, A B A B ..., and
the ratio A/B is taken pair by pair, so that the machine's drift moves both sides of a pair alike.

With ``--encode``, each run of A is followed by a plain PyTorch ``SentenceTransformer.encode`` of the same
run's documents (the demo's embedding model and batch size, torch backend, model load not counted; its own
process), and the ratio run / encode is taken run by run: the demo against the cost of embedding its documents.

Usage:
    python benchmarks/demo.py [--runs 3] [--vs ../old/src] [--fresh-numba] [--encode]

``--fresh-numba`` first deletes numba's on-disk compilation of UMAP's kernels and makes one more run of A,
reported apart: the first run after installing. Run it with the machine quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from encode_baseline import plain_encode
from record import write_record

STAGES = ["catalog", "embed", "collab", "train", "assign", "evaluate", "export", "visualize"]


def cold_run(run_dir: Path, src: str | None) -> dict[str, float]:
    """One `run --config demo` in a new folder: {"wall": s, <stage>: s, ...}."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "movielens_sids", "run", "--config", "demo", "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    out = {"wall": wall}
    for stage in STAGES:
        record = run_dir / ".stages" / f"{stage}.json"
        if record.exists():
            out[stage] = float(json.loads(record.read_text())["seconds"])
    return out


def clear_numba_cache() -> int:
    """Delete numba's cached compilations beside umap's sources; returns how many files went."""
    import umap

    gone = 0
    for f in Path(umap.__file__).parent.glob("__pycache__/*.nb[ic]"):
        f.unlink()
        gone += 1
    return gone


def line(name: str, r: dict[str, float]) -> str:
    stages = "  ".join(f"{s} {r[s]:5.1f}" for s in STAGES if s in r and r[s] >= 0.5)
    return f"{name:6s} wall {r['wall']:6.1f} s | {stages}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vs", metavar="SRC", help="the other checkout's src folder (B), alternated with this one (A)")
    ap.add_argument("--fresh-numba", action="store_true", help="first delete numba's cached UMAP kernels")
    ap.add_argument("--encode", action="store_true", help="after each run of A, a plain torch encode of its documents")
    ap.add_argument("--markdown", type=Path, help="also write the medians as a docs record (command, machine, date)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="demo-bench-"))
    a, b, enc = [], [], []
    try:
        if args.fresh_numba:  # the first run after installing: not in the medians
            print(f"deleted {clear_numba_cache()} cached numba files")
            print(line("A0", cold_run(root / "a0", None)) + "  (first run: numba compiles)", flush=True)
        for i in range(args.runs):
            a.append(cold_run(root / f"a{i + 1}", None))
            print(line(f"A{i + 1}", a[-1]), flush=True)
            if args.encode:
                n_docs, seconds = plain_encode(root / f"a{i + 1}")
                enc.append(seconds)
                print(f"plain torch encode of {n_docs:,} documents: {seconds:.1f} s; A{i + 1} / encode "
                      f"{a[-1]['wall'] / seconds:.3f}", flush=True)
            if args.vs:
                b.append(cold_run(root / f"b{i + 1}", args.vs))
                print(line(f"B{i + 1}", b[-1]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    medians = {}
    for name, runs in (("A", a), ("B", b)):
        if runs:
            medians[name] = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in ["wall", *STAGES]}
            print(line(f"{name} med", medians[name]))
    notes = []
    if b:
        ratios = [x["wall"] / y["wall"] for x, y in zip(a, b)]
        notes.append("A/B wall, pair by pair: " + ", ".join(f"{r:.3f}" for r in ratios)
                     + f"; median {statistics.median(ratios):.3f}")
    if enc:
        ratios = [x["wall"] / e for x, e in zip(a, enc)]
        notes.append("A wall / a plain torch encode of its documents (" + ", ".join(f"{e:.1f}" for e in enc)
                     + " s), run by run: " + ", ".join(f"{r:.3f}" for r in ratios)
                     + f"; median {statistics.median(ratios):.3f}")
    notes = "\n\n".join(notes)
    if notes:
        print(notes)
    write_record(args.markdown, medians_table(medians, len(a)), title="A cold `run --config demo`", notes=notes)
    return 0


def medians_table(medians: dict[str, dict[str, float]], runs: int) -> str:
    """The medians as a markdown table: one column per version (A: this checkout, B: --vs), one row per stage."""
    names = list(medians)
    lines = [f"| seconds (median of {runs}) | {' | '.join(names)} |", "| --- |" + " ---: |" * len(names)]
    for k in ["wall", *STAGES]:
        lines.append(f"| {k} | " + " | ".join(f"{medians[n].get(k, 0.0):.1f}" for n in names) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
