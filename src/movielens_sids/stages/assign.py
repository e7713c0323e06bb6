"""Codes -> unique Semantic IDs: the `assign` stage (embeddings.parquet + model/ -> sids.parquet).

Every movie is encoded (batched, no gradients, on the run's device) and quantized greedily level by
level; movies whose L codes coincide are then told apart by one of two strategies:

- ``suffix`` (TIGER, Rajput et al. 2023): an extra token numbers the movies sharing a code path,
  in ``movie_id`` order. Every SID gets it (0 for the first or only movie), so all have L + 1 tokens.
- ``semantic`` (default): no meaningless token. In each group of movies sharing a path, the movie
  closest to the path's quantized point keeps it (ties: smallest ``movie_id``); the others, served
  in ``movie_id`` order, move to their nearest *free* last-level code (ranked by residual distance,
  so the first L - 1 tokens are kept); the few whose whole last level is taken then search, again
  in ``movie_id`` order, paths that change an earlier level, found by a small beam search over the
  residual distances; when K^L is small the search ends with an exhaustive scan. Only a movie for
  which no free path is found falls back to a collision token; then, and only then, every SID gets
  one (0 for all the others) so that no SID is a prefix of another. ``assign_stats`` in the file
  metadata records how many moved and what it cost.

Determinism: the reference for every decision is the tokenizer in float64 on the CPU. Codes are
computed fast in float32 on the run's device; a row where, at some level, the runner-up code is
within a small margin of the nearest (about 1 % of rows) is encoded and quantized again with the
float64 reference, as are the movies that share a path (their tie-breaks and alternatives), so the
file depends neither on the device nor on the batch size: the same model and embeddings give the
same bytes.

Incremental (``--incremental``): movies already in ``sids.parquet`` keep their SIDs; new movies get
SIDs that collide with none of them nor with any SID ever issued to a movie that has since
disappeared (kept in the file's ``retired`` metadata; a movie that comes back gets its old SID).

May import: artifacts, devices, sid, io, errors, settings; torch, faiss, model.rqvae and model.groups on first
use.
Never another stage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..artifacts import model_fingerprint, model_input, read_embeddings, read_model, read_sids
from ..dedup import CHUNK, make_unique, unique_sorted
from ..devices import resolve_device
from ..errors import SidsError
from ..io import atomic_path, write_parquet
from ..settings import AssignConfig
from ..sid import format_sids, path_ids

if TYPE_CHECKING:
    import torch

    from ..config import Config

log = logging.getLogger(__name__)


ALIGN = 64
"""Float64 encoder batches are zero-padded to a multiple of this many rows (row-invariant CPU kernels)."""
MARGIN = 1e-4
"""A float32 decision closer than this (relative to ||r||^2 + max ||c||^2) is settled again in float64."""
FLAT_INDEX_MIN_POINTS = 4096
"""A level-1 table of at least this many points (without biases, on the CPU) is searched by FAISS's flat index,
where it is the faster search (``model.groups.cpu_search_engine``)."""
# ----------------------------------------------------------------------------------------------
# Pure functions (numpy / torch, no I/O)
# ----------------------------------------------------------------------------------------------


def exact_model(tok):
    """A float64 copy of the tokenizer on the CPU: the reference every code is decided by."""
    import copy

    import torch

    return copy.deepcopy(tok).to("cpu", torch.float64).eval()


def exact_latents(tok64, x: np.ndarray, rows: np.ndarray | None = None, *, batch_size: int = 16384) -> np.ndarray:
    """Latents computed in float64 on the CPU (``exact_model``): the same on every device and batch size.

    Args:
        tok64: the float64 CPU tokenizer. x: (N, D) float32 embeddings. rows: which rows (default all).

    Returns:
        (len(rows), H) float64.
    """
    import torch

    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    out = np.empty((len(rows), int(tok64.codebooks.shape[-1])), dtype=np.float64)  # (M, H)
    with torch.inference_mode():  # one batch at a time in float64: memory is the output plus a batch
        for s in range(0, len(rows), batch_size):
            b = torch.from_numpy(np.asarray(x[rows[s:s + batch_size]], dtype=np.float32)).double()  # (B, D)
            pad = -len(b) % ALIGN  # the same kernels for a row whatever rows come with it
            zb = tok64.encode(torch.cat([b, b.new_zeros(pad, b.shape[1])]) if pad else b)
            out[s:s + len(b)] = zb[:len(b)].numpy()
    return out


def fast_codes(tok, x: np.ndarray, *, device=None, batch_size: int = 16384,
               margin: float = MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """The tokenizer's codes in float32 on its device, and which rows were close calls.

    Same rule as ``tok.quantize`` (level 1 the nearest code with its bias, or the nearest prototype's
    code when the quantizer is grouped; levels 2..L greedily or by
    a beam of ``tok.beam_width``). A row is a close call ("unsure") when some decision was within
    ``margin * scale`` of going the other way: the runner-up code at a greedy step (``scale =
    ||r||^2 + max ||c||^2 + max |bias|`` of that level), or the runner-up final path of the beam or
    the first path left out of it (``scale = ||r||^2`` entering level 2 plus the code-side terms of
    levels 2..L). Float32 rounding (encoder and distances) moves distances
    by far less than that (about 1e-6 of the scale; ``benchmarks/assign.py`` measures it), so every
    other row's codes are those the float64 reference (``reference_codes`` on ``exact_latents``)
    gives; the caller settles the close calls in float64. TF32 is turned off on CUDA for the call.

    Args:
        tok: the tokenizer, on its device. x: (N, D) float32 embeddings.

    Returns:
        codes (N, L) int64 and unsure (N,) bool.
    """
    import torch

    dev = device or next((t.device for t in (*tok.parameters(), *tok.buffers())), torch.device("cpu"))
    tables = _code_tables(tok)
    n, levels = len(x), tables.cb.shape[0]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    codes_out = torch.empty(n, levels, dtype=torch.int64)
    unsure_out = torch.empty(n, dtype=torch.bool)
    with _no_tf32(), torch.inference_mode():
        for s in range(0, n, batch_size):
            z = tok.encode(xt[s:s + batch_size].to(dev)).float()  # (B, H)
            for c in range(0, len(z), CHUNK):  # cache-sized blocks for the distance matrices
                codes, unsure = _block_codes(z[c:c + CHUNK], tables, int(tok.beam_width), margin)
                codes_out[s + c:s + c + len(codes)] = codes.cpu()
                unsure_out[s + c:s + c + len(codes)] = unsure.cpu()
    return codes_out.numpy(), unsure_out.numpy()


class _CodeTables(NamedTuple):
    """The float32 tables `fast_codes` measures distances against."""

    cb: torch.Tensor
    """(L, K, H) codebooks."""
    bias: torch.Tensor
    """(L, K) the codes' biases."""
    const: torch.Tensor
    """(L, K): ||c||^2 + bias."""
    code_scale: torch.Tensor
    """(L,) max ||c||^2 + max |bias| per level: the code-side part of the scale the margin is relative to."""
    first: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    """Level 1's points, their ||p||^2 + bias, their scale, and the code each point stands for."""
    prefix: torch.Tensor | None
    """(K, K) level 2's biases per first code (``prefix_bias``), or None."""
    first_index: Any = None
    """FAISS's flat L2 index over level 1's points, for a large table without biases on a CPU where FAISS
    searches faster than a torch product (the grouped level 1's prototypes): its search gives each row's two
    nearest, all the close-call test needs."""


