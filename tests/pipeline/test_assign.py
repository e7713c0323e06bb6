"""assign: unique, deterministic, stable Semantic IDs (both strategies, incremental runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sids_fixtures import clustered_embeddings, greedy_codes, tiny_tokenizer, write_embeddings, write_run

from movielens_sids import artifacts
from movielens_sids.config import load_config
from movielens_sids.dedup import _serve_in_order, _smallest, candidate_paths, make_unique
from movielens_sids.errors import SidsError
from movielens_sids.io import file_hash
from movielens_sids.model import load_tokenizer, save_pretrained
from movielens_sids.settings import AssignConfig
from movielens_sids.sid import format_sid, path_ids
from movielens_sids.stages.assign import (
    assign_sids,
    assign_stage,
    exact_latents,
    exact_model,
    fast_codes,
    model_codes,
    reference_codes,
)


def read_sids(path):
    """(movie ids, tokens, metadata) of a ``sids.parquet``, through the package's one reader."""
    s = artifacts.read_sids(path.parent)
    return s.movie_ids, s.tokens, s.metadata


def _cfg(**assign):
    return load_config(None, {f"assign.{k}": v for k, v in assign.items()})


def _unique_rows(a: np.ndarray) -> bool:
    return len(np.unique(a, axis=0)) == len(a)


