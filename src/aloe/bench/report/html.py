"""``report.html``: the comparison, figures and failures of a benchmark run in one self-contained page."""

from __future__ import annotations

import base64
import html as html_lib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aloe.bench.base import COMMON_COLUMNS
from aloe.bench.report._common import report_order, write_text
from aloe.bench.report.tables import headlines_of
from aloe.layout import COMPARISON, REPORT_HTML

#: Most failed rows listed per benchmark in the HTML page (the tables hold all of them).
MAX_LISTED_FAILURES = 300


def collect_failures(
    rows_by_bench: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """The failed rows of each benchmark (those with an ``error``), reduced to the common columns."""
    return {
        bench: [{k: r.get(k) for k in COMMON_COLUMNS} for r in rows if r.get("error")]
        for bench, rows in rows_by_bench.items()
    }


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
    "td.reason{text-align:left;font-family:monospace;font-size:90%}"
    "img{max-width:100%;display:block;margin:0.5em 0 1.5em}.muted{color:#777}"
)


def _html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()
) -> list[str]:
    e = html_lib.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for k, c in enumerate(row):
            cls = f" class='{classes[k]}'" if k < len(classes) and classes[k] else ""
            cells.append(f"<td{cls}>{e(str(c))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return out


def _figure_bench(path: Path, benches: Sequence[str]) -> str | None:
    stem = path.stem
    for bench in sorted(benches, key=len, reverse=True):
        if stem == bench or stem.startswith(f"{bench}_"):
            return bench
    return None


def write_html(
    folder: str | Path,
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]],
    figures: Sequence[str | Path],
    tables: Mapping[str, str | Path],
    failures: Mapping[str, Sequence[Mapping[str, Any]]],
    title: str = "aloe bench",
) -> Path:
    """``report.html``: one self-contained page (no files needed beside it to show).

    Parameters
    ----------
    folder
        The report folder (``report.html`` goes there; links are relative to it).
    metrics
        ``metrics[bench][potential]`` -> aggregate metrics (the comparison tables).
    figures
        PNG files (from :func:`write_figures`), embedded as base64 data URIs under the benchmark their name starts
        with.
    tables
        ``bench -> Parquet path`` (from :func:`write_tables`), linked.
    failures
        ``bench -> failed rows`` (:func:`collect_failures`): potential, structure, formula and reason are listed
        (at most :data:`MAX_LISTED_FAILURES` per benchmark), with a count per (potential, reason).
    title
        Page title.

    Returns
    -------
    Path
        The page. Every text from the rows, metrics and title is HTML-escaped.
    """
    e = html_lib.escape
    folder = Path(folder)
    figures = [Path(f) for f in figures]
    benches = report_order(list(dict.fromkeys([*metrics, *tables, *failures])))
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    names = (f"{COMPARISON}.md", f"{COMPARISON}.csv", f"{COMPARISON}.json")
    links = [f"<a href='{e(name)}'>{e(name)}</a>" for name in names if (folder / name).exists()]
    for path in tables.values():
        rel = _relative(Path(path), folder)
        links.append(f"<a href='{e(rel)}'>{e(rel)}</a>")
    if links:
        out.append("<p>Files: " + " · ".join(links) + "</p>")
    out.append("<p class='muted'>Energies in meV/atom, forces in meV/A, rates and shares in percent.</p>")
    for bench in benches:
        out.append(f"<h2>{e(bench)}</h2>")
        by_potential = metrics.get(bench, {})
        if by_potential:
            heads = headlines_of(bench, by_potential)
            rows = [[name] + [h.text(m) for h in heads] for name, m in by_potential.items()]
            out += _html_table(["potential"] + [h.label for h in heads], rows)
        else:
            out.append("<p class='muted'>No metrics.</p>")
        mine = [f for f in figures if _figure_bench(f, benches) == bench]
        if not mine:
            out.append("<p class='muted'>No figures (no successful structures).</p>")
        for path in mine:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(
                f"<img alt='{e(path.stem)}' title='{e(path.name)}' src='data:image/png;base64,{data}'>"
            )
        failed = list(failures.get(bench, []))
        if failed:
            out.append(f"<h3>{e(bench)}: {len(failed)} failed</h3>")
            counts: dict[tuple[str, str], int] = {}
            for r in failed:
                key = (str(r.get("potential")), str(r.get("error")))
                counts[key] = counts.get(key, 0) + 1
            out += _html_table(
                ["potential", "structures", "reason"],
                [
                    [p, str(c), reason]
                    for (p, reason), c in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1]))
                ],
                ["", "", "reason"],
            )
            shown = failed[:MAX_LISTED_FAILURES]
            out += _html_table(
                ["potential", "structure", "formula", "atoms", "reason"],
                [
                    [
                        str(r.get("potential")),
                        str(r.get("structure_id")),
                        str(r.get("formula") or ""),
                        str(r.get("n_atoms") or ""),
                        str(r.get("error")),
                    ]
                    for r in shown
                ],
                ["", "", "", "", "reason"],
            )
            if len(failed) > len(shown):
                out.append(f"<p class='muted'>... and {len(failed) - len(shown)} more (see the table).</p>")
    for path in [f for f in figures if _figure_bench(f, benches) is None]:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        out.append(f"<img alt='{e(path.stem)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return write_text(folder / REPORT_HTML, "\n".join(out) + "\n")


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return path.as_posix()
