"""``evaluate``: how well do the Semantic IDs keep the meaning of the embeddings? (SPEC section 4)

Everything is measured on the whole catalog, with no sampling:

- the tokenizer's own quality on the *raw* codes (before the IDs were made unique): reconstruction,
  per-level utilization and perplexity, collisions;
- what the user-facing *final* SIDs (``sids.parquet``) keep of the embedding space: the overlap
  between a movie's 10 nearest neighbours by embedding and by SID, how often embedding neighbours
  share the first token (against the chance rate), how pure the first-level clusters are in genre,
  and the nearest movies of a few probe titles by SID next to those by embedding;
- what making the IDs unique cost (the ``dedup`` section: the assign stage's statistics plus the
  reconstruction error and neighbour overlap of the raw codes against the final SIDs).

Neighbours by SID rank movies by the length of the SID prefix they share with the query, then by
cosine similarity of their decoded vectors (the decoder's output for each movie's first L tokens).
They are computed group by group over the SIDs sorted lexicographically: a movie's 10 nearest all
lie in the deepest prefix group that holds at least 11 movies, so each movie is compared only with
that group (a few hundred movies at most for a healthy codebook) instead of the whole catalog.

The exact embedding k-NN (FAISS, ~20 s for 87,585 x 384 on two cores) is cached in
``.cache/knn-<embeddings hash>-k10.npy``, so re-evaluating after a retrain skips it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from . import metrics
from .errors import SidsError
from .io import atomic_path, file_hash, parquet_metadata, read_parquet, write_json, write_parquet, write_text

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from .config import Config

log = logging.getLogger(__name__)

HELP = "write report.json and report.md (SPEC section 4); --compare RUN_DIR... puts several runs side by side"

K_NEIGHBORS = 10
"""The k of every neighbour metric in the report (the SPEC's keys say ``_at_10``)."""
K_MUTUAL = 5
"""The k of the mutual k-NN pairs of the ``coherence`` key."""
DEFAULT_PROBES = ("Matrix, The (1999)", "Toy Story (1995)", "Godfather, The (1972)", "Pulp Fiction (1994)")
"""The original project's four probe movies."""
CACHE_DIR = ".cache"
CHARTS = {
    "code_usage": "report-code-usage.png",
    "collisions": "report-collisions.png",
    "shared_prefix": "report-shared-prefix.png",
}


@dataclass
class EvaluateConfig:
    """Settings of the evaluate stage."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"batch_size", "cache"})

    probes: list[str] = field(default_factory=lambda: list(DEFAULT_PROBES))
    """Probe movies in MovieLens form, ``"Title (year)"``; the report lists their nearest movies."""
    extra_probes: list[str] = field(default_factory=list)
    """More probes (``--probe TITLE``, repeatable), added to ``probes``."""
    probe_neighbors: int = 10
    """How many neighbours to list per probe."""
    charts: bool = True
    """Write PNG charts next to report.md."""
    batch_size: int = 8192
    """Movies per batch for the tokenizer and the exact k-NN (memory, not results)."""
    cache: bool = True
    """Reuse the embedding k-NN cached in ``.cache/`` for identical embeddings."""

    def __post_init__(self) -> None:
        if self.probe_neighbors < 1:
            raise ValueError(f"probe_neighbors: must be >= 1, got {self.probe_neighbors}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")

    def all_probes(self) -> list[str]:
        """``probes`` then ``extra_probes``, without repeats."""
        return list(dict.fromkeys([*self.probes, *self.extra_probes]))


# --------------------------------------------------------------------------------------------------
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .config import flag  # config imports this module for EvaluateConfig

    flag(p, "--probe", key="evaluate.extra_probes", action="append", metavar="TITLE",
         help='another probe movie, MovieLens form "Title (year)", e.g. "Alien (1979)" (repeatable)')
    flag(p, "--no-charts", key="evaluate.charts", action="store_false", help="skip the PNG charts")
    p.add_argument("--compare", nargs="+", type=Path, metavar="RUN_DIR",
                   help="instead of evaluating, put the report.json of these runs (and --run-dir, when given) "
                        "side by side; the table goes to stdout and to --out")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="where --compare writes its markdown (default: compare.md in the first run folder)")


def command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    if args.compare:
        runs = ([args.run_dir] if args.run_dir is not None else []) + list(args.compare)
        runs = list(dict.fromkeys(Path(r) for r in runs))
        text = compare_runs(runs, out=args.out)
        print(text, end="")
        return 0
    from .stages import execute

    result = execute("evaluate", cfg, run_dir)
    log.info("overlap@10 %.3f, first-token match %.3f (random %.3f), unique after dedup %.4f -> %s",
             result["overlap_at_10"], result["first_token_match_at_10"], result["random_first_token_match"],
             result["unique_fraction_after_dedup"], run_dir / "report.md")
    return 0


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class _Inputs:
    """Everything the report reads, aligned by movie (sorted by movie_id)."""

    movie_ids: np.ndarray  # (N,) int64
    titles: list[str]  # N MovieLens-form titles, "Matrix, The (1999)"
    genres: list[list[str]]  # N genre lists
    x: np.ndarray  # (N, D) float32 embeddings
    sid_tokens: np.ndarray  # (N, T) int64 final SID tokens, -1 past a movie's length (T = L or L+1)
    sid_lengths: np.ndarray  # (N,) int64
    sid_strings: list[str]  # N
    assign_stats: dict[str, Any] | None
    embedding_model: str | None
    embeddings_path: Path
    tokenizer: Any


def movielens_title(title: str, year: Any) -> str:
    """The MovieLens form of a title: ``"Matrix, The (1999)"``, or the bare title when the year is unknown."""
    if year is None or (isinstance(year, float) and math.isnan(year)):
        return title
    return f"{title} ({int(year)})"


def _embedding_matrix(table: pa.Table, path: Path) -> np.ndarray:
    import pyarrow as pa

    if "embedding" not in table.column_names:
        raise SidsError(f"{path} has no 'embedding' column: run `movielens-sids embed` again")
    col = table.column("embedding").combine_chunks()
    n = len(col)
    if n == 0:
        raise SidsError(f"{path} holds no embeddings")
    if pa.types.is_fixed_size_list(col.type):
        x = col.flatten().to_numpy(zero_copy_only=False).reshape(n, col.type.list_size)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = np.asarray(col.value_lengths())
        if (lengths != lengths[0]).any():
            raise SidsError(f"{path}: embeddings have different lengths")
        x = col.flatten().to_numpy(zero_copy_only=False).reshape(n, int(lengths[0]))
    else:
        raise SidsError(f"{path}: 'embedding' must be a list of floats, got {col.type}")
    x = np.require(x, dtype=np.float32, requirements=["C", "W"])  # torch wants writable memory
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise SidsError(f"{path} has NaN or infinite values in {bad} embeddings: run `movielens-sids embed` again")
    return x


def _sid_matrix(table: pa.Table, path: Path, levels: int, codebook_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, T) int64 tokens padded with -1, and (N,) lengths, validated against the tokenizer's shape."""
    import pyarrow as pa

    for c in ("movie_id", "semantic_id", "sid"):
        if c not in table.column_names:
            raise SidsError(f"{path} has no {c!r} column: run `movielens-sids assign` again")
    col = table.column("semantic_id").combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise SidsError(f"{path}: 'semantic_id' must be a list of integers, got {col.type}")
    if col.null_count:
        raise SidsError(f"{path}: {col.null_count} movies have no semantic_id: run `movielens-sids assign` again")
    lengths = np.asarray(col.value_lengths(), dtype=np.int64) if not pa.types.is_fixed_size_list(col.type) \
        else np.full(len(col), col.type.list_size, dtype=np.int64)
    if ((lengths != levels) & (lengths != levels + 1)).any():
        bad = sorted(set(lengths.tolist()) - {levels, levels + 1})
        raise SidsError(f"{path}: semantic_id lengths {bad} do not match the model's {levels} levels "
                        "(sids.parquet is older than model/?): run `movielens-sids assign` again")
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    t = int(lengths.max())
    tokens = np.full((len(col), t), -1, dtype=np.int64)
    rows = np.repeat(np.arange(len(col)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cols = np.arange(len(values)) - np.repeat(starts, lengths)
    tokens[rows, cols] = values
    head = tokens[:, :levels]
    if (head < 0).any() or (head >= codebook_size).any():
        raise SidsError(f"{path}: semantic_id codes outside 0..{codebook_size - 1} for this model "
                        "(sids.parquet is older than model/?): run `movielens-sids assign` again")
    if t > levels and (tokens[:, levels][lengths > levels] < 0).any():
        raise SidsError(f"{path}: negative collision tokens")
    return tokens, lengths


def _check_same_movies(catalog: pa.Table, cat_path: Path, others) -> np.ndarray:
    """The catalog's movie ids (N,); a ``SidsError`` naming the stage to re-run when another artifact
    (``(table, path, stage)`` triples, all sorted by id) holds different movies."""
    ids = catalog.column("movie_id").to_numpy().astype(np.int64)
    for table, path, stage in others:
        other = table.column("movie_id").to_numpy().astype(np.int64)
        if len(other) != len(ids) or (other != ids).any():
            raise SidsError(f"{path} holds {len(other):,} movies that do not match the {len(ids):,} of "
                            f"{cat_path.name}: run `movielens-sids {stage}` again")
    return ids


def _sorted_by_id(table: pa.Table) -> pa.Table:
    ids = table.column("movie_id").to_numpy()
    if len(ids) > 1 and (np.diff(ids) <= 0).any():
        return table.take(np.argsort(ids, kind="stable"))
    return table


def _load_tokenizer(model_dir: Path):
    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise SidsError(f"{model_dir / name} not found: run `movielens-sids train` first")
    from .model import load_tokenizer

    return load_tokenizer(model_dir)


def load_inputs(run_dir: Path, tokenizer: Any = None) -> _Inputs:
    """Read and cross-check the catalog, embeddings, SIDs and model of a run folder (writes nothing)."""
    run_dir = Path(run_dir)
    cat_path, emb_path, sid_path = (run_dir / n for n in ("catalog.parquet", "embeddings.parquet", "sids.parquet"))
    catalog = read_parquet(cat_path, "catalog")
    emb = read_parquet(emb_path, "embed")
    sids = read_parquet(sid_path, "assign")
    for table, path, cols in ((catalog, cat_path, ("movie_id", "title", "year", "genres")),
                              (emb, emb_path, ("movie_id", "embedding"))):
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise SidsError(f"{path} lacks columns {', '.join(missing)}")
    if catalog.num_rows == 0:
        raise SidsError(f"{cat_path} is an empty catalog")
    if tokenizer is None:
        tokenizer = _load_tokenizer(run_dir / "model")
    tcfg = tokenizer.config
    catalog, emb, sids = (_sorted_by_id(t) for t in (catalog, emb, sids))
    ids = _check_same_movies(catalog, cat_path, ((emb, emb_path, "embed"), (sids, sid_path, "assign")))
    x = _embedding_matrix(emb, emb_path)
    if x.shape[1] != tcfg.input_dim:
        raise SidsError(f"{emb_path} has {x.shape[1]}-d embeddings but the model expects {tcfg.input_dim}: "
                        "run `movielens-sids train` again")
    tokens, lengths = _sid_matrix(sids, sid_path, tcfg.levels, tcfg.codebook_size)
    meta = parquet_metadata(sid_path)
    stats = None
    if "assign_stats" in meta:
        try:
            stats = json.loads(meta["assign_stats"])
        except ValueError:
            log.warning("%s: unreadable assign_stats metadata, ignored", sid_path)
    titles = [movielens_title(t, y) for t, y in zip(catalog.column("title").to_pylist(),
                                                      catalog.column("year").to_pylist())]
    genres = [g or [] for g in catalog.column("genres").to_pylist()]
    return _Inputs(
        movie_ids=ids, titles=titles, genres=genres, x=x, sid_tokens=tokens, sid_lengths=lengths,
        sid_strings=[str(s) for s in sids.column("sid").to_pylist()], assign_stats=stats,
        embedding_model=parquet_metadata(emb_path).get("model"), embeddings_path=emb_path, tokenizer=tokenizer,
    )


# --------------------------------------------------------------------------------------------------
# Computation (pure: arrays in, arrays out)


def run_tokenizer(tok: Any, x: np.ndarray, sid_tokens: np.ndarray, *, batch_size: int = 8192
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The raw codes and reconstructions of ``x``, and the decoded vectors of the final SIDs.

    Args:
        tok: the tokenizer (``encode``, ``quantize``, ``decode_codes``).
        x: (N, D) embeddings.
        sid_tokens: (N, T) final SID tokens; only the first L are decoded (a suffix token has no vector).

    Returns:
        raw codes (N, L) int64, reconstruction of the raw codes (N, D), decoded final SIDs (N, D).
    """
    import torch

    levels = tok.config.levels
    dev = next((t.device for t in (*tok.parameters(), *tok.buffers())), torch.device("cpu"))
    codes, recon = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[start:start + batch_size]).to(dev)  # (B, D)
            c = tok.quantize(tok.encode(xb))  # (B, L)
            codes.append(c.cpu().numpy().astype(np.int64))
            recon.append(_f32(tok.decode_codes(c)))  # (B, D)
        raw, rec = np.concatenate(codes), np.concatenate(recon)
        # Only movies that dedup moved have final codes other than their raw ones: decode just those.
        dec = rec.copy()
        moved = np.flatnonzero((sid_tokens[:, :levels] != raw).any(axis=1))
        for start in range(0, len(moved), batch_size):
            rows = moved[start:start + batch_size]
            final = torch.from_numpy(np.ascontiguousarray(sid_tokens[rows, :levels])).to(dev)  # (B, L)
            dec[rows] = _f32(tok.decode_codes(final))  # (B, D)
    return raw, rec, dec


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _normalize(v: np.ndarray) -> np.ndarray:
    return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def shared_prefix_lengths(tokens: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many leading tokens ``tokens[a]`` and ``tokens[b]`` share (elementwise; -1 padding never matches).

    Args:
        tokens: (N, T) int64 tokens, -1 past a movie's length.
        a, b: index arrays of the same shape S.

    Returns:
        int64 array of shape S.
    """
    ta, tb = tokens[a], tokens[b]  # (*S, T)
    eq = (ta == tb) & (ta >= 0)
    return np.cumprod(eq, axis=-1).sum(axis=-1)


def sid_knn(tokens: np.ndarray, vectors: np.ndarray, k: int, *, max_block: int = 1 << 22) -> np.ndarray:
    """Every movie's k nearest movies by SID: longest shared prefix first, then decoded-vector cosine.

    Sorting the SIDs makes each prefix group a contiguous block. Let d be the deepest prefix length
    whose group around a movie has more than k members. Every movie outside that group shares a
    shorter prefix, so the k nearest lie inside it; the movies of the next-deeper group (at most
    k - 1 of them) are all among the k nearest; the rest of the group share exactly d tokens and are
    ranked by cosine. So each movie is scored against one block (a few hundred movies for a healthy
    codebook) with one matrix product, instead of against the whole catalog.

    Args:
        tokens: (N, T) int64 SID tokens, -1 past a movie's length.
        vectors: (N, D) decoded vectors, L2-normalised.
        k: neighbours per movie (< N).
        max_block: largest (queries x members) score matrix built at once.

    Returns:
        (N, k) int64 indices, nearest first (ties: the smaller index first).
    """
    n, t = tokens.shape
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1}, got {k}")
    order = np.lexsort(tokens.T[::-1])  # (N,) sorted by first token, then second, ...
    st = tokens[order]
    sv = np.ascontiguousarray(vectors[order], dtype=np.float32)
    # gid[d]: id of each sorted row's group of movies sharing its first d tokens (d = 0..T).
    differs = np.ones((n, t), dtype=bool)
    differs[1:] = st[1:] != st[:-1]
    new_group = np.logical_or.accumulate(differs, axis=1)  # (N, T): differs within the first d+1 tokens
    gid = np.zeros((t + 1, n), dtype=np.int64)
    gid[1:] = np.cumsum(new_group.T, axis=1) - 1
    bounds = []  # per depth: (start, end) in sorted order of each row's group
    for g in gid:
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ends = np.r_[starts[1:], n]
        bounds.append((starts[g], ends[g]))
    sizes = np.stack([e - s for s, e in bounds])  # (T+1, N)
    depth = (sizes > k).sum(axis=0) - 1  # deepest d whose group has more than k members (sizes shrink with d)
    out = np.empty((n, k), dtype=np.int64)
    for d in range(t + 1):
        rows = np.flatnonzero(depth == d)  # sorted
        if not len(rows):
            continue
        lo_all, hi_all = bounds[d][0][rows], bounds[d][1][rows]
        cut = np.flatnonzero(np.r_[True, lo_all[1:] != lo_all[:-1]])  # rows sharing a group are contiguous
        for a, b in zip(cut, np.r_[cut[1:], len(rows)]):
            lo, hi = lo_all[a], hi_all[a]
            m = hi - lo
            step = max(1, max_block // m)
            for s in range(a, b, step):
                q = rows[s:min(s + step, b)]
                score = sv[q] @ sv[lo:hi].T  # (Q, M) cosine
                if d < t:  # the deeper group's members outrank everyone else
                    cols = np.arange(m)
                    inner = (cols >= (bounds[d + 1][0][q] - lo)[:, None]) & (cols < (bounds[d + 1][1][q] - lo)[:, None])
                    score[inner] = np.inf
                score[np.arange(len(q)), q - lo] = -np.inf  # not its own neighbour
                top = np.argpartition(-score, k - 1, axis=1)[:, :k] + lo  # (Q, k) unordered, sorted positions
                # Exact order of the k: shared prefix (deeper levels agree), then cosine, then index.
                shared = np.zeros(top.shape, dtype=np.int64)
                for dd in range(d + 1, t + 1):
                    shared += gid[dd][top] == gid[dd][q][:, None]
                sim = np.einsum("qd,qkd->qk", sv[q], sv[top])
                movie = order[top]
                top = np.take_along_axis(top, np.lexsort((movie, -sim, -shared), axis=-1), axis=1)
                out[q] = top
    # Back from sorted positions to movie indices.
    result = np.empty_like(out)
    result[order] = order[out]
    return result


def neighbor_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over movies of |a_i ∩ b_i| / k for two (N, k) neighbour index arrays."""
    return float((a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1).mean() / a.shape[1])


def genre_purity(level1: np.ndarray, genres: list[list[str]]) -> tuple[float, float, dict[str, int]]:
    """Share of movies whose level-1 code's majority genre is one of their genres.

    Movies without genres count as misses (they can match no majority genre). The baseline is the
    same share when every code's majority genre is the catalog's most common genre.

    Returns:
        purity, baseline, and the number of level-1 codes whose majority genre is each genre.
    """
    names = sorted({g for gs in genres for g in gs})
    if not names:
        return 0.0, 0.0, {}
    col = {g: i for i, g in enumerate(names)}
    has = np.zeros((len(genres), len(names)), dtype=np.float64)  # (N, G)
    for i, gs in enumerate(genres):
        has[i, [col[g] for g in gs]] = 1.0
    codes, inverse = np.unique(level1, return_inverse=True)
    counts = np.zeros((len(codes), len(names)))  # (codes, G)
    np.add.at(counts, inverse, has)
    majority = counts.argmax(axis=1)  # ties: first genre alphabetically
    purity = float(has[np.arange(len(genres)), majority[inverse]].mean())
    baseline = float(has[:, has.sum(axis=0).argmax()].mean())
    per_genre = np.bincount(majority, minlength=len(names))
    return purity, baseline, {names[i]: int(c) for i, c in enumerate(per_genre) if c}


def embedding_knn(x: np.ndarray, k: int, *, cache_file: Path | None, batch_size: int) -> np.ndarray:
    """Exact cosine k-NN of the embeddings, read from ``cache_file`` when it holds a valid result."""
    n = len(x)
    if cache_file is not None and cache_file.is_file():
        try:
            cached = np.load(cache_file, allow_pickle=False)
            if cached.shape == (n, k) and cached.dtype == np.int64 and 0 <= cached.min() and cached.max() < n:
                log.info("embedding %d-NN read from %s", k, cache_file)
                return cached
        except (OSError, ValueError):
            pass
        log.info("ignoring invalid cache %s", cache_file)
    t0 = time.perf_counter()
    nbrs = metrics.knn(x, k, batch_size=batch_size)
    log.info("exact embedding %d-NN of %d movies in %.1fs", k, n, time.perf_counter() - t0)
    if cache_file is not None:
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
            np.save(f, nbrs)
    return nbrs


def _probe_index(titles: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, t in enumerate(titles):
        index.setdefault(t, i)  # duplicates: the smallest movie_id wins
        index.setdefault(t.casefold(), i)
    return index


def _probe_neighbors(i: int, tokens: np.ndarray, dec: np.ndarray, x: np.ndarray, n: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` nearest of movie ``i`` by SID (prefix, then decoded cosine) and by embedding cosine."""
    others = np.delete(np.arange(len(x)), i)
    shared = shared_prefix_lengths(tokens, np.full(len(others), i), others)
    sim_dec = dec[others] @ dec[i]
    by_sid = others[np.lexsort((others, -sim_dec, -shared))[:n]]
    sim_emb = x[others] @ x[i]
    by_emb = others[np.lexsort((others, -sim_emb))[:n]]
    return by_sid, by_emb


def build_report(inp: _Inputs, cfg: EvaluateConfig, *, cache_dir: Path | None) -> tuple[dict[str, Any], dict]:
    """Compute the report (SPEC section 4 plus extras) and the arrays its charts plot."""
    tok = inp.tokenizer
    tcfg = tok.config
    levels, k_codes = int(tcfg.levels), int(tcfg.codebook_size)
    n = len(inp.x)
    if n <= K_NEIGHBORS:
        raise SidsError(f"the catalog has {n} movies; the neighbour metrics need more than {K_NEIGHBORS}")
    t0 = time.perf_counter()
    raw, recon, dec_final = run_tokenizer(tok, inp.x, inp.sid_tokens, batch_size=cfg.batch_size)
    log.info("tokenizer on %d movies in %.1fs", n, time.perf_counter() - t0)
    final = inp.sid_tokens

    t0 = time.perf_counter()
    cache_file = None
    if cache_dir is not None:
        cache_file = cache_dir / f"knn-{file_hash(inp.embeddings_path)[:20]}-k{K_NEIGHBORS}.npy"
    emb_nn = embedding_knn(inp.x, K_NEIGHBORS, cache_file=cache_file, batch_size=cfg.batch_size)
    t_knn = time.perf_counter() - t0

    t0 = time.perf_counter()
    xn = _normalize(inp.x)
    dec_final_n, recon_n = _normalize(dec_final), _normalize(recon)
    sid_nn = sid_knn(final, dec_final_n, K_NEIGHBORS)
    raw_nn = sid_knn(raw, recon_n, K_NEIGHBORS)
    t_sid = time.perf_counter() - t0
    log.info("SID %d-NN (final and raw codes) in %.1fs", K_NEIGHBORS, t_sid)

    overlap = neighbor_overlap(emb_nn, sid_nn)
    overlap_raw = neighbor_overlap(emb_nn, raw_nn)
    ftm = metrics.first_token_match(final, emb_nn)
    rnd = metrics.random_first_token_match(final)
    shared = shared_prefix_lengths(final, np.repeat(np.arange(n)[:, None], K_NEIGHBORS, axis=1), emb_nn)
    shared_hist = np.bincount(shared.ravel(), minlength=final.shape[1] + 1)

    before = metrics.collision_stats(raw)
    after = metrics.collision_stats(final)
    _, group_sizes = np.unique(raw, axis=0, return_counts=True)
    purity, purity_base, majority_genres = genre_purity(final[:, 0], inp.genres)

    rel_mse_raw = metrics.relative_mse(inp.x, recon)
    moved = (final[:, :levels] != raw).any(axis=1)
    suffixed = inp.sid_lengths > levels
    dedup: dict[str, Any] = {
        "assign_stats": inp.assign_stats,
        "n_changed_codes": int(moved.sum()),
        "n_suffixed": int(suffixed.sum()),
        "relative_mse_raw": rel_mse_raw,
        "relative_mse_final": metrics.relative_mse(inp.x, dec_final),
        "overlap_at_10_raw": overlap_raw,
        "overlap_at_10_final": overlap,
    }

    probes: dict[str, list[str]] = {}
    details: dict[str, Any] = {}
    skipped: list[str] = []
    index = _probe_index(inp.titles)
    for title in cfg.all_probes():
        i = index.get(title, index.get(title.casefold()))
        if i is None:
            skipped.append(title)
            log.warning("probe %r is not in the catalog; skipped", title)
            continue
        by_sid, by_emb = _probe_neighbors(i, final, dec_final_n, xn, cfg.probe_neighbors)
        name = inp.titles[i]
        probes[name] = [inp.titles[j] for j in by_sid]
        details[name] = {
            "movie_id": int(inp.movie_ids[i]),
            "sid": inp.sid_strings[i],
            "by_sid": [{"title": inp.titles[j], "sid": inp.sid_strings[j],
                        "shared_prefix": int(shared_prefix_lengths(final, np.array(i), np.array(j)))}
                       for j in by_sid],
            "by_embedding": [{"title": inp.titles[j], "sid": inp.sid_strings[j],
                              "cosine": round(float(xn[i] @ xn[j]), 4),
                              "shared_prefix": int(shared_prefix_lengths(final, np.array(i), np.array(j)))}
                             for j in by_emb],
            "overlap": len(set(by_sid.tolist()) & set(by_emb.tolist())) / cfg.probe_neighbors,
        }

    report: dict[str, Any] = {
        "n_movies": n,
        "levels": levels,
        "codebook_size": k_codes,
        "latent_dim": int(getattr(tcfg, "code_dim", tcfg.latent_dim)),  # identity encoder: H = D
        "embedding_dim": int(inp.x.shape[1]),
        "embedding_model": inp.embedding_model,
        "reconstruction": {
            "relative_mse": rel_mse_raw,
            "mean_cosine": metrics.mean_cosine(inp.x, recon),
        },
        "utilization": metrics.utilization(raw, k_codes),
        "perplexity": metrics.perplexity(raw, k_codes),
        "collisions": {
            "unique_fraction_before_dedup": before["unique_fraction"],
            "max_group_size": before["max_group_size"],
            "n_distinct_before_dedup": before["n_groups"],
            "unique_fraction_after_dedup": after["unique_fraction"],
        },
        "neighbors": {
            "overlap_at_10": overlap,
            "first_token_match_at_10": ftm,
            "random_first_token_match": rnd,
            "first_token_lift": ftm / rnd if rnd > 0 else None,
            "shared_prefix_histogram": shared_hist.tolist(),
        },
        "coherence": metrics.prefix_coherence(final, emb_nn, K_MUTUAL),
        "genre_purity_level1": purity,
        "genre_purity_level1_baseline": purity_base,
        "level1_majority_genres": majority_genres,
        "dedup": dedup,
        "probes": probes,
        "probe_details": details,
        "probes_skipped": skipped,
        "sid_lengths": {str(int(v)): int(c) for v, c in zip(*np.unique(inp.sid_lengths, return_counts=True))},
        "compute_s": {"embedding_knn": round(t_knn, 3), "sid_knn": round(t_sid, 3)},
    }
    chart_data = {
        "code_counts": metrics.code_counts(raw, k_codes),
        "group_sizes": group_sizes,
        "shared_hist": shared_hist,
    }
    return report, chart_data


# --------------------------------------------------------------------------------------------------
# The stage


def evaluate_stage(run_dir: Path, cfg: Config, *, tokenizer: Any = None) -> dict[str, Any]:
    """Compute the report of a run folder and write ``report.json``, ``report.md`` and the charts.

    Args:
        run_dir: the run folder (catalog, embeddings, sids and model must be there).
        cfg: the run's settings (``cfg.evaluate`` is used).
        tokenizer: a loaded tokenizer to use instead of ``run_dir/model`` (tests).

    Returns:
        The headline numbers.
    """
    from .stages import stage_seconds

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    ecfg: EvaluateConfig = cfg.evaluate
    inp = load_inputs(run_dir, tokenizer)  # validates everything before anything is written
    report, chart_data = build_report(inp, ecfg, cache_dir=(run_dir / CACHE_DIR) if ecfg.cache else None)
    from .labels import LABELS_FILE, labels_markdown, labels_table, run_labels

    labels = run_labels(run_dir)  # names for the codes (labels.py), before anything is written
    recorded = stage_seconds(run_dir)
    timings = {s: recorded.get(s) for s in ("catalog", "embed", "train", "assign")}
    timings.update({s: v for s, v in recorded.items() if s not in timings and s != "evaluate"})
    charts: dict[str, str] = {}
    if ecfg.charts:
        from .report_charts import write_charts

        charts = write_charts(run_dir, chart_data, CHARTS, levels=report["levels"])
    timings["evaluate"] = round(time.perf_counter() - t_start, 3)
    report["timings_s"] = timings
    report["charts"] = charts
    write_json(run_dir / "report.json", report)
    write_parquet(run_dir / LABELS_FILE, labels_table(labels))
    markdown = render_markdown(report, title=run_dir.name, labels=labels_markdown(labels))
    # Keep the section `retrieval` added (its own report.json says which SIDs it measured).
    start, end = "<!-- retrieval:start -->", "<!-- retrieval:end -->"
    old_md = run_dir / "report.md"
    old_text = old_md.read_text(encoding="utf-8") if old_md.exists() else ""
    if start in old_text and end in old_text.split(start, 1)[1]:
        section = start + old_text.split(start, 1)[1].split(end, 1)[0] + end
        markdown = markdown.rstrip("\n") + "\n\n" + section + "\n"
    write_text(run_dir / "report.md", markdown)
    n = report["neighbors"]
    return {
        "overlap_at_10": round(n["overlap_at_10"], 4),
        "first_token_match_at_10": round(n["first_token_match_at_10"], 4),
        "random_first_token_match": round(n["random_first_token_match"], 4),
        "unique_fraction_after_dedup": report["collisions"]["unique_fraction_after_dedup"],
    }


# --------------------------------------------------------------------------------------------------
# Markdown


def _md_cell(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def coherence_markdown(c: dict[str, Any]) -> str:
    """The ``coherence`` section: mutual k-NN pairs that keep a shared prefix, against random pairs."""
    def lift(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b > 0 else "–"

    return (f"Over the {c['pairs']:,} mutual {c['k']}-nearest-neighbour pairs in embedding space (each movie "
            f"among the other's {c['k']} nearest): the share that keep a shared SID prefix.\n\n"
            + _md_table(["prefix", "mutual neighbours", "random pairs", "lift"], [
                ["first token", _fmt(c["first_token"]), _fmt(c["random_first_token"], 5),
                 lift(c["first_token"], c["random_first_token"])],
                ["first two tokens", _fmt(c["first_two_tokens"]), _fmt(c["random_first_two_tokens"], 5),
                 lift(c["first_two_tokens"], c["random_first_two_tokens"])]]))


def render_markdown(r: dict[str, Any], *, title: str, labels: str | None = None) -> str:
    """The human-readable report: tables, the charts next to it, and the probe tables."""
    nb, col, rec, dd = r["neighbors"], r["collisions"], r["reconstruction"], r["dedup"]
    out = [f"# Evaluation report: {title}\n\n",
           f"{r['n_movies']:,} movies, {r['levels']} levels x {r['codebook_size']} codes on a "
           f"{r['latent_dim']}-d latent, embeddings from `{r['embedding_model']}` ({r['embedding_dim']}-d). "
           "Every number is measured on the whole catalog.\n"]
    out.append("\n## Summary\n\n")
    lift = nb.get("first_token_lift")
    out.append(_md_table(["metric", "value", "what it means"], [
        ["overlap@10", _fmt(nb["overlap_at_10"]), "share of a movie's 10 embedding neighbours that are "
         "also among its 10 SID neighbours"],
        ["first-token match@10", _fmt(nb["first_token_match_at_10"]),
         "share of embedding neighbours with the same first token"],
        ["random first-token match", _fmt(nb["random_first_token_match"]), "the same for two random movies"],
        ["lift", f"{lift:.1f}x" if lift else "–", "first-token match / random"],
        ["genre purity (level 1)", _fmt(r["genre_purity_level1"]),
         f"movies whose first-token cluster's majority genre is theirs (baseline "
         f"{_fmt(r['genre_purity_level1_baseline'])}: every cluster = most common genre)"],
        ["relative MSE", _fmt(rec["relative_mse"]), "reconstruction error / data variance (raw codes)"],
        ["mean cosine", _fmt(rec["mean_cosine"]), "reconstruction vs embedding (raw codes)"],
        ["unique before dedup", _fmt(col["unique_fraction_before_dedup"]), "movies whose raw codes no other has"],
        ["largest collision group", _fmt(col["max_group_size"]), "movies sharing one raw code tuple"],
        ["unique after dedup", _fmt(col["unique_fraction_after_dedup"]), "movies with a SID of their own"],
    ]))
    if "coherence" in r:
        out.append("\n## Prefix coherence\n\n")
        out.append(coherence_markdown(r["coherence"]))
    if labels:
        out.append("\n## What the codes hold\n\n")
        out.append(labels)
    out.append("\n## Codes per level\n\n")
    out.append(_md_table(["level", "utilization", "perplexity", "perplexity / K"], [
        [i + 1, _fmt(u), _fmt(p, 1), _fmt(p / r["codebook_size"], 3)]
        for i, (u, p) in enumerate(zip(r["utilization"], r["perplexity"]))]))
    charts = r.get("charts", {})
    if "code_usage" in charts:
        out.append(f"\n![Movies per code, each level sorted by count]({charts['code_usage']})\n")
    out.append("\n## Collisions and making the IDs unique\n\n")
    stats = dd.get("assign_stats") or {}
    rows = [["strategy", stats.get("strategy", "–")],
            ["distinct raw code tuples", _fmt(col.get("n_distinct_before_dedup"))],
            ["movies whose first L tokens differ from their raw codes", _fmt(dd["n_changed_codes"])],
            ["movies with a collision (suffix) token", _fmt(dd["n_suffixed"])],
            ["relative MSE, raw codes -> final SIDs",
             f"{_fmt(dd['relative_mse_raw'])} -> {_fmt(dd['relative_mse_final'])}"],
            ["overlap@10, raw codes -> final SIDs",
             f"{_fmt(dd['overlap_at_10_raw'])} -> {_fmt(dd['overlap_at_10_final'])}"]]
    rows += [[f"assign: {k}", _fmt(v)] for k, v in sorted(stats.items()) if k != "strategy"
             and isinstance(v, (int, float, str, bool))]
    out.append(_md_table(["", ""], rows))
    if "collisions" in charts:
        out.append(f"\n![How many movies share their raw code tuple]({charts['collisions']})\n")
    out.append("\n## How much SID prefix embedding neighbours share\n\n")
    hist = nb["shared_prefix_histogram"]
    total = max(sum(hist), 1)
    out.append(_md_table(["shared tokens", "neighbour pairs", "share"],
                         [[d, _fmt(c), f"{c / total:.1%}"] for d, c in enumerate(hist)]))
    if "shared_prefix" in charts:
        out.append(f"\n![Shared SID prefix length between each movie and its 10 embedding neighbours]"
                   f"({charts['shared_prefix']})\n")
    out.append("\n## Probes: nearest movies by SID next to nearest by embedding\n\n")
    out.append("By SID: longest shared prefix, then decoded-vector cosine. By embedding: cosine of the "
               "input vectors. *shared* = SID tokens shared with the probe.\n")
    for name, d in r.get("probe_details", {}).items():
        out.append(f"\n### {name} `{d['sid']}`\n\n{d['overlap']:.0%} of the lists agree.\n\n")
        rows = []
        for rank, (a, b) in enumerate(zip(d["by_sid"], d["by_embedding"]), 1):
            rows.append([rank, a["title"], f"`{a['sid']}`", a["shared_prefix"], b["title"], _fmt(b["cosine"], 3),
                         b["shared_prefix"]])
        out.append(_md_table(["#", "by SID", "SID", "shared", "by embedding", "cosine", "shared"], rows))
    if r.get("probes_skipped"):
        out.append("\nNot in the catalog (skipped): " + ", ".join(r["probes_skipped"]) + "\n")
    out.append("\n## Timings (seconds)\n\n")
    t = r.get("timings_s", {})
    out.append(_md_table(list(t), [[_fmt(v, 1) for v in t.values()]]))
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# --compare

# (row label, path into report.json, which way is better: +1 higher, -1 lower, 0 neither)
_COMPARE_ROWS: list[tuple[str, tuple[Any, ...], int]] = [
    ("movies", ("n_movies",), 0),
    ("embedding model", ("embedding_model",), 0),
    ("levels", ("levels",), 0),
    ("codebook size", ("codebook_size",), 0),
    ("latent dim", ("latent_dim",), 0),
    ("relative MSE", ("reconstruction", "relative_mse"), -1),
    ("mean cosine", ("reconstruction", "mean_cosine"), +1),
    ("unique before dedup", ("collisions", "unique_fraction_before_dedup"), +1),
    ("largest collision group", ("collisions", "max_group_size"), -1),
    ("unique after dedup", ("collisions", "unique_fraction_after_dedup"), +1),
    ("overlap@10", ("neighbors", "overlap_at_10"), +1),
    ("first-token match@10", ("neighbors", "first_token_match_at_10"), +1),
    ("random first-token match", ("neighbors", "random_first_token_match"), 0),
    ("first-token lift", ("neighbors", "first_token_lift"), +1),
    ("genre purity (level 1)", ("genre_purity_level1",), +1),
    ("coherence: first token", ("coherence", "first_token"), +1),
    ("coherence: first two tokens", ("coherence", "first_two_tokens"), +1),
    ("coherence: random first token", ("coherence", "random_first_token"), 0),
    ("coherence: random first two", ("coherence", "random_first_two_tokens"), 0),
    ("dedup: movies moved", ("dedup", "n_changed_codes"), 0),
    ("dedup: movies suffixed", ("dedup", "n_suffixed"), 0),
    ("overlap@10 raw codes", ("dedup", "overlap_at_10_raw"), +1),
]


def _get(d: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        if isinstance(d, dict) and p in d:
            d = d[p]
        elif isinstance(d, list) and isinstance(p, int) and p < len(d):
            d = d[p]
        else:
            return None
    return d


def compare_runs(run_dirs: list[Path], *, out: Path | None = None) -> str:
    """One markdown table with a column per run, from each run's ``report.json``; best values in bold.

    Writes the table to ``out`` (default: ``compare.md`` in the first run folder) and returns it.
    """
    if len(run_dirs) < 2:
        raise SidsError("--compare needs at least two run folders (or --run-dir and one more)")
    reports = []
    for d in run_dirs:
        p = Path(d) / "report.json"
        if not p.is_file():
            raise SidsError(f"{p} not found: run `movielens-sids evaluate --run-dir {d}` first")
        try:
            reports.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise SidsError(f"{p} is not readable JSON ({e})") from e
    names = [Path(d).name or str(d) for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    rows: list[tuple[str, tuple[Any, ...], int]] = list(_COMPARE_ROWS[:5])
    max_levels = max(int(r.get("levels") or 0) for r in reports)
    rows += [(f"utilization L{i + 1}", ("utilization", i), +1) for i in range(max_levels)]
    rows += [(f"perplexity L{i + 1}", ("perplexity", i), 0) for i in range(max_levels)]
    rows += _COMPARE_ROWS[5:]
    stages = list(dict.fromkeys(s for r in reports for s in (r.get("timings_s") or {})))
    rows += [(f"time: {s} (s)", ("timings_s", s), 0) for s in stages]
    table = []
    for label, path, better in rows:
        vals = [_get(r, path) for r in reports]
        cells = [_fmt(v, 1 if label.startswith(("time", "perplexity")) or "lift" in label else 4) for v in vals]
        nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if better and len(nums) > 1 and len(set(nums)) > 1:
            best = max(nums) if better > 0 else min(nums)
            cells = [f"**{c}**" if v == best else c for c, v in zip(cells, vals)]
        table.append([label, *cells])
    probes = list(dict.fromkeys(p for r in reports for p in (r.get("probes") or {})))
    for p in probes:
        table.append([f"{p}: top 3 by SID",
                      *["; ".join((r.get("probes") or {}).get(p, [])[:3]) or "–" for r in reports]])
    text = "# Runs compared\n\n" + _md_table(["", *names], table)
    target = out if out is not None else Path(run_dirs[0]) / "compare.md"
    write_text(target, text)
    log.info("comparison written to %s", target)
    return text
