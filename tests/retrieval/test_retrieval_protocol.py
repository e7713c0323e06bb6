"""The benchmark's protocol: choices made on validation only, candidates that existed, simultaneous ratings,
rolling-origin folds, ratings given apart from the catalog, and intervals that hold with seed noise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sids_fixtures import write_catalog, write_embeddings

from movielens_sids import artifacts, pipeline
from movielens_sids.config import load_config
from movielens_sids.retrieval.bench import run_benchmark
from movielens_sids.retrieval.config import RetrievalConfig
from movielens_sids.retrieval.content import Excluded, content_topk
from movielens_sids.retrieval.sequences import availability, build_split, folds_of, split_of, train_fingerprint
from movielens_sids.retrieval.stage import resolve_ratings
from movielens_sids.retrieval.stats import bootstrap, holm, paired_differences

N_MOVIES = 30


def walking_ratings(n_users: int = 40, seed: int = 0, scramble_after: int | None = None) -> pd.DataFrame:
    """Users who walk through movie ids in small steps, one rating a minute; with ``scramble_after``, every
    rating at or after that time is of another movie the user never rated (same times, other events)."""
    rng = np.random.default_rng(seed)
    other = np.random.default_rng(seed + 7)
    rows = []
    for u in range(1, n_users + 1):
        m, t, seen = int(rng.integers(N_MOVIES)), 1_000_000_000 + int(rng.integers(0, 3000)), set()
        for _ in range(int(rng.integers(6, 16))):
            m = (m + int(rng.integers(1, 3))) % N_MOVIES
            t += 60
            if m in seen:
                continue
            seen.add(m)
            movie = m
            if scramble_after is not None and t >= scramble_after:
                free = [x for x in range(N_MOVIES) if x not in seen]
                movie = free[int(other.integers(len(free)))] if free else m
                seen.add(movie)
            rows.append((u, 10 * movie + 1, t))
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "timestamp"])


def codes_of(n: int) -> np.ndarray:
    """(n, 3) distinct codes with shared prefixes."""
    i = np.arange(n)
    return np.stack([i // 8, (i // 2) % 4, i % 2], 1).astype(np.int64)


def vectors_of(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tiny(**kw) -> RetrievalConfig:
    base = dict(protocol="temporal", test_fraction=0.25, valid_fraction=0.15, seeds=[0], max_history=6, d_model=16,
                n_heads=2, n_layers=1, max_epochs=4, patience=1, batch_size=16, bootstrap_samples=200, workers=1,
                threads=1, valid_beam_size=10, cold_bonuses=[0.0, 2.0, 8.0], content_windows=[1, 3])
    return RetrievalConfig(**{**base, **kw})


CHOICES = ("epochs", "best_epoch", "stopped_by", "valid_curve", "cold_bonus", "valid_recall@10_by_cold_bonus",
           "mix_weight", "valid_recall@10_by_mix", "gate_shift", "cold_scale", "warm_scale", "cold_window", "gate",
           "valid_recall@10_by_gate_shift", "valid_cold_recall@10_by_window", "window", "valid_recall@10_by_window")


def test_replacing_the_test_events_leaves_every_choice_of_the_benchmark_unchanged():
    movies = np.arange(N_MOVIES + 2) * 10 + 1  # the last two nobody rates: cold candidates
    a = walking_ratings()
    cutoff = int(np.quantile(a.timestamp, 0.75))
    b = walking_ratings(scramble_after=cutoff)
    cfg = tiny(cutoff=cutoff)
    splits = [split_of(r, movies, cfg) for r in (a, b)]
    assert train_fingerprint(splits[0]) == train_fingerprint(splits[1])
    assert not np.array_equal(splits[0].test.target, splits[1].test.target)  # the test events really differ
    years = np.full(N_MOVIES + 2, np.nan)
    years[::3] = 2030.0  # released after every event: candidates only once rated
    runs = [run_benchmark(s, codes_of(N_MOVIES + 2), cfg, vectors_of(N_MOVIES + 2),
                          available=availability(r, movies, years)) for s, r in zip(splits, (a, b))]
    for method in runs[0]:
        for one, two in zip(runs[0][method]["runs"], runs[1][method]["runs"]):
            chosen = {k: one[k] for k in CHOICES if k in one}
            assert chosen == {k: two[k] for k in CHOICES if k in two}, method
    assert "mix_weight" in runs[0]["semantic_id"]["runs"][0] and "window" in runs[0]["content_knn"]["runs"][0]
    assert "cold_bonus" in runs[0]["semantic_id_tokens"]["runs"][0]


def test_a_movie_that_did_not_exist_yet_is_never_ranked():
    n = N_MOVIES + 2
    movies = np.arange(n) * 10 + 1
    ratings = walking_ratings()
    late = int(ratings.timestamp.max()) + 60  # two new movies, each first rated at the same late second
    extra = [(u, m, late + 60 * k) for k, u in enumerate(range(1, 9)) for m in (301, 311)]
    ratings = pd.concat([ratings, pd.DataFrame(extra, columns=ratings.columns)], ignore_index=True)
    years = np.full(n, 2030.0)  # every movie released after the events: it exists once someone rated it
    available = availability(ratings, movies, years)
    cfg = tiny(methods=["semantic_id", "most_popular", "content_knn"], cold_bonuses=[0.0, 8.0])
    split = split_of(ratings, movies, cfg)
    not_yet = available[split.test.target] > split.test.time  # (E,) the target had no rating before its event
    assert not_yet.any() and (~not_yet).any()
    existing = run_benchmark(split, codes_of(n), cfg, vectors_of(n), available=available)
    everything = run_benchmark(split, codes_of(n), cfg, vectors_of(n), available=None)
    for method, r in existing.items():
        assert (r["ranks"][:, not_yet] == -1).all(), method
    assert (everything["content_knn"]["ranks"][:, not_yet] >= 0).any()  # with every movie a candidate, it is
    # No list holds a movie that did not exist at its event, whatever the target.
    ex = Excluded(n, split.seen(split.test), split.test.time, available)
    top = content_topk(vectors_of(n), split.histories(split.test, 6), ex, window=3, k=n)
    later = available[None, :] > split.test.time[:, None]  # (E, N)
    listed = np.zeros_like(later)
    np.put_along_axis(listed, np.maximum(top, 0), top >= 0, axis=1)
    assert not (listed & later).any() and listed.any()


def test_availability_is_the_release_year_or_the_first_rating_before_the_event():
    ratings = pd.DataFrame({"user_id": [1, 2], "movie_id": [5, 5], "timestamp": [1_600_000_000, 1_500_000_000]})
    got = availability(ratings, np.array([5, 6, 7]), np.array([2030.0, 2019.0, np.nan]))
    assert got[0] == 1_500_000_001  # rated before 2030: a candidate from the second after its first rating
    assert got[1] == int(pd.Timestamp("2019-01-01", tz="UTC").timestamp())  # its release year's first second
    assert got[2] == np.iinfo(np.int64).min  # no year: always a candidate


def test_ratings_given_in_the_same_second_as_the_target_are_neither_history_nor_seen():
    rows = [(1, 1, 100), (1, 2, 200), (1, 3, 200), (1, 4, 200), (1, 5, 300),
            (2, 1, 150), (2, 2, 250), (2, 3, 260), (2, 4, 270), (2, 5, 280)]
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "timestamp"])
    split = build_split(ratings, np.arange(1, 6), protocol="temporal", cutoff=200, valid_fraction=0.2)
    u1 = np.flatnonzero(split.users[split.test.user] == 1)
    by_target = {int(split.movie_ids[split.test.target[e]]): e for e in u1}
    hist = split.histories(split.test, 5)
    seen = split.seen(split.test)[np.arange(len(split.test))]
    for movie in (2, 3, 4):  # rated in the same second: only movie 1 came before
        e = by_target[movie]
        assert split.movie_ids[hist[e][hist[e] >= 0]].tolist() == [1]
        assert split.movie_ids[seen[e][seen[e] >= 0]].tolist() == [1]
    e = by_target[5]  # a second later, all three are history
    assert split.movie_ids[hist[e][hist[e] >= 0]].tolist() == [1, 2, 3, 4]
    assert split.info["n_test_events_sharing_second"] == 3
    assert split.info["n_test_events_same_second_history_removed"] == 2  # movies 3 and 4 lost a same-second item


def test_rolling_origin_folds_cut_at_successive_quantiles_and_pool_their_events():
    movies = np.arange(N_MOVIES) * 10 + 1
    ratings = walking_ratings(n_users=60)
    cfg = tiny(test_fraction=0.15, valid_fraction=0.1, folds=3, methods=["most_popular"])
    folds = folds_of(ratings, movies, cfg)
    assert len(folds) == 3
    cut = [f.info["cutoff"] for f in folds]
    assert cut == sorted(cut) and len(set(cut)) == 3
    for f, nxt in zip(folds, folds[1:]):
        times = f.test.time
        assert times.min() >= f.info["cutoff"] and times.max() < nxt.info["cutoff"]  # windows do not overlap
        assert f.info["test_end"] == nxt.info["cutoff"]
    for f in folds:  # every fold trains on everything before its own validation window
        train_times = np.concatenate([t[:n] for t, n in zip(f.times, f.n_train)])
        assert train_times.max() < f.info["valid_start"] <= f.valid.time.min()
    assert train_fingerprint(split_of(ratings, movies, cfg)) == train_fingerprint(folds[0])  # the earliest
    res = run_benchmark(folds, codes_of(N_MOVIES), cfg)
    assert res["most_popular"]["ranks"].shape == (1, sum(len(f.test) for f in folds))
    assert [r["fold"] for r in res["most_popular"]["runs"]] == [0, 1, 2]


def test_validation_only_scores_every_validation_event_and_builds_no_test_event():
    movies = np.arange(N_MOVIES) * 10 + 1
    ratings = walking_ratings()
    cfg = tiny(max_valid_events=20)
    plain = split_of(ratings, movies, cfg)
    val = split_of(ratings, movies, dataclasses.replace(cfg, validation_only=True))
    assert len(val.test) == plain.info["n_valid_events_total"] > len(val.valid) == 20
    assert val.test.time.max() < plain.info["cutoff"] and val.info["scored_events"] == "validation"
    # Choices made after training read every validation event, or the sample when they are the scored ones.
    assert len(plain.tune) == plain.info["n_valid_events_total"] and np.isin(plain.valid.pos, plain.tune.pos).all()
    assert np.array_equal(val.tune.target, val.valid.target)


def test_a_catalog_larger_than_the_rated_movies_takes_its_split_and_vectors_from_the_given_ratings(tmp_path):
    n = 40  # the catalog; only the first 30 movies are ever rated
    rows = walking_ratings()
    rows = rows.assign(movie_id=(rows.movie_id - 1) // 10 + 1)  # ids 1..30
    ratings_file = tmp_path / "ratings.csv"
    rows.assign(rating=4.0).rename(columns={"user_id": "userId", "movie_id": "movieId"})[
        ["userId", "movieId", "rating", "timestamp"]].to_csv(ratings_file, index=False)
    from movielens_fixtures import write_movielens

    src = write_movielens(tmp_path / "ml", movies=[(i, f"Movie {i} (2000)", "Drama") for i in range(1, n + 1)])
    run = tmp_path / "run"
    run.mkdir()
    write_catalog(run, [{"movie_id": i, "title": f"Movie {i}", "year": 2000} for i in range(1, n + 1)])
    write_embeddings(run, vectors_of(n), np.arange(1, n + 1))
    cfg = load_config(None, {
        "data.source": str(src), "retrieval.ratings": str(ratings_file), "collab.method": "als",
        "collab.factors": 4, "collab.cowatch_pairs": 20, "retrieval.test_fraction": 0.2,
        "retrieval.valid_fraction": 0.1, "model.encoder": "residual", "model.levels": 2, "model.codebook_size": 4,
        "model.hidden_dims": [16], "model.kmeans_iters": 5, "model.collab_input": 1.0, "train.batch_size": 16,
        "train.max_epochs": 1, "train.progress_bar": False, "train.accelerator": "cpu", "train.devices": "1"})
    for stage in ("collab", "train", "assign"):
        pipeline.execute(stage, cfg, run)
    collab = artifacts.read_collab(run)
    _, given = resolve_ratings(cfg.retrieval, cfg)
    split = split_of(given, np.arange(1, n + 1), cfg.retrieval)
    assert collab.split["train_fingerprint"] == train_fingerprint(split)  # the benchmark's split, from the file
    assert collab.counts.sum() == split.info["n_train_interactions"]
    assert (collab.counts[collab.movie_ids > 30] == 0).all()  # nobody rated them
    sids = artifacts.read_sids(run)
    assert sids.movie_ids.tolist() == list(range(1, n + 1)) and len(set(sids.strings)) == n  # they get SIDs too


def test_holm_adjusts_a_family_step_down():
    got = holm(np.array([0.01, 0.04, 0.03, np.nan]))
    assert got[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(got[3])


def test_the_p_value_and_the_interval_agree_on_significance():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 300)) * 0.5 + np.linspace(-0.15, 0.15, 40)[:, None]  # (V, E) near the edge
    clusters = rng.integers(0, 30, size=300)
    iv = bootstrap(values, clusters, seed_means=values[:, None, :].repeat(3, 1).mean(2) + rng.normal(size=(40, 3))
                   * 0.01, samples=2000)
    excludes = (iv.low > 0) | (iv.high < 0)
    assert excludes.any() and (~excludes).any()
    assert ((iv.p_value < 0.05) == excludes).mean() >= 0.95  # the same rule, up to the bootstrap's discreteness


def test_intervals_cover_the_true_difference_when_seeds_are_the_only_noise():
    """Two methods on fixed events; each training seed shifts a method's score on every event at once. Resampling
    users alone would see no noise at all; the interval must still cover the true difference ~95 % of the time."""
    rng = np.random.default_rng(1)
    n_events, seeds, truth = 400, 3, 0.02
    users = rng.integers(0, 60, size=n_events)
    base = (rng.random(n_events) < 0.1).astype(float)  # (E,) what both methods score on every event
    covered = 0
    for sim in range(200):
        ref = base + truth + rng.normal(0, 0.01, size=(seeds, 1))  # (S, E): one shift per seed
        other = base + rng.normal(0, 0.01, size=(seeds, 1))
        ranks_like = {"other": other}
        out = _paired_from_scores(ref, ranks_like, users, sim)
        covered += out["ci_low"] <= truth <= out["ci_high"]
    assert 0.90 <= covered / 200 <= 0.99


def _paired_from_scores(ref: np.ndarray, others: dict[str, np.ndarray], users: np.ndarray, seed: int) -> dict:
    """paired_differences over per-event scores given directly (its ranks -> scores step bypassed)."""
    import movielens_sids.retrieval.stats as stats

    original = stats.event_scores
    stats.event_scores = lambda x, m: x  # scores in, scores out
    try:
        out = paired_differences(ref, others, ("recall@10",), {"all": np.ones(ref.shape[1], bool)}, users,
                                 samples=1000, seed=seed)
    finally:
        stats.event_scores = original
    return out["other"]["all"]["recall@10"]
