"""The generative model with content in and a dense head out: scores for movies nobody rated, the fused
ranking of warm and cold movies, and a mix chosen on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from movielens_sids.retrieval.bench import _cost_rank, run_benchmark
from movielens_sids.retrieval.config import RetrievalConfig
from movielens_sids.retrieval.content import Excluded
from movielens_sids.retrieval.fusion import (
    Candidates,
    Mix,
    best_mix,
    cold_window,
    fit_gate,
    fused_candidates,
    fused_ranking,
    gate_features,
    mixes,
)
from movielens_sids.retrieval.generative import GenerativeRetriever, age_bucket, matches
from movielens_sids.retrieval.sasrec import SASRec
from movielens_sids.retrieval.sequences import build_split


def codes_of(n: int) -> np.ndarray:
    i = np.arange(n)
    return np.stack([i // 8, (i // 2) % 4, i % 2], 1).astype(np.int64)


def clustered_vectors(n: int, cluster: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 8) unit vectors near one axis per cluster."""
    x = np.random.default_rng(seed).normal(scale=0.2, size=(n, 8)).astype(np.float32)
    x[np.arange(n), cluster] += 1.0
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def small(codes: np.ndarray, vectors: np.ndarray | None, **kw) -> GenerativeRetriever:
    torch.manual_seed(0)
    dense = dict(item_vectors=vectors, dense_weight=1.0) if vectors is not None else {}
    return GenerativeRetriever(codes, max_history=6, d_model=16, n_layers=1, n_heads=2, **{**dense, **kw})


def test_sid_logprob_is_the_score_the_beam_search_ranks_by():
    codes = codes_of(24)  # every path of the 3 x 4 x 2 code space is a movie
    model = small(codes, clustered_vectors(24, np.arange(24) % 3)).eval()
    history = torch.tensor([[-1, -1, 3, 5, 7, 2], [0, 1, 2, 3, 4, 5]])
    hidden = model.last_hidden(history)
    rec = model.recommend_from(hidden, 8, beam_size=8)
    assert torch.allclose(model.sid_logprob(hidden, rec.items), rec.scores, atol=1e-5)
    every = torch.arange(24).expand(2, -1)
    assert torch.allclose(model.sid_logprob(hidden, every).exp().sum(1), torch.ones(2), atol=1e-4)  # a distribution
    assert torch.isinf(model.sid_logprob(hidden, torch.tensor([[-1, 0], [2, -1]]))).sum() == 2


def test_the_state_and_context_after_the_latest_movie_are_those_of_the_full_pass_at_its_position():
    years = np.where(np.arange(24) % 5 == 0, np.nan, 1990.0 + np.arange(24))
    torch.manual_seed(0)
    model = GenerativeRetriever(codes_of(24), item_vectors=clustered_vectors(24, np.arange(24) % 3), dense_weight=1.0,
                                item_years=years, dense_window=3, max_history=6, d_model=16, n_layers=2).eval()
    sasrec = SASRec(24, max_history=6, d_model=16, n_layers=2, n_heads=2).eval()
    history = torch.tensor([[-1, -1, 3, 5, 7, 2], [0, 1, 2, 3, 4, 5], [-1, -1, -1, -1, -1, 9],
                            [-1, -1, -1, -1, -1, -1]])  # short, full, one movie, none
    times = torch.full((4,), 1.2e9)
    with torch.no_grad():
        for m in (model, sasrec):
            assert torch.allclose(m.last_hidden(history), m._hidden(history)[:, -1], atol=1e-5)
        full = model._context(model._profile(history)[:, -1], times)
        assert torch.allclose(model.last_context(history, times), full, atol=1e-6)
    assert torch.allclose(full[2, :8], model.item_keys[9]) and bool((full[3, :8] == 0).all())


