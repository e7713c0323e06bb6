"""``report.md`` and ``compare.md``: the single writer of each markdown page.

``write_page`` assembles ``report.md`` from the sections the stages' JSON reports hold: the
evaluation (``report.json``) and, when the run has one, the generative-retrieval benchmark
(``retrieval/report.json``). No stage edits ``report.md`` itself; a stage that adds a section writes
its JSON report and calls ``write_page``. ``compare_runs`` writes the side-by-side table of several
runs.

May import: artifacts (the stage records' timings), errors, io, labels (reads labels.parquet), retrieval.report
(the benchmark's section renderer).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..artifacts import stage_seconds
from ..errors import SidsError
from ..io import write_text
from ..labels import LABELS_FILE, read_labels
from ..retrieval.report import report_section as retrieval_section

log = logging.getLogger(__name__)


def _md_cell(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def co_watch_markdown(c: dict[str, Any]) -> str:
    """The ``co_watch`` section: the most co-watched training pairs that share a SID prefix, against random pairs."""
    return (f"Over the {c['pairs']:,} movie pairs rated by the most users together (training interactions of the "
            "benchmark's split): the share that share a SID prefix.\n\n"
            + _md_table(["prefix", "co-watched pairs", "random pairs", "lift"], [
                ["first token", _fmt(c["first_token"]), _fmt(c["random_first_token"], 5),
                 _fmt(c["first_token_lift"], 1) + "x"],
                ["first two tokens", _fmt(c["first_two_tokens"]), _fmt(c["random_first_two_tokens"], 5),
                 _fmt(c["first_two_tokens_lift"], 1) + "x"]]))


def coherence_markdown(c: dict[str, Any]) -> str:
    """The ``coherence`` section: mutual k-NN pairs that keep a shared prefix, against random pairs."""
    def lift(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b > 0 else "–"

    return (f"Over the {c['pairs']:,} mutual {c['k']}-nearest-neighbour pairs in embedding space (each movie "
            f"among the other's {c['k']} nearest): the share that keep a shared SID prefix.\n\n"
            + _md_table(["prefix", "mutual neighbours", "random pairs", "lift"], [
                ["first token", _fmt(c["first_token"]), _fmt(c["random_first_token"], 5),
                 lift(c["first_token"], c["random_first_token"])],
                ["first two tokens", _fmt(c["first_two_tokens"]), _fmt(c["random_first_two_tokens"], 5),
                 lift(c["first_two_tokens"], c["random_first_two_tokens"])]]))


def labels_markdown(labels: list[dict[str, Any]], *, children: int = 3) -> str:
    """The report's table of level-1 codes: label, size, titles, and the largest level-2 codes under each."""
    kids: dict[int, list[dict[str, Any]]] = {}
    for r in labels:
        if r["level"] == 2:
            kids.setdefault(r["prefix"][0], []).append(r)
    rows = []
    for r in (r for r in labels if r["level"] == 1):
        under = sorted(kids.get(r["prefix"][0], []), key=lambda c: (-c["n_movies"], c["prefix"]))[:children]
        rows.append([f"`{r['sid_prefix']}`", r["n_movies"], r["label"], "; ".join(r["titles"]),
                     "<br>".join(f"`{c['sid_prefix']}` {c['label']} ({c['n_movies']})" for c in under)])
    return (f"Every first token, named from its movies (genres and tags by lift over the catalog, the 10th-90th "
            f"percentile of years, the titles nearest its mean embedding); the largest {children} second-level "
            f"codes under each. All {sum(r['level'] == 2 for r in labels):,} second-level labels are in "
            f"`{LABELS_FILE}`.\n\n"
            + _md_table(["code", "movies", "label", "representative titles", "largest codes under it"], rows))


def render_markdown(r: dict[str, Any], *, title: str, labels: str | None = None) -> str:
    """The human-readable report: tables, the charts next to it, and the probe tables."""
    out = [f"# Evaluation report: {title}\n\n",
           f"{r['n_movies']:,} movies, {r['levels']} levels x {r['codebook_size']} codes on a "
           f"{r['latent_dim']}-d latent, embeddings from `{r['embedding_model']}` ({r['embedding_dim']}-d). "
           + _scope(r) + "\n",
           "\n## Summary\n\n", _summary_table(r)]
    if "coherence" in r:
        out += ["\n## Prefix coherence\n\n", coherence_markdown(r["coherence"])]
    if r.get("co_watch"):
        out += ["\n## Co-watch alignment\n\n", co_watch_markdown(r["co_watch"])]
    if labels:
        out += ["\n## What the codes hold\n\n", labels]
    out += [_codes_section(r), _collisions_section(r), _shared_prefix_section(r), _probes_section(r)]
    out.append("\n## Timings (seconds)\n\n")
    t = r.get("timings_s", {})
    out.append(_md_table(list(t), [[_fmt(v, 1) for v in t.values()]]))
    return "".join(out)


