"""The benchmark's split as data to train a recommender on: sequence datasets and instruction pairs.

``sequence_data(run_dir, cfg)`` builds the split that ``movielens-sids retrieval`` scores (the run's
``retrieval.*`` settings, over the movies that have a SID; with several rolling-origin folds, the last)
and turns it into one row per prediction, for the splits ``train``, ``validation`` and ``test``::

    user_id int64, history list<int64>, history_sid list<string>, target int64, target_sid string,
    timestamp int64, cold bool

- ``test``: the benchmark's test events, the ones ``retrieval/events.parquet`` ranks, with the history the
  benchmark's models read (``Split.histories``).
- ``validation``: the benchmark's validation events (what its early stopping watches), likewise.
- ``train``: every training interaction that has an earlier one of its user, predicted from the user's
  training movies before it, the order the benchmark's models train on. A user's training movies are a
  prefix of the user's sequence, so no validation or test interaction is in a train row.

``history`` holds at most ``retrieval.max_history`` movies, the latest, oldest first: what the benchmark's
models see. ``cold``: the target has no training interaction (never in a train row).

``instruction_data`` turns them into prompt/response pairs in the style of LC-Rec (Zheng et al. 2024):
the next movie's SID from a history of SIDs (one pair per sequence row, in the same order), and, in
``train`` only, SID -> title and title -> SID for every movie.

May import: data.catalog, errors, lookup (the titles), retrieval.sequences and retrieval.stage (the split, the
ratings and the SIDs exactly as the benchmark reads them); numpy, pyarrow.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .data import catalog
from .errors import SidsError
from .lookup import load_index
from .retrieval import sequences
from .retrieval.stage import check_collab_split, read_codes, resolve_ratings

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SEQUENCE_SCHEMA = pa.schema([("user_id", pa.int64()), ("history", pa.list_(pa.int64())),
                             ("history_sid", pa.list_(pa.string())), ("target", pa.int64()),
                             ("target_sid", pa.string()), ("timestamp", pa.int64()), ("cold", pa.bool_())])
INSTRUCTION_SCHEMA = pa.schema([("task", pa.string()), ("prompt", pa.string()), ("response", pa.string()),
                                ("movie_id", pa.int64())])
TASKS = ("next_movie", "sid_to_title", "title_to_sid")
"""The instruction tasks: the next movie's SID from a history of SIDs; a SID's title; a title's SID."""


@dataclass
class SequenceData:
    """The sequence rows of each split and the facts the dataset card states."""

    tables: dict[str, pa.Table]
    """``train``, ``validation``, ``test`` -> rows of ``SEQUENCE_SCHEMA``."""
    info: dict[str, Any]
    """Protocol, cut-offs, history length and counts."""


def benchmark_split(run_dir: Path, ratings, movie_ids: np.ndarray, rcfg) -> sequences.Split:
    """The split ``retrieval`` scores with ``rcfg``; with several rolling-origin folds, the last (latest cut-off).

    Raises:
        SidsError: the run's collaborative vectors come from other training interactions than the first fold's
            (as the benchmark, which then refuses to score: test events would have shaped the SIDs).
    """
    splits = sequences.folds_of(ratings, movie_ids, rcfg)
    check_collab_split(run_dir, splits[0])
    return splits[-1]


def benchmark_ratings(cfg: Any):
    """The ratings the benchmark reads (``retrieval.ratings``, ``retrieval.dataset`` or the run's ``data``) as
    ``user_id, movie_id, timestamp``, or None when that dataset has no ratings file."""
    rcfg = cfg.retrieval
    if not rcfg.ratings:
        data = dataclasses.replace(cfg.data, dataset=rcfg.dataset, source=None) if rcfg.dataset else cfg.data
        src = catalog.open_source(data)
        try:
            if "ratings" not in src.members:
                return None
        finally:
            src.close()
    return resolve_ratings(rcfg, cfg)[1]


