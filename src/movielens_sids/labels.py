"""Names a person can read for SID prefixes: every level-1 code and every level-2 code under it.

A label is made from the prefix's movies only (no randomness, so the same run folder always gives
the same labels):

- the genres and tags that are most over-represented under the prefix, by lift over the catalog
  (share under the prefix / share in the catalog), among those at least ``min_support`` of its
  movies carry (and at least 2), so that a tag one movie has does not name a whole code;
- the year range, from the 10th to the 90th percentile of the known years (a few remakes or
  re-releases do not stretch it);
- three representative titles: the movies whose embeddings are nearest (cosine) to the prefix's
  mean embedding.

``build_labels`` is pure (arrays in, a table out); ``run_labels`` reads a run folder. The evaluate
stage writes the table next to the report as ``labels.parquet``; ``reports`` render it.

Shapes: N movies, D embedding dim, T SID tokens per movie.

May import: artifacts, errors, io.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts
from .errors import SidsError
from .io import read_parquet

log = logging.getLogger(__name__)

LABELS_FILE = "labels.parquet"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class LabelSettings:
    """How labels are made."""

    genres: int = 2
    """Genres named per label, by lift."""
    tags: int = 3
    """Tags named per label, by lift."""
    titles: int = 3
    """Representative titles per label."""
    min_support: float = 0.15
    """A genre or tag names a prefix only if at least this share of its movies (and at least 2) carry it."""
    year_quantiles: tuple[float, float] = (0.1, 0.9)
    """The year range shown: these quantiles of the prefix's known years."""


def prefix_string(prefix: tuple[int, ...]) -> str:
    """``(12, 3)`` -> ``<a_12><b_3>``."""
    return "".join(f"<{LETTERS[i]}_{int(c)}>" for i, c in enumerate(prefix))


def _indicator(values: list[list[str]]) -> tuple[Any, list[str]]:
    """(N, V) sparse 0/1 matrix of which movie carries which value, and the sorted value names."""
    from scipy import sparse

    names = sorted({v for vs in values for v in vs})
    col = {v: i for i, v in enumerate(names)}
    rows = [i for i, vs in enumerate(values) for v in dict.fromkeys(vs)]
    cols = [col[v] for vs in values for v in dict.fromkeys(vs)]
    m = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(values), len(names)))
    return m, names


def _top_by_lift(counts, sizes: np.ndarray, base: np.ndarray, names: list[str], n_top: int,
                 min_support: float) -> list[list[str]]:
    """Per group, up to n_top names by lift with enough support. counts: (G, V) sparse CSR, sizes (G,), base (V,)."""
    out = []
    need = np.maximum(2, np.ceil(min_support * sizes))  # (G,)
    for g in range(len(sizes)):
        lo, hi = counts.indptr[g], counts.indptr[g + 1]
        cols, c = counts.indices[lo:hi], counts.data[lo:hi]
        keep = c >= need[g]
        cols, c = cols[keep], c[keep]
        lift = c / sizes[g] / base[cols]
        # lift first, then support, then the name: a total order, so ties never depend on the input order
        order = sorted(range(len(cols)), key=lambda v: (-lift[v], -c[v], names[cols[v]]))
        out.append([names[cols[v]] for v in order[:n_top]])
    return out


