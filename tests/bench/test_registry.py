"""One home for each piece of bench knowledge: the table of benchmarks, the per-structure seed, the long metrics."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet
import pytest

from aloe import layout
from aloe.bench import equilibrium, md
from aloe.bench.base import Benchmark, Headline, structure_seed
from aloe.bench.registry import BENCHMARK_NAMES, BENCHMARKS, benchmark_class, report_order, run_order
from aloe.bench.report import HEADLINES
from aloe.bench.report.tables import metrics_rows, nested_metrics, write_metrics_table
from aloe.bench.settings import BenchSettings
from aloe.errors import AloeError
from aloe.runs import plain_data, slug


def test_the_table_is_the_one_list_of_benchmarks():
    assert BENCHMARK_NAMES == ("equilibrium", "forces", "ev", "md")  # the paper's Figs. 3-6, report order
    fields = BenchSettings.model_fields
    for name, cls in BENCHMARKS.items():
        assert issubclass(cls, Benchmark) and cls.name == name
        # its settings section, its headlines and its figures come from the class
        assert fields[name].annotation is cls.settings_model
        assert HEADLINES[name] == list(cls.HEADLINES)
        assert [h.keys for h in cls.HEADLINES[:2]] == [("n",), ("n_failed",)]
        assert all(isinstance(h, Headline) for h in cls.HEADLINES)
        assert cls.FIGURES is not None
        # what a study judges the benchmark by: headlines with a direction
        heads = {h.key: h for h in cls.HEADLINES}
        assert cls.VERDICT and all(heads[k].better in ("lower", "higher") for k in cls.VERDICT)
    assert BenchSettings(potentials=["emt"], suite="all", structures="x").suite == list(BENCHMARK_NAMES)
    assert run_order(list(BENCHMARK_NAMES)) == ["ev", "forces", "equilibrium", "md"]  # cheap ones first
    assert report_order(["md", "custom", "ev"]) == ["ev", "md", "custom"]
    with pytest.raises(AloeError, match="unknown benchmark 'phonons'"):
        benchmark_class("phonons")
    needing = [n for n, c in BENCHMARKS.items() if c.needs_reference]
    assert needing == ["equilibrium", "forces"]


def test_the_per_structure_seed_is_one_function_of_63_bits():
    """Pinned: a change would move every equilibrium displacement and MD start of every existing run."""
    assert equilibrium.structure_seed is md.structure_seed is structure_seed
    assert structure_seed(0, "Cu-fcc") == 5880008416062501332
    assert structure_seed(7, "mixture-0") == 7179351599288079423
    seeds = [structure_seed(s, f"id-{k}") for s in range(3) for k in range(200)]
    assert all(0 <= x < 2**63 for x in seeds)  # fits a signed 64-bit Parquet column (MD rows record it)
    assert len(set(seeds)) == len(seeds)
    assert pa.array(seeds, type=pa.int64()).to_pylist() == seeds


def test_slug_and_plain_data_have_one_home():
    assert slug("mixture-0-Cu8 Al8/x") == "mixture-0-Cu8_Al8_x-59000684"  # bench checkpoint names keep theirs
    assert slug("a" * 80, 10).startswith("aaaaaaaaaa-") and slug("///").startswith("x-")
    assert slug("emt", 40, identity="other") != slug("emt", 40)
    data = {"a": np.arange(3.0), "b": (np.float32(1.5), float("nan")), 3: [np.int64(2)]}
    assert plain_data(data) == {"a": [0.0, 1.0, 2.0], "b": [1.5, None], "3": [2]}


def test_metrics_are_one_long_table(tmp_path):
    metrics = {
        "ev": {
            "m0": {"n": 3, "n_failed": 0, "failure_rate": 0.0},
            "m1": {"n": 3, "n_failed": 1, "failure_rate": 0.5},
        },
        "md": {"m1": {"n": 2, "n_failed": 0, "nvt_survival_auc": None, "note": "text is left out"}},
    }
    rows = metrics_rows(metrics, group="committee 1")
    assert {tuple(r) for r in rows} == {layout.METRICS_COLUMNS}
    assert len(rows) == 3 + 3 + 3  # the text metric is not a number
    assert {r["potential"]: r["member"] for r in rows} == {"m0": 0, "m1": 1}
    path = write_metrics_table(rows, tmp_path / layout.BENCH_METRICS_FILE)
    table = layout.bench_metrics(tmp_path)
    assert path.exists() and table.column_names == list(layout.METRICS_COLUMNS)
    assert (
        table.schema.field("value").type == pa.float64() and table.schema.field("member").type == pa.int64()
    )
    # the mean over members is a groupby
    mean = table.group_by(["benchmark", "metric"]).aggregate([("value", "mean")]).to_pylist()
    assert {(r["benchmark"], r["metric"]): r["value_mean"] for r in mean}[("ev", "failure_rate")] == 0.25
    back = nested_metrics(table.to_pylist())
    assert back["ev"]["m1"] == {"n": 3.0, "n_failed": 1.0, "failure_rate": 0.5}
    assert back["md"]["m1"]["nvt_survival_auc"] is None
    empty = write_metrics_table([], tmp_path / "empty.parquet")
    assert pa.parquet.read_table(empty).num_rows == 0
