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
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from .errors import SidsError
from .sid import format_sids, path_codes, path_ids

if TYPE_CHECKING:
    import torch

    from .config import Config

log = logging.getLogger(__name__)

HELP = "give every movie a unique Semantic ID (sids.parquet); --incremental keeps the existing ones"

ALIGN = 64
"""Float64 encoder batches are zero-padded to a multiple of this many rows (row-invariant CPU kernels)."""
MARGIN = 1e-4
"""A float32 decision closer than this (relative to ||r||^2 + max ||c||^2) is settled again in float64."""
EXHAUSTIVE_MAX_PATHS = 1 << 18
"""Below this many code paths (K^L) the free-path search ends with an exhaustive scan."""
LAST_LEVEL_CANDIDATES = 64
"""How many other last-level codes the semantic search tries before changing an earlier level."""
_CHUNK = 4096
"""Rows per float64 distance block (fits in cache; not a setting: it never changes the result)."""


@dataclass
class AssignConfig:
    """How codes become unique Semantic IDs."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"device", "batch_size"})

    strategy: Literal["semantic", "suffix"] = "semantic"
    """semantic: move colliding movies to their nearest free code path; suffix: TIGER's extra token."""
    beam_width: int = 8
    """Beam width of the semantic strategy's search over earlier levels' alternatives."""
    incremental: bool = False
    """Keep every SID already in sids.parquet and give only new movies new SIDs."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps: where the encoder runs (codes are always settled on the CPU)."""
    batch_size: int = 16384
    """Movies per encoder batch (rounded up to a multiple of 64); never changes the result."""

    def __post_init__(self) -> None:
        if self.strategy not in ("semantic", "suffix"):
            raise ValueError(f"strategy: must be semantic or suffix, got {self.strategy!r}")
        if self.beam_width < 1:
            raise ValueError(f"beam_width: must be >= 1, got {self.beam_width}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")


# ----------------------------------------------------------------------------------------------
# Pure functions (numpy / torch, no I/O)
# ----------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; anything else as given."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise SidsError(f"setting assign.device: {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SidsError(f"setting assign.device: {name!r} requested but CUDA is not available")
    return dev


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

    xs = x if rows is None else x[rows]
    h = int(tok64.codebooks.shape[-1])
    if len(xs) == 0:
        return np.zeros((0, h), dtype=np.float64)
    xt = torch.from_numpy(np.ascontiguousarray(xs, dtype=np.float32)).double()
    out = []
    with torch.inference_mode():
        for b in xt.split(batch_size):
            pad = -len(b) % ALIGN  # the same kernels for a row whatever rows come with it
            zb = tok64.encode(torch.cat([b, b.new_zeros(pad, b.shape[1])]) if pad else b)
            out.append(zb[:len(b)])
    return torch.cat(out).numpy()


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
    from .model.rqvae import beam_search

    cb = tok.codebooks.detach().float()  # (L, K, H)
    bias = tok.code_bias.detach().float()  # (L, K)
    const = (cb * cb).sum(-1) + bias  # (L, K): ||c||^2 + bias
    levels = cb.shape[0]
    width = int(tok.beam_width)
    # Per level: max ||c||^2 + max |bias|, the code-side part of the scale the margin is relative to.
    code_scale = (cb * cb).sum(-1).max(dim=1).values + tok.code_bias.detach().float().abs().max(dim=1).values  # (L,)
    # Level 1 is chosen among the quantizer's first-level table (its codes, or its prototypes when grouped).
    pts, pbias, pcode = (t.detach() for t in tok.quantizer.first_level_table()) if hasattr(tok, "quantizer") \
        else (cb[0], bias[0], torch.arange(cb.shape[1], device=cb.device))
    pts, pbias = pts.float(), pbias.float()
    first = (pts, (pts * pts).sum(-1) + pbias, (pts * pts).sum(-1).max() + pbias.abs().max(), pcode)
    n = len(x)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    codes_out = torch.empty(n, levels, dtype=torch.int64)
    unsure_out = torch.empty(n, dtype=torch.bool)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                z = tok.encode(xt[s:s + batch_size].to(dev)).float()  # (B, H)
                codes = torch.empty(len(z), levels, dtype=torch.int64, device=z.device)
                unsure = torch.zeros(len(z), dtype=torch.bool, device=z.device)
                for c in range(0, len(z), _CHUNK):  # cache-sized blocks for the distance matrices
                    r = z[c:c + _CHUNK]  # (b, H)
                    flag = unsure[c:c + _CHUNK]
                    for level in range(levels if width <= 1 else 1):
                        points, pconst, pscale, pcode = first if level == 0 else (cb[level], const[level],
                                                                                  code_scale[level], None)
                        d = torch.addmm(pconst[None, :], r, points.T, alpha=-2.0)  # (b, K) or (b, P)
                        best, idx = d.min(dim=1)  # (b,)
                        tol = margin * ((r * r).sum(1) + pscale)  # (b,)
                        flag |= (d <= (best + tol)[:, None]).sum(1) > 1
                        idx = idx if pcode is None else pcode[idx]
                        codes[c:c + _CHUNK, level] = idx
                        r = r - cb[level][idx]
                    if width > 1 and levels > 1:
                        tol = margin * ((r * r).sum(1) + code_scale[1:].sum())  # (b,)
                        deeper, close = beam_search(r, cb[1:], bias[1:], width, tol)
                        codes[c:c + _CHUNK, 1:] = deeper
                        flag |= close
                codes_out[s:s + len(z)] = codes.cpu()
                unsure_out[s:s + len(z)] = unsure.cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return codes_out.numpy(), unsure_out.numpy()