def _snapshot(folder):
    return {p.name: file_hash(p) for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------------------- pure


def test_greedy_codes_match_the_tokenizer():
    x, _ = clustered_embeddings(300, dim=8)
    tok = tiny_tokenizer(x, levels=3, codebook_size=8)
    tok64 = exact_model(tok)
    z = exact_latents(tok64, x)
    codes, resid = greedy_codes(z, tok64.codebooks.numpy())
    with torch.no_grad():
        assert np.array_equal(codes, tok64.quantize(tok64.encode(torch.from_numpy(x).double())).numpy())
    # resid is the squared distance to the path's quantized point
    q = tok64.codebooks[torch.arange(3), torch.from_numpy(codes)].sum(1).numpy()
    np.testing.assert_allclose(resid, ((z - q) ** 2).sum(1), rtol=1e-9, atol=1e-12)


def test_fast_codes_agree_with_the_float64_reference_except_flagged_close_calls():
    x, _ = clustered_embeddings(2000, dim=16, seed=4)
    tok = tiny_tokenizer(x, levels=3, codebook_size=16)
    tok64 = exact_model(tok)
    ref, _ = greedy_codes(exact_latents(tok64, x), tok64.codebooks.numpy())
    codes, unsure = fast_codes(tok, x, batch_size=300)
    assert 0 < unsure.mean() < 0.2  # a margin that flags some, not most
    assert np.array_equal(codes[~unsure], ref[~unsure])
    # a huge margin flags everything, a zero one nothing (exact ties aside)
    assert fast_codes(tok, x, margin=10.0)[1].all()
    assert not fast_codes(tok, x, margin=0.0)[1].any()
    # what assign_sids uses as greedy codes is exactly the float64 reference
    tokens, _, stats = assign_sids(tok, x, np.arange(len(x)), AssignConfig(strategy="suffix"))
    assert np.array_equal(tokens[:, :3], ref)


@pytest.mark.parametrize("model", [dict(balance=0.5), dict(beam_width=4), dict(balance=1.0, beam_width=3)])
def test_fast_codes_follow_the_reference_with_biases_and_beam(model):
    x, ids = clustered_embeddings(1500, dim=16, seed=5)
    tok = tiny_tokenizer(x, levels=3, codebook_size=16, **model)
    tok64 = exact_model(tok)
    z = exact_latents(tok64, x)
    ref = reference_codes(tok64, z)
    assert ref.dtype == np.int64 and ref.shape == (len(x), 3)
    if model.get("beam_width", 1) == 1:  # without a beam the reference is plain greedy in float64
        assert np.array_equal(ref, greedy_codes(z, tok64.codebooks.numpy(), tok64.code_bias.numpy())[0])
    codes, unsure = fast_codes(tok, x, batch_size=256)
    assert unsure.mean() < 0.2 and np.array_equal(codes[~unsure], ref[~unsure])
    tokens, _, _ = assign_sids(tok, x, ids, AssignConfig(strategy="suffix", batch_size=100))
    assert np.array_equal(tokens[:, :3], ref)
    sem, _, stats = assign_sids(tok, x, ids, AssignConfig())
    assert _unique_rows(sem) and stats["n_suffixed"] == 0


@pytest.mark.parametrize("beam_width", [1, 3])
def test_a_grouped_first_level_searched_by_faiss_follows_the_reference(beam_width, monkeypatch):
    import movielens_sids.stages.assign as assign_stage
    from movielens_sids.model import groups

    x, ids = clustered_embeddings(1200, dim=16, seed=6)
    tok = tiny_tokenizer(x, levels=3, codebook_size=8, group_weight=4.0, group_prototypes=8,
                         balance=1.0, beam_width=beam_width)
    assert tok.quantizer.grouped
    tok64 = exact_model(tok)
    ref = reference_codes(tok64, exact_latents(tok64, x))
    got = []
    monkeypatch.setattr(groups, "BLOCK_ELEMENTS", 1)  # the torch product in blocks of 256 rows
    # FAISS where the table is large and FAISS is this CPU's faster search; else a torch product
    for route, least, faster in (("faiss", 1, "faiss"), ("torch", 10**9, "faiss"), ("torch", 1, "torch")):
        monkeypatch.setattr(assign_stage, "FLAT_INDEX_MIN_POINTS", least)
        monkeypatch.setattr(groups, "_CPU_SEARCH", {"engine": faster})
        assert (assign_stage._code_tables(tok).first_index is not None) == (route == "faiss")
        codes, unsure = fast_codes(tok, x, batch_size=256)
        assert unsure.mean() < 0.2 and np.array_equal(codes[~unsure], ref[~unsure])
        got.append(assign_sids(tok, x, ids, AssignConfig())[0])
    assert all(np.array_equal(got[0], g) for g in got)  # the same SIDs, whichever search found the codes


def test_float32_decisions_are_flagged_when_the_gap_is_within_float32_error():
    # Two codes whose distances to a point differ by far less than float32 resolves: the fast
    # pass must flag the row, and the float64 reference picks the truly nearer code.
    from movielens_sids.model import RQVAE, RQVAEConfig

    tok = RQVAE(RQVAEConfig(input_dim=2, encoder="identity", levels=1, codebook_size=2)).eval()
    with torch.no_grad():
        tok.quantizer.codebooks[0] = torch.tensor([[1.0, 0.0], [-1.0, 1e-7]])
    x = np.array([[0.0, 1e-7]], dtype=np.float32)  # nearer to code 1 by 4e-14 in squared distance
    codes, unsure = fast_codes(tok, x)
    assert unsure.tolist() == [True]
    tokens, _, _ = assign_sids(tok, x, np.array([1]), AssignConfig(strategy="suffix"))
    assert tokens[0, 0] == 1


def test_latents_and_codes_do_not_depend_on_batch_size():
    x, ids = clustered_embeddings(333, dim=8)
    tok = tiny_tokenizer(x)
    tok64 = exact_model(tok)
    ref = exact_latents(tok64, x, batch_size=4096)
    for bs in (1, 7, 64, 100):
        assert np.array_equal(exact_latents(tok64, x, batch_size=bs), ref)
    ref_tokens, _, _ = assign_sids(tok, x, ids, AssignConfig(batch_size=4096))
    for bs in (1, 7, 100):
        assert np.array_equal(assign_sids(tok, x, ids, AssignConfig(batch_size=bs))[0], ref_tokens)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(1, 12), st.integers(0, 10_000))