def test_the_dense_loss_samples_negatives_in_training_and_is_the_full_softmax_otherwise():
    vectors = clustered_vectors(30, np.arange(30) % 4)
    model = small(codes_of(30), vectors, dense_negatives=5)
    history = torch.tensor([[-1, 3, 5, 7, 2, 9]] * 7)
    state, context, target = torch.randn(7, 16), model.last_context(history), torch.arange(7)
    model.eval()
    full = torch.nn.functional.cross_entropy(model.dense_scores(state, context), target)
    assert torch.allclose(model.dense_loss(state, context, target), full, atol=1e-5)
    model.train()
    torch.manual_seed(1)
    sampled = model.dense_loss(state, context, target)
    assert torch.isfinite(sampled) and not torch.allclose(sampled, full)  # 1 target + 5 negatives, not 30
    with pytest.raises(ValueError, match="dense_weight"):
        GenerativeRetriever(codes_of(30), dense_weight=1.0)  # a dense head needs vectors


def test_the_sampled_dense_loss_is_the_cross_entropy_of_the_target_against_the_draws_that_are_not_it():
    years = np.linspace(1960.0, 2015.0, 30)
    model = small(codes_of(30), clustered_vectors(30, np.arange(30) % 4), dense_negatives=25, item_years=years)
    torch.nn.init.normal_(model.age_bias.weight)  # a bias per age range, so that it weighs in
    history = torch.tensor([[-1, 3, 5, 7, 2, 9]] * 6)
    times = torch.tensor([1.0e9, 1.1e9, 1.2e9, 1.3e9, 1.4e9, 1.5e9])
    state, context, target = torch.randn(6, 16), model.last_context(history, times), torch.tensor([0, 1, 1, 4, 9, 29])
    model.train()
    torch.manual_seed(3)
    got = model.dense_loss(state, context, target)
    torch.manual_seed(3)
    neg = model.dense_pool[torch.randint(30, (25,))]  # the same draws: 25 of the 30 movies, with repeats
    logits = model.dense_scores(state, context)  # (6, 30) every movie's logit, the age bias included
    drawn = logits[:, neg].masked_fill(neg[None, :] == target[:, None], -torch.inf)  # (6, 25)
    expected = torch.nn.functional.cross_entropy(torch.cat([logits.gather(1, target[:, None]), drawn], 1),
                                                 torch.zeros(6, dtype=torch.long))
    assert (neg[None, :] == target[:, None]).sum(1).max() >= 2  # a target drawn twice: both cells masked
    assert torch.allclose(got, expected, atol=1e-5)


def test_matches_finds_every_cell_where_an_item_is_the_row_target():
    rng = np.random.default_rng(0)
    target, items = torch.from_numpy(rng.integers(0, 12, 50)), torch.from_numpy(rng.integers(0, 12, 80))
    mask = torch.zeros(50, 80, dtype=torch.bool)
    mask[matches(target, items)] = True
    assert torch.equal(mask, target[:, None] == items[None, :])
    rows, cols = matches(torch.tensor([5]), torch.tensor([1, 2]))  # no match
    assert len(rows) == len(cols) == 0


def test_the_dense_head_starts_as_the_content_profile_of_the_latest_movies():
    vectors = clustered_vectors(30, np.arange(30) % 4)
    model = small(codes_of(30), vectors, dense_window=2).eval()
    history = torch.tensor([[-1, -1, -1, 4, 11, 6], [-1, -1, -1, -1, -1, 8]])
    scores = model.dense_scores(model.last_hidden(history), model.last_context(history))  # (2, N)
    x = torch.from_numpy(vectors)
    for row, latest in zip(scores, ([11, 6], [8])):
        profile = torch.nn.functional.normalize(x[latest].mean(0), dim=0)
        expected = (x @ profile) * model.logit_scale.exp()
        assert torch.allclose(row, expected, atol=1e-5)  # the correction starts at zero


