"""Reports of ``aloe run``: one per iteration and one for the run, in Markdown and HTML with the stages' PNG plots."""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from aloe.runs import atomic_path

if TYPE_CHECKING:
    from aloe.loop.loop import LoopRun

#: Plots each stage leaves in its run folder that the report shows (those that exist).
STAGE_PLOTS = {
    "screen": ["plots/disagreements.png", "plots/selection_by_element.png"],
    "select": ["plots/pca.png", "plots/cluster_sizes.png"],
    "label": ["plots/distributions.png", "plots/elements.png"],
    "train": ["plots/parity-*.png"],
}


def _summary(loop: LoopRun, info: dict[str, Any] | None) -> dict[str, Any]:
    if not info:
        return {}
    path = loop.path / info["summary"]
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def iteration_lines(loop: LoopRun, it: int, record: dict[str, Any], image_prefix: str) -> list[str]:
    """Markdown lines of one iteration: a stage table, the numbers that matter, and the plots."""
    lines = [f"## Iteration {it}", ""]
    lines += ["| stage | seconds | result |", "|---|---:|---|"]
    for stage in loop.settings.stages():
        info = record.get(stage)
        if info is None:
            lines.append(f"| {stage} | - | not run |")
            continue
        lines.append(f"| {stage} | {info['seconds']:.1f} | {stage_headline(stage, info['counts'])} |")
    lines.append("")
    screen = record.get("screen")
    if screen:
        c = screen["counts"]
        lines.append(
            f"- committee: {', '.join(Path(m).name for m in c.get('committee', []))}; selection rate "
            f"**{c.get('selection_rate', 0):.2%}**"
        )
    elif loop.settings.selection != "committee":
        how = {"random": "uniform random picks", "diverse": "DIRECT"}[loop.settings.selection]
        budget = loop.settings.budget(it)
        lines.append(
            f"- selection: {loop.settings.selection} ({how} from the generated candidates, budget "
            f"{budget if budget is not None else 'none'}); no committee, selection rate n/a"
        )
    label = record.get("label")
    if label:
        c = label["counts"]
        failed = ", ".join(f"{k} {v}" for k, v in c.get("failed_by_class", {}).items()) or "none"
        lines.append(f"- label failures by class: {failed}")
        lab = _summary(loop, label).get("labeler", {})
        if lab:
            lines.append(f"- labeler: {lab.get('code')} ({lab.get('functional')}), {lab.get('code_version')}")
    train = record.get("train")
    if train:
        errors = loop.path / train["folder"] / "errors.csv"
        if errors.exists():
            lines += ["", "Committee test errors (`errors.csv`):", "", *_csv_table(errors.read_text())]
    lines.append("")
    for stage, plots in STAGE_PLOTS.items():
        info = record.get(stage)
        if not info:
            continue
        folder = loop.path / info["folder"]
        for pattern in plots:
            for path in sorted(folder.glob(pattern)):
                plot = path.relative_to(folder).as_posix()
                lines += [f"![{stage}: {path.stem}]({image_prefix}{info['folder']}/{plot})", ""]
    return lines


def stage_headline(stage: str, c: dict[str, Any]) -> str:
    """One line of what a stage did, from its counts (``60 screened, 12 selected``)."""
    if stage == "generate":
        return f"{c.get('candidates_in_shard', c.get('candidates', '?'))} candidates"
    if stage == "screen":
        o = c.get("outcomes", {})
        return f"{c.get('structures', 0)} screened, {o.get('selected', 0)} selected"
    if stage == "select":
        if c.get("mode") == "uniform":
            return f"{c.get('selected', 0)} of {c.get('structures', 0)} picked uniformly at random"
        return f"{c.get('selected', 0)} of {c.get('clustered', 0)} kept, {c.get('clusters', 0)} clusters"
    if stage == "label":
        return f"{c.get('labelled', 0)} labelled ({c.get('records', 0)} records), {c.get('failed', 0)} failed"
    if stage == "bench":
        tables = {k: v for k, v in c.items() if isinstance(v, dict) and "rows" in v}
        rows = sum(int(v["rows"]) for v in tables.values())
        failed = sum(int(v["failed"]) for v in tables.values())
        return f"{', '.join(tables)}: {rows} rows, {failed} failed"
    members = c.get("members", c.get("committee_size", "?"))
    return f"{members} models on {c.get('structures', c.get('train_structures', '?'))} structures"


