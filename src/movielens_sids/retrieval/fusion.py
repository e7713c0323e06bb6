"""One ranked list of warm and cold movies from a generative model with a dense head.

A movie is *cold* when it has no training interaction: its SID's last token was never a target, so the beam
search all but never finds it, and the dense head, trained on warm targets only, ranks it worse than plain
content similarity does. So the list is a mixture of two rankings, each used where it is good:

    P(m) = (1 - g) * softmax over warm candidates of (beta * (log P(SID of m) + w * dense logit of m))
    P(m) = g       * softmax over cold candidates of (tau * cos(content profile, content vector of m))

- Candidates: the beam search's ``beam_size`` movies, the dense head's best ``dense_k`` and the best ``dense_k``
  cold movies by content similarity, each with its exact log P(SID), its dense logit and its content cosine.
- ``g``, the chance that the next movie is a cold one, is a gate: a logistic regression on three facts of the
  history (is the latest movie cold, the cold share of the latest three, the cold share of the whole history),
  fitted on the validation events, plus a shift.
- The content profile is the mean content vector of the user's latest ``window`` movies (as ``content_knn``).
- ``w``, ``beta``, ``tau``, the shift and the window are chosen on the validation events: the best Recall@10 among the
  mixes whose Recall@10 on the cold targets reaches a floor (by default, what content similarity alone scores
  there), so that new movies are recommended at least as well as the content baseline does. A shift of None
  ranks no cold movie (the gate off), w = 0 ranks warm movies by their SIDs alone, a large w by the dense head
  alone.

Shapes: E events, M history length, N movies, C candidates per event, D content dimension, F = 3 gate features.

May import: torch, numpy, scipy, scikit-learn; of the package, ``content`` and ``generative``.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch
from scipy.special import log_expit, log_softmax

from .content import content_profile, exclusion_mask
from .generative import GenerativeRetriever


class Candidates(NamedTuple):
    """Per event, the movies a model with a dense head ranks, with each of their scores."""

    items: np.ndarray
    """(E, C) item indices, -1 where none (a dead beam, or a pick another source already holds)."""
    gen: np.ndarray
    """(E, C) log-probability of each movie's full SID (-inf where none)."""
    dense: np.ndarray
    """(E, C) the dense head's logit of each movie (-inf where none)."""
    content: np.ndarray
    """(E, C) cosine of each movie's content vector with the event's content profile (-inf where none)."""


class Mix(NamedTuple):
    """How the candidates are ranked (see the module's docstring)."""

    weight: float
    """w: weight of the dense logit beside log P(SID) among warm movies."""
    cold_scale: float = 0.0
    """tau: scale of the content cosine among cold movies."""
    shift: float | None = None
    """Added to the gate's logit; None: the gate is off and no cold movie is ranked."""
    warm_scale: float = 1.0
    """beta: scale of the warm movies' score (log P(SID) + w x dense) in their softmax; with the gate on, how
    sharply the warm movies' probability falls along their list, against the cold movies'."""


def _drop_repeats(items: torch.Tensor) -> torch.Tensor:
    """(B, C) item indices with every repeat of an item in its row (one copy kept) set to -1."""
    srt, order = items.sort(1)
    repeat = torch.zeros_like(items, dtype=torch.bool)
    repeat[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    return items.masked_fill(torch.zeros_like(repeat).scatter(1, order, repeat), -1)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) indices of the best ``k`` of (B, N) scores, -1 where the score is -inf."""
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return top.indices.masked_fill(top.values == -torch.inf, -1)


@torch.no_grad()
def fused_candidates(model: GenerativeRetriever, history: np.ndarray, *, beam_size: int, dense_k: int,
                     batch_size: int, device: torch.device, seen=None, cold: np.ndarray | None = None,
                     times: np.ndarray | None = None, content: np.ndarray | None = None,
                     window: int = 1) -> Candidates:
    """For (E, M) histories: the ``beam_size`` movies of the constrained beam search, the ``dense_k`` best by dense
    score and, given ``cold`` ((N,) bool) and ``content`` ((N, D) unit-norm content vectors), the ``dense_k``
    cold movies most similar to the profile of the ``window`` latest movies; each with its three scores. What
    ``seen`` (an ``Excluded``) excludes is in none. ``times``: (E,) the events' Unix times (for an age bias)."""
    model.eval().to(device)
    not_cold = None if cold is None else torch.from_numpy(~np.asarray(cold, dtype=bool)).to(device)  # (N,)
    vectors = None if content is None else torch.from_numpy(np.asarray(content, dtype=np.float32)).to(device)
    parts = []
    for i in range(0, len(history), batch_size):
        hist = torch.from_numpy(history[i:i + batch_size]).to(device)  # (B, M)
        hidden = model.last_hidden(hist)  # (B, d)
        exclude = None if seen is None else exclusion_mask(seen, slice(i, i + batch_size), model.n_items, device)
        found = [model.recommend_from(hidden, beam_size, beam_size=beam_size, exclude=exclude).items]  # (B, W)
        time = None if times is None else torch.from_numpy(np.asarray(times[i:i + batch_size])).to(device)
        dense = model.dense_scores(hidden, model.last_context(hist, time))  # (B, N)
        cos = None if vectors is None else content_profile(vectors, hist, window) @ vectors.T  # (B, N)
        if exclude is not None:
            dense = dense.masked_fill(exclude, -torch.inf)
            cos = None if cos is None else cos.masked_fill(exclude, -torch.inf)
        found.append(_top(dense, dense_k))  # (B, X)
        if not_cold is not None and cos is not None:
            found.append(_top(cos.masked_fill(not_cold, -torch.inf), dense_k))  # (B, X)
        items = _drop_repeats(torch.cat(found, 1))  # (B, C)
        at, none = items.clamp(min=0), items < 0
        near = (torch.full(items.shape, -torch.inf, device=items.device) if cos is None
                else cos.gather(1, at).masked_fill(none, -torch.inf))  # (B, C)
        parts.append([t.cpu().numpy() for t in (
            items, model.sid_logprob(hidden, items), dense.gather(1, at).masked_fill(none, -torch.inf), near)])
    if not parts:
        return Candidates(np.empty((0, 0), np.int64), *(np.empty((0, 0), np.float32) for _ in range(3)))
    return Candidates(*(np.concatenate(p) for p in zip(*parts)))


