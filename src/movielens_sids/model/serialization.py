"""The model folder: ``config.json`` + ``model.safetensors``, written and read back exactly.

``config.json`` is ``{"tokenizer": "rqvae" | "rqkmeans", "config": {...}}``. ``load_tokenizer``
reads the weights with ``safetensors`` only (never pickle) and refuses, with a one-line
``SidsError``, a folder that is missing a file or whose weights do not match its ``config.json``.

We write the folder ourselves rather than through ``huggingface_hub.PyTorchModelHubMixin``: its
``from_pretrained`` falls back to downloading from the Hub when a local folder is missing and loads
weights non-strictly by default, while a model folder here must load offline and exactly.

May import: torch, safetensors, the tokenizers, and the package's errors and io. The tokenizers
themselves (rqvae.py, rqkmeans.py) import none of this: their math stays pure.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError

from ..errors import SidsError
from ..io import atomic_path, write_json
from .config import RQKMeansConfig, RQVAEConfig
from .rqkmeans import RQKMeans
from .rqvae import RQVAE

TOKENIZERS = {"rqvae": (RQVAE, RQVAEConfig), "rqkmeans": (RQKMeans, RQKMeansConfig)}
"""``config.json``'s ``tokenizer`` -> (model class, config class)."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: RQVAE | RQKMeans, directory: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

    Callers that replace a run's ``model/`` write into ``movielens_sids.io.atomic_dir`` so the folder
    is swapped in whole.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / CONFIG_NAME, {"tokenizer": model.tokenizer, "config": dataclasses.asdict(model.config)})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"tokenizer": model.tokenizer, "format": "pt"})


def load_tokenizer(directory: str | Path, expect: str | None = None) -> RQVAE | RQKMeans:
    """Load a tokenizer folder; returns the model in eval mode (on CPU).

    Args:
        directory: a folder written by ``save_pretrained`` (e.g. ``run_dir / "model"``).
        expect: ``"rqvae"`` or ``"rqkmeans"``: refuse a folder that holds the other tokenizer.

    Raises:
        SidsError: a file is missing or unreadable, or the weights do not match ``config.json``.
    """
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise SidsError(f"model folder {directory} is missing {name}: run `movielens-sids train` first")
    try:
        meta = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
        kind = meta["tokenizer"]
        if expect is not None and kind != expect:
            raise SidsError(f"{directory} holds a {kind} tokenizer, not {expect}")
        cls, config_cls = TOKENIZERS[kind]
        names = {f.name for f in dataclasses.fields(config_cls)}
        config = config_cls(**{k: v for k, v in meta["config"].items() if k in names})
    except (ValueError, KeyError, TypeError) as e:
        raise SidsError(f"{directory / CONFIG_NAME} is not a valid tokenizer config ({type(e).__name__}: {e})") from e
    try:
        state = safetensors.torch.load_file(str(directory / WEIGHTS_NAME))
    except (SafetensorError, OSError, ValueError) as e:
        raise SidsError(f"{directory / WEIGHTS_NAME} is not a readable safetensors file ({e})") from e
    model = cls(config)
    expected = model.state_dict()
    if "quantizer.code_bias" in expected and "quantizer.code_bias" not in state:  # written before biases existed
        state["quantizer.code_bias"] = torch.zeros_like(expected["quantizer.code_bias"])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}" for what, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise SidsError(f"{directory / WEIGHTS_NAME} does not match {CONFIG_NAME} ({detail})")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return model.eval()