def test_serve_in_order_is_the_serial_result(m, t, n_paths, seed):
    rng = np.random.default_rng(seed)
    cands = np.stack([rng.permutation(max(n_paths, t))[:t] for _ in range(m)]).astype(np.int64)
    ok = rng.random((m, t)) < 0.8
    taken, expect = set(), []
    for row in range(m):  # the definition: each row in turn takes its first allowed, untaken candidate
        got = next((int(p) for p, a in zip(cands[row], ok[row]) if a and int(p) not in taken), -1)
        taken.add(got)
        expect.append(got)
    assert _serve_in_order(cands, ok).tolist() == expect


@pytest.mark.parametrize("case", ["scan", "no scan", "crowded"])
@pytest.mark.parametrize("seed", range(4))
def test_movers_take_paths_by_the_rule_one_at_a_time(seed, case, monkeypatch):
    """free_paths (deferred acceptance over the last level, then over the deeper paths) gives what taking
    movers one at a time gives: first every mover its nearest free last-level path, in movie_id order; then
    those left their nearest free deeper path, in order; then (small spaces only) the whole space. ``crowded``:
    more movies than paths, small scan batches, block reads and candidate blocks, so that many movers scan the
    whole space and some scan again because a mover before them in their batch took the path they found."""
    from movielens_sids import dedup, path_scan

    if case == "no scan":
        monkeypatch.setattr(dedup, "EXHAUSTIVE_MAX_PATHS", 0)
    crowded = case == "crowded"
    if crowded:
        monkeypatch.setattr(path_scan, "SCAN_BATCH", 4)
        monkeypatch.setattr(path_scan, "WHOLE_RANGE", 4)
        monkeypatch.setattr(dedup, "MOVER_CHUNK", 3)  # the candidates in many blocks, on several threads
    scan, scanned = path_scan.PathSpace.first_free, []  # how many movies each whole-space scan was asked for

    def first_free(self, z, codes, taken):
        scanned.append(len(z))
        return scan(self, z, codes, taken)

    monkeypatch.setattr(path_scan.PathSpace, "first_free", first_free)
    rng = np.random.default_rng(seed)
    levels, k, beam = 3, 4 if crowded else 3, 2
    cb = rng.normal(size=(levels, k, 4)) * 0.7 ** np.arange(levels)[:, None, None]
    bias = rng.normal(size=(levels, k)) * 0.05 if crowded else None
    z = rng.normal(scale=0.3, size=(80 if crowded else 40, 4))  # 80 movies, 64 paths (or 40, 27): many collide
    codes, _ = greedy_codes(z, cb)
    paths = path_ids(codes, k)
    keepers = np.unique(paths, return_index=True)[1]
    movers = np.setdiff1d(np.arange(len(z)), keepers)  # in movie_id order (ids = rows)
    search = dedup._MoverSearch(movers, z[movers], cb, beam, bias)
    got = search.free_paths(movers, codes, np.sort(paths[keepers]))

    used = set(paths[keepers].tolist())
    expect = {}
    for j in movers:  # 1. the last level
        last = candidate_paths(z[j:j + 1], cb, codes[j:j + 1], beam, part="last", bias=bias)[0].tolist()
        expect[j] = next((p for p in last if p not in used), -1)
        used.add(expect[j])
    space, n_scans = path_scan.PathSpace(cb, bias), 0
    for j in [j for j in movers if expect[j] < 0]:  # 2. deeper, 3. the whole space
        deeper = candidate_paths(z[j:j + 1], cb, codes[j:j + 1], beam, part="deeper", bias=bias)[0].tolist()
        expect[j] = next((p for p in deeper if p not in used), -1)
        if expect[j] < 0 and case != "no scan":
            expect[j], n_scans = next((p for p in space.order(z[j], codes[j]) if p not in used), -1), n_scans + 1
        used.add(expect[j])
    assert got.tolist() == [expect[j] for j in movers]
    assert (got < 0).any() and (got >= 0).any()  # the case reaches every branch
    if crowded:
        assert n_scans >= 10 and max(scanned) > 1 and 1 in scanned  # batched scans, and scans again