def _code_tables(tok) -> _CodeTables:
    """The tokenizer's codebooks as `_CodeTables`; level 1 is chosen among the quantizer's first-level table
    (its codes, or its prototypes when grouped)."""
    import torch

    from ..model.groups import cpu_search_engine

    cb = tok.codebooks.detach().float()  # (L, K, H)
    bias = tok.code_bias.detach().float()  # (L, K)
    code_scale = (cb * cb).sum(-1).max(dim=1).values + bias.abs().max(dim=1).values  # (L,)
    pts, pbias, pcode = (t.detach() for t in tok.quantizer.first_level_table()) if hasattr(tok, "quantizer") \
        else (cb[0], bias[0], torch.arange(cb.shape[1], device=cb.device))
    pts, pbias = pts.float(), pbias.float()
    sq = (pts * pts).sum(-1)  # (P,)
    first = (pts, sq + pbias, sq.max() + pbias.abs().max(), pcode)
    prefix = getattr(getattr(tok, "quantizer", None), "prefix_bias", None)
    if prefix is not None:
        prefix = prefix.detach().float()
        code_scale[1] += prefix.abs().max()  # part of level 2's scale, like its own biases
    index = None
    if (pts.device.type == "cpu" and len(pts) >= FLAT_INDEX_MIN_POINTS and not bool(pbias.any())
            and cpu_search_engine(pts) == "faiss"):
        import faiss

        index = faiss.IndexFlatL2(pts.shape[1])
        index.add(np.ascontiguousarray(pts.numpy()))
    return _CodeTables(cb, bias, (cb * cb).sum(-1) + bias, code_scale, first, prefix, index)


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """TF32 off on CUDA for the block (float32 matmuls stay float32), restored after."""
    import torch

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _block_codes(r: torch.Tensor, t: _CodeTables, width: int, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (b, L) and close calls (b,) of the latents r (b, H): greedy levels, or level 1 then a beam."""
    import torch

    from ..model.groups import product_nearest
    from ..model.rqvae import beam_search  # torch: imported only when assigning

    levels = t.cb.shape[0]
    codes = torch.empty(len(r), levels, dtype=torch.int64, device=r.device)
    flag = torch.zeros(len(r), dtype=torch.bool, device=r.device)
    for level in range(levels if width <= 1 else 1):
        points, pconst, pscale, pcode = t.first if level == 0 else (t.cb[level], t.const[level],
                                                                    t.code_scale[level], None)
        if level == 0 and t.first_index is not None:  # (b, 2) |r - p|^2 as FAISS's fp32 computes them
            d2, i2 = (torch.from_numpy(a) for a in t.first_index.search(np.ascontiguousarray(r.numpy()), 2))
        elif level == 0:  # (b, 2) in blocks of rows, so that a large table's (rows, P) distances stay a few MB
            d2, i2 = product_nearest(r, points, pconst, min(2, len(points)))
        else:
            d = torch.addmm(pconst[None, :], r, points.T, alpha=-2.0)  # (b, K)
            if level == 1 and t.prefix is not None:
                d = d + t.prefix[codes[:, 0]]  # (b, K) each row's first code's level-2 biases
            d2, i2 = d.topk(min(2, d.shape[1]), dim=1, largest=False)  # (b, 2) the nearest two
        tol = margin * ((r * r).sum(1) + pscale)  # (b,)
        if d2.shape[1] > 1:
            flag |= d2[:, 1] <= d2[:, 0] + tol  # the runner-up within the margin
        idx = i2[:, 0] if pcode is None else pcode[i2[:, 0]]
        codes[:, level] = idx
        r = r - t.cb[level][idx]
    if width > 1 and levels > 1:
        tol = margin * ((r * r).sum(1) + t.code_scale[1:].sum())  # (b,)
        row_bias = None if t.prefix is None else t.prefix[codes[:, 0]]  # (b, K)
        deeper, close = beam_search(r, t.cb[1:], t.bias[1:], width, tol, row_bias=row_bias)
        codes[:, 1:] = deeper
        flag |= close
    return codes, flag


def reference_codes(tok64, z: np.ndarray) -> np.ndarray:
    """The float64 reference's codes for latents z (N, H): ``tok64.quantize`` (``exact_model``) on the
    CPU, in blocks. Returns (N, L) int64."""
    import torch

    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64))
    with torch.inference_mode():
        out = [tok64.quantize(b) for b in zt.split(CHUNK)]
    return torch.cat(out).numpy() if out else np.zeros((0, int(tok64.codebooks.shape[0])), dtype=np.int64)


def model_codes(tok, tok64, x: np.ndarray, *, batch_size: int = 16384) -> np.ndarray:
    """The tokenizer's greedy codes (N, L) int64 for x (N, D): fast in float32 on its device, the close
    calls settled by the float64 reference ``tok64`` (``exact_model``): the same on every device."""
    codes, unsure = fast_codes(tok, x, batch_size=batch_size)
    rows = np.flatnonzero(unsure)
    if len(rows):
        codes[rows] = reference_codes(tok64, exact_latents(tok64, x, rows))
    return codes


def _sig(v: float) -> float:
    """Round to 4 significant digits: stats stay identical across devices and batch sizes."""
    return float(f"{v:.4g}")


def assign_sids(
    tok,
    x: np.ndarray,
    movie_ids: np.ndarray,
    cfg: AssignConfig,
    *,
    reserved: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Codes and unique SIDs for a set of movies (no I/O).

    Args:
        tok: the tokenizer (see `movielens_sids.model.load_tokenizer`), on the device it runs on.
        x: (N, D) float32 embeddings; movie_ids: (N,) int64.
        cfg: the assign settings (strategy, beam width, batch size).
        reserved: tokens of SIDs that must not be issued (incremental runs).

    Returns:
        tokens (N, L) or (N, L + 1) int64, the model's codes before dedup (N, L) int64, and the dedup
        statistics.
    """
    levels, k = int(tok.config.levels), int(tok.config.codebook_size)
    tok64 = exact_model(tok)  # the float64 CPU reference: decides every close call
    codebooks = tok64.codebooks.numpy()  # (L, K, H) float64
    bias = tok64.code_bias.numpy()  # (L, K) float64
    codes = model_codes(tok, tok64, x, batch_size=cfg.batch_size)
    a = make_unique(codes, movie_ids, strategy=cfg.strategy, codebook_size=k,
                    latents=lambda r: exact_latents(tok64, x, r), codebooks=codebooks,
                    beam_width=cfg.beam_width, reserved=reserved, bias=bias)
    stats: dict[str, Any] = {
        "strategy": cfg.strategy,
        "n_movies": int(len(movie_ids)),
        "levels": levels,
        "codebook_size": k,
        "sid_length": int(a.tokens.shape[1]),
        "n_collided_before": a.n_collided,
        "unique_paths_before": int(len(unique_sorted(path_ids(codes, k)))),
        "n_moved": int(a.moved.sum()),
        "n_suffixed": int(a.suffixed.sum()),
    }
    if cfg.strategy == "semantic":
        stats["moved_shared_prefix"] = {str(s): int(c) for s, c in
                                        zip(*np.unique(a.shared_prefix[a.moved], return_counts=True))}
        stats.update(_move_cost(tok64, x, codes, a.tokens[:, :levels], a.moved))
    return a.tokens, codes, stats


def merge_stats(old: dict[str, Any], new: dict[str, Any], *, n_movies: int) -> dict[str, Any]:
    """Dedup statistics over every assign run that issued the current SIDs (incremental runs add up).

    Counts are summed, the moved movies' mean errors are weighted by how many moved in each run;
    a run that adds nothing gives back ``old`` (so the file's bytes do not change).
    """
    if not old:
        return {**new, "n_movies": n_movies}
    out = dict(old)
    out["n_movies"] = int(n_movies)
    for key in ("n_collided_before", "unique_paths_before", "n_moved", "n_suffixed"):
        out[key] = int(old.get(key, 0)) + int(new.get(key, 0))
    out["sid_length"] = max(int(old.get("sid_length", 0)), int(new.get("sid_length", 0)))
    if "moved_shared_prefix" in old or "moved_shared_prefix" in new:
        msp = dict(old.get("moved_shared_prefix") or {})
        for k, v in (new.get("moved_shared_prefix") or {}).items():
            msp[k] = int(msp.get(k, 0)) + int(v)
        out["moved_shared_prefix"] = msp
        n_old, n_new = int(old.get("n_moved", 0)), int(new.get("n_moved", 0))
        for key in ("moved_relative_error_before", "moved_relative_error_after"):
            a, b = old.get(key), new.get(key)
            if b is not None and n_new:
                out[key] = _sig((float(a or 0.0) * n_old + float(b) * n_new) / (n_old + n_new))
    return out


def _move_cost(tok64, x: np.ndarray, before: np.ndarray, after: np.ndarray, moved: np.ndarray) -> dict:
    """Mean relative reconstruction error ``||x - decode(codes)||^2 / ||x||^2`` of the moved movies,
    on their greedy codes and on their final codes (float64 reference model, so device-independent).
    Each distinct path is decoded once: the moved movies came from shared greedy paths."""
    if not moved.any():
        return {"moved_relative_error_before": None, "moved_relative_error_after": None}
    idx = np.flatnonzero(moved)
    total = {name: _path_errors(tok64, x, idx, c[idx]) for name, c in (("before", before), ("after", after))}
    return {f"moved_relative_error_{name}": _sig(v / len(idx)) for name, v in total.items()}


def _path_errors(tok64, x: np.ndarray, rows: np.ndarray, codes: np.ndarray) -> float:
    """Sum over ``rows`` of ``||x - decode(codes)||^2 / ||x||^2`` (codes (R, L): each row's path). The rows go
    in blocks grouped by path, each block decoding its distinct paths once: memory stays at a few (B, D)
    float64 matrices."""
    import torch

    paths, inv = np.unique(codes, axis=0, return_inverse=True)  # (U, L), (R,)
    by_path = np.argsort(inv.reshape(-1), kind="stable")  # rows grouped by path
    total = 0.0
    with torch.inference_mode():
        for s in range(0, len(rows), CHUNK * 4):
            part = by_path[s:s + CHUNK * 4]
            p = inv.reshape(-1)[part]  # (B,) ascending path numbers
            rec = tok64.decode_codes(torch.from_numpy(paths[p[0]:p[-1] + 1]))  # (U', D) float64, U' <= B
            xm = torch.from_numpy(np.asarray(x[rows[part]], dtype=np.float32)).double()  # (B, D)
            err = ((xm - rec[torch.from_numpy(p - p[0])]) ** 2).sum(1) / (xm ** 2).sum(1).clamp_min(1e-12)
            total += float(err.sum())
    return total


# ----------------------------------------------------------------------------------------------
# The stage (I/O)
# ----------------------------------------------------------------------------------------------


def sids_table(movie_ids: np.ndarray, tokens: np.ndarray, model_codes: np.ndarray | None = None):
    """The ``sids.parquet`` table: movie_id int64, semantic_id list<int32>, sid string, and (given)
    model_codes list<int32>: the model's codes before dedup (N, L), a row of -1 for unknown (null); sorted by
    movie_id."""
    import pyarrow as pa

    order = np.argsort(movie_ids, kind="stable")
    tok = np.ascontiguousarray(tokens[order], dtype=np.int32)  # (N, T)
    columns = {"movie_id": pa.array(movie_ids[order], pa.int64()), "semantic_id": _list_column(tok),
               "sid": format_sids(tok)}
    if model_codes is not None:
        mc = np.ascontiguousarray(model_codes[order], dtype=np.int32)  # (N, L)
        columns["model_codes"] = _list_column(mc, null=~(mc >= 0).all(axis=1))
    return pa.table(columns)


def _list_column(rows: np.ndarray, null: np.ndarray | None = None):
    """A list<int32> column of the rows of an (N, W) int32 matrix; ``null``: (N,) bool rows written as null."""
    import pyarrow as pa

    n, w = rows.shape
    offsets = pa.array(np.arange(0, n * w + 1, w, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1)), mask=None if null is None else pa.array(null))


