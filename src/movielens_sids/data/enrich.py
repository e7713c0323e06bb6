"""``catalog --enrich FILE``: extra text columns (plot, director, stars, ...) joined onto the catalog.

A CSV, TSV, Parquet or JSON(L) file joined on ``movieId``, ``imdbId`` or ``tmdbId``; list-like columns
(``LIST_COLUMNS``, or JSON lists) become lists of strings. Columns the catalog already has are ignored
with a warning, and a key seen twice keeps its first row.

May import: data.catalog (the catalog's columns), errors; pandas and numpy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import SidsError
from .catalog import CATALOG_COLUMNS

log = logging.getLogger(__name__)

LIST_COLUMNS = frozenset({"stars", "cast", "actors", "directors", "writers", "keywords", "countries",
                          "languages", "companies", "creators"})
"""Enrichment columns read as lists even when a CSV gives them as ``a|b|c`` strings."""


_KEYS = {"movieid": "movie_id", "imdbid": "_imdb_number", "tmdbid": "tmdb_id"}
_RESERVED = (*CATALOG_COLUMNS, "n_ratings", "mean_rating", "_imdb_number")


def _read_enrichment(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SidsError(f"--enrich file {path} not found")
    compressed = path.suffix.lower() in (".gz", ".bz2", ".zst")
    suffix = "".join(path.suffixes[-2:]).lower() if compressed else path.suffix.lower()
    try:
        if suffix.startswith((".csv", ".tsv")):
            return pd.read_csv(path, sep="\t" if suffix.startswith(".tsv") else ",", dtype=str, keep_default_na=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix.startswith((".jsonl", ".ndjson")):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix.startswith(".json"):
            return pd.read_json(path, dtype=False)
    except Exception as e:  # pandas/pyarrow raise many types for unreadable files
        raise SidsError(f"--enrich file {path} cannot be read ({type(e).__name__}: {e})") from e
    raise SidsError(f"--enrich file {path}: unknown format {path.suffix!r} (use .csv, .tsv, .parquet or .jsonl)")


def _is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _as_list(v: Any, list_like: bool) -> list[str] | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if _is_list(v):
        return [str(x).strip() for x in v if x is not None and str(x).strip()]
    s = str(v).strip()
    if s.startswith("["):
        with contextlib.suppress(ValueError):
            parsed = json.loads(s)
            if isinstance(parsed, list):
                return [str(x).strip() for x in parsed if x is not None and str(x).strip()]
    if list_like:
        return [x.strip() for x in s.split("|") if x.strip()]
    return [s] if s else []


def _looks_like_json_lists(col: pd.Series) -> bool:
    vals = col.dropna()
    vals = vals[vals.astype(str).str.strip() != ""]
    if vals.empty or not vals.astype(str).str.match(r"^\s*\[.*\]\s*$").all():
        return False
    try:
        return all(isinstance(json.loads(v), list) for v in vals.head(100))
    except ValueError:
        return False


def enrich_catalog(cat: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Join an enrichment file onto the catalog; return the new frame and match counts.

    The file is joined on the first of ``movieId``, ``imdbId``, ``tmdbId`` (any case, ``_`` ignored)
    that it has; every other column is added. List-like columns (JSON lists, Parquet/JSON arrays, or
    ``a|b`` strings in columns named like ``stars``) become ``list<str>``; text becomes ``str``.
    """
    df = _read_enrichment(path)
    by_norm = {re.sub(r"[_\s-]", "", str(c)).lower(): c for c in df.columns}
    key_norm = next((k for k in _KEYS if k in by_norm), None)
    if key_norm is None:
        raise SidsError(f"--enrich file {path} has no movieId, imdbId or tmdbId column "
                        f"(columns: {', '.join(map(str, df.columns[:10]))})")
    key_col, cat_key = by_norm[key_norm], _KEYS[key_norm]
    raw_key = df[key_col].astype(object).astype(str).str.strip()
    if cat_key == "_imdb_number":
        raw_key = raw_key.str.replace(r"^tt", "", regex=True, case=False)
    key = pd.to_numeric(raw_key.str.replace(r"\.0$", "", regex=True), errors="coerce")
    bad_key = key.isna() | (key != key.round())
    extra = [c for c in df.columns if re.sub(r"[_\s-]", "", str(c)).lower() not in _KEYS]
    clash = [c for c in extra if c in _RESERVED]
    if clash:
        log.warning("--enrich: ignoring column(s) already in the catalog: %s", ", ".join(clash))
    extra = [c for c in extra if c not in _RESERVED]
    df = df.loc[~bad_key, extra].assign(_key=key[~bad_key].astype("int64"))
    duplicated = df["_key"].duplicated()
    if duplicated.any():
        log.warning("--enrich: %d row(s) repeat a %s already seen; the first one is used",
                    int(duplicated.sum()), key_col)
        df = df[~duplicated]
    cat_keys = cat[cat_key].dropna().astype("int64")
    if cat_keys.empty:
        log.warning("--enrich: joining on %s, but no movie of the catalog has one (is the links file missing?)",
                    key_col)
    matched_rows = df["_key"].isin(cat_keys.to_numpy())
    stats = {
        "enrich_file": str(path),
        "enrich_key": str(key_col),
        "enrich_rows": int(len(bad_key)),
        "enrich_rows_matched": int(matched_rows.sum()),
        "enrich_rows_unmatched": int((~matched_rows).sum() + bad_key.sum()),
        "enrich_rows_bad_key": int(bad_key.sum()),
        "enrich_columns": [str(c) for c in extra],
    }
    out = cat.merge(df.rename(columns={"_key": cat_key}), how="left", on=cat_key, validate="many_to_one")
    stats["movies_enriched"] = int(out[cat_key].isin(df["_key"].to_numpy()).sum())
    for c in extra:
        col = out[c]
        list_like = str(c).lower() in LIST_COLUMNS
        text = col.dtype == object or pd.api.types.is_string_dtype(col)
        if text and (list_like or col.map(_is_list).any() or _looks_like_json_lists(col)):
            out[c] = col.map(lambda v, ll=list_like: _as_list(v, ll) or [])
        elif text:
            s = col.astype(object).where(col.notna(), None)
            out[c] = s.map(lambda v: None if v is None or str(v).strip() == "" else str(v).strip())
    return out, stats
