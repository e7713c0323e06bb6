"""Per-event metrics, slices and bootstrap intervals: how sure are the benchmark's numbers?

Every method ranks movies for the same test events. From the 0-based rank of each event's target
(``metrics.target_ranks``) come per-event scores -- Recall@K is 1 when the target is in the top K,
NDCG@K is ``1/log2(rank+2)`` there -- averaged over seeds, so a method's score on an event is its
mean over the seeds. A metric is the mean of those scores over a slice of events.

Intervals come from the bootstrap (Efron & Tibshirani, 1993). Events of one user are not
independent (the same history, the same taste), so whole users are resampled with all their events
(a cluster bootstrap; with rolling-origin folds a user of each fold is one cluster; ``unit="event"``
resamples events). The test sets have few users of very unequal size, where plain percentile
intervals under-cover, so the intervals are BCa (bias-corrected and accelerated: the acceleration
from a leave-one-user-out jackknife). Users are not the only noise: each learned model is trained
once per seed, and a seed that trains a better model lifts every event at once, which resampling
users cannot see. So the interval is widened by the spread between seeds: with per-seed means of
standard deviation s over S seeds, the half-width ``t(S - 1) * s / sqrt(S)`` (Student's t quantile with
S - 1 degrees of freedom, the exact interval when the seeds are the only noise and their effects are
normal) is added in quadrature to each side of the users' BCa interval, which keeps its asymmetry.
A mean of scores in [0, 1] keeps its interval in [0, 1].

A paired difference resamples the *same* users for both methods, so what they share cancels; its
seed spread is that of the per-seed differences. Its two-sided p-value inverts the same BCa
interval (the p-value is below 1 - level exactly when the interval excludes 0), so the flag and the
p-value never disagree. ``holm`` adjusts a family of p-values (Holm, 1979).

May import: numpy, scipy.special (the normal distribution).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import ndtr, ndtri, stdtrit

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
    """Point estimates with their BCa bootstrap intervals (and p-values for "the mean is 0"), each (V,)."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_value: np.ndarray


def _cluster_sums(values: np.ndarray, clusters: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(sums (V, C), counts (C,))`` of (V, E) values per cluster."""
    e = values.shape[1]
    _, inverse = np.unique(np.arange(e) if clusters is None else np.asarray(clusters), return_inverse=True)
    c = int(inverse.max()) + 1
    sums = np.stack([np.bincount(inverse, weights=row, minlength=c) for row in values])  # (V, C)
    return sums, np.bincount(inverse, minlength=c).astype(np.float64)


def _acceleration(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(V,) BCa's acceleration from the leave-one-cluster-out means (0 with a single cluster)."""
    if len(counts) < 2:
        return np.zeros(len(sums))
    loo = (sums.sum(1, keepdims=True) - sums) / np.maximum(counts.sum() - counts, 1.0)  # (V, C)
    d = loo.mean(1, keepdims=True) - loo
    den = 6.0 * np.power((d ** 2).sum(1), 1.5)
    return np.divide((d ** 3).sum(1), den, out=np.zeros(len(sums)), where=den > 0)


def _seed_scale(seed_means: np.ndarray | None, v: int) -> tuple[np.ndarray, np.ndarray]:
    """``(s / sqrt(S), S - 1)`` per row from (V, S) per-seed means (NaN-padded); 0 and 0 for fewer than two seeds."""
    scale, dof = np.zeros(v), np.zeros(v, dtype=np.int64)
    if seed_means is None:
        return scale, dof
    for i, row in enumerate(np.atleast_2d(np.asarray(seed_means, dtype=np.float64))):
        row = row[np.isfinite(row)]
        if len(row) >= 2:
            scale[i], dof[i] = row.std(ddof=1) / np.sqrt(len(row)), len(row) - 1
    return scale, dof


def bootstrap(values: np.ndarray, clusters: np.ndarray | None = None, *, seed_means: np.ndarray | None = None,
              samples: int = 10_000, seed: int = 0, level: float = 0.95, chunk: int = 256,
              bounds: tuple[float, float] = (-np.inf, np.inf)) -> Intervals:
    """Means of ``values`` with BCa intervals from a cluster bootstrap, widened by the spread between seeds.

    All V rows are resampled with the *same* cluster draws, so differences between rows are paired and one
    call costs one set of draws whatever V is.

    Args:
        values: (V, E) or (E,) per-event values (seed-averaged scores, or paired differences of two methods').
        clusters: (E,) the unit each event belongs to (e.g. its user); None: every event its own unit.
        seed_means: (V, S) or (S,) each row's mean over the events for each seed (NaN pads rows with fewer
            seeds); None or one seed: no seed noise.
        samples: bootstrap resamples.
        seed: the resampling seed.
        level: the intervals' coverage.
        chunk: resamples drawn at once (memory: ``chunk * C`` floats).
        bounds: the range of the mean (``(0, 1)`` for a mean of scores): intervals are clipped to it.

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
        sums, counts = _cluster_sums(values, clusters)  # (V, C), (C,)
        c = len(counts)
        rng = np.random.default_rng(seed)
        boot = []
        for start in range(0, samples, chunk):
            b = min(chunk, samples - start)
            draws = rng.integers(0, c, size=(b, c)) + np.arange(b)[:, None] * c  # (b, C): C units drawn per resample
            w = np.bincount(draws.ravel(), minlength=b * c).reshape(b, c).astype(np.float64)  # (b, C) multiplicities
            boot.append((w @ sums.T) / np.maximum(w @ counts, 1.0)[:, None])  # (b, V)
        if seed_means is not None:
            seed_means = np.asarray(seed_means, dtype=np.float64).reshape(v, -1)
        boot = np.sort(np.concatenate(boot), axis=0)  # (samples, V), each column sorted
        mean = values.mean(1)
        low, high, p = _intervals(boot, mean, _acceleration(sums, counts), *_seed_scale(seed_means, v), level)
        out = Intervals(mean, np.clip(low, *bounds), np.clip(high, *bounds), p)
    return Intervals(*(float(x[0]) for x in out)) if one else out


def _bca_ends(boot: np.ndarray, mean: np.ndarray, accel: np.ndarray, alpha: np.ndarray | float
              ) -> tuple[np.ndarray, np.ndarray]:
    """The users' BCa interval of level ``1 - 2 alpha`` per row, from (B, V) column-sorted bootstrap means."""
    n = len(boot)
    clip = (1.0 / (n + 1), n / (n + 1.0))
    below = (boot < mean).sum(0) + 0.5 * (boot == mean).sum(0)
    z0 = ndtri(np.clip(below / n, *clip))
    ends = []
    for z in (ndtri(alpha), ndtri(1.0 - np.asarray(alpha))):
        q = ndtr(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))  # (V,) the adjusted percentile
        pos = np.clip(q * (n - 1), 0, n - 1)  # linear interpolation between order statistics
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        cols = np.arange(boot.shape[1])
        ends.append(boot[lo, cols] + (pos - lo) * (boot[hi, cols] - boot[lo, cols]))
    return ends[0], ends[1]


