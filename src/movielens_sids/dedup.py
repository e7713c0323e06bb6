"""The unique-ID algorithm: codes (N, L) -> unique Semantic IDs, by one of two strategies (pure numpy/torch).

- ``suffix`` (TIGER, Rajput et al. 2023): an extra token numbers the movies sharing a code path, in
  ``movie_id`` order; every SID gets it.
- ``semantic``: in each group of movies sharing a path, the movie closest to the path's quantized
  point keeps it (ties: smallest ``movie_id``); the others, served in ``movie_id`` order, move to
  their nearest free path: first another last-level code, then paths that change an earlier level
  (a small beam over the residual distances), then, when K^L is small, an exhaustive scan. Only a
  movie with no free path falls back to a collision token (and then every SID gets one).

No I/O, no device choice: ``stages.assign`` computes the codes and latents and writes the file.

May import: numpy, sid; torch inside the functions (so that importing the stages stays cheap).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .path_scan import PathSpace, scan_in_order
from .sid import path_codes, path_ids

EXHAUSTIVE_MAX_PATHS = 1 << 18
"""Below this many code paths (K^L) the free-path search ends with an exhaustive scan."""
LAST_LEVEL_CANDIDATES = 64
"""How many other last-level codes the semantic search tries before changing an earlier level."""
CHUNK = 4096
"""Rows per float64 distance block (fits in cache; not a setting: it never changes the result)."""
MOVER_CHUNK = 1024
"""Movers per block of the candidate search: its (B, W, H) temporaries stay near cache size (not a setting)."""


def _sq_dists(r: np.ndarray, cb: np.ndarray, cb_sq: np.ndarray) -> np.ndarray:
    """(..., H) residuals x (K, H) codes -> (..., K) squared distances, float64: ``(||r||^2 + ||c||^2) - 2 r.c``.
    The sum and the products run in torch (their rounding is part of the ranking), the rest in numpy."""
    import torch

    rr = torch.from_numpy(r * r).sum(-1, keepdim=True).numpy()  # (..., 1)
    rc = (torch.from_numpy(r) @ torch.from_numpy(cb).T).numpy()  # (..., K)
    out = rr + cb_sq
    return np.subtract(out, np.multiply(rc, 2.0, out=rc), out=out)


def path_residuals(z: np.ndarray, codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Squared distance from each latent to its path's quantized point, float64. z (M, H), codes (M, L) -> (M,)."""
    levels = codebooks.shape[0]
    out = np.empty(len(codes), dtype=np.float64)
    for s in range(0, len(codes), CHUNK):  # blocks: no (M, L, H) gather of the whole set
        q = codebooks[np.arange(levels)[None, :], codes[s:s + CHUNK]].sum(1)  # (B, H)
        out[s:s + len(q)] = np.square(np.asarray(z[s:s + CHUNK], dtype=np.float64) - q).sum(1)
    return out


