"""Ratings -> per-user, time-ordered movie sequences with the leave-one-out split.

The protocol is the one of SASRec (Kang & McAuley, 2018) and HSTU (Zhai et al., 2024): every
user's rated movies in time order (ties broken by movie id, so the order is reproducible), users
with fewer than ``min_ratings`` ratings dropped, the last movie held out for test, the one before
for validation, the rest for training. Only movies that have a Semantic ID can be targets, so
ratings of other movies are removed first (and counted) -- every method sees the same sequences.
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


@dataclass
class Split:
    """The leave-one-out split of every kept user; item ids are dense indices ``0..N-1`` into ``movie_ids``."""

    movie_ids: np.ndarray
    """(N,) int64 MovieLens ids of the movies that can appear (those with a SID), sorted."""
    users: np.ndarray
    """(U,) int64 user ids, sorted."""
    train: list[np.ndarray]
    """Per user, the training items in time order (all but the last two)."""
    valid: np.ndarray
    """(U,) the second-to-last item of each user."""
    test: np.ndarray
    """(U,) the last item of each user."""
    info: dict = field(default_factory=dict)
    """Counts for the report (ratings, dropped ratings and users, sampling)."""

    def history(self, stage: str, u: int) -> np.ndarray:
        """The items a model sees before predicting ``stage`` ("valid" or "test") for user index ``u``."""
        if stage == "valid":
            return self.train[u]
        if stage == "test":
            return np.append(self.train[u], self.valid[u])
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")

    def targets(self, stage: str) -> np.ndarray:
        return self.valid if stage == "valid" else self.test


def build_split(ratings: pd.DataFrame, movie_ids: np.ndarray, *, min_ratings: int = 5,
                max_users: int | None = None, seed: int = 0) -> Split:
    """Turn ratings into the leave-one-out split.

    Args:
        ratings: columns ``user_id``, ``movie_id``, ``timestamp``.
        movie_ids: the movies with a Semantic ID; ratings of any other movie are dropped (counted).
        min_ratings: users with fewer ratings (after that filter) are dropped; at least 3.
        max_users: keep a seeded random sample of this many users (for ml-20m/25m/32m); None keeps all.
        seed: seed of the user sample.

    Returns:
        A ``Split``; movies are re-indexed densely over ``movie_ids``.
    """
    if min_ratings < 3:
        raise ValueError(f"min_ratings: need at least 3 (train, valid, test), got {min_ratings}")
    movie_ids = np.unique(np.asarray(movie_ids, dtype=np.int64))
    n_ratings = len(ratings)
    known = ratings["movie_id"].isin(movie_ids)
    df = ratings[known]
    info = {
        "n_ratings": int(n_ratings),
        "n_ratings_dropped_no_sid": int((~known).sum()),
        "n_movies_dropped_no_sid": int(ratings.loc[~known, "movie_id"].nunique()),
        "n_users_total": int(ratings["user_id"].nunique()),
    }
    counts = df.groupby("user_id")["movie_id"].nunique()
    keep = counts.index[counts >= min_ratings].to_numpy()
    info["n_users_dropped_few_ratings"] = int(info["n_users_total"] - len(keep))
    if max_users is not None and len(keep) > max_users:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(keep, size=max_users, replace=False))
        info["user_sample"] = {"max_users": int(max_users), "seed": int(seed)}
    df = df[df["user_id"].isin(keep)]
    if df.empty:
        raise SidsError(f"no user has at least {min_ratings} ratings of movies with a Semantic ID")
    # Time order, ties broken by movie id: the same file always gives the same sequences. A movie
    # rated twice by one user counts once (its first rating), so a test movie is never in training.
    df = df.sort_values(["user_id", "timestamp", "movie_id"], kind="stable")
    n_before = len(df)
    df = df.drop_duplicates(["user_id", "movie_id"], keep="first")
    info["n_repeat_ratings_dropped"] = int(n_before - len(df))
    items = np.searchsorted(movie_ids, df["movie_id"].to_numpy())
    users, starts = np.unique(df["user_id"].to_numpy(), return_index=True)
    bounds = np.append(starts, len(df))
    train, valid, test = [], np.empty(len(users), np.int64), np.empty(len(users), np.int64)
    for u in range(len(users)):
        seq = items[bounds[u]:bounds[u + 1]]
        train.append(seq[:-2].copy())
        valid[u], test[u] = seq[-2], seq[-1]
    info.update(n_users=int(len(users)), n_interactions=int(len(df)),
                n_movies=int(len(movie_ids)), n_movies_rated=int(len(np.unique(items))),
                min_ratings=int(min_ratings))
    return Split(movie_ids=movie_ids, users=users, train=train, valid=valid, test=test, info=info)
