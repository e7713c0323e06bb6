"""Ratings -> per-user, time-ordered movie sequences, split into training items and prediction events.

Two protocols, both over every user's rated movies in time order (ties broken by movie id, so the
order is reproducible; a movie rated twice counts once, at its first rating). Ratings given in the
same second are simultaneous: an event's history (and what it counts as already seen) holds only
the movies its user rated in an earlier second, never one rated in the same second as the target.

- ``leave_one_out``, the one of SASRec (Kang & McAuley, 2018) and HSTU (Zhai et al., 2024): users
  with fewer than ``min_ratings`` ratings dropped, each user's last movie is a test event, the one
  before a validation event, the rest is training. One test event per user.
- ``temporal``, a global time split: every interaction at or after the cut-off time (by default
  the time after which ``test_fraction`` of the interactions remain) is a test event, predicted
  from the user's whole history before it; the ``valid_fraction`` of interactions just before the
  cut-off are validation events; models train on everything before those. No interaction at or
  after a slice's start, of any user, reaches the slices before it, so nothing from the future
  shapes training. An event with no earlier interaction of its user cannot be predicted from a
  history and is dropped (counted). With ``folds`` > 1 (rolling origin) there are several
  successive cut-offs, each fold with its own training, validation and test window (``folds_of``).

Candidates (``availability``): at an event at time t a movie can be recommended only if it existed
then: released in t's year or earlier, or rated by anyone before t (a movie without a year exists
from the start).

Only movies that have a Semantic ID can be targets, so ratings of other movies are removed first
(and counted) -- every method sees the same sequences and the same events.

May import: errors; numpy and pandas.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SidsError

log = logging.getLogger(__name__)

RATING_COLUMNS = ["user_id", "movie_id", "rating", "timestamp"]


def read_ratings(path: str | Path) -> pd.DataFrame:
    """Read a MovieLens ratings file: ``ratings.csv`` (header ``userId,movieId,rating,timestamp``)
    or ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``, Latin-1).

    Returns:
        A DataFrame with int64 columns ``user_id``, ``movie_id``, ``timestamp`` (rating dropped: the
        benchmark uses every rating as an interaction, as SASRec does).
    """
    path = Path(path)
    if not path.is_file():
        raise SidsError(f"ratings file {path} not found")
    try:
        if path.suffix == ".dat":
            df = pd.read_csv(path, sep="::", engine="python", header=None, names=RATING_COLUMNS,
                             encoding="latin-1", usecols=[0, 1, 3])
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                header = [c.strip() for c in f.readline().strip().split(",")]
            missing = [c for c in ("userId", "movieId", "timestamp") if c not in header]
            if missing:
                raise SidsError(f"{path}: missing column(s) {', '.join(missing)}"
                                f" (expected userId,movieId,rating,timestamp)")
            df = pd.read_csv(path, usecols=["userId", "movieId", "timestamp"], engine="pyarrow")
            df = df.rename(columns={"userId": "user_id", "movieId": "movie_id"})
    except (ValueError, KeyError) as e:
        raise SidsError(f"{path}: not a MovieLens ratings file ({' '.join(str(e).split())})") from e
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise SidsError(f"{path}: cannot read ratings ({type(e).__name__}: {' '.join(str(e).split())})") from e
    if df.empty:
        raise SidsError(f"{path}: no ratings")
    try:
        df = df[["user_id", "movie_id", "timestamp"]].astype("int64")
    except (ValueError, TypeError) as e:
        bad = df[pd.to_numeric(df.stack(), errors="coerce").unstack().isna().any(axis=1)].index
        first = int(bad[0]) + 2 if len(bad) else "?"
        raise SidsError(f"{path}: unparsable rating rows (first at line {first})") from e
    return df


PROTOCOLS = ("leave_one_out", "temporal")


@dataclass
class Events:
    """Prediction events: user ``user[e]``'s item at position ``pos[e]`` of its sequence, from the items before it."""

    user: np.ndarray
    """(E,) int64 user index into ``Split.users``."""
    pos: np.ndarray
    """(E,) int64 position of the target in that user's sequence (>= 1: there is a history)."""
    target: np.ndarray
    """(E,) int64 the item to predict."""
    hist: np.ndarray
    """(E,) int64 history length: the items of the user's sequence before ``pos`` rated in an earlier second
    (``hist <= pos``; an item rated in the same second as the target is neither history nor seen)."""
    time: np.ndarray
    """(E,) int64 the event's Unix time."""

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, keep: np.ndarray) -> Events:
        return Events(user=self.user[keep], pos=self.pos[keep], target=self.target[keep], hist=self.hist[keep],
                      time=self.time[keep])


