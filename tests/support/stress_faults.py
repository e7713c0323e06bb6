"""Reliability report: kill -9 / Ctrl-C campaign on real CLI processes, plus a fuzz campaign.

Kill campaign. A small but real run folder is built once, stage by stage, as separate CLI processes
(``catalog``, ``embed``, ``train``, ``assign``, ``evaluate``, ``export``), and a snapshot of the folder
is kept after each stage: that is the uninterrupted reference. Then, for each of ``embed``, ``train``,
``assign`` and ``export``, and for each signal (SIGKILL, SIGINT), the script draws ``--points``
seeded random kill points. One trial:

1. copies the snapshot taken before the stage (every other trial of train/assign/export starts from
   the snapshot *after* it, so the stage overwrites its own earlier artifact) into a fresh folder;
2. starts the stage under ``strace`` (only ``open``/``openat`` calls), waits until the process holds
   the run-folder lock (the stage proper has started), sleeps the drawn time (uniform in
   ``[0, 1.1 x`` the stage's reference time``]``) and sends the signal; a point the process
   outlives is redrawn and not counted;
3. checks the folder: every artifact under its final name parses (Parquet, JSON, safetensors via
   ``load_tokenizer``, the dataset shards, Lightning's ``last.ckpt`` with ``weights_only=True``, the
   embedding chunk cache), every artifact of earlier stages is byte-for-byte unchanged, and the
   stage's own artifact is either the old one, a complete new one, or absent;
4. runs the same command again: it must succeed, and its result must equal the reference, byte for
   byte for embed, assign and export (deterministic), and for train: the same config, the same
   number of codes per level, and final relative MSE / unique fraction within a tolerance;
5. reads the ``strace`` logs of both processes: no stage ever opened a ``.tmp-*`` file for reading.

An artifact counts as *lost* when an earlier artifact changed or vanished, a file under its final
name does not parse, or the rerun does not reproduce the reference.

Fuzz campaign. ``--fuzz`` inputs (default 1,000), in process through ``movielens_sids.cli.main``:
MovieLens ``movies``/``links``/``tags`` files in CSV and ``.dat`` form, mutated at random (bad
encodings, stray quotes, missing or extra columns, huge fields, empty files, BOMs, CRLF, NUL bytes,
truncation, byte flips, huge numbers, ...) into ``catalog --source``; and random arrays / tables
into ``embed --from`` (``.npy`` + ids, Parquet): every outcome must be exit 0 with a valid catalog
(resp. embeddings) or exit 2 with a one-line ``error:``; anything else (exit 1 = an unexpected
exception, or an exception escaping ``main``) counts as a traceback. A failed command must leave the
run folder's earlier artifacts unchanged.

A stress test, not a benchmark (it times nothing): ``tests/robustness/test_stress.py`` runs a small campaign
of each kind in CI (marked ``stress``); the full campaign runs by hand:

Full scale (``--full-scale [N]``): the run folder is built from a synthetic catalog of N movies (default
87,585, as many as ml-32m has) with random 384-d unit vectors imported by ``embed --from``, with small
model settings (``FULL_SCALE_SETTINGS``: 3 x 64 codes, one epoch; the point is the catalog's scale), and
the campaign interrupts ``train``, ``assign``, ``evaluate`` and ``export``. ``evaluate`` is compared on
every number of ``report.json`` but its timings, ``train`` on its config, shapes and metrics (a resumed
training replays its interrupted epoch with other batches: not bit-exact; the report gives the difference).

Usage:
    python tests/support/stress_faults.py [--out FOLDER] [--limit 600] [--points 5] [--fuzz 1000] [--seed 0]
    python tests/support/stress_faults.py --fuzz-only         # only the fuzz campaign (about a minute)
    python tests/support/stress_faults.py --full-scale --kill-only --points 3 --no-strace   # 24 faults on 87,585 movies

Prints: faults injected, recoveries, artifacts lost (must be 0), inputs fuzzed, tracebacks (must
be 0); writes ``report.json`` (every trial) under ``--out``. Exit 1 when either count is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fault_checks import PREVIOUS, SHARED, owned, snapshot, validate  # noqa: E402

STAGES = ["catalog", "embed", "train", "assign", "evaluate", "export"]
CAMPAIGN = ["embed", "train", "assign", "export"]
DETERMINISTIC = {"embed", "assign", "export"}
TRAIN_TOL = {"relative_mse": 0.05, "unique_fraction": 0.10}

log = logging.getLogger("faults")


# ------------------------------------------------------------------------------------------ helpers


_CALL_RE = re.compile(r'^(\d+)\s+(open|openat|mkdir|mkdirat|rename|renameat2?|rmdir|unlinkat)\((?:AT_FDCWD, )?'
                      r'"([^"]+)"(?:, (?:AT_FDCWD, )?"([^"]+)")?(?:, ([A-Z_|]+))?')
TRACED = "open,openat,mkdir,mkdirat,rename,renameat,renameat2,rmdir,unlinkat"


def _made_dirs(trace: Path, root: str) -> set[str]:
    """Temporary folders a traced process created (listing or deleting a folder reads no artifact)."""
    out: set[str] = set()
    if trace.exists():
        for line in trace.read_text(errors="replace").splitlines():
            m = _CALL_RE.match(line)
            if m and m.group(2).startswith("mkdir") and ".tmp-" in m.group(3) and m.group(3).startswith(root):
                out.add(m.group(3))
    return out


def tmp_reads(trace: Path, run_dir: Path, *, others: tuple[Path, ...] = ()) -> list[str]:
    """``.tmp-*`` paths in ``run_dir`` that a traced process opened to read, other than its own.

    A process may read back what it made itself (``atomic_path`` fsyncs its own file and folder;
    ``atomic_dir`` renames the old folder to ``.tmp-<name>.old-<pid>`` and removes it) and may open
    a leftover folder to delete it (``run_lock``'s sweep); any other read of a temporary path is a
    read of someone else's unfinished write, e.g. the leftover of a killed predecessor.
    """
    if not trace.exists():
        return []
    root = str(run_dir)
    made: set[str] = set()
    removed: set[str] = set()
    reads: list[tuple[str, str]] = []
    for line in trace.read_text(errors="replace").splitlines():
        m = _CALL_RE.match(line)
        if not m:
            continue
        pid, call, path, target, flags = m.groups()
        flags = flags or ""
        if call.startswith("rename"):
            if target:
                made.add(target)
            continue
        if ".tmp-" not in path or not path.startswith(root):
            continue
        if call.startswith("mkdir") or "O_CREAT" in flags:
            made.add(path)
        elif call == "rmdir" or (call == "unlinkat" and "AT_REMOVEDIR" in flags):
            removed.add(path)
        elif "O_DIRECTORY" not in flags and ("O_RDONLY" in flags or "O_RDWR" in flags):
            if not re.search(r"/\.tmp-[^/]+\.old-\d+$", path):  # atomic_dir's old folder: only ever deleted
                reads.append((path, pid))
    dirs = set().union(*(_made_dirs(o, root) for o in others)) if others else set()
    return [p for p, _ in reads if p not in made and p not in removed and p not in dirs]


class Runner:
    """Starts CLI stage commands on a run folder, optionally under strace."""

    def __init__(self, common: list[str], env: dict[str, str], strace: bool) -> None:
        self.common = common
        self.env = env
        self.strace = strace and shutil.which("strace") is not None

    def start(self, stage: str, run_dir: Path, trace: Path, log_path: Path) -> tuple[subprocess.Popen, Any]:
        cmd = [sys.executable, "-m", "movielens_sids", stage, "--run-dir", str(run_dir), *self.common]
        if self.strace:
            cmd = ["strace", "-f", "--seccomp-bpf", "-qq", "-e", f"trace={TRACED}", "-o", str(trace),
                   *cmd]
        out = open(log_path, "wb")
        # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across
        # exec: without this, Ctrl-C would never reach the command when the campaign runs under nohup.
        return subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)), out

    def target_pid(self, proc: subprocess.Popen) -> int | None:
        """The Python process to signal (strace's child running ``movielens_sids`` when traced)."""
        if not self.strace:
            return proc.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                for kid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    if b"movielens_sids" in Path(f"/proc/{kid}/cmdline").read_bytes():
                        return int(kid)
            time.sleep(0.01)
        return None

    def run(self, stage: str, run_dir: Path, trace: Path, log_path: Path) -> tuple[int, float]:
        t0 = time.perf_counter()
        proc, out = self.start(stage, run_dir, trace, log_path)
        rc = proc.wait()
        out.close()
        return rc, time.perf_counter() - t0


def _tail(path: Path, n: int = 3) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])[-400:]
    return ""


