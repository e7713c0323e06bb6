"""Ranking metrics for next-item prediction (one relevant item per event).

With a single relevant item, Recall@K is the hit rate (is the item in the top K?) and NDCG@K is
``1 / log2(rank + 2)`` for a 0-based rank below K, else 0 (the ideal DCG is 1).

May import: numpy only.
"""

from __future__ import annotations

import numpy as np


def target_ranks(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each user's target in its ranked list, or -1 when it is absent.

    Args:
        topk: (U, K) item ids, best first (-1 pads a list shorter than K).
        targets: (U,) the held-out item of each user.

    Returns:
        (U,) int64 ranks.
    """
    topk = np.asarray(topk)
    targets = np.asarray(targets)
    if topk.ndim != 2 or targets.shape != (topk.shape[0],):
        raise ValueError(f"expected topk (U, K) and targets (U,), got {topk.shape} and {targets.shape}")
    hit = topk == targets[:, None]  # (U, K)
    return np.where(hit.any(1), hit.argmax(1), -1).astype(np.int64)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of users whose target is in the top ``k`` (``ranks`` from ``target_ranks``)."""
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 0) & (ranks < k))) if len(ranks) else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item: ``1/log2(rank+2)`` when ``0 <= rank < k``, else 0."""
    ranks = np.asarray(ranks)
    if not len(ranks):
        return 0.0
    ok = (ranks >= 0) & (ranks < k)
    return float(np.mean(np.where(ok, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)))


def ranking_metrics(topk: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    """``{"recall@5": ..., "recall@10": ..., "ndcg@5": ..., "ndcg@10": ...}`` for ranked lists."""
    if topk.shape[1] < max(ks):
        raise ValueError(f"need at least {max(ks)} ranked items per user, got {topk.shape[1]}")
    ranks = target_ranks(topk, targets)
    out = {f"recall@{k}": recall_at_k(ranks, k) for k in ks}
    out.update({f"ndcg@{k}": ndcg_at_k(ranks, k) for k in ks})
    return out