def _scope(r: dict[str, Any]) -> str:
    """Which numbers cover the whole catalog, and which a sample (``evaluate.neighbor_sample``)."""
    nb, co = r["neighbors"].get("sample"), (r.get("coherence") or {}).get("sample")
    if not nb:
        return "Every number is measured on the whole catalog."
    return (f"The neighbour metrics (overlap, first-token match, the shared-prefix histogram, the dedup overlaps) "
            f"are measured for a seeded sample of {nb['movies']:,} movies"
            + (f", prefix coherence for the mutual pairs of {co['movies']:,} of them" if co else "")
            + "; their neighbours are exact among all movies. Every other number covers the whole catalog.")


def _summary_table(r: dict[str, Any]) -> str:
    """The headline metrics, each with what it means."""
    nb, col, rec = r["neighbors"], r["collisions"], r["reconstruction"]
    lift = nb.get("first_token_lift")
    return _md_table(["metric", "value", "what it means"], [
        ["overlap@10", _fmt(nb["overlap_at_10"]), "share of a movie's 10 embedding neighbours that are "
         "also among its 10 SID neighbours"],
        ["first-token match@10", _fmt(nb["first_token_match_at_10"]),
         "share of embedding neighbours with the same first token"],
        ["random first-token match", _fmt(nb["random_first_token_match"]), "the same for two random movies"],
        ["lift", f"{lift:.1f}x" if lift else "–", "first-token match / random"],
        ["genre purity (level 1)", _fmt(r["genre_purity_level1"]),
         f"movies whose first-token cluster's majority genre is theirs (baseline "
         f"{_fmt(r['genre_purity_level1_baseline'])}: every cluster = most common genre)"],
        ["relative MSE", _fmt(rec["relative_mse"]), "reconstruction error / data variance (raw codes)"],
        ["mean cosine", _fmt(rec["mean_cosine"]), "reconstruction vs embedding (raw codes)"],
        ["unique before dedup", _fmt(col["unique_fraction_before_dedup"]), "movies whose raw codes no other has"],
        ["largest collision group", _fmt(col["max_group_size"]), "movies sharing one raw code tuple"],
        ["unique after dedup", _fmt(col["unique_fraction_after_dedup"]), "movies with a SID of their own"],
    ])


def _codes_section(r: dict[str, Any]) -> str:
    """Utilization and perplexity of each level's codebook, and the code-usage chart."""
    out = "\n## Codes per level\n\n" + _md_table(["level", "utilization", "perplexity", "perplexity / K"], [
        [i + 1, _fmt(u), _fmt(p, 1), _fmt(p / r["codebook_size"], 3)]
        for i, (u, p) in enumerate(zip(r["utilization"], r["perplexity"]))])
    charts = r.get("charts", {})
    if "code_usage" in charts:
        out += f"\n![Movies per code, each level sorted by count]({charts['code_usage']})\n"
    return out


def _collisions_section(r: dict[str, Any]) -> str:
    """How many raw code tuples collided, what dedup changed, and the assign stage's statistics."""
    col, dd = r["collisions"], r["dedup"]
    stats = dd.get("assign_stats") or {}
    rows = [["strategy", stats.get("strategy", "–")],
            ["distinct raw code tuples", _fmt(col.get("n_distinct_before_dedup"))],
            ["movies whose first L tokens differ from their raw codes", _fmt(dd["n_changed_codes"])],
            ["movies with a collision (suffix) token", _fmt(dd["n_suffixed"])],
            ["relative MSE, raw codes -> final SIDs",
             f"{_fmt(dd['relative_mse_raw'])} -> {_fmt(dd['relative_mse_final'])}"],
            ["overlap@10, raw codes -> final SIDs",
             f"{_fmt(dd['overlap_at_10_raw'])} -> {_fmt(dd['overlap_at_10_final'])}"]]
    rows += [[f"assign: {k}", _fmt(v)] for k, v in sorted(stats.items()) if k != "strategy"
             and isinstance(v, (int, float, str, bool))]
    out = "\n## Collisions and making the IDs unique\n\n" + _md_table(["", ""], rows)
    charts = r.get("charts", {})
    if "collisions" in charts:
        out += f"\n![How many movies share their raw code tuple]({charts['collisions']})\n"
    return out


