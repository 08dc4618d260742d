"""The train stage: presets, splits, record conversion, a tiny MACE committee end to end, resume, errors.

The labelled data come from the real label stage with the EMT stand-in (no DFT): 48 rattled and strained
Cu/Al/Ag cells of 1-8 atoms, labelled in about a second.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from aloe.errors import AloeError
from aloe.settings import build_settings
from aloe.train.data import gather, member_split, read_extxyz
from aloe.train.settings import PRESETS, TrainSettings

EMT_FUNCTIONAL = "EMT (stand-in, not DFT)"


# ---- data --------------------------------------------------------------------------------------------------
def _structures(n: int = 48):
    from ase.build import bulk

    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        el = ["Cu", "Al", "Ag"][i % 3]
        atoms = bulk(el, "fcc", a={"Cu": 3.61, "Al": 4.05, "Ag": 4.09}[el], cubic=(i % 2 == 0))
        if i % 5 == 0:
            atoms = atoms.repeat((2, 1, 1))
        if i % 4 == 1 and len(atoms) > 1:
            atoms.symbols[0] = ["Cu", "Al", "Ag"][(i + 1) % 3]
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.04, 0.04)), scale_atoms=True)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A label run folder (records + isolated_atoms.yaml) made by aloe's label stage with EMT."""
    import ase.io

    from aloe.label.settings import LabelSettings
    from aloe.label.stage import label

    root = tmp_path_factory.mktemp("labelled")
    path = root / "structures.extxyz"
    ase.io.write(path, _structures())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALOE_CACHE_DIR", str(root / "cache"))
        result = label(
            LabelSettings(input=path, labeler="emt", isolate=False, output=root / "label", progress=False)
        )
    assert result.counts["records"] == 48
    return result.run_dir


def _settings(inputs, out, **kw) -> TrainSettings:
    data = {"inputs": [str(p) for p in inputs], "preset": "tiny", "output": str(out), "progress": False}
    data.update(kw)
    return TrainSettings.model_validate(data)


@pytest.fixture(scope="module")
def committee(labelled, tmp_path_factory):
    """Two tiny members (4 epochs), one after the other: ~15-30 s on 2 cores (mostly mace's start-up)."""
    from aloe.train.stage import train

    out = tmp_path_factory.mktemp("train") / "run"
    return train(_settings([labelled], out, committee_size=2, epochs=4))


# ---- presets and settings ----------------------------------------------------------------------------------
def test_mp0a_large_preset_is_exactly_design_md():
    from aloe.train.mace_args import format_args, validate_argv

    settings = TrainSettings()
    assert settings.preset == "mp0a-large" and settings.committee_size == 3
    assert settings.split == (0.90, 0.05, 0.05) and settings.e0s == "isolated_atoms"
    opts = settings.preset_options()
    design = {
        "r_max": 6.0,
        "num_channels": 128,
        "max_L": 2,
        "correlation": 3,
        "num_interactions": 2,
        "num_radial_basis": 10,
        "energy_weight": 1.0,
        "forces_weight": 10.0,
        "stress_weight": 100.0,
        "lr": 0.005,
        "batch_size": 16,
        "ema": True,
        "ema_decay": 0.995,
        "amsgrad": True,
    }
    assert {k: opts[k] for k in design} == design
    assert opts["compute_stress"] is True and opts["loss"] == "universal"
    argv = format_args({**opts, "name": "m"})
    for flag in ("--r_max=6.0", "--num_channels=128", "--max_L=2", "--correlation=3", "--num_interactions=2"):
        assert flag in argv
    assert "--ema" in argv and "--amsgrad" in argv and "--ema_decay=0.995" in argv
    # mace-torch's own parser reads them back as the same numbers
    ns = validate_argv(argv)
    assert (ns.r_max, ns.num_channels, ns.max_L, ns.correlation, ns.num_interactions) == (6.0, 128, 2, 3, 2)
    assert (ns.num_radial_basis, ns.lr, ns.batch_size, ns.ema, ns.ema_decay, ns.amsgrad) == (
        10,
        0.005,
        16,
        True,
        0.995,
        True,
    )
    assert (ns.energy_weight, ns.forces_weight, ns.stress_weight) == (1.0, 10.0, 100.0)
    # MP-ALOE trained for 100 epochs (not the MACE-MP-0 script's 200); patience stays a quarter of the run.
    assert opts["max_num_epochs"] == 100 and opts["patience"] == 25
    assert (ns.max_num_epochs, ns.patience) == (100, 25)


