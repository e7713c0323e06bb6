"""The Python API (``SemanticIds``): the README's section run as written, the run-folder path, and the Hub path
with ``snapshot_download`` replaced by the folders an export writes (tests never reach the network)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_first_use import demo, runs  # noqa: F401 - the quickstart's run folder, made once

from movielens_sids import SemanticIds
from movielens_sids.artifacts import read_embeddings, read_sids
from movielens_sids.cli import main
from movielens_sids.errors import SidsError

README = Path(__file__).resolve().parents[2] / "README.md"


class _FixtureEncoder:
    """Stands in for the sentence-transformers model (the fixture's vectors were imported, 16-d): a text
    naming a catalog movie gets that movie's vector, so encode's result can be checked."""

    def __init__(self, run_dir: Path) -> None:
        emb = read_embeddings(run_dir)
        self.by_id = dict(zip(emb.movie_ids.tolist(), emb.x))
        self.texts: list[str] = []

    def encode(self, texts, normalize_embeddings=True, convert_to_numpy=True):
        self.texts += texts
        return np.stack([self.by_id[1] if "Toy Story" in t else self.by_id[2571] for t in texts])


def _readme_python_api() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 4)]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_section_runs_as_written(runs, monkeypatch, capsys):  # noqa: F811
    code = _readme_python_api()
    assert 'SemanticIds.from_pretrained("runs/demo")' in code
    fake = _FixtureEncoder(runs / "demo")
    monkeypatch.setattr(SemanticIds, "_embedder", lambda self: fake)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's block, unchanged
    out = capsys.readouterr().out
    sids = read_sids(runs / "demo")
    toy = sids.strings[sids.movie_ids.tolist().index(1)]
    assert f"{toy} True" in out  # sid_of by title and by id agree, and give the assigned SID
    assert fake.texts and "Toy Story" in fake.texts[0]  # encode went through the run's embedding model


def test_run_folder_api(runs):  # noqa: F811
    s = SemanticIds.from_pretrained(runs / "demo")
    sids = read_sids(runs / "demo")
    truth = dict(zip(sids.movie_ids.tolist(), sids.strings))
    assert s.sid_of(2571) == s.sid_of("The Matrix (1999)") == s.sid_of("Matrix, The") == truth[2571]
    first = truth[1][:truth[1].index(">") + 1]
    under = s.movies_under(first)
    assert list(under.columns[:3]) == ["movie_id", "sid", "semantic_id"]
    assert set(under.movie_id) == {m for m, sid in truth.items() if sid.startswith(first)}
    near = s.neighbors("Toy Story", k=3)
    assert len(near) == 3 and 1 not in set(near.movie_id) and near.shared_prefix.is_monotonic_decreasing
    with pytest.raises(SidsError, match="no movie matches"):
        s.sid_of("Zzzzqqq nothing")
    with pytest.raises(SidsError, match="not found"):
        SemanticIds.from_pretrained(runs / "missing")


def test_encode_quantizes_with_the_run_tokenizer(runs, monkeypatch):  # noqa: F811
    import torch

    from movielens_sids.artifacts import read_model
    from movielens_sids.sid import format_sid

    s = SemanticIds.from_pretrained(runs / "demo")
    fake = _FixtureEncoder(runs / "demo")
    monkeypatch.setattr(SemanticIds, "_embedder", lambda self: fake)
    codes = s.encode(["Toy Story", "The Matrix"], return_codes=True)
    tok = read_model(runs / "demo")
    x = torch.from_numpy(np.stack([fake.by_id[1], fake.by_id[2571]]))
    with torch.inference_mode():
        expect = tok.quantize(tok.encode(x)).numpy()
    assert codes.shape == (2, 2) and (codes == expect).all()
    assert s.encode(["Toy Story"]) == [format_sid(expect[0].tolist())]
    with pytest.raises(TypeError):
        s.encode("Toy Story")


def test_embedding_settings_come_from_the_run(runs):  # noqa: F811
    s = SemanticIds.from_pretrained(runs / "demo")
    assert s.embedding["model"] == read_embeddings(runs / "demo").model
    assert "normalized" in s.embedding


def test_hub_path_downloads_model_and_dataset_repos(runs, monkeypatch, tmp_path):  # noqa: F811
    """``snapshot_download`` is replaced by the two folders an export writes; the rest is the real code."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["export", "--run-dir", "runs/demo", "--model-repo", "me/movielens-rqvae", "--dataset-repo",
                 "me/movielens-sids"]) == 0
    card = (runs / "demo" / "model" / "README.md").read_text()
    assert "- me/movielens-sids" in card and 'SemanticIds.from_pretrained("me/movielens-rqvae")' in card
    calls = []

    def snapshot_download(repo_id, repo_type=None, revision=None, **kw):
        calls.append((repo_id, repo_type, revision))
        return str(runs / "demo" / ("dataset" if repo_type == "dataset" else "model"))

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    monkeypatch.setenv("MOVIELENS_SIDS_CACHE", str(tmp_path / "cache"))
    hub = SemanticIds.from_pretrained("me/movielens-rqvae", revision="demo")
    assert calls == [("me/movielens-rqvae", None, "demo"), ("me/movielens-sids", "dataset", "demo")]
    local = SemanticIds.from_pretrained(runs / "demo")
    for movie in (1, "The Matrix", "Alien (1979)", 10_005):
        assert hub.sid_of(movie) == local.sid_of(movie)
    assert hub.embedding["model"] == local.embedding["model"]
    assert hub.movies_under("0").movie_id.tolist() == local.movies_under("0").movie_id.tolist()
    shutil.rmtree(tmp_path / "cache")


