"""The benchmark's report: metrics per slice with intervals, paired differences, and their markdown.

``summarize`` turns the ranks of ``bench.run_benchmark`` into the ``retrieval/report.json`` parts;
``report_section`` renders the report as its ``report.md`` section (``reports.markdown.write_page``,
the page's one writer, calls it); ``events_table`` keeps every rank for later analysis.

May import: this package's torch-free modules (config, sequences, stats).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .config import MAX_K, METHODS, METRICS, RetrievalConfig
from .stats import event_scores, paired_differences, recall_curve, slice_metrics

if TYPE_CHECKING:  # pandas is imported only where the split is built
    from .sequences import Split

LABELS = {
    "semantic_id": "Generative, Semantic IDs + content in, dense head",
    "semantic_id_tokens": "Generative, Semantic IDs (tokens only)",
    "joint": "Generative, trained with the tokenizer (tokens only)",
    "random_id": "Generative, random IDs (same shape) + content in, dense head",
    "sasrec_ce": "SASRec, full cross-entropy (movie ids)",
    "most_popular": "Most popular",
    "content_knn": "Content k-NN (embeddings)",
}
SLICES = ("all", "warm", "cold")


def ordered(methods: dict) -> list[str]:
    """The methods of ``methods`` in the report's order: the built-in ones, then the compared SIDs."""
    return [m for m in METHODS if m in methods] + sorted(m for m in methods if m not in METHODS)


def label(name: str, method: dict | None = None) -> str:
    """A method's row label; ``semantic_id@runs/x`` (``retrieval.compare_sids``) is "Generative, SIDs of runs/x".
    Given the method's report entry, a ``semantic_id`` trained token-only (``retrieval.content_input`` off and
    ``retrieval.dense_weight`` 0: it ranked with a cold bonus, not a mix) says so."""
    runs = (method or {}).get("runs") or [{}]
    if name == "semantic_id" and "cold_bonus" in runs[0] and "mix_weight" not in runs[0]:
        return LABELS["semantic_id_tokens"]
    return LABELS.get(name) or f"Generative, SIDs of {name.partition('@')[2]}"
SHOWN = ("recall@10", "ndcg@10")