@dataclass
class Seen:
    """What each event's user rated before it, ``sequences[user][:hist]``, without an (E, S) matrix (S, the
    longest history, is thousands of movies): ``seen[rows]`` (a slice or an index array) is the (b, S_b) int64
    block, -1 padded."""

    sequences: list[np.ndarray]
    user: np.ndarray
    hist: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        user, hist = self.user[rows], self.hist[rows]
        out = np.full((len(user), max(1, int(hist.max(initial=0)))), -1, dtype=np.int64)
        for e, (u, h) in enumerate(zip(user, hist)):
            out[e, :h] = self.sequences[u][:h]
        return out


@dataclass
class Split:
    """Sequences of every kept user, their training prefixes and the validation and test events.

    Item ids are dense indices ``0..N-1`` into ``movie_ids``. Every user's training items are a
    prefix of its sequence, and every event lies after that prefix.
    """

    protocol: str
    """``leave_one_out`` or ``temporal``."""
    movie_ids: np.ndarray
    """(N,) int64 MovieLens ids of the movies that can appear (those with a SID), sorted."""
    users: np.ndarray
    """(U,) int64 user ids, sorted."""
    sequences: list[np.ndarray]
    """Per user, every item in time order."""
    times: list[np.ndarray]
    """Per user, the timestamp of each item of ``sequences``."""
    n_train: np.ndarray
    """(U,) how many of each user's first items are training items."""
    valid: Events
    """The validation events (what early stopping watches)."""
    test: Events
    """The test events."""
    tune: Events | None = None
    """Every validation event (``valid`` is a sample of them), what the choices made after training read (the
    ranking mix); in a validation-only run, where ``test`` holds them all, the sample itself. None: ``valid``."""
    info: dict = field(default_factory=dict)
    """Counts and cut-offs for the report."""

    @property
    def train(self) -> list[np.ndarray]:
        """Per user, the training items in time order."""
        return [s[:n] for s, n in zip(self.sequences, self.n_train)]

    def histories(self, events: Events, max_history: int) -> np.ndarray:
        """(E, M) int64: the last ``M`` items of each event's history, right-aligned, -1 pads on the left."""
        out = np.full((len(events), max_history), -1, dtype=np.int64)
        for e, (u, p) in enumerate(zip(events.user, events.hist)):
            tail = self.sequences[u][max(0, p - max_history):p]
            out[e, max_history - len(tail):] = tail
        return out

    def seen(self, events: Events) -> Seen:
        """Every item of each event's user's history before it (sliced into (b, S) -1 padded arrays)."""
        return Seen(self.sequences, events.user, events.hist)

    def train_counts(self) -> np.ndarray:
        """(N,) number of training interactions of each item."""
        train = self.train
        items = np.concatenate(train) if train else np.empty(0, np.int64)
        return np.bincount(items, minlength=len(self.movie_ids))

    def cold(self, events: Events) -> np.ndarray:
        """(E,) bool: the event's target has no interaction in the training items."""
        return self.train_counts()[events.target] == 0


