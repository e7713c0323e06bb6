"""A benchmark's table as a docs record: the table with the command that made it, the machine and the date.

Every script under ``benchmarks/`` that prints a table takes ``--markdown FILE`` and writes it there
through ``write_record``, so that a table in ``docs/benchmarks.md`` is pasted from a file the script
wrote, never typed by hand.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path


def machine() -> str:
    """The CPU model (with its family and model numbers: a virtual machine's model name may hide the generation)
    and its core count (and the GPU, when torch sees one), in one line."""
    model, flags, info = platform.processor() or platform.machine(), None, {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and model == (platform.processor() or platform.machine()):
                model = value
            elif key in ("cpu family", "model") and key not in info:
                info[key] = value
            elif key == "flags" and flags is None:
                flags = set(value.split())
    except OSError:
        pass
    text = f"{os.cpu_count()}-core {model}"
    if len(info) == 2:
        text += f", family {info['cpu family']} model {info['model']}"
    if flags is not None:  # what decides the speed of float32, bf16 and int8 products
        text += " (" + ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in
                                 (("AVX-512", "avx512f"), ("AMX", "amx_bf16"), ("AVX512-BF16", "avx512_bf16"),
                                  ("VNNI", "avx512_vnni"))) + ")"
    if "torch" in sys.modules:  # only when the benchmark loaded it: importing torch here costs seconds
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    return text


def record(table: str, *, title: str, notes: str = "") -> str:
    """The markdown of one record: a heading, the command, the machine, the date, the table and notes."""
    command = "python " + shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    head = f"### {title}\n\n- Command: `{command}`\n- Machine: {machine()}\n- Date: {date}\n"
    return "\n".join(part for part in (head, table.strip() + "\n", notes.strip()) if part) + "\n"


def write_record(path: Path | None, table: str, *, title: str, notes: str = "") -> None:
    """Write ``record(...)`` to ``path`` (nothing when ``path`` is None) and say where."""
    if path is None:
        return
    path.write_text(record(table, title=title, notes=notes), encoding="utf-8")
    print(f"docs record written to {path}")
