"""The alignment losses that tie a tokenizer to a generative recommender trained with it (``movielens_sids.joint``).

After ETEGRec (Liu et al., SIGIR 2025, "Generative Recommender with End-to-End Learnable Item Tokenization"):

- **sequence-item**: the recommender's state for a history, projected into the tokenizer's latent space, should
  fall on the same codes as the movie that follows it; level by level, a symmetric KL between the two code
  distributions (``code_logits``);
- **preference-semantic**: the same state, projected into the input space, should be nearest the tokenizer's
  reconstruction of that movie among the batch's movies (``info_nce``).

Shapes: B batch, H latent dim, L levels, K codebook size, P first-level points (codes or prototypes).

May import: torch and model.rqvae (pure model math).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rqvae import ResidualQuantizer, info_nce  # noqa: F401 (info_nce: the preference-semantic loss)


def _sq_dists(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, H) and (P, H) -> (B, P) squared distances (by one matrix product)."""
    return (x * x).sum(1, keepdim=True) - 2.0 * x @ points.T + (points * points).sum(1)[None, :]


def code_logits(quantizer: ResidualQuantizer, z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, H) latents -> (B, L, K) each level's logits over its codes: minus the squared distance (plus the code's
    bias) of what the level quantizes, over ``temperature``. Level 1 by the quantizer's own rule (grouped: a code's
    nearest prototype stands for it); from level 2 on, the residual the latent's own codes leave (``quantize``'s
    path), so the logits favour the codes the latent is given. Differentiable in ``z`` and the codebooks."""
    with torch.no_grad():
        path = quantizer.quantize(z.detach())  # (B, L)
    points, bias, of_code = quantizer.first_level_table()  # (P, H), (P,), (P,)
    levels, k = quantizer.codebooks.shape[:2]
    d = _sq_dists(z, points) + bias  # (B, P)
    first = d.new_full((len(z), k), torch.inf).scatter_reduce(1, of_code[None, :].expand(len(z), -1), d, "amin")
    out = [-first]  # (B, K)
    # F.embedding, not indexing: the same values, and its gradient adds the rows in a fixed order
    residual = z - F.embedding(path[:, 0], quantizer.codebooks[0])
    for level in range(1, levels):
        cb = quantizer.codebooks[level]  # (K, H)
        d = _sq_dists(residual, cb) + quantizer.code_bias[level]  # (B, K)
        if level == 1 and hasattr(quantizer, "prefix_bias"):
            d = d + quantizer.prefix_bias[path[:, 0]]
        out.append(-d)
        residual = residual - F.embedding(path[:, level], cb)
    return torch.stack(out, 1) / temperature  # (B, L, K)


def symmetric_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, L, K) and (B, L, K) logits -> KL(p_a || p_b) + KL(p_b || p_a) of the levels' code distributions, summed
    over levels, averaged over rows."""
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    gap = torch.where(torch.isfinite(la) & torch.isfinite(lb), la - lb, 0.0)  # a code out of reach on both sides: 0
    return ((la.exp() - lb.exp()) * gap).sum(-1).sum(-1).mean()
