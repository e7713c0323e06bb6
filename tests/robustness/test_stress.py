"""Stress: a kill campaign and a fuzz campaign of ``stress_faults.py`` must lose nothing and raise nothing.

Marked ``stress`` (and ``slow``): not in the default test run; CI runs them as their own step
(``.ci/run``). The kill campaign runs at the scale users have: 87,585 movies with random 384-d unit
vectors (``embed --from``), residual k-means as the tokenizer (fitted in seconds; training is not
interrupted here), one kill point per signal in ``assign`` and ``export``, without strace; and two ``run``
commands start on one folder. The full campaigns run by hand: ``python tests/support/stress_faults.py`` (the
demo preset with the real MiniLM model, more points, strace) and ``--full-scale`` (24 faults in
``train``, ``assign``, ``evaluate`` and ``export``; its evaluate reference alone takes minutes).
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


# ------------------------------------------------------------------------------------------ full scale


@pytest.fixture(scope="module")
def full_scale(tmp_path_factory):
    """The kill campaign at full scale: ``assign`` and ``export`` interrupted, one point per signal."""
    work = tmp_path_factory.mktemp("full-scale")
    args = argparse.Namespace(full_scale=stress_faults.FULL_SCALE, max_epochs=1, points=1,
                              set=["assign.strategy=suffix", "train.tokenizer=rqkmeans"],
                              stages=["assign", "export"], reference_stages=["catalog", "embed", "train", "assign",
                                                                              "export"],
                              no_strace=True, reuse_reference=False, keep_trials=False, seed=0)
    return work, args, stress_faults.kill_campaign(args, work)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs processes to kill")
def test_killed_stages_lose_no_artifact_at_full_scale(full_scale):
    _, _, report = full_scale
    assert report["faults_injected"] >= 3, report["by_stage"]
    assert report["artifacts_lost"] == 0, [t for t in report["trials"] if t["problems"]]
    assert report["recoveries"] == report["faults_injected"]
    assert all(t.get("bitwise_equal") for t in report["trials"])  # sids.parquet and dataset/ byte for byte


def test_a_second_run_on_the_same_folder_stops_with_a_clear_message(full_scale, tmp_path):
    import subprocess
    import sys
    import time

    from fault_checks import snapshot

    work, args, _ = full_scale
    run = tmp_path / "run"
    shutil.copytree(work / "after-export", run, symlinks=True)
    (run / ".stages" / "assign.json").unlink()  # so the first run has work to do: assign again
    cmd = [sys.executable, "-m", "movielens_sids", "run", "--run-dir", str(run), "--until", "assign",
           *stress_faults._common(args, work)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / ".lock").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and lines[-1].startswith(f"error: run folder {run} is in use by another command"), \
        second.stderr[-2000:]
    ref = snapshot(work / "after-export")
    got = snapshot(run)
    assert {k: v for k, v in got.items() if not k.startswith(".stages/")} == \
        {k: v for k, v in ref.items() if not k.startswith(".stages/") and k != "config.yaml"} | \
        {k: got[k] for k in ("config.yaml",) if k in got}
