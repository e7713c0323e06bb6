"""The evaluation report: the keys of docs/outputs.md on a tiny run folder, the SID k-NN against brute force,
errors, --compare."""

from __future__ import annotations

import json
import string
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from movielens_sids import metrics
from movielens_sids.config import Config
from movielens_sids.errors import SidsError
from movielens_sids.io import write_parquet
from movielens_sids.metrics import genre_purity, neighbor_overlap, shared_prefix_lengths, sid_knn
from movielens_sids.reports.markdown import compare_runs
from movielens_sids.settings import DEFAULT_PROBES, EvaluateConfig
from movielens_sids.stages.evaluate import evaluate_stage

REPORT_KEYS = {"n_movies", "levels", "codebook_size", "latent_dim", "embedding_model", "reconstruction", "utilization",
             "perplexity", "collisions", "neighbors", "genre_purity_level1", "probes", "timings_s"}
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


class FakeOutput(NamedTuple):
    reconstruction: torch.Tensor
    codes: torch.Tensor
    losses: dict


class FakeTokenizer(torch.nn.Module):
    """The tokenizer interface (encode, quantize, decode_codes, codebooks, config) as a tiny residual k-means
    on a fixed random projection, so the tests need no trained model."""

    def __init__(self, x: np.ndarray, *, levels: int = 2, codebook_size: int = 8, latent_dim: int = 8, seed: int = 0):
        super().__init__()
        d = x.shape[1]
        self.config = SimpleNamespace(levels=levels, codebook_size=codebook_size, latent_dim=latent_dim, input_dim=d)
        rng = np.random.default_rng(seed)
        proj, _ = np.linalg.qr(rng.normal(size=(d, latent_dim)))  # (D, H) orthonormal columns
        self.proj = torch.tensor(proj, dtype=torch.float32)
        z = x @ proj  # (N, H)
        books = []
        for _ in range(levels):
            c = z[rng.choice(len(z), codebook_size, replace=False)]  # (K, H)
            for _ in range(10):  # a few Lloyd steps
                a = ((z[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
                for j in range(codebook_size):
                    if (a == j).any():
                        c[j] = z[a == j].mean(0)
            books.append(c)
            z = z - c[((z[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)]
        self.codebooks = torch.tensor(np.stack(books), dtype=torch.float32)  # (L, K, H)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj  # (B, H)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        codes = []
        for book in self.codebooks:
            c = torch.cdist(z, book).argmin(1)  # (B,)
            codes.append(c)
            z = z - book[c]
        return torch.stack(codes, 1)  # (B, L)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        z = sum(self.codebooks[i][codes[:, i]] for i in range(codes.shape[1]))  # (B, H)
        return z @ self.proj.T  # (B, D)

    def forward(self, x: torch.Tensor) -> FakeOutput:
        codes = self.quantize(self.encode(x))
        return FakeOutput(self.decode_codes(codes), codes, {})


def _sid_string(tokens) -> str:
    return "".join(f"<{string.ascii_lowercase[i]}_{int(t)}>" for i, t in enumerate(tokens))


def make_run(run_dir: Path, *, n: int = 240, d: int = 16, seed: int = 0, extra_titles: dict[int, str] | None = None,
             levels: int = 2, codebook_size: int = 8) -> FakeTokenizer:
    """A run folder with catalog, embeddings (clustered by genre) and suffix-deduplicated sids; returns the model."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(GENRES), d))
    genre_of = rng.integers(0, len(GENRES), n)
    x = centers[genre_of] + 0.35 * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(1, n + 1, dtype=np.int64) * 3
    titles = [f"Movie {i}" for i in range(n)]
    years = [1950 + i % 70 for i in range(n)]
    titles[0], years[0] = "Matrix, The", 1999
    titles[1], years[1] = "Toy Story", 1995
    for i, t in (extra_titles or {}).items():
        titles[i] = t
    genres = [[GENRES[g]] + ([GENRES[(g + 1) % len(GENRES)]] if i % 4 == 0 else []) for i, g in enumerate(genre_of)]
    genres[5] = []  # "(no genres listed)"
    catalog = pa.table({
        "movie_id": pa.array(ids, pa.int64()), "title": titles, "display_title": titles,
        "year": pa.array(years, pa.int64()), "genres": pa.array(genres, pa.list_(pa.string())),
        "tags": pa.array([[] for _ in range(n)], pa.list_(pa.string())),
    })
    run_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(run_dir / "catalog.parquet", catalog)
    emb = pa.table({"movie_id": pa.array(ids, pa.int64()),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d)})
    write_parquet(run_dir / "embeddings.parquet", emb, metadata={"model": "fake-model", "dimension": str(d)})
    tok = FakeTokenizer(x, levels=levels, codebook_size=codebook_size)
    with torch.no_grad():
        codes = tok.quantize(tok.encode(torch.from_numpy(x))).numpy()
    # TIGER-style suffix: the n-th movie (by movie_id) sharing a code tuple gets suffix n.
    seen: dict[tuple, int] = {}
    sem = []
    for c in codes:
        key = tuple(int(v) for v in c)
        sem.append([*key, seen.get(key, 0)])
        seen[key] = seen.get(key, 0) + 1
    sids = pa.table({"movie_id": pa.array(ids, pa.int64()), "semantic_id": pa.array(sem, pa.list_(pa.int64())),
                     "sid": [_sid_string(s) for s in sem]})
    stats = {"strategy": "suffix", "n_moved": 0, "n_suffixed": n}
    write_parquet(run_dir / "sids.parquet", sids, metadata={"assign_stats": json.dumps(stats)})
    return tok


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def run(tmp_path):
    tok = make_run(tmp_path / "run", extra_titles={7: "Alien"})
    return tmp_path / "run", tok


def _cfg(**kw) -> Config:
    return Config(evaluate=EvaluateConfig(**kw))


def test_report_has_every_spec_key_with_plausible_values(run):
    run_dir, tok = run
    cfg = _cfg(extra_probes=["Movie 3 (1953)"])
    evaluate_stage(run_dir, cfg, tokenizer=tok)
    r = json.loads((run_dir / "report.json").read_text())
    assert REPORT_KEYS <= set(r)
    assert (r["n_movies"], r["levels"], r["codebook_size"], r["latent_dim"]) == (240, 2, 8, 8)
    assert r["embedding_model"] == "fake-model"
    assert 0 <= r["reconstruction"]["relative_mse"] < 1 and 0 < r["reconstruction"]["mean_cosine"] <= 1
    assert len(r["utilization"]) == len(r["perplexity"]) == 2
    assert all(0 < u <= 1 for u in r["utilization"]) and all(1 <= p <= 8 for p in r["perplexity"])
    c = r["collisions"]
    assert c["unique_fraction_after_dedup"] == 1.0 and c["max_group_size"] > 1
    assert 0 <= c["unique_fraction_before_dedup"] < 1
    nb = r["neighbors"]
    for key in ("overlap_at_10", "first_token_match_at_10", "random_first_token_match"):
        assert 0 <= nb[key] <= 1
    # Clustered data and a quantizer fitted on it: neighbours share first tokens far above chance.
    assert nb["first_token_match_at_10"] > 2 * nb["random_first_token_match"]
    assert nb["overlap_at_10"] > 0.2
    assert sum(nb["shared_prefix_histogram"]) == 240 * 10
    assert r["genre_purity_level1"] > r["genre_purity_level1_baseline"]
    assert set(r["probes"]) == {"Matrix, The (1999)", "Toy Story (1995)", "Movie 3 (1953)"}
    assert all(len(v) == 10 and k not in v for k, v in r["probes"].items())
    assert set(r["probes_skipped"]) == {"Godfather, The (1972)", "Pulp Fiction (1994)"}
    assert set(r["timings_s"]) >= {"catalog", "embed", "train", "assign", "evaluate"}
    assert r["timings_s"]["evaluate"] > 0
    assert r["dedup"]["assign_stats"]["strategy"] == "suffix" and r["dedup"]["n_suffixed"] == 240
    md = (run_dir / "report.md").read_text()
    assert "| overlap@10 |" in md and "### Matrix, The (1999)" in md
    for png in r["charts"].values():
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({png})" in md


def test_probe_neighbours_rank_by_shared_prefix_then_decoded_vector(run):
    run_dir, tok = run
    evaluate_stage(run_dir, _cfg(charts=False), tokenizer=tok)
    r = json.loads((run_dir / "report.json").read_text())
    by_sid = r["probe_details"]["Matrix, The (1999)"]["by_sid"]
    shared = [n["shared_prefix"] for n in by_sid]
    assert shared == sorted(shared, reverse=True)
    emb = r["probe_details"]["Matrix, The (1999)"]["by_embedding"]
    cos = [n["cosine"] for n in emb]
    assert cos == sorted(cos, reverse=True)


def _brute_force_keys(tokens, vectors, k):
    n = len(tokens)
    keys = []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        shared = shared_prefix_lengths(tokens, np.full(n - 1, i), others)
        sim = vectors[others] @ vectors[i]
        order = np.lexsort((-sim, -shared))[:k]
        keys.append(list(zip(shared[order].tolist(), np.round(sim[order], 5).tolist())))
    return keys


@pytest.mark.parametrize("k_codes,with_suffix", [(3, False), (6, True), (40, False)])
def test_sid_knn_matches_brute_force(k_codes, with_suffix):
    rng = np.random.default_rng(k_codes)
    n, levels = 300, 3
    tokens = rng.integers(0, k_codes, size=(n, levels))
    paths, inverse = np.unique(tokens, axis=0, return_inverse=True)
    vectors = rng.normal(size=(len(paths), 12))[inverse.ravel()]  # same path, same decoded vector
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    if with_suffix:
        tokens = np.concatenate([tokens, rng.integers(0, 3, size=(n, 1))], axis=1)
    got = sid_knn(tokens, vectors, 10, max_block=997)  # small blocks exercise the chunking
    assert got.shape == (n, 10)
    assert not (got == np.arange(n)[:, None]).any()
    assert all(len(set(row)) == 10 for row in got.tolist())
    want = _brute_force_keys(tokens, vectors, 10)
    for i in range(n):
        shared = shared_prefix_lengths(tokens, np.full(10, i), got[i])
        sim = vectors[got[i]] @ vectors[i]
        assert list(zip(shared.tolist(), np.round(sim, 5).tolist())) == want[i]
    some = rng.choice(n, 37, replace=False)  # the neighbours of a sample are those rows of the full answer
    np.testing.assert_array_equal(sid_knn(tokens, vectors, 10, some, max_block=997), got[some])


def test_sid_knn_breaks_exact_ties_by_the_smaller_index_whatever_the_blocks():
    rng = np.random.default_rng(5)
    n = 90
    tokens = np.zeros((n, 2), dtype=np.int64)  # one group: the cosine alone ranks
    tokens[:, 1] = np.arange(n)
    vectors = rng.normal(size=(n, 8))
    twins = rng.choice(n, 40, replace=False)  # 40 movies with one vector: every pair ties exactly
    vectors[twins] = vectors[twins[0]]
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    want = {int(i): sorted(int(j) for j in twins if j != i)[:10] for i in twins}
    for block in (1 << 22, 997, 91):
        got = sid_knn(tokens, vectors, 10, max_block=block)
        assert all(got[i].tolist() == want[i] for i in want)
        part = sid_knn(tokens, vectors, 10, twins[:7], max_block=block)
        np.testing.assert_array_equal(part, got[twins[:7]])


def test_neighbor_overlap_and_genre_purity_by_hand():
    a = np.array([[1, 2, 3, 4], [0, 2, 3, 4]])
    b = np.array([[4, 3, 9, 8], [0, 2, 3, 4]])
    assert neighbor_overlap(a, b) == pytest.approx((2 / 4 + 4 / 4) / 2)
    # Code 0 -> majority Drama; code 1 -> majority Comedy. Movie 2 (Action) and movie 5 (no genres) miss.
    level1 = np.array([0, 0, 0, 1, 1, 1])
    genres = [["Drama"], ["Drama", "Comedy"], ["Action"], ["Comedy"], ["Comedy", "Drama"], []]
    purity, baseline, per_genre = genre_purity(level1, genres)
    assert purity == pytest.approx(4 / 6)
    assert baseline == pytest.approx(3 / 6)  # Comedy and Drama tie at 3 movies; the first (Comedy) wins
    assert per_genre == {"Comedy": 1, "Drama": 1}


def test_embedding_knn_is_cached_by_embeddings_hash(run, monkeypatch):
    run_dir, tok = run
    evaluate_stage(run_dir, _cfg(charts=False), tokenizer=tok)
    first = json.loads((run_dir / "report.json").read_text())
    assert list((run_dir / ".cache").glob("knn-*-k10.npy"))

    def boom(*a, **k):
        raise AssertionError("the cached k-NN should have been used")

    monkeypatch.setattr(metrics, "knn", boom)
    evaluate_stage(run_dir, _cfg(charts=False), tokenizer=tok)
    second = json.loads((run_dir / "report.json").read_text())
    assert second["neighbors"] == first["neighbors"] and second["probes"] == first["probes"]


@pytest.mark.parametrize("breakage", ["missing_sids", "missing_model", "fewer_sids", "bad_codes", "nan_embeddings"])
def test_bad_input_is_one_line_error_and_changes_nothing(run, breakage):
    run_dir, tok = run
    use_tok = tok
    if breakage == "missing_sids":
        (run_dir / "sids.parquet").unlink()
    elif breakage == "missing_model":
        use_tok = None  # no model/ folder in the fixture
    elif breakage == "fewer_sids":
        t = pq.read_table(run_dir / "sids.parquet")
        write_parquet(run_dir / "sids.parquet", t.slice(0, 100))
    elif breakage == "bad_codes":
        t = pq.read_table(run_dir / "sids.parquet")
        sem = [[99, *s[1:]] for s in t.column("semantic_id").to_pylist()]
        write_parquet(run_dir / "sids.parquet", t.set_column(1, "semantic_id", pa.array(sem, pa.list_(pa.int64()))))
    elif breakage == "nan_embeddings":
        t = pq.read_table(run_dir / "embeddings.parquet")
        x = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        x[3, 2] = np.nan
        t = t.set_column(1, "embedding", pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]))
        write_parquet(run_dir / "embeddings.parquet", t)
    before = _snapshot(run_dir)
    with pytest.raises(SidsError) as e:
        evaluate_stage(run_dir, _cfg(), tokenizer=use_tok)
    assert "\n" not in str(e.value)
    assert _snapshot(run_dir) == before


def test_compare_puts_runs_side_by_side(tmp_path, capsys):
    from movielens_sids.cli import main

    dirs = []
    for name, k in (("small", 4), ("large", 16)):
        tok = make_run(tmp_path / name, codebook_size=k)
        evaluate_stage(tmp_path / name, _cfg(charts=False), tokenizer=tok)
        dirs.append(tmp_path / name)
    out = tmp_path / "cmp.md"
    assert main(["evaluate", "--compare", *map(str, dirs), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    header = text.splitlines()[2]
    assert header == "|  | small | large |"
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert "| 4 | 16 |" in rows["codebook size"]
    for r, d in zip((json.loads((d / "report.json").read_text()) for d in dirs), dirs):
        assert f"{r['neighbors']['overlap_at_10']:.4f}" in rows["overlap@10"]
    with pytest.raises(SidsError, match="report.json not found"):
        compare_runs([dirs[0], tmp_path / "nowhere"])


def test_default_probes_are_the_original_four():
    assert EvaluateConfig().probes == list(DEFAULT_PROBES) == [
        "Matrix, The (1999)", "Toy Story (1995)", "Godfather, The (1972)", "Pulp Fiction (1994)"]
    with pytest.raises(ValueError, match="probe_neighbors"):
        EvaluateConfig(probe_neighbors=0)


def test_probe_flag_adds_probes_to_the_config():
    from movielens_sids.cli import build_parser, overrides_from_args
    from movielens_sids.config import load_config

    args = build_parser().parse_args(["evaluate", "--probe", "Alien (1979)", "--probe", "Heat (1995)", "--no-charts"])
    cfg = load_config(None, overrides_from_args(args))
    assert cfg.evaluate.extra_probes == ["Alien (1979)", "Heat (1995)"] and cfg.evaluate.charts is False
    assert cfg.evaluate.all_probes()[-2:] == ["Alien (1979)", "Heat (1995)"]


def test_dedup_section_measures_what_moving_cost(run):
    run_dir, tok = run
    t = pq.read_table(run_dir / "sids.parquet")
    sem = t.column("semantic_id").to_pylist()
    for i in (0, 1, 2):  # "move" three movies to another last-level code, as the semantic strategy does
        sem[i][1] = (sem[i][1] + 1) % 8
    t = t.set_column(1, "semantic_id", pa.array(sem, pa.list_(pa.int64())))
    t = t.set_column(2, "sid", pa.array([_sid_string(s) for s in sem]))
    write_parquet(run_dir / "sids.parquet", t, metadata={"assign_stats": json.dumps({"strategy": "semantic"})})
    evaluate_stage(run_dir, _cfg(charts=False), tokenizer=tok)
    d = json.loads((run_dir / "report.json").read_text())["dedup"]
    assert d["n_changed_codes"] == 3 and d["assign_stats"] == {"strategy": "semantic"}
    assert d["relative_mse_final"] > d["relative_mse_raw"]
    with torch.no_grad():
        x = torch.tensor(np.stack(pq.read_table(run_dir / "embeddings.parquet").column("embedding")
                                  .to_numpy(zero_copy_only=False)), dtype=torch.float32)
        dec = tok.decode_codes(torch.tensor([s[:2] for s in sem])).numpy()
    assert d["relative_mse_final"] == pytest.approx(metrics.relative_mse(x.numpy(), dec))


def _retrieval_report() -> dict:
    """The smallest ``retrieval/report.json`` the retrieval section renders (one method, one seed)."""
    cell = {"mean": 0.1234, "ci_low": 0.1, "ci_high": 0.15}
    per_slice = {s: {m: cell for m in ("recall@10", "ndcg@10")} for s in ("all", "warm", "cold")}
    return {"dataset": "ml-latest-small", "protocol": "leave_one_out", "seeds": [0], "wall_time_s": 60.0,
            "slices": {s: {"events": 10, "users": 10} for s in ("all", "warm", "cold")},
            "split": {"n_users": 10, "n_interactions": 100, "min_ratings": 5},
            "settings": {"seeds": [0], "d_model": 8, "n_layers": 1, "n_heads": 1, "max_history": 5, "beam_size": 50,
                         "patience": 1, "exclude_seen": True, "bootstrap_samples": 100, "bootstrap_unit": "user"},
            "methods": {"semantic_id": {**per_slice, "runs": [{"seed": 0, "epochs": 1, "best_epoch": 1,
                                                                "stopped_by": "patience", "valid_curve": [0.1],
                                                                "train_s": 1.0}]}},
            "paired": {}}


def test_report_md_is_one_page_from_the_json_reports(run):
    """report.md has one writer: re-evaluating rebuilds it from report.json and retrieval/report.json, so the
    retrieval section is there exactly once, after the evaluation, and a stale hand edit is gone."""
    run_dir, tok = run
    evaluate_stage(run_dir, _cfg(), tokenizer=tok)
    md = run_dir / "report.md"
    assert "## Generative retrieval" not in md.read_text()
    (run_dir / "retrieval").mkdir()
    (run_dir / "retrieval" / "report.json").write_text(json.dumps(_retrieval_report()))
    md.write_text(md.read_text() + "\n## Generative retrieval\nstale\n")
    evaluate_stage(run_dir, _cfg(), tokenizer=tok)
    evaluate_stage(run_dir, _cfg(), tokenizer=tok)
    text = md.read_text()
    assert text.count("## Generative retrieval") == 1 and "0.1234" in text and "stale" not in text
    assert text.index("# Evaluation report") < text.index("## Generative retrieval")


@pytest.mark.parametrize("block", [7, 64, 4096])
def test_exact_knn_matches_brute_force_for_any_block(block):
    from movielens_sids import metrics

    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 12)).astype(np.float32)
    x[10] = x[20] * 3.0  # a duplicate direction: each must find the other, never itself
    got = metrics.knn(x, 5, block=block)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T  # (N, N)
    np.fill_diagonal(sim, -np.inf)
    want = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    assert got.shape == (150, 5) and got.dtype == np.int64
    assert (got != np.arange(150)[:, None]).all()
    np.testing.assert_allclose(np.take_along_axis(sim, got, 1), np.take_along_axis(sim, want, 1), atol=1e-6)
    assert got[10, 0] == 20 and got[20, 0] == 10
    assert metrics.knn(x[:4], 10).shape == (4, 3)  # k capped at N - 1


def test_knn_of_some_rows_matches_brute_force():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 10)).astype(np.float32)
    x[50] = x[250] * 2.0  # duplicate directions find each other, never themselves
    rows = np.array([250, 3, 50, 299, 0])
    got = metrics.knn(x, 6, rows=rows, block=64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = (xn @ xn.T)[rows]  # (Q, N)
    sim[np.arange(len(rows)), rows] = -np.inf
    want = np.argsort(-sim, axis=1, kind="stable")[:, :6]
    assert got.shape == (5, 6) and (got != rows[:, None]).all()
    np.testing.assert_allclose(np.take_along_axis(sim, got, 1), np.take_along_axis(sim, want, 1), atol=1e-6)
    assert got[0, 0] == 50 and got[2, 0] == 250
    np.testing.assert_array_equal(got, metrics.knn(x, 6, block=64)[rows])  # the same as the all-rows search


def test_sampled_mutual_pairs_are_the_exact_pairs_touching_the_sample():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    full = metrics.knn(x, 5)
    every = metrics.mutual_pairs(full, 5)
    sample = np.sort(rng.choice(400, 40, replace=False))
    table = np.full_like(full, -1)  # only the sample's rows and their neighbours' rows are known
    need = np.unique(np.r_[sample, full[sample].ravel()])
    table[need] = full[need]
    got = metrics.mutual_pairs(table, 5, sample)
    touching = every[np.isin(every, sample).any(axis=1)]
    np.testing.assert_array_equal(got, touching)
    assert len(got) > 10
    np.testing.assert_array_equal(metrics.mutual_pairs(full, 5, np.arange(400)), every)


def _neighbour_values(report: dict) -> dict:
    """The report's neighbour-based numbers, without the records of the sample."""
    drop = {"sample", "overlap_sample"}
    return {s: {k: v for k, v in report[s].items() if k not in drop} for s in ("neighbors", "coherence", "dedup")}


def test_sampled_neighbour_metrics_equal_the_exact_ones_when_the_sample_is_everyone(run, monkeypatch):
    from movielens_sids.stages import evaluate as ev

    run_dir, tok = run
    exact, _ = ev.build_report(ev.load_inputs(run_dir, tok), EvaluateConfig(), cache_dir=None)
    assert exact["neighbors"]["sample"] is None and exact["coherence"]["sample"] is None
    n = exact["n_movies"]
    monkeypatch.setattr(ev, "neighbour_sample", lambda n_, cfg: (np.arange(n_), np.arange(n_)))
    sampled, _ = ev.build_report(ev.load_inputs(run_dir, tok), EvaluateConfig(), cache_dir=None)
    assert sampled["neighbors"]["sample"] == {"movies": n, "seed": 0} == sampled["coherence"]["sample"]
    assert _neighbour_values(sampled) == _neighbour_values(exact)


def test_a_large_catalog_samples_neighbours_records_it_and_repeats_for_a_seed(run):
    from movielens_sids.stages import evaluate as ev

    run_dir, tok = run
    reports = [ev.build_report(ev.load_inputs(run_dir, tok), EvaluateConfig(neighbor_sample=100, seed=s),
                               cache_dir=None)[0] for s in (0, 0, 1)]
    first = reports[0]
    assert first["neighbors"]["sample"] == {"movies": 100, "seed": 0} == first["dedup"]["overlap_sample"]
    assert first["coherence"]["sample"] == {"movies": 10, "seed": 0}
    assert sum(first["neighbors"]["shared_prefix_histogram"]) == 100 * 10  # 10 neighbours of each sampled movie
    assert _neighbour_values(reports[1]) == _neighbour_values(first)
    assert _neighbour_values(reports[2]) != _neighbour_values(first)
    a, b = ev.neighbour_sample(240, EvaluateConfig(neighbor_sample=100))
    assert set(b) <= set(a) and len(set(a)) == 100 and (np.diff(a) > 0).all()
    assert ev.neighbour_sample(100, EvaluateConfig(neighbor_sample=100)) is None
    with pytest.raises(ValueError, match="neighbor_sample"):
        EvaluateConfig(neighbor_sample=5)


def test_the_codes_assign_recorded_give_the_report_that_quantizing_again_gives(tmp_path, monkeypatch):
    from sids_fixtures import clustered_embeddings, tiny_tokenizer, write_catalog, write_run

    from movielens_sids.model import RQVAE, save_pretrained
    from movielens_sids.stages.assign import assign_stage

    x, ids = clustered_embeddings(300, dim=8, seed=2)
    x[40:50] = x[3]  # identical movies: dedup moves some, so raw and final codes differ
    write_run(tmp_path, x, ids, levels=2, codebook_size=16)
    write_catalog(tmp_path, [{"movie_id": int(i), "title": f"Movie {i}", "year": 1990, "genres": ["Drama"]}
                             for i in ids])
    assign_stage(tmp_path, Config())
    quantized = []
    real = RQVAE.quantize
    monkeypatch.setattr(RQVAE, "quantize", lambda self, z, *a, **k: quantized.append(len(z)) or real(self, z, *a, **k))

    def report() -> dict:
        evaluate_stage(tmp_path, _cfg(charts=False, extra_probes=[]))
        r = json.loads((tmp_path / "report.json").read_text())
        r.pop("timings_s"), r.pop("compute_s")
        return r

    recorded = report()
    assert sum(quantized) == 0 and recorded["dedup"]["n_changed_codes"] > 0
    t = pq.read_table(tmp_path / "sids.parquet")  # the same file without the column: every movie is quantized
    pq.write_table(t.drop_columns(["model_codes"]).replace_schema_metadata(t.schema.metadata),
                   tmp_path / "sids.parquet")
    again = report()
    assert sum(quantized) == 300 and again == recorded
    assign_stage(tmp_path, Config())  # the column again, but another model in model/: its codes are not those
    save_pretrained(tiny_tokenizer(x, levels=2, codebook_size=16, seed=9), tmp_path / "model")
    report()
    assert sum(quantized) == 600
