from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from typer.testing import CliRunner

import aloe.label.registry as registry
import aloe.label.stage as stage
from aloe.data.formats import record_to_atoms
from aloe.data.records import EV_PER_A3_IN_KBAR, REQUIRED_KEYS
from aloe.errors import AloeError
from aloe.label.settings import LabelSettings
from aloe.label.stage import iter_records, label
from tests.label import helpers

METALS = [
    ("Cu", "fcc", 3.6),
    ("Al", "fcc", 4.05),
    ("Ag", "fcc", 4.1),
    ("Au", "fcc", 4.08),
    ("Fe", "bcc", 2.87),
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def structures(tmp_path):
    frames = []
    for i, (symbol, lattice, a) in enumerate(METALS):
        atoms = bulk(symbol, lattice, a=a, cubic=True)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    path = tmp_path / "in.extxyz"
    write(path, frames)
    return path, read(path, ":")  # as aloe reads them (extxyz keeps 8 decimals)


def settings_for(path, out, **kw) -> LabelSettings:
    data = {"input": str(path), "labeler": "emt", "output": str(out), "chunk_size": 2, "isolate": False}
    data.update(kw)
    return LabelSettings.model_validate(data)


def use_labeler(monkeypatch, cls):
    real = registry.load_labeler

    def load(settings):
        if settings.labeler == "emt":
            return cls(settings.emt)
        return real(settings)

    monkeypatch.setattr(registry, "load_labeler", load)
    monkeypatch.setattr(stage, "load_labeler", load)


def test_emt_records_follow_the_matpes_schema(structures, tmp_path):
    path, frames = structures
    result = label(settings_for(path, tmp_path / "run"))
    c = result.counts
    assert (c["structures"], c["labelled"], c["failed"]) == (5, 4, 1)
    assert c["failed_by_class"] == {"unsupported": 1}  # Fe: EMT has no parameters
    records = list(iter_records(result.run_dir))
    assert len(records) == 4
    isolated = yaml.safe_load((result.run_dir / "isolated_atoms.yaml").read_text())["energies"]
    assert set(isolated) == {"Cu", "Al", "Ag", "Au"}
    for record, atoms in zip(records, frames[:4], strict=True):
        assert all(key in record for key in REQUIRED_KEYS)
        assert record["functional"] == "EMT (stand-in, not DFT)"
        ref = atoms.copy()
        ref.calc = EMT()
        assert record["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(record["forces"], ref.get_forces(), atol=1e-10)
        # kbar, VASP sign (compressive positive) = -ASE stress x 1602.18
        np.testing.assert_allclose(record["stress"], -ref.get_stress() * EV_PER_A3_IN_KBAR, atol=1e-8)
        symbol = atoms.get_chemical_symbols()[0]
        expected = (record["energy"] - len(atoms) * isolated[symbol]) / len(atoms)
        assert record["cohesive_energy_per_atom"] == pytest.approx(expected)
        back = record_to_atoms(record, ref_keys=False)
        assert back.get_potential_energy() == pytest.approx(record["energy"])
        np.testing.assert_allclose(back.get_stress(), ref.get_stress(), atol=1e-12)
    failures = [
        json.loads(line) for f in sorted((result.run_dir / "failures").glob("*.jsonl")) for line in f.open()
    ]
    assert [f["kind"] for f in failures] == ["unsupported"]
    assert "Fe" in failures[0]["message"] and failures[0]["structure"]["sites"]
    summary = yaml.safe_load(result.summary_path.read_text())
    assert "stand-in" in summary["warning"]


def test_relaxation_steps_are_records_with_stable_ids(structures, tmp_path):
    path, _ = structures
    a = label(settings_for(path, tmp_path / "a", emt={"relax_steps": 2}))
    b = label(settings_for(path, tmp_path / "b", emt={"relax_steps": 2}))
    ra, rb = list(iter_records(a.run_dir)), list(iter_records(b.run_dir))
    assert len(ra) == 4 * 3
    assert [r["provenance"]["ionic_step"] for r in ra[:3]] == [0, 1, 2]
    assert [r["aloe_record_id"] for r in ra] == [r["aloe_record_id"] for r in rb]
    assert len({r["aloe_record_id"] for r in ra}) == len(ra)


def test_duplicate_input_structures_give_one_record(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    write(tmp_path / "dup.extxyz", [atoms, atoms.copy(), atoms.copy()])
    result = label(settings_for(tmp_path / "dup.extxyz", tmp_path / "run", chunk_size=10))
    assert result.counts["labelled"] == 3
    assert len(list(iter_records(result.run_dir))) == 1


def test_resume_after_a_kill_labels_only_the_rest(structures, tmp_path, monkeypatch):
    path, _ = structures
    clean = label(settings_for(path, tmp_path / "clean"))
    real = stage._label_task
    calls = {"n": 0}

    def dies_after_three(task):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(task)

    monkeypatch.setattr(stage, "_label_task", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        label(settings_for(path, tmp_path / "run"))
    monkeypatch.setattr(stage, "_label_task", real)
    resumed = label(settings_for(path, tmp_path / "run"))
    assert resumed.counts["labelled_now"] + resumed.counts["failed_now"] == 2
    assert resumed.counts["resumed"] is True
    assert [r["aloe_record_id"] for r in iter_records(resumed.run_dir)] == [
        r["aloe_record_id"] for r in iter_records(clean.run_dir)
    ]
    assert not any((resumed.run_dir / "done").iterdir())
    again = label(settings_for(path, tmp_path / "run"))
    assert again.counts["labelled_now"] == again.counts["failed_now"] == 0
    assert again.counts["labelled"] == 4


def test_scf_failure_is_retried_with_the_configured_overrides(structures, tmp_path, monkeypatch):
    path, _ = structures
    use_labeler(monkeypatch, helpers.FlakyEMT)
    retry = {"scf_unconverged": [{"emt.relax_steps": 1}]}
    result = label(settings_for(path, tmp_path / "run", retry=retry))
    assert result.counts["labelled"] == 4 and result.counts["succeeded_after_retry_now"] == 4
    record = next(iter_records(result.run_dir))
    assert record["calc"]["settings"] == {"relax_steps": 1}
    assert record["provenance"]["attempts"] == 2
    no_retry = label(settings_for(path, tmp_path / "run2", retry={}))
    assert no_retry.counts["failed_by_class"] == {"scf_unconverged": 4, "unsupported": 1}


def test_retry_failed_on_a_resumed_run(structures, tmp_path, monkeypatch):
    path, _ = structures
    use_labeler(monkeypatch, helpers.FlakyEMT)
    first = label(settings_for(path, tmp_path / "run", retry={}))
    assert first.counts["failed"] == 5
    monkeypatch.undo()
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))
    same = label(settings_for(path, tmp_path / "run"))
    assert same.counts["labelled_now"] == 0 and same.counts["failed"] == 5
    fixed = label(settings_for(path, tmp_path / "run", retry_failed=True))
    assert fixed.counts["labelled"] == 4 and fixed.counts["failed_by_class"] == {"unsupported": 1}
    assert len(list(iter_records(fixed.run_dir))) == 4


@pytest.mark.parametrize(
    ("cls", "kind", "bad", "extra"),
    [
        (helpers.NaNEMT, "unphysical", "Ag", {}),
        (helpers.HugeForceEMT, "unphysical", "Au", {}),
        (helpers.CrashingEMT, "crashed", "Al", {"isolate": True}),
        (helpers.SleepyEMT, "timeout", "Cu", {"isolate": True, "timeout": 3}),
    ],
    ids=["nan", "huge-force", "killed-process", "timeout"],
)
def test_failure_classes_never_stop_the_batch(structures, tmp_path, monkeypatch, cls, kind, bad, extra):
    path, _ = structures
    use_labeler(monkeypatch, cls)
    result = label(settings_for(path, tmp_path / "run", **extra))
    assert result.counts["failed_by_class"] == {kind: 1, "unsupported": 1}
    assert result.counts["labelled"] == 3
    failures = [
        json.loads(line) for f in sorted((result.run_dir / "failures").glob("*.jsonl")) for line in f.open()
    ]
    failure = next(f for f in failures if f["kind"] == kind)
    assert bad in {s["species"][0]["element"] for s in failure["structure"]["sites"]}
    # the work folder of the failed calculation is kept for inspection; successes leave none (and an
    # unsupported structure never got one)
    kept = sorted(p.name for p in (result.run_dir / "work").iterdir() if not p.name.startswith("atom-"))
    assert len(kept) == 1


def test_published_isolated_atoms_only_for_vasp(structures, tmp_path):
    path, _ = structures
    with pytest.raises(AloeError, match="published"):
        label(settings_for(path, tmp_path / "run", isolated_atoms="published"))


def test_settings_change_on_the_same_folder_is_refused_but_runtime_keys_are_not(structures, tmp_path):
    path, _ = structures
    label(settings_for(path, tmp_path / "run"))
    label(settings_for(path, tmp_path / "run", workers=1, timeout=100, gpaw={"threads": 2}))
    with pytest.raises(AloeError, match="other settings"):
        label(settings_for(path, tmp_path / "run", emt={"relax_steps": 1}))


def test_cli_label(structures, tmp_path):
    from aloe.cli.main import app

    path, _ = structures
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app, ["label", str(path), "--labeler", "emt", "-o", str(out), "--set", "isolate=false"]
    )
    assert result.exit_code == 0, result.output
    assert "labelled 4 of 5 structures (4 records); failed 1 (unsupported 1)" in result.output
    bad = CliRunner().invoke(app, ["label", str(path), "--labeler", "nonsense", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2
    assert "labeler" in bad.output