def reference_codes(tok64, z: np.ndarray) -> np.ndarray:
    """The float64 reference's codes for latents z (N, H): ``tok64.quantize`` (``exact_model``) on the
    CPU, in blocks. Returns (N, L) int64."""
    import torch

    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64))
    with torch.inference_mode():
        out = [tok64.quantize(b) for b in zt.split(_CHUNK)]
    return torch.cat(out).numpy() if out else np.zeros((0, int(tok64.codebooks.shape[0])), dtype=np.int64)


def _sq_dists(r: torch.Tensor, cb: torch.Tensor, cb_sq: torch.Tensor) -> torch.Tensor:
    """(..., H) residuals x (K, H) codes -> (..., K) squared distances, float64."""
    return ((r * r).sum(-1, keepdim=True) + cb_sq) - 2.0 * (r @ cb.T)


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
    import torch

    z64 = torch.from_numpy(np.asarray(z, dtype=np.float64))
    cb64 = torch.from_numpy(np.asarray(codebooks, dtype=np.float64))  # (L, K, H)
    sq64 = (cb64 * cb64).sum(-1)  # (L, K)
    if bias is not None:
        sq64 = sq64 + torch.from_numpy(np.asarray(bias, dtype=np.float64))
    levels = cb64.shape[0]
    codes_out, resid_out = [], []
    for s in range(0, len(z64), _CHUNK):
        r = z64[s:s + _CHUNK].clone()  # (B, H)
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