def test_suffix_numbers_each_group_by_movie_id():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [3, 3]])
    ids = np.array([40, 5, 7, 20, 1])
    a = make_unique(codes, ids, strategy="suffix", codebook_size=4)
    assert a.tokens.shape == (5, 3)  # every SID gets the collision token
    assert a.tokens[:, :2].tolist() == codes.tolist()
    # group (1, 2) holds movies 40, 7, 20 -> 7 gets 0, 20 gets 1, 40 gets 2
    assert dict(zip(ids.tolist(), a.tokens[:, 2].tolist())) == {40: 2, 5: 0, 7: 0, 20: 1, 1: 0}
    assert a.suffixed.tolist() == [True, False, False, True, False]


def test_semantic_keeper_is_the_closest_then_smallest_id():
    codes = np.array([[1, 2], [1, 2], [1, 2]])
    cb = np.zeros((2, 4, 2))
    cb[1] = [[1, 0], [2, 0], [0, 0], [3, 0]]  # the path (1, 2) sits at the origin
    # Movie 9 is closest (squared distance 0.1) and keeps the path; 3 and 5 tie at 0.5 and move in id order.
    z = np.array([[0.0, 0.5 ** 0.5], [0.0, 0.1 ** 0.5], [0.0, 0.5 ** 0.5]])
    a = make_unique(codes, np.array([5, 9, 3]), strategy="semantic", codebook_size=4, latents=z, codebooks=cb,
                    beam_width=2)
    assert a.tokens.shape == (3, 2)
    assert a.tokens[1].tolist() == [1, 2]
    assert a.moved.tolist() == [True, False, True]
    # both movers keep their first code; the one processed first (id 3) gets the nearest free code
    assert a.tokens[2].tolist() == [1, 0] and a.tokens[0].tolist() == [1, 1]
    assert a.shared_prefix.tolist() == [1, 2, 1]


def test_candidates_keep_the_longest_prefix_first():
    rng = np.random.default_rng(0)
    cb = rng.normal(size=(3, 5, 4))
    z = rng.normal(size=(6, 4))
    codes, _ = greedy_codes(z, cb)
    cands = candidate_paths(z, cb, codes, beam_width=3)
    from movielens_sids.sid import path_codes

    for i in range(len(z)):
        cc = path_codes(cands[i], 5, 3)
        shared = np.cumprod(cc == codes[i], axis=1).sum(1)
        assert (np.diff(shared) <= 0).all()  # non-increasing shared prefix length
        assert shared.max() == 2 and (shared < 3).all()  # never the greedy path itself
        assert len(set(cands[i].tolist())) == len(cands[i])
        # within the last-level group, nearest first
        last = cc[shared == 2]
        q = z[i] - cb[0][codes[i, 0]] - cb[1][codes[i, 1]]
        d = ((q[None] - cb[2][last[:, 2]]) ** 2).sum(1)
        assert (np.diff(d) >= 0).all()


