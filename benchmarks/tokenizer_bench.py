"""Tokenizers side by side on the same vectors, in one process: training time and every quality metric.

Rows:
  (a) rqvae-best   the RQ-VAE with the recommended 3 x 256 settings (the ``ml-32m`` preset, or ``--preset``)
  (a'') rqvae-grouped  the same plus ``--group-set`` (default: the grouped first level,
                   ``model.group_weight=4``, and ``model.balance=1.0``)
  (a') rqvae-tiger  the RQ-VAE on a 32-d MLP latent (the ``tiger`` preset)
  (b) rqkmeans     residual k-means on FAISS, 3 x 256
  (c) faiss-rq     ``faiss.ResidualQuantizer`` 3 x 256 (8 bits), its default beam
  (d) seed         4 x 1024 on the raw vector (identity encoder), our initialisation (``seed`` preset)
  (e) rqvae-collab the ``collab`` preset: content and collaborative vectors side by side
                   (``model.collab_input``), with its co-watch term; needs ``--run-dir`` with ratings

With ``--run-dir`` (a run folder after ``collab``) the vectors are its embeddings, every RQ-VAE row trains
as ``movielens-sids train`` would there (a preset's ``model.collab_input`` fuses ``collab.parquet`` into
the input, its ``train.collab_weight`` adds the co-watch term), and every row also reports co-watch
alignment over ``cowatch.parquet``'s pairs (CW L1, CW L2: the share of the most co-watched pairs that share
the first token, the first two). The neighbour metrics always use the content embeddings; reconstruction
uses what each tokenizer reads.

With ``--seeds 0,1,2`` every row runs once per seed and the table gives the mean and, after
``±``, the standard deviation over seeds: lift and unique fraction move by about 1 % between
seeds, so single-seed comparisons at that distance are noise.

Metrics (``movielens_sids.metrics``) on every movie: relative MSE and mean cosine of the
reconstruction, per-level utilization and perplexity, unique fraction before dedup and the largest
collision group, the share of each movie's 10 nearest embedding neighbours that share its first
token against the same rate for random pairs, and their ratio (lift); prefix coherence: over the
mutual 5-NN pairs, the share that share the first token (coh L1) and the first two (coh L2), beside
the same for random pairs (on the raw codes, before the IDs are made unique).

Usage:
    python benchmarks/tokenizer_bench.py --embeddings runs/ml-32m/embeddings.parquet [more fallbacks: x.npy]
    python benchmarks/tokenizer_bench.py --embeddings vecs.npy --rows rqvae-best,rqkmeans --out bench.json
    python benchmarks/tokenizer_bench.py --run-dir runs/collab --preset demo --set train.collab_weight=0 \
        --rows rqkmeans,faiss-rq,rqvae-best,rqvae-collab --seeds 0,1,2

The first ``--embeddings`` path that exists is used (Parquet from the embed stage, or a .npy matrix).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from record import write_record

from movielens_sids import metrics as M
from movielens_sids.artifacts import read_cowatch, read_embeddings, tokenizer_input
from movielens_sids.config import load_config
from movielens_sids.model import RQKMeans, RQKMeansConfig
from movielens_sids.stages.train import cowatch_positives, fit_rqvae, tokenize

log = logging.getLogger("benchmark")

# The preset each RQ-VAE row trains with (its model and train sections, as `movielens-sids train` would).
PRESETS: dict[str, str] = {"rqvae-best": "ml-32m", "rqvae-grouped": "ml-32m", "rqvae-tiger": "tiger", "seed": "seed",
                           "rqvae-collab": "collab"}
ROWS = ["faiss-rq", "rqvae-best", "rqvae-grouped", "rqkmeans", "seed", "rqvae-tiger", "rqvae-collab"]


@dataclasses.dataclass
class Run:
    """A run folder's signals beside its embeddings: what ``train`` would read there."""

    run_dir: Path
    emb: object  # artifacts.Embeddings
    pairs: tuple[np.ndarray, np.ndarray] | None  # row indices of cowatch.parquet's pairs, or None

    @classmethod
    def read(cls, run_dir: Path) -> Run:
        emb = read_embeddings(run_dir)
        table = read_cowatch(run_dir)
        pairs = None
        if table is not None:
            a, b = (np.searchsorted(emb.movie_ids, table.column(c).to_numpy()) for c in ("movie_a", "movie_b"))
            pairs = (a, b)
        return cls(Path(run_dir), emb, pairs)

    def inputs(self, cfg) -> tuple[np.ndarray, int, np.ndarray | None]:
        """(N, D [+ F]) the tokenizer's input, F, and the co-watch positives, as ``train`` builds them."""
        x, f = tokenizer_input(self.run_dir, self.emb, collab_input=cfg.model.collab_input,
                               shrinkage=cfg.model.collab_shrinkage)
        positives, _ = cowatch_positives(self.run_dir, self.emb.movie_ids, cfg.train)
        return x, f, positives