def test_mp0a_large_preset_keeps_the_mace_mp0_script_flags():
    # The remaining flags of ACEsuit/mace-mp mace_mp_0/2024-01-07-mace-128-L2.sh, as published.
    script = {
        "model": "ScaleShiftMACE",
        "interaction_first": "RealAgnosticResidualInteractionBlock",
        "interaction": "RealAgnosticResidualInteractionBlock",
        "max_ell": 3,
        "MLP_irreps": "16x0e",
        "scaling": "rms_forces_scaling",
        "loss": "universal",
        "compute_stress": True,
        "weight_decay": 1e-8,
        "scheduler_patience": 5,
        "valid_batch_size": 32,
        "clip_grad": 100.0,
    }
    opts = TrainSettings().preset_options()
    assert {k: opts[k] for k in script} == script


@pytest.mark.slow
def test_mp0a_large_preset_has_the_papers_parameter_count():
    """mace-torch's own model builder, given the preset for the 89 MP-ALOE elements: 5,725,072 parameters."""
    from aloe.elements import symbol_to_z, universe
    from aloe.train.mace_args import format_args, validate_argv

    ns = validate_argv(
        format_args({**TrainSettings().preset_options(), "name": "m"})
    )  # makes e3nn importable
    from mace.tools import check_args
    from mace.tools.model_script_utils import configure_model
    from mace.tools.utils import AtomicNumberTable

    args, _ = check_args(ns)
    # What run_train sets before building a plain energy/forces/stress model; mean/std skip the data statistics
    # (scale and shift are buffers, not parameters).
    args.compute_energy, args.compute_dipole, args.compute_polarizability = True, False, False
    args.mean, args.std = 0.0, 1.0
    zs = sorted(symbol_to_z(s) for s in universe())
    assert len(zs) == 89
    model, _ = configure_model(
        args, None, np.zeros((1, 89)), heads=["Default"], z_table=AtomicNumberTable(zs)
    )
    assert type(model).__name__ == "ScaleShiftMACE"
    assert sum(p.numel() for p in model.parameters()) == 5_725_072


def test_every_preset_parses_with_mace_and_overrides_apply():
    from aloe.train.mace_args import format_args, validate_argv

    for name in PRESETS:
        validate_argv(format_args({**TrainSettings(preset=name).preset_options(), "name": "m"}))
    s = TrainSettings(preset="tiny", epochs=3, mace_options={"num_channels": 8, "radial_MLP": None})
    opts = s.preset_options()
    assert opts["max_num_epochs"] == 3 and opts["num_channels"] == 8 and "radial_MLP" not in opts
    ns = validate_argv(format_args({**opts, "name": "m", "swa": True, "foundation_model_readout": False}))
    assert ns.swa is True and ns.foundation_model_readout is False
    with pytest.raises(AloeError, match="only has the flag --ema"):
        format_args({"ema": "yes"})


def test_settings_are_checked():
    with pytest.raises(AloeError, match="add up to 1"):
        build_settings(TrainSettings, overrides={"split": [0.8, 0.1, 0.05]})
    with pytest.raises(AloeError, match="'preset'"):
        build_settings(TrainSettings, overrides={"preset": "huge"})
    with pytest.raises(AloeError, match="needs a foundation_model"):
        build_settings(TrainSettings, overrides={"e0s": "foundation"})
    s = build_settings(TrainSettings, overrides={"e0s": {29: -0.5, "Al": -0.25}})
    assert s.e0s == {"Cu": -0.5, "Al": -0.25}
    with pytest.raises(AloeError, match="not an element"):
        build_settings(TrainSettings, overrides={"e0s": {"Xx": 1.0}})