def _previous_sids(run_dir: Path, levels: int, k: int, acfg: AssignConfig, fingerprint: str) -> tuple[Any, bool]:
    """The SIDs an incremental assign extends, checked to be of this model's shape and dedup rule; and
    whether the same model made them."""
    sids_path = run_dir / "sids.parquet"
    if not sids_path.exists():
        raise SidsError(f"{sids_path} not found: --incremental extends existing SIDs; run "
                        "`movielens-sids assign` without it first")
    old = read_sids(run_dir)
    info = old.metadata.get("assign") or {}
    if info.get("levels") != levels or info.get("codebook_size") != k:
        raise SidsError(f"{sids_path} was made with {info.get('levels')} levels x {info.get('codebook_size')} "
                        f"codes but the model has {levels} x {k}; run assign without --incremental")
    if info.get("strategy") != acfg.strategy:
        raise SidsError(f"{sids_path} was made with strategy {info.get('strategy')!r}; --incremental must "
                        f"use the same (got {acfg.strategy!r})")
    same_model = info.get("model_fingerprint") == fingerprint
    if not same_model:
        log.warning("the model changed since %s was written: existing SIDs are kept, new movies get codes "
                    "from the new model", sids_path.name)
    return old, same_model


def _extend(run_dir: Path, tok, x: np.ndarray, ids: np.ndarray, acfg: AssignConfig, fingerprint: str) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, dict[str, Any], dict[str, Any], np.ndarray, np.ndarray]:
    """``--incremental``: keep every SID in ``sids.parquet``, restore those of movies that came back, give
    new movies SIDs that collide with none of them nor with a retired one. ``fingerprint``: the model's
    (``model_fingerprint``).

    Returns:
        movie ids (N,), tokens (N, T), the model's codes (N, L) (-1 rows: unknown, for kept movies whose
        codes were made by another model or not recorded), the merged statistics, the kept/new/retired
        counts, and the retired movies' ids and tokens.
    """
    levels, k = int(tok.config.levels), int(tok.config.codebook_size)
    result: dict[str, Any] = {}
    old, same_model = _previous_sids(run_dir, levels, k, acfg, fingerprint)
    old_ids, old_tok, meta = old.movie_ids, old.tokens, old.metadata
    ret = meta.get("retired") or []
    r_ids = np.array([r[0] for r in ret], dtype=np.int64)
    r_tok = np.array([r[1] for r in ret], dtype=np.int64).reshape(len(ret), old_tok.shape[1])
    # Movies that came back get their old SID again.
    back = np.isin(r_ids, ids)
    old_ids = np.concatenate([old_ids, r_ids[back]])
    old_tok = np.concatenate([old_tok, r_tok[back]])
    keep = np.isin(old_ids, ids)
    gone = ~keep
    retired_ids = np.concatenate([r_ids[~back], old_ids[gone]])
    retired_tok = np.concatenate([r_tok[~back], old_tok[gone]])
    new = ~np.isin(ids, old_ids)
    if gone.any():
        log.warning("%d movies are no longer in embeddings.parquet; their SIDs are retired, never reused "
                    "(first movie_ids: %s)", int(gone.sum()), ", ".join(map(str, np.sort(old_ids[gone])[:10])))
    reserved = np.concatenate([old_tok[keep], retired_tok])
    new_tok, new_codes, stats = assign_sids(tok, x[new], ids[new], acfg, reserved=reserved)
    if new_tok.shape[1] != old_tok.shape[1]:
        raise SidsError(f"{int(new.sum())} new movies need a collision token but the existing SIDs have "
                        f"{old_tok.shape[1]} tokens; run assign without --incremental (gives new SIDs)")
    all_ids = np.concatenate([old_ids[keep], ids[new]])
    all_tok = np.concatenate([old_tok[keep], new_tok])
    recorded = old.model_codes if same_model and old.model_codes is not None else None
    old_codes = recorded if recorded is not None and recorded.shape[1] == levels \
        else np.full((len(old.movie_ids), levels), -1, dtype=np.int64)  # (N_old, L); unknown when all null
    old_codes = np.concatenate([old_codes, np.full((int(back.sum()), levels), -1, dtype=np.int64)])  # came back
    all_codes = np.concatenate([old_codes[keep], new_codes])
    result.update(n_kept=int(keep.sum()), n_new=int(new.sum()), n_restored=int(back.sum()),
                  n_retired=int(len(retired_ids)), disappeared=np.sort(old_ids[gone]).tolist())
    stats = merge_stats(meta.get("assign_stats") or {}, stats, n_movies=len(all_ids))
    log.info("incremental: %d SIDs kept, %d restored, %d new, %d retired", int(keep.sum()) - int(back.sum()),
             int(back.sum()), int(new.sum()), len(retired_ids))
    return all_ids, all_tok, all_codes, stats, result, retired_ids, retired_tok


