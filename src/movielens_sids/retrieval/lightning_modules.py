"""Lightning training of the next-movie models, with early stopping on validation Recall@10.

Both models (``GenerativeRetriever``, ``SASRec``) expose ``loss(windows)`` and
``recommend(history, k, beam_size=)``; this module holds everything that is the same for them:
the windows of the training sequences, the validation pass, the optimiser and the callback that
keeps the best epoch's weights in memory (no checkpoint files in the run folder).

May import: Lightning, torch and this package's content and metrics.
"""

from __future__ import annotations

import copy
import logging

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .content import seen_mask
from .metrics import ranking_metrics

log = logging.getLogger(__name__)


def training_windows(sequences: list[np.ndarray], max_history: int) -> np.ndarray:
    """Cut every training sequence into right-aligned windows of ``M + 1`` items.

    Windows are taken from the end and overlap by one item, so every item after a sequence's first
    is a target exactly once, with up to ``M`` items of context.

    Returns:
        (n_windows, M + 1) int64, -1 pads on the left; sequences shorter than 2 items give none.
    """
    width = max_history + 1
    rows = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            start = max(0, end - width)
            row = np.full(width, -1, dtype=np.int64)
            row[width - (end - start):] = seq[start:end]
            rows.append(row)
            if start == 0:
                break
            end = start + 1
    return np.stack(rows) if rows else np.empty((0, width), dtype=np.int64)


class NextItemModule(L.LightningModule):
    """Trains a next-movie model; validation logs ``valid/recall@10`` (what early stopping watches).

    Args:
        model: a ``GenerativeRetriever`` or ``SASRec``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to embeddings, norms and biases).
        beam_size: beams of the generative model's constrained beam search.
        k: the cut-off of the monitored metric.
    """

    def __init__(self, model: nn.Module, *, lr: float = 1e-3, weight_decay: float = 0.0, beam_size: int = 20,
                 k: int = 10):
        super().__init__()
        self.model, self.lr, self.weight_decay, self.beam_size, self.k = model, lr, weight_decay, beam_size, k
        self._val: list[tuple[np.ndarray, np.ndarray]] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch[0])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        history, target, *seen = batch  # seen: (B, S) already rated items, -1 padded (when they are left out)
        exclude = seen_mask(seen[0], self.model.n_items) if seen else None
        items = self.model.recommend(history, self.k, beam_size=max(self.beam_size, self.k), exclude=exclude).items
        self._val.append((items.cpu().numpy(), target.cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        topk = np.concatenate([t for t, _ in self._val])
        target = np.concatenate([t for _, t in self._val])
        self._val.clear()
        m = ranking_metrics(topk, target, ks=(self.k,))
        self.log(f"valid/recall@{self.k}", m[f"recall@{self.k}"])
        self.log(f"valid/ndcg@{self.k}", m[f"ndcg@{self.k}"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.ndim >= 2 and "tok" not in name and "item" not in name and "pos" not in name
             else no_decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)


class KeepBest(L.Callback):
    """Keeps a copy of the weights of the best validation epoch and its metric."""

    def __init__(self, monitor: str):
        self.monitor, self.best, self.best_epoch, self.state = monitor, -np.inf, -1, None
        self.history: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        value = float(value)
        self.history.append(value)
        log.debug("epoch %d: %s %.4f", trainer.current_epoch + 1, self.monitor, value)
        if value > self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            self.state = copy.deepcopy(pl_module.model.state_dict())


def fit(model: nn.Module, windows: np.ndarray, valid_history: np.ndarray, valid_target: np.ndarray,
        valid_seen: np.ndarray | None = None, *,
        lr: float, weight_decay: float, batch_size: int, eval_batch_size: int, max_epochs: int, patience: int,
        beam_size: int, seed: int, accelerator: str = "cpu", devices: int | list[int] = 1) -> dict:
    """Train ``model`` in place, restore its best validation epoch, and return what happened.

    ``valid_seen`` (E, S), -1 padded: items left out of each validation event's list (None: nothing left out).

    Returns:
        ``{"epochs": trained epochs, "best_epoch": ..., "best_valid_recall@10": ..., "stopped_by": "patience" or
        "max_epochs", "valid_curve": [...]}``.
    """
    from lightning.pytorch.callbacks import EarlyStopping

    monitor = "valid/recall@10"
    g = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(TensorDataset(torch.from_numpy(windows)), batch_size=batch_size, shuffle=True, generator=g)
    valid = [valid_history, valid_target] + ([] if valid_seen is None else [valid_seen])
    valid_dl = DataLoader(TensorDataset(*map(torch.from_numpy, valid)), batch_size=eval_batch_size)
    module = NextItemModule(model, lr=lr, weight_decay=weight_decay, beam_size=beam_size)
    keep = KeepBest(monitor)
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
        callbacks=[stopper := EarlyStopping(monitor=monitor, mode="max", patience=patience), keep],
    )
    trainer.fit(module, train_dl, valid_dl)
    if keep.state is not None:
        model.load_state_dict(keep.state)
    model.eval()
    return {"epochs": trainer.current_epoch, "best_epoch": keep.best_epoch + 1,
            "best_valid_recall@10": round(keep.best, 4),
            "stopped_by": "patience" if stopper.stopped_epoch else "max_epochs",
            "valid_curve": [round(v, 4) for v in keep.history]}