# ---- splits ------------------------------------------------------------------------------------------------
def test_splits_are_90_5_5_differ_per_member_and_ignore_input_order():
    ids = [f"r{i:03d}" for i in range(100)]
    a0 = member_split(ids, (0.9, 0.05, 0.05), 7, 0)
    a1 = member_split(ids, (0.9, 0.05, 0.05), 7, 1)
    assert (len(a0.train), len(a0.valid), len(a0.test)) == (90, 5, 5) and not a0.rounded_up
    assert sorted(np.concatenate([a0.train, a0.valid, a0.test]).tolist()) == list(range(100))
    assert set(a0.test.tolist()) != set(a1.test.tolist())
    again = member_split(ids, (0.9, 0.05, 0.05), 7, 0)
    assert np.array_equal(again.test, a0.test) and np.array_equal(again.valid, a0.valid)
    shuffled = list(reversed(ids))
    b0 = member_split(shuffled, (0.9, 0.05, 0.05), 7, 0)
    assert {shuffled[i] for i in b0.test} == {ids[i] for i in a0.test}


def test_tiny_datasets_round_up_and_too_few_fail():
    s = member_split(["a", "b", "c", "d", "e"], (0.9, 0.05, 0.05), 0, 0)
    assert (len(s.train), len(s.valid), len(s.test)) == (3, 1, 1) and s.rounded_up
    s3 = member_split(["a", "b", "c"], (0.9, 0.05, 0.05), 0, 0)
    assert (len(s3.train), len(s3.valid), len(s3.test)) == (1, 1, 1)
    with pytest.raises(AloeError, match=r"at least 3 .* 20 for the 90/5/5 split"):
        member_split(["a", "b"], (0.9, 0.05, 0.05), 0, 0)


