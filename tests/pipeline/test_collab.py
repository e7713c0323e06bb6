"""Behaviour-aware SIDs: collaborative vectors from training interactions only, the co-watch term, co_watch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from movielens_fixtures import write_movielens
from sids_fixtures import write_catalog, write_embeddings

from movielens_sids import artifacts, collab, metrics, pipeline
from movielens_sids.config import load_config
from movielens_sids.errors import SidsError
from movielens_sids.retrieval.sequences import split_of
from movielens_sids.retrieval.stage import check_collab_split

N_MOVIES, N_USERS, D = 60, 80, 8
COLD = (59, 60)  # movies in the catalog that nobody ever rates


def ratings_rows(seed: int = 0, scramble_after: int | None = None) -> list[tuple[int, int, float, int]]:
    """Users who watch within one of 4 taste groups, over time; with ``scramble_after``, every rating at or
    after that time is of another (random) movie: the same times, different test events."""
    rng = np.random.default_rng(seed)
    other = np.random.default_rng(seed + 99)
    rows = []
    for u in range(1, N_USERS + 1):
        group = u % 4
        t = int(rng.integers(0, 500))
        mine = rng.choice(np.arange(group, N_MOVIES - len(COLD), 4), size=10, replace=False) + 1
        free = [m for m in range(1, N_MOVIES - len(COLD) + 1) if m not in set(mine.tolist())]
        for movie in mine.tolist():
            t += int(rng.integers(1, 60))
            if scramble_after is not None and t >= scramble_after:  # another movie this user never rates
                movie = free.pop(int(other.integers(len(free))))
            rows.append((u, movie, 4.0, t))
    return rows


def make_run(tmp_path, name: str, rows, **sets):
    """A run folder (catalog + random content vectors) whose data source is a MovieLens folder with ``rows``."""
    src = write_movielens(tmp_path / f"{name}-ml", movies=[(i, f"Movie {i} (2000)", "Drama")
                                                           for i in range(1, N_MOVIES + 1)], ratings=rows)
    run = tmp_path / name
    run.mkdir()
    write_catalog(run, [{"movie_id": i, "title": f"Movie {i}", "year": 2000} for i in range(1, N_MOVIES + 1)])
    x = np.random.default_rng(1).normal(size=(N_MOVIES, D)).astype(np.float32)
    write_embeddings(run, x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(1, N_MOVIES + 1))
    cfg = load_config(None, {
        "data.source": str(src), "collab.method": "als", "collab.factors": 8, "collab.cowatch_pairs": 50,
        "retrieval.protocol": "temporal", "retrieval.test_fraction": 0.2, "retrieval.valid_fraction": 0.1,
        "model.encoder": "residual", "model.levels": 2, "model.codebook_size": 4, "model.hidden_dims": [16],
        "model.kmeans_iters": 5, "train.batch_size": 16, "train.max_epochs": 2, "train.lr": 1e-2,
        "train.collab_weight": 1.0, "train.progress_bar": False, "train.accelerator": "cpu", "train.devices": "1",
        **sets})
    return run, cfg


def test_top_cowatch_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((300, 700)) < 0.05).astype(np.float32))
    a, b, users = collab.top_cowatch_pairs(x, 40)
    co = (x.T @ x).toarray()
    np.fill_diagonal(co, 0)
    iu = np.triu_indices(700, 1)
    best = np.sort(co[iu])[::-1][:40]
    assert users.tolist() == best.astype(int).tolist()  # the same counts as the exhaustive search
    assert (co[a, b] == users).all() and (a < b).all()
    assert len(set(zip(a.tolist(), b.tolist()))) == 40


def test_co_watch_counts_shared_prefixes_against_random_pairs():
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 25)
    a, b = np.array([0, 2, 1]), np.array([1, 6, 7])  # share first token, share both, share neither... row 7 = [1, 1]
    cw = metrics.co_watch(codes, a, b, random_pairs=20_000)
    assert cw["pairs"] == 3
    assert cw["first_token"] == pytest.approx(2 / 3) and cw["first_two_tokens"] == pytest.approx(1 / 3)
    assert cw["random_first_token"] == pytest.approx(0.5, abs=0.02)  # two first tokens, evenly used
    assert cw["first_token_lift"] == pytest.approx(cw["first_token"] / cw["random_first_token"])


def test_collab_vectors_never_see_validation_or_test_interactions(tmp_path):
    run, cfg = make_run(tmp_path, "a", ratings_rows())
    pipeline.execute("collab", cfg, run)
    split = split_of(ratings_of(cfg), np.arange(1, N_MOVIES + 1), cfg.retrieval)
    valid_start = split.info["valid_start"]
    # The same training interactions, every validation and test event replaced: identical vectors and pairs.
    run2, cfg2 = make_run(tmp_path, "b", ratings_rows(scramble_after=valid_start))
    split2 = split_of(ratings_of(cfg2), np.arange(1, N_MOVIES + 1), cfg2.retrieval)
    assert split2.info["valid_start"] == valid_start and split2.info["cutoff"] == split.info["cutoff"]
    assert not np.array_equal(split.test.target, split2.test.target)  # the future really differs
    pipeline.execute("collab", cfg2, run2)
    for name in ("collab.parquet", "cowatch.parquet"):
        assert (run / name).read_bytes() == (run2 / name).read_bytes()
    c = artifacts.read_collab(run)
    assert c.counts.sum() == split.info["n_train_interactions"]  # exactly the training interactions
    check_collab_split(run, split)  # the benchmark's own split: accepted
    other = split_of(ratings_of(cfg), np.arange(1, N_MOVIES + 1),
                     load_config(None, {"retrieval.protocol": "leave_one_out"}).retrieval)
    with pytest.raises(SidsError, match="another split"):
        check_collab_split(run, other)  # IDs built on another split's training data would leak: refused


def ratings_of(cfg):
    from movielens_sids.data.catalog import read_interactions

    return read_interactions(cfg.data)


def test_a_movie_without_ratings_still_gets_a_sid(tmp_path):
    run, cfg = make_run(tmp_path, "run", ratings_rows())
    for stage in ("collab", "train", "assign"):
        pipeline.execute(stage, cfg, run)
    c = artifacts.read_collab(run)
    cold = np.isin(c.movie_ids, COLD)
    assert (c.counts[cold] == 0).all() and not c.vectors[cold].any()  # no rating: no collaborative vector
    sids = artifacts.read_sids(run)
    assert sids.movie_ids.tolist() == list(range(1, N_MOVIES + 1))  # every movie, the cold ones included
    assert len(set(sids.strings)) == N_MOVIES
    summary = artifacts.read_record(run, "train")["result"]
    assert summary["tokenizer"] == "rqvae"
    trained = json.loads((run / "model" / "train_metrics.json").read_text())
    assert trained["collab"]["movies_with_partners"] == N_MOVIES - len(COLD)


def test_a_dataset_without_ratings_behaves_exactly_as_content_only(tmp_path):
    run, cfg = make_run(tmp_path, "noratings", None, **{"model.collab_input": 1.0})  # movies.csv alone
    (run / "collab.parquet").write_bytes(b"stale")  # left by an earlier setting: must not be read
    result = pipeline.execute("collab", cfg, run)
    assert result["reason"] == "the dataset has no ratings" and not (run / "collab.parquet").exists()
    pipeline.execute("train", cfg, run)
    content, cfg0 = make_run(tmp_path, "content", None, **{"collab.method": "none"})
    pipeline.execute("collab", cfg0, content)
    pipeline.execute("train", cfg0, content)
    a, b = (artifacts.read_model(r).state_dict() for r in (run, content))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the very same model
    assert artifacts.read_model(run).config.collab_dim == 0  # and it reads the embeddings alone


# ---------------------------------------------------------------------------------------------------
# The fused input: content and collaborative vectors side by side (model.collab_input)


def _fuse_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(40, 6)).astype(np.float32)
    vectors = rng.normal(size=(40, 3)).astype(np.float32)
    counts = rng.integers(0, 30, size=40)
    counts[:5] = 0
    vectors[counts == 0] = 0.0  # as ALS leaves a movie nobody rated
    return content, vectors, counts


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_fused_input_shrinks_each_collaborative_vector_towards_its_content_neighbours():
    content, vectors, counts = _fuse_case()
    x = collab.fused_input(content, vectors, counts, weight=2.0, shrinkage=5.0)  # (N, D + F)
    assert x.shape == (40, 9) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # The content part keeps the content's direction; the parts' lengths are 1 : weight.
    assert np.allclose(_unit(x[:, :6]), _unit(content), atol=1e-5)
    assert np.allclose(np.linalg.norm(x[:, 6:], axis=1) / np.linalg.norm(x[:, :6], axis=1), 2.0, atol=1e-4)
    warm = np.flatnonzero(counts > 0)
    cos = _unit(content) @ _unit(content)[warm].T  # (N, M)
    for i in range(40):
        if counts[i] > 0:
            cos[i, np.flatnonzero(warm == i)] = -np.inf  # never its own neighbour
        near = warm[np.argsort(-cos[i])[:collab.FUSE_NEIGHBORS]]
        imputed = _unit(_unit(vectors[near]).mean(0))
        share = counts[i] / (counts[i] + 5.0)
        own = _unit(vectors[i]) if counts[i] > 0 else 0.0
        assert np.allclose(_unit(x[i, 6:]), _unit(share * own + (1 - share) * imputed), atol=1e-5), i
    # No shrinkage: a rated movie's collaborative part is its own vector, whatever its neighbours.
    x0 = collab.fused_input(content, vectors, counts, weight=1.0, shrinkage=0.0)
    assert np.allclose(_unit(x0[warm, 6:]), _unit(vectors[warm]), atol=1e-5)


def test_a_new_movie_gets_the_input_of_a_catalog_movie_nobody_rated():
    content, vectors, counts = _fuse_case(1)
    x = collab.fused_input(content, vectors, counts, weight=1.5, shrinkage=5.0)
    cold = np.flatnonzero(counts == 0)
    new = collab.new_movie_input(content[cold], content, vectors, counts, weight=1.5)
    assert np.allclose(new, x[cold], atol=1e-6)


def test_a_tokenizer_of_both_signals_gives_every_movie_a_sid_and_reads_the_same_input_everywhere(tmp_path):
    from movielens_sids import verify

    run, cfg = make_run(tmp_path, "fused", ratings_rows(), **{"model.collab_input": 1.0})
    for stage in ("collab", "train", "assign", "evaluate"):
        pipeline.execute(stage, cfg, run)
    tok = artifacts.read_model(run)
    assert tok.config.collab_dim == 8 and tok.config.input_dim == D + 8  # collab.factors 8
    sids = artifacts.read_sids(run)
    assert sids.movie_ids.tolist() == list(range(1, N_MOVIES + 1)) and len(set(sids.strings)) == N_MOVIES
    import json

    report = json.loads((run / "report.json").read_text())
    assert report["collab_input"] == {"weight": 1.0, "shrinkage": 0.0, "dim": 8}
    assert report["embedding_dim"] == D  # the neighbour metrics read the content embeddings
    checks = {c.what: c for c in verify.sid_checks(run)}
    assert checks["model codes agree with sids.parquet"].ok, checks["model codes agree with sids.parquet"].detail
    # A new movie is encoded like a catalog movie nobody rated: a cold movie's embedding gives its raw codes.
    emb = artifacts.read_embeddings(run)
    cold = np.flatnonzero(np.isin(emb.movie_ids, COLD))
    x_new = artifacts.new_movie_model_input(run, tok, emb.x[cold])
    x_all = artifacts.model_input(run, tok, emb)
    assert np.allclose(x_new, x_all[cold], atol=1e-6)
    with torch.no_grad():
        assert torch.equal(tok.quantize(tok.encode(torch.from_numpy(x_new))),
                           tok.quantize(tok.encode(torch.from_numpy(np.ascontiguousarray(x_all[cold])))))
    # Without its collaborative vectors the run cannot give the model its input: a clear error.
    (run / "collab.parquet").unlink()
    with pytest.raises(SidsError, match="reads collaborative vectors too"):
        artifacts.model_input(run, tok, emb)


JOINT = {"joint.cycles": 2, "joint.warm_epochs": 1, "joint.rec_epochs": 1, "joint.batch_size": 8,
         "joint.max_history": 5, "joint.d_model": 8, "joint.n_heads": 1, "joint.n_layers": 1,
         "joint.tokenizer_lr": 1e-2, "joint.item_weight": 1.0, "joint.preference_weight": 1.0,
         "retrieval.max_history": 5, "model.collab_input": 1.0, "model.codebook_size": 8}


def joint_run(tmp_path, name: str, rows, **sets):
    """A joint run (collab, train, assign) on ``rows``; returns its folder, its SIDs and its tokenizer's weights."""
    from movielens_sids.model import load_tokenizer

    run, cfg = make_run(tmp_path, name, rows, **{**JOINT, **sets})
    for stage in ("collab", "train", "assign"):
        pipeline.execute(stage, cfg, run)
    return run, artifacts.read_sids(run), load_tokenizer(run / "model").state_dict()


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_joint_training_reads_training_interactions_only_and_repeats_itself(tmp_path):
    run, sids, weights = joint_run(tmp_path, "a", ratings_rows())
    _, sids_again, weights_again = joint_run(tmp_path, "again", ratings_rows())
    assert sids_again.strings == sids.strings and same_weights(weights, weights_again)  # same seed: same SIDs
    cfg = make_run(tmp_path, "probe", ratings_rows())[1]
    split = split_of(ratings_of(cfg), np.arange(1, N_MOVIES + 1), cfg.retrieval)
    # Every validation and test event replaced: the same tokenizer and the same SIDs.
    _, sids_b, weights_b = joint_run(tmp_path, "b", ratings_rows(scramble_after=split.info["valid_start"]))
    assert sids_b.strings == sids.strings and same_weights(weights, weights_b)
    # ... while the joint training does train the tokenizer: without it the weights differ.
    _, _, weights_off = joint_run(tmp_path, "off", ratings_rows(), **{"joint.cycles": 0})
    assert not same_weights(weights, weights_off)
    joint = json.loads((run / "model" / "train_metrics.json").read_text())["joint"]
    assert [e["phase"] for e in joint["epochs"]] == ["warm", "tokenizer", "recommender", "tokenizer", "recommender"]
    assert joint["windows"] > 0


