"""Stress: a small kill campaign and a fuzz campaign of ``stress_faults.py`` must lose nothing and raise nothing.

Marked ``stress`` (and ``slow``): not in the default test run; CI runs them as their own step
(``.ci/run``). The kill campaign uses the offline MiniLM model on 120 movies, one kill point per
stage and signal, without strace; the full campaign (``python tests/stress_faults.py``) draws more.
"""

from __future__ import annotations

import argparse
import os
import shutil

import pytest
import stress_faults

pytestmark = [pytest.mark.slow, pytest.mark.stress]


def test_fuzzed_inputs_give_a_result_or_a_one_line_error(tmp_path):
    report = stress_faults.fuzz_campaign(150, seed=0, work=tmp_path)
    assert report["inputs_fuzzed"] == 150
    assert report["tracebacks"] == 0 and report["bad_outcomes"] == 0, report["failures"][:5]
    assert report["accepted"] > 0 and report["refused_one_line"] > 0  # both outcomes were exercised


@pytest.mark.skipif(not hasattr(os, "fork") or shutil.which("python3") is None, reason="needs processes to kill")
def test_killed_stages_lose_no_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = argparse.Namespace(config="demo", limit=120, max_epochs=2, chunk_size=32, points=1,
                              set=["assign.strategy=suffix", "train.batch_size=64"], stages=["assign", "export"],
                              no_strace=True, reuse_reference=False, keep_trials=False, seed=0)
    report = stress_faults.kill_campaign(args, tmp_path)
    assert report["faults_injected"] >= 2
    assert report["artifacts_lost"] == 0, [t for t in report["trials"] if t["problems"]]
    assert report["recoveries"] == report["faults_injected"]