def sequence_data(run_dir: Path, cfg: Any, ratings=None) -> SequenceData:
    """The sequence datasets of ``run_dir``'s SIDs under ``cfg.retrieval``'s split.

    Args:
        run_dir: a run folder with ``sids.parquet``.
        cfg: the run's ``Config`` (its ``data`` and ``retrieval`` sections say where the ratings are).
        ratings: the ratings (``user_id, movie_id, timestamp``) when already read; None reads them.

    Raises:
        SidsError: the dataset has no ratings, the SIDs are not unique, or the run's collaborative
            vectors come from another split's training interactions (its test events would have shaped them).
    """
    run_dir = Path(run_dir)
    movie_ids, _ = read_codes(run_dir)  # (N,) sorted; the SIDs validated as the benchmark validates them
    if ratings is None:
        _, ratings = resolve_ratings(cfg.retrieval, cfg)
    split = benchmark_split(run_dir, ratings, movie_ids, cfg.retrieval)
    index = load_index(run_dir)
    item_sids = pa.array(index.sids, pa.string()).take(pa.array(np.searchsorted(index.movie_ids, split.movie_ids)))
    m = int(cfg.retrieval.max_history)
    tables = {"train": _train_rows(split, item_sids, m),
              "validation": _event_rows(split, split.valid, item_sids, m),
              "test": _event_rows(split, split.test, item_sids, m)}
    return SequenceData(tables, _facts(split, tables, m))


def _offsets(lengths: np.ndarray) -> pa.Array:
    """The int32 offsets of list rows of ``lengths`` (E,) over one flat array."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise SidsError(f"{offsets[-1]:,} history entries in one table: lower retrieval.max_history")
    return pa.array(offsets.astype(np.int32))


def _table(split: sequences.Split, user: np.ndarray, flat_hist: np.ndarray, hist_len: np.ndarray,
           target: np.ndarray, stamp: np.ndarray, cold: np.ndarray, item_sids: pa.Array) -> pa.Table:
    """Rows of ``SEQUENCE_SCHEMA`` from dense item indices: (E,) users, targets, times, cold flags and the
    (sum hist_len,) flattened histories."""
    offsets, flat = _offsets(hist_len), flat_hist
    return pa.table({
        "user_id": pa.array(split.users[user].astype(np.int64)),
        "history": pa.ListArray.from_arrays(offsets, pa.array(split.movie_ids[flat].astype(np.int64))),
        "history_sid": pa.ListArray.from_arrays(offsets, item_sids.take(pa.array(flat))),
        "target": pa.array(split.movie_ids[target].astype(np.int64)),
        "target_sid": item_sids.take(pa.array(target)),
        "timestamp": pa.array(stamp.astype(np.int64)),
        "cold": pa.array(cold.astype(bool)),
    }, schema=SEQUENCE_SCHEMA)


def _train_rows(split: sequences.Split, item_sids: pa.Array, max_history: int) -> pa.Table:
    """One row per training interaction at position p >= 1 of its user's training movies, from the (up to
    ``max_history``) training movies before it."""
    n_train = np.asarray(split.n_train, dtype=np.int64)
    lengths = np.array([len(s) for s in split.sequences], dtype=np.int64)  # (U,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (U,) first flat index of each user
    flat_items = np.concatenate(split.sequences) if len(lengths) else np.empty(0, np.int64)
    flat_times = np.concatenate(split.times) if len(lengths) else np.empty(0, np.int64)
    per_user = np.maximum(n_train - 1, 0)  # (U,) training targets that have a history
    user = np.repeat(np.arange(len(n_train)), per_user)  # (E,)
    pos = np.arange(int(per_user.sum())) - np.repeat(np.cumsum(per_user) - per_user, per_user) + 1  # (E,) >= 1
    first = np.maximum(pos - max_history, 0)  # (E,) the oldest history position kept
    hist_len = pos - first
    at = np.repeat(starts[user] + first - np.cumsum(hist_len) + hist_len, hist_len) + np.arange(int(hist_len.sum()))
    return _table(split, user, flat_items[at], hist_len, flat_items[starts[user] + pos],
                  flat_times[starts[user] + pos], np.zeros(len(user), bool), item_sids)


def _event_rows(split: sequences.Split, events: sequences.Events, item_sids: pa.Array, max_history: int,
                chunk: int = 65_536) -> pa.Table:
    """One row per event, with the history the benchmark gives its models (``Split.histories``), in chunks
    so that the (E, M) history matrix stays small."""
    cold = split.cold(events)  # (E,)
    parts = []
    for a in range(0, len(events), chunk):
        ev = events.subset(np.arange(a, min(a + chunk, len(events))))
        hist = split.histories(ev, max_history)  # (e, M) right-aligned, -1 pads on the left
        keep = hist >= 0
        stamp = np.array([split.times[u][p] for u, p in zip(ev.user, ev.pos)], dtype=np.int64)
        parts.append(_table(split, ev.user, hist[keep], keep.sum(1), ev.target, stamp, cold[a:a + chunk],
                            item_sids))
    return pa.concat_tables(parts) if parts else SEQUENCE_SCHEMA.empty_table()


def _facts(split: sequences.Split, tables: dict[str, pa.Table], max_history: int) -> dict[str, Any]:
    """What the dataset card states: the protocol, its cut-offs and every split's counts."""
    keep = ("protocol", "cutoff_utc", "valid_start_utc", "test_end_utc", "test_fraction", "valid_fraction",
            "min_ratings", "n_valid_events_total", "n_ratings_dropped_no_sid", "n_events_dropped_no_history",
            "user_sample")
    counts = {name: {"rows": t.num_rows, "users": len(np.unique(t.column("user_id").to_numpy())),
                     "cold": int(np.asarray(t.column("cold")).sum())} for name, t in tables.items()}
    return {**{k: split.info[k] for k in keep if k in split.info}, "max_history": max_history,
            "n_users": int(len(split.users)), "n_movies": int(len(split.movie_ids)), "splits": counts}


