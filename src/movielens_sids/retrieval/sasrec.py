"""SASRec (Kang & McAuley, 2018) over plain movie ids: the standard sequential baseline.

One embedding per movie, a causal transformer over the last M movies, and the next movie scored
against every known movie's (tied) embedding. Trained with full softmax cross-entropy over all
known movies instead of the paper's one-negative binary loss: with a few thousand movies it is
cheap and markedly stronger (Klenitskiy & Vasilev, 2023, "Turning Dross Into Gold Loss: is
BERT4Rec really better than SASRec?"), so the baseline is not a straw man.

The known movies (its vocabulary, V of the N) are those of its training sequences, as in any
ID-based recommender: a movie it never saw has an untrained embedding, so it is neither a
softmax class nor ranked (in a full softmax over all N such a movie is only ever pushed down,
so leaving it out changes little and makes the softmax, this model's main cost, a third
cheaper on ml-latest-small's temporal split). Ranking is over the known movies.

Shapes: B batch, M history length, N movies, V known movies, d model width.

May import: torch and retrieval.generative (pure model math).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .generative import CausalTransformer, Recommendations, next_item_pairs


class SASRec(nn.Module):
    """Next-movie model over movie ids.

    Args:
        n_items: N, the number of movies.
        known: (V,) the item indices it trains on and ranks (default: all N).
        max_history: M, how many past movies the model sees.
        d_model, n_layers, n_heads, dropout: the transformer's shape.

    Example:
        >>> model = SASRec(5, max_history=3)
        >>> loss = model.loss(torch.tensor([[-1, 0, 2, 1]]))  # (B, M+1), -1 pads on the left
        >>> model.recommend(torch.tensor([[0, 2, 1]]), k=2).items.shape
        torch.Size([1, 2])
    """

    def __init__(self, n_items: int, *, known: np.ndarray | None = None, max_history: int = 50, d_model: int = 64,
                 n_layers: int = 2, n_heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.n_items, self.max_history = n_items, max_history
        known_t = torch.arange(n_items) if known is None else torch.as_tensor(np.unique(known), dtype=torch.long)
        if len(known_t) == 0 or known_t[0] < 0 or known_t[-1] >= n_items:
            raise ValueError(f"known: expected item indices in [0, {n_items}), got {len(known_t)} of them")
        slot = torch.full((n_items,), -1, dtype=torch.long)
        slot[known_t] = torch.arange(len(known_t))
        self.register_buffer("known", known_t, persistent=False)  # (V,) item index of each softmax class
        self.register_buffer("slot", slot, persistent=False)  # (N,) softmax class of each item, -1: unknown
        self.item = nn.Embedding(n_items + 1, d_model, padding_idx=n_items)  # last row: padding
        self.pos = nn.Embedding(max_history, d_model)
        self.backbone = CausalTransformer(d_model=d_model, n_layers=n_layers, n_heads=n_heads, dropout=dropout)
        nn.init.normal_(self.item.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[n_items].zero_()

    def _hidden(self, items: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """(B, M) items (-1: padding) -> (B, M, d) (``last_only``: (B, 1, d), the last position's state)."""
        ids = items.masked_fill(items < 0, self.n_items)
        x = self.item(ids) + self.pos.weight[: items.shape[1]]
        return self.backbone(x, items >= 0, last_only=last_only)

    def loss(self, items: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """Mean cross-entropy of every next movie in right-aligned windows (B, M+1), -1 pads on the left
        (``last_only``: of each window's last movie only, as for validation events)."""
        inp, tgt, keep = next_item_pairs(items, self.max_history, last_only=last_only)
        return self.target_loss(self._hidden(inp)[keep], tgt[keep])

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(n, d) hidden states -> (n, V) scores of the known movies."""
        return hidden @ self.item.weight[self.known].T

    def target_loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean full-softmax cross-entropy of the (n,) ``target`` movies from (n, d) hidden states; a target it
        does not know (no class: it cannot be predicted) is left out (0 when none is known)."""
        cls = self.slot[target]  # (n,)
        ok = cls >= 0
        if not ok.any():
            return hidden.new_zeros(())
        return F.cross_entropy(self._logits(hidden[ok]), cls[ok])

    def last_hidden(self, history: torch.Tensor) -> torch.Tensor:
        """(B, M) right-aligned histories (-1 pads on the left) -> (B, d) the state after each one's last movie."""
        return self._hidden(history[:, -self.max_history:], last_only=True)[:, -1]

    @torch.no_grad()
    def recommend(self, history: torch.Tensor, k: int, *, beam_size: int | None = None,
                  exclude: torch.Tensor | None = None) -> Recommendations:
        """Top ``k`` (at most V) of the known movies after (B, M) right-aligned histories (``beam_size`` is
        ignored).

        ``exclude``: (B, N) bool, items never to return (e.g. already rated).
        """
        return self.recommend_from(self.last_hidden(history), k, exclude=exclude)

    @torch.no_grad()
    def recommend_from(self, hidden: torch.Tensor, k: int, *, beam_size: int | None = None,
                       exclude: torch.Tensor | None = None) -> Recommendations:
        """``recommend`` from (B, d) states (``last_hidden``), so that one forward pass serves the loss too."""
        scores = F.log_softmax(self._logits(hidden), -1)  # (B, V)
        if exclude is not None:
            scores = scores.masked_fill(exclude[:, self.known], -torch.inf)
        top, cls = scores.topk(min(k, len(self.known)), dim=1)
        items = self.known[cls].masked_fill(top == -torch.inf, -1)
        return Recommendations(items=items, scores=top).first(k)  # padded when it knows fewer movies than k