def _train_summary(run_dir: Path) -> dict[str, Any]:
    import torch

    from movielens_sids.model import load_tokenizer

    tok = load_tokenizer(run_dir / "model")
    metrics = json.loads((run_dir / "model" / "train_metrics.json").read_text())
    return {
        "config": json.loads((run_dir / "model" / "config.json").read_text()),
        "codebooks": list(tok.codebooks.shape) if isinstance(tok.codebooks, torch.Tensor) else None,
        "relative_mse": metrics["all"]["relative_mse"],
        "unique_fraction": metrics["all"]["unique_fraction"],
        "resumed_from_step": metrics.get("resumed_from_step", 0),
    }


def _report_numbers(run_dir: Path) -> dict[str, Any]:
    """report.json without what an interrupted run may change (timings, the seconds each part took)."""
    report = json.loads((run_dir / "report.json").read_text())
    return {k: v for k, v in report.items() if k not in ("timings_s", "compute_s")}


def train_difference(got: Path, ref: Path) -> dict[str, float]:
    """How a resumed training's model differs from the uninterrupted one: its metrics, and the largest
    difference of a codebook entry (a resume replays the interrupted epoch with other batches)."""
    import torch

    from movielens_sids.model import load_tokenizer

    a, b = _train_summary(got), _train_summary(ref)
    ta, tb = (load_tokenizer(d / "model") for d in (got, ref))
    ca, cb = ta.codebooks.detach(), tb.codebooks.detach()
    sa, sb = ta.state_dict(), tb.state_dict()
    weights = [float(torch.max(torch.abs(sa[k].double() - sb[k].double()))) for k in sa
               if k in sb and sa[k].shape == sb[k].shape and sa[k].numel()]
    return {"relative_mse": round(a["relative_mse"] - b["relative_mse"], 6),
            "unique_fraction": round(a["unique_fraction"] - b["unique_fraction"], 6),
            "max_codebook_abs_diff": float(torch.max(torch.abs(ca - cb))) if ca.shape == cb.shape else float("nan"),
            "max_weight_abs_diff": max(weights, default=float("nan"))}


def compare(stage: str, got: Path, ref: Path, ref_hashes: dict[str, str], before: dict[str, str]
            ) -> tuple[list[str], bool]:
    """Problems of the rerun's outputs against the reference, and whether they are byte-for-byte equal."""
    new = snapshot(got)
    mine = {k: v for k, v in ref_hashes.items() if owned(stage, k) and k not in SHARED
            and not k.startswith((".stages/", ".train/", ".embed-cache/"))}
    if stage == "train":
        mine = {k: v for k, v in mine.items() if k in ("model/config.json", "model/model.safetensors")}
    bitwise = all(new.get(k) == v for k, v in mine.items())
    problems: list[str] = []
    if stage in DETERMINISTIC:
        problems += [f"{k} differs from the uninterrupted run" for k, v in mine.items() if new.get(k) != v]
    elif stage == "evaluate":  # every number but the timings
        a, b = (_report_numbers(d) for d in (got, ref))
        problems += [f"report.json {k} differs from the uninterrupted run" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k)]
        if new.get("labels.parquet") != mine.get("labels.parquet"):
            problems.append("labels.parquet differs from the uninterrupted run")
    else:
        try:
            a, b = _train_summary(got), _train_summary(ref)
        except Exception as e:
            return [f"rerun model unreadable: {type(e).__name__}: {e}"], False
        if a["config"] != b["config"]:
            problems.append("model/config.json differs from the uninterrupted run")
        if a["codebooks"] != b["codebooks"]:
            problems.append(f"codebooks {a['codebooks']} != {b['codebooks']}")
        for k, tol in TRAIN_TOL.items():
            if abs(a[k] - b[k]) > tol:
                problems.append(f"{k} {a[k]:.4f} vs {b[k]:.4f} (tolerance {tol})")
    others = {k: v for k, v in before.items() if not owned(stage, k) and not k.startswith(".stages/")}
    problems += [f"{k} (an input) changed" for k, v in others.items() if new.get(k) != v]
    return problems, bitwise


# ------------------------------------------------------------------------------------------ kill campaign


