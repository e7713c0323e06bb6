"""The train stage: ``embeddings.parquet`` -> ``model/`` (an RQ-VAE trained with Lightning, or residual k-means).

The RQ-VAE recipe (see ``model/rqvae.py`` for the model's own choices):

1. A seeded split holds out ``val_fraction`` of the movies.
2. Codebooks start from residual k-means on the (randomly initialised) encoder's latents of the
   training movies, so training starts where residual k-means ends instead of from dead codes.
3. Adam with a cosine learning-rate decay, large batches, few epochs; a code idle for
   ``model.dead_code_window`` steps is re-seeded from the batch's residuals.
4. At each epoch end, on the whole validation set: relative MSE and mean cosine of the reconstruction,
   per-level utilization and perplexity, unique fraction (``movielens_sids.metrics``). Early stopping
   watches ``val/relative_mse``.

The embedding matrix lives on the training device as a buffer of the LightningModule: the data loader
yields only row indices, so no batch is copied from the host. In-progress checkpoints and logs go to
``<run>/.train/`` (kept when training is interrupted; the same command with the same settings resumes
from ``last.ckpt``); ``<run>/model/`` is written at the end, in one atomic swap.

May import: artifacts, devices, logs, metrics, model, io, errors, settings; Lightning and torch (and
``lightning_module``) on first use, and for joint training ``joint``, ``data.catalog`` and ``retrieval``. Never
another stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import logs
from .. import model as tokenizers  # torch is imported on first use of tokenizers.RQVAE, ...
from ..artifacts import check_same_movies, read_collab, read_embeddings, tokenizer_input
from ..devices import lightning_devices
from ..errors import SidsError
from ..io import atomic_dir, file_hash, write_json
from ..metrics import knn, tokenizer_metrics
from ..model.config import RQKMeansConfig
from ..settings import TrainConfig, decisive

if TYPE_CHECKING:

    from ..config import Config

log = logging.getLogger(__name__)


WORK_DIR = ".train"
"""Run-folder subfolder with the checkpoints and logs of an unfinished training."""


# ---------------------------------------------------------------------------------------------------
# Data


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of n rows: (train, val) sorted index arrays."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class _Indices:
    """A map-style dataset of row numbers: the loader yields index batches, never vectors."""

    def __init__(self, idx: np.ndarray) -> None:
        self.idx = idx.tolist()

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> int:
        return self.idx[i]


def tokenize(model, x: np.ndarray, *, batch_size: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """codes (N, L) int64 and reconstructions (N, D) of x (N, D) with a tokenizer (on its device)."""
    import torch

    device = next(iter(model.state_dict().values())).device
    codes, recons = [], []
    with torch.no_grad():
        for chunk in torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).split(batch_size):
            c = model.quantize(model.encode(chunk.to(device)))
            codes.append(c.cpu())
            recons.append(model.decode_codes(c).float().cpu())
    return torch.cat(codes).numpy(), torch.cat(recons).numpy()


# ---------------------------------------------------------------------------------------------------
# The LightningModule




# ---------------------------------------------------------------------------------------------------
# Fitting


def resolve_defaults(train_cfg: TrainConfig, model_cfg) -> TrainConfig:
    """Fill the settings left at None (lr, max_epochs) with the values measured best for the encoder."""
    fresh = model_cfg.encoder == "mlp"
    return dataclasses.replace(
        train_cfg,
        lr=train_cfg.lr if train_cfg.lr is not None else (2e-3 if fresh else 3e-5),
        max_epochs=train_cfg.max_epochs if train_cfg.max_epochs is not None else (30 if fresh else 1),
    )


def fit_rqvae(x: np.ndarray, model_cfg, train_cfg: TrainConfig, work_dir: Path, *,
              callbacks: list | None = None, resume: bool = True,
              positives: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
    """Train an RQ-VAE on x (N, D) with Lightning; checkpoints and logs go to ``work_dir``.

    Args:
        x: (N, D) float32 embeddings.
        model_cfg: the ``RQVAEConfig`` (``input_dim`` must equal D).
        train_cfg: optimisation and Trainer settings.
        work_dir: folder for ``checkpoints/`` and ``logs/``; its ``checkpoints/last.ckpt`` is resumed
            from when present and ``resume`` is true.
        callbacks: extra Lightning callbacks.
        resume: continue from ``last.ckpt`` when there is one.
        positives: (N, P) int64 each movie's co-watched movies, -1 padded on the right (the co-watch term,
            ``train.collab_weight``); None: content only.

    Returns:
        The trained ``RQVAE`` (on CPU, eval mode) and a summary (steps, epochs, resumed step, the last
        validation metrics).
    """
    import lightning as L
    import torch

    logs.adopt("lightning")  # Lightning gives its logger a console handler on import: lines would print twice
    work_dir = Path(work_dir)
    train_cfg = resolve_defaults(train_cfg, model_cfg)
    L.seed_everything(train_cfg.seed, workers=True, verbose=False)
    train_idx, val_idx = split_indices(len(x), train_cfg.val_fraction, train_cfg.seed)
    if len(train_idx) < model_cfg.codebook_size:
        raise SidsError(f"{len(train_idx)} training movies are fewer than model.codebook_size="
                        f"{model_cfg.codebook_size}; use a smaller codebook or more movies")
    from .lightning_module import RQVAEModule  # imports Lightning: only when training

    module = RQVAEModule(dataclasses.asdict(model_cfg), dataclasses.asdict(train_cfg),
                        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                        torch.from_numpy(val_idx), torch.from_numpy(train_idx),
                        None if positives is None else torch.from_numpy(positives))
    train_loader, val_loader = _loaders(train_idx, val_idx, train_cfg)
    trainer, checkpoint, early = _trainer(train_cfg, work_dir, callbacks or [], co_watch=positives is not None)
    ckpt_path, resumed_step = _resume_point(work_dir / "checkpoints" / "last.ckpt", resume)
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    model = module.model.cpu().eval()
    summary = {
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "resumed_from_step": resumed_step,
        "stopped_early": bool(early.stopped_epoch),
        "best_checkpoint": Path(checkpoint.best_model_path).name if checkpoint.best_model_path else None,
        "val": module.last_val,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
    }
    return model, summary


def _loaders(train_idx: np.ndarray, val_idx: np.ndarray, train_cfg: TrainConfig) -> tuple[Any, Any]:
    """The training loader (shuffled by its own generator, seeded with ``train.seed``) and the validation loader."""
    import torch
    from torch.utils.data import DataLoader

    gen = torch.Generator().manual_seed(train_cfg.seed)
    train_loader = DataLoader(_Indices(train_idx), batch_size=train_cfg.batch_size, shuffle=True, generator=gen)
    val_loader = DataLoader(_Indices(val_idx), batch_size=max(train_cfg.batch_size, 8192), shuffle=False)
    return train_loader, val_loader


def _trainer(train_cfg: TrainConfig, work_dir: Path, callbacks: list, *, co_watch: bool) -> tuple[Any, Any, Any]:
    """The Lightning Trainer with its checkpoint (best by validation relative MSE, and last), early stopping
    and CSV + TensorBoard loggers under ``work_dir``. Returns (trainer, checkpoint, early stopping)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    checkpoint = ModelCheckpoint(dirpath=work_dir / "checkpoints", filename="best-{epoch:03d}",
                                 monitor="val/relative_mse", mode="min", save_top_k=1, save_last=True)
    # With the co-watch term the reconstruction is no longer the only goal: train for max_epochs.
    patience = int(train_cfg.max_epochs or 1) + 1 if co_watch else train_cfg.patience
    early = EarlyStopping(monitor="val/relative_mse", mode="min", patience=patience, min_delta=train_cfg.min_delta)
    loggers = [CSVLogger(work_dir / "logs", name="csv", version=""),
               TensorBoardLogger(work_dir / "logs", name="tensorboard", version="", default_hp_metric=False)]
    trainer = L.Trainer(
        accelerator=train_cfg.accelerator, devices=lightning_devices(train_cfg.devices), strategy=train_cfg.strategy,
        precision=train_cfg.precision, max_epochs=train_cfg.max_epochs, callbacks=[checkpoint, early, *callbacks],
        logger=loggers, enable_model_summary=False,
        enable_progress_bar=train_cfg.progress_bar and sys.stderr.isatty(),  # a log file gets no redrawn bar
        num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=work_dir,
    )
    return trainer, checkpoint, early


