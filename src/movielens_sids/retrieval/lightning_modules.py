"""Lightning training of the next-movie models, stopped when validation loss and Recall@10 both stall.

Both models (``GenerativeRetriever``, ``SASRec``) expose ``loss(windows)``, ``last_hidden(history)``,
``target_loss(hidden, target)`` and ``recommend_from(hidden, k, beam_size=)``; this module holds
everything that is the same for them: the windows of the training sequences, the validation pass,
the optimiser and the callback that keeps the best epoch's weights in memory (no checkpoint files in the run folder).

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

from .content import exclusion_mask

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
    """Trains a next-movie model; each validation logs ``valid/loss`` and ``valid/recall@10``.

    The validation loss is the training loss on the validation events: the cross-entropy of each event's
    movie (every SID token of it, for the generative model) given the history before it. Recall@10 is
    the ranking itself (constrained beam search of ``beam_size`` for the generative model, all movies for
    SASRec), the user's already rated movies left out. Neither alone is a safe stopping signal: Recall@10 on
    a thousand events has a few dozen hits (~15 % relative noise per epoch, which stopped generative models
    at a lucky early epoch), and a full-softmax SASRec's validation cross-entropy rises from epoch 2 on
    (over-confidence) while its ranking still improves for tens of epochs. ``StopWhenBoth`` uses both.

    Args:
        model: a ``GenerativeRetriever`` or ``SASRec``.
        seen: what each validation event may not recommend (``content.Excluded``: the movies its user rated
            before it, those that did not exist yet), or None.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to embeddings, norms and biases).
        beam_size: beams of the generative model's validation search.
    """

    def __init__(self, model: nn.Module, seen=None, *, lr: float = 1e-3, weight_decay: float = 0.0,
                 beam_size: int = 20, k: int = 10):
        super().__init__()
        self.model, self.seen, self.lr, self.weight_decay = model, seen, lr, weight_decay
        self.beam_size, self.k = beam_size, k
        self._val: list[tuple[float, int, int, int]] = []  # (loss sum, hits, events, loss terms)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(*batch)  # (windows,) or, for a model that reads the time, (windows, times)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        windows, rows = batch[:2]  # (B, M+1): the history, then the event's movie; (B,) event numbers
        history, target = windows[:, :-1], windows[:, -1]
        hidden = self.model.last_hidden(history)  # (B, d): one forward pass for the loss and the ranking
        has_history = history[:, -1] >= 0  # as in training, a movie with nothing before it is not a loss term
        context = getattr(self.model, "last_context", lambda *_: None)(history, *batch[2:])  # (B, D') or None
        loss = float(self.model.target_loss(hidden[has_history], target[has_history],
                                            *([] if context is None else [context[has_history]]))
                     ) if has_history.any() else 0.0
        exclude = None
        if self.seen is not None:
            exclude = exclusion_mask(self.seen, rows.cpu().numpy(), self.model.n_items, windows.device)
        items = self.model.recommend_from(hidden, self.k, beam_size=max(self.beam_size, self.k),
                                          exclude=exclude).items  # (B, k)
        hits = int((items == target[:, None]).any(1).sum())
        self._val.append((loss * int(has_history.sum()), hits, len(windows), int(has_history.sum())))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        loss, hits, n, n_loss = map(sum, zip(*self._val))
        self._val.clear()
        self.log("valid/loss", loss / max(n_loss, 1))
        self.log(f"valid/recall@{self.k}", hits / n)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.ndim >= 2 and "tok" not in name and "item" not in name and "pos" not in name
             else no_decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)


class StopWhenBoth(L.Callback):
    """Stops when neither the validation loss nor validation Recall@10 has improved for ``patience`` epochs,
    and keeps a copy of the weights of the epoch with the best Recall@10 (the metric the benchmark reports)."""

    def __init__(self, patience: int):
        self.patience, self.stall = patience, 0
        self.best_loss, self.best_recall, self.best_epoch, self.state = np.inf, -np.inf, -1, None
        self.history: list[tuple[float, float]] = []
        self.stopped = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or "valid/loss" not in metrics:
            return
        loss, recall = float(metrics["valid/loss"]), float(metrics["valid/recall@10"])
        self.history.append((loss, recall))
        log.debug("epoch %d: valid loss %.4f, recall@10 %.4f", trainer.current_epoch + 1, loss, recall)
        improved = loss < self.best_loss or recall > self.best_recall
        self.best_loss = min(self.best_loss, loss)
        if recall > self.best_recall:
            self.best_recall, self.best_epoch = recall, trainer.current_epoch
            self.state = copy.deepcopy(pl_module.model.state_dict())
        self.stall = 0 if improved else self.stall + 1
        if self.stall >= self.patience:
            trainer.should_stop = self.stopped = True


def fit(model: nn.Module, windows: np.ndarray, valid_windows: np.ndarray, valid_seen=None, *,
        lr: float, weight_decay: float, batch_size: int, eval_batch_size: int, max_epochs: int, patience: int,
        beam_size: int, seed: int, accelerator: str = "cpu", devices: int | list[int] = 1,
        window_times: np.ndarray | None = None, valid_times: np.ndarray | None = None) -> dict:
    """Train ``model`` in place until neither validation metric improves (``StopWhenBoth``), restore the epoch
    with the best validation Recall@10, and return what happened.

    Args:
        windows: (n, M+1) training windows (``training_windows``).
        valid_windows: (E, M+1) each validation event's history, then its movie.
        valid_seen: what each validation event's user rated before it (left out of its list), or None.
        window_times, valid_times: for a model that reads the time (a dense head with movie years), the (n, M+1)
            Unix time of each window movie and the (E,) time of each validation event.

    Returns:
        ``{"epochs": ..., "best_epoch": ..., "best_valid_recall@10": ..., "best_valid_loss": ..., "stopped_by":
        "patience" or "max_epochs", "valid_curve": [[loss, recall@10] per epoch]}``.
    """
    g = torch.Generator().manual_seed(seed)
    train = [torch.from_numpy(windows)] + ([] if window_times is None else [torch.from_numpy(window_times)])
    valid = [torch.from_numpy(valid_windows), torch.arange(len(valid_windows))]
    valid += [] if valid_times is None else [torch.from_numpy(np.asarray(valid_times, dtype=np.int64))]
    train_dl = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True, generator=g)
    valid_dl = DataLoader(TensorDataset(*valid), batch_size=eval_batch_size)
    module = NextItemModule(model, valid_seen, lr=lr, weight_decay=weight_decay, beam_size=beam_size)
    stop = StopWhenBoth(patience)
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
        callbacks=[stop],
    )
    trainer.fit(module, train_dl, valid_dl)
    if stop.state is not None:
        model.load_state_dict(stop.state)
    model.eval()
    return {"epochs": trainer.current_epoch, "best_epoch": stop.best_epoch + 1,
            "best_valid_recall@10": round(stop.best_recall, 4), "best_valid_loss": round(stop.best_loss, 4),
            "stopped_by": "patience" if stop.stopped else "max_epochs",
            "valid_curve": [[round(a, 4), round(b, 4)] for a, b in stop.history]}
