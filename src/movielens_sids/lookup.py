"""Look things up in a run folder: a movie's SID, the movies under a SID prefix, a movie's SID neighbours.

Python API (the CLI prints the same records as a table or JSON)::

    >>> from movielens_sids import lookup_movie, lookup_prefix, neighbors
    >>> lookup_movie("runs/tiger", "The Matrix")["sid"]
    '<a_12><b_201><c_7>'
    >>> [m["title"] for m in lookup_prefix("runs/tiger", "12,201")]
    >>> [m["title"] for m in neighbors("runs/tiger", "Toy Story (1995)", k=10)]

A movie is named by its ``movie_id`` (digits), its exact title (``The Matrix``, ``Matrix, The``,
either with `` (1999)``), or approximately (fuzzy matching with ``rapidfuzz``); when several movies
fit about equally well, a one-line error lists them with their ids so the user can pick one.

Neighbours are ranked by the length of the prefix they share with the movie's SID (longest first),
then by the distance between the two SIDs' decoded vectors (``tok.decode_codes`` of their first L
tokens), then by ``movie_id``: the order a generative retriever sees.

May import: artifacts, sid, errors; rapidfuzz on first use. Not a stage: it only reads.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import read_catalog, read_model, read_sids
from .errors import SidsError
from .sid import parse_sid_prefix

log = logging.getLogger(__name__)

FUZZY_MIN_SCORE = 60.0
"""Below this score (0-100: mean of rapidfuzz token_set_ratio and ratio) a title is not a match at all."""
FUZZY_MARGIN = 5.0
"""The best fuzzy match wins only when it scores this much above the next distinct title."""


@dataclass
class SidIndex:
    """The SIDs and titles of a run folder, loaded once (see `load_index`)."""

    run_dir: Path
    movie_ids: np.ndarray
    """(N,) int64, sorted."""
    tokens: np.ndarray
    """(N, T) int64 SID tokens (T = L, or L + 1 with a collision token)."""
    sids: list[str]
    levels: int
    """L: the tokens that come from the codebooks (the rest is the collision token)."""
    codebook_size: int | None
    """K: codes at each of the L levels run 0..K-1 (None when sids.parquet does not say)."""
    display: list[str]
    """"The Matrix (1999)" per movie."""
    years: list[int | None]
    genres: list[list[str]]
    _keys: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _choices: list[str] = field(default_factory=list, repr=False)
    _choices_year: list[str] = field(default_factory=list, repr=False)
    _tok: Any = field(default=None, repr=False)

    def record(self, row: int) -> dict[str, Any]:
        """One movie as a plain dict: movie_id, title, year, genres, sid, semantic_id."""
        return {"movie_id": int(self.movie_ids[row]), "title": self.display[row], "year": self.years[row],
                "genres": self.genres[row], "sid": self.sids[row],
                "semantic_id": [int(v) for v in self.tokens[row]]}

    def tokenizer(self):
        if self._tok is None:
            self._tok = read_model(self.run_dir)
        return self._tok


def _norm_many(texts: list[str]) -> list[str]:
    """Case-, accent- and punctuation-insensitive forms of titles, vectorised with pyarrow (87k titles in
    well under a second): NFKD, drop combining marks, lower-case, non-alphanumerics -> one space."""
    import pyarrow as pa
    import pyarrow.compute as pc

    a = pa.array([str(t) for t in texts], type=pa.string())
    a = pc.utf8_normalize(a, form="NFKD")
    a = pc.replace_substring_regex(a, pattern=r"\p{Mn}+", replacement="")
    a = pc.utf8_lower(a)
    a = pc.replace_substring_regex(a, pattern=r"[^\p{L}\p{N}]+", replacement=" ")
    return pc.utf8_trim_whitespace(a).to_pylist()


def _norm(text: str) -> str:
    return _norm_many([text])[0]


_CACHE: dict[tuple, SidIndex] = {}
_YEAR = re.compile(r"\b(1[89]|20)\d\d$")


def load_index(run_dir: str | Path) -> SidIndex:
    """Read ``catalog.parquet`` and ``sids.parquet`` of a run folder (cached until either file changes).

    Raises:
        SidsError: a file is missing or unreadable, or the two files do not hold the same movies.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SidsError(f"run folder {run_dir} not found")
    cat_path, sids_path = run_dir / "catalog.parquet", run_dir / "sids.parquet"
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None for p in (cat_path, sids_path))
    key = (str(run_dir.resolve()), stamp)
    if key in _CACHE:
        return _CACHE[key]
    sids = read_sids(run_dir)
    ids, tokens, sid_col = sids.movie_ids, sids.tokens, sids.strings
    assign = sids.metadata.get("assign") or {}
    levels = int(assign.get("levels", tokens.shape[1]))
    k_codes = int(assign["codebook_size"]) if assign.get("codebook_size") is not None else None
    cat = read_catalog(run_dir, ("movie_id", "title"))
    cat_ids = cat.column("movie_id").to_numpy().astype(np.int64)
    pos = {int(m): i for i, m in enumerate(cat_ids.tolist())}
    missing = [int(m) for m in ids.tolist() if int(m) not in pos]
    if missing:
        raise SidsError(f"{sids_path} has {len(missing)} movies that are not in {cat_path.name} (first: "
                        f"{missing[0]}); run `movielens-sids assign` again")
    rows = [pos[int(m)] for m in ids.tolist()]
    titles = cat.column("title").to_pylist()
    disp = cat.column("display_title").to_pylist() if "display_title" in cat.column_names else titles
    years = cat.column("year").to_pylist() if "year" in cat.column_names else [None] * len(titles)
    genres = cat.column("genres").to_pylist() if "genres" in cat.column_names else [[]] * len(titles)
    index = SidIndex(run_dir, ids, tokens, sid_col, levels, k_codes,
                     display=[f"{disp[r]} ({years[r]})" if years[r] is not None else str(disp[r]) for r in rows],
                     years=[years[r] for r in rows], genres=[list(genres[r] or []) for r in rows])
    # Every way a user may write a title: as MovieLens does or with the article in front, with or
    # without the year; normalised all at once.
    n = len(rows)
    t_norm = _norm_many([titles[r] for r in rows])
    d_norm = _norm_many([disp[r] for r in rows])
    y = [f" {years[r]}" if years[r] is not None else "" for r in rows]
    keys: dict[str, set[int]] = {}
    for i in range(n):
        for name in (t_norm[i], d_norm[i], t_norm[i] + y[i], d_norm[i] + y[i]):
            keys.setdefault(name, set()).add(i)
    index._keys = {k: sorted(v) for k, v in keys.items()}
    index._choices = d_norm
    index._choices_year = [d_norm[i] + y[i] for i in range(n)]
    _CACHE.clear()  # one run folder at a time is plenty
    _CACHE[key] = index
    return index