def load_vectors(paths: list[Path]) -> tuple[np.ndarray, Path]:
    for p in paths:
        if p.exists():
            if p.suffix == ".npy":
                return np.ascontiguousarray(np.load(p), dtype=np.float32), p
            return read_embeddings(p.parent).x, p  # p: a run folder's embeddings.parquet
    sys.exit(f"none of the embeddings files exist: {', '.join(map(str, paths))}")


def run_rqvae(x: np.ndarray, name: str, seed: int, max_epochs: int | None = None, extra: dict | None = None,
              run: Run | None = None) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Train row ``name``'s preset; returns codes, the reconstruction, seconds and facts, and under
    ``"input"`` what it read (x, or with ``run`` the fused input when the preset fuses)."""
    over = {"train.seed": seed, "train.progress_bar": False, "train.accelerator": "cpu", "train.devices": "1",
            **(extra or {})}
    if max_epochs:
        over["train.max_epochs"] = max_epochs
    cfg = load_config(PRESETS[name], over)
    f, positives = 0, None
    if run is not None:
        x, f, positives = run.inputs(cfg)
    elif cfg.model.collab_input > 0:
        sys.exit(f"row {name} reads collaborative vectors: pass --run-dir, a run folder after `collab`")
    cfg.model = cfg.model.for_input(x.shape[1], f)
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        model, summary = fit_rqvae(x, cfg.model, cfg.train, Path(work), positives=positives)
        seconds = time.perf_counter() - t0
    codes, x_hat = tokenize(model, x)
    return codes, x_hat, seconds, {"steps": summary["global_step"], "epochs": summary["epochs"],
                                   "codebook_size": cfg.model.codebook_size, "input": x,
                                   "co_watch_term": positives is not None, "collab_dim": f}


def run_rqkmeans(x: np.ndarray, seed: int, levels: int = 3, k: int = 256) -> tuple[np.ndarray, np.ndarray, float, dict]:
    t0 = time.perf_counter()
    tok = RQKMeans.fit(x, RQKMeansConfig(input_dim=x.shape[1], levels=levels, codebook_size=k), seed=seed)
    seconds = time.perf_counter() - t0
    codes, x_hat = tokenize(tok, x)
    return codes, x_hat, seconds, {"codebook_size": k}


def run_faiss_rq(x: np.ndarray, seed: int, levels: int = 3, k: int = 256) -> tuple[np.ndarray, np.ndarray, float, dict]:
    import faiss

    rq = faiss.ResidualQuantizer(x.shape[1], levels, int(np.log2(k)))  # L levels x K = 2^bits codes, default beam
    rq.cp.seed = seed
    t0 = time.perf_counter()
    rq.train(x)
    seconds = time.perf_counter() - t0
    packed = rq.compute_codes(x)  # (N, 3) bytes: one 8-bit code per level
    codes = _unpack(packed, levels, int(np.log2(k)))
    return codes, rq.decode(packed), seconds, {"max_beam_size": int(rq.max_beam_size), "codebook_size": k}


def _unpack(packed: np.ndarray, levels: int, bits: int) -> np.ndarray:
    """(N, bytes) FAISS codes, packed little-endian bit by bit -> (N, L) int64."""
    bitstream = np.unpackbits(packed, axis=1, bitorder="little")  # (N, 8 bytes)
    weights = 1 << np.arange(bits)
    cols = [bitstream[:, lv * bits:(lv + 1) * bits] @ weights for lv in range(levels)]
    return np.stack(cols, axis=1).astype(np.int64)


def measure(x: np.ndarray, codes: np.ndarray, x_hat: np.ndarray, k: int, neighbors: np.ndarray,
            pairs: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """x: (N, D) what the tokenizer read (reconstruction); neighbors: (N, 10) content neighbours; pairs: the
    co-watched pairs' rows, for co-watch alignment."""
    col = M.collision_stats(codes)
    cw = M.co_watch(codes, *pairs) if pairs is not None else None
    coh = M.prefix_coherence(codes, neighbors, 5)
    ftm = M.first_token_match(codes, neighbors)
    rnd = M.random_first_token_match(codes)
    return {
        "relative_mse": M.relative_mse(x, x_hat), "mean_cosine": M.mean_cosine(x, x_hat),
        "utilization": M.utilization(codes, k), "perplexity": M.perplexity(codes, k),
        "unique_fraction_before_dedup": col["unique_fraction"], "max_group_size": col["max_group_size"],
        "first_token_match_at_10": ftm, "random_first_token_match": rnd, "lift": ftm / max(rnd, 1e-12),
        "coherence": coh, "coh_l1": coh["first_token"], "coh_l2": coh["first_two_tokens"],
        "coh_random_l1": coh["random_first_token"], "coh_random_l2": coh["random_first_two_tokens"],
        **({"co_watch": cw, "cw_l1": cw["first_token"], "cw_l2": cw["first_two_tokens"]} if cw else {}),
    }


