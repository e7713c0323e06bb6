"""Faults: kill -9 and Ctrl-C in the middle of a stage, and a full disk.

Each kill test forks a real process that runs the stage's CLI command on a tiny run folder, sends it
a real signal at a few points of the stage (chosen from the stage's own duration), and then checks
what a user relies on: every artifact under its final name still parses, the artifacts of earlier
stages are byte-for-byte unchanged, and the same command run again succeeds and gives the result of
an uninterrupted run (bit for bit for the deterministic stages; same shapes for training).
``tests/support/stress_faults.py`` runs the big campaign (real model, many random points, strace); the
helpers that check a run folder are shared with it (``fault_checks.py``).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from fault_checks import PREVIOUS, SHARED, owned, snapshot, tiny_inputs, validate

from movielens_sids.cli import main
from movielens_sids.io import TMP_PREFIX

N = 48
SETTINGS = ["--set", "model.levels=2", "--set", "model.codebook_size=4",
            "--set", "model.hidden_dims=[16]", "--set", "train.max_epochs=3", "--set", "train.batch_size=16",
            "--set", "train.progress_bar=false", "--set", "train.accelerator=cpu", "--set", "assign.device=cpu"]
def _args(stage: str, run: Path, tmp: Path) -> list[str]:
    extra = ["--from", str(tmp / "v.npy"), "--ids", str(tmp / "ids.npy")] if stage == "embed" else []
    return [stage, "--run-dir", str(run), *extra, *SETTINGS]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """A tiny uninterrupted run: the folder after each stage, and each stage's duration."""
    tmp = tmp_path_factory.mktemp("faults")
    src = tiny_inputs(tmp, N)
    run = tmp / "reference"
    assert main(["catalog", "--source", str(src), "--run-dir", str(run)]) == 0
    snaps, seconds = {"catalog": tmp / "after-catalog"}, {}
    shutil.copytree(run, snaps["catalog"])
    for stage in ("embed", "train", "assign", "evaluate", "export"):
        t0 = time.perf_counter()
        assert main(_args(stage, run, tmp)) == 0, stage
        seconds[stage] = time.perf_counter() - t0
        snaps[stage] = tmp / f"after-{stage}"
        shutil.copytree(run, snaps[stage])
    return {"tmp": tmp, "snaps": snaps, "seconds": seconds, "final": snapshot(run)}


# Children are forked from a fork server, a fresh process that imported the CLI and nothing else: a
# process that has run OpenVINO (as this one has, in other tests) cannot be forked safely.
_FORK = multiprocessing.get_context("forkserver")
_FORK.set_forkserver_preload(["movielens_sids.cli", "torch"])


def _command(argv: list[str]) -> None:
    """The child: the command, as a user's process would run it."""
    import torch

    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores SIGINT
        torch.set_num_threads(1)
        code = main(argv)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _kill_at(argv: list[str], run: Path, sig: signal.Signals, delay: float) -> tuple[bool, int]:
    """Start a process running ``main(argv)``; signal it ``delay`` s after it takes the run-folder lock.

    Returns (whether the signal landed while the stage ran, the exit status: -N for signal N).
    """
    child = _FORK.Process(target=_command, args=(argv,))
    child.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / ".lock").exists():
        if not child.is_alive():
            child.join()
            return False, child.exitcode
        time.sleep(0.002)
    time.sleep(delay)
    if not child.is_alive():
        child.join()
        return False, child.exitcode
    os.kill(child.pid, sig)
    child.join()
    return child.exitcode != 0, child.exitcode  # 0: it finished in the instant before the signal


@pytest.mark.parametrize("stage", ["embed", "train", "assign", "export"])
def test_killed_stage_leaves_whole_artifacts_and_a_rerun_gives_the_uninterrupted_result(reference, stage, tmp_path):
    tmp, snaps = reference["tmp"], reference["snaps"]
    # A few points of the stage, from the start to past its end, alternating kill -9 and Ctrl-C.
    points = [(signal.SIGKILL, 0.0), (signal.SIGINT, 0.35), (signal.SIGKILL, 0.7)]
    landed = 0
    for i, (sig, frac) in enumerate(points):
        run = tmp_path / f"trial{i}" / "run"
        start = snaps[stage] if (i == 2 and stage != "embed") else snaps[PREVIOUS[stage]]  # or overwrite
        shutil.copytree(start, run)
        before = snapshot(run)
        hit, code = _kill_at(_args(stage, run, tmp), run, sig, frac * reference["seconds"][stage])
        landed += hit
        if hit and sig == signal.SIGINT:  # the CLI's own message and exit status, or Lightning's exit(1)
            assert code in (130, 1), f"Ctrl-C ended {stage} with exit {code}"
        if hit and sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        assert validate(run) == []  # nothing half-written under a final name
        after = snapshot(run)
        changed = [k for k, v in before.items() if not owned(stage, k) and after.get(k) != v]
        assert not changed, f"earlier artifacts changed by the interrupted {stage}: {changed}"
        # The same command again finishes the job, from whatever the kill left.
        assert main(_args(stage, run, tmp)) == 0
        assert validate(run) == []
        final, ref = snapshot(run), reference["final"]
        # The next command sweeps what a kill left at the top of the folder (see io.run_lock).
        assert not list(run.glob(f"{TMP_PREFIX}*")), "temporary files left after a successful rerun"
        if stage == "train":  # not bit-for-bit after a resume: same architecture and a working model
            from movielens_sids.model import load_tokenizer

            assert (run / "model" / "config.json").read_text() == (snaps["train"] / "model" / "config.json").read_text()
            shape = tuple(load_tokenizer(snaps["train"] / "model").codebooks.shape)
            assert tuple(load_tokenizer(run / "model").codebooks.shape) == shape
        else:
            mine = {k: v for k, v in ref.items() if owned(stage, k) and not k.startswith((".stages/", ".train",
                                                                                             ".embed-cache"))
                    and k not in SHARED}
            assert {k: final.get(k) for k in mine} == mine, f"{stage} rerun differs from the uninterrupted run"
    assert landed >= 1, f"no signal landed while {stage} ran"


# ------------------------------------------------------------------------------------------ full disk


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(("stage", "target"), [
    ("embed", "pyarrow.parquet.write_table"),
    ("assign", "pyarrow.parquet.write_table"),
    ("train", "safetensors.torch.save_file"),
    ("export", "pyarrow.parquet.write_table"),
])
def test_full_disk_is_a_clear_error_and_earlier_artifacts_stay_intact(reference, stage, target, tmp_path,
                                                                      monkeypatch, capsys):
    import importlib

    run = tmp_path / "run"
    # Over an existing result (the stage's earlier output must survive too).
    shutil.copytree(reference["snaps"][stage], run)
    before = snapshot(run)
    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, _enospc)
    extra = ["--no-normalize"] if stage == "embed" else []  # different vectors, so embed has to write
    assert main([*_args(stage, run, reference["tmp"]), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no space left" in err[0].lower(), err
    after = snapshot(run)
    assert {k: v for k, v in after.items() if not k.startswith((".stages/", ".train"))} == \
        {k: v for k, v in before.items() if not k.startswith((".stages/", ".train"))}
    assert not list(run.rglob(f"{TMP_PREFIX}*")), "a failed write left temporary files"