def _widened(boot, mean, accel, scale, dof, alpha) -> tuple[np.ndarray, np.ndarray]:
    """The users' BCa interval with the seeds' t half-width added in quadrature to each side."""
    low, high = _bca_ends(boot, mean, accel, alpha)
    half = np.where(dof > 0, stdtrit(np.maximum(dof, 1), 1.0 - np.asarray(alpha)) * scale, 0.0)
    return (mean - np.sqrt(np.maximum(mean - low, 0.0) ** 2 + half ** 2),
            mean + np.sqrt(np.maximum(high - mean, 0.0) ** 2 + half ** 2))


def _intervals(boot: np.ndarray, mean: np.ndarray, accel: np.ndarray, scale: np.ndarray, dof: np.ndarray,
               level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(low, high, p_value)`` per row. The p-value inverts the same interval: the smallest ``1 - level`` whose
    interval excludes 0 (found by bisection; 1 at a mean of exactly 0, at least 1 / (B + 1))."""
    low, high = _widened(boot, mean, accel, scale, dof, (1.0 - level) / 2)
    n = len(boot)
    lo_a, hi_a = np.full(len(mean), 1.0 / (n + 1)), np.ones(len(mean))  # p lies in [lo_a, hi_a]
    for _ in range(40):
        mid = (lo_a + hi_a) / 2
        a, b = _widened(boot, mean, accel, scale, dof, mid / 2)
        excludes = (a > 0) | (b < 0)
        hi_a, lo_a = np.where(excludes, mid, hi_a), np.where(excludes, lo_a, mid)
    a, b = _widened(boot, mean, accel, scale, dof, lo_a / 2)
    p = np.where((a > 0) | (b < 0), lo_a, hi_a)  # excluded already at the floor: p is the floor
    return low, high, np.where(mean == 0, 1.0, p)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (same order; NaN entries ignored)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def _per_seed(scores: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
    """(width,) the mean of (S, E) per-seed scores over ``mask``'s events per seed, NaN-padded to ``width``."""
    out = np.full(width, np.nan)
    if mask.any():
        out[:len(scores)] = scores[:, mask].mean(1)
    return out


def slice_metrics(ranks: dict[str, np.ndarray], metrics: tuple[str, ...], slices: dict[str, np.ndarray],
                  clusters: np.ndarray, *, samples: int, seed: int) -> dict[str, dict]:
    """``{method: {slice: {metric: {mean, ci_low, ci_high}}}}`` for every method's (S, E) ranks.

    Args:
        ranks: method -> (S, E) 0-based target ranks per seed and event, -1 when not ranked; a
            method's per-event score is its mean over its S seeds, and the spread of its S per-seed
            means widens its interval.
        metrics: e.g. ("recall@10", "ndcg@10").
        slices: name -> (E,) bool mask of the events in the slice.
        clusters: (E,) the bootstrap unit of each event.
        samples, seed: as in ``bootstrap``.
    """
    names = list(ranks)
    rows = [(n, m) for n in names for m in metrics]
    per_seed = [event_scores(ranks[n], m) for n, m in rows]  # (S, E) each
    scores = np.stack([x.mean(0) for x in per_seed])  # (methods x metrics, E)
    width = max(len(x) for x in per_seed)
    out: dict[str, dict] = {n: {} for n in names}
    for slice_name, mask in slices.items():
        seed_means = np.stack([_per_seed(x, mask, width) for x in per_seed])  # (V, S)
        iv = bootstrap(scores[:, mask], clusters[mask], seed_means=seed_means, samples=samples, seed=seed,
                       bounds=(0.0, 1.0))
        for i, (n, m) in enumerate(rows):
            out[n].setdefault(slice_name, {})[m] = {"mean": float(iv.value[i]), "ci_low": float(iv.low[i]),
                                                    "ci_high": float(iv.high[i])}
    return out


def _seed_differences(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(S, E) per-seed differences of (S, E) and (S', E) scores: seed by seed when both have S seeds, else the
    reference's seeds minus the other's mean (a seed-free method has one run)."""
    if len(other) == len(reference):
        return reference - other
    return reference - other.mean(0, keepdims=True)


def paired_differences(reference: np.ndarray, others: dict[str, np.ndarray], metrics: tuple[str, ...],
                       slices: dict[str, np.ndarray], clusters: np.ndarray, *, samples: int, seed: int,
                       level: float = 0.95) -> dict:
    """``{method: {slice: {metric: {diff, ci_low, ci_high, p_value, p_holm, significant}}}}``: reference minus method.

    ``p_holm`` is Holm-adjusted over the family that the method's line of the report claims: every slice and
    metric of it; ``significant`` is ``p_holm < 1 - level``. The interval is the unadjusted one (it excludes 0
    exactly when the unadjusted ``p_value`` is below ``1 - level``).

    Args:
        reference: (S, E) ranks of the reference method (the Semantic-ID model).
        others: method -> (S', E) ranks on the same events.
        metrics, slices, clusters, samples, seed: as in ``slice_metrics``.
    """
    names = list(others)
    rows = [(n, m) for n in names for m in metrics]
    per_seed = [_seed_differences(event_scores(reference, m), event_scores(others[n], m)) for n, m in rows]
    diffs = np.stack([x.mean(0) for x in per_seed])  # (methods x metrics, E)
    width = max(len(x) for x in per_seed)
    out: dict[str, dict] = {n: {} for n in names}
    for slice_name, mask in slices.items():
        seed_means = np.stack([_per_seed(x, mask, width) for x in per_seed])  # (V, S)
        iv = bootstrap(diffs[:, mask], clusters[mask], seed_means=seed_means, samples=samples, seed=seed,
                       level=level, bounds=(-1.0, 1.0))
        for i, (n, m) in enumerate(rows):
            out[n].setdefault(slice_name, {})[m] = {
                "diff": float(iv.value[i]), "ci_low": float(iv.low[i]), "ci_high": float(iv.high[i]),
                "p_value": float(iv.p_value[i])}
    for n in names:  # Holm over the method's line: every slice and metric
        cells = [out[n][s][m] for s in slices for m in metrics]
        for cell, adjusted in zip(cells, holm(np.array([c["p_value"] for c in cells]))):
            cell["p_holm"] = float(adjusted)
            cell["significant"] = bool(adjusted < 1.0 - level)
    return out


def recall_curve(ranks: np.ndarray, mask: np.ndarray, max_k: int) -> list[float]:
    """Recall@K for K = 1..max_k on the events of ``mask``, averaged over seeds: (S, E) ranks -> max_k values."""
    r = ranks[:, mask]  # (S, E_slice)
    if not r.size:
        return [float("nan")] * max_k
    hits = np.stack([((r >= 0) & (r < k)).mean() for k in range(1, max_k + 1)])
    return [float(v) for v in hits]