def train_fingerprint(split: Split) -> str:
    """sha256 of the split's training interactions (user id, movie id, in order): two splits with the same
    fingerprint train on exactly the same interactions."""
    import hashlib

    h = hashlib.sha256()
    for user, seq in zip(split.users, split.train):
        h.update(np.int64(user).tobytes())
        h.update(split.movie_ids[seq].astype(np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def split_of(ratings: pd.DataFrame, movie_ids: np.ndarray, rcfg) -> Split:
    """The split that ``rcfg`` (a ``RetrievalConfig``) describes, its earliest fold when ``rcfg.folds`` > 1:
    the one whose training interactions the collaborative vectors are built from (they precede every fold's
    validation and test events, so no scored event shapes the IDs)."""
    return folds_of(ratings, movie_ids, rcfg, only_first=True)[0]


def folds_of(ratings: pd.DataFrame, movie_ids: np.ndarray, rcfg, *, only_first: bool = False) -> list[Split]:
    """The benchmark's splits, one per fold (``rcfg.folds``; one for leave-one-out or a single cut-off).

    Fold ``f`` of F cuts at the time after which ``test_fraction * (F - f)`` of the interactions remain; its
    test window ends where the next fold's begins, and its validation window is the ``valid_fraction`` of all
    interactions just before its cut-off. So with F = 3 and 10 % the cut-offs sit at the 70, 80 and 90 % time
    quantiles, and every fold trains on everything before its own validation window.
    """
    folds = int(getattr(rcfg, "folds", 1))
    if folds > 1 and (rcfg.protocol != "temporal" or rcfg.cutoff is not None):
        raise SidsError("retrieval.folds > 1 needs the temporal protocol with retrieval.test_fraction "
                        "(not a fixed retrieval.cutoff)")
    if folds * rcfg.test_fraction + rcfg.valid_fraction >= 1.0:
        raise SidsError(f"retrieval.folds: {folds} folds of test_fraction {rcfg.test_fraction} plus valid_fraction "
                        f"{rcfg.valid_fraction} leave no training interactions")
    common = dict(protocol=rcfg.protocol, min_ratings=rcfg.min_ratings, valid_fraction=rcfg.valid_fraction,
                  max_valid_events=rcfg.max_valid_events, max_test_events=rcfg.max_test_events,
                  max_users=rcfg.max_users, seed=rcfg.seeds[0],
                  score_validation=bool(getattr(rcfg, "validation_only", False)))
    if folds == 1:
        return [build_split(ratings, movie_ids, test_fraction=rcfg.test_fraction, cutoff=rcfg.cutoff, **common)]
    return [build_split(ratings, movie_ids, test_fraction=rcfg.test_fraction * (folds - f),
                        test_end_fraction=rcfg.test_fraction * (folds - f - 1) or None, **common)
            for f in range(1 if only_first else folds)]


def availability(ratings: pd.DataFrame, movie_ids: np.ndarray, years: np.ndarray | None) -> np.ndarray:
    """(N,) int64: the first Unix second at which each movie of ``movie_ids`` (sorted) is a candidate.

    A movie exists at time t when it was released in t's year or earlier (January 1st of its year, UTC), or
    when anyone rated it before t (any user's rating, in or out of the benchmark's sample). A movie without a
    year (``years`` NaN or None) exists from the start, as does every movie when ``years`` is None.
    """
    movie_ids = np.asarray(movie_ids, dtype=np.int64)
    start = np.iinfo(np.int64).min
    out = np.full(len(movie_ids), np.iinfo(np.int64).max, dtype=np.int64)
    if years is None:
        return np.full(len(movie_ids), start, dtype=np.int64)
    years = np.asarray(years, dtype=np.float64)
    known = np.isfinite(years)
    out[~known] = start
    release = (years[known].astype(np.int64) - 1970).astype("datetime64[Y]")  # (n,) January 1st of each year
    out[known] = release.astype("datetime64[s]").astype(np.int64)
    first = ratings.groupby("movie_id")["timestamp"].min()
    pos = np.searchsorted(movie_ids, first.index.to_numpy())
    ok = (pos < len(movie_ids)) & (movie_ids[np.minimum(pos, len(movie_ids) - 1)] == first.index.to_numpy())
    # rated before t, i.e. first rating + 1 <= t in whole seconds
    np.minimum.at(out, pos[ok], first.to_numpy()[ok].astype(np.int64) + 1)
    return out


def _time_cut(times: np.ndarray, fraction: float) -> int:
    """The smallest timestamp ``t`` such that about ``fraction`` of ``times`` are ``>= t``."""
    ordered = np.sort(times)
    return int(ordered[min(len(ordered) - 1, int(np.floor(len(ordered) * (1.0 - fraction))))])


def _select_ratings(ratings: pd.DataFrame, movie_ids: np.ndarray, *, protocol: str, min_ratings: int,
                    max_users: int | None, seed: int) -> tuple[pd.DataFrame, dict]:
    """The ratings of movies with a SID, of the kept users, in time order (ties by movie id), each (user, movie)
    once; and the split's first facts (what was dropped)."""
    known = ratings["movie_id"].isin(movie_ids)
    df = ratings[known]
    info = {
        "protocol": protocol,
        "n_ratings": int(len(ratings)),
        "n_ratings_dropped_no_sid": int((~known).sum()),
        "n_movies_dropped_no_sid": int(ratings.loc[~known, "movie_id"].nunique()),
        "n_users_total": int(ratings["user_id"].nunique()),
    }
    keep = np.unique(df["user_id"].to_numpy())
    if protocol == "leave_one_out":
        counts = df.groupby("user_id")["movie_id"].nunique()
        keep = counts.index[counts >= min_ratings].to_numpy()
        info["min_ratings"] = int(min_ratings)
    info["n_users_dropped_few_ratings"] = int(info["n_users_total"] - len(keep))
    if max_users is not None and len(keep) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=max_users, replace=False))
        info["user_sample"] = {"max_users": int(max_users), "seed": int(seed)}
    df = df[df["user_id"].isin(keep)]
    if df.empty:
        raise SidsError(f"no user has at least {min_ratings} ratings of movies with a Semantic ID"
                        if protocol == "leave_one_out" else "no ratings of movies with a Semantic ID")
    # Time order, ties broken by movie id: the same file always gives the same sequences. A movie
    # rated twice by one user counts once (its first rating), so a test movie is never in training.
    df = df.sort_values(["user_id", "timestamp", "movie_id"], kind="stable")
    n_before = len(df)
    df = df.drop_duplicates(["user_id", "movie_id"], keep="first")
    info["n_repeat_ratings_dropped"] = int(n_before - len(df))
    return df, info


