"""Refusals: hostile archives, pickled weights, remote code, and the Hub token.

Each test here fails if the protection it covers is removed: the archive checks of
``fetch.check_zip_entries`` / ``extract_zip``, ``load_tokenizer``'s safetensors-only loading and the
``weights_only=True`` resume of training, ``trust_remote_code=False`` by default, and the token
scrubbing of ``hub``. (``tests/pipeline/test_fetch.py`` covers the download path's traversal, symlink and
declared-size cases; these add the catalog ``--source`` path, the real-size bomb and the total limit.)
"""

from __future__ import annotations

import io
import logging
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from movielens_fixtures import LINKS, MOVIES, write_movielens
from sids_fixtures import clustered_embeddings, tiny_tokenizer, write_catalog, write_run

from movielens_sids import hub
from movielens_sids.cli import main
from movielens_sids.data import fetch
from movielens_sids.errors import SidsError
from movielens_sids.model import load_tokenizer, save_pretrained

MOVIES_CSV = b"movieId,title,genres\n1,Toy Story (1995),Animation\n2,Heat (1995),Action\n"


def _files(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _zip(entries: dict[str, bytes], *, declared: dict[str, int] | None = None,
         symlinks: dict[str, str] | None = None) -> bytes:
    """A zip whose central directory may lie about entry sizes (``declared``: name -> size).

    The central directory is what readers (and our checks) trust; a size above 4 GiB is written as a
    ZIP64 extra field, as real archives do.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
        for info in zf.filelist:
            if declared and info.filename in declared:
                info.file_size = declared[info.filename]
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ archives


def test_entry_that_inflates_beyond_its_declared_size_is_refused_and_nothing_is_extracted(tmp_path):
    # 40 MB of padding that deflates to ~40 kB, declared as 200 bytes: under every limit on paper.
    bomb = MOVIES_CSV + b" " * 40_000_000
    zp = tmp_path / "bomb.zip"
    zp.write_bytes(_zip({"ml/movies.csv": bomb}, declared={"ml/movies.csv": 200}))
    assert zp.stat().st_size < 1_000_000
    target = tmp_path / "cache" / "ml"
    with pytest.raises(SidsError, match="corrupt"):
        fetch.extract_zip(zp, target, folder="ml", required="movies.csv", marker={},
                          max_entry_bytes=10_000, max_total_bytes=10_000)
    assert not target.exists()
    assert not (tmp_path / "cache").exists() or _files(tmp_path / "cache") == {}


def test_catalog_source_zip_that_inflates_beyond_its_declared_size_is_refused(tmp_path, capsys):
    bomb = MOVIES_CSV + b"3,Big (1988)," + b"A" * 40_000_000 + b"\n"
    zp = tmp_path / "bomb.zip"
    zp.write_bytes(_zip({"ml/movies.csv": bomb}, declared={"ml/movies.csv": 300}))
    run = tmp_path / "run"
    assert main(["catalog", "--source", str(zp), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "corrupt" in err
    assert not run.exists()


def test_archive_above_the_total_size_limit_is_refused_before_anything_is_written(tmp_path):
    entries = {"ml/movies.csv": MOVIES_CSV, **{f"ml/extra{i}.csv": b"x" * 4_000 for i in range(5)}}
    zp = tmp_path / "many.zip"
    zp.write_bytes(_zip(entries))
    target = tmp_path / "cache" / "ml"
    with pytest.raises(SidsError, match="unpacks to more than"):
        fetch.extract_zip(zp, target, folder="ml", required="movies.csv", marker={},
                          max_entry_bytes=5_000, max_total_bytes=10_000)
    assert not target.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("entries", "declared", "links", "message"), [
    ({"ml/movies.csv": MOVIES_CSV, "/tmp/movielens-sids-abs": b"x"}, None, None, "outside the target folder"),
    ({"ml/movies.csv": MOVIES_CSV, "ml/../../evil": b"x"}, None, None, "outside the target folder"),
    ({"ml/movies.csv": MOVIES_CSV, "C:/evil": b"x"}, None, None, "outside the target folder"),
    ({"ml/movies.csv": MOVIES_CSV}, None, {"ml/tags.csv": "/etc/passwd"}, "symbolic link"),
    ({"ml/movies.csv": MOVIES_CSV}, {"ml/movies.csv": 9 << 30}, None, "unpacks to"),
    ({"ml/movies.csv": MOVIES_CSV, **{f"ml/r{i}.csv": b"1" for i in range(5)}},
     {f"ml/r{i}.csv": 7 << 30 for i in range(5)}, None, "unpacks to more than"),
], ids=["absolute", "dotdot", "drive-letter", "symlink", "declared-entry-bomb", "declared-total-bomb"])
def test_catalog_source_zip_with_a_hostile_entry_is_refused(tmp_path, capsys, entries, declared, links, message):
    zp = tmp_path / "hostile.zip"
    zp.write_bytes(_zip(entries, declared=declared, symlinks=links))
    run = tmp_path / "run"
    assert main(["catalog", "--source", str(zp), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err
    assert not run.exists()
    assert not Path("/tmp/movielens-sids-abs").exists() and not (tmp_path.parent / "evil").exists()


def test_fetch_refuses_a_bomb_whose_declared_size_is_over_the_limit_before_writing(tmp_path):
    zp = tmp_path / "bomb.zip"
    zp.write_bytes(_zip({"ml/movies.csv": MOVIES_CSV}, declared={"ml/movies.csv": 9 << 30}))
    with pytest.raises(SidsError, match="unpacks to"):
        fetch.extract_zip(zp, tmp_path / "cache" / "ml", folder="ml", required="movies.csv", marker={})
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------------------ pickles


class _Payload:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _pickle_bomb(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload(marker), "global_step": 3}, f)


def _model_dir(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x, _ = clustered_embeddings(64, dim=8)
    save_pretrained(tiny_tokenizer(x, codebook_size=4), tmp_path / "model")
    return tmp_path / "model", x


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.ckpt", "checkpoints/last.ckpt", "model.pt"])
def test_pickles_next_to_the_weights_are_never_unpickled(tmp_path, name):
    folder, x = _model_dir(tmp_path)
    marker = tmp_path / "pwned"
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    _pickle_bomb(folder / name, marker)
    try:
        tok = load_tokenizer(folder)
    except SidsError:
        tok = None  # refusing the folder is fine too
    assert not marker.exists(), f"{name} was unpickled"
    if tok is not None:  # and what loads is the safetensors weights
        assert tok.quantize(tok.encode(torch.from_numpy(x))).shape == (64, 2)


def test_weights_file_that_is_a_pickle_is_refused_without_running_it(tmp_path):
    folder, _ = _model_dir(tmp_path)
    marker = tmp_path / "pwned"
    _pickle_bomb(folder / "model.safetensors", marker)
    with pytest.raises(SidsError, match="safetensors"):
        load_tokenizer(folder)
    assert not marker.exists()


def test_assign_on_a_model_folder_holding_a_pickle_never_runs_it(tmp_path, capsys):
    x, ids = clustered_embeddings(64, dim=8)
    run = tmp_path / "run"
    write_run(run, x, ids, codebook_size=4)
    marker = tmp_path / "pwned"
    _pickle_bomb(run / "model" / "pytorch_model.bin", marker)
    _pickle_bomb(run / "model" / "model.safetensors", marker)
    assert main(["assign", "--run-dir", str(run)]) == 2
    assert "safetensors" in capsys.readouterr().err
    assert not marker.exists() and not (run / "sids.parquet").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # the crafted file's own protocol
def test_training_never_unpickles_a_crafted_resume_checkpoint(tmp_path):
    from movielens_sids.model import RQVAEConfig
    from movielens_sids.stages import train

    x, _ = clustered_embeddings(48, dim=8)
    work = tmp_path / train.WORK_DIR
    (work / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "pwned"
    _pickle_bomb(work / "checkpoints" / "last.ckpt", marker)  # what a resumed training reads
    model_cfg = RQVAEConfig(input_dim=8, hidden_dims=[8], levels=2, codebook_size=4)
    train_cfg = train.TrainConfig(max_epochs=1, progress_bar=False, accelerator="cpu")
    try:  # refusing the checkpoint, or training from scratch instead, are both fine
        _, summary = train.fit_rqvae(x, model_cfg, train_cfg, work)
        assert summary["resumed_from_step"] == 0
    except SidsError:
        pass
    assert not marker.exists(), "the checkpoint's pickle ran"


# ------------------------------------------------------------------------------------------ remote code


class _FakeSentenceTransformer:
    """Stands in for ``sentence_transformers.SentenceTransformer``; records how it was built."""

    calls: list[dict] = []
    tokenizer = None
    max_seq_length = 128

    def __init__(self, name, **kwargs) -> None:
        type(self).calls.append({"name": name, **kwargs})

    def get_sentence_embedding_dimension(self) -> int:
        return 4

    get_embedding_dimension = get_sentence_embedding_dimension

    def encode(self, texts, **kwargs) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        v = rng.normal(size=(len(texts), 4)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize(("flags", "trusted"), [([], False), (["--trust-remote-code"], True)])
def test_remote_code_is_trusted_only_when_asked(tmp_path, monkeypatch, flags, trusted):
    import sentence_transformers

    _FakeSentenceTransformer.calls = []
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", _FakeSentenceTransformer)
    run = tmp_path / "run"
    write_catalog(run, [{"movie_id": i, "title": f"Movie {i}", "year": 2000 + i} for i in range(1, 6)])
    assert main(["embed", "--run-dir", str(run), "--model", "someone/custom-code-model", "--device", "cpu",
                 *flags]) == 0
    assert _FakeSentenceTransformer.calls, "the model was never loaded"
    assert all(c.get("trust_remote_code") is trusted for c in _FakeSentenceTransformer.calls)
    # The default backend (auto) guessed OpenVINO for a model it had not seen; this one is no Hugging Face
    # transformer, so it ran on torch, and the file says so.
    from movielens_sids.io import parquet_metadata

    assert "backend" not in parquet_metadata(run / "embeddings.parquet")


def test_config_default_does_not_trust_remote_code():
    from movielens_sids.config import load_config

    for preset in ("demo", "tiger", "seed"):
        assert load_config(preset).embed.trust_remote_code is False


# ------------------------------------------------------------------------------------------ the Hub token

TOKEN = "hf_secretValue_d41d8cd98f00b204e9800998ecf8427e"


class _FakeApi:
    """A Hub client that quotes the token in its errors, as some HTTP libraries do."""

    def __init__(self, token, fail_on: str | None) -> None:
        self.token = token
        self.fail_on = fail_on

    def _maybe_fail(self, what: str) -> None:
        if what == self.fail_on:
            raise RuntimeError(f"401 Unauthorized: invalid credentials 'Bearer {self.token}' for {what}")

    def whoami(self):
        self._maybe_fail("whoami")
        return {"name": "alice"}

    def create_repo(self, repo_id, **kwargs):
        self._maybe_fail("create_repo")

    def create_commit(self, repo_id, ops, **kwargs):
        self._maybe_fail(f"create_commit:{kwargs.get('repo_type')}")

        class Info:
            oid = "abc123"
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc123"

        return Info()

    def create_tag(self, repo_id, **kwargs):
        self._maybe_fail("create_tag")


def _all_text(root: Path, skip: set[Path]) -> bytes:
    out = b""
    for p in sorted(root.rglob("*")):
        if p.is_file() and p not in skip:
            out += p.read_bytes()
    return out


@pytest.mark.parametrize("source", ["env", "dotenv"])
def test_hub_token_never_appears_in_outputs_logs_artifacts_or_errors(tmp_path, monkeypatch, capsys, caplog, source):
    caplog.set_level(logging.DEBUG)
    for var in hub.TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)
    run = tmp_path / "run"
    dotenv = run / ".env"
    if source == "env":
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    else:
        run.mkdir()
        dotenv.write_text(f"HF_TOKEN={TOKEN}\n")
    movies = MOVIES + [(100 + i, f"Film {i} (2001)", "Drama") for i in range(30)]
    src = write_movielens(tmp_path / "ml", movies=movies, links=LINKS)
    x = np.random.default_rng(0).normal(size=(len(movies), 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    np.save(tmp_path / "ids.npy", np.array([m[0] for m in movies]))
    common = ["--run-dir", str(run), "--set", "model.levels=2", "--set", "model.codebook_size=2",
              "--set", "train.tokenizer=rqkmeans"]
    codes = [
        main(["catalog", "--source", str(src), *common]),
        main(["embed", "--from", str(tmp_path / "v.npy"), "--ids", str(tmp_path / "ids.npy"), *common]),
        main(["train", *common]),
        main(["assign", *common]),
        main(["evaluate", *common]),
        main(["export", "--push-to-hub", "--dry-run", *common]),
        main(["lookup", "--movie", "1", *common]),
    ]
    assert codes == [0] * len(codes)
    errors = []
    for fail_on in ("whoami", "create_commit:dataset", None):
        monkeypatch.setattr(hub, "_api", lambda token, f=fail_on: _FakeApi(token, f))
        rc = main(["export", "--push-to-hub", *common])
        assert rc == (0 if fail_on is None else 2)
        try:  # the exception a caller of the stage function sees
            from movielens_sids.config import load_config
            from movielens_sids.stages.export import export_stage

            cfg = load_config(None, {"model.levels": 2, "model.codebook_size": 2, "export.push_to_hub": True})
            export_stage(run, cfg)
        except SidsError as e:
            errors.append(str(e))
    assert len(errors) == 2 and all("\n" not in e for e in errors)
    captured = capsys.readouterr()
    seen = captured.out + captured.err + caplog.text + " ".join(errors)
    assert "alice" in seen or "alice" in (run / "model" / "README.md").read_text()  # the fake Hub was used
    assert TOKEN not in seen
    assert TOKEN.encode() not in _all_text(run, skip={dotenv})
    # The scrub must not be defeated by a token split over lines or quoted in a folded message.
    assert TOKEN[:20] not in seen