# ---------------------------------------------------------------------------------------------- instructions


def next_movie_prompt(history_sids: list[str]) -> str:
    """The prompt asking for the next movie after ``history_sids`` (oldest first)."""
    return ("Here are the Semantic IDs of the movies a user watched, oldest first: " + ", ".join(history_sids)
            + ". Which movie will the user watch next?")


def instruction_data(data: SequenceData, run_dir: Path, prompt_history: int) -> dict[str, pa.Table]:
    """Prompt/response pairs per split: ``next_movie`` rows (row i is sequence row i of the split, its history
    cut to the latest ``prompt_history`` SIDs), then, in ``train``, ``sid_to_title`` and ``title_to_sid`` for
    every movie with a SID, by movie id."""
    out = {}
    for name, table in data.tables.items():
        hist = table.column("history_sid").to_pylist()
        target = table.column("target_sid").to_pylist()
        rows = {"task": ["next_movie"] * len(hist), "prompt": [next_movie_prompt(h[-prompt_history:]) for h in hist],
                "response": target, "movie_id": table.column("target").to_pylist()}
        out[name] = pa.table(rows, schema=INSTRUCTION_SCHEMA)
    index = load_index(run_dir)
    ids = [int(m) for m in index.movie_ids]
    n = len(ids)
    alignment = pa.table({
        "task": ["sid_to_title"] * n + ["title_to_sid"] * n,
        "prompt": [f"Which movie has the Semantic ID {s}?" for s in index.sids]
                  + [f"What is the Semantic ID of the movie {t}?" for t in index.display],
        "response": list(index.display) + list(index.sids),
        "movie_id": ids + ids}, schema=INSTRUCTION_SCHEMA)
    out["train"] = pa.concat_tables([out["train"], alignment])
    return out
