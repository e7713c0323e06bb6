"""Where torch work runs: the one place that turns a device setting (``auto``, ``cpu``, ``cuda:1``, ...) into devices.

``auto`` means every CUDA GPU, else Apple's MPS, else the CPU; ``cuda`` means every GPU. A device that
is not there is a one-line ``SidsError`` naming the setting. Lightning's ``train.devices`` (a count or
a list of GPU indices) is parsed here too.

May import: errors. torch is imported inside the functions so that importing a stage stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import SidsError

if TYPE_CHECKING:
    import torch


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_devices(spec: str, setting: str) -> list[str]:
    """A device setting -> the devices to use, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu"]``.

    Args:
        spec: ``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:N`` or a comma-separated list of those.
        setting: the setting's name for error messages (``embed.device``).
    """
    import torch

    wanted = [d.strip() for d in str(spec).split(",")]
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if wanted == ["auto"]:
        if n_gpu:
            return [f"cuda:{i}" for i in range(n_gpu)]
        return ["mps"] if _mps_available() else ["cpu"]
    out: list[str] = []
    for d in wanted:
        try:
            dev = torch.device(d)
        except RuntimeError:
            raise SidsError(f"setting {setting}: {d!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
        if dev.type == "cuda":
            if not n_gpu:
                raise SidsError(f"setting {setting}={spec}: no CUDA GPU is available here (try cpu)")
            if dev.index is None:
                out.extend(f"cuda:{i}" for i in range(n_gpu))
                continue
            if dev.index >= n_gpu:
                raise SidsError(f"setting {setting}={d}: this machine has {n_gpu} CUDA GPU(s) "
                                f"(cuda:0..cuda:{n_gpu - 1})")
        elif dev.type == "mps" and not _mps_available():
            raise SidsError(f"setting {setting}=mps: Apple's MPS backend is not available here (try cpu)")
        out.append(d)
    return out


def resolve_device(spec: str, setting: str) -> torch.device:
    """A device setting -> one ``torch.device`` (``auto`` and ``cuda``: the first GPU)."""
    import torch

    devices = resolve_devices(spec, setting)
    if len(devices) > 1 and "," in str(spec):
        raise SidsError(f"setting {setting}: one device expected, got {spec!r}")
    return torch.device(devices[0])


def lightning_devices(value: str) -> int | str | list[int]:
    """``train.devices`` for Lightning's Trainer: ``auto``, a count (``2``) or GPU indices (``0,1``)."""
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    try:
        return int(value)
    except ValueError:
        raise SidsError(f"train.devices: expected auto, a count or a list like 0,1, got {value!r}") from None
