"""SASRec (Kang & McAuley, 2018) over plain movie ids: the standard sequential baseline.

One embedding per movie, a causal transformer over the last M movies, and the next movie scored
against every movie's (tied) embedding. Trained with full softmax cross-entropy over all N
movies instead of the paper's one-negative binary loss: with a few thousand movies it is cheap
and markedly stronger (Klenitskiy & Vasilev, 2023, "Turning Dross Into Gold Loss: is BERT4Rec
really better than SASRec?"), so the baseline is not a straw man. Ranking is over all movies.

Shapes: B batch, M history length, N movies, d model width.

May import: torch and retrieval.generative (pure model math).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .generative import CausalTransformer, Recommendations


class SASRec(nn.Module):
    """Next-movie model over movie ids.

    Args:
        n_items: N, the number of movies.
        max_history: M, how many past movies the model sees.
        d_model, n_layers, n_heads, dropout: the transformer's shape.

    Example:
        >>> model = SASRec(5, max_history=3)
        >>> loss = model.loss(torch.tensor([[-1, 0, 2, 1]]))  # (B, M+1), -1 pads on the left
        >>> model.recommend(torch.tensor([[0, 2, 1]]), k=2).items.shape
        torch.Size([1, 2])
    """

    def __init__(self, n_items: int, *, max_history: int = 50, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.n_items, self.max_history = n_items, max_history
        self.item = nn.Embedding(n_items + 1, d_model, padding_idx=n_items)  # last row: padding
        self.pos = nn.Embedding(max_history, d_model)
        self.backbone = CausalTransformer(d_model=d_model, n_layers=n_layers, n_heads=n_heads, dropout=dropout)
        nn.init.normal_(self.item.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[n_items].zero_()

    def _hidden(self, items: torch.Tensor) -> torch.Tensor:
        """(B, M) items (-1: padding) -> (B, M, d)."""
        ids = items.masked_fill(items < 0, self.n_items)
        x = self.item(ids) + self.pos.weight[: items.shape[1]]
        return self.backbone(x, items >= 0)

    def loss(self, items: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """Mean cross-entropy of every next movie in right-aligned windows (B, M+1), -1 pads on the left
        (``last_only``: of each window's last movie only, as for validation events)."""
        if items.shape[1] != self.max_history + 1:
            raise ValueError(f"expected windows of {self.max_history + 1} items, got {items.shape[1]}")
        inp, tgt = items[:, :-1], items[:, 1:]  # (B, M)
        keep = (inp >= 0) & (tgt >= 0)
        if last_only:
            keep[:, :-1] = False
        h = self._hidden(inp)[keep]  # (n, d)
        logits = h @ self.item.weight[: self.n_items].T  # (n, N)
        return F.cross_entropy(logits, tgt[keep])

    @torch.no_grad()
    def recommend(self, history: torch.Tensor, k: int, *, beam_size: int | None = None,
                  exclude: torch.Tensor | None = None) -> Recommendations:
        """Top ``k`` (at most N) of all N movies after (B, M) right-aligned histories (``beam_size`` is ignored).

        ``exclude``: (B, N) bool, items never to return (e.g. already rated).
        """
        h = self._hidden(history)[:, -1]  # (B, d)
        scores = F.log_softmax(h @ self.item.weight[: self.n_items].T, -1)  # (B, N)
        if exclude is not None:
            scores = scores.masked_fill(exclude, -torch.inf)
        top, items = scores.topk(min(k, self.n_items), dim=1)
        return Recommendations(items=items.masked_fill(top == -torch.inf, -1), scores=top)