def _mean_std(values: list) -> tuple:
    a = np.asarray(values, dtype=np.float64)
    return a.mean(axis=0), a.std(axis=0)


def table(results: dict[str, list[dict]]) -> str:
    """One row per tokenizer: means over seeds, ``± std`` where there are several."""
    cw = all("cw_l1" in r for runs in results.values() for r in runs)
    head = ("| tokenizer | L x K | seeds | train s | rel. MSE | cosine | utilization | perplexity | unique "
            "| max group | 1st-token@10 | random | lift | coh L1 | coh L2 | random L1 | random L2 |"
            + (" CW L1 | CW L2 |" if cw else ""))
    lines = [head, "|" + " --- |" * (19 if cw else 17)]

    def cell(runs: list[dict], key: str, fmt: str) -> str:
        m, sd = _mean_std([r[key] for r in runs])
        return f"{m:{fmt}}" + (f" ± {sd:{fmt}}" if len(runs) > 1 else "")

    for name, runs in results.items():
        util, _ = _mean_std([r["utilization"] for r in runs])
        ppl, _ = _mean_std([r["perplexity"] for r in runs])
        lines.append(
            f"| {name} | {runs[0]['shape']} | {len(runs)} | {cell(runs, 'train_seconds', '.1f')} "
            f"| {cell(runs, 'relative_mse', '.4f')} | {cell(runs, 'mean_cosine', '.4f')} "
            f"| {' / '.join(f'{u:.3f}' for u in util)} | {' / '.join(f'{q:.0f}' for q in ppl)} "
            f"| {cell(runs, 'unique_fraction_before_dedup', '.4f')} | {max(r['max_group_size'] for r in runs)} "
            f"| {cell(runs, 'first_token_match_at_10', '.4f')} | {cell(runs, 'random_first_token_match', '.5f')} "
            f"| {cell(runs, 'lift', '.1f')} | {cell(runs, 'coh_l1', '.3f')} | {cell(runs, 'coh_l2', '.3f')} "
            f"| {cell(runs, 'coh_random_l1', '.4f')} | {cell(runs, 'coh_random_l2', '.5f')} |"
            + (f" {cell(runs, 'cw_l1', '.3f')} | {cell(runs, 'cw_l2', '.3f')} |" if cw else ""))
    return "\n".join(lines)