def _event_marks(protocol: str, stamps: np.ndarray, user_of: np.ndarray, pos_of: np.ndarray, lengths: np.ndarray,
                 info: dict, *, cutoff: int | None, test_fraction: float, valid_fraction: float,
                 test_end_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n_train (U,), is_valid (n,), is_test (n,))`` for interactions sorted by user then time; temporal
    records its cut-offs in ``info`` (``test_end_fraction``: the test window ends where this share remains)."""
    if protocol == "leave_one_out":
        n_train = lengths - 2
        is_valid, is_test = pos_of == np.repeat(lengths - 2, lengths), pos_of == np.repeat(lengths - 1, lengths)
    else:
        t_test = int(cutoff) if cutoff is not None else _time_cut(stamps, test_fraction)
        t_valid = _time_cut(stamps[stamps < t_test], valid_fraction / max(1e-12, 1.0 - test_fraction)) \
            if (stamps < t_test).any() else t_test
        t_end = _time_cut(stamps, test_end_fraction) if test_end_fraction else None
        is_test, is_valid = stamps >= t_test, (stamps >= t_valid) & (stamps < t_test)
        if t_end is not None:
            is_test &= stamps < t_end
            info.update(test_end=t_end, test_end_utc=str(pd.Timestamp(t_end, unit="s")))
        # Sequences are in time order, so the training items (before t_valid) are each sequence's prefix.
        n_train = np.bincount(user_of, weights=stamps < t_valid, minlength=len(lengths)).astype(np.int64)
        info.update(cutoff=t_test, valid_start=t_valid, cutoff_utc=str(pd.Timestamp(t_test, unit="s")),
                    valid_start_utc=str(pd.Timestamp(t_valid, unit="s")), test_fraction=float(test_fraction),
                    valid_fraction=float(valid_fraction))
    return n_train, is_valid, is_test


def _same_second(user_of: np.ndarray, stamps: np.ndarray, pos_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For interactions sorted by user then time: ``(hist (n,), shares (n,) bool)``, the number of the user's
    items rated in an earlier second, and whether another item of the user shares the interaction's second."""
    n = len(stamps)
    idx = np.arange(n)
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (user_of[1:] != user_of[:-1]) | (stamps[1:] != stamps[:-1])
    run_start = np.maximum.accumulate(np.where(new_run, idx, 0))  # (n,) first index of its (user, second) run
    run_id = np.cumsum(new_run) - 1
    run_len = np.bincount(run_id)
    return pos_of - (idx - run_start), run_len[run_id] > 1


def _per_user(user_ids: np.ndarray, items: np.ndarray, stamps: np.ndarray) -> tuple:
    """For interactions sorted by user then time: ``(users (U,), sequences, times, lengths (U,), user_of (n,),
    pos_of (n,))``, the users, their item and time sequences, and each interaction's user index and position."""
    users, starts = np.unique(user_ids, return_index=True)
    bounds = np.append(starts, len(user_ids))
    sequences = [items[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:])]
    times = [stamps[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:])]
    lengths = np.diff(bounds)
    user_of = np.repeat(np.arange(len(users)), lengths)  # (n,) user index of every interaction
    pos_of = np.arange(len(user_ids)) - np.repeat(starts, lengths)  # (n,) position in its user's sequence
    return users, sequences, times, lengths, user_of, pos_of