def build_reference(work: Path, runner: Runner, stages: list[str] = STAGES
                    ) -> tuple[dict[str, Path], dict[str, float]]:
    """Run ``stages`` uninterrupted; snapshot the folder after each. Returns snapshots and stage seconds (a
    stage left out shares the snapshot of the one before it)."""
    base = work / "reference"
    shutil.rmtree(base, ignore_errors=True)
    snaps: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for i, stage in enumerate(STAGES):
        if stage not in stages:
            snaps[stage], seconds[stage] = snaps[STAGES[i - 1]], 0.0
            continue
        rc, wall = runner.run(stage, base, work / f"reference-{stage}.strace", work / f"reference-{stage}.log")
        if rc != 0:
            raise SystemExit(f"reference {stage} failed (exit {rc}): {_tail(work / f'reference-{stage}.log')}")
        rec = json.loads((base / ".stages" / f"{stage}.json").read_text())
        seconds[stage] = float(rec["seconds"])
        snaps[stage] = work / f"after-{stage}"
        shutil.rmtree(snaps[stage], ignore_errors=True)
        shutil.copytree(base, snaps[stage], symlinks=True)
        log.info("reference %-8s %6.1fs wall, %6.1fs in the stage", stage, wall, seconds[stage])
        bad = tmp_reads(work / f"reference-{stage}.strace", base)
        if bad:
            raise SystemExit(f"reference {stage} opened temporary files for reading: {bad[:3]}")
    return snaps, seconds


def one_trial(stage: str, sig: signal.Signals, point: float, start_from: Path, trial_dir: Path,
              runner: Runner, ref_hashes: dict[str, str], ref_dir: Path) -> dict[str, Any]:
    """Kill ``stage`` ``point`` seconds after it took the lock, check the folder, rerun, compare."""
    shutil.rmtree(trial_dir, ignore_errors=True)
    trial_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir = trial_dir / "run"
    shutil.copytree(start_from, run_dir, symlinks=True)
    before = snapshot(run_dir)
    res: dict[str, Any] = {"stage": stage, "signal": sig.name, "point_s": round(point, 3),
                           "start": start_from.name, "problems": [], "trial_dir": str(trial_dir)}
    proc, out = runner.start(stage, run_dir, trial_dir / "killed.strace", trial_dir / "killed.log")
    t_start = time.perf_counter()
    pid = None
    lock = run_dir / ".lock"
    t_lock = None
    while proc.poll() is None:
        if lock.exists():
            t_lock = time.perf_counter()
            break
        time.sleep(0.005)
    injected = False
    res["lock_after_s"] = round(time.perf_counter() - t_start, 2) if t_lock is not None else None
    if t_lock is not None:
        while proc.poll() is None and time.perf_counter() - t_lock < point:
            time.sleep(0.002)
        pid = runner.target_pid(proc)
        if proc.poll() is None and pid is not None:
            try:
                os.kill(pid, sig)
                injected = True
                res["elapsed_at_signal_s"] = round(time.perf_counter() - t_lock, 3)
            except ProcessLookupError:
                res["signal_error"] = f"no process {pid}"
        else:
            res["signal_skipped"] = {"poll": proc.poll(), "pid": pid}
    try:
        rc = proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        res["problems"].append(f"{sig.name} not honoured within 180s; killed")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        rc = proc.wait()
    out.close()
    res["killed_exit"] = rc
    res["injected"] = injected
    if not injected:
        res["finished_in_s"] = round(time.perf_counter() - (t_lock or time.perf_counter()), 3)
        return res
    # How the command took it (not an artifact question): reported apart from the artifact checks.
    res["findings"] = []
    # 130: the CLI's "interrupted" exit; -2: died of SIGINT (a shell shows 130 too); 1: Lightning's exit(1).
    if sig == signal.SIGINT and rc not in (130, 1, -2):
        res["findings"].append(f"Ctrl-C gave exit {rc} ({_tail(trial_dir / 'killed.log')})")
    if sig == signal.SIGINT and "Traceback" in (trial_dir / "killed.log").read_text(errors="replace"):
        res["findings"].append(f"Ctrl-C printed a traceback: {_tail(trial_dir / 'killed.log', 5)}")
    # 3. the folder right after the kill
    res["left_tmp"] = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob(".tmp-*"))
    res["problems"] += [f"after the kill: {p}" for p in validate(run_dir)]
    after = snapshot(run_dir)
    for rel, h in before.items():
        if owned(stage, rel):
            continue
        if rel.startswith(".stages/"):
            continue
        if after.get(rel) != h:
            res["problems"].append(f"after the kill: earlier artifact {rel} {'changed' if rel in after else 'lost'}")
    # 4. run again
    rc2, wall2 = runner.run(stage, run_dir, trial_dir / "rerun.strace", trial_dir / "rerun.log")
    res["rerun_exit"], res["rerun_s"] = rc2, round(wall2, 2)
    if rc2 != 0:
        res["problems"].append(f"rerun failed (exit {rc2}): {_tail(trial_dir / 'rerun.log')}")
    else:
        problems, bitwise = compare(stage, run_dir, ref_dir, ref_hashes, before)
        res["bitwise_equal"] = bitwise
        res["problems"] += problems
        res["problems"] += [f"after the rerun: {p}" for p in validate(run_dir)]
        if stage == "train":
            with contextlib.suppress(Exception):
                res["resumed_from_step"] = _train_summary(run_dir)["resumed_from_step"]
                res["train_difference"] = train_difference(run_dir, ref_dir)
    # 5. no .tmp-* file opened for reading
    for name in ("killed", "rerun"):
        bad = tmp_reads(trial_dir / f"{name}.strace", run_dir, others=(trial_dir / "killed.strace",))
        if bad:
            res["problems"].append(f"{name} process read temporary files: {sorted(set(bad))[:3]}")
    res["recovered"] = rc2 == 0 and not res["problems"]
    return res


FULL_SCALE = 87_585
"""Movies of the full-scale campaign: as many as ml-32m has."""
FULL_SCALE_SETTINGS = ["model.levels=3", "model.codebook_size=64", "model.hidden_dims=[32]",
                       "model.kmeans_max_points=8192", "model.kmeans_iters=5", "train.batch_size=4096",
                       "assign.device=cpu", "evaluate.charts=false"]
"""Small model settings for the full-scale catalog: the point is the catalog's scale, not the model's."""


