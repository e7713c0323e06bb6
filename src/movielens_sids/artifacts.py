"""One reader and validator per run-folder artifact: catalog, embeddings, SIDs, the model folder, stage records.

Every stage reads what an earlier stage wrote through these functions, so every reader checks the
same things and fails with the same one-line ``SidsError`` that names the file and the command to
run again. Readers return arrays sorted by ``movie_id`` (the order every stage writes).

May import: errors, io, model (for the model folder); collab on first use (the fused input). Never a stage module.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import model as tokenizers  # torch is imported on first use of tokenizers.load_tokenizer
from .errors import SidsError
from .io import memo_hash, parquet_metadata, read_parquet

if TYPE_CHECKING:
    from .model import RQVAE, RQKMeans

log = logging.getLogger(__name__)

CATALOG = "catalog.parquet"
EMBEDDINGS = "embeddings.parquet"
SIDS = "sids.parquet"
COLLAB = "collab.parquet"
COWATCH = "cowatch.parquet"
MODEL = "model"
MODEL_FILES = ("model/config.json", "model/model.safetensors")
RECORDS = ".stages"
"""Run-folder subfolder of the stage records (``<stage>.json``) that ``pipeline`` writes."""
WRITERS = {CATALOG: "catalog", EMBEDDINGS: "embed", MODEL: "train", SIDS: "assign", COLLAB: "collab",
           COWATCH: "collab"}
"""The stage that writes each artifact the readers check: its record holds the artifact's sha256."""


# ---------------------------------------------------------------------------------------------- helpers


def require_columns(table: pa.Table, path: Path, columns: tuple[str, ...], stage: str) -> None:
    """A ``SidsError`` naming the first missing column and the command that writes the file."""
    for c in columns:
        if c not in table.column_names:
            raise SidsError(f"{path} has no {c!r} column: run `movielens-sids {stage}` again")


def sorted_by_id(table: pa.Table) -> pa.Table:
    """``table`` sorted by ``movie_id`` (stable; returned as is when it already is)."""
    ids = table.column("movie_id").to_numpy()
    if len(ids) > 1 and (np.diff(ids) <= 0).any():
        return table.take(np.argsort(ids, kind="stable"))
    return table


def movie_ids(table: pa.Table, path: Path, stage: str) -> np.ndarray:
    """The ``movie_id`` column (N,) int64, checked: integers, no nulls, no repeats."""
    col = table.column("movie_id")
    if not pa.types.is_integer(col.type) or col.null_count:
        raise SidsError(f"{path}: movie_id must be a non-null integer column, got {col.type}")
    ids = col.to_numpy().astype(np.int64)
    if len(ids) > 1 and (np.diff(np.sort(ids)) == 0).any():
        raise SidsError(f"{path}: duplicate movie_id values: run `movielens-sids {stage}` again")
    return ids


def check_same_movies(ids: np.ndarray, path: Path, other: np.ndarray, other_path: Path, stage: str) -> None:
    """A ``SidsError`` naming the stage to re-run when ``other`` (sorted ids) are not ``ids`` (sorted ids)."""
    if len(other) != len(ids) or not np.array_equal(other, ids):
        n_missing, n_extra = len(np.setdiff1d(ids, other)), len(np.setdiff1d(other, ids))
        raise SidsError(f"{other_path} does not hold the movies of {path.name} ({n_missing} missing, {n_extra} "
                        f"extra): run `movielens-sids {stage}` again")


