"""The generative-retrieval benchmark: split, trie, beam search, metrics, and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from sids_fixtures import write_catalog

from movielens_sids.cli import main
from movielens_sids.errors import SidsError
from movielens_sids.retrieval.bench import (
    RetrievalConfig,
    merge_cold,
    most_popular,
    random_codes,
    recommend_all,
    run_benchmark,
)
from movielens_sids.retrieval.config import DEFAULT_METHODS
from movielens_sids.retrieval.content import content_topk
from movielens_sids.retrieval.generative import GenerativeRetriever
from movielens_sids.retrieval.lightning_modules import training_windows
from movielens_sids.retrieval.metrics import ndcg_at_k, ranking_metrics, recall_at_k, target_ranks
from movielens_sids.retrieval.sasrec import SASRec
from movielens_sids.retrieval.sequences import build_split, read_ratings
from movielens_sids.retrieval.stats import bootstrap, event_scores, paired_differences
from movielens_sids.retrieval.trie import SidTrie

# --- fixtures ----------------------------------------------------------------------------------


def synthetic_ratings(n_users: int = 40, n_movies: int = 30, seed: int = 0) -> pd.DataFrame:
    """Users who walk through movie ids in small steps (so there is a pattern to learn)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        m = int(rng.integers(n_movies))
        seen = set()
        for t in range(int(rng.integers(3, 15))):
            m = (m + int(rng.integers(1, 3))) % n_movies
            if m in seen:
                continue
            seen.add(m)
            rows.append((u, 10 * m + 1, 1000 + t))
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "timestamp"])


