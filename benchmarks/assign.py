"""Benchmark: movies/s of `assign` (codes + unique SIDs) for both strategies, the model loaded beforehand.

Usage:
    python benchmarks/assign.py --run-dir runs/tiger [--repeats 5] [--threads N] [--stage]

The run folder needs embeddings.parquet and model/. Everything is measured in one process on the
same vectors: the baseline is the tokenizer alone (``tok.quantize(tok.encode(x))`` in batches, no
uniqueness), then `assign_sids` with each strategy, with a breakdown (float32 codes with close-call
flags, float64 settling of the close calls, dedup). Times are medians of ``--repeats`` runs (after
one warm-up). ``--stage`` also times the whole stage (read embeddings + model, assign, write
sids.parquet) in a temporary copy.

It also measures how far float32 distances stray from the float64 reference, relative to the
scale the close-call margin is expressed in (``assign.MARGIN``): the largest such error must be far
below the margin for the fast path to give the reference's codes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from record import write_record

from movielens_sids.artifacts import model_input, read_embeddings
from movielens_sids.dedup import make_unique
from movielens_sids.model import load_tokenizer
from movielens_sids.settings import AssignConfig
from movielens_sids.stages.assign import (
    MARGIN,
    assign_sids,
    exact_latents,
    exact_model,
    fast_codes,
    reference_codes,
)


def median_time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--stage", action="store_true", help="also time the whole stage (I/O included)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--markdown", type=Path, help="also write the table as a docs record (command, machine, date)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    emb = read_embeddings(args.run_dir)
    tok = load_tokenizer(args.run_dir / "model")
    ids, x = emb.movie_ids, model_input(args.run_dir, tok, emb)  # what the tokenizer reads (with ALS for collab)
    n = len(ids)
    levels, k = int(tok.config.levels), int(tok.config.codebook_size)
    print(f"{n:,} movies, D={x.shape[1]}, tokenizer {tok.tokenizer} {levels} x {k}, torch threads "
          f"{torch.get_num_threads()}, repeats {args.repeats} (median)")

    xt = torch.from_numpy(x)

    def baseline():
        with torch.inference_mode():
            return torch.cat([tok.quantize(tok.encode(b)) for b in xt.split(args.batch_size)])

    rows = []
    t_base, _ = median_time(baseline, args.repeats)
    rows.append(("tokenizer only (encode + quantize, not unique)", t_base))

    tok64 = exact_model(tok)
    cb = tok64.codebooks.numpy()
    t_fast, (codes, unsure) = median_time(lambda: fast_codes(tok, x, batch_size=args.batch_size), args.repeats)
    rows_unsure = np.flatnonzero(unsure)
    t_settle, settled = median_time(lambda: reference_codes(tok64, exact_latents(tok64, x, rows_unsure)), args.repeats)
    codes[rows_unsure] = settled
    rows.append(("  part: float32 codes + close-call flags", t_fast))
    rows.append((f"  part: float64 settling of {len(rows_unsure):,} close calls ({unsure.mean():.2%})", t_settle))
    results = {"close_calls": int(len(rows_unsure)), "close_call_fraction": float(unsure.mean())}
    for strategy in ("semantic", "suffix"):
        t_dedup, a = median_time(lambda s=strategy: make_unique(
            codes, ids, strategy=s, codebook_size=k, latents=lambda r: exact_latents(tok64, x, r), codebooks=cb),
            args.repeats)
        rows.append((f"  part: make_unique ({strategy}, float64 latents of the collided included)", t_dedup))
        cfg = AssignConfig(strategy=strategy, batch_size=args.batch_size)
        t_all, (tokens, _, stats) = median_time(lambda c=cfg: assign_sids(tok, x, ids, c), args.repeats)
        assert len(np.unique(tokens, axis=0)) == n, "SIDs are not unique"
        rows.append((f"assign_sids ({strategy})", t_all))
        results[strategy] = {"seconds": t_all, "movies_per_s": n / t_all, "vs_tokenizer_only": t_all / t_base,
                             "stats": stats}

    # How far float32 strays from the float64 reference, in units of the margin's scale.
    sample = np.random.default_rng(0).choice(n, min(n, 20000), replace=False)
    z64 = torch.from_numpy(exact_latents(tok64, x, sample))
    with torch.inference_mode():
        z32 = tok.encode(xt[sample]).double()
    cbt = torch.from_numpy(cb)
    worst = 0.0
    r64, r32 = z64.clone(), z32.clone()
    for level in range(levels):
        sq = (cbt[level] ** 2).sum(1)
        d64 = sq[None] - 2 * r64 @ cbt[level].T
        c32 = cbt[level].float()
        d32 = (torch.addmm((c32 * c32).sum(1)[None], r32.float(), c32.T, alpha=-2.0)).double()
        scale = (r64 * r64).sum(1, keepdim=True) + sq.max()
        worst = max(worst, float(((d32 - d64).abs() / scale).max()))
        c = d64.argmin(1)
        r64, r32 = r64 - cbt[level][c], (r32.float() - c32[c]).double()
    results["float32_worst_relative_error"] = worst
    rows_note = (f"float32 vs float64 distances, worst over {len(sample):,} movies x {levels} levels: {worst:.2e} "
                 f"of the scale; margin {MARGIN:g} ({MARGIN / max(worst, 1e-300):,.0f}x the worst error)")

    if args.stage:
        from movielens_sids.config import load_config
        from movielens_sids.stages.assign import assign_stage

        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp)
            for name in ("embeddings.parquet", "collab.parquet"):  # the collaborative vectors, if the model reads them
                if (args.run_dir / name).exists():
                    shutil.copy(args.run_dir / name, run / name)
            shutil.copytree(args.run_dir / "model", run / "model",
                            ignore=shutil.ignore_patterns("checkpoints", "logs"))
            for strategy in ("semantic", "suffix"):
                cfg = load_config(None, {"assign.strategy": strategy, "assign.device": "cpu"})
                t_stage, _ = median_time(lambda c=cfg: assign_stage(run, c), max(1, args.repeats // 2))
                rows.append((f"whole stage, I/O included ({strategy})", t_stage))
                results[strategy]["stage_seconds"] = t_stage

    width = max(len(r[0]) for r in rows)
    print(f"{'what'.ljust(width)}  {'seconds':>8}  {'movies/s':>10}")
    for name, t in rows:
        print(f"{name.ljust(width)}  {t:8.3f}  {n / t:10,.0f}")
    print(rows_note)
    table = "\n".join(["| what | seconds | movies/s |", "| --- | ---: | ---: |",
                       *(f"| {name} | {t:.3f} | {n / t:,.0f} |" for name, t in rows)])
    write_record(args.markdown, table, title=f"assign on {n:,} movies", notes=rows_note)
    for strategy in ("semantic", "suffix"):
        r = results[strategy]
        s = r["stats"]
        print(f"{strategy}: {r['movies_per_s']:,.0f} movies/s ({r['vs_tokenizer_only']:.2f}x the tokenizer alone); "
              f"{s['n_collided_before']} collided, {s['n_moved']} moved, {s['n_suffixed']} with a collision token")
    if args.json:
        args.json.write_text(json.dumps({"n_movies": n, "threads": torch.get_num_threads(), **results},
                                        indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