def _describe(index: SidIndex, rows: list[int]) -> str:
    return "; ".join(f"{index.movie_ids[r]} {index.display[r]}" for r in rows)


def _covered(query: str, title: str) -> bool:
    """Every word of the query (two letters or more) is, give or take a typo, a word of the title: "zzzzqqq
    nothing" is then no match for "Nothing", however well its one other word fits."""
    from rapidfuzz import fuzz

    words = title.split()
    return all(any(w.startswith(q) or fuzz.ratio(q, w) >= 75 for w in words) for q in query.split() if len(q) > 1)


def resolve_movie(index: SidIndex, query: str | int) -> int:
    """The row of the movie a user means by ``query`` (id, exact title, or fuzzy title).

    A fuzzy query that fits several titles (``"matrix"``: the film and its sequels) picks the best and
    logs a warning naming the others.

    Raises:
        SidsError: no movie fits, or several fit about equally well (the message lists them by id).
    """
    text = str(query).strip()
    if not text:
        raise SidsError("empty movie name: give a movie_id or a title")
    if text.isdigit():
        row = int(np.searchsorted(index.movie_ids, int(text)))
        if row < len(index.movie_ids) and index.movie_ids[row] == int(text):
            return row
    q = _norm(text)
    exact = index._keys.get(q)
    if exact and len(exact) == 1:
        return exact[0]
    scored, choices = _fuzzy(index, q)
    if exact:  # several movies have exactly this title: list them, then the closest other titles
        others = [r for sc, r in scored if r not in exact and sc >= FUZZY_MIN_SCORE][:3]
        raise SidsError(f"{len(exact)} movies are called {text!r}: {_describe(index, exact[:10])}"
                        f"{'; also close: ' + _describe(index, others) if others else ''}; "
                        "pass the movie_id (or add the year)")
    fits = [(sc, r) for sc, r in scored if sc >= FUZZY_MIN_SCORE and _covered(q, choices[r])]
    if not fits:
        near = f"; closest: {_describe(index, [r for _, r in scored[:3]])}" if scored else ""
        raise SidsError(f"no movie matches {text!r}{near}")
    best = fits[0][0]
    close = [r for s, r in fits if s >= best - FUZZY_MARGIN]
    if len(close) > 1:
        raise SidsError(f"{text!r} is ambiguous: {_describe(index, close[:8])}; pass the movie_id")
    others = [r for _, r in fits[1:]]
    if others:
        log.warning("%r matches %d titles; showing %s. Also: %s%s (pass the movie_id or the full title)", text,
                    len(fits), index.display[close[0]], _describe(index, others[:10]),
                    f" and {len(others) - 10} more" if len(others) > 10 else "")
    return close[0]


