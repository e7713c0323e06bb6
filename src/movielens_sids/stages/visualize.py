"""``visualize``: ``visualization.html``, an interactive UMAP map of the catalog coloured by Semantic ID.

One self-contained page: plotly.js is inlined and nothing is fetched from the
network (no CDN, no MathJax, no web fonts), so it opens from a laptop, an e-mail attachment or a
Hub repo alike. The points are one WebGL (``scattergl``) trace coloured by first token, so a
catalog the size of MovieLens-32M stays responsive; hovering shows title, year, genres and the full
SID. A drop-down highlights one first-token cluster and colours it by second token, and a search
box marks movies by title. Every string that comes from the data is HTML-escaped before plotly
renders it (plotly's hover labels understand a few HTML tags), so a title like
``<img src=x onerror=alert(1)>`` is shown as text and runs nothing.

UMAP (seeded, cosine) runs on the first ``pca_dims`` principal components of the embeddings
(default 50), with the exact k-NN graph of those vectors (FAISS's flat search) handed to it, so that
numba never compiles pynndescent's approximate search (a minute of every cold process). A catalog
larger than ``sample`` (default 100,000) is drawn as a seeded sample of that many movies, which
keeps UMAP's time and the page's size bounded; the page's header and the log say so. The
coordinates are cached in ``.cache/`` keyed by the embeddings' hash, the UMAP settings, how the
k-NN graph was built and the sampled rows, so re-running after a new ``assign`` only redraws.

May import: artifacts, io, errors, settings, labels, reports.map_page; umap, sklearn and faiss on
first use.
Never another stage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifacts import check_same_movies, movielens_titles, read_catalog, read_embeddings, read_sids
from ..errors import SidsError
from ..io import atomic_path, file_hash, write_text
from ..labels import labels_for_run
from ..reports.map_page import render_page
from ..settings import VisualizeConfig

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)


CACHE_DIR = ".cache"
KNN_GRAPH = "exact-cosine"
"""How UMAP's k-NN graph is built (part of the cache key: maps from pynndescent's approximate graph differ)."""


# --------------------------------------------------------------------------------------------------
# Inputs


def _load(run_dir: Path) -> dict[str, Any]:
    """Catalog, embeddings and SIDs of a run folder, aligned by movie_id and validated (writes nothing)."""
    catalog = read_catalog(run_dir, ("movie_id", "title", "year", "genres"))
    emb = read_embeddings(run_dir)
    sids = read_sids(run_dir)
    ids = catalog.column("movie_id").to_numpy().astype(np.int64)
    cat_path = Path(run_dir) / "catalog.parquet"
    check_same_movies(ids, cat_path, emb.movie_ids, emb.path, "embed")
    check_same_movies(ids, cat_path, sids.movie_ids, sids.path, "assign")
    shown = catalog.column("display_title").to_pylist() if "display_title" in catalog.column_names else None
    titles = catalog.column("title").to_pylist()
    return {
        "x": emb.x,
        "movie_ids": ids,
        "titles": movielens_titles(catalog),
        "display": [(d or t) for d, t in zip(shown or titles, titles)],
        "years": catalog.column("year").to_pylist(),
        "genres": [g or [] for g in catalog.column("genres").to_pylist()],
        "tokens": sids.tokens,
        "emb_path": emb.path,
    }


# --------------------------------------------------------------------------------------------------
# UMAP


def sample_indices(n: int, sample: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the movies to draw: all of them, or a seeded sample of ``sample``."""
    if sample is None or sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def umap_coordinates(x: np.ndarray, cfg: VisualizeConfig) -> np.ndarray:
    """(N, D) embeddings -> (N, 2) float32 UMAP coordinates (PCA first when ``cfg.pca_dims``)."""
    import umap  # slow import (numba): only when a map is computed

    _cache_umap_kernels()
    n = len(x)
    if n <= cfg.n_neighbors:
        raise SidsError(f"UMAP needs more movies ({n}) than visualize.n_neighbors ({cfg.n_neighbors}); "
                        "lower it with --n-neighbors")
    z = x
    if cfg.pca_dims and x.shape[1] > cfg.pca_dims and n > cfg.pca_dims:
        from sklearn.decomposition import PCA

        z = PCA(n_components=cfg.pca_dims, random_state=cfg.seed).fit_transform(x)  # (N, pca_dims)
    graph = cosine_knn_graph(z, cfg.n_neighbors) if cfg.metric == "cosine" else (None, None, None)
    reducer = umap.UMAP(n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, metric=cfg.metric,
                        n_epochs=cfg.n_epochs, low_memory=cfg.low_memory, random_state=cfg.seed, n_jobs=1,
                        precomputed_knn=graph)
    with warnings.catch_warnings():  # no search index: we never call transform
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        return np.asarray(reducer.fit_transform(z), dtype=np.float32)


