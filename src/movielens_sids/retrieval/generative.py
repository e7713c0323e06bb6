"""A small generative recommender that writes the next movie's Semantic ID, token by token.

The design is TIGER's (Rajput et al., 2023) -- encode the history's SID tokens, decode the next
movie's L tokens autoregressively, beam search constrained to the SIDs that exist -- with two
changes that make it trainable in minutes on a 2-core CPU:

1. The history is encoded at the *movie* level: a movie's input vector is the sum of the
   embeddings of its L SID tokens (one table per level, so movies that share a prefix share
   part of their representation, the point of Semantic IDs), plus a position embedding, and a
   causal transformer reads the sequence. Causal attention makes every position a training
   example (predict the movie after it), as in SASRec, so one window of M movies trains M
   predictions for the cost of M positions -- TIGER's encoder-decoder trains one target per
   sequence over M L tokens.
2. The decoder is a shallow autoregressive head on each position's hidden state h: the state
   for level l is ``h + sum_{j<l} P_j[c_j]`` (embeddings of the tokens already generated), and
   level l's logits are that state, after a residual MLP, dotted with level l's (tied) token
   embeddings. So the model never spends probability on a token of the wrong level, and beam
   search runs the transformer once per user and only the tiny head per level.

Decoding: beam search over the ``SidTrie``; at each level the tokens that do not extend an
existing SID prefix are masked, so the W beams are W distinct, real movies, ranked by the
log-probability of their full SID.

Shapes: B batch, M history length in movies, L levels (tokens per movie), W beams, N movies,
V vocabulary (sum of the K_l), d model width.

May import: torch and retrieval.trie (pure model math).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .trie import SidTrie


def next_item_pairs(items: torch.Tensor, max_history: int, *, last_only: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-aligned windows (B, M+1), -1 pads on the left -> ``(inputs (B, M), targets (B, M), keep (B, M))``:
    position t predicts item t+1, where both exist (``last_only``: only each window's last movie)."""
    if items.shape[1] != max_history + 1:
        raise ValueError(f"expected windows of {max_history + 1} items, got {items.shape[1]}")
    inp, tgt = items[:, :-1], items[:, 1:]
    keep = (inp >= 0) & (tgt >= 0)
    if last_only:
        keep[:, :-1] = False
    return inp, tgt, keep


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.dropout = n_heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, M, d), mask (B, 1, M, M) bool (True: may attend) -> (B, M, d)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))  # (B, nh, M, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class CausalTransformer(nn.Module):
    """A stack of ``Block`` with causal, padding-aware attention (shared by the SID model and SASRec)."""

    def __init__(self, *, d_model: int, n_layers: int, n_heads: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, M, d) inputs and (B, M) bool (False at padding) -> (B, M, d) hidden states."""
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # (M, M)
        eye = torch.eye(t, dtype=torch.bool, device=x.device)  # a padded query attends to itself: no NaN rows
        mask = ((causal & valid[:, None, :]) | eye)[:, None]  # (B, 1, M, M)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)


class Recommendations(NamedTuple):
    """Top-W items per user, best first."""

    items: torch.Tensor
    """(B, W) item indices, -1 where fewer than W items could be produced."""
    scores: torch.Tensor
    """(B, W) log-probabilities (-inf where ``items`` is -1)."""

    def first(self, k: int) -> Recommendations:
        """The best ``k`` per user, padded with -1 items (-inf scores) where there are fewer than ``k``."""
        pad = k - self.items.shape[1]
        if pad <= 0:
            return Recommendations(self.items[:, :k], self.scores[:, :k])
        return Recommendations(F.pad(self.items, (0, pad), value=-1), F.pad(self.scores, (0, pad), value=-torch.inf))


class GenerativeRetriever(nn.Module):
    """Generates the next movie's Semantic ID from the SIDs of the movies before it.

    Args:
        item_codes: (N, L) int64, row ``i`` is item ``i``'s Semantic ID (distinct rows).
        max_history: M, how many past movies the model sees.
        d_model, n_layers, n_heads, dropout: the transformer's shape.

    Example:
        >>> model = GenerativeRetriever(np.array([[0, 1], [1, 0], [1, 1]]), max_history=4)
        >>> loss = model.loss(torch.tensor([[-1, 0, 2, 1, 0]]))  # (B, M+1) items, -1 pads on the left
        >>> model.recommend(torch.tensor([[-1, 0, 2, 1]]), k=3).items.shape
        torch.Size([1, 3])
    """

    def __init__(self, item_codes: np.ndarray, *, max_history: int = 50, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 2, dropout: float = 0.1):
        super().__init__()
        codes = torch.as_tensor(np.asarray(item_codes), dtype=torch.long)  # (N, L)
        self.trie = SidTrie(codes.numpy())
        self.levels, self.n_items = codes.shape[1], codes.shape[0]
        self.max_history = max_history
        offsets = torch.tensor([0, *np.cumsum(self.trie.level_sizes).tolist()])
        self.vocab = int(offsets[-1])
        self.register_buffer("item_tokens", codes + offsets[:-1], persistent=False)  # (N, L) in 0..V-1
        self.register_buffer("offsets", offsets, persistent=False)
        self.tok = nn.Embedding(self.vocab, d_model)  # input and (tied) output embeddings of every level's codes
        self.prefix = nn.Embedding(self.vocab, d_model)  # what an already generated token adds to the state
        self.pos = nn.Embedding(max_history, d_model)
        self.backbone = CausalTransformer(d_model=d_model, n_layers=n_layers, n_heads=n_heads, dropout=dropout)
        self.head_ln = nn.LayerNorm(d_model)
        self.head_mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))
        self.out_ln = nn.LayerNorm(d_model)
        self.out_bias = nn.Parameter(torch.zeros(self.vocab))
        for emb in (self.tok, self.prefix, self.pos):
            nn.init.normal_(emb.weight, std=0.02)

    def _hidden(self, items: torch.Tensor) -> torch.Tensor:
        """(B, M) item indices, -1 padding -> (B, M, d): a movie's input is the sum of its L token embeddings."""
        x = self.tok(self.item_tokens[items.clamp(min=0)]).sum(2)  # (B, M, d)
        x = x.masked_fill((items < 0)[..., None], 0.0) + self.pos.weight[: items.shape[1]]
        return self.backbone(x, items >= 0)

    def _level_logits(self, state: torch.Tensor, level: int) -> torch.Tensor:
        """(..., d) decoder state -> (..., K_level) logits over level ``level``'s codes."""
        z = self.out_ln(state + self.head_mlp(self.head_ln(state)))
        lo, hi = self.offsets[level], self.offsets[level + 1]
        return z @ self.tok.weight[lo:hi].T + self.out_bias[lo:hi]

    def loss(self, items: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """Mean cross-entropy of every SID token of every next movie in right-aligned windows.

        Args:
            items: (B, M+1) item indices, -1 pads on the left; position t predicts item t+1.
            last_only: score only each window's last movie (validation events).
        """
        inp, tgt, keep = next_item_pairs(items, self.max_history, last_only=last_only)
        return self.target_loss(self._hidden(inp)[keep], tgt[keep])

    def target_loss(self, state: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the (n,) ``target`` movies' SID tokens from (n, d) hidden states, each level
        teacher-forced on the true prefix."""
        toks = self.item_tokens[target]  # (n, L)
        total = state.new_zeros(())
        for level in range(self.levels):
            logits = self._level_logits(state, level)  # (n, K_l)
            total = total + F.cross_entropy(logits, toks[:, level] - self.offsets[level])
            state = state + self.prefix(toks[:, level])
        return total / self.levels

    def last_hidden(self, history: torch.Tensor) -> torch.Tensor:
        """(B, M) right-aligned histories (-1 pads on the left) -> (B, d) the state after each one's last movie."""
        return self._hidden(history[:, -self.max_history:])[:, -1]

    @torch.no_grad()
    def recommend(self, history: torch.Tensor, k: int, *, beam_size: int | None = None,
                  exclude: torch.Tensor | None = None) -> Recommendations:
        """Beam search over the trie of existing SIDs.

        Args:
            history: (B, M) item indices, right-aligned, -1 pads on the left.
            k: how many items to return (the best ``k`` of ``beam_size`` beams).
            beam_size: W >= k (default k).
            exclude: (B, N) bool, items never to return (e.g. already rated); masked at the last level,
                so the W beams are the best SIDs that are allowed.

        Returns:
            ``Recommendations`` with (B, k) distinct items, best first.
        """
        return self.recommend_from(self.last_hidden(history), k, beam_size=beam_size, exclude=exclude)

    def subset_trie(self, items: np.ndarray) -> SidTrie:
        """The trie of only these item indices (e.g. the movies with no training interaction), for
        ``recommend_from(..., trie=)``: its beams are the best SIDs among them."""
        items = np.asarray(items, dtype=np.int64)
        codes = (self.item_tokens[torch.from_numpy(items)] - self.offsets[:-1]).cpu().numpy()  # (n, L)
        return SidTrie(codes, items=items, level_sizes=self.trie.level_sizes).to(self.item_tokens.device)

    @torch.no_grad()
    def recommend_from(self, hidden: torch.Tensor, k: int, *, beam_size: int | None = None,
                       exclude: torch.Tensor | None = None, trie: SidTrie | None = None) -> Recommendations:
        """``recommend`` from (B, d) states (``last_hidden``), so that one forward pass serves the loss too;
        ``trie``: search only its SIDs (``subset_trie``) instead of every movie's."""
        trie = trie or self.trie
        w = beam_size or k
        if w < k:
            raise ValueError(f"beam_size ({w}) must be at least k ({k})")
        device = hidden.device
        if trie.items.device != device:
            trie.to(device)
        b = hidden.shape[0]
        state = hidden[:, None]  # (B, 1, d): one live beam per user
        scores = torch.zeros(b, 1, device=device)  # (B, W') log-probability of each beam's prefix
        nodes = trie.root(b)  # (B W',) trie node of each beam
        for level in range(self.levels):
            nb = scores.shape[1]
            logp = F.log_softmax(self._level_logits(state, level), -1)  # (B, W', K_l)
            child = trie.children(level, nodes).view(b, nb, -1)  # (B, W', K_l)
            allowed = child >= 0
            if exclude is not None and level == self.levels - 1:  # children are items here
                allowed &= ~exclude.gather(1, child.clamp(min=0).view(b, -1)).view_as(child)
            kl = logp.shape[-1]
            cand = (scores[..., None] + logp.masked_fill(~allowed, -torch.inf)).view(b, nb * kl)  # (B, W' K_l)
            scores, flat = cand.topk(min(w, nb * kl), dim=1)  # (B, W)
            beam, tok = flat // kl, flat % kl
            src = (torch.arange(b, device=device)[:, None] * nb + beam).flatten()  # (B W,)
            nodes = trie.step(level, nodes[src], tok.flatten())
            nodes = torch.where(scores.flatten() > -torch.inf, nodes, -1)  # dead beams stay dead
            state = state.reshape(b * nb, -1)[src].view(b, -1, state.shape[-1])
            state = state + self.prefix(tok + self.offsets[level])  # (B, W, d)
        items, scores = nodes.view(b, -1), scores  # after the last level, nodes are item indices
        return Recommendations(items=items, scores=scores).first(k)  # padded when the trie has fewer SIDs than k
