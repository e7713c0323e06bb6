"""Per-event metrics, slices and bootstrap intervals: how sure are the benchmark's numbers?

Every method ranks movies for the same test events. From the 0-based rank of each event's target
(``metrics.target_ranks``) come per-event scores -- Recall@K is 1 when the target is in the top K,
NDCG@K is ``1/log2(rank+2)`` there -- averaged over seeds, so a method's score on an event is its
mean over the seeds. A metric is the mean of those scores over a slice of events.

Intervals come from the bootstrap (Efron & Tibshirani, 1993), percentile method. Events of one
user are not independent (the same history, the same taste), so by default whole users are
resampled with all their events (a cluster bootstrap); ``unit="event"`` resamples events.
A paired difference resamples the *same* units for both methods, so what they share cancels.
Its two-sided p-value is the share of bootstrap differences, shifted to a zero mean, that are at
least as far from zero as the observed one (with the usual +1 so it is never exactly 0).

May import: numpy only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

METRIC_KS = {"recall": (1, 5, 10, 20, 50), "ndcg": (5, 10)}


def event_scores(ranks: np.ndarray, metric: str) -> np.ndarray:
    """(..., E) float64 per-event score of ``metric`` ("recall@10", "ndcg@5", ...) from (..., E) 0-based ranks."""
    name, k = metric.split("@")
    k = int(k)
    ranks = np.asarray(ranks)
    hit = (ranks >= 0) & (ranks < k)
    if name == "recall":
        return hit.astype(np.float64)
    if name == "ndcg":
        return np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    raise ValueError(f"unknown metric {metric!r}; expected recall@K or ndcg@K")


class Intervals(NamedTuple):
    """Point estimates with their percentile-bootstrap intervals (and p-values for differences), each (V,)."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_value: np.ndarray


def bootstrap(values: np.ndarray, clusters: np.ndarray | None = None, *, samples: int = 10_000, seed: int = 0,
              level: float = 0.95, chunk: int = 256) -> Intervals:
    """Means of ``values`` with percentile-bootstrap intervals, resampling whole clusters.

    All V rows are resampled with the *same* draws, so differences between rows are paired and one
    call costs one set of draws whatever V is.

    Args:
        values: (V, E) or (E,) per-event values (scores, or paired differences of two methods' scores).
        clusters: (E,) the unit each event belongs to (e.g. its user); None: every event its own unit.
        samples: bootstrap resamples.
        seed: the resampling seed.
        level: the intervals' coverage.
        chunk: resamples drawn at once (memory: ``chunk * C`` floats).

    Returns:
        ``Intervals`` of (V,) arrays (floats when ``values`` is 1-D): the mean, the interval, and the
        two-sided p-value for "the mean is 0" (1.0 when the mean is exactly 0).
    """
    values = np.asarray(values, dtype=np.float64)
    one = values.ndim == 1
    values = np.atleast_2d(values)  # (V, E)
    v, e = values.shape
    if e == 0:
        nan = np.full(v, np.nan)
        out = Intervals(nan, nan, nan, nan)
    else:
        _, inverse = np.unique(np.arange(e) if clusters is None else np.asarray(clusters), return_inverse=True)
        c = int(inverse.max()) + 1
        sums = np.stack([np.bincount(inverse, weights=row, minlength=c) for row in values])  # (V, C)
        counts = np.bincount(inverse, minlength=c).astype(np.float64)  # (C,)
        rng = np.random.default_rng(seed)
        boot = []
        for start in range(0, samples, chunk):
            b = min(chunk, samples - start)
            draws = rng.integers(0, c, size=(b, c)) + np.arange(b)[:, None] * c  # (b, C): C units drawn per resample
            w = np.bincount(draws.ravel(), minlength=b * c).reshape(b, c).astype(np.float64)  # (b, C) multiplicities
            boot.append((w @ sums.T) / np.maximum(w @ counts, 1.0)[:, None])  # (b, V)
        boot = np.concatenate(boot)  # (samples, V)
        mean = values.mean(1)  # (V,)
        alpha = (1.0 - level) / 2
        low, high = np.quantile(boot, [alpha, 1.0 - alpha], axis=0)  # (V,), (V,)
        extreme = (np.abs(boot - boot.mean(0)) >= np.abs(mean) - 1e-12).sum(0)  # (V,)
        p = np.where(mean != 0, (extreme + 1) / (samples + 1), 1.0)
        out = Intervals(mean, low, high, p)
    return Intervals(*(float(x[0]) for x in out)) if one else out


def slice_metrics(ranks: dict[str, np.ndarray], metrics: tuple[str, ...], slices: dict[str, np.ndarray],
                  clusters: np.ndarray, *, samples: int, seed: int) -> dict[str, dict]:
    """``{method: {slice: {metric: {mean, ci_low, ci_high}}}}`` for every method's (S, E) ranks.

    Args:
        ranks: method -> (S, E) 0-based target ranks per seed and event, -1 when not ranked; a
            method's per-event score is its mean over its S seeds.
        metrics: e.g. ("recall@10", "ndcg@10").
        slices: name -> (E,) bool mask of the events in the slice.
        clusters: (E,) the bootstrap unit of each event.
        samples, seed: as in ``bootstrap``.
    """
    names = list(ranks)
    scores = np.stack([event_scores(ranks[n], m).mean(0) for n in names for m in metrics])  # (methods x metrics, E)
    out: dict[str, dict] = {n: {} for n in names}
    for slice_name, mask in slices.items():
        iv = bootstrap(scores[:, mask], clusters[mask], samples=samples, seed=seed)
        for i, (n, m) in enumerate((n, m) for n in names for m in metrics):
            out[n].setdefault(slice_name, {})[m] = {"mean": float(iv.value[i]), "ci_low": float(iv.low[i]),
                                                    "ci_high": float(iv.high[i])}
    return out


def paired_differences(reference: np.ndarray, others: dict[str, np.ndarray], metrics: tuple[str, ...],
                       slices: dict[str, np.ndarray], clusters: np.ndarray, *, samples: int, seed: int) -> dict:
    """``{method: {slice: {metric: {diff, ci_low, ci_high, p_value, significant}}}}``: reference minus method.

    Args:
        reference: (S, E) ranks of the reference method (the Semantic-ID model).
        others: method -> (S', E) ranks on the same events.
        metrics, slices, clusters, samples, seed: as in ``slice_metrics``.
    """
    names = list(others)
    diffs = np.stack([event_scores(reference, m).mean(0) - event_scores(others[n], m).mean(0)
                      for n in names for m in metrics])  # (methods x metrics, E)
    out: dict[str, dict] = {n: {} for n in names}
    for slice_name, mask in slices.items():
        iv = bootstrap(diffs[:, mask], clusters[mask], samples=samples, seed=seed)
        for i, (n, m) in enumerate((n, m) for n in names for m in metrics):
            out[n].setdefault(slice_name, {})[m] = {
                "diff": float(iv.value[i]), "ci_low": float(iv.low[i]), "ci_high": float(iv.high[i]),
                "p_value": float(iv.p_value[i]), "significant": bool(iv.low[i] > 0 or iv.high[i] < 0)}
    return out


def recall_curve(ranks: np.ndarray, mask: np.ndarray, max_k: int) -> list[float]:
    """Recall@K for K = 1..max_k on the events of ``mask``, averaged over seeds: (S, E) ranks -> max_k values."""
    r = ranks[:, mask]  # (S, E_slice)
    if not r.size:
        return [float("nan")] * max_k
    hits = np.stack([((r >= 0) & (r < k)).mean() for k in range(1, max_k + 1)])
    return [float(v) for v in hits]