def synthetic_catalog(folder: Path, n: int, *, dim: int = 384, seed: int = 0) -> list[str]:
    """A MovieLens ``movies.csv`` of ``n`` movies and ``n`` random unit vectors (``.npy`` + ids) in ``folder``;
    returns the ``--set`` values that point ``catalog`` and ``embed --from`` at them."""
    folder.mkdir(parents=True, exist_ok=True)
    genres = ["Drama", "Comedy", "Action", "Horror", "Romance", "Sci-Fi", "Documentary"]
    if not (folder / "ids.npy").exists():
        rows = [(i, f"Film {i} ({1900 + i % 125})", "|".join(genres[i % 7:i % 7 + 1 + i % 2]))
                for i in range(1, n + 1)]
        (folder / "ml").mkdir(exist_ok=True)
        (folder / "ml" / "movies.csv").write_bytes(_csv_text(["movieId", "title", "genres"], rows))
        x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
        np.save(folder / "v.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
        np.save(folder / "ids.npy", np.arange(1, n + 1, dtype=np.int64))
    return [f"data.source={folder / 'ml'}", f"embed.from_file={folder / 'v.npy'}",
            f"embed.from_ids={folder / 'ids.npy'}"]


def _common(args: argparse.Namespace, work: Path) -> list[str]:
    """The arguments every stage command of the campaign gets."""
    sets = ["embed.device=cpu", f"train.max_epochs={args.max_epochs}", "train.progress_bar=false",
            "train.accelerator=cpu", *args.set]
    if getattr(args, "full_scale", 0):
        sets = [*synthetic_catalog(work / "inputs", args.full_scale), *FULL_SCALE_SETTINGS, *sets]
        return [x for v in sets for x in ("--set", v)]
    sets = [f"data.limit={args.limit}", f"embed.chunk_size={args.chunk_size}", *sets]
    return ["--config", args.config, *[x for v in sets for x in ("--set", v)]]


def kill_campaign(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("MOVIELENS_SIDS_DEBUG", None)
    runner = Runner(_common(args, work), env, strace=not args.no_strace)
    t0 = time.perf_counter()
    if args.reuse_reference and (work / "after-export").is_dir():
        snaps = {s: work / f"after-{s}" for s in STAGES}
        seconds = {s: float(json.loads((snaps[s] / ".stages" / f"{s}.json").read_text())["seconds"]) for s in STAGES}
        log.info("reusing the reference run in %s (stage seconds %s)", work, seconds)
    else:
        snaps, seconds = build_reference(work, runner, getattr(args, "reference_stages", None) or STAGES)
        if snaps["evaluate"] != snaps["assign"] and (snaps["evaluate"] / ".cache").is_dir():
            # a cache, not an artifact: spares each evaluate trial the embedding k-NN (minutes at full scale)
            shutil.copytree(snaps["evaluate"] / ".cache", snaps["assign"] / ".cache", dirs_exist_ok=True)
    ref_dir = snaps["export"]
    ref_hashes = snapshot(ref_dir)
    rng = random.Random(args.seed)
    trials: list[dict[str, Any]] = []
    for stage in args.stages:
        for sig in (signal.SIGKILL, signal.SIGINT):
            done = 0
            attempts = 0
            hi = 1.1 * seconds[stage]
            while done < args.points and attempts < 4 * args.points:
                attempts += 1
                point = rng.uniform(0.0, hi)
                overwrite = stage != "embed" and done % 2 == 1
                start = snaps[stage] if overwrite else snaps[PREVIOUS[stage]]
                trial_dir = work / "trials" / f"{stage}-{sig.name}-{attempts:02d}"
                res = one_trial(stage, sig, point, start, trial_dir, runner, ref_hashes, ref_dir)
                if not res["injected"]:
                    hi = max(0.01, min(hi, res.get("finished_in_s", hi)) * 0.9)  # draw earlier next time
                    log.info("%-6s %-7s point %.2fs: finished before the signal; redrawn", stage, sig.name, point)
                    continue
                done += 1
                trials.append(res)
                partial = {"kill": summarize_kills(trials, args.stages) | {"reference_stage_seconds": seconds,
                                                                            "trials": trials, "partial": True}}
                (work / "partial.json").write_text(json.dumps(partial, indent=2, default=str))
                status = "ok" if res["recovered"] else "PROBLEM: " + "; ".join(res["problems"])[:300]
                log.info("%-6s %-7s point %6.2fs (%-12s) exit %4s -> rerun %s%s  %s", stage, sig.name, point,
                         res["start"], res["killed_exit"], res.get("rerun_exit"),
                         f" resumed@{res['resumed_from_step']}" if res.get("resumed_from_step") else "", status)
                if not args.keep_trials and res["recovered"] and not res.get("findings"):
                    shutil.rmtree(trial_dir, ignore_errors=True)
            if done < args.points:
                log.warning("%s %s: only %d of %d kill points landed inside the stage", stage, sig.name, done,
                            args.points)
    return summarize_kills(trials, args.stages) | {"reference_stage_seconds": seconds, "trials": trials,
                                                    "seconds": round(time.perf_counter() - t0, 1)}


def summarize_kills(trials: list[dict[str, Any]], stages: list[str]) -> dict[str, Any]:
    """The counts of the report, from the trials (artifact problems apart from exit-code findings)."""
    for t in trials:  # trials kept on disk: read their strace logs again with the current rules
        m = re.search(r"'(/[^']+?)/run/", " ".join(t["problems"]))
        d = Path(t.get("trial_dir") or (m.group(1) if m else "/nonexistent"))
        if (d / "run").is_dir() and any("temporary files" in p for p in t["problems"]):
            t["problems"] = [p for p in t["problems"] if "read temporary files" not in p]
            for name in ("killed", "rerun"):
                bad = tmp_reads(d / f"{name}.strace", d / "run", others=(d / "killed.strace",))
                if bad:
                    t["problems"].append(f"{name} process read temporary files: {sorted(set(bad))[:3]}")
    for t in trials:  # reports written before findings were split from problems, or before -2 was accepted
        t.setdefault("findings", [p for p in t["problems"] if p.startswith("Ctrl-C")])
        t["findings"] = [f for f in t["findings"] if not f.startswith("Ctrl-C gave exit -2 ")]
        t["problems"] = [p for p in t["problems"] if not p.startswith("Ctrl-C")]
        t["recovered"] = t.get("rerun_exit") == 0 and not t["problems"]
    return {
        "faults_injected": len(trials),
        "by_stage": {s: sum(1 for t in trials if t["stage"] == s) for s in stages},
        "by_signal": {g: sum(1 for t in trials if t["signal"] == g) for g in ("SIGKILL", "SIGINT")},
        "recoveries": sum(1 for t in trials if t["recovered"]),
        "artifacts_lost": sum(1 for t in trials if t["problems"]),
        "bitwise_equal_reruns": {s: sum(1 for t in trials if t["stage"] == s and t.get("bitwise_equal"))
                                 for s in stages},
        "train_resumed_from_checkpoint": sum(1 for t in trials if t.get("resumed_from_step")),
        "train_differences": [t["train_difference"] for t in trials if t.get("train_difference")],
        "temporary_files_left_by_kills": sum(1 for t in trials if t.get("left_tmp")),
        "ctrl_c_findings": sum(1 for t in trials if t["findings"]),
        "ctrl_c_exits": {str(c): sum(1 for t in trials if t["signal"] == "SIGINT" and t.get("killed_exit") == c)
                         for c in sorted({t.get("killed_exit") for t in trials if t["signal"] == "SIGINT"},
                                         key=str)},
    }


# ------------------------------------------------------------------------------------------ fuzz campaign

MOVIE_ROWS = [
    (1, "Toy Story (1995)", "Adventure|Animation|Children|Comedy|Fantasy"),
    (2, "Matrix, The (1999)", "Action|Sci-Fi|Thriller"),
    (3, "Bicycle Thieves (a.k.a. Bicycle Thief, The) (Ladri di biciclette) (1948)", "Drama"),
    (4, "Babylon 5", "Sci-Fi"),
    (5, "Death Note: Desu nôto (2006–2007)", "(no genres listed)"),
    (6, "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)", "Comedy|Romance"),
    (7, "Игра на выбывание", "Thriller"),
    (8, "\"Great\" Escape, The (1963)", "Action|Adventure|Drama|War"),
]
LINK_ROWS = [(1, "0114709", "862"), (2, "0133093", "603"), (3, "0040522", "5156"), (4, "0105946", ""),
             (6, "0211915", "194")]
TAG_ROWS = [(1, 2, "cyberpunk", 1000), (2, 2, "Philosophy", 1001), (1, 1, "pixar", 1002),
            (3, 8, "Tom Hanks, Tim Allen", 1003), (4, 99, "orphan", 1004)]


def _csv_text(header: list[str], rows: list[tuple]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _dat_text(rows: list[tuple]) -> bytes:
    return "".join("::".join(map(str, r)) + "\n" for r in rows).encode("latin-1", "replace")


def seed_files(fmt: str) -> dict[str, bytes]:
    if fmt == "csv":
        return {"movies.csv": _csv_text(["movieId", "title", "genres"], MOVIE_ROWS),
                "links.csv": _csv_text(["movieId", "imdbId", "tmdbId"], LINK_ROWS),
                "tags.csv": _csv_text(["userId", "movieId", "tag", "timestamp"], TAG_ROWS)}
    return {"movies.dat": _dat_text(MOVIE_ROWS), "tags.dat": _dat_text(TAG_ROWS)}


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One random mutation of a MovieLens file; returns the new bytes and its name."""
    ops = [
        "empty", "header_only", "bom", "crlf", "cr_only", "latin1", "utf16", "invalid_utf8", "stray_quote",
        "unbalanced_quote", "drop_column", "extra_column", "swap_columns", "huge_field", "huge_number",
        "negative_id", "float_id", "nul_bytes", "truncate", "byte_flip", "random_bytes", "duplicate_rows",
        "blank_lines", "missing_header", "rename_header", "tabs", "dat_separator", "only_newlines",
        "whitespace_ids", "very_long_line", "control_chars", "duplicate_header",
    ]
    op = rng.choice(ops)
    lines = _lines(data)
    if op == "empty":
        return b"", op
    if op == "header_only":
        return lines[0] + b"\n", op
    if op == "bom":
        return b"\xef\xbb\xbf" + data, op
    if op == "crlf":
        return data.replace(b"\n", b"\r\n"), op
    if op == "cr_only":
        return data.replace(b"\n", b"\r"), op
    if op == "latin1":
        return data.decode("utf-8", "replace").encode("latin-1", "replace"), op
    if op == "utf16":
        return data.decode("utf-8", "replace").encode("utf-16"), op
    if op == "invalid_utf8":
        i = rng.randrange(len(lines))
        lines[i] = lines[i] + rng.choice([b"\xff\xfe", b"\xc3(", b"\xa0\xa1", b"\xe2\x82"])
        return b"\n".join(lines), op
    if op == "stray_quote":
        i = rng.randrange(len(data) + 1)
        return data[:i] + b'"' + data[i:], op
    if op == "unbalanced_quote":
        i = rng.randrange(1, max(2, len(lines)))
        if i < len(lines):
            lines[i] = b'"' + lines[i]
        return b"\n".join(lines), op
    if op in ("drop_column", "extra_column", "swap_columns"):
        sep = b"::" if b"::" in data else b","
        out = []
        for ln in lines:
            parts = ln.split(sep)
            if not ln:
                out.append(ln)
                continue
            if op == "drop_column" and len(parts) > 1:
                del parts[min(len(parts) - 1, 1 if rng.random() < 0.5 else len(parts) - 1)]
            elif op == "extra_column":
                parts.append(b"extra")
            elif op == "swap_columns" and len(parts) > 1:
                parts[0], parts[1] = parts[1], parts[0]
            out.append(sep.join(parts))
        return b"\n".join(out), op
    if op == "huge_field":
        i = rng.randrange(1, max(2, len(lines)))
        if i < len(lines) and lines[i]:
            sep = b"::" if b"::" in lines[i] else b","
            parts = lines[i].split(sep)
            j = rng.randrange(len(parts))
            parts[j] = parts[j] + b"x" * rng.choice([10_000, 200_000, 1_000_000])
            lines[i] = sep.join(parts)
        return b"\n".join(lines), op
    if op in ("huge_number", "negative_id", "float_id", "whitespace_ids"):
        i = rng.randrange(1, max(2, len(lines)))
        if i < len(lines) and lines[i]:
            sep = b"::" if b"::" in lines[i] else b","
            parts = lines[i].split(sep)
            j = rng.randrange(len(parts))
            parts[j] = {"huge_number": b"99999999999999999999999", "negative_id": b"-5",
                        "float_id": b"3.5", "whitespace_ids": b" 7 "}[op]
            lines[i] = sep.join(parts)
        return b"\n".join(lines), op
    if op == "nul_bytes":
        i = rng.randrange(len(data) + 1)
        return data[:i] + b"\x00" * rng.randint(1, 5) + data[i:], op
    if op == "truncate":
        return data[: rng.randrange(len(data) + 1)], op
    if op == "byte_flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b), op
    if op == "random_bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))), op
    if op == "duplicate_rows":
        return data + b"\n".join(lines[1:]) + b"\n", op
    if op == "blank_lines":
        return b"\n\n".join(lines) + b"\n\n   \n", op
    if op == "missing_header":
        return b"\n".join(lines[1:]), op
    if op == "rename_header":
        return b"id,name,kind\n" + b"\n".join(lines[1:]), op
    if op == "tabs":
        return data.replace(b",", b"\t"), op
    if op == "dat_separator":
        return data.replace(b",", b"::"), op
    if op == "only_newlines":
        return b"\n" * rng.randint(1, 10), op
    if op == "very_long_line":
        return data + b",".join([b"1"] * 50_000) + b"\n", op
    if op == "control_chars":
        i = rng.randrange(len(data) + 1)
        return data[:i] + bytes([rng.choice([1, 7, 8, 11, 12, 27, 127])]) + data[i:], op
    if op == "duplicate_header":
        return lines[0] + b"\n" + data, op
    raise AssertionError(op)


def _call(argv: list[str]) -> tuple[int | None, str, str | None]:
    """Run the CLI in process; (exit code, stderr, traceback text when an exception escaped)."""
    from movielens_sids.cli import main

    err = io.StringIO()
    out = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(argv)
    except SystemExit as e:
        return (e.code if isinstance(e.code, int) else 1), err.getvalue(), None
    except BaseException as e:
        import traceback

        return None, err.getvalue(), "".join(traceback.format_exception(e))
    return rc, err.getvalue(), None


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def fuzz_catalog_input(rng: random.Random, folder: Path) -> str:
    """Write one mutated MovieLens folder; return a description."""
    fmt = rng.choice(["csv", "csv", "dat"])
    files = seed_files(fmt)
    names = list(files)
    desc = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        name = rng.choice(names)
        files[name], op = mutate(files[name], rng)
        desc.append(f"{name}:{op}")
    if rng.random() < 0.1:
        drop = rng.choice(names)
        del files[drop]
        desc.append(f"no {drop}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return ",".join(desc)


def check_catalog(path: Path) -> list[str]:
    """Invariants of a catalog.parquet a user relies on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    problems = []
    for col, pred in (("movie_id", pa.types.is_int64), ("title", pa.types.is_string),
                      ("display_title", pa.types.is_string), ("year", pa.types.is_int64),
                      ("genres", pa.types.is_list), ("tags", pa.types.is_list), ("imdb_id", pa.types.is_string),
                      ("tmdb_id", pa.types.is_int64)):
        if col not in t.column_names or not pred(t.schema.field(col).type):
            problems.append(f"column {col} missing or mistyped")
    if problems:
        return problems
    ids = t.column("movie_id").to_numpy()
    if t.num_rows == 0:
        problems.append("empty catalog written")
    if len(np.unique(ids)) != len(ids) or not np.all(np.diff(ids) > 0):
        problems.append("movie_id not unique and sorted")
    if t.column("movie_id").null_count or t.column("title").null_count:
        problems.append("null movie_id or title")
    return problems


def fuzz_embed_input(rng: random.Random, folder: Path, catalog_ids: np.ndarray) -> tuple[list[str], str]:
    """Write one random vectors file (+ ids); return the CLI arguments and a description."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    n = len(catalog_ids)
    ids = catalog_ids.copy()
    what = []
    r = rng.random()
    if r < 0.15:
        ids = ids[: rng.randrange(n)]
        what.append("fewer ids")
    elif r < 0.25:
        ids = np.concatenate([ids, [10**6 + rng.randrange(100)]])
        what.append("unknown id")
    elif r < 0.35 and n > 1:
        ids = ids.copy()
        ids[-1] = ids[0]
        what.append("duplicate id")
    m = len(ids)
    dim = rng.choice([0, 1, 3, 16, 384])
    dtype = rng.choice([np.float32, np.float64, np.float16, np.int64, np.int8, np.bool_, np.complex64])
    x = np.random.default_rng(rng.randrange(2**32)).normal(size=(m, dim)) * rng.choice([1e-30, 1.0, 1e30])
    with np.errstate(all="ignore"):
        x = x.astype(dtype)
    special = rng.random()
    if special < 0.1 and x.size and np.issubdtype(x.dtype, np.floating):
        x.flat[rng.randrange(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
        what.append("non-finite")
    elif special < 0.15 and m:
        x[rng.randrange(m)] = 0
        what.append("zero vector")
    what.append(f"{x.dtype}[{m}x{dim}]")
    kind = rng.choice(["npy", "npy", "parquet", "parquet", "garbage"])
    if kind == "npy":
        shape = rng.random()
        if shape < 0.1:
            x = x.reshape(-1)
            what.append("1-D")
        elif shape < 0.15:
            x = x.reshape(m, dim, 1)
            what.append("3-D")
        np.save(folder / "v.npy", x)
        id_kind = rng.choice(["npy", "txt", "csv", "bad_txt", "float_npy", "missing"])
        ids_path = folder / f"ids.{id_kind.split('_')[-1]}"
        if id_kind == "npy":
            np.save(ids_path, ids)
        elif id_kind == "float_npy":
            np.save(ids_path, ids.astype(np.float64) + rng.choice([0.0, 0.5]))
        elif id_kind == "txt":
            ids_path.write_text("\n".join(map(str, ids)))
        elif id_kind == "bad_txt":
            ids_path = folder / "ids.txt"
            ids_path.write_text("\n".join(map(str, ids)) + "\nnot-a-number\n")
        elif id_kind == "csv":
            ids_path.write_text(rng.choice(["movie_id\n", "movieId\n", "x,y\n"]) + "\n".join(map(str, ids)))
        what.append(f"ids:{id_kind}")
        argv = ["--from", str(folder / "v.npy")]
        if id_kind != "missing":
            argv += ["--ids", str(ids_path)]
        return argv, " ".join(what)
    if kind == "parquet":
        cols: dict[str, Any] = {}
        if rng.random() > 0.1:
            cols[rng.choice(["movie_id", "movie_id", "movieId", "id"])] = pa.array(ids)
        flat = x.reshape(m, -1) if x.size else np.zeros((m, 0), x.dtype)
        variant = rng.choice(["list", "fixed", "ragged", "nulls", "strings", "two_lists"])
        if variant == "fixed" and dim and not np.issubdtype(flat.dtype, np.complexfloating):
            cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim)
        elif variant == "ragged":
            cols["embedding"] = pa.array([list(map(float, np.real(row[: rng.randint(0, dim)]))) for row in flat])
        elif variant == "nulls":
            vals = [list(map(float, np.real(row))) for row in flat]
            if vals:
                vals[rng.randrange(len(vals))] = None
                if vals[0] is not None and vals[0]:
                    vals[0][0] = None
            cols["embedding"] = pa.array(vals, pa.list_(pa.float64()))
        elif variant == "strings":
            cols["embedding"] = pa.array([[str(v) for v in np.real(row)] for row in flat], pa.list_(pa.string()))
        else:
            cols["embedding"] = pa.array([list(map(float, np.real(row))) for row in flat], pa.list_(pa.float64()))
            if variant == "two_lists":
                cols["other"] = cols["embedding"]
        what.append(f"parquet:{variant}")
        pq.write_table(pa.table(cols) if cols else pa.table({"x": pa.array([], pa.int64())}), folder / "v.parquet")
        return ["--from", str(folder / "v.parquet")], " ".join(what)
    data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    suffix = rng.choice([".npy", ".parquet"])
    if rng.random() < 0.5:
        data = (b"\x93NUMPY" if suffix == ".npy" else b"PAR1") + data
    (folder / f"v{suffix}").write_bytes(data)
    argv = ["--from", str(folder / f"v{suffix}")]
    if suffix == ".npy":
        np.save(folder / "ids.npy", ids)
        argv += ["--ids", str(folder / "ids.npy")]
    return argv, "garbage " + suffix


def fuzz_campaign(n: int, seed: int, work: Path) -> dict[str, Any]:
    from movielens_sids.io import file_hash

    rng = random.Random(seed)
    root = work / "fuzz"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    logging.getLogger().setLevel(logging.ERROR)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("MOVIELENS_SIDS_DEBUG", None)
    # A run folder with a catalog to import vectors against and a sentinel embeddings file to keep.
    base = root / "base"
    rc, err, tb = _call(["catalog", "--source", str(_write_seed(root / "seed")), "--run-dir", str(base)])
    if rc != 0:
        raise SystemExit(f"fuzz: the seed catalog failed: {err} {tb}")
    import pyarrow.parquet as pq

    cat_ids = pq.read_table(base / "catalog.parquet").column("movie_id").to_numpy()
    counts = {"catalog_inputs": 0, "embed_inputs": 0, "accepted": 0, "refused_one_line": 0, "tracebacks": 0,
              "bad_outcomes": 0}
    failures: list[dict[str, Any]] = []
    ops: dict[str, int] = {}
    t0 = time.perf_counter()
    for i in range(n):
        run_dir = root / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        if i % 2 == 0:
            desc = fuzz_catalog_input(rng, root / "in")
            for d in desc.split(","):
                ops[d.split(":")[-1]] = ops.get(d.split(":")[-1], 0) + 1
            # An earlier catalog that a failed command must leave alone.
            run_dir.mkdir(parents=True)
            shutil.copy(base / "catalog.parquet", run_dir / "catalog.parquet")
            sentinel = file_hash(run_dir / "catalog.parquet")
            argv = ["catalog", "--source", str(root / "in"), "--run-dir", str(run_dir)]
            if rng.random() < 0.3:
                argv.append("--skip-bad-rows")
            counts["catalog_inputs"] += 1
            artifact = run_dir / "catalog.parquet"
        else:
            args_, desc = fuzz_embed_input(rng, root / "in", cat_ids)
            shutil.copytree(base, run_dir, ignore=shutil.ignore_patterns(".lock"))
            if (base / "embeddings.parquet").exists():
                pass
            sentinel = None
            argv = ["embed", *args_, "--run-dir", str(run_dir)]
            if rng.random() < 0.2:
                argv.append("--no-normalize")
            counts["embed_inputs"] += 1
            artifact = run_dir / "embeddings.parquet"
        before = snapshot(run_dir)
        rc, err, tb = _call(argv)
        problem = None
        if tb is not None or rc not in (0, 2):
            counts["tracebacks"] += 1
            problem = "traceback" if tb else f"exit {rc}: {err.strip()[-300:]}"
        elif rc == 2:
            lines = _error_lines(err)
            if len(lines) != 1 or "Traceback" in err:
                problem = f"error not one line: {err[-300:]!r}"
            elif snapshot(run_dir) != before:
                problem = "a refused input changed the run folder"
            elif sentinel is not None and file_hash(artifact) != sentinel:
                problem = "earlier catalog changed"
            else:
                counts["refused_one_line"] += 1
        else:
            try:
                if argv[0] == "catalog":
                    bad = check_catalog(artifact)
                else:
                    from movielens_sids.imported_vectors import read_vectors

                    ids, vec = read_vectors(artifact)
                    bad = [] if (np.array_equal(np.sort(ids), np.sort(cat_ids)) and np.isfinite(vec).all()) \
                        else ["embeddings do not cover the catalog or are not finite"]
            except Exception as e:
                bad = [f"written artifact unreadable: {type(e).__name__}: {e}"]
            if bad:
                problem = "; ".join(bad)
            else:
                counts["accepted"] += 1
        if problem:
            if problem != "traceback" and not problem.startswith("exit"):
                counts["bad_outcomes"] += 1
            keep = root / "failures" / f"{i:05d}"
            shutil.copytree(root / "in", keep / "input", dirs_exist_ok=True)
            (keep / "argv.json").write_text(json.dumps(argv))
            failures.append({"i": i, "argv": argv[:1] + argv[3:], "input": desc, "problem": problem,
                             "exit": rc, "stderr": err.strip()[-400:], "traceback": (tb or "")[-1500:],
                             "kept": str(keep)})
    return {"inputs_fuzzed": n, **counts, "mutations": dict(sorted(ops.items())), "failures": failures,
            "seconds": round(time.perf_counter() - t0, 1)}


def _write_seed(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seed_files("csv").items():
        (folder / name).write_bytes(data)
    return folder


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="work folder and report (default: a new folder in the system's temp "
                                             "directory)")
    ap.add_argument("--config", default="demo", help="preset of the run folder (default demo: offline MiniLM)")
    ap.add_argument("--limit", type=int, default=600, help="movies in the run folder")
    ap.add_argument("--full-scale", type=int, nargs="?", const=FULL_SCALE, default=0, metavar="N",
                    help=f"instead: a synthetic catalog of N movies (default {FULL_SCALE:,}) with random 384-d unit "
                         "vectors (embed --from), small model settings; interrupts train, assign, evaluate, export")
    ap.add_argument("--max-epochs", type=int, default=8, help="training epochs (small keeps trials short)")
    ap.add_argument("--chunk-size", type=int, default=128, help="embedding chunk size (resume granularity)")
    ap.add_argument("--set", action="append", default=["assign.strategy=suffix", "train.batch_size=128"],
                    help="extra --set KEY=VALUE for every stage (default: TIGER-like collision token, small batches)")
    ap.add_argument("--points", type=int, default=5, help="kill points per stage and signal")
    ap.add_argument("--stages", default=",".join(CAMPAIGN), help="stages to interrupt")
    ap.add_argument("--fuzz", type=int, default=1000, help="fuzzed inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fuzz-only", action="store_true")
    ap.add_argument("--kill-only", action="store_true")
    ap.add_argument("--no-strace", action="store_true", help="do not trace opens (no tmp-read check)")
    ap.add_argument("--reuse-reference", action="store_true",
                    help="reuse the reference snapshots of an earlier run in --out (same settings)")
    ap.add_argument("--summarize", type=Path, nargs="+", metavar="REPORT",
                    help="only print the report of earlier runs' report.json files (kill and fuzz merged)")
    ap.add_argument("--keep-trials", action="store_true", help="keep the folders of recovered trials")
    args = ap.parse_args()
    if args.full_scale and args.stages == ",".join(CAMPAIGN):
        args.stages = "train,assign,evaluate,export"
        args.max_epochs = 1 if args.max_epochs == 8 else args.max_epochs
        args.set = [s for s in args.set if s != "train.batch_size=128"]
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    work = args.out = args.out or Path(tempfile.mkdtemp(prefix="movielens-sids-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.summarize:
        for p in args.summarize:
            earlier = json.loads(p.read_text())
            for part in ("kill", "fuzz"):
                if part in earlier:
                    report[part] = earlier[part]
                    report.setdefault("from", {})[part] = str(p)
        kills = [json.loads(p.read_text()).get("kill") for p in args.summarize]
        kills = [k for k in kills if k]
        if kills:  # several kill reports (e.g. a partial one): their trials together
            trials = [t for k in kills for t in k["trials"]]
            stages = [s for s in CAMPAIGN if any(t["stage"] == s for t in trials)]
            report["kill"] = {**kills[-1], "trials": trials, **summarize_kills(trials, stages),
                              "seconds": sum(k.get("seconds", 0) for k in kills)}
        return print_report(report, work)
    if not args.fuzz_only:
        report["kill"] = kill_campaign(args, work)
        (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    if not args.kill_only:
        report["fuzz"] = fuzz_campaign(args.fuzz, args.seed, work)
        logging.getLogger().setLevel(logging.INFO)
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return print_report(report, work)


def print_report(report: dict[str, Any], work: Path) -> int:
    """Print the reliability report; 0 when nothing was lost and nothing gave a traceback."""
    ok = True
    print("\n== reliability report ==")
    if "kill" in report:
        k = report["kill"]
        by_stage = ", ".join(f"{s} {n}" for s, n in k["by_stage"].items())
        by_signal = ", ".join(f"{g} {n}" for g, n in k["by_signal"].items())
        print(f"faults injected      {k['faults_injected']}  ({by_stage}; {by_signal})")
        print(f"recoveries           {k['recoveries']}")
        print(f"artifacts lost       {k['artifacts_lost']}  (corrupt, changed or not reproduced by the rerun)")
        print(f"bit-identical reruns {k['bitwise_equal_reruns']}")
        print(f"train resumed from a checkpoint: {k['train_resumed_from_checkpoint']}; kills that left .tmp-* "
              f"files (swept by the next command): {k['temporary_files_left_by_kills']}")
        print(f"Ctrl-C findings      {k['ctrl_c_findings']}  (a traceback, or an exit other than 130 / -2 (SIGINT) / 1 "
              f"(Lightning)); Ctrl-C exits {k['ctrl_c_exits']}")
        diffs = k.get("train_differences") or []
        if diffs:
            print(f"resumed training vs uninterrupted: relative MSE diff up to "
                  f"{max(abs(d['relative_mse']) for d in diffs):.4g}, unique fraction diff up to "
                  f"{max(abs(d['unique_fraction']) for d in diffs):.4g}, codebook entries up to "
                  f"{max(d['max_codebook_abs_diff'] for d in diffs):.4g} apart, any weight up to "
                  f"{max(d.get('max_weight_abs_diff', float('nan')) for d in diffs):.4g} ({len(diffs)} reruns)")
        print(f"reference stage seconds {k['reference_stage_seconds']}; campaign {k['seconds']}s")
        for t in k["trials"]:
            if t["problems"] or t["findings"]:
                print(f"  {'LOST' if t['problems'] else 'finding'} {t['stage']} {t['signal']} @{t['point_s']}s "
                      f"from {t['start']}: " + "; ".join(t["problems"] + t["findings"])[:500])
        ok &= k["artifacts_lost"] == 0
    if "fuzz" in report:
        f = report["fuzz"]
        print(f"inputs fuzzed        {f['inputs_fuzzed']}  ({f['catalog_inputs']} MovieLens files, "
              f"{f['embed_inputs']} vector files; {f['accepted']} accepted, {f['refused_one_line']} refused "
              f"with a one-line error; {f['seconds']}s)")
        print(f"tracebacks           {f['tracebacks']}")
        print(f"other bad outcomes   {f['bad_outcomes']}  (multi-line error, folder changed, invalid artifact)")
        for x in f["failures"][:20]:
            print(f"  FAIL #{x['i']} {x['argv'][0]} [{x['input']}]: {x['problem']} :: {x['stderr'][-200:]}")
        ok &= f["tracebacks"] == 0 and f["bad_outcomes"] == 0
    print(f"report: {work / 'report.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
