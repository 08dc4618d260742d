"""Benchmark elemental references from an empty cache: every element, each CHGNet model, over a pool of workers.

Usage::

    python benchmarks/bench_references.py [--models chgnet-0.3.0 chgnet-0.2.0 chgnet-r2scan] [--workers 2]
        [--elements Cu,F,...] [--old-src /tmp/old-aloe/src] [--old-cache DIR] [--verify 3] [--compare-only]

For each model, in a fresh empty cache folder, the references of the 89 MP-ALOE elements are computed as
``aloe screen`` computes them (``aloe.screen.stage._reference_task``: one (model, element) task per worker call over
aloe's process pool, one torch thread per worker). Measured: the wall time per model (pool start and model loading
included), each element's time, and the peak resident memory of each worker (``VmHWM``, read in the worker after
each task). Target: at most 10 minutes per model on a 2-core machine and at most 1 GB per worker.

Comparison with the code before the in-run guards (every chosen reference must stay within 1 meV/atom or be
explained):

- ``--old-cache DIR``: a reference cache written by the old code (copy ``~/.cache/aloe/references`` aside before
  anything overwrites it); its values are compared directly.
- ``--old-src DIR``: the ``src`` folder of a checkout of the old code (``git worktree add /tmp/old-aloe <commit>``).
  The guards change nothing about a form they do not stop (the same calculator results reach the same FIRE steps),
  so only the forms the new code stopped are relaxed again with the old code, one subprocess each with a time and
  memory limit (a runaway that the old code would have chased for many minutes is reported as such). The old
  choice is then made by the same rule (:func:`aloe.potentials.references.choose_reference`) over the unchanged
  forms and the old ones. ``--verify N`` runs the old ``compute_reference`` in full for N elements per model that no
  guard touched and checks that it gives the same value, which tests that claim.

Writes ``benchmarks/results/bench_references.json`` (everything), ``bench_references.md`` (the tables) and one
``bench_references-<model>.csv`` per model (per element: seconds, winner, energy, stopped forms, old value).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ["chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan"]
TOLERANCE = 1e-3  # eV/atom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mib  # noqa: E402


# ---- the measured run (worker side) ----------------------------------------------------------------------------
def _task(task: tuple[str, str, str]) -> dict[str, Any]:
    """One (model, element) reference, exactly as the screen stage's worker task; plus this worker's peak memory."""
    cache, settings_json, element = task
    os.environ["ALOE_CACHE_DIR"] = cache  # the forkserver's environment predates the per-model cache folder
    from aloe.screen.stage import _reference_task

    _, _, seconds, details = _reference_task((settings_json, 0, element))
    out: dict[str, Any] = {
        "element": element,
        "seconds": seconds,
        "pid": os.getpid(),
        "rss_mib": peak_rss_mib(),
    }
    if isinstance(details, str):
        out["error"] = details
    else:
        out["winner"] = details["winner"]
        out["candidates"] = details["candidates"]
        out["isolated_atom_energy"] = details["isolated_atom_energy"]
    return out


def run_model(model: str, elements: list[str], workers: int) -> dict[str, Any]:
    """References of ``elements`` for ``model`` from an empty cache over ``workers`` processes."""
    from aloe.executors import get_executor
    from aloe.potentials.references import ReferenceStore, progress_line
    from aloe.potentials.registry import load_potential
    from aloe.screen.settings import ScreenSettings

    settings_json = ScreenSettings(committee=[model]).model_copy(update={"output": None}).model_dump_json()
    with tempfile.TemporaryDirectory(prefix="aloe-refs-") as cache:
        assert not any(Path(cache).iterdir())
        rows = []
        t0 = time.perf_counter()
        tasks = [(cache, settings_json, e) for e in elements]
        # A fresh pool per model, closed at the end (its processes' peak memory is this model's).
        with get_executor("process" if workers > 1 else "local", workers) as executor:
            for n, row in enumerate(executor.map_unordered(_task, tasks), 1):
                rows.append(row)
                print(
                    progress_line(
                        model, row["element"], n, len(elements), row["seconds"], row.get("error") or row
                    )
                )
                sys.stdout.flush()
        wall = time.perf_counter() - t0
        potential = load_potential(model)
        store = ReferenceStore(Path(cache) / "references")
        energies = store.cached(potential).as_dict()
    for row in rows:
        row["energy_per_atom"] = energies.get(row["element"])
    rows.sort(key=lambda r: elements.index(r["element"]))
    peak = {}
    for row in rows:
        peak[row["pid"]] = max(peak.get(row["pid"], 0.0), row["rss_mib"])
    return {"model": model, "wall_seconds": wall, "workers": workers, "peak_rss_mib": peak, "elements": rows}


# ---- the old code ------------------------------------------------------------------------------------------------
_OLD_FORM = """
import json, sys, warnings
warnings.simplefilter("ignore")
from aloe.potentials.registry import load_potential
from aloe.potentials.calculator import calculator_for
from aloe.potentials import references as R
model, element, form = sys.argv[1:4]
potential = load_potential(model, threads=1)
settings = R.ReferenceSettings()
if form == "*":
    energy, info = R.compute_reference(potential, element, settings)
    print(json.dumps({"energy_per_atom": energy, "winner": info["winner"]}))
