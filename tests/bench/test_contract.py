"""The benchmark contract (aloe.bench.testing.validate_benchmark): the four benchmarks pass it, and each check fails,
alone, on a benchmark broken in the way that check is there to catch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest

from aloe.bench.base import COMMON_COLUMNS, failure_row, ok_rows
from aloe.bench.ev import EVScan
from aloe.bench.forces import ForceParity
from aloe.bench.registry import BENCHMARKS
from aloe.bench.testing import (
    CHECKS,
    BenchmarkContractError,
    BenchmarkReport,
    default_reference_set,
    untreatable_structures,
    validate_benchmark,
)
from aloe.errors import AloeError
from aloe.potentials.ase_calculator import EMTPotential


def _failed(report: BenchmarkReport) -> list[str]:
    return [c.name for c in report.failed]


def _has_ti(structure) -> bool:
    return "Ti" in structure.atoms.get_chemical_symbols()


# ---- benchmarks that pass ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", list(BENCHMARKS.values()), ids=list(BENCHMARKS))
def test_builtin_benchmark_passes(cls):
    report = validate_benchmark(cls)
    assert report.ok, str(report)
    assert [c.name for c in report.checks] == list(CHECKS)
    # the good structures and the ones it cannot treat, interleaved
    assert report.structures[:2] == (
        "cu-fcc-1",
        "al-fcc-4~no-labels" if cls.needs != "nothing" else "al-fcc-4~Ti",
    )


def test_given_structures_pass():
    good = default_reference_set().structures[1:]  # no atom energies needed: the forces benchmark
    report = validate_benchmark(ForceParity, structures=good)
    assert report.ok, str(report)
    assert "cu-fcc-1" not in report.structures


def test_untreatable_structures_follow_the_needs():
    source = default_reference_set().structures[1]
    assert [s.id for s, _ in untreatable_structures(source, "forces")] == [
        "al-fcc-4~no-labels",
        "al-fcc-4~Ti",
        "al-fcc-4~flat-cell",
    ]
    assert [s.id for s, _ in untreatable_structures(source, "nothing", element=None)] == [
        "al-fcc-4~flat-cell"
    ]
    unlabelled = untreatable_structures(source, "energy")[0][0]
    assert unlabelled.energy is None and unlabelled.forces is None
    assert source.energy is not None  # the source is untouched
    flat = untreatable_structures(source)[-1][0]
    assert abs(flat.atoms.cell.volume) < 1e-9


def test_arguments_are_checked():
    with pytest.raises(AloeError, match="Benchmark subclass"):
        validate_benchmark(dict)  # type: ignore[arg-type]
    with pytest.raises(AloeError, match="at least one good structure"):
        validate_benchmark(ForceParity, structures=[])
    twice = default_reference_set().structures[:1] * 2
    with pytest.raises(AloeError, match="unique ids"):
        validate_benchmark(ForceParity, structures=twice)


# ---- the report ----------------------------------------------------------------------------------------------
class _BatchDependent(ForceParity):
    """Forces whose MAE grows by 1 meV/A per other structure of the batch."""

    def calc_many(self, structures, done=None):
        rows = super().calc_many(structures, done)
        for row in ok_rows(rows):
            row["force_mae"] += 1e-3 * (len(structures) - 1)
        return rows


def test_report_lists_and_raises_every_failed_check():
    report = validate_benchmark(_BatchDependent)
    assert _failed(report) == ["batch-invariance"], str(report)
    assert report.check("batch-invariance") is report.failed[0]
    with pytest.raises(KeyError):
        report.check("no such check")
    lines = str(report).splitlines()
    assert len(lines) == 1 + len(CHECKS)
    assert lines[0].startswith("_BatchDependent (forces) with emt: 4/5 checks passed on cu-fcc-1")
    assert [line.split()[0] for line in lines[1:]] == ["ok", "ok", "ok", "ok", "FAILED"]
    with pytest.raises(BenchmarkContractError, match=r"breaks .*\n.*FAILED  batch-invariance: ") as info:
        report.raise_if_failed()
    assert isinstance(info.value, AssertionError)
    validate_benchmark(ForceParity).raise_if_failed()  # passes quietly


def test_batch_dependence_fails_the_batch_invariance_check():
    detail = validate_benchmark(_BatchDependent).check("batch-invariance").detail
    assert "force_mae differ by 0.005" in detail  # 6 structures in the mixed set
    assert validate_benchmark(_BatchDependent, tolerance=1e-2).ok  # within a tolerance it passes


# ---- broken benchmarks: each fails exactly its check ----------------------------------------------------------
class _RaisesOnTi(ForceParity):
    """calc_many lets one structure's failure escape."""

    def calc_many(self, structures, done=None):
        if any(_has_ti(s) for s in structures):
            raise RuntimeError("no Ti here")
        return super().calc_many(structures, done)