def _csv_table(text: str) -> list[str]:
    rows = [line.split(",") for line in text.strip().splitlines()]
    if not rows:
        return []
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return out


def write_iteration_report(loop: LoopRun, it: int, record: dict[str, Any], html: bool) -> Path:
    """``iter-XX/report.md`` (and ``.html``)."""
    folder = loop.path / f"iter-{it:02d}"
    lines = [f"# aloe run: iteration {it}", "", *iteration_lines(loop, it, record, "../")]
    return _write(folder / "report.md", lines, html)


def write_run_report(
    loop: LoopRun, iterations: list[dict[str, Any]], summary: dict[str, Any], html: bool
) -> Path:
    """``report.md`` (and ``.html``) of the whole run."""
    lines = ["# aloe run", "", f"Run folder: `{loop.path}`  ", f"Stopped: {summary['stopped']}  "]
    lines.append(f"Wall time: {summary['seconds']:.0f} s")
    lines.append("")
    screens = loop.settings.selection == "committee"
    if not screens:
        lines += [f"Selection: {loop.settings.selection} (no screen, no committee: selection rate n/a)", ""]
    kept = {"committee": "kept (DIRECT)", "diverse": "kept (DIRECT)", "random": "picked (random)"}
    lines += [
        "| iteration | generated | screened | selected (screen) | "
        f"{kept[loop.settings.selection]} | labelled | records | failed |"
    ]
    lines += ["|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in iterations:
        gen = r.get("generate", {}).get("counts", {})
        scr = r.get("screen", {}).get("counts", {})
        sel = r.get("select", {}).get("counts", {})
        lab = r.get("label", {}).get("counts", {})
        screened = scr.get("structures", 0) if screens else "n/a"
        picked = scr.get("outcomes", {}).get("selected", 0) if screens else "n/a"
        generated = gen.get("candidates_in_shard", gen.get("candidates", "-"))
        lines.append(
            f"| {r['iteration']} | {generated} | {screened} | {picked} | "
            f"{sel.get('selected', '-')} | {lab.get('labelled', '-')} | {lab.get('records', '-')} | "
            f"{lab.get('failed', '-')} |"
        )
    lines.append("")
    if summary.get("final_committee"):
        lines += ["Final committee:", "", *[f"- `{m}`" for m in summary["final_committee"]], ""]
    lines += _bench_lines(loop, summary)
    for r in iterations:
        lines += iteration_lines(loop, r["iteration"], r, "")
    return _write(loop.path / "report.md", lines, html)


def _bench_lines(loop: LoopRun, summary: dict[str, Any]) -> list[str]:
    """The benchmarks of every committee (``bench_iterations.md`` and its figure), when the run has a bench section."""
    paths = summary.get("bench_report") or {}
    table = Path(paths["md"]) if paths.get("md") else None
    if table is None or not table.exists():
        return []
    lines = ["## Benchmarks of every committee", ""]
    lines.append("Committee 0 is the first one; committee k was trained in iteration k - 1.")
    lines += ["", *table.read_text().strip().splitlines(), ""]
    figure = Path(paths["png"]) if paths.get("png") else None
    if figure is not None and figure.exists():
        lines += [f"![benchmarks across committees]({figure.relative_to(loop.path).as_posix()})", ""]
    for name, info in (summary.get("bench") or {}).items():
        lines.append(f"- {name}: `{info['folder']}` (report: `{info['folder']}/report.html`)")
    return [*lines, ""]


def _write(path: Path, lines: list[str], html: bool) -> Path:
    text = "\n".join(lines) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    if html:
        with atomic_path(path.with_suffix(".html")) as tmp:
            tmp.write_text(markdown_to_html(text, title=path.parent.name))
    return path


def markdown_to_html(text: str, title: str = "aloe report") -> str:
    """The small Markdown subset the reports use (headings, tables, lists, images, bold, code) as HTML."""
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html_lib.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style>",
        "</head><body>",
    ]
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not re.fullmatch(r"\|(\s*-+:?\|)+", lines[i].replace(" ", "")):
                    rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            out.append("<table>")
            for k, row in enumerate(rows):
                tag = "th" if k == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in row) + "</tr>")
            out.append("</table>")
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.startswith("!["):
            m = re.match(r"!\[(.*?)\]\((.*?)\)", line)
            if m:
                out.append(f"<p><img alt='{html_lib.escape(m[1])}' src='{html_lib.escape(m[2])}'></p>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    text = html_lib.escape(text.rstrip())
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)
