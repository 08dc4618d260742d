"""Progress lines of the elemental references carry the loop's ``[iter i/n]`` prefix, like the stages' bars."""

from __future__ import annotations

import logging
import re

from aloe.potentials.ase_calculator import EMTPotential
from aloe.potentials.references import ReferenceSettings, ReferenceStore, progress_line, report_progress
from aloe.progress import progress_prefix

FAST = ReferenceSettings(candidates=["fcc", "dimer"])
LINE = r"references emt: {symbol} {i}/{n} \(\d+\.\d s, winner [^)]+\)"


def test_computed_references_show_the_iteration(tmp_path, capsys):
    store = ReferenceStore(tmp_path / "cache", FAST)
    with progress_prefix("[iter 1/2] "):
        store.references(EMTPotential(), ["Cu", "Ag"], progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"\[iter 1/2\] " + LINE.format(symbol="Cu", i=1, n=2), lines[0]), lines
    assert re.fullmatch(r"\[iter 1/2\] " + LINE.format(symbol="Ag", i=2, n=2), lines[1]), lines
    # outside the loop: no prefix
    store.references(EMTPotential(), ["Cu", "Al"], progress=True)  # Cu from the cache: one line, for Al
    (line,) = capsys.readouterr().out.splitlines()
    assert re.fullmatch(LINE.format(symbol="Al", i=1, n=1), line), line


def test_the_log_gets_the_prefix_too(caplog):
    # progress off (tests, --no-progress): the line still goes to the run log, prefixed the same way
    line = progress_line("chgnet-r2scan", "F", 12, 89, 3.21, {"winner": "dimer", "candidates": {}})
    with caplog.at_level(logging.INFO, logger="aloe.potentials.references"), progress_prefix("[seed] "):
        report_progress(line, False)
    assert [r.getMessage() for r in caplog.records] == [
        "[seed] references chgnet-r2scan: F 12/89 (3.2 s, winner dimer)"
    ]