def _fuzzy(index: SidIndex, q: str) -> tuple[list[tuple[float, int]], list[str]]:
    """Candidate rows for a normalised query, best first, with their scores, and the titles they were scored on.

    Recall with token_set_ratio (word order and extra words do not matter), then rank by the mean of
    token_set_ratio and plain ratio, so "godfathr" -> "The Godfather" and "matrix" prefers "The Matrix"
    over "The Matrix Reloaded". Titles are compared with their year only when the query has one.
    """
    from rapidfuzz import fuzz, process

    choices = index._choices_year if _YEAR.search(q) else index._choices
    pool = process.extract(q, choices, scorer=fuzz.token_set_ratio, limit=50, score_cutoff=40)
    scored = sorted(((0.5 * s + 0.5 * fuzz.ratio(q, choices[r]), r) for _, s, r in pool),
                    key=lambda t: (-t[0], index.movie_ids[t[1]]))
    return scored, choices


def lookup_movie(run_dir: str | Path, query: str | int) -> dict[str, Any]:
    """A movie's SID.

    Args:
        run_dir: the run folder (with catalog.parquet and sids.parquet).
        query: a movie_id, a title (``"The Matrix"``, ``"Matrix, The (1999)"``) or part of one.

    Returns:
        ``{"movie_id", "title", "year", "genres", "sid", "semantic_id"}``.
    """
    index = load_index(run_dir)
    return index.record(resolve_movie(index, query))


def lookup_prefix(run_dir: str | Path, prefix: str | tuple[int, ...] | list[int],
                  limit: int | None = None) -> list[dict[str, Any]]:
    """The movies whose SID starts with ``prefix`` (``"12"``, ``"12,201"``, ``"<a_12><b_201>"`` or a tuple),
    ordered by SID then movie_id; at most ``limit`` of them."""
    index = load_index(run_dir)
    p = parse_sid_prefix(prefix)
    if len(p) > index.tokens.shape[1]:
        raise SidsError(f"SID prefix {prefix!r} has {len(p)} tokens but SIDs in this run have "
                        f"{index.tokens.shape[1]}")
    _check_range(index, p)
    hit = np.flatnonzero((index.tokens[:, :len(p)] == np.asarray(p)[None, :]).all(axis=1))
    keys = [index.tokens[hit, j] for j in range(index.tokens.shape[1] - 1, -1, -1)]
    hit = hit[np.lexsort([index.movie_ids[hit], *keys])]
    if limit is not None:
        hit = hit[:limit]
    return [index.record(int(r)) for r in hit]


def _check_range(index: SidIndex, prefix: tuple[int, ...]) -> None:
    """A code no SID of the run can hold is an error that says the range, not an empty answer."""
    for j, code in enumerate(prefix):
        if j < index.levels and index.codebook_size is not None:
            top, what = index.codebook_size - 1, f"codes at level {j + 1}"
        else:
            top, what = int(index.tokens[:, j].max()) if len(index.tokens) else 0, f"tokens at position {j + 1}"
        if code > top:
            raise SidsError(f"{code} is out of range: {what} run 0..{top}")


def neighbors(run_dir: str | Path, query: str | int, k: int = 10) -> list[dict[str, Any]]:
    """The k movies nearest to a movie by SID: longest shared prefix first, then decoded-vector distance.

    Args:
        run_dir: the run folder (needs model/ too, for the decoded vectors).
        query: the movie (see `lookup_movie`).
        k: how many.

    Returns:
        Records as `lookup_movie`'s plus ``shared_prefix`` (tokens in common) and ``distance``
        (Euclidean, between decoded vectors).
    """
    import torch

    if k < 1:
        raise SidsError(f"--k must be >= 1, got {k}")
    index = load_index(run_dir)
    row = resolve_movie(index, query)
    n, levels = len(index.movie_ids), index.levels
    codes = index.tokens[:, :levels]  # (N, L)
    shared = np.cumprod(codes == codes[row][None, :], axis=1).sum(axis=1)  # (N,)
    shared[row] = -1
    k = min(k, n - 1)
    if k <= 0:
        return []
    # Only the movies that can make the top k need decoding: those sharing >= t tokens.
    counts = np.bincount(shared[shared >= 0], minlength=levels + 1)  # (L + 1,)
    t = int(np.flatnonzero(np.cumsum(counts[::-1]) >= k)[0])
    t = levels - t
    cand = np.flatnonzero(shared >= t)
    tok = index.tokenizer()
    with torch.inference_mode():
        dec = tok.decode_codes(torch.from_numpy(np.r_[codes[row:row + 1], codes[cand]]).long())  # (1 + C, D)
    dec = dec.double().numpy()
    dist = np.sqrt(np.square(dec[1:] - dec[:1]).sum(axis=1))  # (C,)
    order = np.lexsort((index.movie_ids[cand], dist, -shared[cand]))[:k]
    out = []
    for o in order:
        rec = index.record(int(cand[o]))
        rec.update(shared_prefix=int(shared[cand[o]]), distance=float(dist[o]))
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------- CLI


def render_table(records: list[dict[str, Any]], extra: list[str]) -> str:
    cols = ["movie_id", "sid", *extra, "title", "genres"]
    rows = []
    for r in records:
        row = []
        for c in cols:
            v = r.get(c)
            if c == "genres":
                v = "|".join(v or [])
            elif c == "distance":
                v = f"{v:.4f}"
            row.append(str(v))
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])