def test_a_movie_only_in_test_histories_and_targets_gets_a_score_and_can_be_ranked_first():
    # Two content clusters of warm movies; movie 20 is nobody's training movie, its content is cluster 0's.
    n, cold = 21, 20
    cluster = np.r_[np.arange(20) % 2, 0]
    vectors = clustered_vectors(n, cluster)
    rng = np.random.default_rng(0)
    sequences = [rng.permutation(np.flatnonzero(cluster[:20] == c))[:6] for c in rng.integers(0, 2, 300)]
    windows = torch.from_numpy(np.stack([np.r_[-1, s] for s in sequences]))  # (300, M+1)
    model = small(codes_of(n), vectors)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        model.loss(windows).backward()
        opt.step()
    zero = np.flatnonzero(cluster[:20] == 0)  # the user rated all ten, the latest five and then movie 20
    history = np.stack([np.r_[zero[5:], cold], np.r_[zero[4:8], cold, zero[9]]])  # (2, M): movie 20 in each history
    cpu = torch.device("cpu")
    c = fused_candidates(model, history, beam_size=4, dense_k=4, batch_size=8, device=cpu, cold=np.arange(n) == cold,
                         content=vectors, seen=Excluded(n, np.stack([np.r_[zero, cold]] * 2)))
    assert not (c.items == cold).any()  # seen: never a candidate
    c = fused_candidates(model, history, beam_size=4, dense_k=4, batch_size=8, device=cpu, cold=np.arange(n) == cold,
                         content=vectors, seen=Excluded(n, np.stack([zero] * 2)))  # as if movie 20 came next
    slot = c.items == cold
    assert slot.any(1).all()
    assert np.isfinite(c.gen[slot]).all() and np.isfinite(c.dense[slot]).all() and np.isfinite(c.content[slot]).all()
    is_cold = np.arange(n) == cold
    sure = np.full(2, 8.0)  # the gate's logit: the next movie is all but surely cold
    assert (fused_ranking(c, is_cold, Mix(1.0, 10.0, 0.0), 5, sure)[:, 0] == cold).all()  # ranked first
    assert not (fused_ranking(c, is_cold, Mix(1.0, 10.0, 0.0), 5, -sure)[:, :4] == cold).any()  # surely warm
    assert not (fused_ranking(c, is_cold, Mix(64.0), 5) == cold).any()  # the gate off: no cold movie


def test_the_mixture_ranks_warm_movies_by_the_mix_cold_ones_by_content_and_pads():
    c = Candidates(items=np.array([[3, 1, -1, 2, 0]]), gen=np.array([[-1.0, -2.0, -np.inf, -9.0, -5.0]]),
                   dense=np.array([[0.0, 0.5, -np.inf, 3.0, 1.0]]), content=np.array([[0.1, 0.2, -np.inf, 0.9, 0.3]]))
    is_cold = np.array([True, False, True, False])  # movies 0 and 2 have no training interaction
    assert fused_ranking(c, is_cold, Mix(0.0), 5).tolist() == [[3, 1, -1, -1, -1]]  # the gate off: warm only
    assert fused_ranking(c, is_cold, Mix(64.0), 2).tolist() == [[1, 3]]  # by the dense head
    # g = 0.5: warm 0.5 x (0.73, 0.27), cold 0.5 x softmax(9, 3) = 0.5 x (0.998, 0.002)
    assert fused_ranking(c, is_cold, Mix(0.0, 10.0, 0.0), 5, np.zeros(1)).tolist() == [[2, 3, 1, 0, -1]]
    assert fused_ranking(c, is_cold, Mix(0.0, 10.0, 0.0), 4, np.full(1, -10.0)).tolist() == [[3, 1, 2, 0]]
    assert fused_ranking(c, is_cold, Mix(0.0, 10.0, 2.0), 4, np.full(1, -10.0)).tolist() == [[3, 1, 2, 0]]
    # beta: warm 0.5 x (0.73, 0.27) against cold 0.5 x (0.65, 0.35); a flat warm softmax, 0.5 x (0.50, 0.50)
    assert fused_ranking(c, is_cold, Mix(0.0, 1.0, 0.0, 1.0), 4, np.zeros(1)).tolist() == [[3, 2, 0, 1]]
    assert fused_ranking(c, is_cold, Mix(0.0, 1.0, 0.0, 0.01), 4, np.zeros(1)).tolist() == [[2, 3, 1, 0]]
    only_cold = c._replace(items=np.array([[0, 2, -1, -1, -1]]), content=np.array([[0.3, 0.9] + [-np.inf] * 3]))
    assert fused_ranking(only_cold, is_cold, Mix(1.0, 5.0, 0.0), 3, np.zeros(1)).tolist() == [[2, 0, -1]]