class _TreatsMissingLabelsAsZero(ForceParity):
    """A structure without reference forces is compared with zero forces instead of failing."""

    def calc_many(self, structures, done=None):
        zeros = [
            s if s.forces is not None else replace(s, forces=np.zeros((s.n_atoms, 3))) for s in structures
        ]
        return super().calc_many(zeros, done)


class _DoneTwice(ForceParity):
    """Reports every row twice to ``done``."""

    def calc_many(self, structures, done=None):
        rows = super().calc_many(structures, done)
        if done is not None:
            for index, row in enumerate(rows):
                done(index, row)
        return rows


class _Reversed(ForceParity):
    """Returns the rows in reverse order."""

    def calc_many(self, structures, done=None):
        return super().calc_many(structures, done)[::-1]


@pytest.mark.parametrize(
    ("cls", "says"),
    [
        (_RaisesOnTi, "calc_many raised RuntimeError: no Ti here"),
        (_TreatsMissingLabelsAsZero, "al-fcc-4~no-labels (no reference forces) has no error"),
        (_DoneTwice, "done called more than once for indices [0, 1, 2, 3, 4, 5]"),
        (_Reversed, "(out of order)"),
    ],
    ids=["raises", "no-error", "done-twice", "reversed"],
)
def test_broken_calc_many_fails_the_never_raises_check(cls, says):
    report = validate_benchmark(cls)
    assert _failed(report) == ["never-raises"], str(report)
    assert says in report.check("never-raises").detail


class _UndocumentedColumn(ForceParity):
    def calc_many(self, structures, done=None):
        rows = super().calc_many(structures, done)
        for row in ok_rows(rows):
            row["max_force"] = 1.0
        return rows


class _CarriesPotential(ForceParity):
    def calc_many(self, structures, done=None):
        rows = super().calc_many(structures, done)
        for row in rows:
            row["potential"] = "emt"
        return rows


class _BlankDescription(ForceParity):
    COLUMNS: ClassVar[dict[str, str]] = {**ForceParity.COLUMNS, "force_mae": ""}


class _FailedRowsWithColumns(ForceParity):
    def calc_many(self, structures, done=None):
        rows = super().calc_many(structures, done)
        for row in rows:
            if row.get("error"):
                row["force_mae"] = None
        return rows


@pytest.mark.parametrize(
    ("cls", "says"),
    [
        (_UndocumentedColumn, "undocumented column max_force (in 6 rows)"),
        (_CarriesPotential, "rows carry 'potential'"),
        (_BlankDescription, "COLUMNS without a description: force_mae"),
        (_FailedRowsWithColumns, "failed rows hold benchmark column force_mae"),
    ],
    ids=["undocumented", "potential", "blank-description", "failed-row-columns"],
)
def test_undocumented_columns_fail_the_columns_check(cls, says):
    report = validate_benchmark(cls)
    assert _failed(report) == ["columns"], str(report)
    assert says in report.check("columns").detail


