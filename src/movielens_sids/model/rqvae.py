"""STUB — to be implemented (issue 4): the RQ-VAE, pure torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class RQVAEConfig:
    """Shape of the RQ-VAE."""

    input_dim: int = 384
    """D, read from the embeddings at train time."""
    encoder: Literal["mlp", "identity"] = "mlp"
    """`identity` quantizes the raw vector (the original project's design)."""
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    """Widths of the MLP encoder's hidden layers (the decoder mirrors them)."""
    latent_dim: int = 32
    """H, the width of the quantized latent."""
    levels: int = 3
    """L, residual quantization levels."""
    codebook_size: int = 256
    """K, codes per level."""