def test_the_mix_is_the_best_on_validation_among_those_that_reach_the_cold_floor():
    items = np.tile(np.arange(12), (3, 1))  # movies 0..10 warm, 11 cold; the same candidates for three events
    gen = np.tile(np.r_[-np.arange(11.0), -1.0], (3, 1))
    c = Candidates(items=items, gen=gen, dense=np.zeros((3, 12)), content=np.full((3, 12), 0.9))
    is_cold, target = np.arange(12) == 11, np.array([9, 11, 9])  # the 10th warm movie twice, the cold one once
    options, logit = [Mix(0.0), Mix(0.0, 10.0, 0.0)], np.full(3, 5.0)
    mix, curve = best_mix(c, target, is_cold, options, logit)
    assert mix == Mix(0.0) and curve == {Mix(0.0): (2 / 3, 0.0), Mix(0.0, 10.0, 0.0): (1 / 3, 1.0)}
    assert best_mix(c, target, is_cold, options, logit, cold_floor=0.5)[0] == Mix(0.0, 10.0, 0.0)
    assert best_mix(c, target, is_cold, options[:1], logit, cold_floor=0.5)[0] == Mix(0.0)  # none reaches it


def test_the_mix_choice_counts_the_hits_of_the_ranking_the_events_get_ties_included():
    rng = np.random.default_rng(0)
    e, n_cand, n_items = 300, 24, 60
    items = np.stack([rng.permutation(n_items)[:n_cand] for _ in range(e)])  # distinct per row
    items[rng.random((e, n_cand)) < 0.1] = -1  # dead beams
    gen, dense, content = np.round(rng.normal(size=(3, e, n_cand)), 1)  # coarse values: many exact ties
    gen[rng.random((e, n_cand)) < 0.05] = -np.inf
    c = Candidates(items=items, gen=np.where(items >= 0, gen, -np.inf), dense=dense, content=content)
    is_cold = rng.random(n_items) < 0.3
    target = np.where(rng.random(e) < 0.8, items[np.arange(e), rng.integers(0, n_cand, e)], rng.integers(0, n_items, e))
    target = np.where(target >= 0, target, 0)
    logit = rng.normal(size=e)
    options = [Mix(0.0), Mix(1.0), Mix(0.0, 10.0, 0.0), Mix(4.0, 5.0, -1.0, 0.5), Mix(1.0, 0.0, 2.0, 0.25)]
    _, curve = best_mix(c, target, is_cold, options, logit)
    cold = is_cold[target]
    for m in options:
        hit = (fused_ranking(c, is_cold, m, 10, logit) == target[:, None]).any(1)
        assert curve[m] == (hit.mean(), hit[cold].mean())
    flat = c._replace(gen=np.where(items >= 0, 0.0, -np.inf), dense=np.zeros((e, n_cand)),
                      content=np.zeros((e, n_cand)))
    ranked = fused_ranking(flat, is_cold, Mix(0.0, 1.0, 0.0), 10, logit)  # every score tied within its kind
    for row, got in zip(items, ranked):
        column = {int(m): j for j, m in enumerate(row) if m >= 0}
        for kind in (True, False):  # ties go to the earlier candidate
            order = [column[int(m)] for m in got if m >= 0 and is_cold[m] == kind]
            assert order == sorted(order)


