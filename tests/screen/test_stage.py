from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import aloe.screen.stage as stage
from aloe.data.candidates import chunk_files, read_chunk
from aloe.errors import AloeError
from aloe.generate.settings import GenerateSettings
from aloe.generate.stage import generate
from aloe.screen.settings import ScreenSettings
from aloe.screen.stage import read_metrics, screen

COMMITTEE = [
    "lj(sigma=2.3,epsilon=0.05,rc=6.0)",
    "lj(sigma=2.35,epsilon=0.05,rc=6.0)",
    "lj(sigma=2.3,epsilon=0.06,rc=6.0)",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def gen_run(proto_dir, tmp_path):
    settings = GenerateSettings.model_validate(
        {
            "prototypes": {"source": str(proto_dir)},
            "elements": ["Al", "Cu", "Ag"],
            "chunk_size": 8,
            "output": str(tmp_path / "gen"),
            "subsampling": {"enabled": False},
        }
    )
    generate(settings)
    return tmp_path / "gen"


def screen_settings(inp, out, **kw) -> ScreenSettings:
    data = {"input": str(inp), "committee": COMMITTEE, "output": str(out), "batch_size": 5}
    data.update(kw)
    return ScreenSettings.model_validate(data)


def metrics_of(run) -> pa.Table:
    return read_metrics(run).sort_by("index")


def test_screen_generate_run(gen_run, tmp_path):
    result = screen(screen_settings(gen_run, tmp_path / "scr"))
    run = result.run_dir
    table = metrics_of(run)
    n_inputs = sum(read_chunk(f).table.num_rows for f in chunk_files(gen_run))
    assert table.num_rows == n_inputs == result.counts["structures"]
    outcomes = table.column("outcome").to_pylist()
    assert set(outcomes) <= {"selected", "rejected", "discarded", "failed", "overlap"}
    assert sum(result.counts["outcomes"].values()) == n_inputs
    selected_rows = pa.concat_tables([pq.read_table(f) for f in sorted((run / "selected").glob("*.parquet"))])
    assert sorted(selected_rows.column("index").to_pylist()) == sorted(
        i for i, o in zip(table.column("index").to_pylist(), outcomes, strict=True) if o == "selected"
    )
    # thresholds in the table are the base thresholds times the factor
    factor = np.array(table.column("factor").to_pylist())
    assert np.allclose(table.column("energy_threshold").to_numpy(), 0.1 * factor)
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["counts"]["committee"] == COMMITTEE
    assert set(summary["counts"]["elements"]) == {"Al", "Cu", "Ag"}
    assert (run / "plots" / "disagreements.png").stat().st_size > 10_000
    refs = yaml.safe_load((run / "references.yaml").read_text())
    assert set(refs) == set(COMMITTEE) and set(refs[COMMITTEE[0]]) == {"Al", "Cu", "Ag"}
    assert (run / "selection_by_element.csv").read_text().startswith("element,evaluated,selected,rate")


def test_metrics_match_a_by_hand_committee_loop(gen_run, tmp_path):
    """The reference code's per-structure loop (ASE calculators, numpy per pair) gives the same numbers."""
    from itertools import combinations

    from ase.calculators.lj import LennardJones

    run = screen(screen_settings(gen_run, tmp_path / "scr")).run_dir
    table = metrics_of(run)
    refs = yaml.safe_load((run / "references.yaml").read_text())
    calcs = [
        LennardJones(sigma=2.3, epsilon=0.05, rc=6.0),
        LennardJones(sigma=2.35, epsilon=0.05, rc=6.0),
        LennardJones(sigma=2.3, epsilon=0.06, rc=6.0),
    ]
    rows = {r["index"]: r for r in table.to_pylist()}
    checked = 0
    for path in chunk_files(gen_run):
        cand = read_chunk(path)
        for r in range(len(cand)):
            atoms = cand.to_atoms(r)
            row = rows[int(cand.index[r])]
            if row["outcome"] in ("overlap", "failed"):
                continue
            e, f, s = [], [], []
            for name, calc in zip(COMMITTEE, calcs, strict=True):
                atoms.calc = calc
                ref = sum(refs[name][sym] for sym in atoms.get_chemical_symbols())
                e.append((atoms.get_potential_energy() - ref) / len(atoms))
                f.append(atoms.get_forces())
                s.append(atoms.get_stress())
            e_dis = np.std(e)
            f_dis = np.mean([np.sqrt(np.mean(np.sum((a - b) ** 2, axis=1))) for a, b in combinations(f, 2)])
            s_dis = np.mean([np.linalg.norm(a - b) for a, b in combinations(s, 2)])
            assert row["energy_disagreement"] == pytest.approx(e_dis, rel=1e-9, abs=1e-12)
            assert row["force_disagreement"] == pytest.approx(f_dis, rel=1e-9, abs=1e-12)
            assert row["stress_disagreement"] == pytest.approx(s_dis, rel=1e-9, abs=1e-12)
            limit = 0.1 * np.sqrt(len(atoms) / 2)
            med_e = np.median(e)
            med_f = np.median([np.linalg.norm(x, axis=1).max() for x in f])
            med_s = np.median([abs(np.mean(x[:3])) for x in s])
            if med_e > 0.25 or med_f > 50 or med_s > 0.5:
                expected = "discarded"
            elif e_dis > limit or f_dis > limit or s_dis > limit:
                expected = "selected"
            else:
                expected = "rejected"
            assert row["outcome"] == expected, (row["id"], row["reason"])
            checked += 1
    assert checked >= 10


def test_interrupted_screen_resumes_to_the_same_result(gen_run, tmp_path, monkeypatch):
    screen(screen_settings(gen_run, tmp_path / "straight"))
    real = stage._run_chunk
    calls = {"n": 0}

    def dying(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(stage, "_run_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        screen(screen_settings(gen_run, tmp_path / "resumed"))
    monkeypatch.setattr(stage, "_run_chunk", real)
    assert len(list((tmp_path / "resumed" / "metrics").glob("*.parquet"))) == 2
    result = screen(screen_settings(gen_run, tmp_path / "resumed"))
    assert result.counts["chunks_resumed"] == 2
    a, b = metrics_of(tmp_path / "straight"), metrics_of(tmp_path / "resumed")
    for name in (
        "index",
        "outcome",
        "reason",
        "energy_disagreement",
        "force_disagreement",
        "stress_disagreement",
    ):
        assert a.column(name).to_pylist() == b.column(name).to_pylist(), name


def test_structure_file_input_and_overlap_and_failures(tmp_path):
    from ase.build import bulk
    from ase.io import write

    good = [bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Al", "fcc", a=4.05) * (2, 1, 1)]
    bad = bulk("Cu", "fcc", a=3.6, cubic=True)
    bad.positions[1] = bad.positions[0] + [0.1, 0, 0]  # overlapping atoms
    write(tmp_path / "in.extxyz", [*good, bad])
    settings = screen_settings(
        tmp_path / "in.extxyz",
        tmp_path / "scr",
        committee=[*COMMITTEE[:2], "tests.screen.helpers:FailsOnAluminium"],
        references=str(_write_refs(tmp_path)),
        compute_references=False,
        chunk_size=2,
    )
    result = screen(settings)
    table = metrics_of(result.run_dir)
    outcomes = table.column("outcome").to_pylist()
    assert outcomes[0] in {"selected", "rejected", "discarded"} and outcomes[1:] == ["failed", "overlap"]
    reason = table.column("reason").to_pylist()
    assert "raised RuntimeError: no aluminium" in reason[1]
    assert "apart" in reason[2]
    assert table.column("id").to_pylist()[0] == "in.extxyz:0"
    assert len(list((result.run_dir / "inputs").glob("chunk-*.parquet"))) == 2


def _write_refs(tmp_path):
    path = tmp_path / "refs.yaml"
    path.write_text(yaml.safe_dump({"Cu": -0.3, "Al": -0.3}))
    return path


def test_bad_inputs(tmp_path):
    with pytest.raises(AloeError, match="needs an input"):
        screen(ScreenSettings(committee=COMMITTEE))
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"structure": 1}\nnot json\n')
    with pytest.raises(AloeError, match=r"docs.jsonl: line 1: 'structure' is not a pymatgen structure"):
        screen(screen_settings(bad, tmp_path / "s1"))
    bad.write_text('{"energy": 1}\n')
    with pytest.raises(AloeError, match="line 1: document has no 'structure' key"):
        screen(screen_settings(bad, tmp_path / "s2"))


def test_parallel_references_and_workers_match_serial(gen_run, tmp_path, monkeypatch):
    serial = screen(screen_settings(gen_run, tmp_path / "serial"))
    # a fresh cache: the references are computed again, now by two worker processes
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache2"))
    parallel = screen(screen_settings(gen_run, tmp_path / "parallel", workers=2, executor="process"))
    assert len(list((tmp_path / "cache2" / "references").glob("*.json"))) == len(COMMITTEE)
    a = yaml.safe_load((serial.run_dir / "references.yaml").read_text())
    b = yaml.safe_load((parallel.run_dir / "references.yaml").read_text())
    for model in a:
        for element in a[model]:
            assert b[model][element] == pytest.approx(a[model][element], abs=1e-6)
    ta, tb = metrics_of(serial.run_dir), metrics_of(parallel.run_dir)
    assert ta.column("outcome").to_pylist() == tb.column("outcome").to_pylist()


def test_chgnet_committee_screens_generated_candidates(tmp_path):
    """The offline CHGNet trio end to end on a handful of small candidates (references from a table)."""
    settings = GenerateSettings.model_validate(
        {
            "prototypes": {"source": "builtin:binary"},
            "elements": ["Si", "O", "Fe"],
            "sample": 6,
            "output": str(tmp_path / "gen"),
        }
    )
    generate(settings)
    refs = tmp_path / "refs.yaml"
    refs.write_text(yaml.safe_dump({"Si": -5.3, "O": -4.8, "Fe": -8.3}))
    result = screen(
        ScreenSettings.model_validate(
            {
                "input": str(tmp_path / "gen"),
                "references": str(refs),
                "compute_references": False,
                "output": str(tmp_path / "scr"),
            }
        )
    )
    assert result.counts["committee"] == ["chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan"]
    table = metrics_of(result.run_dir)
    assert table.num_rows == 6
    evaluated = [r for r in table.to_pylist() if r["outcome"] in ("selected", "rejected", "discarded")]
    assert evaluated, table.column("reason").to_pylist()
    for row in evaluated:
        assert np.isfinite(row["energy_disagreement"]) and np.isfinite(row["force_disagreement"])
        assert len(row["energy"]) == 3 and all(np.isfinite(row["energy"]))
