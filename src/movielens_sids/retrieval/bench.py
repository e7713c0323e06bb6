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

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from .generative import GenerativeRetriever, Recommendations
from .lightning_modules import fit, last_items, training_windows
from .metrics import ranking_metrics
from .sasrec import SASRec
from .sequences import Split

log = logging.getLogger(__name__)

METHODS = ("semantic_id", "random_id", "sasrec", "most_popular")
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


@dataclass
class RetrievalConfig:
    """Settings of the generative-retrieval benchmark (`movielens-sids retrieval`)."""

    dataset: str | None = None
    """MovieLens variant whose ratings are used (default: the run's `data.dataset`)."""
    ratings: str | None = None
    """A ratings.csv / ratings.dat file to use instead of a named dataset."""
    min_ratings: int = 5
    """Users with fewer ratings (of movies with a SID) are dropped."""
    max_users: int | None = None
    """Evaluate a seeded random sample of this many users (for ml-20m and larger); None keeps all."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One full comparison per seed (model init, batch order, the random IDs)."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Which of semantic_id, random_id, sasrec, most_popular to run."""
    max_history: int = 50
    """M: how many past movies the models see."""
    max_train_items: int | None = 100
    """Train on at most this many of each user's most recent training movies (None: all); caps heavy raters."""
    d_model: int = 64
    """Transformer width (both models)."""
    n_layers: int = 2
    """Transformer blocks (both models)."""
    n_heads: int = 2
    """Attention heads (both models)."""
    dropout: float = 0.2
    """Dropout (both models)."""
    lr: float = 3e-3
    """AdamW learning rate of the generative models."""
    sasrec_lr: float = 3e-3
    """AdamW learning rate of SASRec."""
    weight_decay: float = 0.01
    """AdamW weight decay on the weight matrices."""
    batch_size: int = 64
    """Training windows per step."""
    max_epochs: int = 8
    """Upper bound on training epochs."""
    patience: int = 3
    """Stop after this many epochs without a better validation Recall@10 (the best epoch's weights are kept)."""
    beam_size: int = 20
    """Beams of the constrained beam search (>= 10, the largest cut-off)."""
    eval_batch_size: int = 128
    """Users per evaluation batch."""
    device: str = "cpu"
    """Lightning accelerator: cpu, gpu or auto."""
    threads: int | None = None
    """CPU threads for torch (None: torch's default); 1 is fastest on a busy machine."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"eval_batch_size", "device", "threads"})

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods: unknown {bad or '(none given)'}; choose from {', '.join(METHODS)}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        if self.min_ratings < 3:
            raise ValueError(f"min_ratings: need at least 3 (train, valid, test), got {self.min_ratings}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users: must be positive, got {self.max_users}")
        for name in ("max_history", "d_model", "n_layers", "n_heads", "batch_size", "max_epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.max_train_items is not None and self.max_train_items < 2:
            raise ValueError(f"max_train_items: must be at least 2, got {self.max_train_items}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: must be positive, got {self.threads}")
        if self.patience < 0:
            raise ValueError(f"patience: must be >= 0, got {self.patience}")
        if self.beam_size < 10:
            raise ValueError(f"beam_size: must be at least 10 (the largest cut-off), got {self.beam_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.sasrec_lr <= 0:
            raise ValueError("lr: learning rates must be positive")
        if self.device not in ("cpu", "gpu", "cuda", "mps", "auto"):
            raise ValueError(f"device: expected cpu, gpu, cuda, mps or auto, got {self.device!r}")


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


def settings_dict(cfg: RetrievalConfig) -> dict:
    """The settings that decide the numbers (runtime-only fields left out)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RetrievalConfig.RUNTIME_FIELDS}
