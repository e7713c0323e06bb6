"""Layers point one way: no import cycle, every module imports on its own, reading a config stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import import_graph
import pytest


def test_no_import_cycle_even_counting_imports_inside_functions():
    top, inner = import_graph.graph()
    assert len(top) > 30  # the scan found the package
    assert import_graph.cycles({m: top[m] | inner[m] for m in top}) == []


def test_settings_import_nothing_of_the_package_but_two_leaves():
    top, inner = import_graph.graph()
    allowed = {"movielens_sids.data", "movielens_sids.data.registry", "movielens_sids.documents"}
    assert top["movielens_sids.settings"] <= allowed and not inner["movielens_sids.settings"]
    pure = {"movielens_sids.model.config", "movielens_sids.model.kmeans"}
    assert not (top["movielens_sids.model.rqvae"] - pure)  # pure model math
    assert not top["movielens_sids.model.kmeans"]  # k-means imports torch only


def test_no_stage_imports_another_stage():
    top, inner = import_graph.graph()
    stages = {m for m in top if m.startswith("movielens_sids.stages.")}
    for m in stages:
        others = (top[m] | inner[m]) & stages - {m, "movielens_sids.stages.lightning_module"}
        assert not others, (m, others)


def test_reading_a_config_loads_no_stage_no_pandas_no_torch():
    code = ("import sys, json, movielens_sids.config as c; c.load_config('tiger');"
            "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    ours = [m for m in loaded if m.startswith("movielens_sids")]
    assert not [m for m in ours if m.startswith(("movielens_sids.stages", "movielens_sids.pipeline"))], ours
    assert not {"pandas", "torch", "pyarrow", "numpy"} & set(loaded)


@pytest.mark.slow
def test_every_module_imports_alone():
    """Each module in a fresh interpreter: an import that works only after another module was loaded fails here."""
    modules = sorted(set(import_graph.graph()[0]) - {"movielens_sids.__main__"})  # __main__ runs the CLI

    def attempt(module: str) -> tuple[str, int, str]:
        r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        return module, r.returncode, r.stderr[-500:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [(m, err) for m, rc, err in pool.map(attempt, modules) if rc != 0]
    assert failed == []