def test_candidates_under_full_prefixes_list_the_same_free_paths():
    """Told which (L - 1)-code prefixes have every path held, the deeper candidates list the same paths that are
    not held, in the same order (a movie whose beams all end under full prefixes gets held paths only)."""
    rng = np.random.default_rng(0)
    levels, k = 3, 5
    cb = rng.normal(size=(levels, k, 4))
    z = rng.normal(size=(200, 4))
    codes, _ = greedy_codes(z, cb)
    held = rng.random(k ** levels) < 0.5
    held.reshape(k * k, k)[rng.random(k * k) < 0.7] = True  # (K^(L-1), K): most prefixes full
    full = np.flatnonzero(held.reshape(k * k, k).all(1))
    plain = candidate_paths(z, cb, codes, 3, part="deeper")
    short = candidate_paths(z, cb, codes, 3, part="deeper", full=full)
    assert [a[~held[a]].tolist() for a in plain] == [b[~held[b]].tolist() for b in short]
    assert (short != plain).any(1).sum() >= 10  # the shortcut was taken


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_blocks_on_threads_give_the_serial_result_and_leave_torch_threads_as_they_were(threads, monkeypatch):
    import torch

    from movielens_sids import dedup

    monkeypatch.setattr(dedup, "MOVER_CHUNK", 5)
    rng = np.random.default_rng(threads)
    cb, z = rng.normal(size=(3, 6, 4)), rng.normal(size=(53, 4))
    codes, _ = greedy_codes(z, cb)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = dedup._by_blocks(lambda b: candidate_paths(z[b], cb, codes[b], 2), np.arange(len(z)))
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert got.tolist() == candidate_paths(z, cb, codes, 2).tolist()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 20), st.integers(1, 25), st.integers(0, 10_000))
def test_smallest_takes_the_lower_index_among_equal_values(m, x, n, seed):
    rng = np.random.default_rng(seed)
    d = rng.integers(0, 4, size=(m, x)).astype(float)  # many equal values, also across the cut
    d[rng.random((m, x)) < 0.2] = np.inf
    assert _smallest(d, n).tolist() == np.argsort(d, axis=1, kind="stable")[:, :min(n, x)].tolist()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 5), st.integers(1, 60), st.integers(0, 10_000),
       st.sampled_from(["semantic", "suffix"]))
def test_sids_are_unique_for_any_codes(levels, k, n, seed, strategy):
    rng = np.random.default_rng(seed)
    cb = rng.normal(size=(levels, k, 3))
    z = rng.normal(size=(n, 3)).round(1)  # rounding makes exact duplicates likely
    codes, _ = greedy_codes(z, cb)
    ids = rng.choice(10 * n, size=n, replace=False)
    a = make_unique(codes, ids, strategy=strategy, codebook_size=k, latents=z, codebooks=cb, beam_width=2)
    assert _unique_rows(a.tokens)
    assert a.tokens.shape[1] in (levels, levels + 1)
    if strategy == "semantic" and n <= k ** levels:
        assert a.tokens.shape[1] == levels  # the space allows it: no collision token at all
        assert not a.suffixed.any()


def test_semantic_falls_back_to_a_token_only_when_the_space_is_full():
    rng = np.random.default_rng(1)
    cb = rng.normal(size=(2, 2, 3))  # 4 paths for 7 movies
    z = rng.normal(size=(7, 3))
    codes, _ = greedy_codes(z, cb)
    a = make_unique(codes, np.arange(7), strategy="semantic", codebook_size=2, latents=z, codebooks=cb)
    assert a.tokens.shape == (7, 3) and _unique_rows(a.tokens)
    assert len(np.unique(path_ids(a.tokens[:, :2], 2))) == 4  # every path is used before any token
    assert a.suffixed.sum() == 3


def test_identical_embeddings_get_distinct_sids_without_a_token():
    x, ids = clustered_embeddings(200, dim=8)
    x[10:15] = x[3]  # six movies with the same embedding
    tok = tiny_tokenizer(x, levels=2, codebook_size=16)
    tokens, _, stats = assign_sids(tok, x, ids, AssignConfig())
    assert tokens.shape == (200, 2) and _unique_rows(tokens)
    assert stats["n_suffixed"] == 0 and stats["n_moved"] >= 5
    dup = tokens[[3, 10, 11, 12, 13, 14]]
    assert _unique_rows(dup)
    assert stats["moved_relative_error_after"] >= stats["moved_relative_error_before"] * 0.999


# ---------------------------------------------------------------------------------------------- stage