def _smallest(d: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the n smallest values of each row, ascending; equal values by index. (M, X) -> (M, n)."""
    n = min(n, d.shape[1])
    if 4 * n >= d.shape[1]:  # most of the row: one stable sort
        return np.argsort(d, axis=1, kind="stable")[:, :n]
    idx = np.sort(np.argpartition(d, n - 1, axis=1)[:, :n], axis=1)  # (M, n) the n smallest, by index
    kth = np.take_along_axis(d, idx, 1).max(1)  # the n-th smallest value of each row
    tied = np.flatnonzero((d <= kth[:, None]).sum(1) > n)  # equal values across the cut: the lower index wins
    idx[tied] = np.sort(np.argsort(d[tied], axis=1, kind="stable")[:, :n], axis=1)
    return np.take_along_axis(idx, np.argsort(np.take_along_axis(d, idx, 1), axis=1, kind="stable"), 1)


def candidate_paths(z: np.ndarray, codebooks: np.ndarray, codes: np.ndarray, beam_width: int, *,
                    part: Literal["all", "last", "deeper"] = "all", bias: np.ndarray | None = None,
                    full: np.ndarray | None = None) -> np.ndarray:
    """Alternative code paths for each movie, nearest first within each shared-prefix length.

    Order: first the paths that keep the first L - 1 codes (the ``LAST_LEVEL_CANDIDATES`` nearest
    other last-level codes, ranked by the squared distance of the final residual), then those that keep L - 2 codes
    (another code at level L - 1 among the ``beam_width`` nearest, then a beam search over the
    remaining levels), and so on down to level 1. Ties in distance go to the lower code index.

    Args:
        z: (M, H) latents. codebooks: (L, K, H). codes: (M, L) the greedy codes.
        part: ``last`` gives only the paths that keep L - 1 codes, ``deeper`` only the others
            (``all`` = ``last`` then ``deeper``), so callers can compute the costly part on demand.
        full: sorted ids of the (L - 1)-code prefixes whose every path is held, optional. A movie whose beams
            that keep L - 2 codes all end under such prefixes gets held paths for that group instead of ranked
            ones (the same list for callers that skip held paths).

    Returns:
        (M, T) int64 path ids (``sid.path_ids`` numbering), T = min(K - 1, 64) + (L - 1) * min(beam_width, K - 1).
    """
    import torch

    z = np.ascontiguousarray(z, dtype=np.float64)  # (M, H)
    cbs = np.ascontiguousarray(codebooks, dtype=np.float64)  # (L, K, H)
    cbt = torch.from_numpy(cbs)
    cb_sq = (cbt * cbt).sum(-1).numpy()  # (L, K); with the codes' biases: ranked as the tokenizer ranks codes
    if bias is not None:
        cb_sq = cb_sq + np.asarray(bias, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.int64)
    m, levels, k = len(z), cbs.shape[0], cbs.shape[1]
    w = max(1, min(beam_width, k - 1))
    res, prefixes = [z], [np.zeros(m, dtype=np.int64)]  # residual entering each level, path id of codes[:, :d]
    for level in range(levels - 1):
        res.append(res[-1] - cbs[level][codes[:, level]])  # (M, H)
        prefixes.append(prefixes[-1] * k + codes[:, level])
    groups = []
    depths = {"all": range(levels - 1, -1, -1), "last": range(levels - 1, levels - 2, -1),
              "deeper": range(levels - 2, -1, -1)}[part]
    for d in depths:  # d = the first level that differs from the greedy path
        dist = _sq_dists(res[d], cbs[d], cb_sq[d])  # (M, K)
        dist[np.arange(m), codes[:, d]] = np.inf
        order = _smallest(dist, min(k - 1, LAST_LEVEL_CANDIDATES) if d == levels - 1 else w)  # (M, W)
        paths = prefixes[d][:, None] * k + order  # partial path ids, (M, W)
        live, held = slice(None), None
        if d == levels - 2 and full is not None:  # every beam under a full prefix: held paths only, not ranked
            live, held = np.flatnonzero(~member(paths, full).all(1)), paths[:, :1] * k + np.arange(w)  # (M',), (M, W)
        if d < levels - 1:
            r = cbs[d][order[live]]  # (M', W, H), then the residual after it
            np.subtract(res[d][live][:, None, :], r, out=r)
            paths = paths[live]
        for e in range(d + 1, levels):
            paths, r = _beam_step(paths, r, cbs[e], cb_sq[e], w, last=e == levels - 1)
        if held is not None:
            held[live] = paths
            paths = held
        groups.append(paths)
    return np.concatenate(groups, axis=1) if groups else np.zeros((m, 0), dtype=np.int64)


def _beam_step(paths: np.ndarray, r: np.ndarray, cb: np.ndarray, cb_sq: np.ndarray, w: int, *,
               last: bool) -> tuple[np.ndarray, np.ndarray]:
    """Extend (M, W) partial path ids, with their (M, W, H) residuals, by one code: the w nearest (beam, code)
    pairs, (M, W') ids and their residuals (not computed for the ``last`` level)."""
    k = len(cb)
    idx = _smallest(_sq_dists(r, cb, cb_sq).reshape(len(paths), r.shape[1] * k), w)  # (M, W') over (beam, code)
    beam, code = idx // k, idx % k
    paths = np.take_along_axis(paths, beam, 1) * k + code
    if not last:
        r = r[np.arange(len(r))[:, None], beam]  # (M, W', H)
        r -= cb[code]
    return paths, r


@dataclass
class Assignment:
    """The result of `make_unique` for the movies it was given (in the given order)."""

    tokens: np.ndarray
    """(N, L) or (N, L + 1) int64: the SIDs' tokens."""
    moved: np.ndarray
    """(N,) bool: moved away from its greedy path (semantic strategy)."""
    suffixed: np.ndarray
    """(N,) bool: needed a non-zero collision token."""
    shared_prefix: np.ndarray
    """(N,) int: how many leading codes the final path shares with the greedy one (L if not moved)."""
    n_collided: int
    """Movies whose greedy path was shared with another movie (or with a reserved SID)."""


def make_unique(
    codes: np.ndarray,
    movie_ids: np.ndarray,
    *,
    strategy: str,
    codebook_size: int,
    latents: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    codebooks: np.ndarray | None = None,
    beam_width: int = 8,
    reserved: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> Assignment:
    """Turn greedy codes into unique SIDs (pure; deterministic for the same inputs in any order).

    Args:
        codes: (N, L) greedy codes.
        movie_ids: (N,) int64, distinct.
        strategy: ``semantic`` or ``suffix``.
        codebook_size: K.
        latents, codebooks: the (N, H) float64 latents, or a function giving the rows it is passed
            (only the movies that share a path are asked for), and the (L, K, H) codebooks
            (``semantic`` only).
        beam_width: beam of the semantic search.
        reserved: (R, L) or (R, L + 1) tokens of SIDs that must not be issued again (incremental
            runs: kept and retired SIDs).
        bias: (L, K) the codes' biases (``tok.code_bias``), so alternatives are ranked as the tokenizer
            ranks codes; None for zeros.

    Returns:
        An `Assignment`; tokens have L + 1 columns when a collision token is used (always for
        ``suffix``; for ``semantic`` only if some movie found no free path or ``reserved`` has them).
    """
    codes = np.asarray(codes, dtype=np.int64)
    movie_ids = np.asarray(movie_ids, dtype=np.int64)
    taken = _Reserved.of(reserved, codes.shape[1], codebook_size)
    paths = path_ids(codes, codebook_size)  # (N,)
    groups = _PathGroups.of(paths, movie_ids)
    on_reserved = member(paths, taken.distinct)
    collided = (groups.size > 1) | on_reserved
    if strategy == "suffix":
        return _suffix_assignment(codes, paths, groups.rank(groups.order), taken, collided)
    if strategy != "semantic":
        raise ValueError(f"unknown strategy {strategy!r}")
    if not collided.any():
        return _semantic_assignment(codes, movie_ids, paths, groups.rank(groups.order), on_reserved, taken,
                                    collided, _MoverSearch.none(), codebook_size)
    if latents is None or codebooks is None:
        raise ValueError("the semantic strategy needs latents and codebooks")
    need = np.flatnonzero(collided)  # every movie whose latent is read below, fetched once
    z_need = np.asarray(latents[need] if isinstance(latents, np.ndarray) else latents(need), dtype=np.float64)
    search = _MoverSearch(need, z_need, np.asarray(codebooks, dtype=np.float64), beam_width, bias)
    # Within a group the keeper is the movie closest to the path's point (ties: smallest movie_id).
    resid = np.zeros(len(paths), dtype=np.float64)
    resid[need] = path_residuals(z_need, search.codebooks, codes[need])
    rank = groups.rank(np.lexsort((movie_ids, resid, paths)))
    return _semantic_assignment(codes, movie_ids, paths, rank, on_reserved, taken, collided, search, codebook_size)


@dataclass
class _Reserved:
    """The SIDs that must not be issued again, by code path."""

    paths: np.ndarray
    """(R,) their path ids."""
    distinct: np.ndarray
    """The distinct path ids, sorted (for `member`)."""
    top: dict[int, int]
    """The highest collision token already issued on each reserved path (-1 where no token)."""
    with_token: bool
    """Whether the reserved SIDs carry a collision token."""

    @classmethod
    def of(cls, reserved: np.ndarray | None, levels: int, k: int) -> _Reserved:
        reserved = np.zeros((0, levels), dtype=np.int64) if reserved is None else np.asarray(reserved, dtype=np.int64)
        paths = path_ids(reserved[:, :levels], k)
        with_token = reserved.shape[1] > levels
        suffix = reserved[:, levels] if with_token else np.zeros(len(reserved), dtype=np.int64)
        top: dict[int, int] = {}
        for p, s in zip(paths.tolist(), suffix.tolist()):
            top[p] = max(top.get(p, -1), s)
        return cls(paths, unique_sorted(paths), top, with_token)


@dataclass
class _PathGroups:
    """The movies grouped by greedy path (sorted by path, then movie_id)."""

    order: np.ndarray
    """Movie positions sorted by path, then movie_id."""
    first: np.ndarray
    """(N,) bool along ``order``: the first movie of its group."""
    size: np.ndarray
    """(N,) each movie's group size."""

    @classmethod
    def of(cls, paths: np.ndarray, movie_ids: np.ndarray) -> _PathGroups:
        n = len(paths)
        order = np.lexsort((movie_ids, paths))
        sp = paths[order]
        first = np.ones(n, dtype=bool)
        first[1:] = sp[1:] != sp[:-1]
        sizes = np.diff(np.flatnonzero(np.r_[first, True]))
        size = np.empty(n, dtype=np.int64)
        size[order] = np.repeat(sizes, sizes)
        return cls(order, first, size)

    def rank(self, order: np.ndarray) -> np.ndarray:
        """Each movie's position in its group, for ``order`` (any order that sorts by path first)."""
        n = len(order)
        group_start = np.maximum.accumulate(np.where(self.first, np.arange(n), 0))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - group_start
        return rank


def _suffix_assignment(codes: np.ndarray, paths: np.ndarray, rank: np.ndarray, taken: _Reserved,
                       collided: np.ndarray) -> Assignment:
    """TIGER's rule: the movies on a path are numbered after the tokens already issued there."""
    n, levels = codes.shape
    base = np.array([taken.top.get(p, -1) + 1 for p in paths.tolist()], dtype=np.int64) if len(taken.top) \
        else np.zeros(n, dtype=np.int64)
    suffix = base + rank
    tokens = np.concatenate([codes, suffix[:, None]], axis=1)
    return Assignment(tokens, np.zeros(n, dtype=bool), suffix > 0, np.full(n, levels, dtype=np.int64),
                      int(collided.sum()))


@dataclass
class _MoverSearch:
    """What the semantic search needs to move movies off a shared path."""

    need: np.ndarray
    """Sorted positions of the collided movies (the rows of ``z_need``)."""
    z_need: np.ndarray
    """(len(need), H) float64 latents."""
    codebooks: np.ndarray | None
    """(L, K, H) float64."""
    beam_width: int
    bias: np.ndarray | None

    @classmethod
    def none(cls) -> _MoverSearch:
        """No movie collided: nothing to search."""
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, 0)), None, 0, None)

    def free_paths(self, movers: np.ndarray, codes: np.ndarray, used_arr: np.ndarray) -> np.ndarray:
        """The path each mover (in movie_id order) takes, -1 where none is free.

        1. Most movers find a free code at the last level. Movers are served in movie_id order, each taking
        its nearest last-level code that is free and not taken by an earlier mover, computed for all at once by
        deferred acceptance (with one priority order for every path it gives exactly that serial result).
        2. Movers left without one search deeper, in movie_id order by the same deferred acceptance, among paths
        nobody holds; when K^L is small, the whole space last (`scan_in_order`).
        """
        zrow = np.searchsorted(self.need, movers)  # row of z_need of each mover (movers are collided)
        cands = _by_blocks(lambda b: candidate_paths(  # (M, T)
            self.z_need[zrow[b]], self.codebooks, codes[movers[b]], self.beam_width, part="last", bias=self.bias),
            np.arange(len(movers)))
        got = _serve_in_order(cands, ~member(cands, used_arr))  # (M,) path or -1
        levels, k = self.codebooks.shape[:2]
        left = np.flatnonzero(got < 0)  # in movie_id order
        if len(left) == 0:
            return got
        used_arr = unique_sorted(np.concatenate([used_arr, got[got >= 0]]))
        pre, count = np.unique(used_arr // k, return_counts=True)  # the held paths' (L - 1)-code prefixes
        deeper = _by_blocks(lambda b: candidate_paths(  # (M', T'): the same serial rule over the deeper paths
            self.z_need[zrow[b]], self.codebooks, codes[movers[b]], self.beam_width, part="deeper", bias=self.bias,
            full=pre[count == k]), left) if levels > 1 else None
        got[left] = _serve_in_order(deeper, ~member(deeper, used_arr)) if levels > 1 else -1
        if k ** levels > EXHAUSTIVE_MAX_PATHS or not (got[left] < 0).any():
            return got
        # Small space: a mover with no free path yet scans the whole space. A mover's path depends only on
        # the movers before it, so from the first such mover on they are redone in turn.
        first = int(np.flatnonzero(got[left] < 0)[0])
        taken = np.zeros(k ** levels, dtype=bool)  # (P,) the paths held so far
        taken[used_arr] = True
        earlier = got[left[:first]]
        taken[earlier[earlier >= 0]] = True
        rest = left[first:]
        options = deeper[first:] if deeper is not None else np.zeros((len(rest), 0), dtype=np.int64)
        got[rest] = scan_in_order(PathSpace(self.codebooks, self.bias), self.z_need[zrow[rest]],
                                   codes[movers[rest]], options, taken)
        return got


def _by_blocks(fn: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
    """``fn`` (rows (B,) -> (B, T) array) over blocks of ``MOVER_CHUNK`` rows, concatenated: memory stays bounded.
    The blocks run on torch's threads, one block per thread (numpy's sorts and gathers run on one core; a
    block's result does not depend on which thread computes it)."""
    import torch

    blocks = np.array_split(rows, max(1, -(-len(rows) // MOVER_CHUNK)))
    before = torch.get_num_threads()
    threads = min(before, len(blocks))
    if threads <= 1:
        return np.concatenate([fn(b) for b in blocks])
    torch.set_num_threads(1)  # a block's matrix products on its own thread
    try:
        with ThreadPoolExecutor(threads) as pool:
            return np.concatenate(list(pool.map(fn, blocks)))
    finally:
        torch.set_num_threads(before)


def _semantic_assignment(codes: np.ndarray, movie_ids: np.ndarray, paths: np.ndarray, rank: np.ndarray,
                         on_reserved: np.ndarray, taken: _Reserved, collided: np.ndarray, search: _MoverSearch,
                         k: int) -> Assignment:
    """The keeper of each path stays; the others move to their nearest free path, or get a collision token."""
    n, levels = codes.shape
    final = paths.copy()
    moved = np.zeros(n, dtype=bool)
    movers = np.flatnonzero((rank > 0) | on_reserved)
    movers = movers[np.argsort(movie_ids[movers], kind="stable")]  # processed in movie_id order
    unresolved: list[int] = []
    if len(movers):
        got = search.free_paths(movers, codes, unique_sorted(np.concatenate([paths[rank == 0], taken.paths])))
        ok = got >= 0
        final[movers[ok]] = got[ok]
        moved[movers[ok]] = True
        unresolved = movers[~ok].tolist()
    new_codes = path_codes(final, k, levels) if moved.any() else codes
    shared = np.full(n, levels, dtype=np.int64)
    shared[moved] = np.cumprod(new_codes[moved] == codes[moved], axis=1).sum(1)
    if not unresolved and not taken.with_token:
        return Assignment(new_codes, moved, np.zeros(n, dtype=bool), shared, int(collided.sum()))
    suffix = _collision_tokens(final, movie_ids, unresolved, taken)
    tokens = np.concatenate([new_codes, suffix[:, None]], axis=1)
    return Assignment(tokens, moved, suffix > 0, shared, int(collided.sum()))


def _collision_tokens(final: np.ndarray, movie_ids: np.ndarray, unresolved: list[int],
                      taken: _Reserved) -> np.ndarray:
    """No free path left for some movies (or the kept SIDs carry a collision token): number the
    movies on each path after the ones already there, in movie_id order. (N,) int64 tokens."""
    suffix = np.zeros(len(final), dtype=np.int64)
    settled = np.ones(len(final), dtype=bool)
    settled[unresolved] = False
    held = set(final[settled].tolist())  # each holds its path with token 0
    top = dict(taken.top)
    for i in sorted(unresolved, key=lambda i: movie_ids[i]):
        p = int(final[i])
        t = max(top.get(p, -1), 0 if p in held else -1)
        suffix[i] = t + 1
        top[p] = t + 1
    return suffix


def unique_sorted(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int array (sort-based: numpy's hash-based ``unique`` is slower here)."""
    a = np.sort(np.asarray(a).ravel())
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def member(a: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """``np.isin(a, sorted_unique)`` by binary search (``sorted_unique`` from `unique_sorted`)."""
    if len(sorted_unique) == 0:
        return np.zeros(np.shape(a), dtype=bool)
    idx = np.minimum(np.searchsorted(sorted_unique, a), len(sorted_unique) - 1)
    return sorted_unique[idx] == a


def _serve_in_order(cands: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Serial dictatorship, vectorized: row 0 takes its first allowed candidate, row 1 its first allowed
    one not taken by row 0, and so on. Computed by deferred acceptance (every path prefers the lower
    row; with one priority order this gives exactly the serial result) in a few array passes.

    Args:
        cands: (M, T) int64 candidates per row, in preference order (distinct within a row).
        ok: (M, T) bool, which candidates are allowed at all.

    Returns:
        (M,) the path each row gets, -1 where none is left.
    """
    m = len(cands)
    got = np.full(m, -1, dtype=np.int64)
    if m == 0:
        return got
    pref = np.take_along_axis(cands, np.argsort(~ok, axis=1, kind="stable"), axis=1)  # allowed ones first
    n_ok = ok.sum(1)
    ptr = np.zeros(m, dtype=np.int64)
    while True:
        asking = np.flatnonzero((got < 0) & (ptr < n_ok))
        if len(asking) == 0:
            return got
        holders = np.flatnonzero(got >= 0)
        who = np.concatenate([holders, asking])
        want = np.concatenate([got[holders], pref[asking, ptr[asking]]])
        o = np.lexsort((who, want))
        who, want = who[o], want[o]
        win = np.r_[True, want[1:] != want[:-1]]  # the lowest row asking for each path
        lose = who[~win]
        got[lose] = -1
        ptr[lose] += 1  # a loser's pointer was on the path it lost: try the next one
        got[who[win]] = want[win]


