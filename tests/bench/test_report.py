"""The benchmark report: Parquet tables, comparison (Markdown/CSV/JSON), figures, HTML and the iteration report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aloe.bench.base import COMMON_COLUMNS
from aloe.bench.report import (
    HEADLINES,
    collect_failures,
    headlines_of,
    survival_from_shares,
    write_comparison,
    write_figures,
    write_html,
    write_iteration_report,
    write_report,
    write_tables,
)

PNG = b"\x89PNG\r\n\x1a\n"
POTENTIALS = ["mace-small", "chgnet"]
#: A failure reason with characters HTML must escape.
NASTY = "RuntimeError: energy <nan> & forces 'exploded'"

COLUMNS = {
    "equilibrium": {
        "e_coh_ref": "reference cohesive energy (eV/atom)",
        "e_coh_pred": "predicted cohesive energy (eV/atom)",
        "e_coh_error": "predicted - reference (eV/atom)",
        "fingerprint_distance": "site-fingerprint distance",
        "converged": "relaxation converged",
        "relax_steps": "relaxation steps",
    },
    "forces": {
        "forces_ref": "reference force components (eV/A)",
        "forces_pred": "predicted force components (eV/A)",
        "force_mae": "MAE (eV/A)",
        "force_rmse": "RMSE (eV/A)",
        "softening_slope": "slope a of y = a x",
    },
    "ev": {
        "strains": "strains",
        "volumes": "volumes (A^3/atom)",
        "energies": "energies (eV/atom)",
        "v0": "unstrained volume (A^3/atom)",
        "flips": "sign changes of dE",
        "failed": "more than one flip",
        "no_minimum": "no minimum inside the scan",
    },
    "md": {
        **{
            f"{ens}_{c}": f"{ens} {c}"
            for ens in ("nvt", "npt")
            for c in (
                "steps_scheduled",
                "steps_completed",
                "completed_share",
                "steps_per_second",
                "stop_reason",
            )
        },
        "npt_volume_ratio": "final / initial volume",
    },
}


def _common(potential: str, k: int, n_atoms: int = 4, error: str | None = None) -> dict[str, Any]:
    return {
        "potential": potential,
        "structure_id": f"s{k}",
        "formula": ["NaCl", "Fe2O3", "Si", "LiF"][k % 4],
        "n_atoms": n_atoms,
        "error": error,
        "wall_s": 0.1 * (k + 1),
    }


def _equilibrium_rows(rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    for p, name in enumerate(POTENTIALS):
        for k in range(5):
            if k == 4:
                rows.append(_common(name, k, error=NASTY))
                continue
            ref = -3.0 - k * 0.5
            pred = ref + (0.02 + 0.03 * p) * (1 if k % 2 else -1)
            rows.append(
                {
                    **_common(name, k),
                    "e_coh_ref": ref,
                    "e_coh_pred": pred,
                    "e_coh_error": pred - ref,
                    "fingerprint_distance": float(rng.uniform(0, 0.3)),
                    "converged": k != 2,
                    "relax_steps": 10 + k,
                }
            )
    return rows


def _forces_rows(rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    for p, name in enumerate(POTENTIALS):
        for k in range(3):
            if p == 1 and k == 0:
                rows.append(_common(name, k, n_atoms=18, error="ValueError: no reference forces"))
                continue
            ref = rng.normal(0, 1, 18 * 3)
            pred = (0.9 - 0.1 * p) * ref + rng.normal(0, 0.05, ref.shape)
            err = pred - ref
            rows.append(
                {
                    **_common(name, k, n_atoms=18),
                    "forces_ref": ref.tolist(),
                    "forces_pred": pred.tolist(),
                    "force_mae": float(np.abs(err).mean()),
                    "force_rmse": float(np.sqrt((err**2).mean())),
                    "softening_slope": float(ref @ pred / (ref @ ref)),
                }
            )
    return rows


def _ev_rows() -> list[dict[str, Any]]:
    rows = []
    strains = np.linspace(-0.2, 0.2, 21)
    for p, name in enumerate(POTENTIALS):
        for k in range(4):
            if k == 3:
                rows.append(_common(name, k, error="ase: calculator crashed"))
                continue
            v0 = 10.0 + k
            volumes = v0 * (1 + strains) ** 3
            energies = 0.5 * (volumes / v0 - 1.0) ** 2
            failed = p == 1 and k == 0
            no_minimum = p == 0 and k == 1
            if failed:
                energies = energies + 0.05 * np.sin(12 * strains)  # wiggles: several flips
                energies[0] = 80.0  # a blown-up point: the panel goes to a symlog axis
            if no_minimum:
                energies = -0.3 * (volumes / v0)  # monotonic: no minimum
            rows.append(
                {
                    **_common(name, k),
                    "strains": strains.tolist(),
                    "volumes": volumes.tolist(),
                    "energies": energies.tolist(),
                    "v0": v0,
                    "flips": 5 if failed else (0 if no_minimum else 1),
                    "failed": failed,
                    "no_minimum": no_minimum,
                }
            )
    return rows


def _md_rows(only_failures: bool) -> list[dict[str, Any]]:
    rows = []
    for p, name in enumerate(POTENTIALS):
        for k in range(4):
            n_atoms = 50 * (k + 1)
            if only_failures or k == 3:
                rows.append(_common(name, k, n_atoms=n_atoms, error="MemoryError: out of memory"))
                continue
            row = _common(name, k, n_atoms=n_atoms)
            for ens, share in (("nvt", 1.0 - 0.3 * p * k), ("npt", 1.0 - 0.2 * k)):
                row |= {
                    f"{ens}_steps_scheduled": 1000,
                    f"{ens}_steps_completed": round(1000 * share),
                    f"{ens}_completed_share": share,
                    f"{ens}_steps_per_second": 500.0 / n_atoms * (p + 1),
                    f"{ens}_stop_reason": "completed" if share == 1 else "energy drift",
                }
            row["npt_volume_ratio"] = 1.1
            rows.append(row)
    return rows


def _aggregate(bench: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in rows if not r.get("error")]
    out: dict[str, float] = {"n": len(rows), "n_failed": len(rows) - len(ok)}
    if bench == "equilibrium" and ok:
        err = np.array([r["e_coh_error"] for r in ok])
        fp = np.array([r["fingerprint_distance"] for r in ok])
        out |= {
            "e_coh_mae": float(np.abs(err).mean()),
            "e_coh_std": float(err.std()),
            "e_coh_mean_error": float(err.mean()),
            "fingerprint_distance_mean": float(fp.mean()),
            "fingerprint_distance_median": float(np.median(fp)),
            "n_unconverged": sum(not r["converged"] for r in ok),
        }
    elif bench == "forces" and ok:
        ref = np.concatenate([r["forces_ref"] for r in ok])
        pred = np.concatenate([r["forces_pred"] for r in ok])
        out |= {
            "force_mae": float(np.abs(pred - ref).mean()),
            "force_rmse": float(np.sqrt(((pred - ref) ** 2).mean())),
            "softening_slope": float(ref @ pred / (ref @ ref)),
            "n_components": len(ref),
        }
    elif bench == "ev" and ok:
        flips = np.array([r["flips"] for r in ok])
        out |= {
            "failure_rate": float(np.mean([r["failed"] for r in ok])),
            "no_minimum_rate": float(np.mean([r["no_minimum"] for r in ok])),
            "flips_mean": float(flips.mean()),
            "flips_minus_one_abs_mean": float(np.abs(flips - 1).mean()),
            "tortuosity_mean": float("nan"),  # NaN must survive to JSON as null and to Markdown as "nan"
        }
    elif bench == "md":
        for ens in ("nvt", "npt"):
            shares = np.array([r[f"{ens}_completed_share"] for r in ok]) if ok else np.array([])
            out |= {
                f"{ens}_completed_share_mean": float(shares.mean()) if ok else float("nan"),
                f"{ens}_survived_share": float((shares >= 1).mean()) if ok else float("nan"),
                f"{ens}_survival_auc": float(shares.mean()) if ok else float("nan"),
            }
            if ok:
                out[f"{ens}_steps_per_second_mean"] = float(
                    np.mean([r[f"{ens}_steps_per_second"] for r in ok])
                )
    return out


def _metrics(rows_by_bench: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    return {
        bench: {name: _aggregate(bench, [r for r in rows if r["potential"] == name]) for name in POTENTIALS}
        for bench, rows in rows_by_bench.items()
    }


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    """Rows of all four benchmarks (MD with successes) and their metrics."""
    rng = np.random.default_rng(7)
    rows = {
        "equilibrium": _equilibrium_rows(rng),
        "forces": _forces_rows(rng),
        "ev": _ev_rows(),
        "md": _md_rows(only_failures=False),
    }
    return {"rows": rows, "metrics": _metrics(rows)}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any]) -> dict[str, Any]:
    """A full report where the MD benchmark has only failures."""
    rows = {**data["rows"], "md": _md_rows(only_failures=True)}
    metrics = _metrics(rows)
    folder = tmp_path_factory.mktemp("report")
    paths = write_report(rows, COLUMNS, metrics, folder, title="bench <run> & co")
    return {"rows": rows, "metrics": metrics, "folder": folder, "paths": paths}


def _is_png(path: Path) -> bool:
    content = path.read_bytes()
    return content.startswith(PNG) and len(content) > 2000


# ---- tables ---------------------------------------------------------------------------------------------------
def test_tables_round_trip(report: dict[str, Any]) -> None:
    tables = report["paths"]["tables"]
    assert set(tables) == {"equilibrium", "forces", "ev", "md"}
    for bench, path in tables.items():
        assert path == report["folder"] / "tables" / f"{bench}.parquet"
        rows = report["rows"][bench]
        table = pq.read_table(path)
        assert table.num_rows == len(rows)
        # Common columns first, then the declared ones in their order.
        assert table.column_names == [*COMMON_COLUMNS, *COLUMNS[bench]]
        schema = pq.read_schema(path)
        for name in table.column_names:
            description = schema.field(name).metadata[b"description"].decode()
            assert description == {**COMMON_COLUMNS, **COLUMNS[bench]}[name]
        assert schema.metadata[b"aloe.bench"] == bench.encode()
        back = table.to_pylist()
        for row, got in zip(rows, back, strict=True):
            for key, value in got.items():
                if key not in row:
                    assert value is None, (bench, key)  # failed rows: benchmark columns are null
                else:
                    assert value == row[key], (bench, key)


def test_list_columns_and_failures_only(report: dict[str, Any]) -> None:
    forces = pq.read_table(report["paths"]["tables"]["forces"])
    assert forces.schema.field("forces_ref").type == pa.list_(pa.float64())
    ev = pq.read_table(report["paths"]["tables"]["ev"])
    assert ev.schema.field("energies").type == pa.list_(pa.float64())
    assert ev.schema.field("failed").type == pa.bool_()
    # A benchmark whose structures all failed keeps its declared columns, all null.
    md = pq.read_table(report["paths"]["tables"]["md"])
    assert md.num_rows == 8
    assert md.column("nvt_completed_share").null_count == 8
    assert set(md.column("error").to_pylist()) == {"MemoryError: out of memory"}


def test_tables_awkward_values(tmp_path: Path) -> None:
    rows = [
        {**_common("a", 0), "x": np.float32(1.5), "arr": np.arange(3.0), "mixed": True, "extra": "why"},
        {**_common("a", 1), "x": float("nan"), "arr": [1, 2], "mixed": 2.5},
        _common("a", 2, error="failed"),
    ]
    path = write_tables(
        {"custom": rows}, {"custom": {"x": "a number", "arr": "a list", "mixed": "?"}}, tmp_path
    )["custom"]
    table = pq.read_table(path)
    # Undeclared columns keep their first-seen order after the declared ones.
    assert table.column_names == [*COMMON_COLUMNS, "x", "arr", "mixed", "extra"]
    got = table.to_pylist()
    assert (
        got[0]["x"] == 1.5 and math.isnan(got[1]["x"]) and got[2]["x"] is None
    )  # NaN stays NaN, missing is null
    assert got[0]["arr"] == [0.0, 1.0, 2.0] and got[1]["arr"] == [1.0, 2.0]
    assert [r["mixed"] for r in got] == [1.0, 2.5, None]  # bool mixed with float falls back to float64
    assert pq.read_schema(path).field("extra").metadata[b"description"] == b""


# ---- comparison -----------------------------------------------------------------------------------------------
def _markdown_tables(text: str) -> dict[str, list[list[str]]]:
    tables: dict[str, list[list[str]]] = {}
    bench = None
    for line in text.splitlines():
        if line.startswith("## "):
            bench = line[3:].strip()
            tables[bench] = []
        elif line.startswith("|") and bench is not None and not line.startswith("|---"):
            tables[bench].append([c.strip() for c in line.strip("|").split(" | ")])
    return tables


def test_comparison_formats_agree(report: dict[str, Any]) -> None:
    paths = report["paths"]["comparison"]
    metrics = report["metrics"]
    assert json.loads(paths["json"].read_text()) == json.loads(
        json.dumps(metrics).replace("NaN", "null")
    )  # full metrics; NaN written as null
    tables = _markdown_tables(paths["md"].read_text())
    with paths["csv"].open() as handle:
        csv_rows = {r["potential"]: r for r in csv.DictReader(handle)}
    assert list(csv_rows) == POTENTIALS
    for bench, by_potential in metrics.items():
        heads = headlines_of(bench, by_potential)
        header, *body = tables[bench]
        assert header == ["potential"] + [h.label for h in heads]
        assert [r[0] for r in body] == POTENTIALS
        for name, cells in zip(POTENTIALS, body, strict=True):
            for head, cell in zip(heads, cells[1:], strict=True):
                value = head.value(by_potential[name])
                assert cell == head.text(by_potential[name])
                shown = csv_rows[name][f"{bench}: {head.label}"]
                if value is None:
                    assert shown == "" and cell == "-"
                elif math.isnan(value):
                    assert shown == "nan" and cell == "nan"
                else:
                    assert float(shown) == pytest.approx(value)
                    assert float(cell) == pytest.approx(value, rel=0.06, abs=0.06)
    # Units: eV/atom shown in meV/atom, fractions in percent.
    mae = metrics["equilibrium"]["chgnet"]["e_coh_mae"]
    assert float(csv_rows["chgnet"]["equilibrium: E_coh MAE (meV/atom)"]) == pytest.approx(1000 * mae)
    rate = metrics["ev"]["chgnet"]["failure_rate"]
    assert float(csv_rows["chgnet"]["ev: failure rate (%)"]) == pytest.approx(100 * rate)
    assert "force MAE (meV/A)" in [h.label for h in HEADLINES["forces"]]


def test_comparison_missing_potential(tmp_path: Path) -> None:
    metrics = {"forces": {"a": {"force_mae": 0.05, "n": 3}}, "ev": {"b": {"failure_rate": 0.25}}}
    paths = write_comparison(metrics, tmp_path)
    with paths["csv"].open() as handle:
        rows = {r["potential"]: r for r in csv.DictReader(handle)}
    assert rows["a"]["forces: force MAE (meV/A)"] == "50.0"
    assert rows["a"]["ev: failure rate (%)"] == ""
    assert rows["b"]["ev: failure rate (%)"] == "25.0"
    # Only the headlines some potential has become columns.
    assert "forces: softening slope" not in rows["a"]


# ---- figures --------------------------------------------------------------------------------------------------
def test_figures_all_benchmarks(tmp_path: Path, data: dict[str, Any]) -> None:
    figures = write_figures(data["rows"], data["metrics"], tmp_path)
    names = [f.name for f in figures]
    assert names == [
        "equilibrium_parity.png",
        "equilibrium_fingerprint.png",
        "forces_parity.png",
        "ev_curves.png",
        "md_survival.png",
        "md_speed.png",
    ]
    for path in figures:
        assert path.parent == tmp_path / "figures"
        assert _is_png(path), path
    assert not list((tmp_path / "figures").glob(".*"))  # no temp files left behind


def test_figures_skip_without_successes(tmp_path: Path, report: dict[str, Any]) -> None:
    names = {f.name for f in report["paths"]["figures"]}
    assert not any(n.startswith("md_") for n in names)  # MD had only failures: no empty plots
    assert {"equilibrium_parity.png", "forces_parity.png", "ev_curves.png"} <= names
    for path in report["paths"]["figures"]:
        assert _is_png(path)
    # No rows at all, or metrics without rows: nothing drawn, nothing raised.
    assert write_figures({"equilibrium": [], "forces": [], "ev": [], "md": []}, {}, tmp_path) == []
    assert write_figures({}, report["metrics"], tmp_path) == []


def test_survival_curve() -> None:
    shares = [1.0, 0.5, 0.25, 1.0, 0.0]
    t, alive = survival_from_shares(shares)
    assert t[0] == 0.0 and t[-1] == 1.0
    assert alive[0] == pytest.approx(0.8)  # the run that stopped at 0 is dead from the start
    assert alive[-1] == pytest.approx(0.4)  # two of five completed
    assert np.all(np.diff(alive) <= 0)
    area = float(np.sum(np.diff(t) * alive[:-1]))
    assert area == pytest.approx(np.mean(shares))


# ---- HTML -----------------------------------------------------------------------------------------------------
def test_html(report: dict[str, Any]) -> None:
    page = report["paths"]["html"]
    assert page == report["folder"] / "report.html"
    text = page.read_text()
    assert "<title>bench &lt;run&gt; &amp; co</title>" in text
    assert text.count("data:image/png;base64,") == len(report["paths"]["figures"])
    assert "<th>E_coh MAE (meV/atom)</th>" in text and "<td>chgnet</td>" in text
    # Failure reasons, escaped.
    assert "RuntimeError: energy &lt;nan&gt; &amp; forces &#x27;exploded&#x27;" in text
    assert NASTY not in text
    assert "MemoryError: out of memory" in text and "ase: calculator crashed" in text
    assert "No figures (no successful structures)" in text  # the MD section
    for bench in ("equilibrium", "forces", "ev", "md"):
        assert f"href='tables/{bench}.parquet'" in text
    assert "href='comparison.csv'" in text
    # Self-contained: no image is a link to a file.
    assert "src='figures/" not in text


def test_html_failures_listed(tmp_path: Path, report: dict[str, Any]) -> None:
    failures = collect_failures(report["rows"])
    assert len(failures["md"]) == 8 and len(failures["equilibrium"]) == 2
    assert set(failures["equilibrium"][0]) == set(COMMON_COLUMNS)
    page = write_html(
        tmp_path, {}, [], {}, {"ev": [{"potential": "<p>", "structure_id": "x", "error": "a<b"}]}, "t"
    )
    text = page.read_text()
    assert (
        "<td>&lt;p&gt;</td>" in text
        and "a&lt;b" in text
        and "<p>" not in text.split("<body>")[1].split("</h1>")[0]
    )


def test_report_is_reproducible(tmp_path: Path, report: dict[str, Any]) -> None:
    again = write_report(report["rows"], COLUMNS, report["metrics"], tmp_path, title="bench <run> & co")
    first = report["folder"]
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        assert path.read_bytes() == (first / path.relative_to(tmp_path)).read_bytes(), path
    assert again["html"].exists()


# ---- over iterations ------------------------------------------------------------------------------------------
def test_iteration_report(tmp_path: Path, data: dict[str, Any]) -> None:
    per_iteration: dict[int, dict[str, dict[str, dict[str, float]]]] = {}
    for it in range(3):
        per_iteration[it] = {
            bench: {
                f"member-{m}": {
                    k: v * (1 - 0.2 * it) + 0.01 * m for k, v in by_potential[POTENTIALS[m]].items()
                }
                for m in range(2)
            }
            for bench, by_potential in data["metrics"].items()
        }
    paths = write_iteration_report(per_iteration, tmp_path)
    assert _is_png(paths["png"])
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["iteration"], r["potential"]) for r in rows] == [
        (str(it), f"member-{m}") for it in range(3) for m in range(2)
    ]
    value = per_iteration[2]["forces"]["member-1"]["force_mae"]
    assert float(rows[5]["forces: force MAE (meV/A)"]) == pytest.approx(1000 * value)
    tables = _markdown_tables(paths["md"].read_text())
    assert set(tables) == {"equilibrium", "forces", "ev", "md"}
    header, *body = tables["forces"]
    assert header[:2] == ["iteration", "potential"] and len(body) == 6
    assert body[5][header.index("force MAE (meV/A)")] == f"{1000 * value:.1f}"


def test_iteration_report_without_metrics(tmp_path: Path) -> None:
    paths = write_iteration_report({}, tmp_path)
    assert "png" not in paths
    assert "No benchmark metrics" in paths["md"].read_text()
    assert paths["csv"].read_text().strip() == "iteration,potential"
    # Metrics with no headline drawn over iterations: tables, no figure.
    paths = write_iteration_report({0: {"custom": {"a": {"score": 1.0}}}}, tmp_path)
    assert "png" not in paths and "score" in paths["md"].read_text()