def _shared_prefix_section(r: dict[str, Any]) -> str:
    """The histogram of SID prefix lengths shared by embedding neighbours, and its chart."""
    hist = r["neighbors"]["shared_prefix_histogram"]
    total = max(sum(hist), 1)
    out = "\n## How much SID prefix embedding neighbours share\n\n" + _md_table(
        ["shared tokens", "neighbour pairs", "share"], [[d, _fmt(c), f"{c / total:.1%}"] for d, c in enumerate(hist)])
    charts = r.get("charts", {})
    if "shared_prefix" in charts:
        out += (f"\n![Shared SID prefix length between each movie and its 10 embedding neighbours]"
                f"({charts['shared_prefix']})\n")
    return out


def _probes_section(r: dict[str, Any]) -> str:
    """Each probe movie's nearest movies by SID next to its nearest by embedding."""
    out = ["\n## Probes: nearest movies by SID next to nearest by embedding\n\n",
           "By SID: longest shared prefix, then decoded-vector cosine. By embedding: cosine of the "
           "input vectors. *shared* = SID tokens shared with the probe.\n"]
    for name, d in r.get("probe_details", {}).items():
        out.append(f"\n### {name} `{d['sid']}`\n\n{d['overlap']:.0%} of the lists agree.\n\n")
        rows = []
        for rank, (a, b) in enumerate(zip(d["by_sid"], d["by_embedding"]), 1):
            rows.append([rank, a["title"], f"`{a['sid']}`", a["shared_prefix"], b["title"], _fmt(b["cosine"], 3),
                         b["shared_prefix"]])
        out.append(_md_table(["#", "by SID", "SID", "shared", "by embedding", "cosine", "shared"], rows))
    if r.get("probes_skipped"):
        out.append("\nDefault probes not in this catalog: " + ", ".join(r["probes_skipped"]) + "\n")
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# --compare

# (row label, path into report.json, which way is better: +1 higher, -1 lower, 0 neither)
_COMPARE_ROWS: list[tuple[str, tuple[Any, ...], int]] = [
    ("movies", ("n_movies",), 0),
    ("embedding model", ("embedding_model",), 0),
    ("embedding backend", ("embedding_backend",), 0),
    ("levels", ("levels",), 0),
    ("codebook size", ("codebook_size",), 0),
    ("latent dim", ("latent_dim",), 0),
    ("relative MSE", ("reconstruction", "relative_mse"), -1),
    ("mean cosine", ("reconstruction", "mean_cosine"), +1),
    ("unique before dedup", ("collisions", "unique_fraction_before_dedup"), +1),
    ("largest collision group", ("collisions", "max_group_size"), -1),
    ("unique after dedup", ("collisions", "unique_fraction_after_dedup"), +1),
    ("overlap@10", ("neighbors", "overlap_at_10"), +1),
    ("first-token match@10", ("neighbors", "first_token_match_at_10"), +1),
    ("random first-token match", ("neighbors", "random_first_token_match"), 0),
    ("first-token lift", ("neighbors", "first_token_lift"), +1),
    ("genre purity (level 1)", ("genre_purity_level1",), +1),
    ("coherence: first token", ("coherence", "first_token"), +1),
    ("coherence: first two tokens", ("coherence", "first_two_tokens"), +1),
    ("coherence: random first token", ("coherence", "random_first_token"), 0),
    ("coherence: random first two", ("coherence", "random_first_two_tokens"), 0),
    ("co-watch: first token", ("co_watch", "first_token"), +1),
    ("co-watch: first two tokens", ("co_watch", "first_two_tokens"), +1),
    ("co-watch: random first token", ("co_watch", "random_first_token"), 0),
    ("dedup: movies moved", ("dedup", "n_changed_codes"), 0),
    ("dedup: movies suffixed", ("dedup", "n_suffixed"), 0),
    ("overlap@10 raw codes", ("dedup", "overlap_at_10_raw"), +1),
]