def test_the_gate_reads_the_cold_movies_of_the_history_and_learns_from_validation():
    is_cold = np.zeros(10, dtype=bool)
    is_cold[[2, 7]] = True
    features = gate_features(np.array([[-1, 5, 2, 7], [1, 2, 3, 4], [-1, -1, -1, -1]]), is_cold)
    assert np.allclose(features, [[1, 2 / 3, 2 / 3], [0, 1 / 3, 1 / 4], [0, 0, 0]])
    assert fit_gate(features, np.zeros(3, dtype=bool)) is None  # nothing to learn from warm targets only
    rng = np.random.default_rng(0)
    last_cold = rng.random(400) < 0.3
    f = np.stack([last_cold, last_cold * rng.random(400), rng.random(400)], 1)
    gate = fit_gate(f, last_cold & (rng.random(400) < 0.8))  # a cold target follows a cold movie
    assert gate.shape == (4,) and gate[0] > 1.0
    options = mixes([1.0, 0.0], [10.0], [0.0, -1.0], [0.5], gate_on=True)
    assert options[0] == Mix(0.0) and options[1] == Mix(0.0, 10.0, -1.0, 0.5) and len(options) == 6
    assert mixes([1.0], [10.0], [0.0], [1.0], gate_on=False) == [Mix(1.0)]


def test_the_cold_profile_window_is_the_one_that_ranks_cold_targets_best():
    cluster = np.r_[[0] * 6, [1] * 6, [0] * 11, [1] * 11]  # 12 warm movies, then 11 cold ones per cluster
    vectors = clustered_vectors(len(cluster), cluster)
    vectors[12], vectors[23] = vectors[0], vectors[6]  # each target is a cold twin of a warm movie
    is_cold = np.arange(len(cluster)) >= 12
    history = np.array([[6, 7, 0], [0, 1, 6]])  # the latest movie's cluster differs from the two before
    target = np.array([12, 23])  # the twin of the latest movie
    window, curve, plain = cold_window(vectors, history, target, is_cold, [3, 1])
    assert window == 1 and curve == {1: 1.0, 3: 0.0} and plain[1] == 1.0  # the twin is nearest among every movie
    assert cold_window(vectors, history, np.array([0, 1]), is_cold, [3, 1]) == (1, {}, {})  # no cold target


def walking_ratings(n_users: int = 30, n_movies: int = 24, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        m, t = int(rng.integers(n_movies)), 1_000_000_000 + int(rng.integers(0, 3000))
        for m2 in sorted({(m + 2 * k) % n_movies for k in range(int(rng.integers(5, 11)))}):
            t += 60
            rows.append((u, m2 + 1, t))
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "timestamp"])


def test_with_only_content_embeddings_the_model_trains_and_ranks():
    ratings = walking_ratings()
    movies = np.arange(1, 27)  # 25 and 26: nobody rates them
    split = build_split(ratings, movies, protocol="temporal", test_fraction=0.25, valid_fraction=0.15)
    content = clustered_vectors(len(movies), np.arange(len(movies)) % 3)
    cfg = RetrievalConfig(protocol="temporal", seeds=[0], methods=["semantic_id"], max_history=6, d_model=16,
                          n_layers=1, n_heads=2, max_epochs=3, patience=1, batch_size=16, workers=1, threads=1,
                          valid_beam_size=10, mix_weights=[0.0, 1.0, 64.0], gate_shifts=[0.0, 2.0],
                          content_windows=[1, 3])
    res = run_benchmark(split, codes_of(len(movies)), cfg, vectors=content)  # content is all it reads
    run = res["semantic_id"]["runs"][0]
    assert res["semantic_id"]["ranks"].shape == (1, len(split.test))
    assert (res["semantic_id"]["ranks"] >= 0).any()
    assert run["mix_weight"] in cfg.mix_weights and run["gate_shift"] in [None, *cfg.gate_shifts]
    assert len(run["valid_recall@10_by_mix"]) == len(cfg.mix_weights) and run["cold_window"] in cfg.content_windows
    assert set(run["valid_recall@10_by_gate_shift"]) <= {"off", "0", "2"}
    with pytest.raises(ValueError, match="item vectors"):
        run_benchmark(split, codes_of(len(movies)), cfg)  # nothing to read


