"""Quality metrics of a tokenizer and of its SIDs, as plain functions over arrays (used by `train`, `evaluate`
and the benchmarks): reconstruction, code usage, collisions, exact k-NN, neighbours by SID (`sid_knn`),
prefix coherence, co-watch agreement, genre purity.

Shapes: N movies, D embedding dim, L levels, K codebook size.
All functions take NumPy arrays (or anything ``np.asarray`` accepts) and return Python floats/lists.

May import: numpy (pure functions over arrays); torch inside `knn` (first use).
"""

from __future__ import annotations

from typing import Any

import numpy as np

CHUNK = 65536
"""Rows per chunk of the float64 sums below, so that memory stays at a few (CHUNK, D) arrays at any N."""


def relative_mse(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Reconstruction error as the fraction of the data's variance left unexplained.

    ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``: 0 is perfect, 1 is no better than predicting
    the mean vector. Unlike a raw MSE it is comparable across embedding models and dimensions.

    Args:
        x: (N, D) input embeddings.
        x_hat: (N, D) reconstructions.
    """
    n, d = np.shape(x)
    xa_buf, diff_buf = np.empty((min(n, CHUNK), d)), np.empty((min(n, CHUNK), d))  # reused: no page faults
    mean = np.zeros(d)
    for a in range(0, n, CHUNK):
        xa = xa_buf[:len(x[a:a + CHUNK])]
        xa[...] = x[a:a + CHUNK]  # (B, D) float64
        mean += xa.sum(axis=0)
    mean /= max(n, 1)
    err = var = 0.0
    for a in range(0, n, CHUNK):
        xa, diff = xa_buf[:len(x[a:a + CHUNK])], diff_buf[:len(x[a:a + CHUNK])]
        xa[...] = x[a:a + CHUNK]
        diff[...] = x_hat[a:a + CHUNK]
        np.subtract(xa, diff, out=diff)
        err += float(np.square(diff, out=diff).sum())
        np.subtract(xa, mean, out=diff)
        var += float(np.square(diff, out=diff).sum())
    return float(err / max(var, 1e-12))


def mean_cosine(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Mean cosine similarity between each input (N, D) and its reconstruction (N, D)."""
    total = 0.0
    for a in range(0, len(x), CHUNK):
        xa = np.asarray(x[a:a + CHUNK], dtype=np.float64)  # (B, D)
        ya = np.asarray(x_hat[a:a + CHUNK], dtype=np.float64)
        den = np.linalg.norm(xa, axis=1) * np.linalg.norm(ya, axis=1)
        total += float(((xa * ya).sum(axis=1) / np.maximum(den, 1e-12)).sum())
    return total / max(len(x), 1)


def code_counts(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """(L, K) how many movies use each code at each level, from codes (N, L)."""
    codes = np.asarray(codes)
    return np.stack([np.bincount(codes[:, level], minlength=codebook_size)[:codebook_size]
                     for level in range(codes.shape[1])])


def utilization(codes: np.ndarray, codebook_size: int) -> list[float]:
    """Per level, the fraction of the K codes used by at least one movie. codes: (N, L)."""
    counts = code_counts(codes, codebook_size)  # (L, K)
    return [float(c) for c in (counts > 0).mean(axis=1)]


def perplexity(codes: np.ndarray, codebook_size: int) -> list[float]:
    """Per level, ``exp(entropy)`` of the code distribution: K when codes are used uniformly, 1 at collapse."""
    counts = code_counts(codes, codebook_size).astype(np.float64)  # (L, K)
    p = counts / counts.sum(axis=1, keepdims=True)
    ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(axis=1)
    return [float(v) for v in np.exp(ent)]


def collision_stats(codes: np.ndarray) -> dict[str, float | int]:
    """How many movies share their full code tuple with another.

    Args:
        codes: (N, L) integer codes.

    Returns:
        ``unique_fraction``: share of movies whose tuple no other movie has;
        ``max_group_size``: the largest number of movies sharing one tuple;
        ``n_groups``: number of distinct tuples.
    """
    codes = np.ascontiguousarray(np.asarray(codes, dtype=np.int64))
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    per_movie = counts[inverse.reshape(-1)]
    return {
        "unique_fraction": float((per_movie == 1).mean()),
        "max_group_size": int(counts.max()),
        "n_groups": int(len(counts)),
    }


def knn(x: np.ndarray, k: int, *, rows: np.ndarray | None = None, block: int = 4096) -> np.ndarray:
    """Exact k nearest neighbours by cosine similarity, excluding each point itself.

    With ``rows=None`` every point is a query. The similarity matrix is then symmetric, so only its
    blocks on and above the diagonal are multiplied (half the products of a plain search): each
    block updates the running top k of its rows and, read by columns, of the other block's rows.
    With ``rows``, only those points are queries, a block of them against all N at once (one product
    and one top-k per block: ``len(rows) x N`` products, so the cost of a sample grows linearly with
    N). Memory stays at a few ``block x block`` matrices (or as many similarities, in a band of rows).
    A point's own entry is masked by index, so exact duplicates still find each other. The products
    are NumPy's (its BLAS), the top-k selection torch's.

    Args:
        x: (N, D) vectors (normalised here; the input is not modified).
        k: neighbours per point (capped at N - 1).
        rows: (Q,) indices of the query points, or None for all N.
        block: rows per block of the similarity matrix.

    Returns:
        (Q, k) int64 indices into x, nearest first (Q = N without ``rows``).
    """
    import torch  # the top-k selection; the rest of this module is numpy

    x = np.asarray(x, dtype=np.float32)
    xn = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))  # (N, D)
    n = len(xn)
    k = min(k, n - 1)
    if rows is not None:
        return _knn_rows(xn, k, np.asarray(rows, dtype=np.int64), cells=block * block * 2)
    best = torch.full((n, k), -torch.inf), torch.full((n, k), -1, dtype=torch.int64)  # (N, k) values, indices
    with torch.no_grad():
        for a in range(0, n, block):
            rows_a = xn[a:a + block]  # (Ba, D)
            for b in range(a, n, block):
                sim = torch.from_numpy(rows_a @ xn[b:b + block].T)  # (Ba, Bb)
                if a == b:
                    sim.fill_diagonal_(-torch.inf)
                _keep_top(best, a, sim, b)
                if b != a:  # top-k along the rows of a transposed copy: faster than along strided columns
                    _keep_top(best, b, sim.T.contiguous(), a)
    return best[1].numpy()