def faiss_ratios(results: dict[str, list[dict]]) -> str:
    """Each row's training time over FAISS's on the same seed, in the same process (empty without faiss-rq)."""
    base = {r["seed"]: r["train_seconds"] for r in results.get("faiss-rq", [])}
    lines = []
    for name, runs in results.items():
        ratios = [r["train_seconds"] / base[r["seed"]] for r in runs if r["seed"] in base]
        if name != "faiss-rq" and ratios:
            lines.append(f"- {name}: {np.median(ratios):.2f}x faiss-rq's training time (median over seeds; "
                         f"{' / '.join(f'{q:.2f}' for q in ratios)})")
    head = "\n\nTraining time against FAISS's `ResidualQuantizer` in the same run:\n\n"
    return head + "\n".join(lines) if lines else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--embeddings", type=Path, nargs="+", default=[Path("runs/ml-32m/embeddings.parquet")],
                   help="embeddings.parquet or .npy (the first that exists is used)")
    p.add_argument("--run-dir", type=Path, help="a run folder: its embeddings, and its collab.parquet and "
                   "cowatch.parquet for rqvae-collab, the presets' co-watch terms and the CW columns")
    p.add_argument("--rows", default=None, help=f"comma-separated subset of {','.join(ROWS)} (default: all; "
                   "rqvae-collab only with --run-dir)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; every row runs once per seed")
    p.add_argument("--single-seed-rows", default="seed,rqvae-tiger",
                   help="rows that run with the first seed only (the slow ones not compared in the acceptance)")
    p.add_argument("--max-epochs", type=int, default=None, help="cap the RQ-VAE rows' epochs (quick runs)")
    p.add_argument("--preset", default="ml-32m", help="the preset of rqvae-best and rqvae-grouped (e.g. demo)")
    p.add_argument("--group-set", action="append", default=None, metavar="KEY=VALUE",
                   help="settings of rqvae-grouped on top of --set (repeatable; default model.group_weight=4 "
                        "and model.balance=1.0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another setting for both rqvae-best and rqvae-grouped (repeatable)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N movies (quick runs)")
    p.add_argument("--out", type=Path, help="also write the results as JSON")
    p.add_argument("--markdown", type=Path, help="also write the table as a docs record (command, machine, date)")
    p.add_argument("--neighbors", type=Path, help="cache of the exact 10-NN (.npy): read if present, else written")
    args = p.parse_args()
    # This file is named like the Hugging Face `tokenizers` package: keep its folder off the import path.
    here = Path(__file__).resolve().parent
    sys.path[:] = [q for q in sys.path if Path(q or ".").resolve() != here]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "movielens_sids.stages.train"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run = Run.read(args.run_dir) if args.run_dir else None
    x, source = (run.emb.x, run.emb.path) if run else load_vectors(args.embeddings)
    if args.limit:
        if run:
            sys.exit("--limit and --run-dir do not go together (the run's collaborative files cover every movie)")
        x = x[: args.limit]
    rows = [r.strip() for r in (args.rows or ",".join(r for r in ROWS if run or r != "rqvae-collab")).split(",")
            if r.strip()]
    log.info("%d x %d vectors from %s; torch threads %d", *x.shape, source, torch.get_num_threads())
    if args.neighbors and args.neighbors.exists():
        neighbors = np.load(args.neighbors)
        if neighbors.shape != (len(x), 10):
            sys.exit(f"{args.neighbors} does not match these vectors")
    else:
        t0 = time.perf_counter()
        neighbors = M.knn(x, 10)
        log.info("exact 10-NN in %.1fs", time.perf_counter() - t0)
        if args.neighbors:
            np.save(args.neighbors, neighbors)
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    PRESETS["rqvae-best"] = PRESETS["rqvae-grouped"] = args.preset
    base = load_config(args.preset).model
    shape = (base.levels, base.codebook_size)  # rqkmeans and faiss-rq: the preset's L x K
    common = {k.strip(): yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    grouped = {k.strip(): yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in
               (args.group_set or ["model.group_weight=4", "model.balance=1.0"]))}
    extras = {"rqvae-best": common, "rqvae-grouped": {**common, **grouped}}
    single = {r.strip() for r in args.single_seed_rows.split(",") if r.strip()}
    results: dict[str, list[dict]] = {}
    for name in rows:
        for seed in (seeds[:1] if name in single else seeds):
            if name == "rqkmeans":
                codes, x_hat, seconds, extra = run_rqkmeans(x, seed, *shape)
            elif name == "faiss-rq":
                codes, x_hat, seconds, extra = run_faiss_rq(x, seed, *shape)
            elif name in PRESETS:
                codes, x_hat, seconds, extra = run_rqvae(x, name, seed, args.max_epochs, extras.get(name), run)
            else:
                sys.exit(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
            k = extra.pop("codebook_size", 256)
            read = extra.pop("input", x)
            r = {"seed": seed, "shape": f"{codes.shape[1]} x {k}", "train_seconds": seconds, **extra,
                 **measure(read, codes, x_hat, k, neighbors, run.pairs if run else None)}
            results.setdefault(name, []).append(r)
            log.info("%s seed %d: %.1fs, relative MSE %.4f, unique %.4f, lift %.1f, coherence L1 %.3f L2 %.3f, "
                     "perplexity %s", name, seed, seconds, r["relative_mse"], r["unique_fraction_before_dedup"],
                     r["lift"], r["coh_l1"], r["coh_l2"], [round(v) for v in r["perplexity"]])
    print(f"\n{len(x)} movies, {x.shape[1]}-d vectors from {source}; one process, torch threads "
          f"{torch.get_num_threads()}\n")
    text = table(results) + faiss_ratios(results)
    print(text)
    write_record(args.markdown, text, title=f"Tokenizers on {len(x):,} movies ({source})")
    if args.out:
        args.out.write_text(json.dumps({"source": str(source), "n": len(x), "presets": PRESETS, "seeds": seeds,
                                        "extra_settings": extras,
                                        "max_epochs": args.max_epochs, "results": results}, indent=2, default=float))


if __name__ == "__main__":
    main()