def path_residuals(z: np.ndarray, codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Squared distance from each latent to its path's quantized point, float64. z (M, H), codes (M, L) -> (M,)."""
    levels = codebooks.shape[0]
    q = codebooks[np.arange(levels)[None, :], codes].sum(1) if len(codes) else np.zeros_like(z)  # (M, H)
    return np.square(np.asarray(z, dtype=np.float64) - q).sum(1)


def _smallest(d: torch.Tensor, n: int) -> torch.Tensor:
    """Column indices of the n smallest values of each row, ascending; equal values by index. (M, X) -> (M, n)."""
    import torch

    vals, idx = torch.topk(d, min(n, d.shape[1]), dim=1, largest=False, sorted=False)
    o = idx.argsort(dim=1)
    idx, vals = idx.gather(1, o), vals.gather(1, o)
    return idx.gather(1, vals.argsort(dim=1, stable=True))


def candidate_paths(z: np.ndarray, codebooks: np.ndarray, codes: np.ndarray, beam_width: int, *,
                    part: Literal["all", "last", "deeper"] = "all", bias: np.ndarray | None = None) -> np.ndarray:
    """Alternative code paths for each movie, nearest first within each shared-prefix length.

    Order: first the paths that keep the first L - 1 codes (the ``LAST_LEVEL_CANDIDATES`` nearest
    other last-level codes, ranked by the squared distance of the final residual), then those that keep L - 2 codes
    (another code at level L - 1 among the ``beam_width`` nearest, then a beam search over the
    remaining levels), and so on down to level 1. Ties in distance go to the lower code index.

    Args:
        z: (M, H) latents. codebooks: (L, K, H). codes: (M, L) the greedy codes.
        part: ``last`` gives only the paths that keep L - 1 codes, ``deeper`` only the others
            (``all`` = ``last`` then ``deeper``), so callers can compute the costly part on demand.

    Returns:
        (M, T) int64 path ids (``sid.path_ids`` numbering), T = min(K - 1, 64) + (L - 1) * min(beam_width, K - 1).
    """
    import torch

    zt = torch.from_numpy(np.asarray(z, dtype=np.float64))
    cbs = torch.from_numpy(np.asarray(codebooks, dtype=np.float64))  # (L, K, H)
    cb_sq = (cbs * cbs).sum(-1)  # (L, K); with the codes' biases: distances are ranked as the tokenizer ranks them
    if bias is not None:
        cb_sq = cb_sq + torch.from_numpy(np.asarray(bias, dtype=np.float64))
    ct = torch.from_numpy(np.asarray(codes, dtype=np.int64))
    m, levels, k = len(zt), cbs.shape[0], cbs.shape[1]
    w = max(1, min(beam_width, k - 1))
    # residual entering each level along the greedy path: (M, L, H)
    res = [zt]
    for level in range(levels - 1):
        res.append(res[-1] - cbs[level][ct[:, level]])
    prefix = torch.zeros(m, dtype=torch.int64)  # path id of codes[:, :d]
    prefixes = [prefix]
    for level in range(levels - 1):
        prefix = prefix * k + ct[:, level]
        prefixes.append(prefix)
    groups = []
    depths = {"all": range(levels - 1, -1, -1), "last": range(levels - 1, levels - 2, -1),
              "deeper": range(levels - 2, -1, -1)}[part]
    for d in depths:  # d = the first level that differs from the greedy path
        dist = _sq_dists(res[d], cbs[d], cb_sq[d])  # (M, K)
        dist.scatter_(1, ct[:, d:d + 1], float("inf"))
        keep = min(k - 1, LAST_LEVEL_CANDIDATES) if d == levels - 1 else w
        order = _smallest(dist, keep)  # (M, W)
        paths = prefixes[d][:, None] * k + order  # partial path ids, (M, W)
        if d < levels - 1:
            r = res[d][:, None, :] - cbs[d][order]  # (M, W, H)
        for e in range(d + 1, levels):
            de = _sq_dists(r, cbs[e], cb_sq[e])  # (M, W, K): squared norm of the next residual
            wb = de.shape[1]
            flat = de.reshape(m, wb * k)
            idx = _smallest(flat, w)  # (M, W')
            beam, code = idx // k, idx % k
            paths = torch.gather(paths, 1, beam) * k + code
            if e < levels - 1:
                r = torch.gather(r, 1, beam[:, :, None].expand(-1, -1, r.shape[2])) - cbs[e][code]
        groups.append(paths)
    return torch.cat(groups, dim=1).numpy() if groups else np.zeros((m, 0), dtype=np.int64)


def _exhaustive_order(z: np.ndarray, codebooks: np.ndarray, codes: np.ndarray,
                      bias: np.ndarray | None = None) -> np.ndarray:
    """Every code path for one movie, by shared prefix with its greedy path (longest first), then by
    distance to the latent. Only for small K^L (<= EXHAUSTIVE_MAX_PATHS)."""
    levels, k, _ = codebooks.shape
    all_paths = np.arange(k ** levels, dtype=np.int64)
    all_codes = path_codes(all_paths, k, levels)  # (P, L)
    points = codebooks[np.arange(levels)[None, :], all_codes].sum(1)  # (P, H)
    dist = np.square(points - z[None, :]).sum(1)
    if bias is not None:
        dist = dist + np.asarray(bias)[np.arange(levels)[None, :], all_codes].sum(1)
    shared = np.cumprod(all_codes == codes[None, :], axis=1).sum(1)
    return all_paths[np.lexsort((all_paths, dist, -shared))]


@dataclass
class Assignment:
    """The result of `make_unique` for the movies it was given (in the given order)."""

    tokens: np.ndarray
    """(N, L) or (N, L + 1) int64: the SIDs' tokens."""
    moved: np.ndarray
    """(N,) bool: moved away from its greedy path (semantic strategy)."""
    suffixed: np.ndarray
    """(N,) bool: needed a non-zero collision token."""
    shared_prefix: np.ndarray
    """(N,) int: how many leading codes the final path shares with the greedy one (L if not moved)."""
    n_collided: int
    """Movies whose greedy path was shared with another movie (or with a reserved SID)."""


def make_unique(
    codes: np.ndarray,
    movie_ids: np.ndarray,
    *,
    strategy: str,
    codebook_size: int,
    latents: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    codebooks: np.ndarray | None = None,
    beam_width: int = 8,
    reserved: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> Assignment:
    """Turn greedy codes into unique SIDs (pure; deterministic for the same inputs in any order).

    Args:
        codes: (N, L) greedy codes.
        movie_ids: (N,) int64, distinct.
        strategy: ``semantic`` or ``suffix``.
        codebook_size: K.
        latents, codebooks: the (N, H) float64 latents, or a function giving the rows it is passed
            (only the movies that share a path are asked for), and the (L, K, H) codebooks
            (``semantic`` only).
        beam_width: beam of the semantic search.
        reserved: (R, L) or (R, L + 1) tokens of SIDs that must not be issued again (incremental
            runs: kept and retired SIDs).
        bias: (L, K) the codes' biases (``tok.code_bias``), so alternatives are ranked as the tokenizer
            ranks codes; None for zeros.

    Returns:
        An `Assignment`; tokens have L + 1 columns when a collision token is used (always for
        ``suffix``; for ``semantic`` only if some movie found no free path or ``reserved`` has them).
    """
    codes = np.asarray(codes, dtype=np.int64)
    n, levels = codes.shape
    movie_ids = np.asarray(movie_ids, dtype=np.int64)
    k = codebook_size
    reserved = np.zeros((0, levels), dtype=np.int64) if reserved is None else np.asarray(reserved, dtype=np.int64)
    res_paths = path_ids(reserved[:, :levels], k)
    res_set = _unique_sorted(res_paths)
    # Highest collision token already issued on each reserved path (-1 where no token).
    res_suffix = reserved[:, levels] if reserved.shape[1] > levels else np.zeros(len(reserved), dtype=np.int64)
    res_top: dict[int, int] = {}
    for p, s in zip(res_paths.tolist(), res_suffix.tolist()):
        res_top[p] = max(res_top.get(p, -1), s)

    paths = path_ids(codes, k)  # (N,)
    final = paths.copy()
    moved = np.zeros(n, dtype=bool)
    shared = np.full(n, levels, dtype=np.int64)
    # Group by path (sorted by path, then movie_id).
    order = np.lexsort((movie_ids, paths))
    sp = paths[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sp[1:] != sp[:-1]
    sizes = np.diff(np.flatnonzero(np.r_[first, True]))
    group_size = np.empty(n, dtype=np.int64)
    group_size[order] = np.repeat(sizes, sizes)
    on_reserved = _member(paths, res_set)
    collided = (group_size > 1) | on_reserved
    if strategy == "semantic" and collided.any():
        if latents is None or codebooks is None:
            raise ValueError("the semantic strategy needs latents and codebooks")
        need = np.flatnonzero(collided)  # every movie whose latent is read below, fetched once
        z_need = np.asarray(latents[need] if isinstance(latents, np.ndarray) else latents(need), dtype=np.float64)
        codebooks = np.asarray(codebooks, dtype=np.float64)
        # Within a group the keeper is the movie closest to the path's point (ties: smallest movie_id).
        resid = np.zeros(n, dtype=np.float64)
        resid[need] = path_residuals(z_need, codebooks, codes[need])
        order = np.lexsort((movie_ids, resid, paths))
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start  # position in its group
    suffix = np.zeros(n, dtype=np.int64)

    if strategy == "suffix":
        base = np.array([res_top.get(p, -1) + 1 for p in paths.tolist()], dtype=np.int64) if len(res_top) \
            else np.zeros(n, dtype=np.int64)
        suffix = base + rank
        tokens = np.concatenate([codes, suffix[:, None]], axis=1)
        return Assignment(tokens, moved, suffix > 0, shared, int(collided.sum()))

    if strategy != "semantic":
        raise ValueError(f"unknown strategy {strategy!r}")
    movers = np.flatnonzero((rank > 0) | on_reserved)
    movers = movers[np.argsort(movie_ids[movers], kind="stable")]  # processed in movie_id order
    unresolved: list[int] = []
    if len(movers):
        z = z_need[np.searchsorted(need, movers)]  # (M, H), row j = movers[j] (movers are collided)
        used_arr = _unique_sorted(np.concatenate([paths[rank == 0], res_paths]))
        # 1. Nearly every mover finds a free code at the last level. Movers are served in movie_id
        # order, each taking its nearest last-level code that is free and not taken by an earlier
        # mover, computed for all at once by deferred acceptance (with one priority order for every
        # path it gives exactly that serial result).
        cands = np.concatenate([  # (M, T), in blocks to bound memory
            candidate_paths(z[b], codebooks, codes[movers[b]], beam_width, part="last", bias=bias)
            for b in np.array_split(np.arange(len(movers)), max(1, -(-len(movers) // _CHUNK)))])
        got = _serve_in_order(cands, ~_member(cands, used_arr))  # (M,) path or -1
        # 2. Movers left without one (their whole last level is taken) search deeper, one by one in
        # movie_id order, among paths nobody holds.
        used = set(used_arr.tolist()) | set(got[got >= 0].tolist())
        for j in np.flatnonzero(got < 0).tolist():
            if levels > 1:
                deeper = candidate_paths(z[j:j + 1], codebooks, codes[movers[j:j + 1]], beam_width, part="deeper",
                                         bias=bias)[0]
                got[j] = next((p for p in deeper.tolist() if p not in used), -1)
            if got[j] < 0 and k ** levels <= EXHAUSTIVE_MAX_PATHS:  # small space: scan it all
                got[j] = next((p for p in _exhaustive_order(z[j], codebooks, codes[movers[j]], bias).tolist()
                               if p not in used), -1)
            if got[j] >= 0:
                used.add(int(got[j]))
        ok = got >= 0
        final[movers[ok]] = got[ok]
        moved[movers[ok]] = True
        unresolved = movers[~ok].tolist()
    new_codes = path_codes(final, k, levels) if moved.any() else codes
    shared[moved] = np.cumprod(new_codes[moved] == codes[moved], axis=1).sum(1)
    suffixed = np.zeros(n, dtype=bool)
    if unresolved or reserved.shape[1] > levels:
        # No free path left for some movies (or the kept SIDs carry a collision token): number the
        # movies on each path after the ones already there, in movie_id order.
        settled = np.ones(n, dtype=bool)
        settled[unresolved] = False
        held = set(final[settled].tolist())  # each holds its path with token 0
        for i in sorted(unresolved, key=lambda i: movie_ids[i]):
            p = int(final[i])
            top = max(res_top.get(p, -1), 0 if p in held else -1)
            suffix[i] = top + 1
            res_top[p] = top + 1
        suffixed = suffix > 0
        tokens = np.concatenate([new_codes, suffix[:, None]], axis=1)
    else:
        tokens = new_codes
    return Assignment(tokens, moved, suffixed, shared, int(collided.sum()))


def _unique_sorted(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int array (sort-based: numpy's hash-based ``unique`` is slower here)."""
    a = np.sort(np.asarray(a).ravel())
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def _member(a: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """``np.isin(a, sorted_unique)`` by binary search (``sorted_unique`` from `_unique_sorted`)."""
    if len(sorted_unique) == 0:
        return np.zeros(np.shape(a), dtype=bool)
    idx = np.minimum(np.searchsorted(sorted_unique, a), len(sorted_unique) - 1)
    return sorted_unique[idx] == a


def _serve_in_order(cands: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Serial dictatorship, vectorized: row 0 takes its first allowed candidate, row 1 its first allowed
    one not taken by row 0, and so on. Computed by deferred acceptance (every path prefers the lower
    row; with one priority order this gives exactly the serial result) in a few array passes.

    Args:
        cands: (M, T) int64 candidates per row, in preference order (distinct within a row).
        ok: (M, T) bool, which candidates are allowed at all.

    Returns:
        (M,) the path each row gets, -1 where none is left.
    """
    m = len(cands)
    got = np.full(m, -1, dtype=np.int64)
    if m == 0:
        return got
    pref = np.take_along_axis(cands, np.argsort(~ok, axis=1, kind="stable"), axis=1)  # allowed ones first
    n_ok = ok.sum(1)
    ptr = np.zeros(m, dtype=np.int64)
    while True:
        asking = np.flatnonzero((got < 0) & (ptr < n_ok))
        if len(asking) == 0:
            return got
        holders = np.flatnonzero(got >= 0)
        who = np.concatenate([holders, asking])
        want = np.concatenate([got[holders], pref[asking, ptr[asking]]])
        o = np.lexsort((who, want))
        who, want = who[o], want[o]
        win = np.r_[True, want[1:] != want[:-1]]  # the lowest row asking for each path
        lose = who[~win]
        got[lose] = -1
        ptr[lose] += 1  # a loser's pointer was on the path it lost: try the next one
        got[who[win]] = want[win]


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
) -> tuple[np.ndarray, dict[str, Any]]:
    """Codes and unique SIDs for a set of movies (no I/O).

    Args:
        tok: the tokenizer (see `movielens_sids.model.load_tokenizer`), on the device it runs on.
        x: (N, D) float32 embeddings; movie_ids: (N,) int64.
        cfg: the assign settings (strategy, beam width, batch size).
        reserved: tokens of SIDs that must not be issued (incremental runs).

    Returns:
        tokens (N, L) or (N, L + 1) int64, and the dedup statistics.
    """
    levels, k = int(tok.config.levels), int(tok.config.codebook_size)
    tok64 = exact_model(tok)  # the float64 CPU reference: decides every close call
    codebooks = tok64.codebooks.numpy()  # (L, K, H) float64
    bias = tok64.code_bias.numpy()  # (L, K) float64
    codes, unsure = fast_codes(tok, x, batch_size=cfg.batch_size)  # float32, on the tokenizer's device
    rows = np.flatnonzero(unsure)
    if len(rows):
        codes[rows] = reference_codes(tok64, exact_latents(tok64, x, rows))
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
        "unique_paths_before": int(len(_unique_sorted(path_ids(codes, k)))),
        "n_moved": int(a.moved.sum()),
        "n_suffixed": int(a.suffixed.sum()),
    }
    if cfg.strategy == "semantic":
        stats["moved_shared_prefix"] = {str(s): int(c) for s, c in
                                        zip(*np.unique(a.shared_prefix[a.moved], return_counts=True))}
        stats.update(_move_cost(tok64, x, codes, a.tokens[:, :levels], a.moved))
    return a.tokens, stats


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
    on their greedy codes and on their final codes (float64 reference model, so device-independent)."""
    import torch

    if not moved.any():
        return {"moved_relative_error_before": None, "moved_relative_error_after": None}
    idx = np.flatnonzero(moved)
    xm = torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32)).double()  # (M, D)
    out = {}
    with torch.inference_mode():
        for name, c in (("before", before), ("after", after)):
            rec = tok64.decode_codes(torch.from_numpy(c[idx]))  # (M, D) float64
            err = ((xm - rec) ** 2).sum(1) / (xm ** 2).sum(1).clamp_min(1e-12)
            out[f"moved_relative_error_{name}"] = _sig(float(err.mean()))
    return out


# ----------------------------------------------------------------------------------------------
# The stage (I/O)
# ----------------------------------------------------------------------------------------------


def read_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``embeddings.parquet`` -> movie ids (N,) int64 and vectors (N, D) float32, validated."""
    from .io import read_parquet

    table = read_parquet(path, "embed")
    for col in ("movie_id", "embedding"):
        if col not in table.column_names:
            raise SidsError(f"{path} has no {col!r} column; run `movielens-sids embed` again")
    ids = table.column("movie_id").to_numpy().astype(np.int64)
    emb = table.column("embedding").combine_chunks()
    n = len(ids)
    if n == 0:
        raise SidsError(f"{path} has no movies")
    if emb.null_count:
        raise SidsError(f"{path}: {emb.null_count} movies have no embedding")
    flat = emb.flatten().to_numpy(zero_copy_only=False)
    if len(flat) % n:
        raise SidsError(f"{path}: embeddings do not all have the same dimension")
    x = flat.reshape(n, -1).astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = ids[~np.isfinite(x).all(axis=1)]
        raise SidsError(f"{path}: NaN or infinite embeddings for {len(bad)} movies (first movie_id {bad[0]})")
    if len(_unique_sorted(ids)) != n:
        raise SidsError(f"{path}: duplicate movie_id values")
    return ids, x


def _load_model(run_dir: Path, dim: int):
    from .model import load_tokenizer

    model_dir = run_dir / "model"
    for f in ("config.json", "model.safetensors"):
        if not (model_dir / f).exists():
            raise SidsError(f"{model_dir / f} not found: run `movielens-sids train` first")
    tok = load_tokenizer(model_dir)
    if int(tok.config.input_dim) != dim:
        raise SidsError(f"embeddings have dimension {dim} but the model in {model_dir} expects "
                        f"{tok.config.input_dim}; retrain the model or re-embed")
    return tok


def model_fingerprint(tok) -> str:
    """sha256 of the tensors that decide the codes (parameters and codebooks, by name), not of the file:
    a save/load round trip keeps it."""
    import hashlib

    h = hashlib.sha256()
    named = dict(tok.named_parameters())
    named["codebooks"] = tok.codebooks
    for name in sorted(named):
        t = named[name].detach().to("cpu").contiguous()
        h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def read_sids(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``sids.parquet`` -> movie ids (N,), tokens (N, T) int64, and its decoded metadata."""
    from .io import parquet_metadata, read_parquet

    table = read_parquet(path, "assign")
    ids = table.column("movie_id").to_numpy().astype(np.int64)
    col = table.column("semantic_id").combine_chunks()
    n = len(ids)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    tokens = flat.reshape(n, -1) if n else np.zeros((0, 0), dtype=np.int64)
    meta = {}
    for key, v in parquet_metadata(path).items():
        try:
            meta[key] = json.loads(v)
        except ValueError:
            meta[key] = v
    return ids, tokens, meta


def sids_table(movie_ids: np.ndarray, tokens: np.ndarray):
    """The ``sids.parquet`` table: movie_id int64, semantic_id list<int32>, sid string; sorted by movie_id."""
    import pyarrow as pa

    order = np.argsort(movie_ids, kind="stable")
    ids, tok = movie_ids[order], np.ascontiguousarray(tokens[order], dtype=np.int32)
    n, t = tok.shape
    offsets = pa.array(np.arange(0, n * t + 1, t, dtype=np.int32))
    semantic_id = pa.ListArray.from_arrays(offsets, pa.array(tok.reshape(-1)))
    return pa.table({"movie_id": pa.array(ids, pa.int64()), "semantic_id": semantic_id, "sid": format_sids(tok)})


def assign_stage(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """The `assign` stage: embeddings.parquet + model/ -> sids.parquet.

    Returns:
        A summary: the dedup statistics, plus (incremental) kept/new/retired counts and the
        ids of movies that disappeared.
    """
    from .io import write_parquet

    run_dir = Path(run_dir)
    acfg: AssignConfig = cfg.assign
    ids, x = read_embeddings(run_dir / "embeddings.parquet")
    tok = _load_model(run_dir, x.shape[1]).to(resolve_device(acfg.device))
    levels, k = int(tok.config.levels), int(tok.config.codebook_size)
    sids_path = run_dir / "sids.parquet"
    retired_ids = np.zeros(0, dtype=np.int64)
    retired_tok = None
    result: dict[str, Any] = {}
    if acfg.incremental:
        if not sids_path.exists():
            raise SidsError(f"{sids_path} not found: --incremental extends existing SIDs; run "
                            "`movielens-sids assign` without it first")
        old_ids, old_tok, meta = read_sids(sids_path)
        info = meta.get("assign") or {}
        if info.get("levels") != levels or info.get("codebook_size") != k:
            raise SidsError(f"{sids_path} was made with {info.get('levels')} levels x {info.get('codebook_size')} "
                            f"codes but the model has {levels} x {k}; run assign without --incremental")
        if info.get("strategy") != acfg.strategy:
            raise SidsError(f"{sids_path} was made with strategy {info.get('strategy')!r}; --incremental must "
                            f"use the same (got {acfg.strategy!r})")
        if info.get("model_fingerprint") != model_fingerprint(tok):
            log.warning("the model changed since %s was written: existing SIDs are kept, new movies get codes "
                        "from the new model", sids_path.name)
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
        new_tok, stats = assign_sids(tok, x[new], ids[new], acfg, reserved=reserved)
        if new_tok.shape[1] != old_tok.shape[1]:
            raise SidsError(f"{int(new.sum())} new movies need a collision token but the existing SIDs have "
                            f"{old_tok.shape[1]} tokens; run assign without --incremental (gives new SIDs)")
        all_ids = np.concatenate([old_ids[keep], ids[new]])
        all_tok = np.concatenate([old_tok[keep], new_tok])
        result.update(n_kept=int(keep.sum()), n_new=int(new.sum()), n_restored=int(back.sum()),
                      n_retired=int(len(retired_ids)), disappeared=np.sort(old_ids[gone]).tolist())
        stats = merge_stats(meta.get("assign_stats") or {}, stats, n_movies=len(all_ids))
        log.info("incremental: %d SIDs kept, %d restored, %d new, %d retired", int(keep.sum()) - int(back.sum()),
                 int(back.sum()), int(new.sum()), len(retired_ids))
    else:
        all_ids = ids
        all_tok, stats = assign_sids(tok, x, ids, acfg)
    if len(_unique_sorted(path_ids(all_tok, max(k, int(all_tok.max()) + 1)))) != len(all_ids):
        raise AssertionError("assign produced duplicate SIDs")  # guarded by make_unique; never expected
    info = {"strategy": acfg.strategy, "levels": levels, "codebook_size": k, "sid_length": int(all_tok.shape[1]),
            "collision_token": bool(all_tok.shape[1] > levels), "semantic_id_dtype": "int32",
            "model_fingerprint": model_fingerprint(tok)}
    retired = []
    if retired_tok is not None and len(retired_ids):
        o = np.argsort(retired_ids, kind="stable")
        retired = [[int(i), [int(v) for v in t]] for i, t in zip(retired_ids[o], retired_tok[o])]
    metadata = {"assign": json.dumps(info, sort_keys=True), "assign_stats": json.dumps(stats, sort_keys=True),
                "retired": json.dumps(retired)}
    write_parquet(sids_path, sids_table(all_ids, all_tok), metadata=metadata)
    log.info("%d movies: %d collided before dedup, %d moved, %d with a collision token (%s, %d tokens per SID)",
             stats["n_movies"], stats["n_collided_before"], stats["n_moved"], stats["n_suffixed"], acfg.strategy,
             all_tok.shape[1])
    return {**stats, **result}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .config import flag

    flag(p, "--strategy", key="assign.strategy", choices=["semantic", "suffix"],
         help="semantic (default): move colliding movies to the nearest free code path; "
              "suffix: TIGER's extra collision token")
    flag(p, "--incremental", key="assign.incremental", action="store_true",
         help="keep every SID already in sids.parquet; give only new movies new SIDs")
    flag(p, "--beam-width", key="assign.beam_width", type=int, help="beam of the semantic search (default 8)")
    flag(p, "--device", key="assign.device", type=str, help="auto, cpu, cuda, cuda:N or mps")
    flag(p, "--batch-size", key="assign.batch_size", type=int, help="movies per encoder batch")


def command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> None:
    from .stages import execute

    execute("assign", cfg, run_dir)