def _knn_rows(xn: np.ndarray, k: int, rows: np.ndarray, *, cells: int) -> np.ndarray:
    """The exact k-NN (Q, k) of the unit vectors ``xn[rows]`` among all of xn (N, D), self excluded: each
    block of queries against all N at once (one product, one top-k; at most ``cells`` similarities)."""
    import torch  # see knn

    out = np.empty((len(rows), k), dtype=np.int64)
    step = max(1, min(len(rows), cells // len(xn)))
    with torch.no_grad():
        for a in range(0, len(rows), step):
            q = rows[a:a + step]
            sim = torch.from_numpy(xn[q] @ xn.T)  # (Bq, N)
            sim[torch.arange(len(q)), torch.from_numpy(q)] = -torch.inf
            out[a:a + len(q)] = sim.topk(k, dim=1)[1].numpy()
    return out


def _keep_top(best: tuple, row0: int, sim, col0: int) -> None:
    """Merge the candidates ``sim`` (rows row0.., columns col0..) into the running top k ``best``."""
    import torch  # see knn

    values, index = best
    k = values.shape[1]
    v, i = sim.topk(min(k, sim.shape[1]), dim=1)  # (B, k)
    rows = slice(row0, row0 + sim.shape[0])
    merged_v = torch.cat([values[rows], v], dim=1)  # (B, 2k)
    merged_i = torch.cat([index[rows], i + col0], dim=1)
    top_v, pos = merged_v.topk(k, dim=1)
    values[rows] = top_v
    index[rows] = merged_i.gather(1, pos)


def first_token_match(codes: np.ndarray, neighbors: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Share of (movie, neighbour) pairs whose first code agrees.

    Args:
        codes: (N, L) codes.
        neighbors: (Q, k) neighbour indices of the movies ``rows`` (None: all N, Q = N).
    """
    first = np.asarray(codes)[:, 0]
    own = first if rows is None else first[np.asarray(rows)]  # (Q,)
    return float((first[neighbors] == own[:, None]).mean())


def random_first_token_match(codes: np.ndarray) -> float:
    """The chance rate of `first_token_match`: probability two distinct random movies share the first code."""
    first = np.asarray(codes)[:, 0]
    counts = np.bincount(first).astype(np.float64)
    n = counts.sum()
    return float(((counts * (counts - 1)).sum()) / max(n * (n - 1), 1.0))


def tokenizer_metrics(x: np.ndarray, x_hat: np.ndarray, codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Reconstruction, per-level utilization/perplexity and collisions of codes (N, L) for x (N, D)."""
    col = collision_stats(codes)
    return {
        "relative_mse": relative_mse(x, x_hat),
        "mean_cosine": mean_cosine(x, x_hat),
        "utilization": utilization(codes, codebook_size),
        "perplexity": perplexity(codes, codebook_size),
        "unique_fraction": col["unique_fraction"],
        "max_group_size": col["max_group_size"],
    }


def mutual_pairs(neighbors: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """The mutual k-nearest-neighbour pairs: i and j each among the other's k nearest.

    Args:
        neighbors: (N, k') int neighbour indices, nearest first, k' >= k (e.g. from `knn`). With ``rows``,
            only the rows of those movies and of their k nearest are read (the others may hold anything).
        k: how many of the nearest count.
        rows: the movies whose pairs are wanted (None: every movie, so every mutual pair).

    Returns:
        (P, 2) int64 pairs ``(i, j)`` with ``i < j``, sorted, each mutual pair once, having an end in ``rows``.
    """
    nbrs = np.asarray(neighbors, dtype=np.int64)[:, :k]  # (N, k)
    if nbrs.shape[1] < k:
        raise ValueError(f"mutual_pairs needs at least k={k} neighbours per row, got {nbrs.shape[1]}")
    rows = np.arange(len(nbrs)) if rows is None else np.asarray(rows, dtype=np.int64)
    i = np.repeat(rows, k)  # (Q k,)
    j = nbrs[rows].reshape(-1)
    keep = (nbrs[j] == i[:, None]).any(axis=1)  # j lists i too
    pairs = np.sort(np.stack([i[keep], j[keep]], axis=1), axis=1)  # (P', 2) with i < j
    return np.unique(pairs, axis=0).reshape(-1, 2)


def prefix_pair_rate(codes: np.ndarray, depth: int) -> float:
    """Probability that two distinct random movies share their first ``depth`` codes (exact, from the
    prefix counts: sum c (c - 1) / (N (N - 1))). codes: (N, >= depth)."""
    codes = np.ascontiguousarray(np.asarray(codes, dtype=np.int64)[:, :depth])
    _, counts = np.unique(codes, axis=0, return_counts=True)
    counts = counts.astype(np.float64)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / max(n * (n - 1), 1.0))


def prefix_coherence(codes: np.ndarray, neighbors: np.ndarray, k: int = 5, rows: np.ndarray | None = None
                     ) -> dict[str, float | int]:
    """Do tight groups in embedding space keep a shared SID prefix? Over the mutual k-NN pairs, the
    share whose first token agrees and whose first two tokens agree, beside the same shares for two
    random movies (`prefix_pair_rate`).

    Args:
        codes: (N, L) codes (L >= 2 for the two-token share; with L = 1 it equals the first).
        neighbors: (N, k') embedding neighbours, nearest first, k' >= k.
        k: the k of the mutual k-NN pairs.
        rows: only the pairs with an end among these movies (a sample; see `mutual_pairs`). None: all.

    Returns:
        ``k``, ``pairs`` (how many mutual pairs), ``first_token``, ``first_two_tokens``,
        ``random_first_token``, ``random_first_two_tokens``.
    """
    codes = np.asarray(codes, dtype=np.int64)
    pairs = mutual_pairs(neighbors, k, rows)
    two = min(2, codes.shape[1])
    a, b = codes[pairs[:, 0]], codes[pairs[:, 1]]  # (P, L)
    same = np.cumprod(a[:, :two] == b[:, :two], axis=1)  # (P, two): the first d tokens agree
    share = same.mean(axis=0) if len(pairs) else np.zeros(two)
    return {
        "k": int(k),
        "pairs": int(len(pairs)),
        "first_token": float(share[0]),
        "first_two_tokens": float(share[-1]),
        "random_first_token": prefix_pair_rate(codes, 1),
        "random_first_two_tokens": prefix_pair_rate(codes, two),
    }


def co_watch(codes: np.ndarray, a: np.ndarray, b: np.ndarray, *, random_pairs: int = 100_000,
             seed: int = 0) -> dict[str, float | int]:
    """Do the most co-watched movie pairs share SID prefixes? Against random pairs of the same movies.

    Args:
        codes: (N, L) the movies' codes (the first L tokens of their SIDs).
        a, b: (P,) row indices of the pairs' two movies (``cowatch.parquet``, most co-watched first).
        random_pairs: random pairs of distinct movies drawn (seeded) for the baseline.

    Returns:
        ``pairs``; ``first_token`` and ``first_two_tokens``: the share of the pairs sharing that prefix;
        ``random_first_token``, ``random_first_two_tokens``: the same for random pairs; and the ratios
        ``first_token_lift``, ``first_two_tokens_lift``.
    """
    codes = np.asarray(codes)
    depth2 = min(2, codes.shape[1])
    rng = np.random.default_rng(seed)
    ra = rng.integers(0, len(codes), random_pairs)
    rb = (ra + rng.integers(1, len(codes), random_pairs)) % len(codes)  # never the same movie

    def share(x: np.ndarray, y: np.ndarray, depth: int) -> float:
        return float((codes[x, :depth] == codes[y, :depth]).all(1).mean()) if len(x) else float("nan")

    out = {"pairs": int(len(a)), "first_token": share(a, b, 1), "first_two_tokens": share(a, b, depth2),
           "random_first_token": share(ra, rb, 1), "random_first_two_tokens": share(ra, rb, depth2)}
    for key in ("first_token", "first_two_tokens"):
        out[f"{key}_lift"] = out[key] / out[f"random_{key}"] if out[f"random_{key}"] else float("nan")
    return out


# ---------------------------------------------------------------------------------- neighbours by SID


def shared_prefix_lengths(tokens: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many leading tokens ``tokens[a]`` and ``tokens[b]`` share (elementwise; -1 padding never matches).

    Args:
        tokens: (N, T) int64 tokens, -1 past a movie's length.
        a, b: index arrays of the same shape S.

    Returns:
        int64 array of shape S.
    """
    ta, tb = tokens[a], tokens[b]  # (*S, T)
    eq = (ta == tb) & (ta >= 0)
    return np.cumprod(eq, axis=-1).sum(axis=-1)


def sid_knn(tokens: np.ndarray, vectors: np.ndarray, k: int, rows: np.ndarray | None = None, *,
            max_block: int = 1 << 22) -> np.ndarray:
    """The k nearest movies by SID of the movies ``rows`` (default: all): longest shared prefix first, then
    decoded-vector cosine.

    Sorting the SIDs makes each prefix group a contiguous block. Let d be the deepest prefix length
    whose group around a movie has more than k members. Every movie outside that group shares a
    shorter prefix, so the k nearest lie inside it; the movies of the next-deeper group (at most
    k - 1 of them) are all among the k nearest; the rest of the group share exactly d tokens and are
    ranked by cosine. So each movie is scored against one block (a few hundred movies for a healthy
    codebook) with one matrix product, instead of against the whole catalog; only the blocks of the
    movies asked for are read, and no sorted copy of the N vectors is made.

    Args:
        tokens: (N, T) int64 SID tokens, -1 past a movie's length.
        vectors: (N, D) decoded vectors, L2-normalised.
        k: neighbours per movie (< N).
        rows: (Q,) the movies whose neighbours are wanted; None: every movie.
        max_block: largest (queries x members) score matrix built at once.

    Returns:
        (Q, k) int64 movie indices, nearest first (ties: the smaller index first), row i for ``rows[i]``.
    """
    n, t = tokens.shape
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1}, got {k}")
    order = np.lexsort(tokens.T[::-1])  # (N,) sorted by first token, then second, ...
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)  # sorted position of each movie
    qpos = np.arange(n) if rows is None else pos[np.asarray(rows, dtype=np.int64)]  # (Q,)
    gid, bounds = _prefix_groups(tokens[order])
    sizes = np.stack([e[qpos] - s[qpos] for s, e in bounds])  # (T+1, Q)
    depth = (sizes > k).sum(axis=0) - 1  # deepest d whose group has more than k members (sizes shrink with d)
    out = np.empty((n, k), dtype=np.int64) if rows is None else {}
    for d in range(t + 1):
        at = np.sort(qpos[depth == d])  # sorted positions of the queries at this depth
        if not len(at):
            continue
        lo_all, hi_all = bounds[d][0][at], bounds[d][1][at]
        cut = np.flatnonzero(np.r_[True, lo_all[1:] != lo_all[:-1]])  # queries sharing a group are contiguous
        for a, b in zip(cut, np.r_[cut[1:], len(at)]):
            lo, hi = lo_all[a], hi_all[a]
            members = np.ascontiguousarray(vectors[order[lo:hi]], dtype=np.float32)  # (M, D), sorted order
            step = max(1, max_block // (hi - lo))
            for s in range(a, b, step):
                q = at[s:min(s + step, b)]
                near = _nearest_in_group(members, q, lo, hi, k, inner=bounds[d + 1] if d < t else None,
                                         deeper=gid[d + 1:], order=order)
                if rows is None:
                    out[q] = near
                else:
                    out.update(zip(q.tolist(), near))
    if rows is None:  # back from sorted positions to movie indices
        result = np.empty_like(out)
        result[order] = order[out]
        return result
    return order[np.stack([out[p] for p in qpos.tolist()])] if len(qpos) else np.zeros((0, k), dtype=np.int64)


def _prefix_groups(st: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The prefix groups of sorted SID tokens st (N, T).

    Returns:
        gid (T + 1, N): row d is the id of each row's group of movies sharing its first d tokens; and per
        depth d, (start, end) in sorted order of each row's group.
    """
    n, t = st.shape
    differs = np.ones((n, t), dtype=bool)
    differs[1:] = st[1:] != st[:-1]
    new_group = np.logical_or.accumulate(differs, axis=1)  # (N, T): differs within the first d+1 tokens
    gid = np.zeros((t + 1, n), dtype=np.int64)
    gid[1:] = np.cumsum(new_group.T, axis=1) - 1
    bounds = []
    for g in gid:
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ends = np.r_[starts[1:], n]
        bounds.append((starts[g], ends[g]))
    return gid, bounds


def _nearest_in_group(members: np.ndarray, q: np.ndarray, lo: int, hi: int, k: int, *,
                      inner: tuple[np.ndarray, np.ndarray] | None, deeper: np.ndarray,
                      order: np.ndarray) -> np.ndarray:
    """The k nearest (sorted positions, (Q, k)) of the sorted rows q among the group [lo, hi) they share.

    ``members``: (hi - lo, D) the group's vectors, in sorted order; ``inner``: (start, end) of each row's
    next-deeper group, whose members outrank everyone else (None at the full depth); ``deeper``: the group
    ids of the deeper prefix lengths, to rank by shared prefix.
    """
    qv = members[q - lo]  # (Q, D)
    score = qv @ members.T  # (Q, M) cosine
    if inner is not None:
        cols = np.arange(hi - lo)
        score[(cols >= (inner[0][q] - lo)[:, None]) & (cols < (inner[1][q] - lo)[:, None])] = np.inf
    score[np.arange(len(q)), q - lo] = -np.inf  # not its own neighbour
    out = np.empty((len(q), k), dtype=np.int64)
    for rows, cand in _candidates(score, k):  # (R,) rows, (R, C) their candidates
        top = cand + lo  # sorted positions
        # Exact order: shared prefix (deeper levels agree), then cosine, then index. The cosines are computed
        # again pair by pair, so equal vectors tie exactly whatever the shape of the product above.
        shared = np.zeros(top.shape, dtype=np.int64)
        for g in deeper:
            shared += g[top] == g[q[rows]][:, None]
        sim = np.einsum("qd,qkd->qk", qv[rows], members[cand])
        own = top == q[rows][:, None]
        shared[own], sim[own] = -1, -np.inf  # a whole group as candidates holds the query: last
        rank = np.lexsort((order[top], -sim, -shared), axis=-1)[:, :k]
        out[rows] = np.take_along_axis(top, rank, axis=1)
    return out


TIE_TOLERANCE = 1e-4
"""Cosines closer than this may be equal ones rounded differently by two matrix products (blocks of other
shapes, other kernels): a candidate that close to the k-th is kept and ranked exactly."""


def _candidates(score: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Candidate columns that hold each row's k largest scores and every score within ``TIE_TOLERANCE`` of
    the k-th: (rows (R,), columns (R, C)) pairs, C = 2k for most rows, the whole row where the largest score
    left out of 2k is still that close to the k-th."""
    n, m = score.shape
    c = min(m, 2 * k)
    every = np.arange(n)
    if c == m:
        return [(every, np.broadcast_to(np.arange(m), (n, m)))]
    part = np.argpartition(-score, (k - 1, c), axis=1)  # (Q, M): the k-th and the (c+1)-th largest in place
    kth = np.take_along_axis(score, part[:, k - 1:k], axis=1)[:, 0]  # (Q,)
    left = np.take_along_axis(score, part[:, c:c + 1], axis=1)[:, 0]  # (Q,) the largest left out
    close = ~(left < kth - TIE_TOLERANCE)  # (Q,) it may tie the k-th (inf == inf counts too)
    return [(every[~close], part[~close, :c]),
            (every[close], np.broadcast_to(np.arange(m), (int(close.sum()), m)))]


def neighbor_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over movies of |a_i ∩ b_i| / k for two (N, k) neighbour index arrays."""
    return float((a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1).mean() / a.shape[1])


def genre_purity(level1: np.ndarray, genres: list[list[str]]) -> tuple[float, float, dict[str, int]]:
    """Share of movies whose level-1 code's majority genre is one of their genres.

    Movies without genres count as misses (they can match no majority genre). The baseline is the
    same share when every code's majority genre is the catalog's most common genre.

    Returns:
        purity, baseline, and the number of level-1 codes whose majority genre is each genre.
    """
    names = sorted({g for gs in genres for g in gs})
    if not names:
        return 0.0, 0.0, {}
    col = {g: i for i, g in enumerate(names)}
    has = np.zeros((len(genres), len(names)), dtype=np.float64)  # (N, G)
    for i, gs in enumerate(genres):
        has[i, [col[g] for g in gs]] = 1.0
    codes, inverse = np.unique(level1, return_inverse=True)
    counts = np.zeros((len(codes), len(names)))  # (codes, G)
    np.add.at(counts, inverse, has)
    majority = counts.argmax(axis=1)  # ties: first genre alphabetically
    purity = float(has[np.arange(len(genres)), majority[inverse]].mean())
    baseline = float(has[:, has.sum(axis=0).argmax()].mean())
    per_genre = np.bincount(majority, minlength=len(names))
    return purity, baseline, {names[i]: int(c) for i, c in enumerate(per_genre) if c}