def vector_matrix(column: pa.ChunkedArray | pa.Array, what: str) -> np.ndarray:
    """A list / fixed-size-list column of numbers -> (N, D) float32 (writable); mixed lengths and nulls
    are ``SidsError``s naming ``what``."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise SidsError(f"{what}: expected a list of numbers per movie, got {t}")
    if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise SidsError(f"{what}: expected numbers, got lists of {t.value_type}")
    n = len(arr)
    if arr.null_count:
        raise SidsError(f"{what}: {arr.null_count} movies have no vector (null)")
    if pa.types.is_fixed_size_list(t):
        dim = t.list_size
    else:
        dims = np.unique(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
        if len(dims) > 1:
            raise SidsError(f"{what}: vectors of mixed dimensions ({', '.join(map(str, dims[:5]))}); "
                            "every vector must have the same length")
        dim = int(dims[0]) if n else 0
    if n and dim == 0:
        raise SidsError(f"{what}: vectors are empty (dimension 0)")
    flat = arr.flatten()
    if flat.null_count:
        raise SidsError(f"{what}: {flat.null_count} vector entries are null")
    with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf, which the callers reject by name
        x = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)
    return np.require(x, dtype=np.float32, requirements=["C", "W"])  # torch wants writable memory


def read_vector_file(path: Path, column: str, stage: str, columns: list[str] | None = None
                     ) -> tuple[pa.Table, np.ndarray, dict[str, str]]:
    """A Parquet file with a vector column: its other columns (or just ``columns``), the vectors (N, D)
    float32 in file order, and its key-value metadata, from one read of the footer. The vectors are read
    one row group at a time into one array (``vector_matrix`` checks each group), the pool's freed memory
    returned after each: memory is the result and about one group, not the several copies of a whole-file
    read.

    Raises:
        SidsError: the file is missing or unreadable, has no ``column``, or holds bad vectors.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise SidsError(f"{path} not found: run `movielens-sids {stage}` first")
    try:
        f = pq.ParquetFile(path)
        names = f.schema_arrow.names
        if column not in names:
            raise SidsError(f"{path} has no {column!r} column: run `movielens-sids {stage}` again")
        missing = [c for c in columns or () if c not in names]
        if missing:
            raise SidsError(f"{path} has no {missing[0]!r} column: run `movielens-sids {stage}` again")
        table = f.read(columns=[c for c in names if c != column] if columns is None else columns)
        meta = {k.decode(): v.decode() for k, v in (f.schema_arrow.metadata or {}).items()
                if not k.startswith(b"ARROW:") and k != b"pandas"}
        out, at = None, 0
        for i in range(f.num_row_groups):
            part = vector_matrix(f.read_row_group(i, columns=[column]).column(column), str(path))  # (n_i, D)
            if out is None:
                out = np.empty((f.metadata.num_rows, part.shape[1]), dtype=np.float32)
            elif part.shape[1] != out.shape[1]:
                raise SidsError(f"{path}: vectors of mixed dimensions ({out.shape[1]}, {part.shape[1]}); "
                                "every vector must have the same length")
            out[at:at + len(part)] = part
            at += len(part)
            pa.default_memory_pool().release_unused()
    except SidsError:
        raise
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise SidsError(f"{path} is not a readable Parquet file ({type(e).__name__}: {e})") from e
    return table, (out if out is not None else np.zeros((0, 0), dtype=np.float32)), meta


