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
    """The CPU model and its core count (and the GPU, when torch sees one), in one line."""
    model, flags = platform.processor() or platform.machine(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == (platform.processor() or platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and flags is None:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    text = f"{os.cpu_count()}-core {model}"
    if flags is not None:  # what decides the speed of bf16 and int8 products
        text += " (" + ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in
                                 (("AMX", "amx_bf16"), ("AVX512-BF16", "avx512_bf16"), ("VNNI", "avx512_vnni"))) + ")"
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
