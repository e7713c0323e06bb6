"""``verify``: check a run folder the way ``git fsck`` checks a repository (reads only, writes nothing).

Two kinds of checks, each a row of the table ``verify`` prints:

- which stages are stale: out of date with what an earlier stage wrote since (``pipeline.stale_because``),
  which ``run`` brings back; a stale stage is not a fault, and its files are not checked against its record;
- every other artifact against its stage record: the sha256 that ``pipeline.execute`` recorded for each file it
  wrote (a folder: each of its files), so a flipped byte, a truncated file or a replaced model shows;
- the Semantic-ID invariants of ``sids.parquet``: one SID per catalog movie, all distinct, the model's
  length (L, or L + 1 with a collision token, the same for every movie), every code within its codebook,
  and the model's codes equal to the SID's for every movie dedup did not move (``dedup.make_unique`` on the
  model's own codes says which it moved).

May import: pipeline, artifacts, dedup, sid, errors, stages.assign (the model's codes). Only ``cli``
imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import model as tokenizers
from .artifacts import MODEL, model_fingerprint, model_input, read_catalog, read_embeddings, read_record, read_sids
from .dedup import make_unique, member, unique_sorted
from .errors import SidsError
from .pipeline import ORDER, STAGES, changed_outputs, stale_because
from .sid import path_ids
from .stages.assign import exact_latents, exact_model, model_codes


@dataclass(frozen=True)
class Check:
    """One row of the table: what was checked, whether it holds, and what was found."""

    what: str
    ok: bool
    detail: str
    stale: bool = False
    """Out of date, not damaged: ``run`` rebuilds it (``ok`` stays True)."""


def _reads_from(name: str, other: str) -> bool:
    """Stage ``name`` reads a file that stage ``other`` writes."""
    return any(i == o or i.startswith(o + "/") for i in STAGES[name].inputs for o in STAGES[other].outputs)


def stale_stages(run_dir: Path) -> dict[str, str]:
    """The stages that ran but are out of date with the run folder -> why; a stage that reads what a stale
    stage will write again is stale too."""
    stale: dict[str, str] = {}
    for name in ORDER:
        if read_record(run_dir, name) is None:
            continue
        why = stale_because(run_dir, name)
        feeds = [s for s in stale if _reads_from(name, s)]
        if why is None and feeds:
            why = f"it reads what {feeds[0]} will write again"
        if why is not None:
            stale[name] = why
    return stale


def checksum_checks(run_dir: Path) -> list[Check]:
    """One row per artifact a stage recorded: its bytes (sha256) against the record."""
    rows = []
    stale = stale_stages(run_dir)
    for name in ORDER:
        rec = read_record(run_dir, name)
        if rec is None:
            continue
        if name in stale:
            rows.append(Check(f"{name} (stage)", True, f"stale: {stale[name]}; `movielens-sids run` brings it up "
                                                       "to date", stale=True))
            continue
        changed = {f: now for f, _, now in changed_outputs(run_dir, name)}
        for out in STAGES[name].outputs:
            recorded = rec.get("outputs") or {}
            was = recorded.get(out) or {k: v for k, v in recorded.items() if k.startswith(out + "/")} or None
            mine = {f: now for f, now in changed.items() if f == out or f.startswith(out + "/")}
            label = f"{out}{'/' if isinstance(was, dict) else ''} ({name})"
            if not mine and was is None:
                continue  # an optional output the stage did not write (sids.previous.parquet, ...)
            if not mine:
                n = len(was) if isinstance(was, dict) else 1
                rows.append(Check(label, True, f"sha256 as recorded ({n} file{'s' if n > 1 else ''})"))
                continue
            what = [f"{f} {'missing' if now is None else 'changed'}" for f, now in mine.items()]
            rows.append(Check(label, False, f"{', '.join(what[:3])}{' ...' if len(what) > 3 else ''} since {name} "
                                            f"wrote it: run `movielens-sids {name}` again (or --accept-changed)"))
    return rows


def _load(run_dir: Path) -> tuple[dict[str, Any], list[Check]]:
    """The catalog ids, SIDs, model and embeddings (each read without the record check, reported apart)."""
    parts: dict[str, Any] = {}
    problems = []
    readers = {"catalog": lambda: read_catalog(run_dir, recorded=False).column("movie_id").to_numpy(),
               "sids": lambda: read_sids(run_dir, recorded=False),
               "model": lambda: tokenizers.load_tokenizer(run_dir / MODEL),
               "embeddings": lambda: read_embeddings(run_dir, recorded=False)}
    for what, read in readers.items():
        try:
            parts[what] = read()
        except (SidsError, OSError, ValueError, RuntimeError) as e:
            problems.append(Check(f"read {what}", False, " ".join(str(e).split())[:300]))
    return parts, problems


def _first(ids: np.ndarray, bad: np.ndarray) -> str:
    return ", ".join(map(str, ids[bad][:5]))


def _catalog_and_distinct(parts: dict[str, Any]) -> list[Check]:
    """One SID per catalog movie; no two movies with the same SID."""
    sids, rows = parts["sids"], []
    ids = sids.movie_ids
    if "catalog" in parts:
        cat = np.sort(parts["catalog"].astype(np.int64))
        missing, extra = np.setdiff1d(cat, ids), np.setdiff1d(ids, cat)
        fine = not len(missing) and not len(extra)
        rows.append(Check("one SID per catalog movie", fine, f"{len(ids):,} SIDs for {len(cat):,} movies" if fine else
                          f"{len(missing)} catalog movies without a SID (first: {', '.join(map(str, missing[:5]))}), "
                          f"{len(extra)} SIDs of movies not in the catalog"))
    strings = np.array(sids.strings)
    order = np.argsort(strings, kind="stable")
    dup = np.zeros(len(ids), dtype=bool)
    dup[order[1:]] = strings[order][1:] == strings[order][:-1]
    rows.append(Check("all SIDs distinct", not dup.any(), f"{len(set(sids.strings)):,} distinct" if not dup.any()
                      else f"{int(dup.sum())} movies repeat another movie's SID (first movie_id: {_first(ids, dup)})"))
    return rows


def sid_checks(run_dir: Path) -> list[Check]:
    """The Semantic-ID invariants (rows for the ones whose inputs could be read)."""
    parts, rows = _load(run_dir)
    sids, tok = parts.get("sids"), parts.get("model")
    if sids is None:
        return rows
    rows += _catalog_and_distinct(parts)
    if tok is None:
        return rows
    ids, tokens, lengths = sids.movie_ids, sids.tokens, sids.lengths
    levels, k = int(tok.config.levels), int(tok.config.codebook_size)
    wrong = (lengths != lengths.max(initial=0)) | ((lengths != levels) & (lengths != levels + 1))
    rows.append(Check("SID length", not wrong.any(), f"{int(lengths.max(initial=0))} tokens each (model: {levels} "
                      "levels)" if not wrong.any() else f"{int(wrong.sum())} SIDs whose length is not the others' or "
                      f"not {levels} / {levels + 1} (first movie_id: {_first(ids, wrong)})"))
    out = (tokens[:, :levels] >= k).any(axis=1) | (tokens[:, :levels] < 0).any(axis=1)
    rows.append(Check("codes within their codebooks", not out.any(), f"every code in 0..{k - 1}" if not out.any()
                      else f"{int(out.sum())} SIDs with a code outside 0..{k - 1} (first movie_id: "
                           f"{_first(ids, out)})"))
    if "embeddings" in parts and not wrong.any() and not out.any():
        rows.append(_agreement(tok, parts["embeddings"], sids, read_record(run_dir, "assign") or {}, run_dir))
    return rows


def _agreement(tok, emb, sids, assign: dict[str, Any], run_dir: Path) -> Check:
    """The model's greedy codes equal the SID's first L tokens for every movie dedup did not move; after a
    full (not incremental) assign, every SID is also the one dedup gives (assign is deterministic).

    Args:
        assign: the assign stage's record (its settings and result), ``{}`` when there is none.
    """
    what = "model codes agree with sids.parquet"
    levels, k = int(tok.config.levels), int(tok.config.codebook_size)
    both, ie, js = np.intersect1d(emb.movie_ids, sids.movie_ids, return_indices=True)
    try:
        x_in = model_input(run_dir, tok, emb)  # (N, D), or (N, D + F) for a tokenizer that reads both signals
    except SidsError as e:
        return Check(what, False, str(e))
    if len(both) == 0:
        return Check(what, False, "no movie with an embedding and a SID")
    x, final = x_in[ie], sids.tokens[js]
    tok64 = exact_model(tok)
    codes = model_codes(tok, tok64, x)  # (N, L), the codes assign started from
    strategy = (sids.metadata.get("assign") or {}).get("strategy", "semantic")
    retired = np.array([r[1] for r in sids.metadata.get("retired") or []], dtype=np.int64)
    beam = ((assign.get("settings") or {}).get("assign") or {}).get("beam_width", 8)
    a = make_unique(codes, both, strategy=strategy, codebook_size=k, codebooks=tok64.codebooks.numpy(),
                    latents=lambda r: exact_latents(tok64, x, r), bias=tok64.code_bias.numpy(), beam_width=beam,
                    reserved=retired.reshape(-1, sids.tokens.shape[1]))
    same_model = (sids.metadata.get("assign") or {}).get("model_fingerprint") in (None, model_fingerprint(tok))
    if sids.model_codes is not None and same_model:  # what assign recorded (and evaluate reads) is what it computed
        recorded = sids.model_codes[js]  # (N, L), -1 rows unknown
        off = (recorded >= 0).all(axis=1) & (recorded != codes).any(axis=1)
        if off.any():
            return Check(what, False, f"{int(off.sum())} movies' model_codes in sids.parquet are not the model's "
                                      f"codes (first movie_id: {_first(both, off)})")
    bad = (final[:, :levels] != codes).any(axis=1) & ~a.moved
    incremental = "n_kept" in (assign.get("result") or {})
    if incremental and strategy == "semantic":  # kept SIDs were served first: a path they hold moves a movie
        bad &= ~member(path_ids(codes, k), unique_sorted(path_ids(final[:, :levels], k)))
    if not bad.any() and not incremental and a.tokens.shape == final.shape:
        bad = (a.tokens != final).any(axis=1)  # a full assign is deterministic: every SID is dedup's
    if bad.any():
        other = "" if same_model else " (sids.parquet was made by another model)"
        return Check(what, False, f"{int(bad.sum())} SIDs are not the ones the model and dedup give{other} (first "
                                  f"movie_id: {_first(both, bad)})")
    return Check(what, True, f"{len(both) - int(a.moved.sum()):,} unmoved movies agree, {int(a.moved.sum()):,} "
                             "moved by dedup")


def verify_run(run_dir: Path) -> list[Check]:
    """Every check of ``verify`` on ``run_dir``; a ``SidsError`` when it is not a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SidsError(f"{run_dir} not found: give the run folder with --run-dir")
    rows = checksum_checks(run_dir)
    if (run_dir / "sids.parquet").exists():
        rows += sid_checks(run_dir)
    if not rows:
        raise SidsError(f"{run_dir} holds no stage record and no sids.parquet: nothing to verify")
    return rows


def render(rows: list[Check]) -> str:
    """The table ``verify`` prints, and a last line with the count of failures."""
    width = max(len(r.what) for r in rows)
    lines = [f"{'check':<{width}}  result  detail"]
    lines += [f"{r.what:<{width}}  {'stale' if r.stale else 'ok' if r.ok else 'FAIL':<6}  {r.detail}" for r in rows]
    failed = sum(not r.ok for r in rows)
    stale = [r.what.split(" ")[0] for r in rows if r.stale]
    lines.append(f"{failed} of {len(rows)} checks failed" if failed else f"all {len(rows)} checks passed")
    if stale:
        lines[-1] += f"; stale (not damaged): {', '.join(stale)}"
    return "\n".join(lines)
