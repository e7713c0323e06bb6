"""The four-way generative-retrieval benchmark: do Semantic IDs help a generative recommender?

On one leave-one-out split of the ratings, and for each seed:

- ``semantic_id``: ``GenerativeRetriever`` over the run's Semantic IDs;
- ``random_id``: the same model and settings over random IDs of the same shape: the run's SIDs
  shuffled across movies (seeded per seed), so L, K per level, uniqueness and even the trie's
  shape are identical and only the link between a movie's content and its tokens is broken;
- ``sasrec``: SASRec over plain movie ids (full ranking over all movies);
- ``most_popular``: movies ranked by their number of training interactions.

Metrics are Recall@5/10 and NDCG@5/10 of the held-out last movie of every user. Nothing is
filtered from the ranked lists (a user's already-rated movies may be recommended: in MovieLens a
user never rates a movie twice, so this costs every method the same slots); the generative models
return their top 10 of ``beam_size`` constrained beams, SASRec and most-popular rank all movies.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .config import METHODS, METRICS, RetrievalConfig, settings_dict  # noqa: F401 (re-exported)
from .generative import GenerativeRetriever, Recommendations
from .lightning_modules import fit, last_items, training_windows
from .metrics import ranking_metrics
from .sasrec import SASRec
from .sequences import Split

log = logging.getLogger(__name__)

def random_codes(codes: np.ndarray, seed: int) -> np.ndarray:
    """Random IDs of the same shape: ``codes``' rows shuffled across movies (seeded).

    Same L, same tokens per level, still unique, and the trie has exactly the same shape; only
    which movie gets which ID is random.
    """
    perm = np.random.default_rng(seed).permutation(len(codes))
    return np.asarray(codes)[perm]


def most_popular(windows_items: list[np.ndarray], n_items: int, k: int) -> np.ndarray:
    """(k,) the ``k`` items with most training interactions, ties broken by item index."""
    counts = np.bincount(np.concatenate(windows_items) if windows_items else np.empty(0, np.int64),
                         minlength=n_items)
    return np.argsort(-counts, kind="stable")[:k]


@torch.no_grad()
def recommend_all(model: torch.nn.Module, history: np.ndarray, *, k: int, beam_size: int, batch_size: int,
                  device: torch.device) -> np.ndarray:
    """(U, k) top-k items for (U, M) histories, in batches."""
    model.eval().to(device)
    out = []
    for i in range(0, len(history), batch_size):
        h = torch.from_numpy(history[i:i + batch_size]).to(device)
        rec: Recommendations = model.recommend(h, k, beam_size=beam_size)
        out.append(rec.items.cpu().numpy())
    return np.concatenate(out)


def _device(cfg: RetrievalConfig) -> tuple[str, torch.device]:
    if cfg.device in ("gpu", "cuda") or (cfg.device == "auto" and torch.cuda.is_available()):
        return "gpu", torch.device("cuda")
    if cfg.device == "mps":
        return "mps", torch.device("mps")
    return "cpu", torch.device("cpu")


def _summary(per_seed: dict[int, dict[str, float]]) -> dict:
    values = {m: np.array([per_seed[s][m] for s in per_seed]) for m in METRICS}
    return {
        "mean": {m: float(v.mean()) for m, v in values.items()},
        "std": {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
        "per_seed": {str(s): per_seed[s] for s in per_seed},
    }


def run_benchmark(split: Split, codes: np.ndarray, cfg: RetrievalConfig) -> dict:
    """Train and evaluate every method of ``cfg.methods`` for every seed on ``split``.

    Args:
        split: the leave-one-out split; item ``i`` is ``split.movie_ids[i]``.
        codes: (N, L) the Semantic ID of each item of the split, rows distinct.
        cfg: the settings.

    Returns:
        The ``methods`` part of the report: per method mean/std/per-seed metrics and training facts.
    """
    import lightning as L

    if len(codes) != len(split.movie_ids):
        raise ValueError(f"codes has {len(codes)} rows for {len(split.movie_ids)} movies")
    accelerator, device = _device(cfg)
    m = cfg.max_history
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    cap = cfg.max_train_items
    windows = training_windows([t[-cap:] if cap else t for t in split.train], m)
    valid_hist, valid_tgt = last_items([split.history("valid", u) for u in range(len(split.users))], m), split.valid
    test_hist, test_tgt = last_items([split.history("test", u) for u in range(len(split.users))], m), split.test
    log.info("%d users, %d movies, %d training windows of %d movies", len(split.users), len(split.movie_ids),
             len(windows), m + 1)
    shape = dict(max_history=m, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, dropout=cfg.dropout)
    per_seed: dict[str, dict[int, dict[str, float]]] = {name: {} for name in cfg.methods}
    train_info: dict[str, dict[str, list]] = {name: {} for name in cfg.methods}
    # Seeds outer, methods inner: an interrupted run still has whole comparisons in its log.
    for seed in cfg.seeds:
        for method in cfg.methods:
            t0 = time.perf_counter()
            L.seed_everything(seed, workers=False, verbose=False)
            info: dict = {}
            if method == "most_popular":
                top = most_popular(split.train, len(split.movie_ids), 10)
                ranked = np.broadcast_to(top, (len(test_tgt), 10))
            else:
                if method == "sasrec":
                    model = SASRec(len(split.movie_ids), **shape)
                    lr = cfg.sasrec_lr
                else:
                    ids = codes if method == "semantic_id" else random_codes(codes, seed)
                    model = GenerativeRetriever(ids, **shape)
                    lr = cfg.lr
                info = fit(model, windows, valid_hist, valid_tgt, lr=lr, weight_decay=cfg.weight_decay,
                           batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                           max_epochs=cfg.max_epochs, patience=cfg.patience, beam_size=cfg.beam_size,
                           seed=seed, accelerator=accelerator)
                ranked = recommend_all(model, test_hist, k=10, beam_size=cfg.beam_size,
                                       batch_size=cfg.eval_batch_size, device=device)
            metrics = per_seed[method][seed] = ranking_metrics(ranked, test_tgt)
            info["seconds"] = round(time.perf_counter() - t0, 1)
            for key, value in info.items():
                train_info[method].setdefault(key, []).append(value)
            log.info("seed %d %-12s recall@10 %.4f ndcg@10 %.4f (%s)", seed, method, metrics["recall@10"],
                     metrics["ndcg@10"], ", ".join(f"{k} {v}" for k, v in info.items() if k != "valid_curve"))
    results = {name: {**_summary(per_seed[name]), "training": train_info[name]} for name in cfg.methods}
    return results
