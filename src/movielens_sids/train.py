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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from .errors import SidsError

if TYPE_CHECKING:
    import torch

    from .config import Config

log = logging.getLogger(__name__)

HELP = "train the RQ-VAE (or residual k-means) on embeddings.parquet and write model/"

WORK_DIR = ".train"
"""Run-folder subfolder with the checkpoints and logs of an unfinished training."""


@dataclass
class TrainConfig:
    """Optimisation and the Lightning Trainer."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"accelerator", "devices", "strategy", "num_workers", "progress_bar"})

    tokenizer: Literal["rqvae", "rqkmeans"] = "rqvae"
    """rqvae (learned encoder + residual quantizer + decoder) or rqkmeans (residual k-means on FAISS)."""
    seed: int = 0
    """Seeds the split, the k-means init, the weights and the batch order."""
    val_fraction: float = 0.1
    """Share of the movies held out for validation (early stopping and the epoch-end metrics)."""
    max_epochs: int | None = None
    """Upper bound on passes over the training movies. None: 1 for the residual and identity encoders
    (they start at residual k-means and need little), 30 for mlp (with early stopping)."""
    batch_size: int = 4096
    """Movies per step; large batches see every code each step and keep steps cheap."""
    lr: float | None = None
    """Peak Adam learning rate (cosine decay to lr_min_ratio * lr over max_epochs). None: 3e-5 for the
    residual and identity encoders, 2e-3 for mlp. Embedding coordinates are ~0.05 (unit vectors in
    384-d): Adam steps of 2e-4 moved codes and encoder off their k-means start within an epoch (higher
    error, fewer unique IDs), while 3e-5 refines them; a fresh mlp encoder needs ~2e-3."""
    lr_min_ratio: float = 0.05
    """Final learning rate as a fraction of lr."""
    weight_decay: float = 0.0
    """AdamW weight decay (on the encoder/decoder weights only, never on the codebooks)."""
    patience: int = 5
    """Early stopping: epochs without a better val/relative_mse before training stops."""
    min_delta: float = 1e-4
    """Early stopping: smallest change of val/relative_mse that counts as better."""
    kmeans_init: bool = True
    """Initialise the codebooks by residual k-means on the latents (off: small random codes)."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, mps."""
    devices: str = "auto"
    """Lightning devices: auto, 1, 2, ..."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, ..."""
    precision: str = "32-true"
    """Lightning precision: 32-true, bf16-mixed, 16-mixed, ..."""
    num_workers: int = 0
    """Unused with on-device data; kept for Lightning parity."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"train.val_fraction: must be between 0 and 1, got {self.val_fraction}")
        for name in ("max_epochs", "batch_size", "patience"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"train.lr: must be > 0, got {self.lr}")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ValueError(f"train.lr_min_ratio: must be in [0, 1], got {self.lr_min_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.num_workers < 0:
            raise ValueError(f"train.num_workers: must be >= 0, got {self.num_workers}")


# ---------------------------------------------------------------------------------------------------
# Data


def read_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """movie ids (N,) int64 and vectors (N, D) float32 of ``embeddings.parquet``; bad input is a SidsError."""
    import pyarrow as pa

    from .io import read_parquet

    table = read_parquet(path, "embed")
    for col in ("movie_id", "embedding"):
        if col not in table.column_names:
            raise SidsError(f"{path} has no {col!r} column; re-run `movielens-sids embed`")
    col = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type) or not pa.types.is_floating(col.type.value_type):
        raise SidsError(f"{path}: column 'embedding' must be a fixed-size list of floats, got {col.type}")
    if len(col) == 0:
        raise SidsError(f"{path} holds no movies")
    if col.null_count:
        raise SidsError(f"{path}: {col.null_count} movies have no embedding")
    dim = col.type.list_size
    x = np.array(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), dim)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise SidsError(f"{path}: {int(bad.sum())} embeddings hold NaN or infinite values "
                        f"(first at row {int(np.argmax(bad))})")
    ids = table.column("movie_id").to_numpy().astype(np.int64)
    return ids, x


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


def tokenizer_metrics(x: np.ndarray, x_hat: np.ndarray, codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Reconstruction, per-level utilization/perplexity and collisions of codes (N, L) for x (N, D)."""
    from . import metrics as M

    col = M.collision_stats(codes)
    return {
        "relative_mse": M.relative_mse(x, x_hat),
        "mean_cosine": M.mean_cosine(x, x_hat),
        "utilization": M.utilization(codes, codebook_size),
        "perplexity": M.perplexity(codes, codebook_size),
        "unique_fraction": col["unique_fraction"],
        "max_group_size": col["max_group_size"],
    }


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