# ---- inputs and errors before training ---------------------------------------------------------------------
def test_records_become_mace_extxyz_in_ase_units(labelled, tmp_path):
    from ase.calculators.emt import EMT

    from aloe.train.data import write_extxyz

    data = gather([labelled])
    assert len(data.ids) == 48 and data.duplicates == 0 and data.elements == ["Al", "Cu", "Ag"]
    assert data.functionals == {EMT_FUNCTIONAL: 48}
    iso = yaml.safe_load((labelled / "isolated_atoms.yaml").read_text())["energies"]
    assert data.isolated == iso
    path = tmp_path / "part.xyz"
    write_extxyz(path, data.load_records(range(8)))
    frames = read_extxyz(path)
    assert [a.info["aloe_record_id"] for a in frames] == data.ids[:8]
    for atoms in frames:
        assert atoms.calc is None and atoms.pbc.all()
        ref = atoms.copy()
        ref.calc = EMT()
        assert atoms.info["REF_energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-9)
        assert np.allclose(atoms.arrays["REF_forces"], ref.get_forces(), atol=1e-9)
        # records hold kbar with VASP's sign; mace gets eV/A^3 with ASE's sign, Voigt xx yy zz yz xz xy
        assert np.allclose(atoms.info["REF_stress"], ref.get_stress(voigt=True), atol=1e-12)


def test_record_files_are_read_and_deduplicated(labelled, tmp_path):
    from aloe.train.stage import train

    lines = b"".join(p.read_bytes() for p in sorted((labelled / "records").glob("chunk-*.jsonl")))
    gz = tmp_path / "records.jsonl.gz"
    gz.write_bytes(gzip.compress(lines))
    data = gather([labelled, gz])
    assert len(data.ids) == 48 and data.duplicates == 48 and data.read == 96
    as_list = tmp_path / "records.json"
    as_list.write_text(json.dumps([json.loads(x) for x in lines.decode().splitlines() if x.strip()]))
    assert len(gather([as_list]).ids) == 48
    # record files carry no isolated-atom energies: the default e0s needs a label run (or average / a table)
    out = tmp_path / "run"
    with pytest.raises(AloeError, match=r"isolated_atoms\.yaml"):
        train(_settings([gz], out))
    assert not out.exists()


def test_clear_errors_before_any_training(labelled, tmp_path):
    from aloe.train.stage import train

    out = tmp_path / "run"
    with pytest.raises(AloeError, match="did you mean num_channels"):
        train(_settings([labelled], out, mace_options={"num_chanels": 8}))
    with pytest.raises(AloeError, match="train_file: set by aloe"):
        train(_settings([labelled], out, mace_options={"train_file": "x.xyz"}))
    with pytest.raises(AloeError, match="max_num_epochs: set by aloe; use the train setting epochs"):
        train(_settings([labelled], out, mace_options={"max_num_epochs": 3}))
    with pytest.raises(AloeError, match="no such file or folder"):
        train(_settings([tmp_path / "missing"], out))
    empty = tmp_path / "empty-label"
    (empty / "records").mkdir(parents=True)
    with pytest.raises(AloeError, match="no records found"):
        train(_settings([empty], out))
    with pytest.raises(AloeError, match="train needs inputs"):
        train(_settings([], out))
    two = tmp_path / "two.jsonl"
    first = next((labelled / "records").glob("chunk-*.jsonl")).read_text().splitlines()[:2]
    two.write_text("\n".join(first) + "\n")
    with pytest.raises(AloeError, match="2 structures cannot be split: training needs at least 3"):
        train(_settings([two], out, e0s="average"))
    with pytest.raises(AloeError, match=r"no isolated-atom energy \(E0\) for Ag"):
        train(_settings([labelled], out, e0s={"Cu": 1.0, "Al": 1.0}))
    with pytest.raises(AloeError, match=r"no such MACE \.model file"):
        train(_settings([labelled], out, foundation_model=str(tmp_path / "nope.model")))
    assert not out.exists()


# ---- a committee, end to end -------------------------------------------------------------------------------
def test_committee_models_load_and_predict(committee, labelled):
    from aloe.potentials.mace import MACEPotential
    from aloe.potentials.registry import load_committee
    from aloe.structures import StructureBatch

    assert committee.counts["trained_now"] == 2 and committee.counts["finished"] == 2
    models = sorted((committee.run_dir / "models").glob("*.model"))
    assert (
        [p.name for p in models]
        == ["member-0.model", "member-1.model"]
        == [p.name for p in committee.products["models"]]
    )
    batch = StructureBatch.from_atoms(_structures(6))
    energies = []
    for path in models:
        pred = MACEPotential(path, dtype="float64").predict(batch)
        assert pred.ok.all() and np.isfinite(pred.energy).all() and np.isfinite(pred.stress).all()
        energies.append(pred.energy)
    assert not np.allclose(energies[0], energies[1])  # different splits and seeds: different members
    # as `aloe screen -m 'run/models/*.model'` loads them
    members = load_committee(str(committee.run_dir / "models" / "*.model"))
    assert len(members) == 2


def test_each_member_has_its_own_recorded_split(committee):
    run = committee.run_dir
    all_ids = set(gather([Path(p) for p in committee_inputs(run)]).ids)
    splits = []
    for k in range(2):
        folder = run / "members" / f"member-{k}"
        split = json.loads((folder / "split.json").read_text())
        parts = [set(split[name]) for name in ("train", "valid", "test")]
        assert set.union(*parts) == all_ids and sum(len(p) for p in parts) == len(all_ids)
        assert (len(parts[0]), len(parts[1]), len(parts[2])) == (44, 2, 2)
        for name, ids in zip(("train", "valid", "test"), parts, strict=True):
            assert {a.info["aloe_record_id"] for a in read_extxyz(folder / f"{name}.xyz")} == ids
        splits.append(parts)
    assert splits[0][2] != splits[1][2] or splits[0][1] != splits[1][1]
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["counts"]["split"]["member-1"] == {"train": 44, "valid": 2, "test": 2}


def test_progress_says_what_mace_does_before_its_first_epoch_ends(committee, tmp_path):
    """The phases come from mace's own log lines: the log of a real training, cut after each one."""
    from aloe.train.stage import _last_epoch, _mace_phase

    text = (committee.run_dir / "members" / "member-0" / "train.log").read_text()
    expected = [
        ("Computing average number of neighbors", "neighbour statistics (a pass over the training data)"),
        ("===========MODEL DETAILS===========", "scale and shift (a pass over the training data)"),
        ("Building model", "building the model"),
        ("Initial:", "training the first epoch"),
    ]
    log = tmp_path / "train.log"
    assert _mace_phase(log) is None  # no log yet
    for marker, phase in expected:
        cut = text.index(marker)
        log.write_text(text[: text.index("\n", cut) + 1])
        assert _mace_phase(log) == phase, marker
        assert _last_epoch(log) is None
    log.write_text(text)
    assert _last_epoch(log) == 3  # 4 epochs: then the bar shows the epoch


def committee_inputs(run: Path) -> list[str]:
    return yaml.safe_load((run / "run.yaml").read_text())["settings"]["inputs"]


def test_errors_table_plots_and_summary(committee):
    run = committee.run_dir
    lines = (run / "errors.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "member" and "energy_mae_meV_per_atom" in header and "stress_rmse_GPa" in header
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    assert [r["member"] for r in rows] == ["member-0", "member-1", "mean"]
    for r in rows:
        for key in ("energy_mae_meV_per_atom", "forces_rmse_meV_per_A", "stress_mae_GPa"):
            assert np.isfinite(float(r[key])) and float(r[key]) >= 0
    for k in range(2):
        png = run / "plots" / f"parity-member-{k}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["verb"] == "train" and "stand-in" in summary["warning"]
    assert summary["trainer"]["entry_point"] == "python -m mace.cli.run_train"
    assert summary["test_errors"]["table"][0]["member"] == "member-0"
    # the error table comes from aloe's own prediction of the test set, which agrees with mace's own
    from aloe.train.stage import error_metrics, load_predictions

    arrays = load_predictions(run / "members" / "member-0" / "test_predictions.npz")
    assert error_metrics(arrays)["energy_mae"] == pytest.approx(
        float(rows[0]["energy_mae_meV_per_atom"]), 1e-5
    )
    log = (run / "members" / "member-0" / "train.log").read_text()
    assert "Epoch 3:" in log and "Error-table on TEST" in log


def test_e0s_given_to_mace_are_the_isolated_atom_energies(committee, labelled):
    from ase.data import atomic_numbers

    from aloe.potentials.mace import load_mace_module

    iso = yaml.safe_load((labelled / "isolated_atoms.yaml").read_text())["energies"]
    expected = {atomic_numbers[e]: v for e, v in iso.items()}
    for k in range(2):
        folder = committee.run_dir / "members" / f"member-{k}"
        argv = json.loads((folder / "mace_args.json").read_text())["argv"]
        e0s = ast.literal_eval(next(a for a in argv if a.startswith("--E0s=")).split("=", 1)[1])
        assert e0s == pytest.approx(expected)
        assert f"--seed={k}" in argv and "--restart_latest" in argv
        module = load_mace_module(committee.run_dir / "models" / f"member-{k}.model")
        zs = [int(z) for z in module.atomic_numbers]
        stored = module.atomic_energies_fn.atomic_energies.detach().double().numpy().reshape(-1)
        assert dict(zip(zs, stored.tolist(), strict=True)) == pytest.approx(expected)
    dataset = yaml.safe_load((committee.run_dir / "dataset.yaml").read_text())
    assert dataset["e0s_eV"] == pytest.approx(iso) and dataset["structures"] == 48


def test_second_run_on_the_same_folder_does_nothing(committee, labelled):
    import typer
    from typer.testing import CliRunner

    from aloe.cli.train import HELP, train_command
    from aloe.train.stage import train

    run = committee.run_dir
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "models").glob("*.model")}
    again = train(_settings([labelled], run, committee_size=2, epochs=4, workers=2))  # workers: runtime
    assert again.counts["trained_now"] == 0 and again.counts["tested_now"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (run / "models").glob("*.model")} == stamps
    assert again.products["errors"] == committee.products["errors"]
    assert yaml.safe_load((run / "summary.yaml").read_text())["resumed"] is True
    # the same through the command line
    app = typer.Typer()
    app.command("train", help=HELP)(train_command)
    app.command("other")(lambda: None)  # two commands: typer keeps "train" as a subcommand
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(labelled),
            "--preset",
            "tiny",
            "-n",
            "2",
            "--epochs",
            "4",
            "-o",
            str(run),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "0 trained now, 2 finished" in result.output and "member-1" in result.output
    # other settings on the same folder: refused with one line
    bad = CliRunner().invoke(app, ["train", str(labelled), "--preset", "tiny", "--seed", "5", "-o", str(run)])
    assert bad.exit_code == 2 and "other settings" in bad.stderr
    bad_option = CliRunner().invoke(app, ["train", str(labelled), "--mace", "nonsense", "-o", str(run)])
    assert bad_option.exit_code == 2 and "OPTION=VALUE" in bad_option.stderr


