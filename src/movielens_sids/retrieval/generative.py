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

Content in, a dense head out (after LIGER, Yang et al., 2024): given ``item_vectors`` (each movie's
content embedding, and its collaborative vector where the run's tokenizer read one), a movie's
input also gets a learned projection of its vector, so a movie nobody has rated is no unknown in a
history; and beside the SID tokens the model predicts the next movie's vector. The prediction is
the mean vector of the ``dense_window`` latest movies (the content baseline's profile) plus a
learned correction from the transformer's state, and every movie is scored by its cosine with the
prediction (``dense_scores``), plus, given ``item_years``, a learned bias for the movie's age at
the event (the event's year minus its release year, in a few ranges: new releases are watched
differently from old films), trained with a softmax over the movies of the training windows
(``dense_negatives`` of them sampled per step) jointly with the token loss. A movie's score needs
no interaction, so the dense head ranks movies the beam search cannot; ``bench.fused_candidates``
joins the two.

Shapes: B batch, M history length in movies, L levels (tokens per movie), W beams, N movies,
V vocabulary (sum of the K_l), d model width, D item-vector width, C candidates per user.

May import: torch and retrieval.trie (pure model math).
"""

from __future__ import annotations

import math
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


def matches(target: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) and (S,) item indices -> (rows, cols): every (i, j) with ``items[j] == target[i]`` (the true cells of
    ``target[:, None] == items[None, :]``), found by sorting ``items`` instead of comparing every pair."""
    srt, where = items.sort()
    lo, hi = torch.searchsorted(srt, target), torch.searchsorted(srt, target, right=True)  # (n,) each row's run
    rows = torch.repeat_interleave(torch.arange(len(target), device=target.device), hi - lo)  # (T,)
    step = torch.arange(len(rows), device=target.device) - (torch.cumsum(hi - lo, 0) - (hi - lo))[rows]  # (T,)
    return rows, where[lo[rows] + step]


AGE_EDGES = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0)
"""Ranges of a movie's age at an event (years): below 0 (not released yet), [0, 1), [1, 2), ..., 20 and more;
one more range for a movie without a year."""
SECONDS_PER_YEAR = 365.2425 * 86400


def age_bucket(event_time: torch.Tensor, year: torch.Tensor) -> torch.Tensor:
    """(...,) Unix times and broadcastable (...,) release years (NaN: unknown) -> (...,) int64 range of
    ``AGE_EDGES`` of the movie's age at the event (its calendar year minus the release year)."""
    event_year = torch.floor(1970.0 + event_time.double() / SECONDS_PER_YEAR)
    age = event_year - year.double()
    edges = torch.tensor(AGE_EDGES, dtype=torch.float64, device=age.device)
    return torch.where(torch.isnan(age), len(AGE_EDGES) + 1, torch.bucketize(age, edges, right=True))


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
        """x (B, M, d), mask (B, 1, T, M) bool (True: may attend) -> (B, T, d): the outputs of the last T <= M
        positions (T = M in training; 1 where only the last state is read: the keys and values of every
        position, the rest of the block for the last only)."""
        b, m, d = x.shape
        t = mask.shape[2]
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q = q[:, m - t:]
        hs = d // self.n_heads
        q, k, v = (z.reshape(b, -1, self.n_heads, hs).transpose(1, 2) for z in (q, k, v))  # (B, nh, T or M, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x[:, m - t:] + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class CausalTransformer(nn.Module):
    """A stack of ``Block`` with causal, padding-aware attention (shared by the SID model and SASRec)."""

    def __init__(self, *, d_model: int, n_layers: int, n_heads: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """(B, M, d) inputs and (B, M) bool (False at padding) -> (B, M, d) hidden states (``last_only``: (B, 1, d),
        the last position's, for what only the state after the latest movie serves: the last block runs its
        queries, projection and MLP for that position alone)."""
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # (M, M)
        eye = torch.eye(t, dtype=torch.bool, device=x.device)  # a padded query attends to itself: no NaN rows
        mask = ((causal & valid[:, None, :]) | eye)[:, None]  # (B, 1, M, M)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, mask[:, :, -1:] if last_only and i == len(self.blocks) - 1 else mask)
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
        item_vectors: (N, D) float, each item's vector (content, or content and collaborative; made unit length),
            or None (the token-only model).
        dense_weight: weight of the dense head's loss beside the token loss (0: no dense head; needs
            ``item_vectors``).
        dense_negatives: movies sampled (uniformly from ``dense_pool``, per step) for the dense head's training
            softmax; None or at least the pool's size: a softmax over the whole pool.
        dense_pool: (P,) the items the dense head's softmax runs over in its loss (the movies of the training
            windows: a movie nobody rated in training is never taught to lose); None: every item.
        dense_window: how many of the latest movies' vectors make the prediction's starting point.
        dense_positions: in training, the dense loss of at most this many positions per batch (sampled).
        item_years: (N,) float release years (NaN: unknown): the dense head learns a bias per age range at the
            event; None: no age bias (and no times needed).
        content_input: add the projection of each movie's vector to its input (needs ``item_vectors``).
        level_sizes: K_l per level (default: each level's largest code + 1).
        shared_codes: rows of ``item_codes`` may repeat (a tokenizer in training gives them): the losses work,
            beam search does not until the codes are distinct (``set_item_codes``).
        max_history: M, how many past movies the model sees.
        d_model, n_layers, n_heads, dropout: the transformer's shape.

    Example:
        >>> model = GenerativeRetriever(np.array([[0, 1], [1, 0], [1, 1]]), max_history=4)
        >>> loss = model.loss(torch.tensor([[-1, 0, 2, 1, 0]]))  # (B, M+1) items, -1 pads on the left
        >>> model.recommend(torch.tensor([[-1, 0, 2, 1]]), k=3).items.shape
        torch.Size([1, 3])
    """

    def __init__(self, item_codes: np.ndarray, *, item_vectors: np.ndarray | None = None, dense_weight: float = 0.0,
                 dense_negatives: int | None = None, dense_pool: np.ndarray | None = None, dense_window: int = 3,
                 dense_positions: int | None = None, item_years: np.ndarray | None = None,
                 content_input: bool = True, level_sizes: list[int] | None = None, shared_codes: bool = False,
                 max_history: int = 50,
                 d_model: int = 64, n_layers: int = 2, n_heads: int = 2, dropout: float = 0.1):
        super().__init__()
        codes = torch.as_tensor(np.asarray(item_codes), dtype=torch.long)  # (N, L)
        sizes = level_sizes or (codes.max(0).values + 1).tolist()
        distinct = not shared_codes or len(np.unique(codes.numpy(), axis=0)) == len(codes)
        self.trie: SidTrie | None = SidTrie(codes.numpy(), level_sizes=sizes) if distinct else None
        self.levels, self.n_items = codes.shape[1], codes.shape[0]
        self.max_history = max_history
        offsets = torch.tensor([0, *np.cumsum(sizes).tolist()])
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
        self.dense_window, self.dense_positions = dense_window, dense_positions
        self._init_dense(item_vectors, dense_weight, dense_negatives, content_input, d_model, item_years)
        pool = np.arange(self.n_items) if dense_pool is None else np.asarray(dense_pool, dtype=np.int64)
        self.register_buffer("dense_pool", torch.as_tensor(pool, dtype=torch.long), persistent=False)  # (P,)

    def _init_dense(self, item_vectors: np.ndarray | None, dense_weight: float, dense_negatives: int | None,
                    content_input: bool, d_model: int, item_years: np.ndarray | None = None) -> None:
        """The content input and the dense head (``item_vectors`` given; the head only with ``dense_weight`` > 0)."""
        if dense_weight < 0 or (dense_weight > 0 and item_vectors is None):
            raise ValueError("dense_weight: must be >= 0, and > 0 only with item_vectors")
        self.dense_weight, self.dense_negatives = float(dense_weight), dense_negatives
        self.vec_in = self.query = None
        if item_vectors is None:
            return
        vec = F.normalize(torch.as_tensor(np.asarray(item_vectors, dtype=np.float32)), dim=-1)  # (N, D) unit length
        if vec.shape[0] != self.n_items:
            raise ValueError(f"item_vectors has {vec.shape[0]} rows for {self.n_items} items")
        self.register_buffer("item_keys", vec, persistent=False)  # the input's vectors and the dense head's keys
        if content_input:
            self.vec_in = nn.Linear(vec.shape[1], d_model)  # what a movie's vector adds to its input
        if dense_weight > 0:
            self.query = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, vec.shape[1]))  # the correction
            nn.init.zeros_(self.query[1].weight)  # starts as the profile: the content baseline's ranking
            nn.init.zeros_(self.query[1].bias)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        self.age_bias = None
        if dense_weight > 0 and item_years is not None:
            self.register_buffer("item_year", torch.as_tensor(np.asarray(item_years, dtype=np.float64)),
                                 persistent=False)  # (N,)
            self.age_bias = nn.Embedding(len(AGE_EDGES) + 2, 1)  # one logit per age range
            nn.init.zeros_(self.age_bias.weight)

    def set_item_codes(self, item_codes: np.ndarray) -> None:
        """Give the items new (N, L) codes within the level sizes (a tokenizer trained beside the model moved
        them). The losses read them at once; codes shared by several items leave no trie (no beam search)."""
        codes = torch.as_tensor(np.asarray(item_codes), dtype=torch.long, device=self.item_tokens.device)
        if codes.shape != self.item_tokens.shape or bool((codes >= self.offsets[1:] - self.offsets[:-1]).any()):
            raise ValueError(f"item_codes: expected {tuple(self.item_tokens.shape)} codes within the level sizes")
        self.item_tokens = codes + self.offsets[:-1]
        distinct = len(np.unique(codes.cpu().numpy(), axis=0)) == len(codes)
        self.trie = SidTrie(codes.cpu().numpy(), level_sizes=self.trie_sizes) if distinct else None

    @property
    def trie_sizes(self) -> list[int]:
        """K_l per level."""
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    @property
    def dense(self) -> bool:
        """Whether the model has a dense head (``dense_scores``)."""
        return self.query is not None

    def _hidden(self, items: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """(B, M) item indices, -1 padding -> (B, M, d): a movie's input is the sum of its L token embeddings
        (and the projection of its vector); ``last_only``: (B, 1, d), the last position's state."""
        idx = items.clamp(min=0)
        x = self.tok(self.item_tokens[idx]).sum(2)  # (B, M, d)
        if self.vec_in is not None:
            x = x + self.vec_in(self.item_keys[idx])
        x = x.masked_fill((items < 0)[..., None], 0.0) + self.pos.weight[: items.shape[1]]
        return self.backbone(x, items >= 0, last_only=last_only)

    def _level_logits(self, state: torch.Tensor, level: int) -> torch.Tensor:
        """(..., d) decoder state -> (..., K_level) logits over level ``level``'s codes."""
        z = self.out_ln(state + self.head_mlp(self.head_ln(state)))
        lo, hi = self.offsets[level], self.offsets[level + 1]
        return z @ self.tok.weight[lo:hi].T + self.out_bias[lo:hi]

    def _profile(self, items: torch.Tensor) -> torch.Tensor:
        """(B, M) item indices, -1 padding -> (B, M, D) the mean vector of the ``dense_window`` latest movies up to
        each position (zeros where there is none)."""
        real = (items >= 0).float()  # (B, M)
        summed = (self.item_keys[items.clamp(min=0)] * real[..., None]).cumsum(1)  # (B, M, D)
        count = real.cumsum(1)
        j = self.dense_window
        if j < items.shape[1]:
            summed = summed - F.pad(summed, (0, 0, j, 0))[:, :-j]
            count = count - F.pad(count, (j, 0))[:, :-j]
        return summed / count.clamp(min=1.0)[..., None]

    def _context(self, profile: torch.Tensor, time: torch.Tensor | None) -> torch.Tensor:
        """(..., D) profiles and (...,) event Unix times -> (..., D + 1) the dense head's context, the time last (for
        a model with movie years; in float32 a Unix time is exact to about two minutes, ample for its year)."""
        if self.age_bias is None:
            return profile
        if time is None:
            raise ValueError("this model's dense head reads the event's time (it has movie years): pass times")
        return torch.cat([profile, time.to(profile.dtype)[..., None]], -1)

    def last_context(self, history: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor | None:
        """(B, M) right-aligned histories and (B,) event Unix times -> (B, D') what the dense head reads beside the
        state: the latest movies' mean vector (and the event's time, for a model with movie years); None for a
        model without a dense head."""
        if not self.dense:
            return None
        latest = history[:, -min(self.dense_window, self.max_history):]  # (B, j): ``_profile``'s last position
        real = (latest >= 0).float()  # (B, j)
        profile = (self.item_keys[latest.clamp(min=0)] * real[..., None]).sum(1) / real.sum(1).clamp(min=1.0)[:, None]
        return self._context(profile, time)

    def loss(self, items: torch.Tensor, times: torch.Tensor | None = None, *, last_only: bool = False) -> torch.Tensor:
        """Mean cross-entropy of every SID token of every next movie in right-aligned windows.

        Args:
            items: (B, M+1) item indices, -1 pads on the left; position t predicts item t+1.
            times: (B, M+1) each item's Unix time (for a dense head with movie years: item t+1's time is the event's).
            last_only: score only each window's last movie (validation events).
        """
        inp, tgt, keep = next_item_pairs(items, self.max_history, last_only=last_only)
        context = None
        if self.dense:
            context = self._context(self._profile(inp), None if times is None else times[:, 1:])[keep]
        return self.target_loss(self._hidden(inp)[keep], tgt[keep], context)

    def target_loss(self, state: torch.Tensor, target: torch.Tensor, context: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Mean cross-entropy of the (n,) ``target`` movies' SID tokens from (n, d) hidden states, each level
        teacher-forced on the true prefix; with a dense head, plus ``dense_weight`` x its loss (``context``: (n, D)
        ``last_context``)."""
        toks = self.item_tokens[target]  # (n, L)
        total, h = state.new_zeros(()), state
        for level in range(self.levels):
            logits = self._level_logits(h, level)  # (n, K_l)
            total = total + F.cross_entropy(logits, toks[:, level] - self.offsets[level])
            h = h + self.prefix(toks[:, level])
        total = total / self.levels
        return total + self.dense_weight * self.dense_loss(state, context, target) if self.dense else total

    def dense_query(self, state: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(n, d) states and (n, D') contexts -> (n, D) the predicted next movie's vector (the latest movies' mean
        vector plus the learned correction), unit length, times the learned scale: ``query @ item_keys.T`` are
        logits."""
        profile = context[..., :self.item_keys.shape[1]]
        q = F.normalize(profile, dim=-1) + self.query(state)
        return F.normalize(q, dim=-1) * self.logit_scale.exp().clamp(max=100.0)

    def _age_logits(self, context: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor | float:
        """(n, D') contexts and (n, 1) or (S,) item indices (None: every movie) -> (n, 1) or (n, S) the age bias of
        each movie at each event (0.0 for a model without movie years). Events share few calendar years: the
        bias is looked up once per distinct year and row, then gathered per event."""
        if self.age_bias is None:
            return 0.0
        year = self.item_year if items is None else self.item_year[items]  # (S,) or (n, 1)
        time = context[:, -1]  # (n,)
        bias = self.age_bias.weight[:, 0]  # (ranges,): indexed, not looked up: its gradient is a plain scatter
        if year.dim() == 2:
            return bias[age_bucket(time[:, None], year)]  # (n, 1)
        event_year = torch.floor(time.double() / SECONDS_PER_YEAR)
        distinct, row = torch.unique(event_year, return_inverse=True)  # (Y,), (n,)
        return bias[age_bucket(distinct[:, None] * SECONDS_PER_YEAR + 1.0, year[None, :])][row]  # (n, S)

    def dense_loss(self, state: torch.Tensor, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the (n,) ``target`` movies under the dense head's softmax over the target and the pool
        (the target itself left out of the negatives); in training over ``dense_negatives`` of the pool, sampled
        uniformly, and at most ``dense_positions`` of the n positions."""
        neg, s, p = self.dense_pool, self.dense_negatives, self.dense_positions
        if self.training and p is not None and p < len(target):
            pick = torch.randperm(len(target), device=state.device)[:p]
            state, context, target = state[pick], context[pick], target[pick]
        if self.training and s is not None and s < len(neg):
            neg = neg[torch.randint(len(neg), (s,), device=state.device)]  # (S,)
        q = self.dense_query(state, context)  # (n, D)
        pos = ((q * self.item_keys[target]).sum(-1, keepdim=True) + self._age_logits(context, target[:, None]))[:, 0]
        negs = q @ self.item_keys[neg].T + self._age_logits(context, neg)  # (n, S)
        negs[matches(target, neg)] = -torch.inf  # a row's own target is no negative (a few cells: no (n, S) mask)
        return (torch.logaddexp(pos, torch.logsumexp(negs, 1)) - pos).mean()  # the cross-entropy of [pos, negs]

    @torch.no_grad()
    def dense_scores(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, d) states and (B, D') contexts (``last_context``) -> (B, N) the dense head's logit of every movie."""
        return self.dense_query(hidden, context) @ self.item_keys.T + self._age_logits(context, None)

    @torch.no_grad()
    def sid_logprob(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, d) states and (B, C) item indices (-1: none) -> (B, C) the log-probability of each item's full SID
        (-inf for -1): the score the beam search ranks by, for any movie."""
        toks = self.item_tokens[items.clamp(min=0)]  # (B, C, L)
        state = hidden[:, None].expand(-1, items.shape[1], -1)  # (B, C, d)
        total = torch.zeros(items.shape, device=hidden.device)
        for level in range(self.levels):
            logp = F.log_softmax(self._level_logits(state, level), -1)  # (B, C, K_l)
            total = total + logp.gather(-1, (toks[..., level] - self.offsets[level])[..., None])[..., 0]
            state = state + self.prefix(toks[..., level])
        return total.masked_fill(items < 0, -torch.inf)

    def last_hidden(self, history: torch.Tensor) -> torch.Tensor:
        """(B, M) right-aligned histories (-1 pads on the left) -> (B, d) the state after each one's last movie."""
        return self._hidden(history[:, -self.max_history:], last_only=True)[:, -1]

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
        return SidTrie(codes, items=items, level_sizes=self.trie_sizes).to(self.item_tokens.device)

    @torch.no_grad()
    def recommend_from(self, hidden: torch.Tensor, k: int, *, beam_size: int | None = None,
                       exclude: torch.Tensor | None = None, trie: SidTrie | None = None) -> Recommendations:
        """``recommend`` from (B, d) states (``last_hidden``), so that one forward pass serves the loss too;
        ``trie``: search only its SIDs (``subset_trie``) instead of every movie's."""
        trie = trie or self.trie
        if trie is None:
            raise ValueError("the items' codes are not distinct: no beam search (see set_item_codes)")
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
