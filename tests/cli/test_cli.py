from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from aloe.cli.main import app

runner = CliRunner()


@pytest.fixture
def interruptible():
    """Ctrl-C as on a terminal, also where the tests run in a background job (its shell ignores SIGINT, and a
    child process inherits an ignored signal: it would never see the Ctrl-C these tests send)."""
    import signal

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a handler, unlike SIG_IGN, is not inherited
    yield
    signal.signal(signal.SIGINT, previous)


def test_help_lists_only_built_verbs():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "generate" in result.output and "prototypes" in result.output
    assert "screen" in result.output
    import typer.main

    commands = set(typer.main.get_command(app).commands)
    # verbs not built yet are absent, not stubs
    assert commands == {
        "bench",
        "data",
        "generate",
        "label",
        "prototypes",
        "run",
        "screen",
        "select",
        "study",
        "train",
    }
    bench = runner.invoke(app, ["bench", "--help"])
    assert bench.exit_code == 0 and "reference" in bench.output and "run" in bench.output


def test_count_prints_exact_sizes(proto_dir):
    result = runner.invoke(app, ["generate", "-p", str(proto_dir), "-e", "Li,O,Mg,Fe,Cu", "--count"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    total = next(line for line in lines if line.strip().startswith("total"))
    assert "100" in total.split() and "50.0" in total.split()


def test_generate_writes_run_folder_and_config_override(proto_dir, tmp_path):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "generate": {
                    "elements": ["Li", "O", "Mg"],
                    "seed": 4,
                    "chunk_size": 10,
                    "lattice": {"factor": 0.9},
                }
            }
        )
    )
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "generate",
            "-c",
            str(cfg),
            "-p",
            str(proto_dir),
            "--seed",
            "9",
            "-o",
            str(out),
            "--set",
            "perturbation.strain_sigma=0.01",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"run folder: {out}" in result.output
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["seed"] == 9 and summary["settings"]["lattice"]["factor"] == 0.9
    assert summary["settings"]["perturbation"]["strain_sigma"] == 0.01
    assert summary["command"].startswith("aloe generate") and "--seed 9" in summary["command"]


def test_bad_config_key_is_one_line_exit_2(proto_dir, tmp_path):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("lattice:\n  fudge: 1\n")
    result = runner.invoke(app, ["generate", "-c", str(cfg), "-p", str(proto_dir)])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.count("\n") == 0 and "gen.yaml" in err and "'lattice.fudge'" in err and "unknown key" in err
    bad = runner.invoke(app, ["generate", "-p", str(proto_dir), "-e", "Fe,Po", "--count"])
    assert bad.exit_code == 2 and "'Po' is outside" in bad.stderr
    bad_set = runner.invoke(app, ["generate", "-p", str(proto_dir), "--set", "seed"])
    assert bad_set.exit_code == 2 and "KEY=VALUE" in bad_set.stderr


def test_index_prints_poscar(proto_dir):
    result = runner.invoke(app, ["generate", "-p", str(proto_dir), "-e", "Na,Cl", "--index", "0"])
    assert result.exit_code == 0, result.output
    assert "# candidate 0_POSCAR_cscl_Na-Cl_occ0" in result.output
    assert "Na Cl" in result.output and "direct" in result.output


def test_prototypes_list_show_stats(proto_dir, tmp_path):
    (proto_dir / "POSCAR_broken").write_text("nonsense\n")
    listed = runner.invoke(app, ["prototypes", "list", "-s", str(proto_dir)])
    assert listed.exit_code == 0
    assert "POSCAR_perovskite_weight0.25" in listed.output and "4 prototypes" in listed.output
    assert "POSCAR_broken: malformed structure file" in listed.stderr
    shown = runner.invoke(app, ["prototypes", "show", "POSCAR_fluorite", "-s", str(proto_dir)])
    assert shown.exit_code == 0 and "distinct occupations (2)" in shown.output and "Fm-3m" in shown.output
    stats = runner.invoke(app, ["prototypes", "stats", "-s", str(proto_dir)])
    assert stats.exit_code == 0
    assert "arity 2:    3 prototypes" in stats.output
    assert "arity 3: prototypes by number of distinct occupations 6:1" in stats.output
    missing = runner.invoke(app, ["prototypes", "show", "nope", "-s", str(proto_dir)])
    assert missing.exit_code == 2 and "no prototype named 'nope'" in missing.stderr


def test_ctrl_c_names_the_folder_to_resume(tmp_path, interruptible):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    env = {**os.environ, "ALOE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aloe.cli.main",
            "generate",
            "-p",
            "builtin:binary",
            "--sample",
            "60000",
            "--chunk-size",
            "1000",
            "--no-progress",
            "-o",
            str(out),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "chunks").glob("chunk-*.parquet"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert f"run folder: {out}" in stdout
    assert f"--output {out} to resume" in stderr and "Traceback" not in stderr


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)  # the lost interrupt, on purpose
def test_an_interrupt_lost_in_a_finaliser_still_ends_with_130(interruptible):
    """Python prints a KeyboardInterrupt raised inside ``__del__`` as "Exception ignored" and goes on."""
    import os
    import signal

    import typer

    from aloe.cli.options import user_errors

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs here, inside the finaliser, and its exception is lost
                pass

    before = signal.getsignal(signal.SIGINT)
    finished = False
    with pytest.raises(typer.Exit) as info:
        with user_errors():
            Finaliser()
            finished = True
    assert finished  # the interrupt did not stop the body: only the note can
    assert info.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before


def test_screen_command(tmp_path):
    from ase.build import bulk
    from ase.io import write

    write(tmp_path / "in.extxyz", [bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Cu", "fcc", a=3.9)])
    refs = tmp_path / "refs.yaml"
    refs.write_text("Cu: -0.2\n")
    out = tmp_path / "scr"
    args = [
        "screen",
        str(tmp_path / "in.extxyz"),
        "-m",
        "lj(sigma=2.3,epsilon=0.05)",
        "-m",
        "lj(sigma=2.35,epsilon=0.05)",
        "--references",
        str(refs),
        "--no-compute-references",
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "screened 2 structures with 2 models" in result.output
    assert (out / "summary.yaml").exists() and (out / "plots" / "disagreements.png").exists()
    bad = runner.invoke(
        app, ["screen", str(tmp_path / "in.extxyz"), "-m", "nonsense-model", "-o", str(tmp_path / "b")]
    )
    assert bad.exit_code == 2 and "unknown potential 'nonsense-model'" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0