@pytest.mark.slow
def test_one_member_end_to_end_from_the_command_line(labelled, tmp_path):
    """One member, one epoch, through the command line with a mace option (about 10 s; the default run already
    trains the two-member committee fixture end to end)."""
    import typer
    from typer.testing import CliRunner

    from aloe.cli.train import train_command

    app = typer.Typer()
    app.command("train")(train_command)
    app.command("other")(lambda: None)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(labelled),
            "--preset",
            "tiny",
            "-n",
            "1",
            "--epochs",
            "1",
            "--mace",
            "num_channels=8",
            "-o",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 trained now" in result.output
    argv = json.loads((out / "members" / "member-0" / "mace_args.json").read_text())["argv"]
    assert "--num_channels=8" in argv and "--max_num_epochs=1" in argv
    assert (out / "models" / "member-0.model").is_file() and (out / "errors.csv").is_file()


# ---- slow: resume after a kill, fine-tuning, growing the committee -----------------------------------------
@pytest.mark.slow
def test_a_killed_training_continues_from_its_checkpoint(labelled, tmp_path):
    from aloe.train.stage import train

    out = tmp_path / "run"
    settings = _settings([labelled], out, committee_size=1, epochs=40)
    script = (
        "from aloe.train.settings import TrainSettings\nfrom aloe.train.stage import train\n"
        f"train(TrainSettings.model_validate_json({settings.model_dump_json()!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    checkpoints = out / "members" / "member-0" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(checkpoints.glob("*_epoch-*.pt")):
        time.sleep(0.2)
    assert any(checkpoints.glob("*_epoch-*.pt")), "no checkpoint appeared"
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)  # the stage and mace's process: a hard kill
    proc.wait()
    assert not (out / "models" / "member-0.model").exists()
    result = train(settings)
    assert result.counts["trained_now"] == 1
    log = (out / "members" / "member-0" / "train.log").read_text()
    assert log.count("# aloe:") == 2 and "Loading checkpoint" in log.split("# aloe:")[-1]
    assert (out / "models" / "member-0.model").is_file()