@functools.cache  # once per process
def _cache_umap_kernels() -> None:
    """Keep numba's compilation of UMAP's fuzzy-graph kernels on disk (numba's own cache, beside umap's
    sources or in the user's cache folder): compiled afresh in every process they took 6-7 s of the
    demo's 14 s map. umap-learn compiles them without ``cache=True`` (its PR #1257 proposes it); a
    kernel this version lacks, or one numba finds no writable cache folder for, compiles as before."""
    import umap.umap_ as uu

    for name in ("smooth_knn_dist", "compute_membership_strengths"):
        kernel = getattr(uu, name, None)
        if hasattr(kernel, "enable_caching"):  # a numba dispatcher
            try:
                kernel.enable_caching()
            except (RuntimeError, OSError) as e:  # "no locator available": nowhere to write
                log.debug("numba cache for %s: %s", name, e)


def cosine_knn_graph(z: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's k-NN graph, exact: FAISS's flat (exhaustive) inner-product search of the unit vectors. Each
    point first (distance 0), then its ``n_neighbors - 1`` nearest others by cosine distance (1 - cosine); an
    exact duplicate of a point counts as one of its neighbours. UMAP would otherwise build the graph with
    pynndescent, approximately, after numba compiles NN-descent afresh in every process.

    Returns:
        (N, n_neighbors) int64 indices and (N, n_neighbors) float32 distances, nearest first.
    """
    import faiss

    n, k = len(z), min(n_neighbors, len(z))
    zn = np.array(z, dtype=np.float32, order="C")  # (N, d) a copy: the input is not modified
    faiss.normalize_L2(zn)  # unit rows in place (a zero row stays zero)
    index = faiss.IndexFlatIP(zn.shape[1])
    index.add(zn)
    sims, nbrs = index.search(zn, k)  # (N, k) nearest first: the point itself, or a duplicate before it
    drop = nbrs == np.arange(n)[:, None]  # (N, k) the point's own entry
    drop[~drop.any(1), -1] = True  # not found (duplicates took every place): the farthest goes instead
    keep = ~drop
    others = nbrs[keep].reshape(n, k - 1).astype(np.int64)  # (N, k-1)
    dist = np.maximum(1.0 - sims[keep].reshape(n, k - 1), 0.0)  # (N, k-1)
    idx = np.concatenate([np.arange(n)[:, None], others], axis=1)  # (N, k)
    return idx, np.concatenate([np.zeros((n, 1)), dist], axis=1).astype(np.float32)


def _umap_cache_key(emb_hash: str, cfg: VisualizeConfig, idx: np.ndarray) -> str:
    settings = {k: v for k, v in asdict(cfg).items() if k in (
        "n_neighbors", "min_dist", "metric", "pca_dims", "n_epochs", "low_memory", "seed")}
    key = {"embeddings": emb_hash, "umap": settings, "knn": KNN_GRAPH}
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    h.update(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


def cached_umap(x: np.ndarray, cfg: VisualizeConfig, *, emb_hash: str, idx: np.ndarray,
                cache_dir: Path | None) -> tuple[np.ndarray, bool]:
    """UMAP coordinates of ``x[idx]``, from ``cache_dir`` when the same embeddings and settings were mapped."""
    path = None
    if cache_dir is not None:
        path = cache_dir / f"umap-{_umap_cache_key(emb_hash, cfg, idx)}.npy"
        if path.is_file():
            try:
                coords = np.load(path, allow_pickle=False)
                if coords.shape == (len(idx), 2) and np.isfinite(coords).all():
                    log.info("UMAP coordinates read from %s", path)
                    return coords, True
            except (OSError, ValueError):
                pass
            log.info("ignoring invalid cache %s", path)
    t0 = time.perf_counter()
    coords = umap_coordinates(x[idx], cfg)
    log.info("UMAP of %d movies in %.1fs", len(idx), time.perf_counter() - t0)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, coords)
    return coords, False


# --------------------------------------------------------------------------------------------------
# The page


def visualize_stage(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Compute (or read from the cache) the UMAP map of a run folder and write ``visualization.html``.

    Returns:
        ``n_points`` (movies drawn), ``n_movies`` (in the catalog), ``html_bytes``, ``umap_cached``.
    """
    run_dir = Path(run_dir)
    vcfg: VisualizeConfig = cfg.visualize
    data = _load(run_dir)
    n = len(data["x"])
    idx = sample_indices(n, vcfg.sample, vcfg.seed)
    if len(idx) <= vcfg.n_neighbors:
        raise SidsError(f"UMAP needs more movies ({len(idx)}) than visualize.n_neighbors ({vcfg.n_neighbors}); "
                        "lower it with --n-neighbors")
    coords, cached = cached_umap(data["x"], vcfg, emb_hash=file_hash(data["emb_path"]), idx=idx,
                                 cache_dir=(run_dir / CACHE_DIR) if vcfg.cache else None)
    page = render_page(data, idx, coords, title=f"Semantic IDs map: {run_dir.resolve().name}",
                       point_size=vcfg.point_size, labels=labels_for_run(run_dir))
    write_text(run_dir / "visualization.html", page)
    if len(idx) < n:
        log.info("the map shows a seeded sample of %d of the %d movies (visualize.sample)", len(idx), n)
    return {"n_points": int(len(idx)), "n_movies": n, "html_bytes": len(page.encode("utf-8")), "umap_cached": cached}