@pytest.mark.parametrize("strategy", ["semantic", "suffix"])
def test_stage_writes_unique_sorted_sids(tmp_path, strategy):
    x, ids = clustered_embeddings(300, dim=8)
    write_run(tmp_path, x, ids, levels=2, codebook_size=32)
    res = assign_stage(tmp_path, _cfg(strategy=strategy))
    mids, tokens, meta = read_sids(tmp_path / "sids.parquet")
    assert mids.tolist() == sorted(ids.tolist())
    assert _unique_rows(tokens)
    assert tokens.shape[1] == (3 if strategy == "suffix" else 2)
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "sids.parquet")
    import pyarrow as pa

    assert pa.types.is_list(t.schema.field("semantic_id").type)
    assert t.schema.field("semantic_id").type.value_type == pa.int32()
    assert t.column("sid").to_pylist() == [format_sid(r) for r in tokens.tolist()]
    assert meta["assign_stats"]["n_movies"] == 300 and res["strategy"] == strategy
    for key in ("n_collided_before", "n_moved", "n_suffixed", "levels", "codebook_size"):
        assert key in meta["assign_stats"]


@pytest.mark.parametrize("strategy", ["semantic", "suffix"])
def test_same_bytes_across_batch_sizes_and_save_load(tmp_path, strategy):
    x, ids = clustered_embeddings(400, dim=8)
    x[20:25] = x[7]
    write_run(tmp_path / "a", x, ids, levels=2, codebook_size=8)
    assign_stage(tmp_path / "a", _cfg(strategy=strategy, batch_size=1))
    ref = file_hash(tmp_path / "a" / "sids.parquet")
    for bs in (64, 100, 100_000):
        assign_stage(tmp_path / "a", _cfg(strategy=strategy, batch_size=bs))
        assert file_hash(tmp_path / "a" / "sids.parquet") == ref
    # a save/load round trip of the model gives the same file
    write_embeddings(tmp_path / "b", x, ids)
    save_pretrained(load_tokenizer(tmp_path / "a" / "model"), tmp_path / "b" / "model")
    assign_stage(tmp_path / "b", _cfg(strategy=strategy))
    assert file_hash(tmp_path / "b" / "sids.parquet") == ref


@pytest.mark.parametrize("strategy", ["semantic", "suffix"])
def test_incremental_keeps_old_sids_and_never_reuses_retired_ones(tmp_path, strategy):
    x, ids = clustered_embeddings(300, dim=8, seed=3)
    x[250:260] = x[0]  # new movies identical to an old one and to a movie that will disappear
    x[260:265] = x[1]
    write_run(tmp_path, x, ids, levels=2, codebook_size=32)
    tok_x, tok_ids = x[:250], ids[:250]
    write_embeddings(tmp_path, tok_x, tok_ids)
    assign_stage(tmp_path, _cfg(strategy=strategy))
    old_ids, old_tok, _ = read_sids(tmp_path / "sids.parquet")
    old = dict(zip(old_ids.tolist(), map(tuple, old_tok.tolist())))

    # movie ids[1] disappears, 50 new movies arrive
    keep = np.r_[0, 2:300]
    write_embeddings(tmp_path, x[keep], ids[keep])
    res = assign_stage(tmp_path, _cfg(strategy=strategy, incremental=True))
    assert res["disappeared"] == [int(ids[1])] and res["n_new"] == 50 and res["n_kept"] == 249
    new_ids, new_tok, meta = read_sids(tmp_path / "sids.parquet")
    new = dict(zip(new_ids.tolist(), map(tuple, new_tok.tolist())))
    assert all(new[m] == old[m] for m in old if m != ids[1])
    assert _unique_rows(new_tok)
    assert old[int(ids[1])] not in set(new.values())  # the retired SID is not reused
    assert meta["retired"] == [[int(ids[1]), list(old[int(ids[1])])]]

    # another incremental run with nothing new changes nothing; the returning movie gets its SID back
    before = file_hash(tmp_path / "sids.parquet")
    assign_stage(tmp_path, _cfg(strategy=strategy, incremental=True))
    assert file_hash(tmp_path / "sids.parquet") == before
    write_embeddings(tmp_path, x, ids)
    res = assign_stage(tmp_path, _cfg(strategy=strategy, incremental=True))
    back_ids, back_tok, meta = read_sids(tmp_path / "sids.parquet")
    back = dict(zip(back_ids.tolist(), map(tuple, back_tok.tolist())))
    assert back[int(ids[1])] == old[int(ids[1])] and res["n_restored"] == 1 and meta["retired"] == []
    assert all(back[m] == new[m] for m in new)


