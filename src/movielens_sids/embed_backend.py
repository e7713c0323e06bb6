"""Faster CPU inference for the embed stage: the model's transformer run by ONNX Runtime.

``embed.backend=onnx`` exports the transformer of a loaded ``SentenceTransformer`` to ONNX once,
optionally quantizes it to int8 (``embed.quantization=int8``: ONNX Runtime's dynamic quantization,
int8 weights and per-batch int8 activations, no calibration data), and swaps it in for the PyTorch
module. Tokenizer, pooling and normalisation stay the model's own, so ``encode`` and every caller
of it work unchanged.

The exported files are cached beside the model, in ``<model folder>/onnx/`` (the layout
sentence-transformers itself uses), or for a Hub id that is not a folder, or a folder that is not
writable, in the user cache directory; each file is written atomically and built once.

Why not sentence-transformers' own ``backend="onnx"``: it needs ``optimum-onnx``, whose only
release (0.1.0) requires ``transformers<4.58`` while sentence-transformers 6 requires
``transformers>=5``; this module needs ``onnxruntime`` and ``onnx`` only, neither of which
depends on torch or CUDA.

May import: errors, io; torch, onnx and onnxruntime on first use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from .errors import SidsError
from .io import atomic_path

log = logging.getLogger(__name__)

OPSET = 17
"""ONNX opset of the export (ONNX Runtime >= 1.14 runs it)."""
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""Tokenizer outputs a BERT-like transformer takes, in the exported graph's order."""


def describe(backend: str, quantization: str) -> str:
    """How the embeddings' metadata and the reports name a backend: ``torch``, ``onnx``, ``onnx int8``."""
    return backend if quantization == "none" else f"{backend} {quantization}"


def recorded(metadata: dict[str, str]) -> str:
    """The backend an ``embeddings.parquet`` was made with; files without the key were made by torch."""
    return metadata.get("backend", "torch")


def metadata_entry(backend: str, quantization: str) -> dict[str, str]:
    """What the embeddings' metadata records about the backend: nothing for torch (so a torch file keeps
    the bytes it had before backends existed), else ``{"backend": "onnx int8"}`` (with ``int8_recipe``)."""
    if backend == "torch":
        return {}
    return {"backend": describe(backend, quantization)} | ({"int8_recipe": INT8_RECIPE} if quantization == "int8"
                                                           else {})


def _hf_module(model) -> Any:
    """The Hugging Face model inside the model's first module (``Transformer``)."""
    first = model[0]
    hf = getattr(first, "auto_model", None)
    if hf is None or not hasattr(hf, "config"):
        raise SidsError(f"embed.backend=onnx: the model's first module ({type(first).__name__}) is not a "
                        "Hugging Face transformer; use embed.backend=torch")
    return hf


def cache_dir(source: str, model) -> Path:
    """Where the exported files of this model live: ``<folder>/onnx`` when writable, else the user cache."""
    folder = Path(source)
    if folder.is_dir() and os.access(folder, os.W_OK):
        return folder / "onnx"
    from platformdirs import user_cache_dir

    name = getattr(_hf_module(model).config, "_name_or_path", "") or source
    key = hashlib.sha256(f"{source}|{name}".encode()).hexdigest()[:16]
    return Path(user_cache_dir("movielens-sids")) / "onnx" / key


class _LastHidden:
    """Wraps the transformer so the exported graph has plain tensor inputs and one output."""

    def __new__(cls, hf, names: tuple[str, ...]):
        import torch

        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.hf = hf

            def forward(self, *args):  # tensors in the order of ``names``
                return self.hf(**dict(zip(names, args, strict=True)), return_dict=True).last_hidden_state

        return Module().eval()


def _input_names(model) -> tuple[str, ...]:
    """The tokenizer outputs the transformer takes (input_ids and attention_mask at least)."""
    sample = model.tokenizer(["a b", "c"], padding=True, return_tensors="pt")
    names = tuple(n for n in _INPUTS if n in sample)
    if names[:2] != _INPUTS[:2]:
        raise SidsError("embed.backend=onnx: the tokenizer gives no input_ids/attention_mask; use embed.backend=torch")
    return names