else:
    atoms, relax_cell = R.candidate_structures(element, settings)[form]
    print(json.dumps(R._relax_candidate(atoms, calculator_for(potential), relax_cell, settings)))
"""


def run_old(
    old_src: Path, model: str, element: str, form: str, timeout: float, rss_gib: float
) -> dict[str, Any]:
    """Relax one form (``*``: the whole reference) with the old code in a subprocess, within time and memory."""
    import psutil

    env = dict(os.environ, PYTHONPATH=str(old_src), OPENBLAS_NUM_THREADS="1")  # BLAS threads: speed only
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["nice", "-n", "19", sys.executable, "-c", _OLD_FORM, model, element, form],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    peak, limit = 0.0, None
    handle = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [handle, *handle.children(recursive=True)]) / 2**30
        except psutil.Error:
            rss = 0.0
        peak = max(peak, rss)
        elapsed = time.perf_counter() - t0
        if elapsed > timeout:
            limit = f"did not finish in {timeout:.0f} s"
        elif rss > rss_gib:
            limit = f"exceeded {rss_gib:g} GB of memory after {elapsed:.0f} s"
        if limit:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.5)
    out, _ = proc.communicate()
    result: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(peak, 2)}
    if limit:
        result["limit"] = limit
    elif proc.returncode != 0 or not out.strip():
        result["limit"] = f"old code exited with status {proc.returncode}"
    else:
        result.update(json.loads(out.strip().splitlines()[-1]))
    return result


OLD_RUNS = RESULTS / "bench_references-old-runs.json"


def old_run(
    old_src: Path, model: str, element: str, form: str, timeout: float, rss_gib: float
) -> dict[str, Any]:
    """:func:`run_old`, remembered in :data:`OLD_RUNS` (the old runs take long; a rerun of the comparison reuses)."""
    memo = json.loads(OLD_RUNS.read_text()) if OLD_RUNS.exists() else {}
    key = f"{model} {element} {form}"
    if key not in memo:
        memo[key] = run_old(old_src, model, element, form, timeout, rss_gib)
        memo = {**(json.loads(OLD_RUNS.read_text()) if OLD_RUNS.exists() else {}), key: memo[key]}
        RESULTS.mkdir(parents=True, exist_ok=True)
        OLD_RUNS.write_text(json.dumps(memo, indent=1) + "\n")
    return memo[key]


def compare_with_old(
    result: dict[str, Any], old_src: Path, timeout: float, rss_gib: float, verify: int
) -> None:
    """Add ``old`` (value and how it was obtained) to every element of ``result``."""
    from aloe.potentials.references import ReferenceSettings, choose_reference

    settings = ReferenceSettings()
    model = result["model"]
    untouched = []
    for row in result["elements"]:
        if "candidates" not in row:
            row["old"] = old_run(old_src, model, row["element"], "*", timeout, rss_gib)
            print(f"old {model} {row['element']}: {row['old']}", flush=True)
            continue
        stopped = [n for n, c in row["candidates"].items() if c["stopped"]]
        if not stopped:
            row["old"] = {
                "energy_per_atom": row["energy_per_atom"],
                "winner": row["winner"],
                "how": "same path",
            }
            untouched.append(row)
            continue
        forms = {n: dict(c) for n, c in row["candidates"].items()}
        runs = {}
        for name in stopped:
            runs[name] = old_run(old_src, model, row["element"], name, timeout, rss_gib)
            print(f"old {model} {row['element']} {name}: {runs[name]}", flush=True)
            forms[name] = (
                runs[name] if "limit" not in runs[name] else {**forms[name], "error": runs[name]["limit"]}
            )
        # The plausibility check reads the other forms' energies: start from the raw (unchecked) values.
        for c in forms.values():
            if str(c.get("error", "")).startswith("implausibly bound"):
                c["error"] = None  # re-judged below
                c["energy_per_atom"] = c.pop("rejected_energy_per_atom")
        winner = choose_reference(forms, row.get("isolated_atom_energy"), settings)
        row["old"] = {
            "energy_per_atom": forms[winner]["energy_per_atom"] if winner else None,
            "winner": winner,
            "how": "old code on the stopped forms",
            "forms": runs,
            "unfinished": [n for n, r in runs.items() if "limit" in r],
        }
    for row in untouched[:verify]:
        check = old_run(old_src, model, row["element"], "*", timeout, rss_gib)
        row["old"]["verified"] = check
        print(f"verify {model} {row['element']}: {check} (new {row['energy_per_atom']})", flush=True)


def compare_with_cache(result: dict[str, Any], old_cache: Path) -> None:
    """Add ``old`` from a reference cache written by the old code."""
    from aloe.potentials.references import ReferenceStore
    from aloe.potentials.registry import load_potential

    potential = load_potential(result["model"])
    path = ReferenceStore(old_cache).path_for(potential)
    data = json.loads(path.read_text())["elements"] if path.exists() else {}
    for row in result["elements"]:
        entry = data.get(row["element"])
        forms = (entry or {}).get("info", {}).get("candidates", {})
        if any("stopped" in c for c in forms.values()):
            continue  # written by the guarded code (this one), not the old one
        if entry is not None:
            row["old"] = {
                "energy_per_atom": entry["energy_per_atom"],
                "winner": entry.get("info", {}).get("winner"),
                "how": f"cache {path.name}",
            }


# ---- reporting -------------------------------------------------------------------------------------------------
def _stopped(row: dict[str, Any]) -> str:
    return " ".join(f"{n}:{c['stopped']}" for n, c in row.get("candidates", {}).items() if c["stopped"])


def _change(row: dict[str, Any]) -> float | None:
    old = row.get("old", {}).get("energy_per_atom")
    new = row.get("energy_per_atom")
    return None if old is None or new is None else new - old


def write_reports(results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_references.json").write_text(
        json.dumps({"meta": meta, "models": results}, indent=1) + "\n"
    )
    md = [f"# Elemental references from an empty cache ({meta['workers']} workers)", ""]
    md.append(f"Machine: {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs; {meta['date']}")
    md.append("")
    md.append(
        "| model | elements | wall (s) | sum of element times (s) | peak RSS per worker (MiB) | failed |"
    )
    md.append("|---|---|---|---|---|---|")
    for res in results:
        rows = res["elements"]
        peaks = ", ".join(f"{v:.0f}" for v in sorted(res["peak_rss_mib"].values(), reverse=True))
        failed = ", ".join(r["element"] for r in rows if "error" in r) or "-"
        md.append(
            f"| {res['model']} | {len(rows)} | {res['wall_seconds']:.0f} | "
            f"{sum(r['seconds'] for r in rows):.0f} | {peaks} | {failed} |"
        )
    for res in results:
        rows = res["elements"]
        with open(RESULTS / f"bench_references-{res['model']}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                [
                    "element",
                    "seconds",
                    "winner",
                    "energy_per_atom",
                    "stopped",
                    "old_energy_per_atom",
                    "old_winner",
                    "change_meV",
                    "error",
                ]
            )
            for r in rows:
                change = _change(r)
                writer.writerow(
                    [
                        r["element"],
                        f"{r['seconds']:.2f}",
                        r.get("winner", ""),
                        r.get("energy_per_atom", ""),
                        _stopped(r),
                        r.get("old", {}).get("energy_per_atom", ""),
                        r.get("old", {}).get("winner", ""),
                        "" if change is None else f"{1000 * change:.3f}",
                        r.get("error", ""),
                    ]
                )
        md += ["", f"## {res['model']}: the 15 slowest elements", ""]
        md.append("| element | s | winner | forms stopped (guard) |")
        md.append("|---|---|---|---|")
        for r in sorted(rows, key=lambda r: -r["seconds"])[:15]:
            md.append(
                f"| {r['element']} | {r['seconds']:.1f} | {r.get('winner', '-')} | {_stopped(r) or '-'} |"
            )
        compared = [r for r in rows if "old" in r]
        if compared:
            changed = [r for r in compared if _change(r) is None or abs(_change(r)) > TOLERANCE]
            md += [
                "",
                f"Compared with the old code: {len(compared)} elements, {len(changed)} not within 1 meV/atom:",
                "",
            ]
            unfinished = [r for r in compared if r["old"].get("unfinished")]
            if unfinished:
                md.append(
                    "Old forms that ran away (ended by the old run's time or memory limit; the old value is the "
                    "best of the other forms): "
                    + "; ".join(f"{r['element']} {', '.join(r['old']['unfinished'])}" for r in unfinished)
                )
                md.append("")
            for r in changed:
                old = r["old"]
                change = _change(r)
                what = "n/a" if change is None else f"{1000 * change:+.1f} meV/atom"
                md.append(
                    f"- {r['element']}: new {r.get('energy_per_atom')} ({r.get('winner')}), old "
                    f"{old.get('energy_per_atom')} ({old.get('winner')}), {what}; stopped now: {_stopped(r) or '-'}; "
                    f"old runs: {json.dumps(old.get('forms', old.get('limit', '')))}"
                )
    (RESULTS / "bench_references.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    from aloe.elements import default_elements

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--elements", default=None, help="comma-separated symbols (default: the 89 elements)")
    parser.add_argument("--old-src", type=Path, default=None, help="src folder of the old code")
    parser.add_argument(
        "--old-cache", type=Path, default=None, help="a reference cache written by the old code"
    )
    parser.add_argument("--old-timeout", type=float, default=600.0, help="seconds per old form")
    parser.add_argument("--old-rss-gb", type=float, default=3.0, help="memory limit per old form (GiB)")
    parser.add_argument(
        "--verify", type=int, default=3, help="untouched elements per model run with the old code"
    )
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help="measure nothing: compare the results in bench_references.json with the old code",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("ALOE_PROGRESS", "0")

    user_cache = Path.home() / ".cache" / "aloe" / "references"
    if args.old_cache is None and user_cache.is_dir():
        # Keep the user's (old) cache for the comparison before anything could write to it.
        args.old_cache = Path(tempfile.mkdtemp(prefix="aloe-old-refs-"))
        shutil.copytree(user_cache, args.old_cache, dirs_exist_ok=True)
        print(f"copied {user_cache} to {args.old_cache} for the comparison")
    if args.compare_only:
        saved = json.loads((RESULTS / "bench_references.json").read_text())
        meta, results = saved["meta"], saved["models"]
    else:
        elements = args.elements.split(",") if args.elements else list(default_elements())
        results = []
        for model in args.models:
            print(f"== {model}: {len(elements)} elements, {args.workers} workers, empty cache", flush=True)
            res = run_model(model, elements, args.workers)
            print(
                f"== {model}: {res['wall_seconds']:.0f} s, peak RSS per worker {res['peak_rss_mib']}",
                flush=True,
            )
            results.append(res)
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "workers": args.workers,
            "machine": machine(("torch", "chgnet", "ase")),
            "load_average": os.getloadavg(),
        }
        write_reports(results, meta)  # the timings first: the old-code comparison may take long
    for res in results:
        if args.old_cache is not None:
            compare_with_cache(res, args.old_cache)
        if args.old_src is not None:
            compare_with_old(res, args.old_src, args.old_timeout, args.old_rss_gb, args.verify)
    if args.old_cache is not None or args.old_src is not None:
        write_reports(results, meta)


if __name__ == "__main__":
    main()
