"""Which collaborative item vectors? Candidates fitted on the benchmark split's training interactions.

Each candidate's item vectors rank movies for every validation event of the temporal split by cosine to
the mean vector of the user's last ``w`` movies (seen movies left out); the table gives Recall@10 for
w = 5 and w = 1 and the fit time. Content embeddings are the reference row.

Measured on ml-latest-small (2 cores, every validation event of the default split), the choice in
``collab.py``:

    ppmi_svd64   fit  98.0s  valid R@10 w5 0.0683  w1 0.0553
    ppmi_svd128  fit 228.1s  valid R@10 w5 0.0772  w1 0.0631
    als64        fit   2.0s  valid R@10 w5 0.0772  w1 0.0589   (regularization 0.05)
    als64_reg1   fit   1.3s  valid R@10 w5 0.0822  w1 0.0635   <- collab defaults
    bpr64        fit   8.2s  valid R@10 w5 0.0305  w1 0.0346
    content      valid R@10 w5 0.0257  w1 0.0237

Usage:
    python benchmarks/collab_bench.py --run-dir runs/demo --ratings src/movielens_sids/data/ml-latest-small/ratings.csv
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

from movielens_sids import artifacts, collab
from movielens_sids.retrieval.config import RetrievalConfig
from movielens_sids.retrieval.sequences import read_ratings, split_of


def ppmi_svd(x: sp.csr_matrix, dim: int, alpha: float = 0.75, seed: int = 0) -> np.ndarray:
    """Positive PMI of item co-occurrence (context smoothing ``alpha``), then a randomized SVD."""
    from sklearn.utils.extmath import randomized_svd

    c = (x.T @ x).tocsr().astype(np.float64)
    c.setdiag(0)
    c.eliminate_zeros()
    n_i, total = np.asarray(c.sum(1)).ravel(), c.sum()
    ctx = n_i ** alpha / (n_i ** alpha).sum()
    c = c.tocoo()
    pmi = np.log(c.data / total) - np.log(n_i[c.row] / total) - np.log(ctx[c.col])
    keep = pmi > 0
    p = sp.csr_matrix((pmi[keep], (c.row[keep], c.col[keep])), shape=c.shape)
    u, s, _ = randomized_svd(p, dim, random_state=seed)
    return (u * np.sqrt(s)).astype(np.float32)


def bpr(x: sp.csr_matrix, dim: int, seed: int = 0) -> np.ndarray:
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    model = BayesianPersonalizedRanking(factors=dim, iterations=100, random_state=seed)
    model.fit(x, show_progress=False)
    return np.asarray(model.item_factors)[:, :dim]


def valid_recall(split, vectors: np.ndarray, window: int) -> float:
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    hits = 0
    for u, p, target in zip(split.valid.user, split.valid.hist, split.valid.target):  # p: history length
        seen = split.sequences[u][:p]
        scores = v @ v[seen[-window:]].mean(0)
        scores[seen] = -np.inf
        hits += target in np.argpartition(-scores, 10)[:10]
    return hits / len(split.valid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, help="a run folder with embeddings.parquet")
    ap.add_argument("--ratings", required=True, help="ratings.csv or ratings.dat")
    args = ap.parse_args()
    emb = artifacts.read_embeddings(args.run_dir)
    split = split_of(read_ratings(args.ratings), emb.movie_ids, RetrievalConfig())
    x = collab.interaction_matrix(split.train, len(split.movie_ids))
    als = dict(iterations=15, alpha=1.0, seed=0)
    rows = {"ppmi_svd64": lambda: ppmi_svd(x, 64), "ppmi_svd128": lambda: ppmi_svd(x, 128),
            "als64": lambda: collab.als_vectors(x, factors=64, regularization=0.05, **als),
            "als64_reg1": lambda: collab.als_vectors(x, factors=64, regularization=1.0, **als),
            "bpr64": lambda: bpr(x, 64)}
    print(f"{len(split.valid)} validation events, {x.nnz} training interactions")
    for name, fit in rows.items():
        t0 = time.perf_counter()
        v = fit()
        dt = time.perf_counter() - t0
        w5, w1 = valid_recall(split, v, 5), valid_recall(split, v, 1)
        print(f"{name:12s} fit {dt:5.1f}s  valid R@10 w5 {w5:.4f}  w1 {w1:.4f}", flush=True)
    xc = emb.x[np.searchsorted(emb.movie_ids, split.movie_ids)]
    w5, w1 = valid_recall(split, xc, 5), valid_recall(split, xc, 1)
    print(f"{'content':12s}             valid R@10 w5 {w5:.4f}  w1 {w1:.4f}")


if __name__ == "__main__":
    main()
