"""The retrieval benchmark's tables for the docs, from the report a `movielens-sids retrieval` run wrote.

Reads ``RUN/retrieval/report.json`` and prints (and with ``--markdown FILE`` writes, as a docs record with the
machine and the date) every method's Recall@10 and NDCG@10 per slice with their intervals, the paired
differences against the run's Semantic-ID model with Holm-adjusted p-values, and the facts a reader needs to
weigh them: events, user clusters, the cold slice, candidates per event, folds, seeds and wall time.

Usage:
    python benchmarks/retrieval_table.py RUN [--label "semantic_id@runs/x=content-only SIDs"] \\
        [--command "movielens-sids retrieval ..."] [--title TITLE] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import write_record  # noqa: E402

from movielens_sids.retrieval import report as rr  # noqa: E402


def relabelled(report: dict, labels: dict[str, str]) -> dict:
    """The report with compared runs' method names replaced by readable labels (``semantic_id@x`` -> label)."""
    def rename(d: dict) -> dict:
        return {(f"semantic_id@{labels[k]}" if k in labels else k): v for k, v in d.items()}

    return {**report, "methods": rename(report["methods"]), "paired": rename(report["paired"])}


def facts(report: dict) -> str:
    """The counts and settings behind the table, one bullet each."""
    sl, sp, st = report["slices"], report["split"], report["settings"]
    folds = report.get("folds") or [sp]
    cand = report.get("candidates") or {}
    lines = [f"- Scored: {sl['all']['events']:,} {report.get('scored_events', 'test')} events of "
             f"{sl['all']['users']} user clusters ({sl['warm']['events']:,} warm, {sl['cold']['events']:,} cold); "
             f"protocol {report['protocol']}, {len(folds)} fold(s), cut-off(s) "
             + ", ".join(f.get("cutoff_utc", "-")[:10] for f in folds) + f"; seeds {report['seeds']}."]
    if cand.get("rule") == "existing":
        pe = cand["per_event"]
        lines.append(f"- Candidates: movies that existed at the event, {pe['median']:,.0f} per event (median; "
                     f"{pe['min']:,} to {pe['max']:,}) of {cand['n_movies']:,}; targets that were not yet "
                     f"candidates: {cand['targets_not_candidates']}.")
    else:
        lines.append("- Candidates: every movie with a SID at every event.")
    shared = sum(f.get("n_test_events_sharing_second", 0) for f in folds)
    removed = sum(f.get("n_test_events_same_second_history_removed", 0) for f in folds)
    lines.append(f"- Simultaneous ratings: {shared:,} scored events share their second with other ratings of the "
                 f"user; {removed:,} of them lost a same-second movie from their history.")
    times = ", ".join(f"{rr.label(n, m)} {sum(m['train_s']):.0f} s" for n, m in report["methods"].items())
    lines.append(f"- Wall time {report['wall_time_s'] / 60:.1f} min ({st.get('workers') or 'one per core'} "
                 f"workers); training and ranking per method, summed over seeds and folds: {times}.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder with retrieval/report.json")
    p.add_argument("--label", action="append", default=[], help="METHOD=LABEL for a compared run's SIDs")
    p.add_argument("--command", default="", help="the retrieval command that wrote the report")
    p.add_argument("--title", default=None)
    p.add_argument("--markdown", type=Path, default=None, help="write the record (table, machine, date) here")
    args = p.parse_args()
    report = json.loads((args.run / "retrieval" / "report.json").read_text())
    labels = dict(item.split("=", 1) for item in args.label)
    report = relabelled(report, labels)
    table = "\n\n".join([rr.markdown_table(report["methods"]), "Paired differences, the Semantic-ID model minus "
                         "each method (p: Holm-adjusted over the method's line; n.s.: p >= 0.05):",
                         rr.paired_table(report["paired"]), facts(report)])
    print(table)
    notes = f"Benchmark command: `{args.command}`" if args.command else ""
    write_record(args.markdown, table, title=args.title or f"Retrieval on {report['dataset']}", notes=notes)


if __name__ == "__main__":
    main()
