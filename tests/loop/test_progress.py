"""What a user sees: progress lines per iteration and stage on a non-terminal stdout; library noise in aloe.log.

The CLI runs in a child process with stdout and stderr as pipes (not terminals), as in a batch job. A
``sitecustomize`` module (outside aloe, imported by every Python process the run starts: the CLI, the forkserver
and its workers, each label child) makes ASE's EMT and Lennard-Jones calculators noisy the three ways libraries
are: ``warnings.warn``, a ``logging`` warning, and a plain print to stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.loop.test_loop import loop_config

NOISE = "injected-thirdparty"
SITECUSTOMIZE = f'''
import logging
import sys
import warnings


def _noisy(cls, where, method="calculate"):
    original = getattr(cls, method)

    def noisy(self, *args, **kwargs):
        warnings.warn("{NOISE} warning from " + where, UserWarning)
        logging.getLogger("some.library").warning("{NOISE} log record from " + where)
        print("{NOISE} print from " + where, file=sys.stderr, flush=True)
        return original(self, *args, **kwargs)

    setattr(cls, method, noisy)


try:
    from ase.calculators.emt import EMT
    from ase.calculators.lj import LennardJones
except ImportError:
    pass
else:
    _noisy(EMT, "emt")
    _noisy(LennardJones, "lj")
try:  # the neighbour lists of aloe's batched models (the Lennard-Jones committee of the loop)
    import matscipy.neighbours as neighbours
except ImportError:
    pass
else:
    _library_list = neighbours.neighbour_list

    def _noisy_list(*args, **kwargs):
        warnings.warn("{NOISE} warning from matscipy", UserWarning)
        logging.getLogger("some.library").warning("{NOISE} log record from matscipy")
        print("{NOISE} print from matscipy", file=sys.stderr, flush=True)
        return _library_list(*args, **kwargs)

    neighbours.neighbour_list = _noisy_list
'''


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``aloe ARGS`` in a child process with the noisy calculators, stdout and stderr captured (not terminals)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    env = {k: v for k, v in os.environ.items() if k != "ALOE_PROGRESS"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(root)])
    env["ALOE_CACHE_DIR"] = str(tmp_path / "cache")
    return subprocess.run(
        [sys.executable, "-m", "aloe.cli.main", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def assert_noise_in_log_only(proc: subprocess.CompletedProcess[str], log: Path, sources: list[str]) -> str:
    screen = proc.stdout + proc.stderr
    assert NOISE not in screen, screen
    assert "Warning" not in screen, screen  # nor the libraries' own (matplotlib's, e3nn's ...)
    text = log.read_text()
    for where in sources:
        assert f"UserWarning: {NOISE} warning from {where}" in text
        assert f"{NOISE} log record from {where}" in text
        assert f"{NOISE} print from {where}" in text
    return text


def test_label_verb_puts_child_process_noise_in_the_log(tmp_path):
    from ase.build import bulk
    from ase.io import write

    write(tmp_path / "in.extxyz", [bulk("Cu", "fcc", a=3.6), bulk("Cu", "fcc", a=3.7)])
    out = tmp_path / "lab"
    # isolate: each structure in its own child process (started through the forkserver)
    proc = run_cli(
        tmp_path, "label", "in.extxyz", "--labeler", "emt", "--set", "isolate=true", "-o", str(out)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = out / "aloe.log"
    assert_noise_in_log_only(proc, log, ["emt"])
    lines = proc.stdout.splitlines()
    assert f"run folder: {out} (log: {log})" in lines
    # plain progress lines, no carriage-return redraw
    assert "\r" not in proc.stdout
    assert any(
        re.fullmatch(r"label \(emt\): 2/2 structures, 2 ok, 0 failed, \d\d:\d\d", line) for line in lines
    )
    # aloe's own messages are in the log as well
    assert f"run folder: {out}" in log.read_text()


def test_loop_shows_iterations_and_stages_and_logs_library_noise(tmp_path, proto_dir):
    # EMT has no parameters for Cr, Fe, Co: labelling fails 'unsupported', so the loop stops before training
    # (fast); the Lennard-Jones committee warns in this process during the screen.
    config = loop_config(proto_dir, tmp_path / "run", generate={"elements": ["Cr", "Fe", "Co"], "sample": 10})
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli(tmp_path, "run", "loop.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = tmp_path / "run" / "aloe.log"
    assert_noise_in_log_only(proc, log, ["matscipy"])
    lines = proc.stdout.splitlines()
    for stage in ("generate", "screen", "select", "label"):
        assert f"[iter 1/1] {stage} ... ({tmp_path / 'run' / 'iter-00' / stage})" in lines
        assert any(re.match(rf"\[iter 1/1\] {stage}: done in \d\d:\d\d \(", line) for line in lines), stage
    assert any(re.fullmatch(r"\[iter 1/1\] screen: 10/10 structures, .*\d\d:\d\d", line) for line in lines)
    assert "[iter 1/1] screened 10, selection rate 100.0%, labelled 0 (8 failed)" in lines
    assert "[iter 1/1] label: done in" in proc.stdout and "0 labelled" in proc.stdout
    assert "no structure could be labelled" in proc.stdout
    assert "\r" not in proc.stdout
    assert proc.stderr == ""


def test_a_bad_config_is_one_line_on_screen(tmp_path, proto_dir):
    config = loop_config(proto_dir, tmp_path / "run", label={"labeler": "turbomole"})
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli(tmp_path, "run", "loop.yaml")
    assert proc.returncode == 2
    assert proc.stderr.startswith("aloe: error: ") and len(proc.stderr.splitlines()) == 1
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_iteration_loop_with_mace_keeps_the_screen_to_aloe_messages(tmp_path, proto_dir):
    # The EMT + tiny MACE loop of test_loop, labels in child processes: mace's and e3nn's warnings (training in
    # a subprocess, testing in a worker, screening with the trained committee here) stay off the screen.
    config = loop_config(proto_dir, tmp_path / "run", iterations=2, label={"isolate": True})
    config["executor"] = {"kind": "process", "workers": 2}
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli(tmp_path, "run", "loop.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = tmp_path / "run" / "aloe.log"
    text = assert_noise_in_log_only(proc, log, ["emt", "matscipy"])
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    for it in (1, 2):
        for stage in ("generate", "screen", "select", "label", "train"):
            assert any(line.startswith(f"[iter {it}/2] {stage}: done in ") for line in lines), (it, stage)
    assert any(re.fullmatch(r"\[iter 1/2\] train \(mace\): 2/2 members.*", line) for line in lines)
    assert "finished 2 iterations" in lines
    # the real library notices (e3nn's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, cuequivariance) are not on screen either
    assert not re.search(r"(?i)warning|cuequivariance|TORCH_FORCE", proc.stdout)
    # everything the screen showed is in the log too
    for line in lines:
        assert line in text


def test_line_progress_writes_changes_with_their_counts_and_a_final_line(capsys):
    from aloe.progress import LineProgress, progress_prefix

    with progress_prefix("[iter 1/2] "):
        from aloe.progress import make_bar

        bar = make_bar(enabled=True, total=3, desc="label (emt)", unit="structure")
    assert isinstance(bar, LineProgress)  # stdout is not a terminal under pytest's capture
    bar.interval = 0.0
    bar.update(1)
    bar.set_postfix(ok=1, failed=0)  # counts set right after the update are in its line
    time.sleep(1.0)
    bar.set_postfix(ok=1, failed=0)  # nothing changed: no new line
    time.sleep(1.0)
    bar.update(2)
    bar.set_postfix(ok=2, failed=1)
    bar.close()
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"\[iter 1/2\] label \(emt\): 1/3 structures, 1 ok, 0 failed, 00:0\d", lines[0])
    assert re.fullmatch(r"\[iter 1/2\] label \(emt\): 3/3 structures, 2 ok, 1 failed, 00:0\d", lines[1])
