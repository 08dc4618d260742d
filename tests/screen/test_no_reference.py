"""An element that a committee member has no reference for fails only the structures that contain it."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.data import atomic_numbers
from ase.io import write

from aloe.errors import AloeError
from aloe.screen.settings import ScreenSettings
from aloe.screen.stage import read_metrics, screen

LJ = ["lj(sigma=2.3,epsilon=0.05,rc=6.0)", "lj(sigma=2.35,epsilon=0.05,rc=6.0)"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))


def _inputs(tmp_path, other: str, a: float):
    """Two Cu cells, one cell of ``other``, one Cu-``other`` cell (rows 0-3)."""
    mixed = bulk("Cu", "fcc", a=3.7, cubic=True)
    mixed.numbers[1] = mixed.numbers[2] = atomic_numbers[other]
    frames = [
        bulk("Cu", "fcc", a=3.6, cubic=True),
        bulk(other, "fcc", a=a),
        bulk("Cu", "bcc", a=2.9) * (2, 1, 1),
        mixed,
    ]
    path = tmp_path / "in.extxyz"
    write(path, frames)
    return path


def _rows(run):
    table = read_metrics(run).sort_by("index")
    return table.column("outcome").to_pylist(), table.column("reason").to_pylist(), table


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_element_a_member_cannot_handle_fails_only_its_structures(tmp_path, workers):
    committee = [*LJ, "tests.screen.helpers:FailsOnAluminium"]
    settings = ScreenSettings.model_validate(
        {
            "input": str(_inputs(tmp_path, "Al", 4.05)),
            "committee": committee,
            "output": str(tmp_path / "scr"),
            "workers": workers,
            "executor": "process" if workers > 1 else "local",
        }
    )
    result = screen(settings)
    outcomes, reasons, table = _rows(result.run_dir)
    assert outcomes[1] == outcomes[3] == "failed"
    for r in (1, 3):
        assert reasons[r].startswith("no fails-on-al reference for Al: every form: ")
        assert "no aluminium" in reasons[r]
        assert np.isnan(table.column("energy_disagreement")[r].as_py())
    # The Cu structures are screened as if Al had not been there: the same metrics as a run without it.
    assert outcomes[0] in {"selected", "rejected", "discarded"}
    assert outcomes[2] in {"selected", "rejected", "discarded"}
    assert all(np.isfinite(table.column("force_disagreement")[r].as_py()) for r in (0, 2))
    summary = yaml.safe_load((result.run_dir / "summary.yaml").read_text())
    assert set(summary["counts"]["elements_without_reference"]) == {"Al"}
    refs = yaml.safe_load((result.run_dir / "references.yaml").read_text())
    assert all(set(member) == {"Cu"} for member in refs.values())

    alone = tmp_path / "cu.extxyz"
    write(alone, [bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Cu", "bcc", a=2.9) * (2, 1, 1)])
    only_cu = screen(settings.model_copy(update={"input": alone, "output": tmp_path / "cu", "workers": 1}))
    cu_outcomes, _, cu_table = _rows(only_cu.run_dir)
    assert [outcomes[0], outcomes[2]] == cu_outcomes
    for name in ("energy_disagreement", "force_disagreement", "stress_disagreement"):
        got = [table.column(name)[r].as_py() for r in (0, 2)]
        assert got == pytest.approx(cu_table.column(name).to_pylist(), rel=1e-12), name


def test_element_missing_from_the_table_fails_its_structures(tmp_path):
    table = tmp_path / "refs.yaml"
    table.write_text("Cu: -0.3\n")
    settings = ScreenSettings.model_validate(
        {
            "input": str(_inputs(tmp_path, "Ag", 4.1)),
            "committee": LJ,
            "references": str(table),
            "compute_references": False,
            "output": str(tmp_path / "scr"),
        }
    )
    outcomes, reasons, _ = _rows(screen(settings).run_dir)
    assert outcomes[1] == outcomes[3] == "failed"
    assert reasons[1] == (
        f"no {LJ[0]} reference for Ag: not in the table or the cache, and computing references is off"
    )
    assert outcomes[0] in {"selected", "rejected", "discarded"}


def test_resolve_references_without_failed_still_raises(tmp_path):
    from aloe.screen.stage import load_screen_committee, resolve_references

    settings = ScreenSettings.model_validate({"committee": LJ, "compute_references": False})
    with pytest.raises(AloeError, match=f"no {LJ[0].replace('(', '.').replace(')', '.')} reference for Cu"):
        resolve_references(load_screen_committee(settings), ["Cu"], settings)


def test_chgnet_cannot_handle_americium(tmp_path):
    """CHGNet embeds Z = 1..94; Am (95) raises IndexError inside the model. Only the Am structures fail."""
    pytest.importorskip("chgnet")
    table = tmp_path / "refs.yaml"
    table.write_text("Cu: -3.7\n")  # Cu from a table, so only Am's (failing) references are computed
    settings = ScreenSettings.model_validate(
        {
            "input": str(_inputs(tmp_path, "Am", 4.9)),
            "committee": ["chgnet-0.3.0", "chgnet-r2scan"],
            "references": str(table),
            "output": str(tmp_path / "scr"),
        }
    )
    outcomes, reasons, table = _rows(screen(settings).run_dir)
    assert outcomes[1] == outcomes[3] == "failed"
    assert reasons[1].startswith("no chgnet-0.3.0 reference for Am: every form: ")
    assert "IndexError" in reasons[1]
    assert outcomes[0] in {"selected", "rejected", "discarded"}
    assert outcomes[2] in {"selected", "rejected", "discarded"}
    assert len(table.column("energy")[0].as_py()) == 2
