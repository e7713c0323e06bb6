"""The LightningModule that trains an ``RQVAE``: one shared step, epoch-end metrics on the whole validation set.

At module level (not built inside a function) and in its own module: only ``train.fit_rqvae``
imports it, on first use, so that importing the stages (and ``movielens-sids --help``) does not
import Lightning.

May import: lightning, torch, model, metrics, settings.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch

from ..metrics import tokenizer_metrics
from ..model.config import RQVAEConfig
from ..model.groups import NearestPrototypeCache, subset_links
from ..model.rqvae import RQVAE, FirstLevel, info_nce
from ..settings import TrainConfig

log = logging.getLogger(__name__)


class RQVAEModule(L.LightningModule):
    """Trains an ``RQVAE`` on rows of a data matrix held on the module's device."""

    def __init__(self, model_config: dict, train_config: dict, data: torch.Tensor,
                 val_idx: torch.Tensor, init_idx: torch.Tensor, positives: torch.Tensor | None = None) -> None:
        super().__init__()
        self.save_hyperparameters({"model": model_config, "train": train_config})
        self.model = RQVAE(RQVAEConfig(**model_config))
        self.train_cfg = TrainConfig(**train_config)
        # The whole embedding matrix and the split on the device; not part of the checkpoint.
        self.register_buffer("data", data, persistent=False)  # (N, D)
        self.register_buffer("val_idx", val_idx, persistent=False)
        self.register_buffer("init_idx", init_idx, persistent=False)
        # (N, P) each movie's co-watched movies (-1: none, e.g. no rating), for the co-watch term.
        self.register_buffer("positives", positives if positives is not None
                             else torch.full((len(data), 1), -1, dtype=torch.long), persistent=False)
        self.pick_rng = torch.Generator().manual_seed(self.train_cfg.seed + 2)
        # Saved in checkpoints so a resumed run does not redo the k-means initialisation.
        self.register_buffer("initialized", torch.tensor(False))
        self.reseed_rng = torch.Generator().manual_seed(self.train_cfg.seed + 1)
        self.last_val: dict[str, Any] = {}
        # A grouped first level searches thousands of prototypes: once for the initialisation's rows, then
        # for every batch. The rows come back moved a little, and most answers are found among a few cached
        # candidates (exactly), from the initialisation's search on.
        q = self.model.quantizer
        self.first_cache = NearestPrototypeCache(len(data), q.prototypes.shape[1]) if q.grouped else None

    def on_fit_start(self) -> None:
        if self.initialized.item():
            return
        if self.train_cfg.kmeans_init:
            self.fit_codebooks("initialised")
        self.initialized.fill_(True)

    def fit_codebooks(self, what: str) -> None:
        """Residual k-means on the current latents of the training movies, the same on every process."""
        gen = torch.Generator().manual_seed(self.train_cfg.seed)
        t0 = time.perf_counter()
        links = None
        if self.train_cfg.collab_weight > 0 and int(self.positives.max()) >= 0:  # co-watched movies stay together too
            links = subset_links(self.positives, self.init_idx)  # (N_init, P)
        if self.first_cache is not None:  # new prototypes: the initialisation's search anchors the cache again
            self.first_cache.clear()
        self.model.init_codebooks(self.data[self.init_idx], links=links, generator=gen,
                                  first_level_for=None if self.first_cache is None
                                  else lambda rows: self.first_level(self.init_idx[rows]))
        log.info("codebooks %s by residual k-means in %.1fs", what, time.perf_counter() - t0)
        # Every process must start from the same codes (they may differ in the last bits on GPUs).
        cb = self.trainer.strategy.broadcast(self.model.quantizer.codebooks.data, src=0)
        self.model.quantizer.codebooks.data.copy_(cb)

    def on_train_end(self) -> None:
        if self.first_cache is not None and self.first_cache.calls:
            log.debug("nearest level-1 prototype from cached candidates for %.1f%% of %d rows",
                      100 * self.first_cache.hits / self.first_cache.calls, self.first_cache.calls)

    def on_train_epoch_end(self) -> None:
        # The co-watch term moves the latents away from the content geometry the codebooks were fitted to;
        # halfway, the codebooks are fitted again to where the latents now are, then trained with them.
        refit = self.train_cfg.collab_weight > 0 and int(self.positives.max()) >= 0
        if refit and self.current_epoch + 1 == max(1, int(self.trainer.max_epochs) // 2):
            self.fit_codebooks("re-fitted to the co-watch-trained latents")

    def first_level(self, idx: torch.Tensor) -> FirstLevel | None:
        """The level-1 rule for the latents of rows ``idx``: the quantizer's own, through the cache when grouped."""
        if self.first_cache is None:
            return None
        q = self.model.quantizer
        return lambda z: q.prototype_codes[self.first_cache.nearest(idx, z, q.prototypes)]

    def shared_step(self, idx: torch.Tensor, stage: str):
        x = self.data[idx]  # (B, D)
        out = self.model(x, self.first_level(idx))
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

    def cowatch_loss(self, idx: torch.Tensor, latent: torch.Tensor) -> torch.Tensor | None:
        """The co-watch term: InfoNCE between each batch movie's latent (B, H) and the latent of one of its
        co-watched movies, drawn at random; movies without co-watched movies take no part."""
        pos = self.positives[idx]  # (B, P)
        n_pos = (pos >= 0).sum(1)  # (B,)
        has = n_pos > 0
        if int(has.sum()) < 2:
            return None
        draw = (torch.rand(int(has.sum()), generator=self.pick_rng) * n_pos[has].cpu()).long().to(idx.device)
        partner = pos[has].gather(1, draw[:, None]).squeeze(1)  # (B',) positives are packed to the left
        return info_nce(latent[has], self.model.encode(self.data[partner]), self.train_cfg.collab_temperature)

    def training_step(self, idx: torch.Tensor, batch_idx: int):
        out = self.shared_step(idx, "train")
        loss = out.losses.total
        if self.train_cfg.collab_weight > 0:
            cw = self.cowatch_loss(idx, out.latent)
            if cw is not None:
                self.log("train/cowatch", cw, on_step=True, on_epoch=True, batch_size=len(idx))
                loss = loss + self.train_cfg.collab_weight * cw
        return {"loss": loss, "codes": out.codes, "residuals": out.residuals}

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
            codes = self.model.quantize(self.model.encode(x), self.first_level(self.val_idx))
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
