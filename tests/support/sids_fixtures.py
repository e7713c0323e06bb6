"""Tiny run folders for the assign / lookup / export tests: embeddings, a tiny tokenizer, a catalog.

Example:
    >>> x, ids = clustered_embeddings(200, dim=8, seed=0)
    >>> write_run(tmp_path / "run", x, ids, levels=2, codebook_size=8)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from movielens_sids.io import write_parquet
from movielens_sids.model import RQVAE, RQVAEConfig, save_pretrained


def clustered_embeddings(n: int, *, dim: int = 8, clusters: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 unit vectors around a few centres, and movie ids (sparse, unsorted-friendly)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.sort(rng.choice(np.arange(1, 50 * n), size=n, replace=False)).astype(np.int64)
    return x.astype(np.float32), ids


def tiny_tokenizer(x: np.ndarray, *, levels: int = 2, codebook_size: int = 8, latent_dim: int = 4,
                   seed: int = 0, encoder: str = "mlp", **model: object) -> RQVAE:
    """An untrained RQ-VAE with k-means-initialised codebooks (enough for assign's invariants);
    ``model`` passes other ``RQVAEConfig`` fields (balance, beam_width, ...)."""
    torch.manual_seed(seed)
    cfg = RQVAEConfig(input_dim=x.shape[1], hidden_dims=[16], latent_dim=latent_dim, levels=levels,
                      codebook_size=codebook_size, kmeans_iters=5, encoder=encoder, **model)
    tok = RQVAE(cfg).eval()
    tok.init_codebooks(torch.from_numpy(x), generator=torch.Generator().manual_seed(seed))
    return tok


def write_embeddings(run_dir: Path, x: np.ndarray, ids: np.ndarray) -> None:
    """embeddings.parquet in the contract's schema (sorted by movie_id)."""
    o = np.argsort(ids)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x[o]).reshape(-1)), x.shape[1])
    table = pa.table({"movie_id": pa.array(ids[o], pa.int64()), "embedding": emb})
    write_parquet(Path(run_dir) / "embeddings.parquet", table,
                  metadata={"model": "test", "dimension": str(x.shape[1]), "normalized": "true",
                            "template": "test"})


def write_catalog(run_dir: Path, rows: list[dict]) -> None:
    """catalog.parquet from dicts with movie_id, title, display_title, year, genres (others defaulted)."""
    rows = sorted(rows, key=lambda r: r["movie_id"])
    table = pa.table({
        "movie_id": pa.array([r["movie_id"] for r in rows], pa.int64()),
        "title": pa.array([r["title"] for r in rows], pa.string()),
        "display_title": pa.array([r.get("display_title", r["title"]) for r in rows], pa.string()),
        "year": pa.array([r.get("year") for r in rows], pa.int64()),
        "genres": pa.array([r.get("genres", []) for r in rows], pa.list_(pa.string())),
        "tags": pa.array([r.get("tags", []) for r in rows], pa.list_(pa.string())),
        "imdb_id": pa.array([r.get("imdb_id") for r in rows], pa.string()),
        "tmdb_id": pa.array([r.get("tmdb_id") for r in rows], pa.int64()),
    })
    write_parquet(Path(run_dir) / "catalog.parquet", table)


def write_run(run_dir: Path, x: np.ndarray, ids: np.ndarray, **tok_kwargs) -> RQVAE:
    """A run folder with embeddings.parquet and model/; returns the tokenizer."""
    run_dir = Path(run_dir)
    write_embeddings(run_dir, x, ids)
    tok = tiny_tokenizer(x, **tok_kwargs)
    save_pretrained(tok, run_dir / "model")
    return tok


# An independent oracle for the tests: greedy residual quantization written out in float64.
def greedy_codes(z: np.ndarray, codebooks: np.ndarray, bias: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy residual quantization in float64 (``tok.quantize`` with beam width 1; exact ties go to
    the lower code index).

    Args:
        z: (N, H) latents.
        codebooks: (L, K, H). bias: (L, K) added to the codes' squared distances, or None.

    Returns:
        codes (N, L) int64 and the squared norm of the final residual (N,) float64, i.e. the
        squared distance from each latent to its path's quantized point.
    """
    z64 = torch.from_numpy(np.asarray(z, dtype=np.float64))
    cb64 = torch.from_numpy(np.asarray(codebooks, dtype=np.float64))  # (L, K, H)
    sq64 = (cb64 * cb64).sum(-1)  # (L, K)
    if bias is not None:
        sq64 = sq64 + torch.from_numpy(np.asarray(bias, dtype=np.float64))
    levels = cb64.shape[0]
    codes_out, resid_out = [], []
    for s in range(0, len(z64), 4096):
        r = z64[s:s + 4096].clone()  # (B, H)
        codes = []
        for level in range(levels):
            c = torch.addmm(sq64[level][None, :], r, cb64[level].T, alpha=-2.0).argmin(dim=1)  # (B,)
            codes.append(c)
            r -= cb64[level][c]
        codes_out.append(torch.stack(codes, dim=1))
        resid_out.append((r * r).sum(1))
    if not codes_out:
        return np.zeros((0, levels), dtype=np.int64), np.zeros(0, dtype=np.float64)
    return torch.cat(codes_out).numpy(), torch.cat(resid_out).numpy()
