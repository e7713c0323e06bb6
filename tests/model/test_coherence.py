"""Prefix coherence (metrics.prefix_coherence) and the grouped first level (model/groups.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from movielens_sids import metrics as M
from movielens_sids.model import RQVAE, RQVAEConfig, load_tokenizer, save_pretrained
from movielens_sids.model.groups import knn_graph, neighbour_partition, subset_links
from movielens_sids.settings import AssignConfig
from movielens_sids.stages.assign import assign_sids, fast_codes


def two_groups(n: int = 40, dim: int = 8, seed: int = 0) -> np.ndarray:
    """Two tight groups of n // 2 unit vectors each, far apart."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:2] * 10
    x = centres[np.arange(n) % 2] + 0.01 * rng.normal(size=(n, dim))
    return x.astype(np.float32)


def test_mutual_pairs_match_brute_force():
    x = np.random.default_rng(1).normal(size=(150, 6)).astype(np.float32)
    nb = M.knn(x, 10)
    want = {(min(i, j), max(i, j)) for i in range(len(x)) for j in nb[i, :5] if i in nb[j, :5]}
    got = M.mutual_pairs(nb, 5)
    assert {tuple(p) for p in got.tolist()} == want and len(got) == len(want)
    assert (got[:, 0] < got[:, 1]).all()


def test_two_tight_groups_keep_their_prefix_and_a_split_scores_lower():
    x = two_groups()
    nb = M.knn(x, 10)
    group = np.arange(len(x)) % 2
    together = np.stack([group, np.arange(len(x)) % 3], axis=1)  # first token = group
    c = M.prefix_coherence(together, nb, 5)
    assert c["first_token"] == 1.0 and c["pairs"] > 0 and c["k"] == 5
    # Random pairs share a first token about half the time (two codes of 20 movies each).
    assert c["random_first_token"] == pytest.approx(2 * 20 * 19 / (40 * 39))
    split = together.copy()
    split[:, 0] = group * 2 + (np.arange(len(x)) // 2) % 2  # each group cut in two first tokens
    s = M.prefix_coherence(split, nb, 5)
    assert s["first_token"] < 0.8 and s["first_token"] < c["first_token"]
    assert s["first_two_tokens"] <= s["first_token"]


def test_random_rate_is_the_exact_pair_probability():
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 0]])
    assert M.prefix_pair_rate(codes, 1) == pytest.approx(3 * 2 / (4 * 3))
    assert M.prefix_pair_rate(codes, 2) == pytest.approx(2 / (4 * 3))


@pytest.mark.parametrize("bf16", [False, True])
def test_knn_graph_is_exact_and_its_bf16_screen_finds_the_same_neighbours(bf16, monkeypatch):
    from movielens_sids.model import groups

    monkeypatch.setattr(groups, "native_bf16", lambda: bf16)  # bf16 products run (slowly) on any CPU
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(30, 48, generator=g)
    z = centres.repeat_interleave(20, 0) + 0.2 * torch.randn(600, 48, generator=g)  # tight groups: close calls
    got = knn_graph(z, 5, block=64)
    d = torch.cdist(z.double(), z.double())
    d.fill_diagonal_(float("inf"))
    exact = d.topk(5, largest=False).indices
    if not bf16:
        assert torch.equal(got, exact)
    else:  # the screen keeps 16 candidates by bf16 distance, ranked again in fp32
        assert (got.sort(1).values == exact.sort(1).values).all(1).float().mean() >= 0.99
        assert (got != torch.arange(600)[:, None]).all()  # never itself


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_knn_graph_breaks_ties_to_the_lower_index_whatever_the_blocks(block):
    g = torch.Generator().manual_seed(1)
    base = torch.randint(-2, 3, (40, 6), generator=g).float()  # small integers: exact distances, many ties
    z = torch.cat([base, base[:15]])  # 15 exact duplicates, far apart in the order
    got = knn_graph(z, 4, block=block)
    d = torch.cdist(z.double(), z.double()) ** 2
    d.fill_diagonal_(float("inf"))
    n = len(z)
    key = d * (4 * n) + torch.arange(n, dtype=torch.float64)[None, :]  # distance, then index
    assert torch.equal(got, key.topk(4, largest=False).indices)


