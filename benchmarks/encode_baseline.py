"""The cost that cannot be avoided: a plain PyTorch ``SentenceTransformer.encode`` of a run folder's documents.

The run folder's own settings (``config.yaml``) give the model, the document template and the batch size; the
backend is torch, on the CPU, in a process of its own; the model load is not counted. The benchmarks divide
a job's wall time by it (``demo.py --encode``, ``e2e.py --encode``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from movielens_sids.config import RUN_SETTINGS

ENCODE = """
import sys, time
from movielens_sids.artifacts import read_catalog
from movielens_sids.config import load_config
from movielens_sids.documents import build_documents
from movielens_sids.stages.embed import load_model, resolve_model
cfg = load_config(sys.argv[2]).embed
docs = build_documents(read_catalog(sys.argv[1]), template=cfg.template, max_tags=cfg.max_tags)
model = load_model(resolve_model(cfg.model), "cpu", backend="torch")
t0 = time.perf_counter()
model.encode(docs, batch_size=cfg.batch_size)
print(len(docs), time.perf_counter() - t0)
"""


def plain_encode(run_dir: Path) -> tuple[int, float]:
    """A plain torch ``encode`` of the documents of a run folder's catalog, in its own process: (documents, s)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    settings = Path(run_dir) / RUN_SETTINGS
    out = subprocess.run([sys.executable, "-c", ENCODE, str(run_dir), str(settings)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[-2]), float(out[-1])