def test_a_movie_without_ratings_gets_a_sid_from_the_jointly_trained_tokenizer(tmp_path):
    run, sids, _ = joint_run(tmp_path, "run", ratings_rows())
    assert sids.movie_ids.tolist() == list(range(1, N_MOVIES + 1)) and len(set(sids.strings)) == N_MOVIES
    from movielens_sids.model import load_tokenizer

    tok = load_tokenizer(run / "model")
    x = artifacts.model_input(run, tok, artifacts.read_embeddings(run))  # what the tokenizer reads, cold rows too
    codes = tok.quantize(tok.encode(torch.from_numpy(np.asarray(x, dtype=np.float32)))).numpy()
    c = artifacts.read_collab(run)
    cold = np.flatnonzero(np.isin(c.movie_ids, COLD))
    assert (c.counts[cold] == 0).all()
    # its SID was assigned from the learned tokenizer's codes for its content (and its neighbours' vector)
    assert sids.model_codes is not None and (sids.model_codes[cold] == codes[cold]).all()


def test_joint_training_without_ratings_is_refused_in_one_line(tmp_path):
    run, cfg = make_run(tmp_path, "noratings", None, **JOINT)
    pipeline.execute("collab", cfg, run)
    with pytest.raises(SidsError, match="joint.cycles needs"):
        pipeline.execute("train", cfg, run)
    assert not (run / "model").exists()


def test_the_recommender_trained_with_the_tokenizer_is_scored_in_the_benchmark(tmp_path):
    from movielens_sids.cli import main

    run, _, _ = joint_run(tmp_path, "run", ratings_rows())
    assert (run / "model" / "recommender.safetensors").exists()
    args = ["retrieval", "--run-dir", str(run), "--methods", "joint,semantic_id_tokens", "--seeds", "0",
            "--max-epochs", "1", "--set", "retrieval.bootstrap_samples=100", "--set", "retrieval.workers=1"]
    assert main(args) == 0
    report = json.loads((run / "retrieval" / "report.json").read_text())
    assert set(report["methods"]) == {"joint", "semantic_id_tokens"}
    assert report["methods"]["joint"]["runs"][0]["epochs"] == 1
    (run / "model" / "recommender.safetensors").unlink()  # a run without one: refused in one line
    assert main(args) == 2