def test_sids_record_the_model_codes_before_dedup_and_incremental_runs_keep_them(tmp_path):
    x, ids = clustered_embeddings(300, dim=8, seed=1)
    x[20:30] = x[7]  # identical movies: dedup must move some
    tok = write_run(tmp_path, x[:250], ids[:250], levels=2, codebook_size=32)
    assign_stage(tmp_path, _cfg(strategy="semantic"))
    s = artifacts.read_sids(tmp_path, levels=2, codebook_size=32)
    expected = model_codes(tok, exact_model(tok), x[:250][np.argsort(ids[:250])])  # (N, L) in movie_id order
    assert np.array_equal(s.model_codes, expected)
    moved = (s.tokens[:, :2] != s.model_codes).any(axis=1)
    assert 0 < moved.sum() == s.metadata["assign_stats"]["n_moved"]

    # incremental, same model: kept movies keep their recorded codes, new movies get theirs
    write_embeddings(tmp_path, x, ids)
    assign_stage(tmp_path, _cfg(strategy="semantic", incremental=True))
    s2 = artifacts.read_sids(tmp_path, levels=2, codebook_size=32)
    assert np.array_equal(s2.model_codes, model_codes(tok, exact_model(tok), x[np.argsort(ids)]))

    # incremental after the model changed: kept movies' codes are unknown (null), new movies' are the new model's
    other = tiny_tokenizer(x, levels=2, codebook_size=32, seed=5)
    save_pretrained(other, tmp_path / "model")
    x3, ids3 = np.concatenate([x, x[:3] + 0.01]), np.concatenate([ids, ids.max() + 1 + np.arange(3)])
    write_embeddings(tmp_path, x3, ids3)
    assign_stage(tmp_path, _cfg(strategy="semantic", incremental=True))
    s3 = artifacts.read_sids(tmp_path, levels=2, codebook_size=32)
    new = np.isin(s3.movie_ids, ids3[300:])
    assert (s3.model_codes[~new] == -1).all()
    assert np.array_equal(s3.model_codes[new], model_codes(other, exact_model(other), x3[300:]))


def test_model_codes_that_are_not_codes_of_the_model_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, ids = clustered_embeddings(60, dim=8)
    write_run(tmp_path, x, ids, levels=2, codebook_size=8)
    assign_stage(tmp_path, _cfg())
    t = pq.read_table(tmp_path / "sids.parquet")
    meta = t.schema.metadata
    for bad in ([[1, 2, 3]] * 60, [[1, 99]] * 60):  # wrong length; a code outside 0..K-1
        col = t.schema.get_field_index("model_codes")
        broken = t.set_column(col, "model_codes", pa.array(bad, pa.list_(pa.int32())))
        pq.write_table(broken.replace_schema_metadata(meta), tmp_path / "sids.parquet")
        with pytest.raises(SidsError, match="model_codes"):
            artifacts.read_sids(tmp_path, levels=2, codebook_size=8, recorded=False)


def test_incremental_needs_existing_sids_and_the_same_strategy(tmp_path):
    x, ids = clustered_embeddings(60, dim=8)
    write_run(tmp_path, x, ids)
    snap = _snapshot(tmp_path)
    with pytest.raises(SidsError, match="without it first"):
        assign_stage(tmp_path, _cfg(incremental=True))
    assert _snapshot(tmp_path) == snap
    assign_stage(tmp_path, _cfg(strategy="semantic"))
    snap = _snapshot(tmp_path)
    with pytest.raises(SidsError, match="same"):
        assign_stage(tmp_path, _cfg(strategy="suffix", incremental=True))
    assert _snapshot(tmp_path) == snap


