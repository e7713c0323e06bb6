"""``evaluate``: how well do the Semantic IDs keep the meaning of the embeddings? (docs/outputs.md)

Everything is measured on the whole catalog (the neighbour metrics of a very large one: on a recorded
sample, see below):

- the tokenizer's own quality on the *raw* codes (before the IDs were made unique): reconstruction,
  per-level utilization and perplexity, collisions;
- what the user-facing *final* SIDs (``sids.parquet``) keep of the embedding space: the overlap
  between a movie's 10 nearest neighbours by embedding and by SID, how often embedding neighbours
  share the first token (against the chance rate), how pure the first-level clusters are in genre,
  and the nearest movies of a few probe titles by SID next to those by embedding;
- what making the IDs unique cost (the ``dedup`` section: the assign stage's statistics plus the
  reconstruction error and neighbour overlap of the raw codes against the final SIDs).

Neighbours by SID rank movies by the length of the SID prefix they share with the query, then by
cosine similarity of their decoded vectors (the decoder's output for each movie's first L tokens);
``metrics.sid_knn`` finds them group by group over the sorted SIDs. The metrics themselves are pure
functions of ``metrics``; this module reads the run folder, caches, and assembles the report.

The exact embedding k-NN (`metrics.knn`: by blocks; its time is the report's ``compute_s.embedding_knn``)
is cached in ``.cache/knn-<embeddings hash>-k10[-rows<hash>].npy``, so re-evaluating after a retrain
skips it. Over all N movies it grows as N^2, so a catalog larger than ``evaluate.neighbor_sample``
(default 10,000) measures the neighbour metrics (overlap, first-token match and lift, the shared-prefix
histogram, the dedup overlaps) for a seeded sample of that many movies, and prefix coherence for the
mutual pairs that touch a tenth of them. The sampled movies' neighbours stay exact among all N (so the
cost grows as N), and so do the lists of their neighbours that a mutual pair needs. Each section
records it: ``sample: {movies, seed}`` (null when every movie was used). The baselines (random pairs,
prefix counts), reconstruction, codes, collisions, genre purity and probes always use every movie.

May import: artifacts, metrics, io, errors, settings, lookup (the title matcher), reports.charts,
reports.markdown; torch on first use. Never another stage.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import metrics
from ..artifacts import (
    check_same_movies,
    model_fingerprint,
    model_input,
    movielens_titles,
    read_catalog,
    read_cowatch,
    read_embeddings,
    read_model,
    read_sids,
    stage_seconds,
)
from ..errors import SidsError
from ..io import atomic_path, file_hash, write_json, write_parquet
from ..labels import LABELS_FILE, catalog_labels, labels_table
from ..lookup import load_index, resolve_movie
from ..reports.charts import write_charts
from ..reports.markdown import write_page
from ..settings import EvaluateConfig

if TYPE_CHECKING:
    import torch

    from ..config import Config

log = logging.getLogger(__name__)


K_MUTUAL = 5
"""The k of the mutual k-NN pairs of the ``coherence`` key."""
K_NEIGHBORS = 10
"""The k of every neighbour metric in the report (the report's keys say ``_at_10``)."""
CACHE_DIR = ".cache"
CHARTS = {
    "code_usage": "report-code-usage.png",
    "collisions": "report-collisions.png",
    "shared_prefix": "report-shared-prefix.png",
}


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class _Inputs:
    """Everything the report reads, aligned by movie (sorted by movie_id)."""

    movie_ids: np.ndarray  # (N,) int64
    titles: list[str]  # N MovieLens-form titles, "Matrix, The (1999)"
    genres: list[list[str]]  # N genre lists
    x: np.ndarray  # (N, D) float32 embeddings: what the neighbour metrics and labels read
    x_in: np.ndarray  # (N, D') what the tokenizer reads: x, or x with collaborative vectors (D' = D + F)
    sid_tokens: np.ndarray  # (N, T) int64 final SID tokens, -1 past a movie's length (T = L or L+1)
    sid_lengths: np.ndarray  # (N,) int64
    model_codes: np.ndarray | None  # (N, L) the codes assign recorded for this very model, -1 rows unknown; or None
    sid_strings: list[str]  # N
    assign_stats: dict[str, Any] | None
    embedding_model: str | None
    embeddings_path: Path
    embedding_backend: str
    tokenizer: Any
    catalog: Any  # the catalog table (pyarrow), sorted by movie_id: what the code labels are made from


def load_inputs(run_dir: Path, tokenizer: Any = None) -> _Inputs:
    """Read and cross-check the catalog, embeddings, SIDs and model of a run folder (writes nothing)."""
    run_dir = Path(run_dir)
    catalog = read_catalog(run_dir, ("movie_id", "title", "year", "genres"))
    emb = read_embeddings(run_dir)
    if tokenizer is None:
        tokenizer = read_model(run_dir)
    tcfg = tokenizer.config
    sids = read_sids(run_dir, levels=tcfg.levels, codebook_size=tcfg.codebook_size)
    ids = catalog.column("movie_id").to_numpy().astype(np.int64)
    cat_path = run_dir / "catalog.parquet"
    check_same_movies(ids, cat_path, emb.movie_ids, emb.path, "embed")
    check_same_movies(ids, cat_path, sids.movie_ids, sids.path, "assign")
    x_in = model_input(run_dir, tokenizer, emb)
    recorded = (sids.metadata.get("assign") or {}).get("model_fingerprint")
    known = sids.model_codes if sids.model_codes is not None and recorded == model_fingerprint(tokenizer) else None
    stats = sids.metadata.get("assign_stats")
    if not isinstance(stats, dict):
        if stats is not None:
            log.warning("%s: unreadable assign_stats metadata, ignored", sids.path)
        stats = None
    titles = movielens_titles(catalog)
    genres = [g or [] for g in catalog.column("genres").to_pylist()]
    return _Inputs(
        movie_ids=ids, titles=titles, genres=genres, x=emb.x, x_in=x_in, sid_tokens=sids.tokens,
        sid_lengths=sids.lengths, model_codes=known, sid_strings=sids.strings, assign_stats=stats,
        embedding_model=emb.model, embeddings_path=emb.path, embedding_backend=emb.backend, tokenizer=tokenizer,
        catalog=catalog,
    )


# --------------------------------------------------------------------------------------------------
# Computation (pure: arrays in, arrays out)


def run_tokenizer(tok: Any, x: np.ndarray, *, known: np.ndarray | None = None, batch_size: int = 8192
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The raw codes and reconstructions of ``x``.

    Args:
        tok: the tokenizer (``encode``, ``quantize``, ``decode_codes``).
        x: (N, D) embeddings.
        known: (N, L) codes this tokenizer gives, as assign recorded them (-1 rows: unknown); only the
            other rows are encoded and quantized.

    Returns:
        raw codes (N, L) int64, reconstruction of the raw codes (N, D) float32.
    """
    import torch

    levels = tok.config.levels
    dev = _device(tok)
    raw = np.full((len(x), levels), -1, dtype=np.int64) if known is None else known.copy()  # (N, L)
    todo = np.flatnonzero((raw < 0).any(axis=1))
    rec = np.empty(x.shape, dtype=np.float32)  # filled in place: no second copy of N x D floats
    with torch.no_grad():
        for start in range(0, len(todo), batch_size):
            rows = todo[start:start + batch_size]
            xb = torch.from_numpy(x[rows]).to(dev)  # (B, D)
            raw[rows] = tok.quantize(tok.encode(xb)).cpu().numpy()  # (B, L)
        for start in range(0, len(x), batch_size):
            c = torch.from_numpy(raw[start:start + batch_size]).to(dev)  # (B, L)
            rec[start:start + len(c)] = _f32(tok.decode_codes(c))  # (B, D)
    return raw, rec


class _FinalSids:
    """The decoded final SIDs as ``relative_mse`` reads them (``len`` and row slices), never a second N x D
    array: the reconstructions, with the rows of the movies dedup moved replaced by their final codes'
    vectors, decoded on demand in fixed batches of those movies (so every value is the same whatever slice
    asks for it).

    Args:
        recon: (N, D) reconstructions of the raw codes. moved: (M,) sorted rows whose final codes differ.
        tok: the tokenizer. final_codes: (N, L) the final SIDs' codes. batch_size: movies per decoded batch.
    """

    def __init__(self, recon: np.ndarray, moved: np.ndarray, tok: Any, final_codes: np.ndarray, batch_size: int):
        self.recon, self.moved, self.tok, self.codes, self.size = recon, moved, tok, final_codes, batch_size
        self._last: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.recon)

    def batch(self, j: int) -> np.ndarray:
        """(B, D) float32 decoded final SIDs of the movies ``moved[j B:(j + 1) B]``."""
        if self._last is None or self._last[0] != j:
            import torch

            rows = self.moved[j * self.size:(j + 1) * self.size]
            with torch.no_grad():
                c = torch.from_numpy(np.ascontiguousarray(self.codes[rows])).to(_device(self.tok))  # (B, L)
                self._last = (j, _f32(self.tok.decode_codes(c)))
        return self._last[1]

    def __getitem__(self, s: slice) -> np.ndarray:
        lo, hi, _ = s.indices(len(self.recon))
        out = self.recon[lo:hi].copy()  # (b, D)
        i0, i1 = np.searchsorted(self.moved, [lo, hi])
        for j in range(i0 // self.size, (i1 - 1) // self.size + 1) if i1 > i0 else ():
            rows = self.moved[j * self.size:(j + 1) * self.size]
            inside = (rows >= lo) & (rows < hi)
            out[rows[inside] - lo] = self.batch(j)[inside]
        return out


def _device(tok: Any) -> torch.device:
    import torch

    return next((t.device for t in (*tok.parameters(), *tok.buffers())), torch.device("cpu"))


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _normalize(v: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Rows scaled to unit length, float32 (``inplace``: v itself, a float32 array, is scaled)."""
    norm = np.maximum(np.sqrt(np.einsum("nd,nd->n", v, v))[:, None], 1e-12)  # (N, 1), no (N, D) temporary
    if inplace:
        v /= norm
        return v
    return (v / norm).astype(np.float32, copy=False)


def embedding_knn(x: np.ndarray, k: int, *, cache_file: Path | None, rows: np.ndarray | None = None) -> np.ndarray:
    """Exact cosine k-NN of the embeddings ``rows`` (None: all), read from ``cache_file`` when it holds a
    valid result."""
    n, q = len(x), (len(x) if rows is None else len(rows))
    if cache_file is not None and cache_file.is_file():
        try:
            cached = np.load(cache_file, allow_pickle=False)
            if cached.shape == (q, k) and cached.dtype == np.int64 and 0 <= cached.min() and cached.max() < n:
                log.info("embedding %d-NN read from %s", k, cache_file)
                return cached
        except (OSError, ValueError):
            pass
        log.info("ignoring invalid cache %s", cache_file)
    t0 = time.perf_counter()
    nbrs = metrics.knn(x, k, rows=rows)
    log.info("exact embedding %d-NN of %d of %d movies in %.1fs", k, q, n, time.perf_counter() - t0)
    if cache_file is not None:
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
            np.save(f, nbrs)
    return nbrs


def resolve_probes(run_dir: Path, cfg: EvaluateConfig, movie_ids: np.ndarray) -> tuple[list[int], list[str]]:
    """The rows (in ``movie_ids``) of the probe movies, named as for ``lookup --movie`` (one title matcher:
    "The Matrix (1999)", "Matrix, The", "Alien" or a movie_id), and the default probes not in the catalog.

    Raises:
        SidsError: a probe the user asked for (``--probe``) names no movie, or several equally well.
    """
    index = load_index(run_dir)
    pos = {int(m): i for i, m in enumerate(movie_ids.tolist())}
    rows: list[int] = []
    skipped: list[str] = []
    for title in cfg.all_probes():
        try:
            row = resolve_movie(index, title)
        except SidsError as e:
            if title in cfg.extra_probes:
                raise SidsError(f"probe {title!r}: {e}") from None
            skipped.append(title)  # a default probe that a small catalog does not hold
            log.info("default probe %r is not in this catalog; skipped", title)
            continue
        rows.append(pos[int(index.movie_ids[row])])
    return list(dict.fromkeys(rows)), skipped


def _probe_neighbors(i: int, tokens: np.ndarray, dec: np.ndarray, x: np.ndarray, norms: np.ndarray, n: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` nearest of movie ``i`` by SID (prefix, then decoded cosine) and by embedding cosine
    (x (N, D) and its row norms (N,)).

    Ties go to the smaller index. Only (N,) arrays are built, never a copy of an (N, D) matrix.
    """
    everyone = np.arange(len(x))
    shared = metrics.shared_prefix_lengths(tokens, np.full(len(x), i), everyone).astype(np.float64)  # (N,)
    shared[i] = -np.inf  # never its own neighbour
    by_sid = np.lexsort((everyone, -(dec @ dec[i]), -shared))[:n]
    sim_emb = (x @ x[i]).astype(np.float64) / (norms * norms[i])  # (N,) cosine
    sim_emb[i] = -np.inf
    by_emb = np.lexsort((everyone, -sim_emb))[:n]
    return by_sid, by_emb


def _probes(inp: _Inputs, cfg: EvaluateConfig, rows: list[int], dec_final_n: np.ndarray
            ) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The probes' nearest titles by SID and the details (by SID next to by embedding).

    Args:
        rows: the probe movies' rows (`resolve_probes`).
        dec_final_n: (N, D) normalised decoded vectors of the final SIDs.
    """
    final, x = inp.sid_tokens, inp.x
    norms = np.maximum(np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64)), 1e-12) if rows else None  # (N,)
    probes: dict[str, list[str]] = {}
    details: dict[str, Any] = {}

    def neighbour(i: int, j: int, **extra: Any) -> dict[str, Any]:
        return {"title": inp.titles[j], "sid": inp.sid_strings[j], **extra,
                "shared_prefix": int(metrics.shared_prefix_lengths(final, np.array(i), np.array(j)))}

    for i in rows:
        by_sid, by_emb = _probe_neighbors(i, final, dec_final_n, x, norms, cfg.probe_neighbors)
        name = inp.titles[i]
        probes[name] = [inp.titles[j] for j in by_sid]
        details[name] = {
            "movie_id": int(inp.movie_ids[i]),
            "sid": inp.sid_strings[i],
            "by_sid": [neighbour(i, j) for j in by_sid],
            "by_embedding": [neighbour(i, j, cosine=round(float(x[i] @ x[j]) / (norms[i] * norms[j]), 4))
                             for j in by_emb],
            "overlap": len(set(by_sid.tolist()) & set(by_emb.tolist())) / cfg.probe_neighbors,
        }
    return probes, details


@dataclass
class _Neighbours:
    """The exact embedding neighbours the neighbour metrics read: of every movie, or of a seeded sample."""

    rows: np.ndarray  # (Q,) the query movies, sorted (all N when exact)
    nn: np.ndarray  # (Q, K_NEIGHBORS) their exact neighbours among all N, nearest first
    mutual_rows: np.ndarray  # (C,) the movies whose mutual K_MUTUAL-NN pairs count (all N when exact)
    table: np.ndarray  # (N, K_MUTUAL) the K_MUTUAL nearest of mutual_rows and of their neighbours, -1 elsewhere
    sampled: bool
    seed: int
    seconds: float

    def sample(self, rows: np.ndarray) -> dict[str, int] | None:
        """The report's record of a sample of ``rows`` (None when every movie was used)."""
        return {"movies": int(len(rows)), "seed": self.seed} if self.sampled else None


def neighbour_sample(n: int, cfg: EvaluateConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """The sorted, seeded sample of query movies for the neighbour metrics and the tenth of it for prefix
    coherence; None when the catalog is small enough for every movie (``cfg.neighbor_sample``)."""
    if cfg.neighbor_sample is None or n <= cfg.neighbor_sample:
        return None
    order = np.random.default_rng(cfg.seed).permutation(n)  # (N,)
    return np.sort(order[:cfg.neighbor_sample]), np.sort(order[:max(1, cfg.neighbor_sample // 10)])


def _knn_cache(inp: _Inputs, cache_dir: Path | None, k: int, rows: np.ndarray | None) -> Path | None:
    """The cache file of the embedding k-NN of ``rows`` (None: all), named by the embeddings' and rows' hashes."""
    if cache_dir is None:
        return None
    tag = "" if rows is None else "-rows" + hashlib.sha256(np.ascontiguousarray(rows, np.int64)).hexdigest()[:12]
    return cache_dir / f"knn-{file_hash(inp.embeddings_path)[:20]}-k{k}{tag}.npy"


def embedding_neighbours(inp: _Inputs, cfg: EvaluateConfig, cache_dir: Path | None) -> _Neighbours:
    """The exact embedding neighbours of every movie, or (``neighbour_sample``) of a sample: its K_NEIGHBORS
    nearest, and the K_MUTUAL nearest of the coherence movies' K_MUTUAL nearest (mutual pairs need both
    ends' lists). Each k-NN is cached per embeddings file and rows."""
    t0 = time.perf_counter()
    n = len(inp.x)
    sample = neighbour_sample(n, cfg)
    rows = None if sample is None else sample[0]
    nn = embedding_knn(inp.x, K_NEIGHBORS, cache_file=_knn_cache(inp, cache_dir, K_NEIGHBORS, rows), rows=rows)
    if sample is None:
        everyone = np.arange(n)
        return _Neighbours(everyone, nn, everyone, nn[:, :K_MUTUAL], False, cfg.seed, time.perf_counter() - t0)
    table = np.full((n, K_MUTUAL), -1, dtype=np.int64)  # (N, K_MUTUAL)
    table[rows] = nn[:, :K_MUTUAL]
    need = np.unique(table[sample[1]])
    need = need[table[need, 0] < 0]  # neighbours outside the sample: their own lists
    if len(need):
        table[need] = embedding_knn(inp.x, K_MUTUAL, cache_file=_knn_cache(inp, cache_dir, K_MUTUAL, need), rows=need)
    return _Neighbours(rows, nn, sample[1], table, True, cfg.seed, time.perf_counter() - t0)


@dataclass
class _Codes:
    """What the tokenizer makes of the embeddings, and the SID neighbours of the query movies."""

    raw: np.ndarray  # (N, L) raw codes (before the IDs were made unique)
    reconstruction: dict[str, float]  # relative_mse and mean_cosine of the raw codes' reconstruction
    relative_mse_final: float  # of the decoded final SIDs
    dec_n: np.ndarray  # (N, D) the decoded final SIDs, unit length
    sid_nn: np.ndarray  # (Q, K_NEIGHBORS) neighbours by final SID of the query movies
    raw_nn: np.ndarray  # (Q, K_NEIGHBORS) neighbours by raw codes
    sid_seconds: float


def tokenize_and_rank(inp: _Inputs, cfg: EvaluateConfig, rows: np.ndarray) -> _Codes:
    """Run the tokenizer over the catalog and rank the movies ``rows`` (Q,) by SID and by raw code.

    The N x D arrays are scaled in place once their errors are measured: two of them (the embeddings and
    the reconstructions, which become the decoded final SIDs where dedup moved a movie) are alive at
    once, whatever N.
    """
    t0 = time.perf_counter()
    raw, recon = run_tokenizer(inp.tokenizer, inp.x_in, known=inp.model_codes, batch_size=cfg.batch_size)
    n_known = 0 if inp.model_codes is None else int((inp.model_codes >= 0).all(axis=1).sum())
    log.info("tokenizer on %d movies in %.1fs (%d movies' codes as assign recorded them)", len(raw),
             time.perf_counter() - t0, n_known)
    levels = raw.shape[1]
    moved = np.flatnonzero((inp.sid_tokens[:, :levels] != raw).any(axis=1))  # (M,) only they decode differently
    final = _FinalSids(recon, moved, inp.tokenizer, inp.sid_tokens[:, :levels], cfg.batch_size)
    reconstruction = {"relative_mse": metrics.relative_mse(inp.x_in, recon),
                      "mean_cosine": metrics.mean_cosine(inp.x_in, recon)}
    rel_final = metrics.relative_mse(inp.x_in, final)
    t0 = time.perf_counter()
    raw_nn = metrics.sid_knn(raw, _normalize(recon, inplace=True), K_NEIGHBORS, rows)  # (Q, K_NEIGHBORS)
    for j in range(0, (len(moved) + cfg.batch_size - 1) // cfg.batch_size):  # recon becomes the final SIDs
        recon[moved[j * cfg.batch_size:(j + 1) * cfg.batch_size]] = _normalize(final.batch(j))
    dec_n = recon  # (N, D) the decoded final SIDs, unit length
    sid_nn = metrics.sid_knn(inp.sid_tokens, dec_n, K_NEIGHBORS, rows)
    t_sid = time.perf_counter() - t0
    log.info("SID %d-NN (final and raw codes) in %.1fs", K_NEIGHBORS, t_sid)
    return _Codes(raw, reconstruction, rel_final, dec_n, sid_nn, raw_nn, t_sid)


def _dedup_section(inp: _Inputs, codes: _Codes, emb: _Neighbours, levels: int, overlap: float) -> dict[str, Any]:
    """What making the IDs unique cost: movies moved or suffixed, error and overlap of raw vs final codes."""
    moved = (inp.sid_tokens[:, :levels] != codes.raw).any(axis=1)
    return {
        "assign_stats": inp.assign_stats,
        "n_changed_codes": int(moved.sum()),
        "n_suffixed": int((inp.sid_lengths > levels).sum()),
        "relative_mse_raw": codes.reconstruction["relative_mse"],
        "relative_mse_final": codes.relative_mse_final,
        "overlap_at_10_raw": metrics.neighbor_overlap(emb.nn, codes.raw_nn),
        "overlap_at_10_final": overlap,
        "overlap_sample": emb.sample(emb.rows),
    }


def build_report(inp: _Inputs, cfg: EvaluateConfig, *, cache_dir: Path | None,
                 probes: tuple[list[int], list[str]] = ([], [])) -> tuple[dict[str, Any], dict]:
    """Compute the report (the keys of docs/outputs.md) and the arrays its charts plot."""
    tcfg = inp.tokenizer.config
    levels, k_codes = int(tcfg.levels), int(tcfg.codebook_size)
    n = len(inp.x)
    if n <= K_NEIGHBORS:
        raise SidsError(f"the catalog has {n} movies; the neighbour metrics need more than {K_NEIGHBORS}")
    emb = embedding_neighbours(inp, cfg, cache_dir)  # first: its normalised copy of x is gone before the codes
    codes = tokenize_and_rank(inp, cfg, emb.rows)
    final, raw = inp.sid_tokens, codes.raw
    neighbors, shared_hist = _neighbours_section(final, emb.rows, emb.nn, codes.sid_nn)
    neighbors["sample"] = emb.sample(emb.rows)
    coherence = metrics.prefix_coherence(final, emb.table, K_MUTUAL, rows=emb.mutual_rows if emb.sampled else None)
    coherence["sample"] = emb.sample(emb.mutual_rows)
    purity, purity_base, majority_genres = metrics.genre_purity(final[:, 0], inp.genres)
    dedup = _dedup_section(inp, codes, emb, levels, neighbors["overlap_at_10"])
    probes_found, details = _probes(inp, cfg, probes[0], codes.dec_n)
    report: dict[str, Any] = {
        "n_movies": n,
        "levels": levels,
        "codebook_size": k_codes,
        "latent_dim": int(tcfg.latent_dim),  # H (= D unless the encoder is mlp)
        "embedding_dim": int(inp.x.shape[1]),
        "embedding_model": inp.embedding_model,
        "embedding_backend": inp.embedding_backend,
        "collab_input": ({"weight": float(tcfg.collab_input), "shrinkage": float(tcfg.collab_shrinkage),
                          "dim": int(tcfg.collab_dim)} if getattr(tcfg, "collab_dim", 0) else None),
        "reconstruction": codes.reconstruction,
        "utilization": metrics.utilization(raw, k_codes),
        "perplexity": metrics.perplexity(raw, k_codes),
        "collisions": _collisions_section(raw, final),
        "neighbors": neighbors,
        "coherence": coherence,
        "genre_purity_level1": purity,
        "genre_purity_level1_baseline": purity_base,
        "level1_majority_genres": majority_genres,
        "dedup": dedup,
        "probes": probes_found,
        "probe_details": details,
        "probes_skipped": probes[1],
        "sid_lengths": {str(int(v)): int(c) for v, c in zip(*np.unique(inp.sid_lengths, return_counts=True))},
        "compute_s": {"embedding_knn": round(emb.seconds, 3), "sid_knn": round(codes.sid_seconds, 3)},
    }
    _, group_sizes = np.unique(raw, axis=0, return_counts=True)
    chart_data = {
        "code_counts": metrics.code_counts(raw, k_codes),
        "group_sizes": group_sizes,
        "shared_hist": shared_hist,
    }
    return report, chart_data


def _neighbours_section(final: np.ndarray, rows: np.ndarray, emb_nn: np.ndarray, sid_nn: np.ndarray
                        ) -> tuple[dict[str, Any], np.ndarray]:
    """How well the SIDs keep the embedding neighbours of the movies ``rows`` (Q,) (emb_nn and sid_nn: (Q, k)),
    and the shared-prefix histogram (also charted)."""
    overlap = metrics.neighbor_overlap(emb_nn, sid_nn)
    ftm = metrics.first_token_match(final, emb_nn, rows)
    rnd = metrics.random_first_token_match(final)
    shared = metrics.shared_prefix_lengths(final, np.repeat(rows[:, None], K_NEIGHBORS, axis=1), emb_nn)  # (Q, k)
    shared_hist = np.bincount(shared.ravel(), minlength=final.shape[1] + 1)
    return {
        "overlap_at_10": overlap,
        "first_token_match_at_10": ftm,
        "random_first_token_match": rnd,
        "first_token_lift": ftm / rnd if rnd > 0 else None,
        "shared_prefix_histogram": shared_hist.tolist(),
    }, shared_hist


def _collisions_section(raw: np.ndarray, final: np.ndarray) -> dict[str, Any]:
    """How unique the raw codes are, and the final SIDs."""
    before = metrics.collision_stats(raw)
    return {
        "unique_fraction_before_dedup": before["unique_fraction"],
        "max_group_size": before["max_group_size"],
        "n_distinct_before_dedup": before["n_groups"],
        "unique_fraction_after_dedup": metrics.collision_stats(final)["unique_fraction"],
    }


def co_watch_section(run_dir: Path, inp: _Inputs) -> dict[str, Any] | None:
    """``co_watch`` (``metrics.co_watch``) over ``cowatch.parquet``'s pairs, or None for a run without ratings."""
    pairs = read_cowatch(run_dir)
    if pairs is None:
        return None
    a, b = (np.searchsorted(inp.movie_ids, pairs.column(c).to_numpy()) for c in ("movie_a", "movie_b"))
    ok = (a < len(inp.movie_ids)) & (b < len(inp.movie_ids))
    ok &= (inp.movie_ids[np.minimum(a, len(inp.movie_ids) - 1)] == pairs.column("movie_a").to_numpy())
    ok &= (inp.movie_ids[np.minimum(b, len(inp.movie_ids) - 1)] == pairs.column("movie_b").to_numpy())
    if not ok.all():
        raise SidsError(f"{run_dir / 'cowatch.parquet'} names movies that are not in the catalog: "
                        "run `movielens-sids collab` again")
    levels = int(inp.tokenizer.config.levels)
    return metrics.co_watch(inp.sid_tokens[:, :levels], a, b)


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
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    ecfg: EvaluateConfig = cfg.evaluate
    inp = load_inputs(run_dir, tokenizer)  # validates everything before anything is written
    probes = resolve_probes(run_dir, ecfg, inp.movie_ids)
    report, chart_data = build_report(inp, ecfg, cache_dir=(run_dir / CACHE_DIR) if ecfg.cache else None,
                                      probes=probes)
    cowatch = co_watch_section(run_dir, inp)
    if cowatch is not None:
        report["co_watch"] = cowatch
    labels = catalog_labels(inp.catalog, inp.sid_tokens, inp.x)  # names for the codes, before anything is written
    recorded = stage_seconds(run_dir, ["catalog", "embed", "train", "assign", "export", "visualize"])
    timings = {s: recorded.get(s) for s in ("catalog", "embed", "train", "assign")}
    timings.update({s: v for s, v in recorded.items() if s not in timings and s != "evaluate"})
    charts: dict[str, str] = {}
    if ecfg.charts:
        charts = write_charts(run_dir, chart_data, CHARTS, levels=report["levels"])
    else:  # no chart of an earlier evaluate stays next to a report that no longer shows it
        for name in CHARTS.values():
            (run_dir / name).unlink(missing_ok=True)
    timings["evaluate"] = round(time.perf_counter() - t_start, 3)
    report["timings_s"] = timings
    report["charts"] = charts
    write_json(run_dir / "report.json", report)
    write_parquet(run_dir / LABELS_FILE, labels_table(labels))
    write_page(run_dir)
    n = report["neighbors"]
    return {
        "overlap_at_10": round(n["overlap_at_10"], 4),
        "first_token_match_at_10": round(n["first_token_match_at_10"], 4),
        "random_first_token_match": round(n["random_first_token_match"], 4),
        "unique_fraction_after_dedup": report["collisions"]["unique_fraction_after_dedup"],
    }
