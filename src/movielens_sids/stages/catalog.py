"""The `catalog` stage: MovieLens files (+ an optional enrichment file) -> ``catalog.parquet``.

One row per movie, sorted by ``movie_id`` (docs/outputs.md); see ``movielens_sids.data.catalog`` for
how each file is read and each column parsed. This module composes those columns into the table.

May import: data (the MovieLens readers), io, errors, settings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..data.catalog import (
    LINKS,
    MAX_REPORTED,
    MOVIES,
    RATINGS,
    TAGS,
    MovieLensSource,
    aggregate_tags,
    imdb_strings,
    open_source,
    parse_titles,
    read_table,
    split_genres,
)
from ..data.enrich import enrich_catalog
from ..errors import SidsError
from ..io import write_parquet
from ..settings import DataConfig

log = logging.getLogger(__name__)


def build_catalog(cfg: DataConfig) -> tuple[pa.Table, dict[str, Any]]:
    """Read the MovieLens files ``cfg`` names and return the catalog table and a summary.

    Writes nothing. Raises ``SidsError`` on any bad input.
    """
    src = open_source(cfg)
    assert src is not None
    try:
        return _build(src, cfg)
    finally:
        src.close()


def _movies(src: MovieLensSource, cfg: DataConfig) -> tuple[pd.DataFrame, int]:
    """The movies file without repeated ids, sorted by id, sampled by ``limit``; and how many it held."""
    movies = read_table(src, MOVIES, skip_bad_rows=cfg.skip_bad_rows)
    dup = movies["movieId"].duplicated()
    if dup.any():
        ids = ", ".join(map(str, movies.loc[dup, "movieId"].head(MAX_REPORTED)))
        if not cfg.skip_bad_rows:
            raise SidsError(f"{src.describe('movies')}: {int(dup.sum())} movieId(s) appear more than once ({ids}); "
                            "fix the file or pass --skip-bad-rows to keep the first of each")
        log.warning("%s: dropped %d repeated movieId(s) (%s)", src.describe("movies"), int(dup.sum()), ids)
        movies = movies[~dup]
    if movies.empty:
        raise SidsError(f"{src.describe('movies')} holds no movies: the catalog would be empty")
    movies = movies.sort_values("movieId", kind="stable").reset_index(drop=True)
    n_all = len(movies)
    if cfg.limit is not None and cfg.limit < n_all:
        rng = np.random.default_rng(cfg.seed)
        keep = np.sort(rng.choice(n_all, size=cfg.limit, replace=False))
        movies = movies.iloc[keep].reset_index(drop=True)
    return movies, n_all


def _ids_and_tags(src: MovieLensSource, cat: pd.DataFrame, ids: np.ndarray, skip: bool) -> pa.ListArray:
    """Adds the link columns (``_imdb_number``, ``tmdb_id``, ``imdb_id``) to ``cat``; returns the tags."""
    if src.has("tags"):
        tags = aggregate_tags(read_table(src, TAGS, skip_bad_rows=skip), ids)
    else:
        tags = pa.ListArray.from_arrays(pa.array(np.zeros(len(ids) + 1, np.int32)), pa.array([], pa.string()))
    imdb = pd.Series(pd.NA, index=cat.index, dtype="Int64")
    tmdb = pd.Series(pd.NA, index=cat.index, dtype="Int64")
    if src.has("links"):
        links = read_table(src, LINKS, skip_bad_rows=skip).drop_duplicates("movieId").set_index("movieId")
        imdb = links["imdbId"].reindex(ids).reset_index(drop=True)
        tmdb = links["tmdbId"].reindex(ids).reset_index(drop=True)
    cat["_imdb_number"] = imdb  # the join key of --enrich files that carry imdbId
    cat["tmdb_id"] = tmdb
    cat["imdb_id"] = imdb_strings(imdb)
    return tags


def _rating_columns(src: MovieLensSource, ids: np.ndarray, skip: bool) -> dict[str, pa.Array]:
    """``n_ratings`` and ``mean_rating`` per movie (``--rating-stats``)."""
    if not src.has("ratings"):
        raise SidsError(f"--rating-stats needs a ratings file, and {src.label} has none")
    r = read_table(src, RATINGS, skip_bad_rows=skip)
    g = r.groupby("movieId")["rating"].agg(["size", "mean"]).reindex(ids)
    return {"n_ratings": pa.array(g["size"].fillna(0).to_numpy(np.int64)),
            "mean_rating": pa.array(g["mean"].to_numpy(np.float64), from_pandas=True)}


def _nullable_int(values: pd.Series) -> pa.Array:
    return pa.array(values.to_numpy(dtype=np.float64, na_value=np.nan), pa.float64(), from_pandas=True).cast(pa.int64())


def _enrichment_column(col: pd.Series) -> pa.Array:
    text = col.dtype == object or pd.api.types.is_string_dtype(col)
    if text and len(col) and col.map(lambda v: isinstance(v, list)).all():
        return pa.array(col.tolist(), pa.list_(pa.string()))
    if text:
        return pa.array(col.tolist(), pa.string(), from_pandas=True)
    return pa.array(col, from_pandas=True)


def _build(src: MovieLensSource, cfg: DataConfig) -> tuple[pa.Table, dict[str, Any]]:
    movies, n_all = _movies(src, cfg)
    ids = movies["movieId"].to_numpy(dtype=np.int64)
    cat = parse_titles(movies["title"])
    cat.insert(0, "movie_id", ids)
    genres = split_genres(movies["genres"])
    tags = _ids_and_tags(src, cat, ids, cfg.skip_bad_rows)
    extra_cols = _rating_columns(src, ids, cfg.skip_bad_rows) if cfg.rating_stats else {}

    summary: dict[str, Any] = {"source": src.label, "format": src.fmt, "movies_in_source": n_all}
    enrich_cols: list[str] = []
    if cfg.enrich:
        cat, stats = enrich_catalog(cat, Path(cfg.enrich).expanduser())
        summary.update(stats)
        enrich_cols = stats["enrich_columns"]
        log.info("--enrich: %d of %d rows matched a movie (%d unmatched, %d without a usable %s); "
                 "%d of %d movies enriched", stats["enrich_rows_matched"], stats["enrich_rows"],
                 stats["enrich_rows_unmatched"], stats["enrich_rows_bad_key"], stats["enrich_key"],
                 stats["movies_enriched"], len(cat))

    columns: dict[str, pa.Array] = {
        "movie_id": pa.array(ids, pa.int64()),
        "title": pa.array(cat["title"].tolist(), pa.string()),
        "display_title": pa.array(cat["display_title"].tolist(), pa.string()),
        "year": _nullable_int(cat["year"]),
        "genres": genres,
        "tags": tags,
        "imdb_id": pa.array(cat["imdb_id"].tolist(), pa.string(), from_pandas=True),
        "tmdb_id": _nullable_int(cat["tmdb_id"]),
        **extra_cols,
        **{str(c): _enrichment_column(cat[c]) for c in enrich_cols},
    }
    table = pa.table(columns)
    summary.update({
        "n_movies": table.num_rows,
        "with_year": int(table.num_rows - table.column("year").null_count),
        "with_genres": int((pc.list_value_length(genres).to_numpy() > 0).sum()),
        "with_tags": int((pc.list_value_length(tags).to_numpy() > 0).sum()) if len(tags) else 0,
        "with_imdb_id": int(table.num_rows - table.column("imdb_id").null_count),
        "with_tmdb_id": int(table.num_rows - table.column("tmdb_id").null_count),
    })
    if cfg.limit is not None:
        summary["limit"], summary["seed"] = cfg.limit, cfg.seed
    return table, summary


def catalog_stage(run_dir: Path, cfg) -> dict:
    """Build ``run_dir/catalog.parquet`` from ``cfg.data``; nothing is written when the input is bad."""
    data: DataConfig = cfg.data
    table, summary = build_catalog(data)
    write_parquet(Path(run_dir) / "catalog.parquet", table,
                  metadata={"source": summary["source"], "summary": json.dumps(summary, sort_keys=True)})
    log.info("catalog: %d movies from %s (%d with year, %d with tags, %d with an IMDb id)", summary["n_movies"],
             summary["source"], summary["with_year"], summary["with_tags"], summary["with_imdb_id"])
    return summary

