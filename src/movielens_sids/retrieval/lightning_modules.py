"""Lightning training of the next-movie models, with early stopping on the validation loss.

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
    """Trains a next-movie model; validation logs ``valid/loss`` (what early stopping watches).

    The validation loss is the training loss on the validation events only: the cross-entropy of each
    event's movie (every SID token of it, for the generative model) given the history before it. It
    is smooth where Recall@10 on a thousand events is not (a few dozen hits, ~15 % relative noise per
    epoch, which stopped models at a lucky early epoch), and it costs one forward pass, no beam search.

    Args:
        model: a ``GenerativeRetriever`` or ``SASRec``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to embeddings, norms and biases).
    """

    def __init__(self, model: nn.Module, *, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self._val: list[tuple[float, int]] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch[0])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        windows = batch[0]  # (B, M+1): the history, then the event's movie
        self._val.append((float(self.model.loss(windows, last_only=True)) * len(windows), len(windows)))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        total, n = map(sum, zip(*self._val))
        self._val.clear()
        self.log("valid/loss", total / n)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.ndim >= 2 and "tok" not in name and "item" not in name and "pos" not in name
             else no_decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)


class KeepBest(L.Callback):
    """Keeps a copy of the weights of the best (lowest) validation epoch and its metric."""

    def __init__(self, monitor: str):
        self.monitor, self.best, self.best_epoch, self.state = monitor, np.inf, -1, None
        self.history: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        value = float(value)
        self.history.append(value)
        log.debug("epoch %d: %s %.4f", trainer.current_epoch + 1, self.monitor, value)
        if value < self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            self.state = copy.deepcopy(pl_module.model.state_dict())


def fit(model: nn.Module, windows: np.ndarray, valid_windows: np.ndarray, *,
        lr: float, weight_decay: float, batch_size: int, eval_batch_size: int, max_epochs: int, patience: int,
        seed: int, accelerator: str = "cpu", devices: int | list[int] = 1) -> dict:
    """Train ``model`` in place until ``valid/loss`` stops improving, restore its best epoch, return what happened.

    Args:
        windows: (n, M+1) training windows (``training_windows``).
        valid_windows: (E, M+1) each validation event's history, then its movie.

    Returns:
        ``{"epochs": trained epochs, "best_epoch": ..., "best_valid_loss": ..., "stopped_by": "patience" or
        "max_epochs", "valid_curve": [valid/loss per epoch]}``.
    """
    from lightning.pytorch.callbacks import EarlyStopping

    monitor = "valid/loss"
    g = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(TensorDataset(torch.from_numpy(windows)), batch_size=batch_size, shuffle=True, generator=g)
    valid_dl = DataLoader(TensorDataset(torch.from_numpy(valid_windows)), batch_size=eval_batch_size)
    module = NextItemModule(model, lr=lr, weight_decay=weight_decay)
    keep = KeepBest(monitor)
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
        callbacks=[stopper := EarlyStopping(monitor=monitor, mode="min", patience=patience), keep],
    )
    trainer.fit(module, train_dl, valid_dl)
    if keep.state is not None:
        model.load_state_dict(keep.state)
    model.eval()
    return {"epochs": trainer.current_epoch, "best_epoch": keep.best_epoch + 1,
            "best_valid_loss": round(keep.best, 4),
            "stopped_by": "patience" if stopper.stopped_epoch else "max_epochs",
            "valid_curve": [round(v, 4) for v in keep.history]}