def gate_features(history: np.ndarray, is_cold: np.ndarray) -> np.ndarray:
    """(E, M) right-aligned histories (-1 pads) and (N,) bool -> (E, 3) float: is the latest movie cold, the cold
    share of the latest three, the cold share of the whole history (0 for an empty one)."""
    valid = history >= 0
    cold = np.asarray(is_cold, dtype=bool)[np.maximum(history, 0)] & valid  # (E, M)

    def share(a: np.ndarray, v: np.ndarray) -> np.ndarray:
        return a.sum(1) / np.maximum(v.sum(1), 1)

    return np.stack([cold[:, -1], share(cold[:, -3:], valid[:, -3:]), share(cold, valid)], 1).astype(np.float64)


def fit_gate(features: np.ndarray, target_cold: np.ndarray) -> np.ndarray | None:
    """(F + 1,) the coefficients and intercept of the logistic regression of (E,) ``target_cold`` on (E, F)
    ``features`` (the gate's logit), or None when the events are all warm or all cold (nothing to learn)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(target_cold, dtype=bool)
    if y.all() or not y.any():
        return None
    fit = LogisticRegression(C=1.0).fit(features, y)
    return np.append(fit.coef_[0], fit.intercept_[0])


def gate_logit(features: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """(E,) the gate's logit of (E, F) features, given ``fit_gate``'s (F + 1,) coefficients."""
    return features @ gate[:-1] + gate[-1]


def _log_softmax_where(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (E, C) ``x`` over the ``keep`` entries, -inf elsewhere (and in rows keeping none)."""
    z = np.where(keep, x, -np.inf)
    some = keep.any(1, keepdims=True)
    return np.where(keep & some, log_softmax(np.where(some, z, 0.0), axis=1), -np.inf)


class _Scorer:
    """The candidates' log-probabilities under each mix, each part computed once (a choice tries hundreds)."""

    def __init__(self, c: Candidates, is_cold: np.ndarray, logit: np.ndarray | None) -> None:
        valid = c.items >= 0
        self.c, self.logit = c, np.zeros(len(c.items)) if logit is None else logit  # (E,)
        self.cold = np.asarray(is_cold, dtype=bool)[np.maximum(c.items, 0)] & valid  # (E, C)
        self.warm = valid & ~self.cold
        self.warm_part, self.cold_part = {}, {}

    def score(self, mix: Mix) -> np.ndarray:
        """(E, C) log P of each candidate under ``mix`` (-inf where none)."""
        key = (mix.weight, mix.warm_scale if mix.shift is not None else 1.0)
        if key not in self.warm_part:
            self.warm_part[key] = _log_softmax_where(
                key[1] * (self.c.gen + key[0] * np.where(self.warm, self.c.dense, 0.0)), self.warm)
        score = self.warm_part[key]
        if mix.shift is not None:
            if mix.cold_scale not in self.cold_part:
                self.cold_part[mix.cold_scale] = _log_softmax_where(mix.cold_scale * self.c.content, self.cold)
            z = self.logit + mix.shift  # (E,)
            with np.errstate(invalid="ignore"):  # inf - inf where a row has no candidate of a kind
                score = np.where(self.cold, self.cold_part[mix.cold_scale] + log_expit(z)[:, None],
                                 score + log_expit(-z)[:, None])
        return np.where(np.isnan(score), -np.inf, score)

    def ranking(self, mix: Mix, k: int) -> np.ndarray:
        """(E, k) items ranked by ``score`` (ties: the earlier candidate first), -1 where fewer than ``k`` can be
        ranked."""
        score = self.score(mix)
        order = np.argsort(-score, axis=1, kind="stable")[:, :k]  # (E, min(k, C))
        top = np.where(np.isfinite(np.take_along_axis(score, order, 1)), np.take_along_axis(self.c.items, order, 1),
                       -1)
        return np.pad(top, ((0, 0), (0, max(0, k - top.shape[1]))), constant_values=-1)

    def hits(self, mix: Mix, column: np.ndarray, k: int) -> np.ndarray:
        """(E,) bool: whether each event's target, at (E,) ``column`` of the candidates (-1: not among them), is in
        ``ranking(mix, k)``; counted, not ranked: fewer than ``k`` candidates come before it."""
        score = self.score(mix)
        mine = np.take_along_axis(score, np.maximum(column, 0)[:, None], 1)  # (E, 1)
        before = (score > mine) | ((score == mine) & (np.arange(score.shape[1]) < column[:, None]))  # (E, C)
        return (column >= 0) & np.isfinite(mine[:, 0]) & (before.sum(1) < k)