def test_push_to_hub_is_the_cli_export(runs, monkeypatch):  # noqa: F811
    """Same code as ``export --push-to-hub``: a dry run lists the same upload and writes nothing."""
    from movielens_sids.stages import export

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    seen = []
    real = export.export_stage
    monkeypatch.setattr(export, "export_stage", lambda run_dir, cfg: seen.append(cfg) or real(run_dir, cfg))
    result = SemanticIds.from_pretrained(runs / "demo").push_to_hub("me/tok", dataset_repo="me/data", dry_run=True)
    assert seen and seen[0].export.push_to_hub and seen[0].export.model_repo == "me/tok"
    assert seen[0].experiment == "demo"
    assert "model repo me/tok" in result["upload_listing"] and "dataset repo me/data" in result["upload_listing"]


@pytest.mark.slow
def test_readme_python_api_with_the_real_embedding_model(tmp_path, monkeypatch, capsys):
    """No stand-in: a run embedded with the offline MiniLM; ``encode`` of a movie's own document gives the
    raw codes of its stored embedding (same model, same settings)."""
    import torch
    from movielens_fixtures import write_movielens
    from test_first_use import FILLERS, NAMED

    from movielens_sids.artifacts import read_catalog, read_model
    from movielens_sids.documents import build_documents
    from movielens_sids.sid import format_sid

    source = write_movielens(tmp_path / "ml", movies=NAMED + FILLERS)
    assert main(["run", "--config", "demo", "--run-dir", str(tmp_path / "runs" / "demo"), "--source", str(source),
                 "--until", "assign", "--set", "model.codebook_size=8", "--set", "model.levels=2", "--set",
                 "model.group_prototypes=4", "--set", "train.max_epochs=1", "--set", "train.batch_size=64"]) == 0
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_python_api(), "README.md", "exec"), {})  # noqa: S102 - as written
    assert "<a_" in capsys.readouterr().out
    run = tmp_path / "runs" / "demo"
    s = SemanticIds.from_pretrained(run)
    catalog = read_catalog(run, ("movie_id", "title"))
    doc = build_documents(catalog.slice(0, 1), template=s.embedding.get("template"),
                          max_tags=int(s.embedding.get("max_tags", 10)))[0]
    emb = read_embeddings(run)
    tok = read_model(run)
    with torch.inference_mode():
        raw = tok.quantize(tok.encode(torch.from_numpy(emb.x[:1]))).numpy()[0]
    assert s.encode([doc]) == [format_sid(raw.tolist())]
