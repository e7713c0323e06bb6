"""Faster inference for the embed stage: the model's transformer run by OpenVINO, ONNX Runtime, or in bf16.

- ``embed.backend=openvino`` exports the transformer of a loaded ``SentenceTransformer`` to ONNX once
  and runs it with OpenVINO on the CPU; ``embed.quantization=bf16`` computes in bfloat16 where the CPU
  has native bf16 (AVX512-BF16 or AMX; speed and agreement: docs/benchmarks.md#embedding-backends).
- ``embed.backend=onnx`` runs the same export with ONNX Runtime, optionally quantized to int8
  (``embed.quantization=int8``: dynamic quantization, int8 weights and per-batch int8 activations,
  no calibration data).
- ``embed.backend=torch`` with ``embed.quantization=bf16`` runs the PyTorch model under bf16 autocast.
- ``auto`` (the default of both settings): on the CPU, OpenVINO when it is installed, in bf16 when the
  CPU has it natively; elsewhere torch. Chosen by ``benchmarks/embed.py`` (docs/benchmarks.md#embedding-backends).

Each swaps a module in for the PyTorch transformer; tokenizer, pooling and normalisation stay the
model's own, so ``encode`` and every caller of it work unchanged.

The exported files are cached beside the model, in ``<model folder>/onnx/`` (the layout
sentence-transformers itself uses), or for a Hub id that is not a folder, or a folder that is not
writable, in the user cache directory; each file is written atomically and built once.

Why not sentence-transformers' own ``backend="onnx"`` / ``"openvino"``: they need ``optimum-onnx`` /
``optimum-intel``, whose releases require ``transformers<4.58`` while sentence-transformers 6 requires
``transformers>=5``; this module needs ``onnx`` with ``onnxruntime`` or ``openvino`` only, none of which
depends on torch or CUDA.

May import: errors, io; torch, onnx, onnxruntime and openvino on first use.
"""

from __future__ import annotations

import hashlib
import json
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
    """How the embeddings' metadata and the reports name a backend: ``torch``, ``onnx int8``, ``openvino bf16``."""
    return backend if quantization == "none" else f"{backend} {quantization}"


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def cpu_has_bf16() -> bool:
    """Whether OpenVINO computes natively in bf16 on this CPU (AVX512-BF16 or AMX); False without OpenVINO."""
    try:
        import openvino as ov
    except ImportError:
        return False

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def exportable(source: str, trust_remote_code: bool = False) -> bool | None:
    """Whether a model can be expected to export to ONNX, judged from its ``modules.json`` without loading
    it: its first module is sentence-transformers' plain ``Transformer`` and it runs no code of its own.
    A Hub id is looked up in the Hub cache only (no network); None: not there, so not known yet."""
    if trust_remote_code:
        return False
    path: Any = Path(source) / "modules.json"
    if not Path(source).is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(source, "modules.json")
        except Exception:  # not a repo id
            return False
        if not isinstance(path, str):
            return None
    try:
        modules = json.loads(Path(path).read_text())
        return str(modules[0]["type"]).rsplit(".", 1)[-1] == "Transformer"
    except (OSError, ValueError, LookupError, TypeError):
        return False


def resolve(backend: str, quantization: str, device: str, *, export_ok: bool = True) -> tuple[str, str]:
    """``auto`` settings -> what runs on ``device`` (a resolved device: ``cpu``, ``cuda:0``, ...).

    backend auto: ``onnx`` when int8 is asked for, else ``openvino`` on the CPU when it is installed and
    the model can be exported (``export_ok``, see `exportable`), else ``torch``. quantization auto:
    ``bf16`` for OpenVINO on a CPU with native bf16, else ``none``.
    """
    if backend == "auto":
        on_cpu = device == "cpu"
        backend = ("onnx" if quantization == "int8"
                   else "openvino" if on_cpu and export_ok and _has_openvino()
                   else "torch")
    if quantization == "auto":
        quantization = "bf16" if backend == "openvino" and cpu_has_bf16() else "none"
    return backend, quantization


def recorded(metadata: dict[str, str]) -> str:
    """The backend an ``embeddings.parquet`` was made with; files without the key were made by torch."""
    return metadata.get("backend", "torch")


