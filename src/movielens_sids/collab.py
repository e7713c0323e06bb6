"""Collaborative signal from the ratings: item vectors (ALS) and the most co-watched movie pairs.

Both are computed from a user x movie matrix of *training* interactions only (the caller builds it
from the benchmark split's training prefixes), so nothing here can see a validation or test event.

Why ALS: on ml-latest-small's temporal split, item vectors were compared by the validation
next-movie Recall@10 of "movies closest to the user's last 5" (``benchmarks/collab_bench.py``):
implicit's ALS (64 factors, regularization 1.0) 0.082 in ~1 s, PPMI + randomized SVD (64 / 128
dims) 0.068 / 0.077 in 98 / 228 s, implicit's BPR 0.031; content embeddings alone give 0.026.

May import: numpy, scipy; implicit and torch on first use.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

MAX_ITEMS = 8192
"""``top_cowatch_pairs`` counts among at most this many of the most watched items ((T, T) floats: 256 MB)."""


def interaction_matrix(sequences: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """(U, N) binary CSR matrix: row u has a 1 for every item of ``sequences[u]``."""
    rows = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])
    cols = np.concatenate(sequences) if sequences else np.empty(0, np.int64)
    x = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(sequences), n_items))
    x.data[:] = 1.0  # an item listed twice by one user still counts once
    return x


def als_vectors(x: sp.csr_matrix, *, factors: int, regularization: float, iterations: int, alpha: float,
                seed: int, threads: int = 1) -> np.ndarray:
    """(N, factors) float32 item vectors of implicit-feedback ALS (Hu, Koren & Volinsky 2008) on (U, N) ``x``.

    A movie without interactions gets the zero vector (its normal equations hold only the regularizer).
    """
    from implicit.cpu.als import AlternatingLeastSquares  # the CPU model: no GPU probing, deterministic
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit parallelises itself; a threaded BLAS inside it only contends
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                        iterations=iterations, random_state=seed, num_threads=threads)
        model.fit(x.astype(np.float32), show_progress=False)
    vectors = np.asarray(model.item_factors, dtype=np.float32)[:, :factors]  # (N, F)
    vectors[np.asarray(x.sum(0)).ravel() == 0] = 0.0
    return np.ascontiguousarray(vectors)


def top_cowatch_pairs(x: sp.csr_matrix, n_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n_pairs`` item pairs watched by the most users: ``(a, b, users)`` with a < b, most first.

    Exact without the (N, N) co-occurrence matrix: a pair is watched by at most as many users as its
    less watched item, so only the most watched items can hold the top pairs. Co-occurrences are
    counted among the T most watched items, T doubled until the T-th item's count is below the
    ``n_pairs``-th pair's.
    """
    counts = np.asarray(x.sum(0)).ravel()  # (N,)
    order = np.argsort(-counts, kind="stable")
    t = min(len(order), 512)
    while True:
        top = order[:t]
        sub = x[:, top].astype(np.float32)
        co = (sub.T @ sub).toarray()  # (T, T) users who watched both
        iu = np.triu_indices(t, k=1)
        vals = co[iu]
        keep = np.lexsort((iu[1], iu[0], -vals))[:n_pairs]  # most co-watched first; ties by rank
        keep = keep[vals[keep] > 0]
        kth = vals[keep[-1]] if len(keep) == n_pairs else 1.0
        if t == len(order) or t >= MAX_ITEMS or counts[order[t]] < kth:
            break
        t = min(len(order), MAX_ITEMS, 2 * t)
    a, b = top[iu[0][keep]], top[iu[1][keep]]
    return np.minimum(a, b), np.maximum(a, b), vals[keep].astype(np.int64)


FUSE_NEIGHBORS = 10
"""A movie's imputed collaborative vector is the mean of this many content neighbours' (among rated movies)."""


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def impute_from_content(queries: np.ndarray, content: np.ndarray, vectors: np.ndarray, *,
                        neighbors: int = FUSE_NEIGHBORS, exclude: np.ndarray | None = None,
                        block: int = 4096) -> np.ndarray:
    """(Q, F) unit collaborative vectors for ``queries`` (Q, D): the mean of the vectors (M, F) of their
    ``neighbors`` nearest ``content`` rows (M, D) by cosine; ``exclude`` (Q,) a row of ``content`` each
    query may not use (itself), -1 for none."""
    import torch  # its top-k: several times numpy's argpartition here

    q, c = _unit(queries.astype(np.float32)), _unit(content.astype(np.float32))
    k = min(neighbors, len(c) - (exclude is not None))
    out = np.zeros((len(q), vectors.shape[1]), dtype=np.float32)
    if k < 1:
        return out
    for s in range(0, len(q), block):
        sim = q[s:s + block] @ c.T  # (B, M)
        if exclude is not None:
            rows = np.flatnonzero(exclude[s:s + block] >= 0)
            sim[rows, exclude[s:s + block][rows]] = -np.inf
        top = torch.from_numpy(sim).topk(k, dim=1, sorted=False).indices.numpy()  # (B, k): the mean needs no order
        out[s:s + block] = vectors[top].mean(1)
    return _unit(out)


def fused_input(content: np.ndarray, vectors: np.ndarray, counts: np.ndarray, *, weight: float,
                shrinkage: float) -> np.ndarray:
    """(N, D + F) the tokenizer's input when it reads both signals: ``[content, weight * collab]``, unit length.

    Each part is unit length first. A movie's collaborative part is its own vector (N, F) shrunk towards
    the mean vector of its content neighbours among the rated movies (``impute_from_content``), with
    ``counts / (counts + shrinkage)`` of its own: a movie rated by one user (whose ALS vector is little
    more than that user's) leans on its content neighbours, a movie with no rating is entirely theirs, so
    every movie gets an input and a SID. ``shrinkage`` 0: own vector wherever there is one.

    Args:
        content: (N, D) content embeddings. vectors: (N, F) collaborative vectors (zeros where counts is 0).
        counts: (N,) training interactions per movie. weight: the collaborative part's length before the
            final normalisation (1: both signals weigh the same).
    """
    warm = np.flatnonzero(counts > 0)  # (M,)
    own = _unit(vectors.astype(np.float32))  # (N, F)
    slot = np.full(len(content), -1, dtype=np.int64)
    slot[warm] = np.arange(len(warm))
    imputed = impute_from_content(content, content[warm], own[warm], exclude=slot)  # (N, F)
    c = counts.astype(np.float32)[:, None]
    share = c / (c + shrinkage) if shrinkage > 0 else (c > 0).astype(np.float32)  # (N, 1)
    return _join(content, _unit(share * own + (1.0 - share) * imputed), weight)


def new_movie_input(queries: np.ndarray, content: np.ndarray, vectors: np.ndarray, counts: np.ndarray, *,
                    weight: float) -> np.ndarray:
    """(Q, D + F) the fused input of movies outside the catalog (Q, D), which nobody has rated: their
    collaborative part comes from their content neighbours among the catalog's rated movies, exactly as
    ``fused_input`` makes it for a catalog movie with no rating."""
    warm = np.flatnonzero(counts > 0)
    imputed = impute_from_content(queries, content[warm], _unit(vectors[warm].astype(np.float32)))
    return _join(queries, imputed, weight)


def _join(content: np.ndarray, collab_part: np.ndarray, weight: float) -> np.ndarray:
    """(N, D + F) ``[unit content, weight * collab_part]``, unit length."""
    return _unit(np.concatenate([_unit(content.astype(np.float32)), weight * collab_part], axis=1))
