"""export: the dataset loads with `datasets`, the cards, and a Hub push that never leaks the token."""

from __future__ import annotations

import json
import logging
import socket
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sids_fixtures import clustered_embeddings, write_catalog, write_run

from movielens_sids.config import load_config
from movielens_sids.errors import SidsError
from movielens_sids.hub import resolve_token
from movielens_sids.io import file_hash, write_parquet
from movielens_sids.stages.assign import assign_stage
from movielens_sids.stages.export import export_stage, repo_ids, write_shards

SECRET = "hf_TESTSECRETtoken1234567890abcdefXYZ"


@pytest.fixture
def run(tmp_path):
    x, ids = clustered_embeddings(120, dim=8)
    write_run(tmp_path, x, ids, levels=2, codebook_size=16)
    write_catalog(tmp_path, [{"movie_id": int(m), "title": f"Movie {m}", "year": 1990 + i % 30,
                              "genres": ["Drama", "Comedy"][: 1 + i % 2], "tags": ["tag"] * (i % 2)}
                             for i, m in enumerate(ids.tolist())])
    assign_stage(tmp_path, load_config(None, {}))
    return tmp_path


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No token anywhere: env, .env in the cwd, or the Hub login."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def _files(folder):
    return {p.relative_to(folder).as_posix(): file_hash(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_loads_with_datasets_and_has_every_column(run, no_token):
    from datasets import load_dataset

    model_before = {f: file_hash(run / "model" / f) for f in ("config.json", "model.safetensors")}
    res = export_stage(run, load_config(None, {}))
    assert res["rows"] == 120
    ds = load_dataset("parquet", data_dir=str(run / "dataset"))["train"]
    assert ds.num_rows == 120
    catalog_cols = pq.read_schema(run / "catalog.parquet").names
    assert ds.column_names == [*catalog_cols, "embedding", "semantic_id", "sid"]
    row = ds[0]
    assert len(row["embedding"]) == 8 and len(row["semantic_id"]) == 2 and row["sid"].startswith("<a_")
    assert ds["movie_id"] == sorted(ds["movie_id"])
    card = (run / "dataset" / "README.md").read_text()
    assert card.startswith("---\nlicense: other") and "10.1145/2827872" in card and "Harper" in card
    assert "path: data/train-*" in card and "num_examples: 120" in card and "`semantic_id`" in card
    assert "report.json" in card  # says the metrics are missing
    assert (run / "model" / "README.md").read_text().startswith("---\n")
    assert {f: file_hash(run / "model" / f) for f in model_before} == model_before


def test_dataset_card_quotes_the_report(run, no_token):
    (run / "report.json").write_text(json.dumps({"reconstruction": {"relative_mse": 0.1234567, "mean_cosine": 0.9},
                                                 "utilization": [1.0, 0.98]}))
    export_stage(run, load_config(None, {}))
    card = (run / "dataset" / "README.md").read_text()
    assert "| reconstruction relative MSE | 0.1235 |" in card and "1, 0.98" in card


def test_shards_split_evenly_and_keep_order(tmp_path):
    n = 3000
    t = pa.table({"movie_id": pa.array(np.arange(n)),
                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(n * 128, np.float32)), 128)})
    paths = write_shards(t, tmp_path, shard_size_mb=1)
    assert [p.name for p in paths] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    back = pa.concat_tables([pq.read_table(p) for p in paths])
    assert back.column("movie_id").to_pylist() == list(range(n))


def test_dry_run_lists_every_file_without_a_token(run, no_token, capsys, monkeypatch):
    from movielens_sids.cli import main

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert main(["export", "--run-dir", str(run), "--push-to-hub", "--dry-run", "--experiment", "exp1"]) == 0
    out = capsys.readouterr().out
    assert "model repo <your-username>/movielens-rqvae" in out and "dataset repo <your-username>/movielens-sids" in out
    assert "tagged 'exp1'" in out
    for f in ("config.json", "model.safetensors", "README.md", "data/train-00000-of-00001.parquet"):
        assert f in out
    assert "checkpoints" not in out


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


class FakeHub:
    """Records HfApi calls; never touches the network."""

    def __init__(self):
        self.calls = []

    def install(self, monkeypatch):
        import huggingface_hub

        hub = self

        def whoami(self, token=None, **kw):
            hub.calls.append(("whoami",))
            return {"name": "alice"}

        def create_repo(self, repo_id, **kw):
            hub.calls.append(("create_repo", repo_id, kw.get("repo_type"), kw.get("private")))
            return repo_id

        def create_commit(self, repo_id, operations, **kw):
            ops = list(operations)
            hub.calls.append(("create_commit", repo_id, kw.get("repo_type"), sorted(o.path_in_repo for o in ops)))
            return SimpleNamespace(oid=f"oid-{repo_id}", commit_url=f"https://hub/{repo_id}/commit")

        def create_tag(self, repo_id, *, tag, revision=None, **kw):
            hub.calls.append(("create_tag", repo_id, tag, revision))

        for name, fn in (("whoami", whoami), ("create_repo", create_repo), ("create_commit", create_commit),
                         ("create_tag", create_tag)):
            monkeypatch.setattr(huggingface_hub.HfApi, name, fn)
        return self