def _year_ranges(years: np.ndarray, group: np.ndarray, n_groups: int, q: tuple[float, float]) -> np.ndarray:
    """(G, 2) the q quantiles (nearest rank) of each group's known years; -1 where a group has none."""
    known = ~np.isnan(years)
    g, y = group[known], years[known]
    order = np.lexsort((y, g))
    g, y = g[order], y[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full((n_groups, 2), -1, dtype=np.int64)
    has = counts > 0
    for j, quant in enumerate(q):
        idx = starts + np.rint(quant * np.maximum(counts - 1, 0)).astype(np.int64)
        out[has, j] = y[idx[has]].astype(np.int64)
    return out


CHUNK = 65536
"""Rows converted to float64 at a time: no N x D float64 copy is made."""


def _row_norms(x: np.ndarray) -> np.ndarray:
    """(N, 1) float64 norms of the rows of x (N, D), at least 1e-12; by chunks of rows."""
    out = np.empty((len(x), 1))
    for a in range(0, len(x), CHUNK):
        out[a:a + CHUNK] = np.linalg.norm(np.asarray(x[a:a + CHUNK], dtype=np.float64), axis=1, keepdims=True)
    return np.maximum(out, 1e-12)


def _unit_rows(x: np.ndarray, norms: np.ndarray, a: int, b: int) -> np.ndarray:
    """Rows a..b of x as float64 unit vectors; norms: (N, 1) from ``_row_norms``."""
    return np.asarray(x[a:b], dtype=np.float64) / norms[a:b]


def _score_to_centre(x: np.ndarray, norms: np.ndarray, group: np.ndarray, member: Any) -> np.ndarray:
    """(N,) each movie's cosine to its group's mean direction, up to the group's scale.

    x: (N, D); norms: (N, 1) its row norms (``_row_norms``); group: (N,) group of each movie; member: (G, N)
    sparse 0/1. In float64, by chunks of rows.
    """
    centre = np.zeros((member.shape[0], np.shape(x)[1]))  # (G, D): sums; the direction is all cosine needs
    member = member.tocsc()  # column slices in O(their size)
    for a in range(0, len(x), CHUNK):
        centre += member[:, a:a + CHUNK] @ _unit_rows(x, norms, a, a + CHUNK)
    return np.concatenate([(_unit_rows(x, norms, a, a + CHUNK) * centre[group[a:a + CHUNK]]).sum(1)
                           for a in range(0, len(x), CHUNK)] or [np.zeros(0)])


def short_label(genres: list[str], tags: list[str], years: tuple[int | None, int | None]) -> str:
    """``Sci-Fi, Action · cyberpunk, dystopia · 1982–2003`` (parts that are empty are left out)."""
    parts = []
    if genres:
        parts.append(", ".join(genres))
    if tags:
        parts.append(", ".join(tags))
    lo, hi = years
    if lo is not None:
        parts.append(str(lo) if lo == hi else f"{lo}–{hi}")
    return " · ".join(parts) or "(no genres, tags or years)"


def build_labels(tokens: np.ndarray, x: np.ndarray, titles: list[str], genres: list[list[str]],
                 years: list[Any], tags: list[list[str]] | None = None, *, depth: int = 2,
                 settings: LabelSettings = LabelSettings()) -> list[dict[str, Any]]:
    """A label for every SID prefix of length 1..depth that some movie has.

    Args:
        tokens: (N, T) SID tokens (T >= depth). x: (N, D) embeddings.
        titles, genres, years, tags: per movie (tags None or empty lists when the catalog has none).
        depth: the longest prefix labelled.

    Returns:
        One dict per prefix, sorted by prefix: ``level``, ``prefix`` (list of codes), ``sid_prefix``,
        ``n_movies``, ``genres``, ``tags``, ``year_min``, ``year_max``, ``titles``, ``label``.
    """
    from scipy import sparse

    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    yr = np.array([np.nan if y is None or (isinstance(y, float) and math.isnan(y)) else float(y) for y in years])
    g_mat, g_names = _indicator(genres)
    t_mat, t_names = _indicator(tags or [[] for _ in range(n)])
    g_base = np.asarray(g_mat.sum(0)).ravel() / max(n, 1)
    t_base = np.asarray(t_mat.sum(0)).ravel() / max(n, 1)
    norms = _row_norms(x)  # (N, 1): the same at every level
    out: list[dict[str, Any]] = []
    for level in range(1, min(depth, tokens.shape[1]) + 1):
        prefixes, group = np.unique(tokens[:, :level], axis=0, return_inverse=True)
        group = group.reshape(-1)

        member = sparse.csr_matrix((np.ones(n), (group, np.arange(n))), shape=(len(prefixes), n))  # (G, N)
        sizes = np.bincount(group, minlength=len(prefixes)).astype(np.float64)
        top_g = _top_by_lift((member @ g_mat).tocsr(), sizes, g_base, g_names, settings.genres,
                             settings.min_support)
        top_t = _top_by_lift((member @ t_mat).tocsr(), sizes, t_base, t_names, settings.tags,
                             settings.min_support) if t_names else [[] for _ in prefixes]
        score = _score_to_centre(x, norms, group, member)  # (N,)
        order = np.lexsort((np.arange(n), -score, group))  # by group, nearest first, then by row
        starts = np.searchsorted(group[order], np.arange(len(prefixes)))
        ranges = _year_ranges(yr, group, len(prefixes), settings.year_quantiles)
        for g, prefix in enumerate(prefixes):
            rows = order[starts[g]:starts[g] + min(settings.titles, int(sizes[g]))]
            lo, hi = (None, None) if ranges[g, 0] < 0 else (int(ranges[g, 0]), int(ranges[g, 1]))
            p = tuple(int(c) for c in prefix)
            out.append({"level": level, "prefix": list(p), "sid_prefix": prefix_string(p), "n_movies": int(sizes[g]),
                        "genres": top_g[g], "tags": top_t[g], "year_min": lo, "year_max": hi,
                        "titles": [titles[i] for i in rows], "label": short_label(top_g[g], top_t[g], (lo, hi))})
    out.sort(key=lambda r: r["prefix"])
    return out


def labels_table(labels: list[dict[str, Any]]):
    """The ``labels.parquet`` table (one row per prefix)."""
    import pyarrow as pa

    cols = ("level", "prefix", "sid_prefix", "n_movies", "label", "genres", "tags", "year_min", "year_max", "titles")
    types = {"level": pa.int8(), "prefix": pa.list_(pa.int32()), "sid_prefix": pa.string(), "n_movies": pa.int64(),
             "label": pa.string(), "genres": pa.list_(pa.string()), "tags": pa.list_(pa.string()),
             "year_min": pa.int32(), "year_max": pa.int32(), "titles": pa.list_(pa.string())}
    return pa.table({c: pa.array([r[c] for r in labels], type=types[c]) for c in cols})


def by_prefix(labels: list[dict[str, Any]]) -> dict[tuple[int, ...], dict[str, Any]]:
    """The labels keyed by prefix tuple."""
    return {tuple(r["prefix"]): r for r in labels}


def run_labels(run_dir: Path, *, settings: LabelSettings = LabelSettings()) -> list[dict[str, Any]]:
    """The labels of a run folder, made from its catalog, embeddings and SIDs (read through ``artifacts``)."""
    run_dir = Path(run_dir)
    catalog = artifacts.read_catalog(run_dir, ("movie_id", "title", "year", "genres"))
    ids = catalog.column("movie_id").to_numpy()
    emb, sids = artifacts.read_embeddings(run_dir), artifacts.read_sids(run_dir)
    artifacts.check_same_movies(ids, run_dir / artifacts.CATALOG, emb.movie_ids, emb.path, "embed")
    artifacts.check_same_movies(ids, run_dir / artifacts.CATALOG, sids.movie_ids, sids.path, "assign")
    return catalog_labels(catalog, sids.tokens, emb.x, settings=settings)


def catalog_labels(catalog, tokens: np.ndarray, x: np.ndarray, *, settings: LabelSettings = LabelSettings()
                   ) -> list[dict[str, Any]]:
    """The labels of the SIDs ``tokens`` (N, T) and embeddings ``x`` (N, D) of a catalog table's movies (same
    order, sorted by movie_id), for a caller that has read them already."""
    tags = catalog.column("tags").to_pylist() if "tags" in catalog.column_names else None
    return build_labels(tokens, x, artifacts.movielens_titles(catalog),
                        [g or [] for g in catalog.column("genres").to_pylist()], catalog.column("year").to_pylist(),
                        [t or [] for t in tags] if tags is not None else None, settings=settings)


def read_labels(run_dir: Path) -> list[dict[str, Any]] | None:
    """``labels.parquet`` of a run folder when evaluate wrote one that matches its SIDs, else None."""
    path = Path(run_dir) / LABELS_FILE
    sid_path = Path(run_dir) / "sids.parquet"
    if not path.is_file() or (sid_path.is_file() and path.stat().st_mtime < sid_path.stat().st_mtime):
        return None
    return read_parquet(path, "evaluate").to_pylist()


def labels_for_run(run_dir: Path) -> dict[tuple[int, ...], dict[str, Any]]:
    """The run folder's labels by prefix: ``labels.parquet`` when evaluate wrote it for these SIDs, else
    made now (`run_labels`); empty when the folder lacks what they are made from (a lookup needs only
    the catalog and the SIDs, so it goes on without names)."""
    labels = read_labels(run_dir)
    if labels is None:
        try:
            labels = run_labels(run_dir)
        except SidsError as e:
            log.info("no code labels: %s", e)
            return {}
    return by_prefix(labels)


def prefix_lines(labels: dict[tuple[int, ...], dict[str, Any]], prefix: tuple[int, ...] | list[int]) -> list[str]:
    """``<a_12>  154 movies  Sci-Fi, Action · 1982–2003  (e.g. ...)`` for each labelled prefix of ``prefix``
    (levels 1 and 2), shortest first."""
    out = []
    for d in range(1, len(prefix) + 1):
        r = labels.get(tuple(int(c) for c in prefix[:d]))
        if r is not None:
            out.append(f"{r['sid_prefix']}  {r['n_movies']:,} movies  {r['label']}  (e.g. {'; '.join(r['titles'])})")
    return out


def map_labels(labels: dict[tuple[int, ...], dict[str, Any]], tokens: np.ndarray, coords: np.ndarray
               ) -> dict[str, Any]:
    """The map's label data (HTML-escaped): ``labels`` {first code: label}, ``labels2`` {"c1,c2": label}
    for the drawn movies, and ``centres`` {x, y, text}: each first code's short name at the median of
    its movies' map coordinates. tokens: (N, T) of the drawn movies, coords: (N, 2)."""
    import html

    first = tokens[:, 0]
    lab1 = {int(c): html.escape(labels[(int(c),)]["label"]) for c in np.unique(first) if (int(c),) in labels}
    lab2 = {}
    if tokens.shape[1] > 1:
        for a, b in np.unique(tokens[:, :2], axis=0).tolist():
            if (a, b) in labels:
                lab2[f"{a},{b}"] = html.escape(labels[(a, b)]["label"])
    cx, cy, text = [], [], []
    for c in sorted(lab1):
        pts = coords[first == c]
        cx.append(round(float(np.median(pts[:, 0])), 3))
        cy.append(round(float(np.median(pts[:, 1])), 3))
        genres = labels[(c,)]["genres"][:2] or labels[(c,)]["tags"][:1]
        text.append(html.escape(f"a_{c} " + (" / ".join(genres) if genres else labels[(c,)]["label"])))
    return {"labels": lab1, "labels2": lab2, "centres": {"x": cx, "y": cy, "text": text}}