def _in_id_order(table: pa.Table, x: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """``table`` (with ``movie_id``) and its rows' vectors x (N, D), both sorted by movie_id (``sorted_by_id``)."""
    ids = table.column("movie_id").to_numpy()
    if len(ids) > 1 and (np.diff(ids) <= 0).any():
        order = np.argsort(ids, kind="stable")
        return table.take(order), x[order]
    return table, x


def decoded_metadata(path: Path) -> dict[str, Any]:
    """A Parquet file's key-value metadata, JSON values decoded (others kept as strings)."""
    meta = {}
    for key, v in parquet_metadata(path).items():
        try:
            meta[key] = json.loads(v)
        except ValueError:
            meta[key] = v
    return meta


def recorded_digest(record: dict[str, Any], rel: str) -> str | dict[str, str] | None:
    """The sha256 a stage record holds for ``rel`` (a file, or a folder's file -> sha256 map; a file
    inside a recorded folder is looked up in the folder's map); None when the record has none."""
    outputs = record.get("outputs") or {}
    if rel in outputs:
        return outputs[rel]
    top, _, rest = rel.partition("/")
    folder = outputs.get(top)
    return folder.get(rest) if rest and isinstance(folder, dict) else None


def changed_message(path: Path, stage: str) -> str:
    """The one line for an artifact whose bytes are no longer those its stage recorded."""
    return (f"{path} is not the file `{stage}` wrote (its sha256 differs from the one in {RECORDS}/{stage}.json): "
            f"run `movielens-sids {stage}` again, or pass --accept-changed if you replaced it on purpose")


def check_recorded(run_dir: Path, rel: str) -> None:
    """Check ``run_dir/rel`` against the sha256 its writer recorded; a ``SidsError`` when they differ.

    Nothing to check (and no error) when the stage never recorded it: a missing file is the reader's
    own error, and a file put there by hand without a record cannot be told from a good one.
    """
    stage = WRITERS[rel.split("/")[0]]
    record = read_record(run_dir, stage)
    want = recorded_digest(record, rel) if record else None
    path = Path(run_dir) / rel
    if isinstance(want, str) and path.is_file() and memo_hash(path) != want:
        raise SidsError(changed_message(path, stage))


# ---------------------------------------------------------------------------------------------- catalog


def read_catalog(run_dir: Path, columns: tuple[str, ...] = ("movie_id",), *, recorded: bool = True) -> pa.Table:
    """``catalog.parquet``, sorted by movie_id, with ``columns`` present, at least one movie, unique ids;
    ``recorded``: first checked against the sha256 its stage recorded (``verify`` reports that apart)."""
    path = Path(run_dir) / CATALOG
    if recorded:
        check_recorded(run_dir, CATALOG)
    table = read_parquet(path, "catalog")
    require_columns(table, path, columns, "catalog")
    if table.num_rows == 0:
        raise SidsError(f"{path} is empty: the catalog holds no movie; run `movielens-sids catalog` again")
    movie_ids(table, path, "catalog")
    return sorted_by_id(table)


# ---------------------------------------------------------------------------------------------- embeddings


@dataclass
class Embeddings:
    """``embeddings.parquet``: one vector per movie, sorted by movie_id."""

    movie_ids: np.ndarray  # (N,) int64
    x: np.ndarray  # (N, D) float32
    model: str | None  # the sentence-transformers model recorded in the file's metadata
    path: Path
    backend: str = "torch"  # how the model ran: torch, onnx or "onnx int8" (no key in the metadata: torch)


def read_embeddings(run_dir: Path, *, recorded: bool = True) -> Embeddings:
    """``embeddings.parquet``, validated: at least one movie, unique ids, one dimension, finite values
    (and, with ``recorded``, the sha256 its stage recorded)."""
    path = Path(run_dir) / EMBEDDINGS
    if recorded:
        check_recorded(run_dir, EMBEDDINGS)
    table, x, meta = read_vector_file(path, "embedding", "embed", columns=["movie_id"])
    if table.num_rows == 0:
        raise SidsError(f"{path} holds no movies: run `movielens-sids embed` again")
    table, x = _in_id_order(table, x)
    ids = movie_ids(table, path, "embed")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise SidsError(f"{path}: NaN or infinite embeddings for {int(bad.sum())} movies (first movie_id "
                        f"{ids[np.argmax(bad)]}): run `movielens-sids embed` again")
    return Embeddings(ids, x, meta.get("model"), path, meta.get("backend", "torch"))


# ---------------------------------------------------------------------------------------------- collab


@dataclass
class Collab:
    """``collab.parquet``: a collaborative vector per catalog movie (zeros for a movie with no training
    interaction), sorted by movie_id, and the split its training interactions came from."""

    movie_ids: np.ndarray  # (N,) int64
    vectors: np.ndarray  # (N, F) float32
    counts: np.ndarray  # (N,) int64 training interactions of each movie (0: cold, its vector is zeros)
    split: dict[str, Any]  # protocol, cut-offs, train_fingerprint (retrieval.sequences.train_fingerprint)
    path: Path


def read_collab(run_dir: Path, *, recorded: bool = True) -> Collab | None:
    """``collab.parquet`` validated (finite vectors, unique ids; with ``recorded``, the file its stage recorded),
    or None when the run has none (content only)."""
    path = Path(run_dir) / COLLAB
    if not path.exists():
        return None
    if recorded:
        check_recorded(run_dir, COLLAB)
    table, x, meta = read_vector_file(path, "vector", "collab")
    require_columns(table, path, ("movie_id", "n_train"), "collab")
    table, x = _in_id_order(table, x)
    ids = movie_ids(table, path, "collab")
    if not np.isfinite(x).all():
        raise SidsError(f"{path}: NaN or infinite collaborative vectors: run `movielens-sids collab` again")
    split = decoded_metadata(path).get("split")
    if not isinstance(split, dict):
        raise SidsError(f"{path} does not say which split it was built from: run `movielens-sids collab` again")
    return Collab(ids, x, table.column("n_train").to_numpy().astype(np.int64), split, path)


def read_cowatch(run_dir: Path, *, recorded: bool = True) -> pa.Table | None:
    """``cowatch.parquet`` (``movie_a``, ``movie_b``, ``users``: the most co-watched training pairs; with
    ``recorded``, the file its stage recorded), or None."""
    path = Path(run_dir) / COWATCH
    if not path.exists():
        return None
    if recorded:
        check_recorded(run_dir, COWATCH)
    table = read_parquet(path, "collab")
    require_columns(table, path, ("movie_a", "movie_b", "users"), "collab")
    return table


def model_fingerprint(tok) -> str:
    """sha256 of what decides the codes: the config and every weight, codebook, bias and prototype, by name
    (not the training's bookkeeping, ``idle_steps``); not of the file: a save/load round trip keeps it."""
    import dataclasses
    import hashlib

    h = hashlib.sha256(json.dumps(dataclasses.asdict(tok.config), sort_keys=True).encode())
    named = {**dict(tok.named_parameters()), **dict(tok.named_buffers())}
    for name in sorted(n for n in named if not n.endswith("idle_steps")):
        t = named[name].detach().to("cpu").contiguous()
        h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- SIDs


@dataclass
class Sids:
    """``sids.parquet``: one Semantic ID per movie, sorted by movie_id."""

    movie_ids: np.ndarray  # (N,) int64
    tokens: np.ndarray  # (N, T) int64, -1 past a movie's length (T = L, or L + 1 with a collision token)
    lengths: np.ndarray  # (N,) int64
    strings: list[str]  # N, "<a_12><b_201><c_7>"
    metadata: dict[str, Any]  # the file's metadata, JSON values decoded (assign, assign_stats, retired)
    path: Path
    model_codes: np.ndarray | None = None  # (N, L) int64 the model's codes before dedup, -1 rows unknown; None:
    # not recorded (a file from before the column)


def _token_matrix(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(N, T) int64 tokens padded with -1 and (N,) lengths of a list<int> column (vectorised)."""
    lengths = np.asarray(pc.list_value_length(col).fill_null(0), dtype=np.int64)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    tokens = np.full((len(col), int(lengths.max(initial=0))), -1, dtype=np.int64)
    rows = np.repeat(np.arange(len(col)), lengths)
    tokens[rows, np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = values
    return tokens, lengths


def read_sids(run_dir: Path, *, levels: int | None = None, codebook_size: int | None = None,
              recorded: bool = True) -> Sids:
    """``sids.parquet``, validated: list<int> tokens, none empty or negative; with ``levels`` and
    ``codebook_size`` (the model's), every SID has L or L + 1 tokens and its first L are codes of the model;
    with ``recorded``, the file is the one its stage recorded (sha256)."""
    path = Path(run_dir) / SIDS
    if recorded:
        check_recorded(run_dir, SIDS)
    table = sorted_by_id(read_parquet(path, "assign"))
    require_columns(table, path, ("movie_id", "semantic_id", "sid"), "assign")
    ids = movie_ids(table, path, "assign")
    col = table.column("semantic_id").combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise SidsError(f"{path}: 'semantic_id' must be a list of integers, got {col.type}")
    tokens, lengths = _token_matrix(col)
    if col.null_count or (len(lengths) and lengths.min() == 0):
        raise SidsError(f"{path}: some movies have an empty semantic_id: run `movielens-sids assign` again")
    if (tokens[np.arange(tokens.shape[1]) < lengths[:, None]] < 0).any():
        raise SidsError(f"{path}: negative tokens in semantic_id: run `movielens-sids assign` again")
    if levels is not None and codebook_size is not None:
        _check_against_model(tokens, lengths, path, levels, codebook_size)
    codes = _model_codes(table, path, levels, codebook_size) if "model_codes" in table.column_names else None
    return Sids(ids, tokens, lengths, [str(s) for s in table.column("sid").to_pylist()], decoded_metadata(path),
                path, codes)


def _model_codes(table: pa.Table, path: Path, levels: int | None, codebook_size: int | None) -> np.ndarray:
    """The optional ``model_codes`` column as (N, L) int64, -1 rows where null; its lists must all have one
    length (the model's L when given) and hold codes of the model."""
    col = table.column("model_codes").combine_chunks()
    if not pa.types.is_list(col.type):
        raise SidsError(f"{path}: 'model_codes' must be a list of integers, got {col.type}")
    known = np.asarray(col.is_valid())  # (N,)
    codes, lengths = _token_matrix(col)
    width = levels if levels is not None else codes.shape[1]
    if (lengths[known] != width).any() or codes.shape[1] not in (0, width) or (codes[known] < 0).any() \
            or (codebook_size is not None and (codes >= codebook_size).any()):
        raise SidsError(f"{path}: 'model_codes' are not {width} codes of the model per movie: run "
                        "`movielens-sids assign` again")
    out = np.full((len(col), width), -1, dtype=np.int64)
    out[known] = codes[known]
    return out


def _check_against_model(tokens: np.ndarray, lengths: np.ndarray, path: Path, levels: int,
                         codebook_size: int) -> None:
    if ((lengths != levels) & (lengths != levels + 1)).any():
        bad = sorted(set(lengths.tolist()) - {levels, levels + 1})
        raise SidsError(f"{path}: semantic_id lengths {bad} do not match the model's {levels} levels "
                        "(sids.parquet is older than model/?): run `movielens-sids assign` again")
    if (tokens[:, :levels] >= codebook_size).any():
        raise SidsError(f"{path}: semantic_id codes outside 0..{codebook_size - 1} for this model "
                        "(sids.parquet is older than model/?): run `movielens-sids assign` again")


# ---------------------------------------------------------------------------------------------- model


def require_model(run_dir: Path, *, recorded: bool = True) -> Path:
    """``run_dir/model``, after checking that its config and weights are there and (``recorded``) are what
    `train` wrote."""
    for f in MODEL_FILES:
        if not (Path(run_dir) / f).is_file():
            raise SidsError(f"{Path(run_dir) / f} not found: run `movielens-sids train` first")
    for f in MODEL_FILES if recorded else ():
        check_recorded(run_dir, f)
    return Path(run_dir) / MODEL


def read_model(run_dir: Path, *, input_dim: int | None = None, recorded: bool = True) -> RQVAE | RQKMeans:
    """The tokenizer of ``run_dir/model/`` (eval mode, CPU); with ``input_dim``, checked against the
    embeddings' dimension D; with ``recorded``, its files are the ones `train` recorded (sha256)."""
    model_dir = require_model(run_dir, recorded=recorded)
    tok = tokenizers.load_tokenizer(model_dir)
    if input_dim is not None and int(tok.config.input_dim) != input_dim:
        raise SidsError(f"embeddings have dimension {input_dim} but the model in {model_dir} expects "
                        f"{tok.config.input_dim}; retrain the model (`movielens-sids train`) or re-embed")
    return tok


def tokenizer_input(run_dir: Path, emb: Embeddings, *, collab_input: float, shrinkage: float
                    ) -> tuple[np.ndarray, int]:
    """What the tokenizer reads, and F, its collaborative width: the embeddings (N, D) and F = 0, or, with
    ``collab_input`` > 0 and a ``collab.parquet``, the embeddings fused with its vectors (N, D + F)
    (``collab.fused_input``). With no ``collab.parquet`` (a dataset without ratings), the embeddings."""
    from .collab import fused_input  # scipy: only for a run that fuses

    collab = read_collab(run_dir) if collab_input > 0 else None
    if collab is None:
        return emb.x, 0
    check_same_movies(emb.movie_ids, emb.path, collab.movie_ids, collab.path, "collab")
    return fused_input(emb.x, collab.vectors, collab.counts, weight=collab_input, shrinkage=shrinkage), \
        int(collab.vectors.shape[1])


def model_input(run_dir: Path, tok: Any, emb: Embeddings) -> np.ndarray:
    """(N, input_dim) what ``tok`` was trained to read, built from the run's embeddings (and, for a tokenizer
    trained on both signals, ``collab.parquet``); a ``SidsError`` when the run cannot give it."""
    cfg = tok.config
    f = int(getattr(cfg, "collab_dim", 0))
    if f:
        if not (Path(run_dir) / COLLAB).exists():
            raise SidsError(f"the model in {Path(run_dir) / MODEL} reads collaborative vectors too, and "
                            f"{Path(run_dir) / COLLAB} is missing: run `movielens-sids collab` again")
        x, got = tokenizer_input(run_dir, emb, collab_input=cfg.collab_input, shrinkage=cfg.collab_shrinkage)
        if got != f:
            raise SidsError(f"{Path(run_dir) / COLLAB} has {got}-d vectors but the model expects {f}: "
                            "run `movielens-sids train` again")
    else:
        x = emb.x
    if x.shape[1] != int(cfg.input_dim):
        raise SidsError(f"embeddings have dimension {x.shape[1] - f} but the model in {Path(run_dir) / MODEL} "
                        f"expects {int(cfg.input_dim) - f}; retrain the model (`movielens-sids train`) or re-embed")
    return x


def new_movie_model_input(run_dir: Path, tok: Any, x: np.ndarray) -> np.ndarray:
    """(B, input_dim) what ``tok`` reads for new movies' embeddings x (B, D): x itself, or, for a tokenizer
    trained on both signals, x with collaborative vectors from their content neighbours in the run
    (``collab.new_movie_input``: nobody has rated a new movie)."""
    cfg = tok.config
    if not int(getattr(cfg, "collab_dim", 0)):
        return x
    from .collab import new_movie_input

    collab = read_collab(run_dir)
    if collab is None or not (Path(run_dir) / EMBEDDINGS).exists():
        raise SidsError(f"the model in {Path(run_dir) / MODEL} reads collaborative vectors too: encoding new "
                        f"text needs the run folder's {EMBEDDINGS} and {COLLAB}")
    emb = read_embeddings(run_dir)
    check_same_movies(emb.movie_ids, emb.path, collab.movie_ids, collab.path, "collab")
    return new_movie_input(x, emb.x, collab.vectors, collab.counts, weight=cfg.collab_input)


# ---------------------------------------------------------------------------------------------- records


def read_record(run_dir: Path, name: str) -> dict[str, Any] | None:
    """The record ``pipeline.execute`` wrote for stage ``name`` (None when it never ran or is unreadable)."""
    try:
        return json.loads((Path(run_dir) / RECORDS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def stage_seconds(run_dir: Path, names: list[str]) -> dict[str, float]:
    """The recorded wall time of each of ``names`` that has run in ``run_dir``."""
    out = {}
    for name in names:
        rec = read_record(run_dir, name)
        if rec is not None:
            out[name] = rec.get("seconds")
    return out


def movielens_titles(catalog: pa.Table) -> list[str]:
    """The MovieLens form of each catalog title: ``"Matrix, The (1999)"``, or the bare title when the year
    is unknown (the form probes and lookups are written in)."""
    titles, years = catalog.column("title").to_pylist(), catalog.column("year").to_pylist()
    return [t if y is None or (isinstance(y, float) and math.isnan(y)) else f"{t} ({int(y)})"
            for t, y in zip(titles, years)]