def chains(n_groups: int = 60, dim: int = 6, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """Many small groups of 2-8 movies: balanced cells must cut through some of them."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, n_groups)
    x = np.repeat(rng.normal(size=(n_groups, dim)), sizes, axis=0) + noise * rng.normal(size=(sizes.sum(), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_neighbour_partition_keeps_groups_and_stays_balanced():
    x = torch.from_numpy(chains())
    nb = M.knn(x.numpy(), 10)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = neighbour_partition(x, 16, weight=0.0, generator=gen()).numpy()
    grouped = neighbour_partition(x, 16, weight=4.0, generator=gen()).numpy()
    coh = lambda c: M.prefix_coherence(c[:, None], nb, 3)["first_token"]  # noqa: E731
    assert coh(plain) < 0.95 and coh(grouped) > coh(plain) + 0.04
    assert M.perplexity(grouped[:, None], 16)[0] > 0.85 * 16


def test_the_priced_neighbours_are_those_of_graph_points():
    """Latents that blur the groups: pricing the neighbours of the content vectors (graph_points)
    keeps the content groups together better than pricing the latents' own neighbours."""
    x = torch.from_numpy(chains())
    nb = M.knn(x.numpy(), 10)
    z = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # (N, D) blurred
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    coh = lambda c: M.prefix_coherence(c[:, None], nb, 3)["first_token"]  # noqa: E731
    own = neighbour_partition(z, 16, weight=4.0, generator=gen()).numpy()
    content = neighbour_partition(z, 16, weight=4.0, graph_points=x, generator=gen()).numpy()
    assert coh(content) > coh(own) + 0.2
    assert M.perplexity(content[:, None], 16)[0] > 0.85 * 16


@pytest.mark.parametrize("shift", [0, 1])
def test_links_decide_which_neighbouring_groups_share_a_code(shift):
    """32 tight groups on a ring, 16 codes: each code takes two adjacent groups, and geometry alone cannot
    say which pairs. Links between the groups of one pairing (shift 0: (0,1), (2,3)...; shift 1: (1,2),
    (3,4)...) make that pairing win."""
    rng = np.random.default_rng(0)
    groups, size = 32, 6
    angle = 2 * np.pi * np.arange(groups) / groups
    group = np.repeat(np.arange(groups), size)
    x = np.stack([np.cos(angle), np.sin(angle)], 1)[group] + 0.02 * rng.normal(size=(groups * size, 2))
    mate = (((group - shift) ^ 1) + shift) % groups  # the partner group of each row's group
    links = torch.from_numpy(np.stack([rng.choice(np.flatnonzero(group == m), 3) for m in mate]))  # (N, 3)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kept = lambda c: float((c[:, None] == c[links]).float().mean())  # noqa: E731
    z = torch.from_numpy(x.astype(np.float32))
    plain = neighbour_partition(z, 16, weight=4.0, generator=gen())
    linked = neighbour_partition(z, 16, weight=4.0, links=links, link_weight=4.0, generator=gen())
    assert kept(linked) > kept(plain) + 0.15
    assert torch.bincount(linked, minlength=16).min() >= size  # still balanced


def test_subset_links_renumbers_and_drops_links_that_leave_the_subset():
    links = torch.tensor([[1, 2], [0, -1], [3, 0], [2, 1]])
    rows = torch.tensor([3, 2, 1])  # row 0 left out
    assert subset_links(links, rows).tolist() == [[1, 2], [0, -1], [-1, -1]]


def grouped_model(x: np.ndarray, **kw) -> RQVAE:
    torch.manual_seed(0)
    cfg = RQVAEConfig(input_dim=x.shape[1], hidden_dims=[16], levels=2, codebook_size=8, kmeans_iters=5,
                      encoder="residual", group_weight=4.0, group_prototypes=4, balance=1.0, **kw)
    tok = RQVAE(cfg).eval()
    tok.init_codebooks(torch.from_numpy(x), generator=torch.Generator().manual_seed(0))
    return tok


def test_grouped_first_level_is_the_nearest_prototypes_code_and_survives_save_load(tmp_path):
    x = chains(n_groups=24)
    tok = grouped_model(x)
    q = tok.quantizer
    assert q.grouped and q.prototypes.shape == (8 * 4, x.shape[1])
    z = tok.encode(torch.from_numpy(x))
    codes = tok.quantize(z)
    assert torch.equal(codes[:, 0], q.prototype_codes[torch.cdist(z, q.prototypes).argmin(1)])
    assert len(codes[:, 0].unique()) == 8  # every first code used
    save_pretrained(tok, tmp_path / "m")
    back = load_tokenizer(tmp_path / "m")
    assert back.quantizer.grouped and torch.equal(back.quantize(back.encode(torch.from_numpy(x))), codes)


def test_assign_uses_the_grouped_rule(tmp_path):
    x = chains(n_groups=24)
    tok = grouped_model(x, beam_width=2)
    codes, _ = fast_codes(tok, x)
    with torch.no_grad():
        want = tok.quantize(tok.encode(torch.from_numpy(x))).numpy()
    assert np.array_equal(codes, want)
    tokens, _, _ = assign_sids(tok, x, np.arange(len(x), dtype=np.int64) + 1, AssignConfig())
    moved = (tokens[:, :2] != want).any(1)
    assert (tokens[~moved, 0] == want[~moved, 0]).all() and moved.mean() < 0.5


def test_ungrouped_models_have_no_prototypes_and_reseed_skips_a_grouped_level_one():
    x = chains(n_groups=24)
    plain = RQVAE(RQVAEConfig(input_dim=x.shape[1], levels=2, codebook_size=8))
    assert not plain.quantizer.grouped and "quantizer.prototypes" not in plain.state_dict()
    tok = grouped_model(x)
    q = tok.quantizer
    q.dead_code_window = 1
    before = q.codebooks[0].clone()
    codes = torch.zeros(4, 2, dtype=torch.long)  # only code 0 used: every other code is dead
    q.reseed_dead_codes(codes, torch.randn(2, 4, x.shape[1]))
    assert torch.equal(q.codebooks[0], before)
    with pytest.raises(ValueError, match="model.group_weight"):
        RQVAEConfig(group_weight=-1)


def test_a_model_folder_written_before_groups_loads_as_ungrouped(tmp_path):
    import json

    x = chains(n_groups=24)
    torch.manual_seed(0)
    tok = RQVAE(RQVAEConfig(input_dim=x.shape[1], hidden_dims=[16], levels=2, codebook_size=8, kmeans_iters=5))
    tok.init_codebooks(torch.from_numpy(x), generator=torch.Generator().manual_seed(0))
    save_pretrained(tok, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    for key in ("group_weight", "group_prototypes"):
        del meta["config"][key]
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    back = load_tokenizer(tmp_path / "m")
    z = torch.from_numpy(x)
    assert not back.quantizer.grouped and torch.equal(back.quantize(back.encode(z)), tok.quantize(tok.encode(z)))


def test_prototype_cache_answers_exactly_as_the_full_search():
    from movielens_sids.model.groups import NearestPrototypeCache
    from movielens_sids.model.kmeans import nearest_code

    g = torch.Generator().manual_seed(0)
    points = torch.randn(600, 16, generator=g)
    points[300:310] = points[:10]  # repeated points: exact ties, lowest index wins
    z = torch.randn(400, 16, generator=g)
    z[:5] = points[:5]  # queries on a repeated point
    cache = NearestPrototypeCache(len(z), 16, candidates=8)
    for step in range(40):
        jump = 0.5 if step % 10 == 9 else 0.01  # now and then rows move far past their candidates
        z = z + jump * torch.randn(z.shape, generator=g)
        rows = torch.randperm(len(z), generator=g)[:150]
        assert torch.equal(cache.nearest(rows, z[rows], points), nearest_code(z[rows], points))
        if step == 25:  # new points: the anchors no longer apply
            points = points + 0.05 * torch.randn(points.shape, generator=g)
            cache.clear()
    assert 0.3 < cache.hits / cache.calls < 1.0  # it saves work, and it does not answer every row from the cache


def test_both_cpu_searches_give_the_same_answers_and_the_faster_is_timed_once(monkeypatch):
    from movielens_sids.model import groups
    from movielens_sids.model.kmeans import nearest_code

    g = torch.Generator().manual_seed(1)
    points = torch.randn(700, 16, generator=g)
    points[350:360] = points[:10]  # exact repeats: the lowest index wins, whichever engine ranked them
    z = torch.cat([points[:10], torch.randn(290, 16, generator=g)])
    want = nearest_code(z, points)
    for engine in ("faiss", "torch"):
        monkeypatch.setattr(groups, "_CPU_SEARCH", {"engine": engine})
        cache = groups.NearestPrototypeCache(len(z), 16, candidates=4)
        assert torch.equal(cache.nearest(torch.arange(len(z)), z, points), want)
        d, i = cache._nearest(z, points, (points * points).sum(1), 5)  # (B, 5) ascending, as fp32 computes them
        assert torch.equal(points[i[:, 0]], points[want]) and bool((d[:, 1:] >= d[:, :-1]).all())  # a repeat: either
    timed = {}
    monkeypatch.setattr(groups, "_CPU_SEARCH", timed)
    monkeypatch.setattr(groups, "CALIBRATION_ROWS", 500)
    assert groups.cpu_search_engine(points[:400]) == "faiss" and timed == {}  # too few points to time: the default
    assert torch.equal(groups.nearest_prototype(z, points), want)
    assert timed["engine"] in ("faiss", "torch")
    monkeypatch.setattr(groups, "product_nearest", lambda *a: pytest.fail("timed twice"))
    assert groups.cpu_search_engine(points) == timed["engine"]  # once per process


def test_nearest_prototype_is_nearest_code_and_the_grouped_rule_takes_it_on_cpus_without_bf16(monkeypatch):
    from movielens_sids.model import groups, rqvae
    from movielens_sids.model.kmeans import nearest_code

    g = torch.Generator().manual_seed(0)
    points = torch.randn(1200, 16, generator=g)
    points[600:650] = points[:50]  # exact repeats: the lowest index wins
    z = torch.cat([points[:50], points[:50] + 1e-7, torch.randn(500, 16, generator=g)])
    assert torch.equal(groups.nearest_prototype(z, points), nearest_code(z, points))

    q = rqvae.ResidualQuantizer(levels=2, codebook_size=8, dim=16, prototypes=len(points))
    q.prototypes.copy_(points)
    calls = []
    monkeypatch.setattr(groups, "nearest_prototype", lambda *a: calls.append(1) or nearest_code(*a))
    for bf16 in (False, True):  # with native bf16, nearest_code's own screen is the faster one
        monkeypatch.setattr(rqvae, "native_bf16", lambda: bf16)
        assert torch.equal(q.first_codes(z), q.prototype_codes[nearest_code(z, points)])
    assert len(calls) == 1
    monkeypatch.setattr(rqvae, "native_bf16", lambda: False)
    q64 = q.double()  # assign's float64 reference searches in float64, as nearest_code does
    assert torch.equal(q64.first_codes(z.double()), q64.prototype_codes[nearest_code(z.double(), points.double())])
    assert len(calls) == 1
    with torch.inference_mode():  # as `SemanticIds.encode` runs it: tensors without a version counter
        q = rqvae.ResidualQuantizer(levels=2, codebook_size=8, dim=16, prototypes=len(points))
        q.prototypes.copy_(points)
        assert torch.equal(groups.nearest_prototype(z, q.prototypes), nearest_code(z, points))


def test_prototype_cache_refuses_rows_whose_drift_could_change_the_answer():
    from movielens_sids.model.groups import NearestPrototypeCache

    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    cache = NearestPrototypeCache(1, 2, candidates=1)
    row = torch.tensor([0])
    assert cache.nearest(row, torch.tensor([[0.1, 0.0]]), points).item() == 0  # candidates: [0]; next at 0.9
    assert cache.hits == 0
    assert cache.nearest(row, torch.tensor([[0.15, 0.0]]), points).item() == 0  # 0.05 moved: still clearly 0
    assert cache.hits == 1
    assert cache.nearest(row, torch.tensor([[0.6, 0.0]]), points).item() == 1  # crossed over: searched again
    assert cache.hits == 1


@pytest.mark.parametrize("epochs", [1, 4])
def test_grouped_training_with_the_cache_equals_training_without_it(tmp_path, monkeypatch, epochs):
    from movielens_sids.stages import train
    from movielens_sids.stages.lightning_module import RQVAEModule

    x = chains(n_groups=30)
    cfg = RQVAEConfig(input_dim=x.shape[1], hidden_dims=[16], levels=2, codebook_size=8, kmeans_iters=5,
                      encoder="residual", group_weight=4.0, group_prototypes=4, balance=1.0)
    tcfg = train.TrainConfig(max_epochs=epochs, batch_size=32, lr=1e-2, progress_bar=False, accelerator="cpu")
    hits = []
    first_level = RQVAEModule.first_level

    def counting(self, idx):
        hits.append(self.first_cache)
        return first_level(self, idx)

    monkeypatch.setattr(RQVAEModule, "first_level", counting)
    cached, _ = train.fit_rqvae(x, cfg, tcfg, tmp_path / "a")
    assert hits[-1] is not None and hits[-1].hits > 0  # the cache answered some rows
    # the initialisation's search anchored the training rows: the first epoch found answers in the cache
    assert hits[-1].calls > len(x) and hits[-1].hits >= 0.5 * len(x)
    monkeypatch.setattr(RQVAEModule, "first_level", lambda self, idx: None)  # the quantizer's own full search
    plain, _ = train.fit_rqvae(x, cfg, tcfg, tmp_path / "b")
    a, b = cached.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _prefix_model(x: np.ndarray, prefix_balance: float, **kw) -> RQVAE:
    torch.manual_seed(0)
    cfg = RQVAEConfig(input_dim=x.shape[1], hidden_dims=[16], levels=3, codebook_size=8, kmeans_iters=5,
                      encoder="residual", balance=0.5, prefix_balance=prefix_balance, **kw)
    tok = RQVAE(cfg).eval()
    tok.init_codebooks(torch.from_numpy(x), generator=torch.Generator().manual_seed(0))
    return tok


def test_prefix_balance_spreads_level_two_inside_each_first_code():
    x = chains(n_groups=80, dim=4)
    with torch.no_grad():
        plain = _prefix_model(x, 0.0)
        spread = _prefix_model(x, 1.0)
        a, b = (t.quantize(t.encode(torch.from_numpy(x))).numpy() for t in (plain, spread))
    assert "quantizer.prefix_bias" not in plain.state_dict() and spread.quantizer.prefix_bias.abs().sum() > 0
    assert np.array_equal(a[:, 0], b[:, 0])  # the first token keeps its meaning

    def cell_entropy(codes):  # mean entropy of level-2 usage within each first code, in nats
        out = []
        for c in np.unique(codes[:, 0]):
            p = np.bincount(codes[codes[:, 0] == c, 1], minlength=8) / (codes[:, 0] == c).sum()
            out.append(-(p[p > 0] * np.log(p[p > 0])).sum())
        return float(np.mean(out))

    assert cell_entropy(b) > cell_entropy(a) + 0.05
    assert M.collision_stats(b)["unique_fraction"] > M.collision_stats(a)["unique_fraction"]


@pytest.mark.parametrize("beam", [1, 3])
def test_assign_and_a_reloaded_model_use_the_prefix_biases(tmp_path, beam):
    x = chains(n_groups=40, dim=4)
    tok = _prefix_model(x, 1.0, beam_width=beam)
    with torch.no_grad():
        want = tok.quantize(tok.encode(torch.from_numpy(x))).numpy()
        plain = tok.quantizer.prefix_bias.clone()
        tok.quantizer.prefix_bias.zero_()
        without = tok.quantize(tok.encode(torch.from_numpy(x))).numpy()
        tok.quantizer.prefix_bias.copy_(plain)
    assert not np.array_equal(want, without)  # the biases decide some codes here
    codes, _ = fast_codes(tok, x)
    assert np.array_equal(codes, want)
    save_pretrained(tok, tmp_path / "m")
    back = load_tokenizer(tmp_path / "m")
    assert torch.equal(back.quantizer.prefix_bias, tok.quantizer.prefix_bias)
    tokens, _, _ = assign_sids(back, x, np.arange(len(x), dtype=np.int64) + 1, AssignConfig())
    # Every path the model gives is kept by one of its movies (the others move): the same codes as quantize.
    assert {tuple(r) for r in want.tolist()} <= {tuple(r) for r in tokens[:, :3].tolist()}