def export(model, target: Path) -> None:
    """Export the model's transformer (fp32) to ``target``: inputs of :data:`_INPUTS`, output (B, T, D)."""
    import torch

    names = _input_names(model)
    sample = model.tokenizer(["a short text", "a text"], padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "tokens"} for n in (*names, "last_hidden_state")}
    with atomic_path(target) as tmp, warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns about tracing and its own deprecation; the graph is checked below.
        warnings.simplefilter("ignore")
        torch.onnx.export(_LastHidden(_hf_module(model), names), tuple(sample[n] for n in names), str(tmp),
                          dynamo=False, input_names=list(names), output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=OPSET)


INT8_RECIPE = "matmul-per-channel, ffn-out-fp32"
"""What ``quantize`` does, recorded in the embeddings' metadata: another recipe gives other vectors."""
INT8_FILE = "model_qint8_ffn_out_fp32.onnx"


def quantize(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of an exported model: the MatMul weights int8 per output channel, activations
    quantized per batch, except each layer's feed-forward output projection (``.../output/dense/MatMul``
    outside the attention), kept in fp32. Quantizing every MatMul, on 1,500 ML-32M documents with MiniLM:
    2.8x the torch encode on an AVX-512 VNNI CPU, but mean cosine to torch 0.9927 (min 0.984); with the
    feed-forward outputs in fp32: 2.3x, mean cosine 0.9965 (min 0.9915)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [n.name for n in onnx.load(str(source), load_external_data=False).graph.node
            if n.op_type == "MatMul" and "/output/dense/" in n.name and "/attention/" not in n.name]
    logging.getLogger().disabled, was = True, logging.getLogger().disabled  # it logs a hint on the root logger
    try:
        with atomic_path(target) as tmp:
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], nodes_to_exclude=keep)
    finally:
        logging.getLogger().disabled = was


def built_model(model, folder: Path, quantization: str) -> Path:
    """The ONNX file for ``quantization``, exported (and quantized) now unless already there."""
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model.onnx"
    if not fp32.is_file():
        log.info("exporting the transformer to ONNX: %s (once)", fp32)
        export(model, fp32)
    if quantization == "none":
        return fp32
    q = folder / INT8_FILE
    if not q.is_file():
        log.info("quantizing it to int8: %s (once)", q)
        quantize(fp32, q)
    return q


class _OrtTransformer:
    """Stands in for the Hugging Face model: same call, runs an ONNX Runtime session on the CPU."""

    def __new__(cls, path: Path, config, names: tuple[str, ...], threads: int):
        import onnxruntime as ort
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: spinning wins a little on an idle CPU, loses badly on a busy one.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.config = config
                self.register_buffer("anchor", torch.zeros(0))  # a tensor, so the model still has a device

            def forward(self, input_ids, attention_mask, token_type_ids=None, **_):
                given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
                if given["token_type_ids"] is None:
                    given["token_type_ids"] = torch.zeros_like(input_ids)
                out = session.run(None, {n: given[n].cpu().numpy() for n in names})[0]  # (B, T, D)
                return BaseModelOutput(last_hidden_state=torch.from_numpy(out))

        return Module()


def use_backend(model, source: str, backend: str, quantization: str) -> str:
    """Make ``model`` (a CPU ``SentenceTransformer``) encode with ``backend``; returns its description.

    Raises:
        SidsError: onnxruntime is missing, or the model cannot be exported.
    """
    if backend == "torch":
        return describe(backend, quantization)
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        raise SidsError("embed.backend=onnx needs ONNX Runtime: pip install 'movielens-sids[onnx]' "
                        "(or onnxruntime onnx)") from None
    import torch

    names = _input_names(model)
    try:
        path = built_model(model, cache_dir(source, model), quantization)
    except SidsError:
        raise
    except Exception as e:
        raise SidsError(f"embed.backend=onnx: cannot export the model to ONNX ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); use embed.backend=torch") from e
    first = model[0]
    hf = _hf_module(model)
    swapped = _OrtTransformer(path, hf.config, names, torch.get_num_threads())
    setattr(first, "model" if "model" in first._modules else "auto_model", swapped)
    log.info("embedding with ONNX Runtime (%s): %s", describe(backend, quantization), path)
    return describe(backend, quantization)