def test_bad_inputs_fail_with_one_line_and_change_nothing(tmp_path):
    x, ids = clustered_embeddings(60, dim=8)
    write_embeddings(tmp_path, x, ids)
    snap = _snapshot(tmp_path)
    with pytest.raises(SidsError, match="train"):  # no model
        assign_stage(tmp_path, _cfg())
    assert _snapshot(tmp_path) == snap
    write_run(tmp_path, x, ids)
    x2 = x.copy()
    x2[5, 2] = np.nan
    write_embeddings(tmp_path, x2, ids)
    snap = _snapshot(tmp_path)
    with pytest.raises(SidsError, match="NaN") as nan:
        assign_stage(tmp_path, _cfg())
    assert _snapshot(tmp_path) == snap
    write_embeddings(tmp_path, np.ones((60, 5), dtype=np.float32), ids)
    snap = _snapshot(tmp_path)
    with pytest.raises(SidsError, match="dimension 5") as dim:
        assign_stage(tmp_path, _cfg())
    assert _snapshot(tmp_path) == snap
    for e in (nan.value, dim.value):  # the messages users see are one line each
        assert "\n" not in str(e)


def test_cli_assign(tmp_path, capsys):
    from movielens_sids.cli import main

    x, ids = clustered_embeddings(80, dim=8)
    write_run(tmp_path, x, ids)
    assert main(["assign", "--run-dir", str(tmp_path), "--dedup", "suffix", "--batch-size", "16"]) == 0
    assert read_sids(tmp_path / "sids.parquet")[1].shape == (80, 3)
    assert main(["assign", "--run-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "embed" in err[-1]
    assert not (tmp_path / "nowhere").exists()


def test_incremental_refuses_to_change_the_length_of_existing_sids(tmp_path):
    x, ids = clustered_embeddings(5, dim=8, seed=2)
    write_run(tmp_path, x[:4], ids[:4], levels=1, codebook_size=4)  # 4 paths, all taken by 4 movies
    assign_stage(tmp_path, _cfg())
    assert read_sids(tmp_path / "sids.parquet")[1].shape == (4, 1)
    write_embeddings(tmp_path, x, ids)
    snap = _snapshot(tmp_path)
    with pytest.raises(SidsError, match="collision token"):
        assign_stage(tmp_path, _cfg(incremental=True))
    assert _snapshot(tmp_path) == snap
    assign_stage(tmp_path, _cfg())  # a full assign gives every movie a unique SID with a token
    tokens = read_sids(tmp_path / "sids.parquet")[1]
    assert tokens.shape == (5, 2) and _unique_rows(tokens)


def test_the_exhaustive_scan_orders_every_path_by_shared_prefix_then_distance():
    from movielens_sids.path_scan import PathSpace
    from movielens_sids.sid import path_codes

    rng = np.random.default_rng(0)
    levels, k, h = 3, 5, 4
    codebooks = rng.normal(size=(levels, k, h))
    bias = rng.normal(size=(levels, k)) * 0.1
    space = PathSpace(codebooks, bias)
    all_codes = path_codes(np.arange(k ** levels), k, levels)  # (P, L)
    points = codebooks[np.arange(levels)[None, :], all_codes].sum(1)  # (P, H), the brute force
    for _ in range(5):
        z, codes = rng.normal(size=h), rng.integers(0, k, size=levels)
        dist = np.square(points - z).sum(1) + bias[np.arange(levels)[None, :], all_codes].sum(1)
        shared = np.cumprod(all_codes == codes, axis=1).sum(1)
        want = np.lexsort((np.arange(k ** levels), dist, -shared))
        assert list(space.order(z, codes)) == want.tolist()  # every path once, in the same order