def _lightning_module():
    """The LightningModule class (built lazily so importing this module does not import Lightning)."""
    import lightning as L
    import torch

    from .model import RQVAE, RQVAEConfig

    class RQVAEModule(L.LightningModule):
        """Trains an ``RQVAE`` on rows of a data matrix held on the module's device."""

        def __init__(self, model_config: dict, train_config: dict, data: torch.Tensor,
                     val_idx: torch.Tensor, init_idx: torch.Tensor) -> None:
            super().__init__()
            self.save_hyperparameters({"model": model_config, "train": train_config})
            self.model = RQVAE(RQVAEConfig(**model_config))
            self.train_cfg = TrainConfig(**train_config)
            # The whole embedding matrix and the split on the device; not part of the checkpoint.
            self.register_buffer("data", data, persistent=False)  # (N, D)
            self.register_buffer("val_idx", val_idx, persistent=False)
            self.register_buffer("init_idx", init_idx, persistent=False)
            # Saved in checkpoints so a resumed run does not redo the k-means initialisation.
            self.register_buffer("initialized", torch.tensor(False))
            self.reseed_rng = torch.Generator().manual_seed(self.train_cfg.seed + 1)
            self.last_val: dict[str, Any] = {}

        def on_fit_start(self) -> None:
            if self.initialized.item():
                return
            if self.train_cfg.kmeans_init:
                gen = torch.Generator().manual_seed(self.train_cfg.seed)
                t0 = time.perf_counter()
                self.model.init_codebooks(self.data[self.init_idx], generator=gen)
                log.info("codebooks initialised by residual k-means in %.1fs", time.perf_counter() - t0)
            # Every process must start from the same codes (they may differ in the last bits on GPUs).
            cb = self.trainer.strategy.broadcast(self.model.quantizer.codebooks.data, src=0)
            self.model.quantizer.codebooks.data.copy_(cb)
            self.initialized.fill_(True)

        def shared_step(self, idx: torch.Tensor, stage: str):
            x = self.data[idx]  # (B, D)
            out = self.model(x)
            k = self.model.config.codebook_size
            used = torch.zeros(out.codes.shape[1], k, device=x.device).scatter_(1, out.codes.T, 1.0)  # (L, K)
            on_step = stage == "train"
            self.log(f"{stage}/loss", out.losses.total, on_step=on_step, on_epoch=True, prog_bar=True,
                     batch_size=len(idx))
            self.log(f"{stage}/recon", out.losses.recon, on_step=on_step, on_epoch=True, batch_size=len(idx))
            self.log(f"{stage}/commit", out.losses.commit, on_step=on_step, on_epoch=True, batch_size=len(idx))
            self.log(f"{stage}/codebook", out.losses.codebook, on_step=on_step, on_epoch=True, batch_size=len(idx))
            self.log(f"{stage}/utilization", used.mean(), on_step=on_step, on_epoch=True, batch_size=len(idx))
            return out

        def training_step(self, idx: torch.Tensor, batch_idx: int):
            out = self.shared_step(idx, "train")
            return {"loss": out.losses.total, "codes": out.codes, "residuals": out.residuals}

        def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
            codes, residuals = outputs["codes"], outputs["residuals"]  # (B, L), (L, B, H)
            if self.trainer.world_size > 1:  # every process re-seeds the same codes from the same residuals
                codes = self.all_gather(codes).flatten(0, 1)
                residuals = self.all_gather(residuals).transpose(0, 1).flatten(1, 2)
            n = self.model.quantizer.reseed_dead_codes(codes, residuals, generator=self.reseed_rng)
            if n:
                self.log("train/reseeded", float(n), on_step=True, on_epoch=False, reduce_fx="sum")

        def validation_step(self, idx: torch.Tensor, batch_idx: int) -> None:
            self.shared_step(idx, "val")

        def on_validation_epoch_end(self) -> None:
            if self.trainer.sanity_checking:
                return
            x = self.data[self.val_idx]
            with torch.no_grad():
                codes = self.model.quantize(self.model.encode(x))
                x_hat = self.model.decode_codes(codes)
            m = tokenizer_metrics(x.float().cpu().numpy(), x_hat.float().cpu().numpy(), codes.cpu().numpy(),
                                  self.model.config.codebook_size)
            self.last_val = m
            flat = {"val/mean_cosine": m["mean_cosine"],
                    "val/unique_fraction": m["unique_fraction"]}
            for level, (u, p) in enumerate(zip(m["utilization"], m["perplexity"]), 1):
                flat[f"val/utilization_l{level}"] = u
                flat[f"val/perplexity_l{level}"] = p
            # Identical on every process (whole validation set), so no reduction is needed.
            self.log_dict(flat, prog_bar=False, sync_dist=False, rank_zero_only=False)
            self.log("val/relative_mse", m["relative_mse"], prog_bar=True)

        def configure_optimizers(self):
            cfg = self.train_cfg
            codebooks = [self.model.quantizer.codebooks]
            weights = [p for n, p in self.model.named_parameters() if not n.startswith("quantizer.")]
            groups = [{"params": weights, "weight_decay": cfg.weight_decay},
                      {"params": codebooks, "weight_decay": 0.0}]
            opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)
            total = max(1, int(self.trainer.estimated_stepping_batches))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.lr * cfg.lr_min_ratio)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def on_save_checkpoint(self, checkpoint: dict) -> None:
            checkpoint["reseed_rng_state"] = self.reseed_rng.get_state()

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            state = checkpoint.get("reseed_rng_state")
            if state is not None:
                self.reseed_rng.set_state(state)

    return RQVAEModule


