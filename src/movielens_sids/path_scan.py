"""The exhaustive end of the semantic dedup (``dedup``): in a code space small enough to scan (K^L paths),
each mover left without a free path among its candidates takes the first free path of the whole space, in
the order ``PathSpace.order`` gives (by shared prefix with its own path, then by distance).

May import: numpy, sid.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .sid import path_codes, path_ids

SCAN_BATCH = 128
"""Movers whose exhaustive scans are computed at once, ahead of their turn (not a setting: same result)."""
WHOLE_RANGE = 1 << 13
"""Ranges of at most this many paths are read whole by the exhaustive scan (not a setting: same result)."""


class PathSpace:
    """Every code path at once, for the exhaustive scan (only for small K^L, <= ``dedup.EXHAUSTIVE_MAX_PATHS``).

    A path's squared distance to a latent z is ``||sum_l c_l||^2 + sum_l b_l - 2 sum_l z . c_l + ||z||^2``:
    the first two terms are the same for every movie and computed once here, from the codebooks' Gram
    matrices, so a movie costs L x K products and a few passes over the paths, never a (K^L, H) matrix; a large
    range of paths is read only in the blocks whose lower bound can beat the nearest free path found.
    """

    def __init__(self, codebooks: np.ndarray, bias: np.ndarray | None) -> None:
        levels, k, _ = codebooks.shape
        self.codebooks = codebooks  # (L, K, H) float64
        self.paths = np.arange(k ** levels, dtype=np.int64)  # (P,)
        self.codes = path_codes(self.paths, k, levels)  # (P, L)
        b = np.zeros((levels, k)) if bias is None else np.asarray(bias, dtype=np.float64)  # (L, K)
        self.norms = np.square(codebooks).sum(2) + b  # (L, K) ||c||^2 + its bias
        self.gram2 = {(a, c): 2.0 * (codebooks[a] @ codebooks[c].T) for a in range(levels)
                      for c in range(a + 1, levels)}  # (K, K) twice the products of two levels' codes
        sq = np.zeros(len(self.paths))  # (P,) ||sum of the path's codes||^2 (+ their biases)
        for a in range(levels):
            sq += np.square(codebooks[a]).sum(1)[self.codes[:, a]]
            for c in range(a + 1, levels):
                sq += self.gram2[a, c][self.codes[:, a], self.codes[:, c]]
            if bias is not None:
                sq += b[a][self.codes[:, a]]
        self.sq = sq
        # the size of a distance's terms, for a margin far above the rounding error of the bounds
        self.scale = float(np.abs(self.norms).max(1).sum() + sum(np.abs(g).max() for g in self.gram2.values()))

    def order(self, z: np.ndarray, codes: np.ndarray) -> Iterator[int]:
        """Every path for one movie (latent z (H,), greedy codes (L,)), by shared prefix with its greedy path
        (longest first), then by distance to the latent, then by path id; lazily, one shared-prefix length
        at a time (the paths that share s codes are one id range, less the range that shares s + 1)."""
        levels, k, _ = self.codebooks.shape
        dots = self.codebooks @ np.asarray(z, dtype=np.float64)  # (L, K)
        inner = (-1, -1)  # the id range of the paths sharing one code more
        for shared in range(levels, -1, -1):
            span = k ** (levels - shared)
            lo = int(path_ids(codes[None, :shared], k)[0]) * span if shared else 0  # (codes[:s], anything)
            ids = self.paths[lo:lo + span]
            ids = ids[(ids < inner[0]) | (ids >= inner[1])]
            dist = self.sq[ids] - 2.0 * dots[np.arange(levels)[None, :], self.codes[ids]].sum(1)  # less ||z||^2
            yield from ids[np.lexsort((ids, dist))].tolist()
            inner = (lo, lo + span)

    def first_free(self, z: np.ndarray, codes: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """For each of B movies (latents z (B, H), greedy codes (B, L)), the first path of ``order`` that
        ``taken`` ((P,) bool) does not hold, or -1: the same rule, without ordering every path. Within one
        shared-prefix length the nearest free path (the lowest id among equals) is taken. (B,) int64."""
        levels, k, _ = self.codebooks.shape
        dots = np.array([self.codebooks @ row for row in np.asarray(z, dtype=np.float64)]).reshape(len(z), levels, k)
        greedy = path_ids(codes, k)  # (B,)
        got = np.where(taken[greedy], -1, greedy)
        todo = np.flatnonzero(got < 0)
        for shared in range(levels - 1, -1, -1):  # the paths that keep codes[:shared] and change codes[shared]
            if len(todo) == 0:
                break
            got[todo] = self._nearest_free(dots[todo], codes[todo, :shared], codes[todo, shared], taken)
            todo = todo[got[todo] < 0]
        return got

    def _nearest_free(self, dots: np.ndarray, prefix: np.ndarray, skip: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """For each of B movies, the nearest free path (the lowest id among equals) that starts with its ``prefix``
        ((B, s) codes) and not with ``prefix + (skip,)``, or -1. (B,). The range comes in blocks, one per code at
        level s (a small range: all read) or per pair of codes at levels s, s + 1 (a large one: `_pair_bounds`).
        Skipping the blocks with no free path, a movie reads a few blocks of low bound, then every block whose
        bound is within the distance found plus a margin (far above the rounding error of the bounds)."""
        b, levels, k = dots.shape
        s = prefix.shape[1]
        depth = 2 if levels - s > 2 and k ** (levels - s) > WHOLE_RANGE else 1
        span = k ** (levels - s - depth)  # paths per block
        bound = self._pair_bounds(dots, prefix) if depth == 2 else np.full((b, k, 1), -np.inf)  # (B, K, K or 1)
        bound[np.arange(b), skip] = np.inf  # the range searched before
        bound = bound.reshape(b, -1)  # (B, K^depth)
        start = path_ids(prefix, k) * k ** depth  # (B,) the number of each range's first block
        bound[taken.reshape(-1, span).all(1)[start[:, None] + np.arange(k ** depth)]] = np.inf  # no free path there
        margin = 1e-9 * (self.scale + 2.0 * np.abs(dots).max(2).sum(1))  # (B,)
        best, best_id = np.full(b, np.inf), np.full(b, -1)
        group = bound.reshape(b, k, -1)  # (B, K, K^(depth - 1)): the blocks by their code at level s
        top = np.argpartition(group.min(2), min(8, k) - 1, axis=1)[:, :min(8, k)].ravel()  # 8 groups of lowest bound
        row = np.repeat(np.arange(b), min(8, k))
        pick = (row, top * group.shape[2] + np.argmin(group[row, top], axis=1))  # in each, its block of lowest bound
        for size in (32, 0):  # then the 32 of lowest bound that may hold a nearer path (or as near, lower id), then all
            pick = (pick[0][bound[pick] < np.inf], pick[1][bound[pick] < np.inf])
            self._read_blocks(dots, prefix, *pick, depth, taken, best, best_id)
            bound[pick] = np.inf  # read
            near = np.where(bound <= (best + margin)[:, None], bound, np.inf)  # (B, K^depth)
            pick = (np.repeat(np.arange(b), size), np.argpartition(near, size - 1, axis=1)[:, :size].ravel()) \
                if 0 < size < near.shape[1] else np.nonzero(near < np.inf)
        self._read_blocks(dots, prefix, *pick, depth, taken, best, best_id)
        return np.where(np.isfinite(best), best_id, -1)

    def _pair_bounds(self, dots: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        """A lower bound of the distance (less ||z||^2) over the paths of each block ``prefix + (c, c')``, for
        B movies: exact for the fixed levels; each later level's term at its minimum given c (its product with c'
        at its own minimum) or given c' (likewise), whichever is larger; the products between two later levels
        at their minimum. (B, K, K)."""
        b, levels, k = dots.shape
        s, rows, g = prefix.shape[1], np.arange(b), self.gram2
        own = {t: self.norms[t] - 2.0 * dots[:, t] + sum((g[a, t][prefix[:, a]] for a in range(s)), np.zeros((b, k)))
               for t in range(s, levels)}  # (B, K) each: a free level's own terms and its products with the prefix
        base = sum((self.norms[a, prefix[:, a]] - 2.0 * dots[rows, a, prefix[:, a]] for a in range(s)), np.zeros(b))
        base += sum((g[a, c][prefix[:, a], prefix[:, c]] for a in range(s) for c in range(a + 1, s)), np.zeros(b))
        out = base[:, None, None] + own[s][:, :, None] + own[s + 1][:, None, :] + g[s, s + 1]  # (B, K, K)
        for t in range(s + 2, levels):
            by_c = (g[s, t][None] + own[t][:, None, :]).min(2)[:, :, None] + g[s + 1, t].min(1)  # (B, K, K)
            by_c2 = (g[s + 1, t][None] + own[t][:, None, :]).min(2)[:, None, :] + g[s, t].min(1)[:, None]
            out += np.maximum(by_c, by_c2) + sum(g[t, u].min() for u in range(t + 1, levels))
        return out

    def _read_blocks(self, dots: np.ndarray, prefix: np.ndarray, row: np.ndarray, block: np.ndarray, depth: int,
                     taken: np.ndarray, best: np.ndarray, best_id: np.ndarray) -> None:
        """Read R blocks (movie ``row``'s ``prefix`` + the ``depth`` codes numbered ``block``) and keep, in ``best``
        and ``best_id`` ((B,) each), each movie's nearest free path (less ||z||^2; the lower id among equals), with
        distances computed as ``order`` computes them: the same sums in the same order, as outer sums."""
        _, levels, k = dots.shape
        span = k ** (levels - prefix.shape[1] - depth)
        fixed = np.column_stack([prefix[row], *(block // k ** (depth - 1 - j) % k for j in range(depth))])  # (R, F)
        first = path_ids(fixed, k)  # (R,) each block's number
        acc = np.zeros((len(row), 1))  # the paths' summed dots: the fixed levels' (in order), then each free level's
        for level in range(levels):
            acc = (acc + dots[row, level, fixed[:, level]][:, None] if level < fixed.shape[1] else
                   (acc[:, :, None] + dots[row, level][:, None, :]).reshape(len(row), acc.shape[1] * k))  # (R, span')
        dist = np.where(taken.reshape(-1, span)[first], np.inf, self.sq.reshape(-1, span)[first] - 2.0 * acc)
        at = np.argmin(dist, axis=1)  # (R,) the first of equal distances: the lowest id
        d, p = dist[np.arange(len(row)), at], first * span + at
        o = np.lexsort((p, d, row))
        o = o[np.r_[True, row[o][1:] != row[o][:-1]]] if len(o) else o  # each movie's nearest, lowest id
        win = o[(d[o] < best[row[o]]) | ((d[o] == best[row[o]]) & (p[o] < best_id[row[o]]))]
        best[row[win]], best_id[row[win]] = d[win], p[win]


def scan_in_order(space: PathSpace, z: np.ndarray, codes: np.ndarray, options: np.ndarray,
                   taken: np.ndarray) -> np.ndarray:
    """Movers in turn: each takes its first option ((M, T) path ids) that is not held, else the first free path of
    its ``space.order`` (z (M, H), codes (M, L)), -1 where none is left; taken (P,) bool is updated. (M,) int64.

    The scans run ``SCAN_BATCH`` movers at once against the paths held when the batch starts: as held paths only
    grow, a scan's path is still the first free one of the order at the mover's turn unless a mover before it in
    the batch took it; only then (or if an option was free at the start) does the mover scan again.
    """
    got = np.full(len(z), -1, dtype=np.int64)
    for start in range(0, len(z), SCAN_BATCH):
        part = np.arange(start, min(start + SCAN_BATCH, len(z)))
        scan = part[taken[options[part]].all(1)]  # no option left: these movers scan for sure
        ahead = dict(zip(scan.tolist(), space.first_free(z[scan], codes[scan], taken).tolist()))
        for i in part.tolist():
            free = options[i][~taken[options[i]]]
            p = int(free[0]) if len(free) else ahead.get(i)
            if p is None or (not len(free) and p >= 0 and taken[p]):  # not scanned ahead, or its path was taken since
                p = int(space.first_free(z[i:i + 1], codes[i:i + 1], taken)[0])
            got[i] = p
            if p >= 0:
                taken[p] = True
    return got