def synthetic_codes(n: int, levels: int = 3, k: int = 4, seed: int = 0) -> np.ndarray:
    """Distinct (n, levels) codes: semantic-looking prefixes by id, a counter as last token."""
    rng = np.random.default_rng(seed)
    codes = np.stack([np.arange(n) // (n // k + 1) % k, rng.integers(0, k, n)], 1)[:, : levels - 1]
    last = np.zeros(n, dtype=np.int64)
    seen: dict[tuple, int] = {}
    for i, c in enumerate(map(tuple, codes)):
        last[i] = seen.get(c, 0)
        seen[c] = last[i] + 1
    return np.concatenate([codes, last[:, None]], 1).astype(np.int64)


def write_sids(path, movie_ids: np.ndarray, codes: np.ndarray) -> None:
    letters = "abcdefgh"
    sid = ["".join(f"<{letters[j]}_{v}>" for j, v in enumerate(row)) for row in codes]
    pq.write_table(pa.table({"movie_id": pa.array(movie_ids, pa.int64()),
                             "semantic_id": pa.array(codes.tolist(), pa.list_(pa.int64())), "sid": sid}), path)


# --- the split ---------------------------------------------------------------------------------


def test_split_is_leave_one_out_in_time_order():
    ratings = synthetic_ratings()
    movies = np.unique(ratings.movie_id)
    split = build_split(ratings, movies, min_ratings=5)
    assert len(split.users) > 0
    np.testing.assert_array_equal(split.test.user, np.arange(len(split.users)))  # one test event per user
    np.testing.assert_array_equal(split.valid.user, np.arange(len(split.users)))
    test_hist = split.histories(split.test, 50)
    for u, user in enumerate(split.users):
        rows = ratings[ratings.user_id == user].sort_values(["timestamp", "movie_id"])
        seq = np.searchsorted(movies, rows.movie_id.to_numpy())
        assert split.test.target[u] == seq[-1]
        assert split.valid.target[u] == seq[-2]  # validation is the second to last
        assert split.test.target[u] not in split.train[u] and split.test.target[u] != split.valid.target[u]
        assert split.valid.target[u] not in split.train[u]
        np.testing.assert_array_equal(split.train[u], seq[:-2])
        np.testing.assert_array_equal(test_hist[u][test_hist[u] >= 0], seq[:-1])


def test_split_drops_short_users_breaks_ties_by_movie_and_counts_movies_without_sid():
    ratings = pd.DataFrame({
        "user_id": [1] * 6 + [2] * 4 + [3] * 6,
        "movie_id": [5, 3, 9, 7, 1, 2] + [1, 2, 3, 4] + [1, 2, 3, 4, 5, 99],
        "timestamp": [10, 10, 10, 20, 30, 40] + [1, 2, 3, 4] + [1, 2, 3, 4, 5, 6],
    })
    split = build_split(ratings, np.array([1, 2, 3, 4, 5, 7, 9]), min_ratings=5)
    assert split.users.tolist() == [1, 3]  # user 2 has 4 ratings; user 3 has 5 once movie 99 (no SID) is gone
    assert split.info["n_ratings_dropped_no_sid"] == 1 and split.info["n_movies_dropped_no_sid"] == 1
    assert split.info["n_users_dropped_few_ratings"] == 1
    mid = split.movie_ids
    assert mid[split.train[0]].tolist() == [3, 5, 9, 7]  # three ties at t=10, in movie-id order
    assert mid[split.valid.target[0]] == 1 and mid[split.test.target[0]] == 2
    assert mid[split.test.target[1]] == 5  # the movie without a SID is never a target


def test_split_repeat_ratings_never_leak_and_sampling_is_seeded():
    ratings = pd.DataFrame({"user_id": [1] * 7, "movie_id": [1, 2, 3, 4, 5, 6, 1],
                            "timestamp": [1, 2, 3, 4, 5, 6, 7]})
    split = build_split(ratings, np.arange(1, 7), min_ratings=5)
    assert split.info["n_repeat_ratings_dropped"] == 1
    assert split.test.target[0] not in split.train[0]
    big = synthetic_ratings(n_users=60)
    a = build_split(big, np.unique(big.movie_id), min_ratings=3, max_users=10, seed=1)
    b = build_split(big, np.unique(big.movie_id), min_ratings=3, max_users=10, seed=1)
    assert len(a.users) == 10 and a.users.tolist() == b.users.tolist()


def test_read_ratings_both_formats(tmp_path):
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,3.5,90\n")
    dat = tmp_path / "ratings.dat"
    dat.write_bytes("1::10::4::100\n1::20::3::90\n".encode("latin-1"))
    for p in (csv, dat):
        df = read_ratings(p)
        assert df.columns.tolist() == ["user_id", "movie_id", "timestamp"]
        assert df.movie_id.tolist() == [10, 20] and df.timestamp.tolist() == [100, 90]
    with pytest.raises(SidsError, match="not found"):
        read_ratings(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("user,movie\n1,2\n")
    with pytest.raises(SidsError):
        read_ratings(bad)


def test_training_windows_cover_every_transition_once():
    seq = np.arange(12)
    w = training_windows([seq, np.array([7])], max_history=4)  # (n, 5)
    targets = [int(row[j + 1]) for row in w for j in range(4) if row[j] >= 0]
    assert sorted(targets) == list(range(1, 12))  # every item after the first, exactly once
    assert (w[:, -1] >= 0).all()


def timed_ratings(n_users: int = 50, n_movies: int = 40, seed: int = 0) -> pd.DataFrame:
    """Ratings spread over time, users starting at different times, some movies only rated late."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        t = int(rng.integers(0, 1000))
        for m in rng.choice(n_movies, size=int(rng.integers(2, 20)), replace=False):
            t += int(rng.integers(0, 30))
            late = t > 1000 and rng.random() < 0.3  # a movie released late: nobody rated it before
            rows.append((u, n_movies + 1 + int(m) % 5 if late else int(m) + 1, t))
    rows = pd.DataFrame(rows, columns=["user_id", "movie_id", "timestamp"])
    return rows.drop_duplicates(["user_id", "movie_id"])


def test_temporal_split_keeps_the_future_out_of_training_and_validation():
    ratings = timed_ratings()
    movies = np.unique(ratings.movie_id)
    split = build_split(ratings, movies, protocol="temporal", test_fraction=0.2, valid_fraction=0.1)
    cut, vstart = split.info["cutoff"], split.info["valid_start"]
    assert vstart <= cut
    t_of = lambda ev: np.array([split.times[u][p] for u, p in zip(ev.user, ev.pos)])  # noqa: E731
    assert (t_of(split.test) >= cut).all()
    assert ((t_of(split.valid) >= vstart) & (t_of(split.valid) < cut)).all()
    for u in range(len(split.users)):
        n = split.n_train[u]
        assert (split.times[u][:n] < vstart).all() and (split.times[u][n:] >= vstart).all()
    # every rating at or after the cut-off is a test event, except a user's very first (no history: counted)
    late = int((ratings.timestamp >= cut).sum())
    assert len(split.test) + split.info["n_events_dropped_no_history"] >= late > len(split.test) - 1
    # a validation history holds nothing at or after the cut-off; a test history only what came before it
    for ev, limit in ((split.valid, cut), (split.test, None)):
        for u, p in zip(ev.user, ev.pos):
            before = split.times[u][:p]
            assert (before <= split.times[u][p]).all() and (limit is None or (before < limit).all())
    # training windows hold training items only: no (user, item) of a test or validation event
    train_pairs = {(u, i) for u in range(len(split.users)) for i in split.train[u]}
    for ev in (split.valid, split.test):
        assert not train_pairs & set(zip(ev.user.tolist(), ev.target.tolist()))


def test_leave_one_out_keeps_the_test_item_out_of_training_and_validation():
    ratings = timed_ratings()
    movies = np.unique(ratings.movie_id)
    split = build_split(ratings, movies, protocol="leave_one_out", min_ratings=3)
    valid_hist = split.histories(split.valid, 50)
    for e, u in enumerate(split.test.user):
        t = split.test.target[e]
        assert t not in split.train[u] and t not in valid_hist[e]
        assert split.times[u][split.test.pos[e]] >= split.times[u][: split.test.pos[e]].max()


@pytest.mark.parametrize("protocol", ["temporal", "leave_one_out"])
def test_cold_slice_is_exactly_the_targets_absent_from_training(protocol):
    ratings = timed_ratings(seed=2)
    lone = pd.DataFrame({"user_id": [999] * 4, "movie_id": [1, 2, 3, 999], "timestamp": [1, 2, 3, 5000]})
    ratings = pd.concat([ratings, lone])  # movie 999: rated once, last (a cold test target in both protocols)
    movies = np.unique(ratings.movie_id)
    split = build_split(ratings, movies, protocol=protocol, min_ratings=3, test_fraction=0.3)
    if protocol == "temporal":  # straight from the ratings: movies rated before the validation slice starts
        trained = set(ratings.movie_id[ratings.timestamp < split.info["valid_start"]])
    else:
        trained = {int(split.movie_ids[i]) for t in split.train for i in t}
    expect = np.array([int(split.movie_ids[t]) not in trained for t in split.test.target])
    np.testing.assert_array_equal(split.cold(split.test), expect)
    assert 0 < expect.sum() < len(expect)  # the fixture has both warm and cold events


def test_bootstrap_identical_methods_contain_zero_and_a_perfect_method_excludes_it():
    rng = np.random.default_rng(0)
    ranks = rng.integers(-1, 30, size=(3, 400))  # (S, E)
    users = rng.integers(0, 40, size=400)
    slices = {"all": np.ones(400, bool)}
    same = paired_differences(ranks, {"twin": ranks.copy()}, ("recall@10", "ndcg@10"), slices, users,
                              samples=500, seed=0)["twin"]["all"]
    for m in ("recall@10", "ndcg@10"):
        assert same[m]["ci_low"] <= 0 <= same[m]["ci_high"] and not same[m]["significant"]
        assert same[m]["p_value"] == 1.0
    perfect = np.zeros((1, 400), np.int64)  # the target first on every event
    d = paired_differences(perfect, {"other": ranks}, ("recall@10",), slices, users, samples=500, seed=0)
    d = d["other"]["all"]["recall@10"]
    assert d["ci_low"] > 0 and d["significant"] and d["p_value"] < 0.01
    # two methods of the same quality, drawn independently: their interval contains 0
    a, b = rng.random((2, 2000)) < 0.3
    iv = bootstrap(a.astype(float) - b.astype(float), samples=2000, seed=1)
    assert iv.low < 0 < iv.high and iv.p_value > 0.05


def test_bootstrap_resamples_whole_users():
    """Events of one user move together: a cluster bootstrap is wider than an event bootstrap when users differ."""
    users = np.repeat(np.arange(10), 50)
    values = np.repeat(np.random.default_rng(0).random(10) < 0.5, 50).astype(float)
    by_user = bootstrap(values, users, samples=2000, seed=0)
    by_event = bootstrap(values, samples=2000, seed=0)
    assert by_user.high - by_user.low > 3 * (by_event.high - by_event.low)
    assert by_user.value == pytest.approx(values.mean())


def test_content_topk_ranks_similar_unseen_movies_first():
    x = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]] + 0.01 * np.arange(5)[:, None]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hist = np.array([[-1, 0], [3, 4]])
    top = content_topk(x, hist, np.array([[0, -1], [3, 4]]), window=1, k=3)
    assert top[0, 0] == 1  # the twin of movie 0, which itself is seen and left out
    assert 4 not in top[1] and 3 not in top[1]


# --- the trie and beam search ------------------------------------------------------------------


def test_trie_decodes_every_sid_and_rejects_others():
    codes = synthetic_codes(50)
    trie = SidTrie(codes)
    np.testing.assert_array_equal(trie.lookup(torch.from_numpy(codes)).numpy(), np.arange(50))
    existing = {tuple(c) for c in codes}
    others = np.array([c for c in np.ndindex(4, 4, 4) if c not in existing])
    assert (trie.lookup(torch.from_numpy(others)) == -1).all()
    mask = trie.allowed(0, trie.root(1))[0]
    assert set(np.flatnonzero(mask.numpy())) == set(codes[:, 0])
    with pytest.raises(SidsError, match="not unique"):
        SidTrie(np.array([[0, 1], [0, 1]]))


@pytest.mark.parametrize("beam", [5, 12])
def test_constrained_beam_returns_distinct_real_movies(beam):
    torch.manual_seed(0)
    codes = synthetic_codes(40)
    model = GenerativeRetriever(codes, max_history=6, d_model=16, n_layers=1, n_heads=2).eval()
    history = torch.tensor([[-1, -1, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5], [-1, -1, -1, -1, -1, 9]])
    rec = model.recommend(history, k=5, beam_size=beam)
    assert rec.items.shape == (3, 5)
    for row, scores in zip(rec.items, rec.scores):
        assert (row >= 0).all() and len(set(row.tolist())) == 5  # real and distinct
        assert (scores[:-1] >= scores[1:]).all()  # best first


def test_excluded_movies_are_never_recommended_and_the_rest_keep_their_order():
    torch.manual_seed(0)
    codes = synthetic_codes(30)
    history = torch.tensor([[-1, 3, 4, 5], [0, 1, 2, 3]])
    exclude = torch.zeros(2, 30, dtype=torch.bool)
    exclude[0, [3, 4, 5]] = True
    for model in (GenerativeRetriever(codes, max_history=4, d_model=16, n_layers=1, n_heads=2).eval(),
                  SASRec(30, max_history=4, d_model=16, n_layers=1, n_heads=2).eval()):
        full = model.recommend(history, k=30, beam_size=30).items
        kept = model.recommend(history, k=10, beam_size=30, exclude=exclude).items
        assert not set(kept[0].tolist()) & {3, 4, 5}
        expect = [i for i in full[0].tolist() if i not in (3, 4, 5)][:10]
        assert kept[0].tolist() == expect  # exhaustive beam: the same ranking, minus the excluded
        assert kept[1].tolist() == full[1, :10].tolist()  # nothing excluded for the second user


def test_full_beam_is_exact_search():
    """With as many beams as movies, the beam search ranks every movie by its exact SID log-probability."""
    torch.manual_seed(1)
    codes = synthetic_codes(24)
    model = GenerativeRetriever(codes, max_history=5, d_model=16, n_layers=1, n_heads=2).eval()
    history = torch.tensor([[-1, 2, 3, 4, 5]])
    rec = model.recommend(history, k=24, beam_size=24)
    with torch.no_grad():
        state = model._hidden(history)[:, -1].expand(24, -1)
        toks = model.item_tokens  # (N, L)
        exact = torch.zeros(24)
        for level in range(model.levels):
            logp = F.log_softmax(model._level_logits(state, level), -1)
            exact += logp.gather(1, (toks[:, level] - model.offsets[level])[:, None])[:, 0]
            state = state + model.prefix(toks[:, level])
    assert sorted(rec.items[0].tolist()) == list(range(24))
    torch.testing.assert_close(rec.scores[0], exact[rec.items[0]])
    assert rec.items[0, 0] == exact.argmax()


def test_cold_search_ranks_only_the_subset_exactly_as_the_full_search_does():
    """A subset trie's full beam returns exactly the subset, in the order the exhaustive search gives it."""
    torch.manual_seed(2)
    codes = synthetic_codes(24)
    model = GenerativeRetriever(codes, max_history=5, d_model=16, n_layers=1, n_heads=2).eval()
    history = torch.tensor([[-1, 2, 3, 4, 5], [0, 1, 2, 3, 4]])
    full = model.recommend(history, k=24, beam_size=24)
    cold = np.array([1, 7, 8, 15, 23])
    trie = model.subset_trie(cold)
    assert trie.level_sizes == model.trie.level_sizes
    rec = model.recommend_from(model.last_hidden(history), k=5, beam_size=5, trie=trie)
    for row, frow, fscores, scores in zip(rec.items, full.items, full.scores, rec.scores):
        expect = [i for i in frow.tolist() if i in set(cold.tolist())]
        assert row.tolist() == expect
        torch.testing.assert_close(scores, fscores[[frow.tolist().index(i) for i in expect]])
    with pytest.raises(ValueError, match="level_sizes"):
        SidTrie(codes[:3], level_sizes=[1, 1, 1])


def test_merge_cold_bonus_zero_keeps_the_ranking_and_a_large_one_puts_cold_first():
    torch.manual_seed(3)
    codes = synthetic_codes(30)
    model = GenerativeRetriever(codes, max_history=4, d_model=16, n_layers=1, n_heads=2).eval()
    history = np.array([[-1, 3, 4, 5], [0, 1, 2, 3], [-1, -1, -1, 9]])
    is_cold = np.zeros(30, dtype=bool)
    is_cold[[2, 11, 17, 25, 29]] = True
    kw = dict(beam_size=30, batch_size=2, device=torch.device("cpu"))
    (items, scores), _ = recommend_all(model, history, k=30, **kw)  # exhaustive: the exact ranking
    main, cold = recommend_all(model, history, k=10, cold_trie=model.subset_trie(np.flatnonzero(is_cold)), **kw)
    np.testing.assert_array_equal(merge_cold(main, cold, is_cold, 0.0, 10), items[:, :10])
    first = merge_cold(main, cold, is_cold, 1e6, 10)
    for row, ranked in zip(first, items):
        assert is_cold[row[:5]].all() and not is_cold[row[5:]].any()  # every cold movie first, then warm ones
        assert row[:5].tolist() == [i for i in ranked if is_cold[i]]  # each part in the model's order
        assert row[5:].tolist() == [i for i in ranked if not is_cold[i]][:5]
        assert len(set(row.tolist())) == 10


def test_random_ids_keep_the_shape():
    codes = synthetic_codes(60)
    r = random_codes(codes, seed=3)
    assert r.shape == codes.shape and len(np.unique(r, axis=0)) == len(r)
    assert SidTrie(r).level_sizes == SidTrie(codes).level_sizes
    assert not (r == codes).all() and (random_codes(codes, 3) == r).all()


def test_sasrec_ranks_all_movies():
    model = SASRec(7, max_history=3, d_model=8, n_layers=1, n_heads=2).eval()
    rec = model.recommend(torch.tensor([[-1, 0, 1]]), k=7)
    assert sorted(rec.items[0].tolist()) == list(range(7))
    assert torch.isfinite(model.loss(torch.tensor([[-1, 0, 1, 2]])))


def test_sasrec_ranks_only_the_movies_it_knows_and_its_loss_skips_the_others():
    torch.manual_seed(0)
    model = SASRec(7, known=np.array([5, 1, 2, 1]), max_history=3, d_model=8, n_layers=1, n_heads=2).eval()
    rec = model.recommend(torch.tensor([[-1, 0, 1]]), k=5)
    assert sorted(rec.items[0, :3].tolist()) == [1, 2, 5] and rec.items[0, 3:].tolist() == [-1, -1]
    h = model.last_hidden(torch.tensor([[-1, 0, 1], [0, 1, 2]]))
    both = model.target_loss(h, torch.tensor([2, 6]))  # 6 is unknown: left out
    torch.testing.assert_close(both, model.target_loss(h[:1], torch.tensor([2])))
    assert model.target_loss(h, torch.tensor([0, 6])) == 0
    with pytest.raises(ValueError, match="known"):
        SASRec(7, known=np.array([7]))


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_on_hand_made_cases():
    topk = np.array([[5, 1, 2, 3, 4], [9, 8, 7, 6, 0], [1, 2, 3, 4, 5]])
    targets = np.array([5, 0, 42])  # rank 0, rank 4, absent
    ranks = target_ranks(topk, targets)
    assert ranks.tolist() == [0, 4, -1]
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranks, 5) == pytest.approx(2 / 3)
    assert ndcg_at_k(ranks, 5) == pytest.approx((1.0 + 1 / np.log2(6)) / 3)
    assert ndcg_at_k(ranks, 4) == pytest.approx(1 / 3)
    m = ranking_metrics(np.tile(np.arange(10), (2, 1)), np.array([2, 11]))
    assert m == pytest.approx({"recall@5": 0.5, "recall@10": 0.5, "ndcg@5": 0.25, "ndcg@10": 0.25})
    assert most_popular(np.array([0, 2, 1, 2, 0]), 3).tolist() == [[1, 3, 2]]
    seen = np.array([[3, -1], [1, 2]])  # per event, already rated
    assert most_popular(np.array([0, 2, 1, 2, 0]), 3, seen).tolist() == [[1, 2, 0], [3, 0, 4]]


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_learns_a_pattern():
    """On users who step through movie ids, the SID models and SASRec beat most-popular (~2 min on 2 cores); the
    movies' vectors are noise, so the model with content in and a dense head must learn from the IDs too."""
    ratings = synthetic_ratings(n_users=120, n_movies=30)
    movies = np.unique(ratings.movie_id)
    split = build_split(ratings, movies, min_ratings=5)
    methods = ["semantic_id", "semantic_id_tokens", "random_id", "sasrec_ce", "most_popular"]
    cfg = RetrievalConfig(seeds=[0], methods=methods, max_history=8, d_model=32, n_layers=1, n_heads=2, dropout=0.0,
                          sasrec_dropout=0.0, lr=1e-2, sasrec_lr=1e-2, max_epochs=15, patience=15, batch_size=32,
                          protocol="leave_one_out")
    noise = np.random.default_rng(0).normal(size=(len(movies), 8)).astype(np.float32)
    res = run_benchmark(split, synthetic_codes(len(movies)), cfg, item_vectors=noise)
    assert set(res) == set(methods)
    r10 = {name: event_scores(r["ranks"], "recall@10").mean() for name, r in res.items()}
    assert min(r10["semantic_id"], r10["semantic_id_tokens"], r10["sasrec_ce"]) > r10["most_popular"], r10


def write_embeddings(path, movie_ids: np.ndarray, dim: int = 8, seed: int = 0, years: dict | None = None) -> None:
    """embeddings.parquet at ``path`` and, beside it, a catalog.parquet of the same movies (``years``: id -> year;
    the others have none)."""
    x = np.random.default_rng(seed).normal(size=(len(movie_ids), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pq.write_table(pa.table({"movie_id": pa.array(movie_ids, pa.int64()),
                             "embedding": pa.array(x.tolist(), pa.list_(pa.float32()))}), path)
    write_catalog(path.parent, [{"movie_id": int(m), "title": f"Movie {m}", "year": (years or {}).get(int(m))}
                                for m in movie_ids])


@pytest.mark.parametrize("protocol", ["temporal", "leave_one_out"])
def test_cli_end_to_end_writes_report_and_section(tmp_path, capsys, protocol):
    ratings = synthetic_ratings(n_users=30)
    ratings.assign(rating=4.0).rename(columns={"user_id": "userId", "movie_id": "movieId"})[
        ["userId", "movieId", "rating", "timestamp"]].to_csv(tmp_path / "ratings.csv", index=False)
    run = tmp_path / "run"
    run.mkdir()
    movies = np.unique(ratings.movie_id)
    write_sids(run / "sids.parquet", movies[:-2], synthetic_codes(len(movies) - 2))  # two movies lack a SID
    write_embeddings(run / "embeddings.parquet", movies)
    (run / "report.md").write_text("# a hand edit that the page's one writer replaces\n")
    args = ["retrieval", "--run-dir", str(run), "--ratings", str(tmp_path / "ratings.csv"), "--seeds", "0,1",
            "--protocol", protocol, "--max-epochs", "1", "--set", "retrieval.d_model=16",
            "--set", "retrieval.max_history=6", "--set", "retrieval.bootstrap_samples=200",
            "--set", "retrieval.test_fraction=0.3", "--set", "retrieval.workers=1"]
    assert main(args) == 0
    assert main(args) == 0  # a second run replaces its section
    out = capsys.readouterr().out
    assert "Semantic IDs" in out and "Most popular" in out and "Content k-NN" in out
    report = json.loads((run / "retrieval" / "report.json").read_text())
    assert report["protocol"] == protocol and report["seeds"] == [0, 1]
    assert set(report["methods"]) == set(DEFAULT_METHODS)
    sl = report["slices"]
    assert sl["all"]["events"] == sl["warm"]["events"] + sl["cold"]["events"] > 0
    for name, r in report["methods"].items():
        assert len(r["epochs"]) == len(r["train_s"]) == (1 if name in ("most_popular", "content_knn") else 2)
        for s in ("all", "warm", "cold"):
            assert set(r[s]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10", "recall@50"}
            c = r[s]["recall@10"]
            if sl[s]["events"]:
                assert c["ci_low"] <= c["mean"] <= c["ci_high"]
    assert set(report["paired"]) == set(report["methods"]) - {"semantic_id"}
    d = report["paired"]["random_id"]["all"]["ndcg@10"]
    assert d["ci_low"] <= d["diff"] <= d["ci_high"] and 0 < d["p_value"] <= 1
    assert report["cutoff"] > 0 if protocol == "temporal" else "cutoff" not in report
    assert report["split"]["n_movies_dropped_no_sid"] == 2
    assert (run / "retrieval" / "recall_at_k.png").stat().st_size > 0
    events = pq.read_table(run / "retrieval" / "events.parquet").to_pandas()
    assert len(events) == sl["all"]["events"] and events["cold"].sum() == sl["cold"]["events"]
    hits = ((events["rank/semantic_id/seed0"] >= 0) & (events["rank/semantic_id/seed0"] < 10)).mean()
    assert hits == pytest.approx(report["methods"]["semantic_id"]["per_seed"]["0"]["recall@10"])
    md = (run / "report.md").read_text()
    assert md.count("## Generative retrieval") == 1 and "hand edit" not in md and "cold" in md
    assert main(args + ["--rescore"]) == 0  # the same intervals again from events.parquet, without training
    again = json.loads((run / "retrieval" / "report.json").read_text())
    assert again["methods"] == report["methods"] and again["paired"] == report["paired"]


def test_compare_sids_are_trained_alike_and_paired_on_the_same_events(tmp_path, capsys):
    ratings = synthetic_ratings(n_users=30)
    ratings.assign(rating=4.0).rename(columns={"user_id": "userId", "movie_id": "movieId"})[
        ["userId", "movieId", "rating", "timestamp"]].to_csv(tmp_path / "ratings.csv", index=False)
    movies = np.unique(ratings.movie_id)
    run, other = tmp_path / "run", tmp_path / "other"
    for d, seed in ((run, 0), (other, 1)):
        d.mkdir()
        write_sids(d / "sids.parquet", movies, random_codes(synthetic_codes(len(movies)), seed))
        write_embeddings(d / "embeddings.parquet", movies)
    args = ["retrieval", "--run-dir", str(run), "--ratings", str(tmp_path / "ratings.csv"), "--seeds", "0",
            "--methods", "semantic_id", "--max-epochs", "1", "--set", "retrieval.d_model=16",
            "--set", "retrieval.max_history=6", "--set", "retrieval.bootstrap_samples=200",
            "--set", "retrieval.test_fraction=0.3", "--set", f"retrieval.compare_sids=[{other}]"]
    assert main(args) == 0
    name = f"semantic_id@{other}"
    report = json.loads((run / "retrieval" / "report.json").read_text())
    assert set(report["methods"]) == {"semantic_id", name} and set(report["paired"]) == {name}
    assert report["methods"][name]["runs"][0]["epochs"] == report["methods"]["semantic_id"]["runs"][0]["epochs"]
    assert f"SIDs of {other}" in capsys.readouterr().out
    write_sids(other / "sids.parquet", movies[:-1], synthetic_codes(len(movies) - 1))
    assert main(args) == 2  # the other run lacks a movie: refused, nothing written
    assert "lacks movies" in capsys.readouterr().err


def test_the_semantic_id_model_gets_the_content_vectors_without_content_knn(tmp_path, monkeypatch):
    """Its cold movies are ranked by content similarity: whether content_knn is scored beside it changes nothing."""
    from movielens_sids.retrieval import bench

    ratings = synthetic_ratings(n_users=30)
    ratings.assign(rating=4.0).rename(columns={"user_id": "userId", "movie_id": "movieId"})[
        ["userId", "movieId", "rating", "timestamp"]].to_csv(tmp_path / "ratings.csv", index=False)
    movies = np.unique(ratings.movie_id)
    run = tmp_path / "run"
    run.mkdir()
    write_sids(run / "sids.parquet", movies, synthetic_codes(len(movies)))
    write_embeddings(run / "embeddings.parquet", movies)
    seen = []

    def capture(splits, codes, cfg, vectors=None, *args, **kwargs):
        seen.append(vectors)
        raise SystemExit(3)  # enough: the benchmark itself is tested above

    monkeypatch.setattr(bench, "run_benchmark", capture)
    for methods in ("semantic_id", "semantic_id,content_knn"):
        with pytest.raises(SystemExit):
            main(["retrieval", "--run-dir", str(run), "--ratings", str(tmp_path / "ratings.csv"), "--methods", methods,
                  "--set", "retrieval.max_history=6", "--set", "retrieval.test_fraction=0.3"])
    assert seen[0] is not None and np.array_equal(seen[0], seen[1])


def test_cli_bad_input_changes_nothing(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["retrieval", "--run-dir", str(missing)]) == 2
    assert not missing.exists()
    assert "sids.parquet not found" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    write_sids(run / "sids.parquet", np.array([1, 2]), np.array([[0, 1], [0, 1]]))
    assert main(["retrieval", "--run-dir", str(run), "--ratings", str(tmp_path / "r.csv")]) == 2
    assert "not unique" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["sids.parquet"]
    assert main(["retrieval", "--run-dir", str(run), "--methods", "semantic_id,bogus"]) == 2
    assert "methods" in capsys.readouterr().err
    assert main(["retrieval", "--run-dir", str(run), "--set", "retrieval.protocol=future"]) == 2
    assert "protocol" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["sids.parquet"]


@pytest.mark.slow
def test_workers_exit_when_the_benchmark_process_is_killed(tmp_path):
    """A worker of a parent killed by a signal (which cannot shut its pool down) exits on its own."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing as mp, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from movielens_sids.retrieval.bench import watch_parent\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=watch_parent,\n"
        "                               initargs=(0.1,))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 600)\n"
        "    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the worker outlived its parent by 30 s")


def test_a_token_only_semantic_id_model_is_labelled_as_one():
    from movielens_sids.retrieval.report import LABELS, label

    assert label("semantic_id", {"runs": [{"cold_bonus": 0.0}]}) == LABELS["semantic_id_tokens"]
    assert label("semantic_id", {"runs": [{"mix_weight": 1.0}]}) == label("semantic_id") == LABELS["semantic_id"]
    assert label("semantic_id@runs/x") == "Generative, SIDs of runs/x"