PREVIOUS = "sids.previous.parquet"
"""The SIDs an assign replaced (kept whenever it changed the SID of a movie or dropped one)."""
CHANGES = "sid_changes.parquet"
"""movie_id, old_sid, new_sid of every movie whose SID the last replacing assign changed, added or dropped."""


def sid_version(table, number: int) -> dict[str, Any]:
    """The version of a SID assignment: a counter (1 for the first, +1 each time the movie -> SID mapping
    changes) and the first 12 hex digits of the sha256 of that mapping (movie ids and SID strings)."""
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(table.column("movie_id").to_numpy(), dtype=np.int64).tobytes())
    h.update("\n".join(table.column("sid").to_pylist()).encode())
    digest = h.hexdigest()[:12]
    return {"number": int(number), "content": digest, "name": f"v{int(number)}-{digest}"}


def _previous(path: Path):
    """The current ``sids.parquet`` as a table (movie_id, sid) with its version, or None (absent or unreadable)."""
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    try:
        table = pq.read_table(path, columns=["movie_id", "sid"])
        version = json.loads((pq.read_schema(path).metadata or {}).get(b"sid_version", b"{}"))
    except Exception as e:  # a damaged file holds no SIDs anyone could have used
        log.warning("cannot read the SIDs in %s to compare them (%s): not comparing", path, e)
        return None
    return table, version if isinstance(version, dict) else {}