def pooled(splits: list[Split]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scored events of every fold in order: ``(cold (E,) bool, cluster (E,) int64, time (E,) int64)``; a user
    of each fold is one cluster."""
    cold = np.concatenate([s.cold(s.test) for s in splits])
    width = max(len(s.users) for s in splits)
    cluster = np.concatenate([f * width + s.test.user for f, s in enumerate(splits)])
    return cold, cluster, np.concatenate([s.test.time for s in splits])


def candidate_counts(available: np.ndarray | None, times: np.ndarray, targets: np.ndarray) -> dict:
    """How many movies may be recommended per event (median and range), and how many events' targets may not."""
    n = int(len(available)) if available is not None else 0
    if available is None:
        return {"rule": "all", "n_movies": None}
    ordered = np.sort(available)
    per_event = np.searchsorted(ordered, times, side="right")  # (E,) movies available at each event
    return {"rule": "existing", "n_movies": n, "per_event": {
        "median": float(np.median(per_event)), "min": int(per_event.min()), "max": int(per_event.max())},
        "targets_not_candidates": int((available[targets] > times).sum())}


def summarize(splits: Split | list[Split], results: dict[str, dict], rcfg: RetrievalConfig,
              available: np.ndarray | None = None) -> dict:
    """The report's ``slices``, ``candidates``, ``methods``, ``paired`` and ``recall_curve`` parts from the
    benchmark's ranks (the folds' events pooled)."""
    splits = [splits] if not isinstance(splits, list) else splits
    cold, users, times = pooled(splits)
    targets = np.concatenate([s.test.target for s in splits])
    return {**score(results, cold, users, rcfg), "candidates": candidate_counts(available, times, targets)}


def score(results: dict[str, dict], cold: np.ndarray, users: np.ndarray, rcfg: RetrievalConfig) -> dict:
    """``slices``, ``methods``, ``paired`` and ``recall_curve`` from every method's (S, E) ranks and runs, the
    events' cold flags and their user clusters (a user of each fold one cluster)."""
    slices = {"all": np.ones(len(cold), bool), "warm": ~cold, "cold": cold}
    clusters = users if rcfg.bootstrap_unit == "user" else np.arange(len(cold))
    ranks = {name: r["ranks"] for name, r in results.items()}
    boot = dict(samples=rcfg.bootstrap_samples, seed=0)
    per_slice = slice_metrics(ranks, METRICS, slices, clusters, **boot)
    methods = {}
    for name, r in results.items():
        runs = r["runs"]
        seeds = list(dict.fromkeys(run["seed"] for run in runs))  # the ranks' row order
        methods[name] = {
            "epochs": [run.get("epochs") for run in runs], "train_s": [run["train_s"] for run in runs],
            **per_slice[name],
            "per_seed": {str(sd): {m: float(event_scores(ranks[name][i], m).mean()) for m in METRICS}
                         for i, sd in enumerate(seeds)},
            "runs": runs,
        }
    paired = {}
    if "semantic_id" in ranks:
        others = {n: v for n, v in ranks.items() if n != "semantic_id"}
        paired = paired_differences(ranks["semantic_id"], others, METRICS, slices, clusters, **boot) if others else {}
    curve = {s: {n: recall_curve(v, mask, MAX_K) for n, v in ranks.items()} for s, mask in slices.items()}
    return _no_nan({"slices": {s: {"events": int(mask.sum()), "users": int(len(np.unique(users[mask])))}
                               for s, mask in slices.items()},
                    "methods": methods, "paired": paired, "recall_curve": curve})


def rescored(report: dict, events: Any, rcfg: RetrievalConfig) -> dict:
    """A finished benchmark's report with its metrics, intervals, paired differences and curves computed again
    from ``retrieval/events.parquet`` (a DataFrame) and the report's runs: no training, today's statistics."""
    results = {}
    for name, m in report["methods"].items():
        prefix = f"rank/{name}/seed"
        cols = [c for c in events.columns if c.startswith(prefix) and c[len(prefix):].isdigit()]
        results[name] = {"ranks": np.stack([events[c].to_numpy(np.int64) for c in cols]), "runs": m["runs"]}
    fold = events["fold"].to_numpy() if "fold" in events else np.zeros(len(events), np.int64)
    _, users = np.unique(np.stack([fold, events["user_id"].to_numpy()], 1), axis=0, return_inverse=True)
    return {**report, **score(results, events["cold"].to_numpy(bool), users.ravel(), rcfg)}


def _no_nan(obj: Any) -> Any:
    """``obj`` with every NaN (a metric of an empty slice) as None, so the JSON stays valid."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def events_table(splits: Split | list[Split], results: dict[str, dict]) -> Any:
    """One row per scored event: its fold, who, which movie, when, cold or not, and each method's rank of it per seed.

    With it, any interval or slice can be recomputed without re-training (``stats.py`` takes these ranks).
    """
    import pyarrow as pa

    splits = [splits] if not isinstance(splits, list) else splits
    cold, _, times = pooled(splits)
    cols = {"fold": np.concatenate([np.full(len(s.test), f, np.int32) for f, s in enumerate(splits)]),
            "user_id": np.concatenate([s.users[s.test.user] for s in splits]),
            "movie_id": np.concatenate([s.movie_ids[s.test.target] for s in splits]),
            "timestamp": times, "cold": cold}
    for name, r in results.items():
        seeds = list(dict.fromkeys(run["seed"] for run in r["runs"]))
        for seed, ranks in zip(seeds, r["ranks"]):
            cols[f"rank/{name}/seed{seed}"] = ranks.astype(np.int32)  # 0-based, -1: not in the top 50
    return pa.table(cols)


def _ci(cell: dict) -> str:
    if cell["mean"] is None:
        return "–"
    return f"{cell['mean']:.4f} [{cell['ci_low']:.4f}, {cell['ci_high']:.4f}]"


def markdown_table(methods: dict[str, dict], slices: tuple[str, ...] = SLICES, metrics: tuple[str, ...] = SHOWN) -> str:
    """Every method's metrics per slice: mean over seeds with its 95 % bootstrap interval."""
    head = [f"{s} {m.replace('recall', 'Recall').replace('ndcg', 'NDCG')}" for s in slices for m in metrics]
    lines = ["| method | " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(head)]
    for name in ordered(methods):
        if name in methods:
            cells = [_ci(methods[name][s][m]) for s in slices for m in metrics]
            lines.append(f"| {label(name, methods[name])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(paired: dict[str, dict], slices: tuple[str, ...] = SLICES, metrics: tuple[str, ...] = SHOWN) -> str:
    """Semantic-ID model minus each method, per event: difference, 95 % interval, Holm-adjusted p-value; "n.s." when
    the adjusted p-value is 0.05 or more."""
    head = [f"{s} {m.replace('recall', 'Recall').replace('ndcg', 'NDCG')}" for s in slices for m in metrics]
    lines = ["| Semantic IDs minus | " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(head)]
    for name in ordered(paired):
        if name not in paired:
            continue
        cells = []
        for s in slices:
            for m in metrics:
                d = paired[name][s][m]
                if d["diff"] is None:
                    cells.append("–")
                    continue
                mark = "" if d.get("significant") else " n.s."
                p = d.get("p_holm", d["p_value"])
                cells.append(f"{d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] p={p:.3g}{mark}")
        lines.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mix_label(run: dict) -> str:
    """How one run ranked, as chosen on validation: its mix (weight, gate shift, cold scale) or its cold bonus."""
    if "gate_shift" in run:
        shift = run["gate_shift"]
        return f"w {run['mix_weight']:g}, " + ("gate off" if shift is None else
                                               f"gate {shift:+g}, beta {run['warm_scale']:g}, "
                                               f"tau {run['cold_scale']:g}")
    return f"bonus {run['cold_bonus']:g}" + (f" (w {run['mix_weight']:g})" if "mix_weight" in run else "")


def training_table(methods: dict[str, dict]) -> str:
    """Epochs run, best epoch, what stopped training and the time, per method (over seeds)."""
    lines = ["| method | epochs (per seed) | best epoch | stopped by | ranking mix chosen on validation | "
             "validation Recall@10 curve (first seed) | time s |",
             "| --- | --- | --- | --- | --- | --- | ---: |"]
    for name in ordered(methods):
        if name not in methods:
            continue
        runs = methods[name]["runs"]
        learned = "epochs" in runs[0]
        # [loss, recall@10] per epoch; reports of earlier versions hold the recall alone
        curve = " ".join(f"{v[-1] if isinstance(v, list) else v:.3f}" for v in runs[0].get("valid_curve", [])) \
            if learned else (
            f"window {runs[0]['window']} chosen on validation" if "window" in runs[0] else "no training")
        bonus = ", ".join(_mix_label(r) for r in runs) if "cold_bonus" in runs[0] or "mix_weight" in runs[0] else "–"
        lines.append(f"| {label(name, methods[name])} | {', '.join(str(r.get('epochs', '-')) for r in runs)} | "
                     f"{', '.join(str(r.get('best_epoch', '-')) for r in runs)} | "
                     f"{', '.join(sorted({r.get('stopped_by', '-') for r in runs}))} | {bonus} | {curve} | "
                     f"{sum(r['train_s'] for r in runs):.0f} |")
    return "\n".join(lines)


def report_section(report: dict) -> str:
    """The markdown section of ``report.md`` for a ``retrieval/report.json``."""
    sp, st, sl = report["split"], report["settings"], report["slices"]
    if report["protocol"] == "temporal":
        how = (f"a global time split: the {sl['all']['events']:,} interactions from {sp['cutoff_utc']} on are the "
               f"test events, each predicted from its user's whole history before it; validation events are those "
               f"from {sp['valid_start_utc']}; models train on everything before")
    else:
        how = ("leave-one-out: each user's last movie is the test event, the one before the validation event, the "
               f"rest training (users with fewer than {sp['min_ratings']} ratings dropped)")
    folds = report.get("folds") or [sp]
    what = "validation events" if report.get("scored_events") == "validation" else "test events"
    if len(folds) > 1:
        how += (f"; {len(folds)} rolling-origin folds (cut-offs " + ", ".join(f["cutoff_utc"][:10] for f in folds)
                + "), each with its own training, validation and test window and models, pooled")
    cand = report.get("candidates") or {}
    pool = ("every movie with a SID is a candidate at every event" if cand.get("rule") != "existing" else
            f"a movie is a candidate only if it existed at the event (released in the event's year or earlier, or "
            f"rated by anyone before it): {cand['per_event']['median']:,.0f} of {cand['n_movies']:,} movies per event "
            f"(median; {cand['per_event']['min']:,} to {cand['per_event']['max']:,})")
    lines = ["## Generative retrieval", "",
             f"Next-movie prediction on **{report['dataset']}**, {sp['n_users']} users, {sp['n_interactions']:,} "
             f"ratings; {how}; {pool}. Scored: {sl['all']['events']:,} {what} of {sl['all']['users']} users"
             f"{' (a user of each fold counted once per fold)' if len(folds) > 1 else ''}: "
             f"{sl['warm']['events']:,} warm and {sl['cold']['events']:,} cold (the target has no training "
             f"interaction). Mean over {len(st['seeds'])} seeds with 95 % BCa bootstrap intervals "
             f"({st['bootstrap_samples']:,} resamples of whole {st['bootstrap_unit']}s, each widened by the spread "
             "between seeds).", "",
             markdown_table(report["methods"]), ""]
    if report["paired"]:
        family = f"{len(METRICS) * len(SLICES)} comparisons of the method's line in `report.json` ({len(METRICS)} "
        lines += ["Paired differences on the same events (Semantic-ID model minus each method, per event, averaged "
                  f"over seeds; the 95 % interval as above; p: two-sided, Holm-adjusted over the {family}metrics x "
                  f"{len(SLICES)} slices); n.s.: adjusted p >= 0.05):", "",
                  paired_table(report["paired"]), ""]
    lines += ["ID-based methods (SASRec, most popular) cannot recommend a cold movie: it has no trained embedding "
              "and no count, so their cold scores are 0 or near it by construction. The content baseline scores "
              "every movie from its content. A token-only generative model can generate a cold movie's SID, but its "
              "plain beam search all but never does (its last token was never a target); a second search over the "
              "cold movies alone, merged after adding a log-probability bonus chosen on validation (\"cold bonus\"; "
              "0: none), gives it the share of the list that TIGER reserves for cold-start items. A model with "
              "content in and a dense head ranks the beam search's movies and the dense head's best movies, warm "
              "and cold, together, by log P(SID) + w x dense logit + bonus x cold, (w, bonus) chosen on validation "
              "(\"mix weight\").", "",
              "![Recall@K](retrieval/recall_at_k.png)", "", training_table(report["methods"]), "",
              f"Models: d_model {st['d_model']}, {st['n_layers']} layers, {st['n_heads']} heads, history "
              f"{st['max_history']} movies, test beam {st['beam_size']}; every learned model stops when neither its "
              f"validation loss nor its validation Recall@10 has improved for {st['patience']} epochs and keeps its "
              "best-Recall@10 epoch. "
              + ("No method recommends a movie the user has already rated. " if st["exclude_seen"] else
                 "Only the content baseline leaves out the user's rated movies. ") + "Wall time "
              f"{report['wall_time_s'] / 60:.1f} min. Details: `retrieval/report.json`."]
    return "\n".join(lines) + "\n"