# ---------------------------------------------------------------------------------------------------
# Fitting


def _devices(value: str) -> int | str | list[int]:
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    try:
        return int(value)
    except ValueError:
        raise SidsError(f"train.devices: expected auto, a count or a list like 0,1, got {value!r}") from None


def resolve_defaults(train_cfg: TrainConfig, model_cfg) -> TrainConfig:
    """Fill the settings left at None (lr, max_epochs) with the values measured best for the encoder."""
    fresh = model_cfg.encoder == "mlp"
    return dataclasses.replace(
        train_cfg,
        lr=train_cfg.lr if train_cfg.lr is not None else (2e-3 if fresh else 3e-5),
        max_epochs=train_cfg.max_epochs if train_cfg.max_epochs is not None else (30 if fresh else 1),
    )


def fit_rqvae(x: np.ndarray, model_cfg, train_cfg: TrainConfig, work_dir: Path, *,
              callbacks: list | None = None, resume: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train an RQ-VAE on x (N, D) with Lightning; checkpoints and logs go to ``work_dir``.

    Args:
        x: (N, D) float32 embeddings.
        model_cfg: the ``RQVAEConfig`` (``input_dim`` must equal D).
        train_cfg: optimisation and Trainer settings.
        work_dir: folder for ``checkpoints/`` and ``logs/``; its ``checkpoints/last.ckpt`` is resumed
            from when present and ``resume`` is true.
        callbacks: extra Lightning callbacks.
        resume: continue from ``last.ckpt`` when there is one.

    Returns:
        The trained ``RQVAE`` (on CPU, eval mode) and a summary (steps, epochs, resumed step, the last
        validation metrics).
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from torch.utils.data import DataLoader

    work_dir = Path(work_dir)
    train_cfg = resolve_defaults(train_cfg, model_cfg)
    L.seed_everything(train_cfg.seed, workers=True, verbose=False)
    train_idx, val_idx = split_indices(len(x), train_cfg.val_fraction, train_cfg.seed)
    if len(train_idx) < model_cfg.codebook_size:
        raise SidsError(f"{len(train_idx)} training movies are fewer than model.codebook_size="
                        f"{model_cfg.codebook_size}; use a smaller codebook or more movies")
    module_cls = _lightning_module()
    module = module_cls(dataclasses.asdict(model_cfg), dataclasses.asdict(train_cfg),
                        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                        torch.from_numpy(val_idx), torch.from_numpy(train_idx))
    gen = torch.Generator().manual_seed(train_cfg.seed)
    train_loader = DataLoader(_Indices(train_idx), batch_size=train_cfg.batch_size, shuffle=True, generator=gen,
                              num_workers=train_cfg.num_workers)
    val_loader = DataLoader(_Indices(val_idx), batch_size=max(train_cfg.batch_size, 8192), shuffle=False,
                            num_workers=train_cfg.num_workers)
    ckpt_dir = work_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch:03d}", monitor="val/relative_mse",
                                 mode="min", save_top_k=1, save_last=True)
    early = EarlyStopping(monitor="val/relative_mse", mode="min", patience=train_cfg.patience,
                          min_delta=train_cfg.min_delta)
    loggers = [CSVLogger(work_dir / "logs", name="csv", version=""),
               TensorBoardLogger(work_dir / "logs", name="tensorboard", version="", default_hp_metric=False)]
    trainer = L.Trainer(
        accelerator=train_cfg.accelerator, devices=_devices(train_cfg.devices), strategy=train_cfg.strategy,
        precision=train_cfg.precision, max_epochs=train_cfg.max_epochs, callbacks=[checkpoint, early,
                                                                                    *(callbacks or [])],
        logger=loggers, enable_progress_bar=train_cfg.progress_bar, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=work_dir,
    )
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    resumed_step = 0
    if ckpt_path:
        try:
            resumed_step = int(torch.load(last, map_location="cpu", weights_only=True).get("global_step", 0))
            log.info("resuming from %s (step %d)", last, resumed_step)
        except Exception as e:  # a kill during the write leaves a truncated file: start over
            log.warning("cannot resume from %s (%s: %s); starting over", last, type(e).__name__, e)
            last.unlink()
            ckpt_path = None
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


