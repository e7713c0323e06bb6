"""``embed --from FILE``: vectors made elsewhere, read and checked against the catalog before the embed stage
writes them as ``embeddings.parquet``.

A Parquet file with a ``movie_id`` (or ``movieId``) column and one list column of vectors, or a 2-D
``.npy`` with its movie ids in a second file (``--ids``: .npy, .txt or .csv). Every check fails with a
one-line ``SidsError`` that names the file: unreadable, no or ambiguous vector column, mixed dimensions,
duplicate ids, NaN or infinite values, ids missing from or foreign to the catalog, all-zero vectors to
normalise.

May import: artifacts (the vector column reader), io, errors; pandas and pyarrow on first use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifacts import vector_matrix
from .errors import SidsError
from .io import read_parquet


def load(path: Path, catalog_ids: np.ndarray, *, column: str | None = None, ids_path: Path | None = None,
         normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The vectors of ``path`` for exactly the catalog's movies: ids (N,) int64 sorted, vectors (N, D) float32
    (unit length with ``normalize``).

    Every catalog movie needs a vector (later stages give every catalog movie a SID) and every vector needs
    a catalog movie; either gap is an error rather than a silent subset.
    """
    ids, vectors = read_vectors(path, column=column, ids_path=ids_path)
    what = f"--from {path}"
    unknown = np.setdiff1d(ids, catalog_ids)
    if len(unknown):
        raise SidsError(f"{what}: {len(unknown)} movie ids are not in the catalog "
                        f"(e.g. {', '.join(map(str, unknown[:5]))})")
    missing = np.setdiff1d(catalog_ids, ids)
    if len(missing):
        raise SidsError(f"{what}: {len(missing)} catalog movies have no vector (e.g. "
                        f"{', '.join(map(str, missing[:5]))}); embeddings must cover every catalog movie")
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, 1)
        if (norms == 0).any():
            zero = ids[(norms[:, 0] == 0)]
            raise SidsError(f"{what}: {len(zero)} vectors are all zeros and cannot be normalized "
                            f"(e.g. movie {', '.join(map(str, zero[:5]))}); use --no-normalize to keep them")
        vectors = (vectors / norms).astype(np.float32)
    order = np.argsort(ids, kind="stable")
    return ids[order], np.ascontiguousarray(vectors[order])


def _read_ids(path: Path) -> np.ndarray:
    """Movie ids for a .npy of vectors: .npy, .txt (one per line) or .csv (a movie_id/movieId column)."""
    what = f"--ids {path}"
    if not path.is_file():
        raise SidsError(f"{what}: file not found")
    try:
        if path.suffix == ".npy":
            ids = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            import pandas as pd

            df = pd.read_csv(path)
            col = next((c for c in ("movie_id", "movieId") if c in df.columns), None)
            if col is None and len(df.columns) == 1:
                col = df.columns[0]
            if col is None:
                raise SidsError(f"{what}: expected a movie_id column, found {', '.join(map(str, df.columns))}")
            ids = df[col].to_numpy()
        else:
            lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
            ids = np.array([int(s) for s in lines if s], dtype=np.int64)
    except SidsError:
        raise
    except Exception as e:
        raise SidsError(f"{what}: cannot read movie ids ({type(e).__name__}: {' '.join(str(e).split())})") from e
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer)
                             or (np.issubdtype(ids.dtype, np.floating) and np.all(np.mod(ids, 1) == 0))):
        raise SidsError(f"{what}: expected one integer movie id per row, got {ids.dtype} of shape {ids.shape}")
    return ids.astype(np.int64)


def read_vectors(path: Path, *, column: str | None = None, ids_path: Path | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Read vectors to import: Parquet with ``movie_id`` + a vector column, or ``.npy`` + an id file.

    Returns:
        ids (N,) int64 and vectors (N, D) float32, in the file's order.

    Raises:
        SidsError: unreadable file, no/ambiguous vector column, mixed dimensions, duplicate ids,
            NaN or infinite values.
    """
    what = f"--from {path}"
    if not path.is_file():
        raise SidsError(f"{what}: file not found")
    if path.suffix == ".npy":
        if ids_path is None:
            raise SidsError(f"{what}: a .npy holds no movie ids; give them with --ids FILE (.npy, .txt or .csv)")
        ids, vectors = _read_npy_vectors(path, ids_path, what)
    else:
        if ids_path is not None:
            raise SidsError(f"--ids {ids_path}: only used with a .npy; a Parquet file has its own movie_id column")
        ids, vectors = _read_parquet_vectors(path, column, what)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise SidsError(f"{what}: {len(dup)} movie ids appear more than once (e.g. {', '.join(map(str, dup[:5]))})")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise SidsError(f"{what}: {int(bad.sum())} vectors contain NaN or infinite values "
                        f"(e.g. movie {', '.join(map(str, ids[bad][:5]))})")
    return ids, vectors


def _read_npy_vectors(path: Path, ids_path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D ``.npy`` of numbers and its movie ids from ``ids_path``: ids (N,) int64, vectors (N, D) float32."""
    try:
        vectors = np.load(path, allow_pickle=False)
    except Exception as e:
        raise SidsError(f"{what}: not a readable .npy of numbers ({type(e).__name__}: "
                        f"{' '.join(str(e).split())})") from e
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number) or vectors.shape[1] == 0:
        raise SidsError(f"{what}: expected a 2-D array (movies x dimension) of numbers, "
                        f"got {vectors.dtype} of shape {vectors.shape}")
    ids = _read_ids(ids_path)
    if len(ids) != len(vectors):
        raise SidsError(f"{what}: {len(vectors)} vectors but {len(ids)} movie ids in {ids_path}")
    return ids, vectors.astype(np.float32)


def _read_parquet_vectors(path: Path, column: str | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Parquet with a ``movie_id`` (or ``movieId``) column and one list column of vectors (or ``column``)."""
    import pyarrow as pa

    table = read_parquet(path, "embed")
    id_col = next((c for c in ("movie_id", "movieId") if c in table.column_names), None)
    if id_col is None:
        raise SidsError(f"{what}: no movie_id column (columns: {', '.join(table.column_names)})")
    if column is None:
        lists = [f.name for f in table.schema if f.name != id_col and (
            pa.types.is_list(f.type) or pa.types.is_large_list(f.type) or pa.types.is_fixed_size_list(f.type))]
        if len(lists) != 1:
            found = ", ".join(lists) if lists else "none"
            raise SidsError(f"{what}: cannot tell which column holds the vectors (list columns: {found}); "
                            "name it with --from-column")
        column = lists[0]
    elif column not in table.column_names:
        raise SidsError(f"{what}: no column {column!r} (columns: {', '.join(table.column_names)})")
    id_arr = table.column(id_col)
    if not pa.types.is_integer(id_arr.type) or id_arr.null_count:
        raise SidsError(f"{what}: {id_col} must be non-null integers, got {id_arr.type}")
    return id_arr.to_numpy().astype(np.int64), vector_matrix(table.column(column), f"{what} column {column}")