def _get(d: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        if isinstance(d, dict) and p in d:
            d = d[p]
        elif isinstance(d, list) and isinstance(p, int) and p < len(d):
            d = d[p]
        else:
            return None
    return d


def compare_runs(run_dirs: list[Path], *, out: Path | None = None) -> str:
    """One markdown table with a column per run, from each run's ``report.json``; best values in bold.

    Writes the table to ``out`` (default: ``compare.md`` in the first run folder) and returns it.
    """
    if len(run_dirs) < 2:
        raise SidsError("--compare needs at least two run folders (or --run-dir and one more)")
    reports = []
    for d in run_dirs:
        p = Path(d) / "report.json"
        if not p.is_file():
            raise SidsError(f"{p} not found: run `movielens-sids evaluate --run-dir {d}` first")
        try:
            reports.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise SidsError(f"{p} is not readable JSON ({e})") from e
    names = [Path(d).name or str(d) for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    rows: list[tuple[str, tuple[Any, ...], int]] = list(_COMPARE_ROWS[:6])
    max_levels = max(int(r.get("levels") or 0) for r in reports)
    rows += [(f"utilization L{i + 1}", ("utilization", i), +1) for i in range(max_levels)]
    rows += [(f"perplexity L{i + 1}", ("perplexity", i), 0) for i in range(max_levels)]
    rows += _COMPARE_ROWS[6:]
    stages = list(dict.fromkeys(s for r in reports for s in (r.get("timings_s") or {})))
    rows += [(f"time: {s} (s)", ("timings_s", s), 0) for s in stages]
    table = []
    for label, path, better in rows:
        vals = [_get(r, path) for r in reports]
        cells = [_fmt(v, 1 if label.startswith(("time", "perplexity")) or "lift" in label else 4) for v in vals]
        nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if better and len(nums) > 1 and len(set(nums)) > 1:
            best = max(nums) if better > 0 else min(nums)
            cells = [f"**{c}**" if v == best else c for c, v in zip(cells, vals)]
        table.append([label, *cells])
    probes = list(dict.fromkeys(p for r in reports for p in (r.get("probes") or {})))
    for p in probes:
        table.append([f"{p}: top 3 by SID",
                      *["; ".join((r.get("probes") or {}).get(p, [])[:3]) or "–" for r in reports]])
    text = "# Runs compared\n\n" + _md_table(["", *names], table)
    target = out if out is not None else Path(run_dirs[0]) / "compare.md"
    write_text(target, text)
    log.info("comparison written to %s", target)
    return text


def _read_report(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SidsError(f"{path} is not readable JSON ({e})") from e


PIPELINE_STAGES = ("catalog", "embed", "train", "assign", "evaluate", "export", "visualize")


def _as_of_now(run_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The evaluation as the page shows it: the timings of every stage that has run (export and visualize
    run after evaluate) and only the charts that are in the folder."""
    recorded = {k: v for k, v in stage_seconds(run_dir, list(PIPELINE_STAGES)).items() if v is not None}
    timings = {s: (report.get("timings_s") or {}).get(s) for s in PIPELINE_STAGES}
    timings.update(recorded)
    extra = {k: v for k, v in (report.get("timings_s") or {}).items() if k not in timings}
    charts = {k: v for k, v in (report.get("charts") or {}).items() if (run_dir / v).is_file()}
    return {**report, "timings_s": {**{k: v for k, v in timings.items() if v is not None}, **extra},
            "charts": charts}


def write_page(run_dir: Path) -> None:
    """Write ``run_dir/report.md`` from the run's JSON reports: the evaluation, then the retrieval
    benchmark's section when ``retrieval/report.json`` exists."""
    run_dir = Path(run_dir)
    evaluation = _read_report(run_dir / "report.json")
    if evaluation is not None:
        evaluation = _as_of_now(run_dir, evaluation)
    retrieval = _read_report(run_dir / "retrieval" / "report.json")
    labels = read_labels(run_dir)
    text = (render_markdown(evaluation, title=run_dir.name, labels=labels_markdown(labels) if labels else None)
            if evaluation is not None else "")
    if retrieval is not None:
        section = retrieval_section(retrieval)
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section.rstrip("\n") + "\n"
    write_text(run_dir / "report.md", text)