def _resume_point(last: Path, resume: bool) -> tuple[str | None, int]:
    """The checkpoint to continue from (``last``, when ``resume`` and it loads) and its global step."""
    import torch

    if not (resume and last.is_file()):
        return None, 0
    try:
        step = int(torch.load(last, map_location="cpu", weights_only=True).get("global_step", 0))
    except Exception as e:  # a kill during the write leaves a truncated file: start over
        log.warning("cannot resume from %s (%s: %s); starting over", last, type(e).__name__, e)
        last.unlink()
        return None, 0
    log.info("resuming from %s (step %d)", last, step)
    return str(last), step


def fit_rqkmeans(x: np.ndarray, model_cfg, train_cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """Fit residual k-means on all of x (N, D) (no validation split: nothing is learned by gradient)."""
    cfg = RQKMeansConfig(input_dim=x.shape[1], levels=model_cfg.levels, codebook_size=model_cfg.codebook_size,
                         kmeans_iters=model_cfg.kmeans_iters)
    if len(x) < cfg.codebook_size:
        raise SidsError(f"{len(x)} movies are fewer than model.codebook_size={cfg.codebook_size}")
    return tokenizers.RQKMeans.fit(x, cfg, seed=train_cfg.seed).eval(), {"global_step": 0, "epochs": 0}


# ---------------------------------------------------------------------------------------------------
# The stage


COWATCH_NEIGHBORS = 10
"""How many nearest movies by collaborative vector each movie draws its co-watch partner from."""


def cowatch_positives(run_dir: Path, movie_ids: np.ndarray, train_cfg: TrainConfig) -> tuple[np.ndarray | None, dict]:
    """(N, P) the co-watched movies of each movie (row order of ``movie_ids``): its ``COWATCH_NEIGHBORS``
    nearest movies by collaborative vector among the movies with training ratings, -1 for a movie without;
    ``(None, {})`` when the run is content only (no ``collab.parquet`` or ``train.collab_weight`` 0)."""
    collab = read_collab(run_dir) if train_cfg.collab_weight > 0 else None
    if collab is None:
        return None, {}
    check_same_movies(movie_ids, run_dir / "embeddings.parquet", collab.movie_ids, collab.path, "collab")
    warm = np.flatnonzero(collab.counts > 0)
    out = np.full((len(movie_ids), COWATCH_NEIGHBORS), -1, dtype=np.int64)
    if len(warm) > COWATCH_NEIGHBORS:
        out[warm] = warm[knn(collab.vectors[warm], COWATCH_NEIGHBORS)]
    return out, {"collab": {"movies_with_partners": int(len(warm)), "weight": train_cfg.collab_weight,
                            "split": collab.split}}


def _fit_joint(run_dir: Path, movie_ids: np.ndarray, x: np.ndarray, model, positives: np.ndarray | None,
               cfg: Config) -> tuple[Any, Any, dict[str, Any]]:
    """The trained tokenizer, trained on with a recommender (``movielens_sids.joint``) over the training windows of
    the benchmark's split (the split ``collab.parquet`` was built from, checked by its fingerprint): the tokenizer,
    the recommender and a summary."""
    from ..data.catalog import benchmark_ratings
    from ..joint import fit_joint
    from ..retrieval.lightning_modules import training_windows
    from ..retrieval.sequences import split_of, train_fingerprint

    collab = read_collab(run_dir)
    _, ratings = benchmark_ratings(cfg.data, cfg.retrieval.ratings, cfg.retrieval.dataset)
    if collab is None or ratings is None:
        raise SidsError("joint.cycles needs the ratings' training interactions: set collab.method: als "
                        "(and a dataset with ratings, or retrieval.ratings)")
    split = split_of(ratings, movie_ids, cfg.retrieval)
    if train_fingerprint(split) != collab.split.get("train_fingerprint"):
        raise SidsError(f"{collab.path} was built from another split than retrieval.* describes: run collab again")
    cap, m = cfg.retrieval.max_train_items, cfg.joint.max_history
    windows = training_windows([t[-cap:] if cap else t for t in split.train], m)
    log.info("joint training: %d cycles over %d training windows", cfg.joint.cycles, len(windows))
    return fit_joint(model, x, windows, cfg.joint, seed=cfg.train.seed, positives=positives,
                     collab_weight=cfg.train.collab_weight, collab_temperature=cfg.train.collab_temperature,
                     accelerator=cfg.train.accelerator)


def _fingerprint(emb_path: Path, cfg: Config) -> dict[str, Any]:
    """What an unfinished training in ``.train/`` was started from: a resume needs the same embeddings
    and settings. (The pipeline's record says whether ``model/`` is up to date; this guards the
    checkpoints of a training that never finished, which have no record.)"""
    collab = emb_path.parent / "collab.parquet"
    reads_collab = cfg.train.collab_weight > 0 or cfg.model.collab_input > 0
    return {"embeddings": file_hash(emb_path), "model": dataclasses.asdict(cfg.model), "train": decisive(cfg.train),
            "collab": file_hash(collab) if collab.exists() and reads_collab else None}


def _input_and_shape(run_dir: Path, emb, cfg: Config) -> tuple[np.ndarray, Any]:
    """What the tokenizer will read, (N, D) or with collaborative vectors (N, D + F) (``model.collab_input``),
    and the model's settings with ``input_dim`` and ``collab_dim`` read from it."""
    x, collab_dim = tokenizer_input(run_dir, emb, collab_input=cfg.model.collab_input,
                                    shrinkage=cfg.model.collab_shrinkage)
    if collab_dim:
        if cfg.train.tokenizer != "rqvae":
            raise SidsError("model.collab_input needs train.tokenizer: rqvae (residual k-means reads the "
                            "embeddings alone); set model.collab_input=0 or train.tokenizer=rqvae")
        log.info("tokenizer input: %d-d embeddings + %d-d collaborative vectors (weight %g, shrinkage %g)",
                 emb.x.shape[1], collab_dim, cfg.model.collab_input, cfg.model.collab_shrinkage)
    # D comes from the data; a local copy keeps the run's recorded settings independent of it.
    return x, cfg.model.for_input(int(x.shape[1]), collab_dim)


def _start_or_resume(work: Path, fingerprint: dict[str, Any]) -> None:
    """Keep ``work`` (an interrupted training's checkpoints) only if it was started from ``fingerprint``."""
    fp_path = work / "fingerprint.json"
    try:
        previous = json.loads(fp_path.read_text())
    except (OSError, ValueError):
        previous = None
    if previous != json.loads(json.dumps(fingerprint)):
        if work.exists():
            log.info("settings or embeddings changed since the interrupted training: starting over")
            shutil.rmtree(work)
        write_json(fp_path, fingerprint)


def train_stage(run_dir: Path, cfg: Config, *, callbacks: list | None = None) -> dict[str, Any]:
    """Train the tokenizer on ``run_dir/embeddings.parquet`` and write ``run_dir/model/``.

    Args:
        run_dir: the run folder.
        cfg: the run's settings; the model is built with ``input_dim`` set to the embeddings' dimension.
        callbacks: extra Lightning callbacks (tests use one to interrupt training).

    Returns:
        A summary: tokenizer, steps, epochs, seconds, the final validation metrics.
    """
    run_dir = Path(run_dir)
    emb = read_embeddings(run_dir)
    emb_path = emb.path
    x, model_cfg = _input_and_shape(run_dir, emb, cfg)
    if len(x) < model_cfg.codebook_size:
        raise SidsError(f"{emb_path} holds {len(x)} movies, fewer than model.codebook_size="
                        f"{model_cfg.codebook_size}; use a smaller codebook")
    t0 = time.perf_counter()
    work = run_dir / WORK_DIR
    recommender = None
    if cfg.train.tokenizer == "rqkmeans":
        if cfg.joint.cycles:
            raise SidsError("joint.cycles needs train.tokenizer: rqvae (residual k-means is not trained)")
        model, summary = fit_rqkmeans(x, model_cfg, cfg.train)
    else:
        _start_or_resume(work, _fingerprint(emb_path, cfg))
        positives, collab_info = cowatch_positives(run_dir, emb.movie_ids, cfg.train)
        model, summary = fit_rqvae(x, model_cfg, cfg.train, work, callbacks=callbacks, positives=positives)
        summary.update(collab_info)
        if cfg.joint.cycles:
            model, recommender, summary["joint"] = _fit_joint(run_dir, emb.movie_ids, x, model, positives, cfg)
    seconds = time.perf_counter() - t0
    codes, x_hat = tokenize(model, x)
    summary.update(tokenizer=cfg.train.tokenizer, train_seconds=round(seconds, 3), n_movies=int(len(x)),
                   all=tokenizer_metrics(x, x_hat, codes, model_cfg.codebook_size))
    with atomic_dir(run_dir / "model") as tmp:
        tokenizers.save_pretrained(model, tmp)
        if recommender is not None:
            from ..joint import RECOMMENDER, save_recommender

            save_recommender(recommender, cfg.joint, tmp / RECOMMENDER)
        write_json(tmp / "train_metrics.json", summary)
        for sub in ("checkpoints", "logs"):
            if (work / sub).exists():
                shutil.copytree(work / sub, tmp / sub)
    shutil.rmtree(work, ignore_errors=True)
    log.info("model/ written (%s, %d steps, %.1fs; all movies: relative MSE %.4f, unique %.4f)",
             cfg.train.tokenizer, summary["global_step"], seconds, summary["all"]["relative_mse"],
             summary["all"]["unique_fraction"])
    return {k: summary[k] for k in ("tokenizer", "global_step", "epochs", "train_seconds", "resumed_from_step")
            if k in summary} | {"unique_fraction": summary["all"]["unique_fraction"],
                                "relative_mse": summary["all"]["relative_mse"]}


# ---------------------------------------------------------------------------------------------------
# CLI