def test_push_uploads_one_commit_per_repo_and_never_leaks_the_token(run, no_token, monkeypatch, capsys, caplog):
    from movielens_sids.cli import main

    monkeypatch.setenv("HF_TOKEN", SECRET)
    hub = FakeHub().install(monkeypatch)
    caplog.set_level(logging.DEBUG)
    assert main(["export", "--run-dir", str(run), "--push-to-hub", "--experiment", "exp1", "--private",
                 "--set", "export.sequences=never"]) == 0  # the sequence datasets' files: test_sequence_export.py
    commits = [c for c in hub.calls if c[0] == "create_commit"]
    assert commits == [
        ("create_commit", "alice/movielens-rqvae", "model", ["README.md", "config.json", "model.safetensors"]),
        ("create_commit", "alice/movielens-sids", "dataset", ["README.md", "data/train-00000-of-00001.parquet"]),
    ]
    assert ("create_tag", "alice/movielens-rqvae", "exp1", "oid-alice/movielens-rqvae") in hub.calls
    assert ("create_repo", "alice/movielens-sids", "dataset", True) in hub.calls
    assert main(["export", "--run-dir", str(run), "--push-to-hub", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "alice/movielens-sids" in out
    assert "alice/movielens-rqvae" in (run / "dataset" / "README.md").read_text()
    _assert_no_secret(run, out, err, caplog)


def test_no_network_is_a_clear_error_and_uploads_nothing(run, no_token, monkeypatch, caplog):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    committed = []
    monkeypatch.setattr("huggingface_hub.HfApi.create_commit", lambda *a, **k: committed.append(a))
    before = _files(run)
    with pytest.raises(SidsError) as e:
        export_stage(run, load_config(None, {"export.push_to_hub": True}))
    msg = str(e.value)
    assert "unreachable" in msg and "127.0.0.1" in msg and "\n" not in msg and SECRET not in msg
    assert committed == []
    assert _files(run) == before  # the account is checked before anything is written
    _assert_no_secret(run, "", "", caplog)


def test_push_without_a_token_says_how_to_give_one(run, no_token):
    before = _files(run)
    with pytest.raises(SidsError, match="HF_TOKEN"):
        export_stage(run, load_config(None, {"export.push_to_hub": True}))
    assert _files(run) == before


def test_token_sources_in_order(monkeypatch, tmp_path, no_token):
    assert resolve_token() == (None, "")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "from-login")
    assert resolve_token() == ("from-login", "the Hugging Face login")
    (tmp_path / "cwd" / ".env").write_text(f"HUGGING_FACE_HUB_TOKEN={SECRET}\n")
    tok, where = resolve_token()
    assert tok == SECRET and ".env" in where and SECRET not in where
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert resolve_token() == ("from-env", "HF_TOKEN")
    import os

    assert os.environ.get("HUGGING_FACE_HUB_TOKEN") is None  # .env is read, not loaded into the environment


def test_smoke_runs_go_to_smoke_test_repos(run):
    cfg = load_config(None, {})
    assert repo_ids(run, cfg, "bob") == ("bob/movielens-rqvae", "bob/movielens-sids")
    t = pq.read_table(run / "catalog.parquet")
    write_parquet(run / "catalog.parquet", t, metadata={"summary": json.dumps({"limit": 50})})
    assert repo_ids(run, cfg, "bob") == ("bob/movielens-rqvae-smoke-test", "bob/movielens-sids-smoke-test")
    cfg = load_config(None, {"export.model_repo": "org/tok"})
    assert repo_ids(run, cfg, "bob")[0] == "org/tok-smoke-test"


def test_missing_inputs_fail_with_one_line_and_change_nothing(run, no_token):
    (run / "sids.parquet").unlink()
    before = _files(run)
    with pytest.raises(SidsError, match="assign") as e:
        export_stage(run, load_config(None, {}))
    assert "\n" not in str(e.value) and _files(run) == before
    (run / "model" / "model.safetensors").unlink()
    before = _files(run)
    with pytest.raises(SidsError, match="train"):
        export_stage(run, load_config(None, {}))
    assert _files(run) == before


def _assert_no_secret(run, out, err, caplog):
    assert SECRET not in out and SECRET not in err
    for rec in caplog.records:
        assert SECRET not in rec.getMessage()
    for p in run.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p
