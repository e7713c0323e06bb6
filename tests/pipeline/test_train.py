"""The train stage: embeddings.parquet -> model/, resumption after an interrupt, bad input."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pyarrow as pa
import pytest
import torch

from movielens_sids.config import load_config
from movielens_sids.errors import SidsError
from movielens_sids.io import write_parquet
from movielens_sids.model import RQVAE, RQKMeans, load_tokenizer
from movielens_sids.stages.train import train_stage

N, D = 300, 16


def write_embeddings(run_dir, x: np.ndarray) -> None:
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])
    write_parquet(run_dir / "embeddings.parquet", pa.table({"movie_id": ids, "embedding": emb}))


def vectors(n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, D)) * 2
    x = centers[rng.integers(20, size=n)] + 0.5 * rng.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def tiny_cfg(**train):
    return load_config(None, {
        "model.encoder": "mlp", "model.levels": 2, "model.codebook_size": 8, "model.latent_dim": 4,
        "model.hidden_dims": [16], "model.kmeans_iters": 5, "model.dead_code_window": 3,
        "train.batch_size": 64, "train.max_epochs": 3, "train.lr": 1e-2,
        "train.progress_bar": False, "train.accelerator": "cpu", "train.devices": "1",
        **{f"train.{k}": v for k, v in train.items()},
    })


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    write_embeddings(d, vectors())
    return d


def codes_of(model_dir) -> torch.Tensor:
    tok = load_tokenizer(model_dir)
    x = torch.from_numpy(vectors())
    return tok.quantize(tok.encode(x))


def test_train_writes_a_loadable_model_folder(run_dir):
    cfg = tiny_cfg()
    result = train_stage(run_dir, cfg)
    model = run_dir / "model"
    for name in ("config.json", "model.safetensors", "train_metrics.json", "checkpoints/last.ckpt",
                 "logs/csv/metrics.csv"):
        assert (model / name).is_file(), name
    assert list((model / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert not (run_dir / ".train").exists()  # the work folder is gone once model/ is in place
    tok = load_tokenizer(model)
    assert isinstance(tok, RQVAE) and tok.config.input_dim == D  # D comes from the data
    metrics = json.loads((model / "train_metrics.json").read_text())
    assert len(metrics["val"]["utilization"]) == 2 and len(metrics["all"]["perplexity"]) == 2
    assert 0 <= metrics["val"]["unique_fraction"] <= 1
    assert result["global_step"] == 3 * int(np.ceil(270 / 64))
    header = (model / "logs/csv/metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/recon_step", "train/commit_step", "train/utilization_step", "val/relative_mse",
                "val/perplexity_l1", "val/unique_fraction"):
        assert key in header, key


def test_same_seed_gives_the_same_codes(tmp_path, run_dir):
    train_stage(run_dir, tiny_cfg(max_epochs=2))
    other = tmp_path / "other"
    other.mkdir()
    write_embeddings(other, vectors())
    train_stage(other, tiny_cfg(max_epochs=2))
    assert torch.equal(codes_of(run_dir / "model"), codes_of(other / "model"))


class Interrupt(RuntimeError):
    pass


class InterruptAfterFirstCheckpoint(L.Callback):
    """Stands in for a kill: fails the run as soon as the first epoch's checkpoint is on disk."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise Interrupt("killed")


def test_interrupted_training_resumes_from_its_last_checkpoint(run_dir):
    steps_per_epoch = int(np.ceil(270 / 64))
    with pytest.raises(Interrupt):
        train_stage(run_dir, tiny_cfg(), callbacks=[InterruptAfterFirstCheckpoint()])
    assert not (run_dir / "model").exists()  # nothing half-written
    last = run_dir / ".train" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=True)["global_step"] == steps_per_epoch
    result = train_stage(run_dir, tiny_cfg())
    assert result["resumed_from_step"] == steps_per_epoch  # the step count continues...
    assert result["global_step"] == 3 * steps_per_epoch  # ...to the same end, not 3 more epochs
    assert not (run_dir / ".train").exists()


def test_a_truncated_checkpoint_starts_over(run_dir):
    with pytest.raises(Interrupt):
        train_stage(run_dir, tiny_cfg(), callbacks=[InterruptAfterFirstCheckpoint()])
    last = run_dir / ".train" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])  # killed while writing
    result = train_stage(run_dir, tiny_cfg())
    assert result["resumed_from_step"] == 0 and (run_dir / "model" / "model.safetensors").is_file()


def test_changed_settings_start_over(run_dir):
    with pytest.raises(Interrupt):
        train_stage(run_dir, tiny_cfg(), callbacks=[InterruptAfterFirstCheckpoint()])
    result = train_stage(run_dir, tiny_cfg(lr=1e-3))
    assert result["resumed_from_step"] == 0


def test_rqkmeans_tokenizer(run_dir):
    result = train_stage(run_dir, tiny_cfg(tokenizer="rqkmeans"))
    tok = load_tokenizer(run_dir / "model")
    assert isinstance(tok, RQKMeans) and tok.config.latent_dim == D
    assert result["tokenizer"] == "rqkmeans"
    assert codes_of(run_dir / "model").shape == (N, 2)


def test_nan_embeddings_fail_cleanly(run_dir):
    x = vectors()
    x[7, 3] = np.nan
    write_embeddings(run_dir, x)
    with pytest.raises(SidsError, match="NaN"):
        train_stage(run_dir, tiny_cfg())
    assert not (run_dir / "model").exists() and not (run_dir / ".train").exists()


def test_missing_embeddings_and_too_few_movies(tmp_path):
    with pytest.raises(SidsError, match="movielens-sids embed"):
        train_stage(tmp_path, tiny_cfg())
    write_embeddings(tmp_path, vectors(n=5))
    with pytest.raises(SidsError, match="codebook_size"):
        train_stage(tmp_path, tiny_cfg())
    assert not (tmp_path / "model").exists()


def test_cli_flags_reach_the_trainer(run_dir):
    from movielens_sids.cli import main

    rc = main(["train", "--run-dir", str(run_dir), "--max-epochs", "1", "--levels", "3", "--codebook-size", "4",
               "--latent-dim", "6", "--batch-size", "128", "--accelerator", "cpu", "--devices", "1",
               "--no-progress-bar", "--set", "model.hidden_dims=[8]", "--set", "model.encoder=mlp"])
    assert rc == 0
    tok = load_tokenizer(run_dir / "model")
    assert (tok.config.levels, tok.config.codebook_size, tok.config.latent_dim) == (3, 4, 6)
    assert json.loads((run_dir / ".stages" / "train.json").read_text())["result"]["global_step"] == 3
