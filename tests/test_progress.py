"""The run log hears from every long loop at least every :data:`aloe.progress.HEARTBEAT` seconds, whatever the display.

A terminal bar (tqdm) writes its state to the log on a heartbeat; with progress off (``--no-progress``) a bar still
writes its lines to an open run log, never to the terminal; a pool worker's log bar writes to its output (the run
log, which a worker of the CLI inherits), or nothing when that output is a terminal.
"""

from __future__ import annotations

import io
import logging
import re
import time

import pytest

from aloe import logs, progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def fast_heartbeat(monkeypatch):
    monkeypatch.setattr(progress, "HEARTBEAT", 0.3)


def test_a_terminal_bar_writes_its_state_to_the_log_on_a_heartbeat(monkeypatch, caplog, fast_heartbeat):
    screen = _Tty()
    monkeypatch.setattr(logs, "_active", logs.Console(screen))  # a CLI run on a terminal
    with caplog.at_level(logging.INFO, logger="aloe"):
        bar = progress.make_bar(enabled=True, total=10, desc="md emt", unit="step")
        assert type(bar).__name__ == "_TerminalBar"
        bar.update(3)
        time.sleep(1.0)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("md emt:")]
    assert len(lines) >= 3, lines  # two heartbeats or more while it ran, then the final state
    assert all(re.fullmatch(r"md emt: 3/10 steps, 00:0\d", line) for line in lines), lines


def test_progress_off_still_writes_to_an_open_run_log(monkeypatch, caplog):
    screen = _Tty()
    monkeypatch.setattr(logs, "_active", logs.Console(screen))
    with caplog.at_level(logging.INFO, logger="aloe"):
        bar = progress.make_bar(enabled=False, total=2, desc="bench", unit="structure")
        bar.update(2)
        bar.close()
    assert [r.getMessage()[:27] for r in caplog.records] == ["bench: 2/2 structures, 00:0"]
    assert screen.getvalue() == ""  # nothing on the terminal


def test_progress_off_without_a_run_log_is_silent(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="aloe"):
        bar = progress.make_bar(enabled=False, total=2, desc="bench", unit="structure")
        bar.update(2)
        bar.close()
    assert capsys.readouterr().out == "" and not caplog.records


def test_a_log_bar_in_a_worker_writes_to_its_output_unless_a_terminal(monkeypatch, capsys, fast_heartbeat):
    bar = progress.make_log_bar(
        total=4, desc="md emt", unit="step"
    )  # a worker: no log open, output not a tty
    bar.update(4)
    bar.close()
    assert re.fullmatch(r"md emt: 4/4 steps, 00:0\d\n", capsys.readouterr().out)
    monkeypatch.setattr("sys.stdout", _Tty())  # a worker sharing the terminal: nothing
    assert isinstance(progress.make_log_bar(total=4, desc="md emt"), progress._NullBar)


def test_a_line_bar_writes_a_heartbeat_while_nothing_changes(capsys, fast_heartbeat):
    bar = progress.make_bar(enabled=True, total=5, desc="label (gpaw)", unit="structure")
    time.sleep(1.0)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 3 and all(line.startswith("label (gpaw): 0/5 structures") for line in lines), lines