class _AggregateFailsOnEmpty(ForceParity):
    @classmethod
    def aggregate(cls, rows):
        good = ok_rows(rows)
        mae = sum(r["force_mae"] for r in good) / len(good)  # ZeroDivisionError for []
        return {"n": len(rows), "n_failed": len(rows) - len(good), "force_mae_mean": mae}


class _NumpyMetrics(ForceParity):
    @classmethod
    def aggregate(cls, rows):
        return {k: np.float64(v) if isinstance(v, float) else v for k, v in super().aggregate(rows).items()}


class _MiscountsFailures(ForceParity):
    @classmethod
    def aggregate(cls, rows):
        return {**super().aggregate(rows), "n_failed": 0}


@pytest.mark.parametrize(
    ("cls", "says"),
    [
        (_AggregateFailsOnEmpty, "aggregate([]) raised ZeroDivisionError"),
        (_NumpyMetrics, "metrics that are not plain Python: force_mae (numpy.float64)"),
        (_MiscountsFailures, "n_failed is 0 (int), not 3"),
    ],
    ids=["empty", "numpy", "miscounts"],
)
def test_broken_aggregate_fails_the_aggregate_check(cls, says):
    report = validate_benchmark(cls)
    assert _failed(report) == ["aggregate"], str(report)
    assert says in report.check("aggregate").detail


class _ArrayInRow(ForceParity):
    def calc_many(self, structures, done=None):
        rows = super().calc_many(structures, done)
        for row in ok_rows(rows):
            row["forces_pred"] = np.asarray(row["forces_pred"], dtype=float)
        return rows


class _NumpyScalarInRow(ForceParity):
    def calc_many(self, structures, done=None):
        rows = super().calc_many(structures, done)
        for row in rows:
            row["n_atoms"] = np.int64(row["n_atoms"])
        return rows


@pytest.mark.parametrize(
    ("cls", "says"),
    [(_ArrayInRow, ".forces_pred: numpy.ndarray"), (_NumpyScalarInRow, ".n_atoms: numpy.int64")],
    ids=["array", "scalar"],
)
def test_numpy_values_fail_the_plain_rows_check(cls, says):
    report = validate_benchmark(cls)
    assert _failed(report) == ["plain-rows"], str(report)
    assert says in report.check("plain-rows").detail


# ---- checks that cannot judge their input fail instead of passing ----------------------------------------------
class _AlwaysRaises(ForceParity):
    def calc_many(self, structures, done=None):
        if structures:
            raise RuntimeError("broken")
        return []


def test_a_benchmark_that_gives_no_rows_fails_every_check():
    report = validate_benchmark(_AlwaysRaises)  # the validation itself does not raise
    assert _failed(report) == list(CHECKS), str(report)


def test_without_an_unsupported_element_a_universal_potential_passes():
    # Lennard-Jones knows every element: the Ti structure succeeds, so it is left out
    report = validate_benchmark(EVScan, "lj", unsupported_element=None)
    assert report.ok, str(report)
    assert not any("~Ti" in s for s in report.structures)
    assert _failed(validate_benchmark(EVScan, "lj")) == ["never-raises"]


def test_rows_hold_the_common_columns():
    # the contract's notion of the common columns is the base module's, less the stage's 'potential'
    row = failure_row(default_reference_set().structures[0], "why")
    assert set(row) == set(COMMON_COLUMNS) - {"potential"}


class _RaisesForTheBatch(EMTPotential):
    """EMT behind a wrapper that raises for a whole batch holding Ti (as a model without the base loop may)."""

    def predict(self, batch, shared=None):
        if (batch.numbers == 22).any():
            raise KeyError("Ti is not one of the model's elements")
        return super().predict(batch, shared)

    predict_energies = predict


@pytest.mark.parametrize("cls", list(BENCHMARKS.values()), ids=list(BENCHMARKS))
def test_a_potential_that_raises_for_a_batch_fails_one_structure_only(cls):
    report = validate_benchmark(cls, _RaisesForTheBatch())
    assert report.ok, str(report)