def _sampled(valid: Events, test: Events, max_valid: int | None, max_test: int | None, seed: int
             ) -> tuple[Events, Events]:
    """Seeded samples of at most ``max_valid`` validation and ``max_test`` test events (None: all), in order."""
    rng = np.random.default_rng(seed)
    if max_valid is not None and len(valid) > max_valid:
        valid = valid.subset(np.sort(rng.choice(len(valid), size=max_valid, replace=False)))
    if max_test is not None and len(test) > max_test:
        test = test.subset(np.sort(rng.choice(len(test), size=max_test, replace=False)))
    return valid, test


def build_split(ratings: pd.DataFrame, movie_ids: np.ndarray, *, protocol: str = "leave_one_out",
                min_ratings: int = 5, test_fraction: float = 0.1, valid_fraction: float = 0.05,
                cutoff: int | None = None, max_valid_events: int | None = None, max_test_events: int | None = None,
                max_users: int | None = None, seed: int = 0, test_end_fraction: float | None = None,
                score_validation: bool = False) -> Split:
    """Turn ratings into the split of ``protocol``.

    Args:
        ratings: columns ``user_id``, ``movie_id``, ``timestamp``.
        movie_ids: the movies with a Semantic ID; ratings of any other movie are dropped (counted).
        protocol: ``leave_one_out`` or ``temporal``.
        min_ratings: leave-one-out: users with fewer ratings (after that filter) are dropped; at least 3.
        test_fraction: temporal: the share of interactions at or after the cut-off.
        valid_fraction: temporal: the share of interactions in the validation slice before the cut-off.
        cutoff: temporal: the cut-off as a Unix timestamp, instead of ``test_fraction``.
        max_valid_events: keep a seeded sample of this many validation events (None: all).
        max_test_events: keep a seeded sample of this many test events (None: all; for the largest variants).
        max_users: keep a seeded random sample of this many users (for ml-20m/25m/32m); None keeps all.
        seed: seed of the user and validation samples.
        test_end_fraction: temporal: the test window ends where this share remains (None: at the end).
        score_validation: ``test`` holds every validation event instead of the test events (for choosing
            settings); ``valid`` stays the sample early stopping watches.

    Returns:
        A ``Split``; movies are re-indexed densely over ``movie_ids``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if min_ratings < 3:
        raise ValueError(f"min_ratings: need at least 3 (train, valid, test), got {min_ratings}")
    movie_ids = np.unique(np.asarray(movie_ids, dtype=np.int64))
    df, info = _select_ratings(ratings, movie_ids, protocol=protocol, min_ratings=min_ratings, max_users=max_users,
                               seed=seed)
    items = np.searchsorted(movie_ids, df["movie_id"].to_numpy())
    stamps = df["timestamp"].to_numpy().astype(np.int64)
    users, sequences, times, lengths, user_of, pos_of = _per_user(df["user_id"].to_numpy(), items, stamps)
    n_train, is_valid, is_test = _event_marks(protocol, stamps, user_of, pos_of, lengths, info, cutoff=cutoff,
                                              test_fraction=test_fraction, valid_fraction=valid_fraction,
                                              test_end_fraction=test_end_fraction)
    hist_of, shares = _same_second(user_of, stamps, pos_of)
    has_history = hist_of >= 1
    info["n_events_dropped_no_history"] = int(((is_test | is_valid) & ~has_history).sum())
    test_kept = (is_valid if score_validation else is_test) & has_history
    if score_validation:
        info["scored_events"] = "validation"
    # Simultaneous ratings: scored events whose target shares its second with other ratings of the user, and those
    # of them whose history would otherwise have held a movie rated in that same second.
    info.update(n_test_events_sharing_second=int((test_kept & shares).sum()),
                n_test_events_same_second_history_removed=int((test_kept & (hist_of < pos_of)).sum()))
    valid, test = (Events(user=user_of[m], pos=pos_of[m], target=items[m], hist=hist_of[m], time=stamps[m])
                   for m in (is_valid & has_history, test_kept))
    info.update(n_valid_events_total=len(valid), n_test_events_total=len(test))
    every_valid, (valid, test) = valid, _sampled(valid, test, max_valid_events, max_test_events, seed)
    if not len(test):
        raise SidsError("the split has no test event; lower the cut-off or use more ratings")
    info.update(n_users=int(len(users)), n_interactions=int(len(df)), n_train_interactions=int(n_train.sum()),
                n_valid_events=len(valid), n_test_events=len(test), n_movies=int(len(movie_ids)),
                n_movies_rated=int(len(np.unique(items))))
    return Split(protocol=protocol, movie_ids=movie_ids, users=users, sequences=sequences, times=times,
                 n_train=n_train, valid=valid, test=test, tune=valid if score_validation else every_valid, info=info)