def fit_rqkmeans(x: np.ndarray, model_cfg, train_cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """Fit residual k-means on all of x (N, D) (no validation split: nothing is learned by gradient)."""
    from .model import RQKMeans, RQKMeansConfig

    cfg = RQKMeansConfig(input_dim=x.shape[1], levels=model_cfg.levels, codebook_size=model_cfg.codebook_size,
                         kmeans_iters=model_cfg.kmeans_iters)
    if len(x) < cfg.codebook_size:
        raise SidsError(f"{len(x)} movies are fewer than model.codebook_size={cfg.codebook_size}")
    return RQKMeans.fit(x, cfg, seed=train_cfg.seed).eval(), {"global_step": 0, "epochs": 0}


# ---------------------------------------------------------------------------------------------------
# The stage


def _fingerprint(emb_path: Path, cfg: Config) -> dict[str, Any]:
    from .io import file_hash

    skip = TrainConfig.RUNTIME_FIELDS
    return {"embeddings": file_hash(emb_path), "model": dataclasses.asdict(cfg.model),
            "train": {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in skip}}


def train_stage(run_dir: Path, cfg: Config, *, callbacks: list | None = None) -> dict[str, Any]:
    """Train the tokenizer on ``run_dir/embeddings.parquet`` and write ``run_dir/model/``.

    Args:
        run_dir: the run folder.
        cfg: the run's settings; the model is built with ``input_dim`` set to the embeddings' dimension.
        callbacks: extra Lightning callbacks (tests use one to interrupt training).

    Returns:
        A summary: tokenizer, steps, epochs, seconds, the final validation metrics.
    """
    from .io import atomic_dir, write_json

    run_dir = Path(run_dir)
    emb_path = run_dir / "embeddings.parquet"
    _, x = read_embeddings(emb_path)
    # D comes from the data; a local copy keeps the run's recorded settings independent of it.
    model_cfg = dataclasses.replace(cfg.model, input_dim=int(x.shape[1]))
    if len(x) < model_cfg.codebook_size:
        raise SidsError(f"{emb_path} holds {len(x)} movies, fewer than model.codebook_size="
                        f"{model_cfg.codebook_size}; use a smaller codebook")
    t0 = time.perf_counter()
    work = run_dir / WORK_DIR
    if cfg.train.tokenizer == "rqkmeans":
        model, summary = fit_rqkmeans(x, model_cfg, cfg.train)
    else:
        fingerprint = _fingerprint(emb_path, cfg)
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
        model, summary = fit_rqvae(x, model_cfg, cfg.train, work, callbacks=callbacks)
    seconds = time.perf_counter() - t0
    codes, x_hat = tokenize(model, x)
    summary.update(tokenizer=cfg.train.tokenizer, train_seconds=round(seconds, 3), n_movies=int(len(x)),
                   all=tokenizer_metrics(x, x_hat, codes, model_cfg.codebook_size))
    with atomic_dir(run_dir / "model") as tmp:
        model.save_pretrained(tmp)
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .config import flag

    flag(p, "--tokenizer", key="train.tokenizer", choices=["rqvae", "rqkmeans"],
         help="rqvae (default) or rqkmeans (residual k-means on FAISS)")
    flag(p, "--max-epochs", key="train.max_epochs", type=int, help="upper bound on epochs")
    flag(p, "--batch-size", key="train.batch_size", type=int, help="movies per step")
    flag(p, "--lr", key="train.lr", type=float, help="peak learning rate")
    flag(p, "--seed", key="train.seed", type=int, help="seed of the split, init and weights")
    flag(p, "--levels", key="model.levels", type=int, help="L, residual levels")
    flag(p, "--codebook-size", key="model.codebook_size", type=int, help="K, codes per level")
    flag(p, "--latent-dim", key="model.latent_dim", type=int, help="H, latent width")
    flag(p, "--accelerator", key="train.accelerator", type=str, help="Lightning accelerator (auto, cpu, gpu, mps)")
    flag(p, "--devices", key="train.devices", type=str, help="Lightning devices (auto, 1, 2, 0,1)")
    flag(p, "--strategy", key="train.strategy", type=str, help="Lightning strategy (auto, ddp, ...)")
    flag(p, "--precision", key="train.precision", type=str, help="Lightning precision (32-true, bf16-mixed, ...)")
    flag(p, "--no-progress-bar", key="train.progress_bar", action="store_false", help="hide the progress bar")


def command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> None:
    from .stages import execute

    execute("train", cfg, run_dir)