def sid_changes(old, new):
    """Movies whose SID differs between two (movie_id, sid) tables: movie_id, old_sid, new_sid (null when a
    movie is only in one), sorted by movie_id; and the counts (changed, added, dropped)."""
    import pyarrow as pa

    before = dict(zip(old.column("movie_id").to_pylist(), old.column("sid").to_pylist()))
    after = dict(zip(new.column("movie_id").to_pylist(), new.column("sid").to_pylist()))
    ids = sorted(i for i in before.keys() | after.keys() if before.get(i) != after.get(i))
    table = pa.table({"movie_id": pa.array(ids, pa.int64()), "old_sid": pa.array([before.get(i) for i in ids],
                      pa.string()), "new_sid": pa.array([after.get(i) for i in ids], pa.string())})
    counts = {"n_changed": sum(1 for i in ids if i in before and i in after),
              "n_added": sum(1 for i in ids if i not in before), "n_dropped": sum(1 for i in ids if i not in after)}
    return table, counts


def _record_history(run_dir: Path, table, *, keep: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compare the new SIDs with the ones they replace; when a movie's SID changed or a movie was dropped
    (and ``keep``: not an incremental run, which changes no SID and retires dropped ones), keep the old
    file as ``sids.previous.parquet`` and write ``sid_changes.parquet`` (before the new ``sids.parquet``:
    a kill in between leaves the old SIDs, and a rerun writes the same again).

    Returns:
        The new version (``sid_version``) and what changed (for the stage's result).
    """
    old = _previous(run_dir / "sids.parquet")
    if old is None:
        return sid_version(table, 1), {}
    changes, counts = sid_changes(old[0], table)
    number = int(old[1].get("number", 0))
    version = sid_version(table, number + 1 if len(changes) else max(number, 1))
    if keep and (counts["n_changed"] or counts["n_dropped"]):
        with atomic_path(run_dir / PREVIOUS) as tmp:
            shutil.copyfile(run_dir / "sids.parquet", tmp)
        write_parquet(run_dir / CHANGES, changes, metadata={"from": old[1].get("name", "?"), "to": version["name"]})
        log.warning("%d movies' SIDs changed (%d added, %d dropped) since version %s: the previous SIDs are in %s, "
                    "old -> new in %s; new version %s", counts["n_changed"], counts["n_added"], counts["n_dropped"],
                    old[1].get("name", "?"), PREVIOUS, CHANGES, version["name"])
    elif len(changes):
        log.info("no existing SID changed; %d added, %d retired (version %s)", counts["n_added"],
                 counts["n_dropped"], version["name"])
    return version, {**counts, "previous_version": old[1].get("name")}


def assign_stage(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """The `assign` stage: embeddings.parquet + model/ -> sids.parquet.

    Returns:
        A summary: the dedup statistics, plus (incremental) kept/new/retired counts and the
        ids of movies that disappeared.
    """
    run_dir = Path(run_dir)
    acfg: AssignConfig = cfg.assign
    emb = read_embeddings(run_dir)
    tok = read_model(run_dir)
    ids, x = emb.movie_ids, model_input(run_dir, tok, emb)  # (N, D), or (N, D + F) with collaborative vectors
    tok = tok.to(resolve_device(acfg.device, "assign.device"))
    levels, k = int(tok.config.levels), int(tok.config.codebook_size)
    fingerprint = model_fingerprint(tok)  # once: it hashes every weight
    sids_path = run_dir / "sids.parquet"
    retired_ids = np.zeros(0, dtype=np.int64)
    retired_tok = None
    result: dict[str, Any] = {}
    if acfg.incremental:
        all_ids, all_tok, all_codes, stats, result, retired_ids, retired_tok = _extend(
            run_dir, tok, x, ids, acfg, fingerprint)
    else:
        all_ids = ids
        all_tok, all_codes, stats = assign_sids(tok, x, ids, acfg)
    if len(unique_sorted(path_ids(all_tok, max(k, int(all_tok.max()) + 1)))) != len(all_ids):
        raise AssertionError("assign produced duplicate SIDs")  # guarded by make_unique; never expected
    info = {"strategy": acfg.strategy, "levels": levels, "codebook_size": k, "sid_length": int(all_tok.shape[1]),
            "collision_token": bool(all_tok.shape[1] > levels), "semantic_id_dtype": "int32",
            "model_fingerprint": fingerprint}
    retired = []
    if retired_tok is not None and len(retired_ids):
        o = np.argsort(retired_ids, kind="stable")
        retired = [[int(i), [int(v) for v in t]] for i, t in zip(retired_ids[o], retired_tok[o])]
    table = sids_table(all_ids, all_tok, all_codes)
    version, history = _record_history(run_dir, table, keep=not acfg.incremental)
    metadata = {"assign": json.dumps(info, sort_keys=True), "assign_stats": json.dumps(stats, sort_keys=True),
                "retired": json.dumps(retired), "sid_version": json.dumps(version, sort_keys=True)}
    write_parquet(sids_path, table, metadata=metadata)
    log.info("%d movies: %d collided before dedup, %d moved, %d with a collision token (%s, %d tokens per SID)",
             stats["n_movies"], stats["n_collided_before"], stats["n_moved"], stats["n_suffixed"], acfg.strategy,
             all_tok.shape[1])
    return {**stats, **result, **history, "sid_version": version["name"]}