def fused_ranking(c: Candidates, is_cold: np.ndarray, mix: Mix, k: int, logit: np.ndarray | None = None
                  ) -> np.ndarray:
    """(E, k) items: the candidates ranked by their mixture probability under ``mix``, -1 where there are fewer
    than ``k`` to rank. ``is_cold``: (N,) bool; ``logit``: (E,) the gate's logit (needed when the gate is on)."""
    return _Scorer(c, is_cold, logit).ranking(mix, k)


def mixes(weights: list[float], cold_scales: list[float], shifts: list[float], warm_scales: list[float],
          gate_on: bool) -> list[Mix]:
    """Every mix to try, in the order of preference on ties: the smaller w, the gate off, then the smaller shift,
    tau and beta."""
    off = [Mix(float(w)) for w in sorted(weights)]
    if not gate_on:
        return off
    on = [Mix(float(w), float(t), float(s), float(b))
          for w, s, t, b in itertools.product(weights, shifts, cold_scales, warm_scales)]
    return sorted(off + on, key=lambda m: (m.weight, m.shift is not None, m.shift or 0.0, m.cold_scale,
                                           m.warm_scale))


def best_mix(c: Candidates, target: np.ndarray, is_cold: np.ndarray, options: list[Mix], logit: np.ndarray | None,
             cold_floor: float = 0.0) -> tuple[Mix, dict[Mix, tuple[float, float]]]:
    """The first of ``options`` with the best Recall@10 of (E,) ``target`` over the candidates among those whose
    Recall@10 on the cold targets reaches ``cold_floor`` (all of them when none does), and every option's
    (Recall@10, cold Recall@10)."""
    cold = np.asarray(is_cold, dtype=bool)[target]  # (E,)
    curve, scorer = {}, _Scorer(c, is_cold, logit)
    found = c.items == np.asarray(target)[:, None]  # (E, C): at most one per row (a row's items are distinct)
    column = np.where(found.any(1), found.argmax(1), -1)  # (E,)
    for m in options:
        hit = scorer.hits(m, column, 10)  # (E,)
        curve[m] = (float(hit.mean()), float(hit[cold].mean()) if cold.any() else 0.0)
    allowed = [m for m in options if curve[m][1] >= cold_floor] or options
    best = max(curve[m][0] for m in allowed)
    return next(m for m in allowed if curve[m][0] == best), curve


def cold_window(content: np.ndarray, history: np.ndarray, target: np.ndarray, is_cold: np.ndarray,
                windows: list[int], seen=None, batch_size: int = 1024
                ) -> tuple[int, dict[int, float], dict[int, float]]:
    """The profile window (of ``windows``, ties: the smaller) under which content similarity ranks the cold
    targets of (E, M) ``history`` best among the cold movies, with each window's Recall@10 over the events whose
    ``target`` is cold: ranking the cold movies, and ranking every movie (content similarity alone). ``seen``
    (an ``Excluded``) is left out."""
    rows = np.flatnonzero(np.asarray(is_cold, dtype=bool)[target])
    if not len(rows):
        return min(windows), {}, {}
    vectors = torch.from_numpy(np.asarray(content, dtype=np.float32))  # (N, D)
    warm = torch.from_numpy(~np.asarray(is_cold, dtype=bool))  # (N,)
    cold_hits, all_hits = dict.fromkeys(sorted(windows), 0), dict.fromkeys(sorted(windows), 0)
    for i in range(0, len(rows), batch_size):
        r = rows[i:i + batch_size]
        hist, want = torch.from_numpy(history[r]), torch.from_numpy(target[r])[:, None]
        banned = None if seen is None else exclusion_mask(seen, r, len(vectors))  # (b, N)
        for w in cold_hits:
            cos = content_profile(vectors, hist, w) @ vectors.T  # (b, N)
            if banned is not None:
                cos = cos.masked_fill(banned, -torch.inf)
            all_hits[w] += int((_top(cos, 10) == want).any(1).sum())
            cold_hits[w] += int((_top(cos.masked_fill(warm, -torch.inf), 10) == want).any(1).sum())
    among_cold = {w: h / len(rows) for w, h in cold_hits.items()}
    return (max(among_cold, key=lambda w: (among_cold[w], -w)), among_cold,
            {w: h / len(rows) for w, h in all_hits.items()})