def test_age_ranges_of_a_movie_at_an_event():
    june_2018 = torch.tensor(1_527_811_200)  # 2018-06-01 UTC
    years = torch.tensor([2018.0, 2017.0, 2019.0, 1990.0, float("nan"), 2008.0])
    assert age_bucket(june_2018, years).tolist() == [1, 2, 0, 7, 8, 6]  # 0 y, 1 y, not yet, 28 y, unknown, 10 y


def test_with_movie_years_the_dense_head_reads_the_events_times():
    ratings = walking_ratings()
    movies = np.arange(1, 27)
    split = build_split(ratings, movies, protocol="temporal", test_fraction=0.25, valid_fraction=0.15)
    content = clustered_vectors(len(movies), np.arange(len(movies)) % 3)
    years = np.where(np.arange(len(movies)) % 5 == 0, np.nan, 1990.0 + np.arange(len(movies)))
    cfg = RetrievalConfig(protocol="temporal", seeds=[0], methods=["semantic_id"], max_history=6, d_model=16,
                          n_layers=1, n_heads=2, max_epochs=2, patience=1, batch_size=16, workers=1, threads=1,
                          valid_beam_size=10, mix_weights=[1.0])
    res = run_benchmark(split, codes_of(len(movies)), cfg, vectors=content, item_years=years)
    assert (res["semantic_id"]["ranks"] >= 0).any()
    model = small(codes_of(len(movies)), content, item_years=years).eval()
    assert model.age_bias is not None
    with pytest.raises(ValueError, match="time"):
        model.last_context(torch.tensor([[-1, 0, 1, 2, 3, 4]]))  # its dense head needs the event's time


def test_the_age_bias_looked_up_per_year_is_the_bias_of_each_event():
    years = np.array([2001.0, 1999.0, np.nan, 2010.0, 1980.0])
    model = small(codes_of(5), clustered_vectors(5, np.arange(5) % 2), item_years=years)
    torch.nn.init.normal_(model.age_bias.weight)
    times = torch.tensor([1_000_000_000, 1_300_000_000, 1_000_000_500, 1_600_000_000], dtype=torch.float32)
    context = torch.cat([torch.zeros(4, 8), times[:, None]], 1)
    got = model._age_logits(context, torch.arange(5))  # (4, 5) via the distinct years
    expected = model.age_bias(age_bucket(times[:, None], torch.from_numpy(years)[None, :])).squeeze(-1)
    assert torch.equal(got, expected)
    per_row = torch.tensor([[0], [1], [2], [3]])  # (n, 1): one movie per event
    assert torch.equal(model._age_logits(context, per_row), expected.gather(1, per_row))


def test_the_models_that_read_movie_vectors_are_queued_first_and_token_only_ones_last():
    cfg = RetrievalConfig()
    queue = sorted(["semantic_id_tokens", "sasrec_ce", "joint", "semantic_id", "random_id", "semantic_id@other"],
                   key=lambda m: _cost_rank(m, cfg))
    assert queue == ["semantic_id", "random_id", "semantic_id@other", "sasrec_ce", "semantic_id_tokens", "joint"]
    no_vectors = RetrievalConfig(content_input=False, dense_weight=0.0)
    assert _cost_rank("semantic_id", no_vectors) == _cost_rank("semantic_id_tokens", no_vectors) == 2