def metadata_entry(backend: str, quantization: str) -> dict[str, str]:
    """What the embeddings' metadata records about a resolved backend: nothing for fp32 torch (so a torch
    file keeps the bytes it had before backends existed), else ``{"backend": "onnx int8"}`` (with
    ``int8_recipe``)."""
    if backend == "torch" and quantization == "none":
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
    outside the attention), kept in fp32: quantizing every MatMul is faster but agrees less with the fp32
    vectors (docs/benchmarks.md#embedding-backends)."""
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


def _runtime_module(run, config, names: tuple[str, ...]):
    """A torch module that stands in for the Hugging Face model: same call, the tokenizer's tensors go to
    ``run`` (a runtime's session: feeds by input name -> (B, T, D) last hidden state) as numpy arrays."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    class Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config
            self.register_buffer("anchor", torch.zeros(0))  # a tensor, so the model still has a device

        def forward(self, input_ids, attention_mask, token_type_ids=None, **_):
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            if given["token_type_ids"] is None:
                given["token_type_ids"] = torch.zeros_like(input_ids)
            out = run({n: given[n].cpu().numpy() for n in names})  # (B, T, D), the runtime's own array
            return BaseModelOutput(last_hidden_state=torch.from_numpy(out))

    return Module()


def _ort_module(path: Path, config, names: tuple[str, ...], threads: int):
    """The exported model in an ONNX Runtime CPU session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning: spinning wins a little on an idle CPU, loses badly on a busy one.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return _runtime_module(lambda feeds: session.run(None, feeds)[0], config, names)


def _ov_module(path: Path, config, names: tuple[str, ...], threads: int, precision: str):
    """The exported model compiled by OpenVINO for the CPU, computing in ``precision`` (bf16 or f32)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY"})
    got = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type
    if got != {"bf16": ov.Type.bf16, "f32": ov.Type.f32}[precision]:
        raise SidsError(f"embed.backend=openvino: this CPU computes in {got.get_type_name()}, not "
                        f"{precision}; use embed.quantization=none")
    request = compiled.create_infer_request()
    return _runtime_module(lambda feeds: request.infer(feeds)[0], config, names)  # infer copies its outputs


class _Bf16Autocast:
    """Wraps the Hugging Face model: the same call under bf16 autocast, fp32 hidden states out."""

    def __new__(cls, hf):
        import torch

        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = hf
                self.config = hf.config

            def forward(self, *args, **kwargs):
                with torch.autocast(self.inner.device.type, dtype=torch.bfloat16):
                    out = self.inner(*args, **kwargs)
                out.last_hidden_state = out.last_hidden_state.float()  # (B, T, D)
                return out

        return Module()


def _swap(model, module) -> None:
    """Put ``module`` in place of the transformer that the model's first module wraps.

    sentence-transformers has no public setter for it: it is that module's child named ``model`` (v6 on,
    where ``auto_model`` is a read-only alias) or ``auto_model`` (before), so the child is found and
    replaced through torch's public ``nn.Module`` API.
    """
    first = model[0]
    setattr(first, "model" if "model" in dict(first.named_children()) else "auto_model", module)


def use_backend(model, source: str, backend: str, quantization: str, *, fallback: bool = False) -> tuple[str, str]:
    """Make ``model`` (a ``SentenceTransformer``, on the CPU unless torch) encode with a resolved ``backend``
    (see `resolve`); returns the backend and quantization it runs with: with ``fallback`` (``auto`` chose
    the backend before the model was known), a model that is no Hugging Face transformer stays on fp32 torch.

    Raises:
        SidsError: the backend's runtime is missing, or the model cannot be exported.
    """
    if fallback and backend != "torch":
        try:
            _hf_module(model)
            _input_names(model)
        except Exception:
            log.info("the model is no Hugging Face transformer: embedding with torch (embed.backend=auto)")
            return "torch", "none"
    if backend == "torch":
        if quantization == "bf16":
            _swap(model, _Bf16Autocast(_hf_module(model)))
        return backend, quantization
    runtime = "openvino" if backend == "openvino" else "onnxruntime"
    try:
        import onnx  # noqa: F401  (the exporter needs it)

        __import__(runtime)
    except ImportError:
        raise SidsError(f"embed.backend={backend} needs {runtime} and onnx: pip install "
                        f"'movielens-sids[{backend}]' (or {runtime} onnx)") from None
    import torch

    try:
        names = _input_names(model)
        path = built_model(model, cache_dir(source, model), "none" if backend == "openvino" else quantization)
    except SidsError:
        raise
    except Exception as e:
        raise SidsError(f"embed.backend={backend}: cannot export the model to ONNX ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); use embed.backend=torch") from e
    hf = _hf_module(model)
    if backend == "openvino":
        precision = "bf16" if quantization == "bf16" else "f32"
        _swap(model, _ov_module(path, hf.config, names, torch.get_num_threads(), precision))
    else:
        _swap(model, _ort_module(path, hf.config, names, torch.get_num_threads()))
    log.info("embedding with %s (%s): %s", "OpenVINO" if backend == "openvino" else "ONNX Runtime",
             describe(backend, quantization), path)
    return backend, quantization