@pytest.mark.slow
def test_fine_tuning_from_a_member_and_growing_the_committee(committee, labelled, tmp_path):
    from aloe.train.stage import train

    foundation = committee.run_dir / "models" / "member-0.model"
    out = tmp_path / "finetune"
    result = train(_settings([labelled], out, committee_size=1, epochs=2, foundation_model=str(foundation)))
    argv = json.loads((out / "members" / "member-0" / "mace_args.json").read_text())["argv"]
    assert f"--foundation_model={foundation}" in argv and "--multiheads_finetuning=False" in argv
    log = (out / "members" / "member-0" / "train.log").read_text()
    assert "Using foundation model" in log and result.counts["finished"] == 1
    # raising committee_size on a finished run trains only the new members (here two at a time)
    grown_dir = tmp_path / "grown"
    shutil.copytree(committee.run_dir, grown_dir)
    grown = train(_settings([labelled], grown_dir, committee_size=4, epochs=4, workers=2))
    assert grown.counts["trained_now"] == 2 and grown.counts["finished"] == 4
    assert (grown_dir / "models" / "member-3.model").is_file()
    assert [r["member"] for r in grown.products["errors"]] == [
        "member-0",
        "member-1",
        "member-2",
        "member-3",
        "mean",
    ]
    assert grown.products["errors"][:2] == committee.products["errors"][:2]


@pytest.mark.slow
def test_a_killed_training_restarts_to_the_uninterrupted_model(labelled, tmp_path):
    """resume: restart forgets a killed training's checkpoints and trains again: the very model of a whole run."""
    from aloe.potentials.base import file_digest
    from aloe.train.stage import train

    whole = train(_settings([labelled], tmp_path / "whole", committee_size=1, epochs=12, resume="restart"))
    out = tmp_path / "run"
    settings = _settings([labelled], out, committee_size=1, epochs=12, resume="restart")
    script = (
        "from aloe.train.settings import TrainSettings\nfrom aloe.train.stage import train\n"
        f"train(TrainSettings.model_validate_json({settings.model_dump_json()!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    checkpoints = out / "members" / "member-0" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(checkpoints.glob("*_epoch-*.pt")):
        time.sleep(0.2)
    assert any(checkpoints.glob("*_epoch-*.pt")), "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "models" / "member-0.model").exists()
    train(settings)
    log = (out / "members" / "member-0" / "train.log").read_text()
    last = log.split("# aloe:")[-1]
    assert "Cannot find checkpoint" in last and "Epoch 0:" in last  # started again, not continued
    model, reference = out / "models" / "member-0.model", whole.run_dir / "models" / "member-0.model"
    assert file_digest(str(model)) == file_digest(str(reference))
