"""Bad inputs and shared folders, as a new user meets them: one table that every stage extends.

Each case either stops with ONE line ``aloe: error: <file>: <frame/record/key>: <what is wrong>``, a non-zero exit
and no traceback (:class:`Refused`), or is recorded per structure by a stage that isolates failures while the good
structures of the same input go through (:class:`Recorded`).

To add a case, append a :class:`Case` to :data:`CASES` (keep the blocks by stage):

- ``make(setup)`` builds the bad input under ``setup.tmp`` and returns the command line (verb first; the helpers
  :func:`screen`, :func:`label`, :func:`convert`, :func:`run_loop` write the usual ones); ``setup.keep(obj)``
  keeps an object (a held lock) alive while the command runs;
- ``expect`` is ``Refused(regex of the error line)`` (:func:`foreign` and :func:`in_use` for output folders) or
  ``Recorded(stage, folder, {structure id: (outcome, regex of the recorded reason)})``; add a reader to
  :data:`RECORD_READERS` for a new stage (bench ...);
- ``subprocess=True`` runs ``python -m aloe.cli.main`` in a child process: the real exit status and stderr, and
  another process than the test's (needed where the test itself holds a lock).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from aloe.cli.main import app
from aloe.runs import claim_folder

TEST_PID = os.getpid()
CHILD_TIMEOUT_S = 300

#: Two cheap pair potentials that disagree a little: a committee that needs no weights and no references.
LJ = ["lj(sigma=2.3,epsilon=0.05,rc=6.0)", "lj(sigma=2.35,epsilon=0.06,rc=6.0)"]
SCREEN_FAST = ["--set", "energy_basis=total", "--no-compute-references", "--no-progress"]
for _member in LJ:
    SCREEN_FAST += ["-m", _member]
LABEL_FAST = ["--labeler", "emt", "--set", "isolate=false", "--isolated-atoms", "none", "--no-progress"]


# ---- the table's types ------------------------------------------------------------------------------------
@dataclass
class Setup:
    """Where a case builds its input, and what must stay alive while its command runs."""

    tmp: Path
    kept: list[Any] = field(default_factory=list)

    def keep(self, obj: Any) -> Any:
        """Keep ``obj`` (with a ``release()``: a lock held by this test process) until the command has run."""
        self.kept.append(obj)
        return obj

    def close(self) -> None:
        """Release what was kept (locks)."""
        for obj in self.kept:
            obj.release()
        self.kept.clear()

    def file(self, name: str, text: str) -> str:
        """Write ``text`` to ``tmp/name``; return the path as a string."""
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return str(path)


@dataclass(frozen=True)
class Refused:
    """One error line matching ``pattern``, exit status ``exit_code``, nothing at the paths of ``absent``."""

    pattern: str
    exit_code: int = 2
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recorded:
    """The command succeeds; in the run folder ``folder`` the structures in ``outcomes`` are recorded so.

    ``outcomes`` maps a structure id to ``(outcome, regex of the reason)``; ``stage`` names the reader in
    :data:`RECORD_READERS` that lists a run folder's ``{id: (outcome, reason)}``.
    """

    stage: str
    folder: str
    outcomes: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it, what to run, what must happen."""

    id: str
    make: Callable[[Setup], list[str]]
    expect: Refused | Recorded
    subprocess: bool = False
    marks: tuple[Any, ...] = ()


# ---- how stages record per-structure outcomes ---------------------------------------------------------------
def _screen_outcomes(run: Path) -> dict[str, tuple[str, str]]:
    table = pq.read_table(
        sorted((run / "metrics").glob("chunk-*.parquet"))[0], columns=["id", "outcome", "reason"]
    )
    return {
        i: (o, r)
        for i, o, r in zip(
            table.column("id").to_pylist(),
            table.column("outcome").to_pylist(),
            table.column("reason").to_pylist(),
            strict=True,
        )
    }


def _label_outcomes(run: Path) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for path in sorted((run / "records").glob("chunk-*.jsonl")):
        for line in path.read_text().splitlines():
            out[json.loads(line)["provenance"]["aloe_id"]] = ("labelled", "")
    for path in sorted((run / "failures").glob("chunk-*.jsonl")):
        for line in path.read_text().splitlines():
            doc = json.loads(line)
            out[doc["id"]] = (f"failed:{doc['kind']}", doc["message"])
    return out


def _bench_outcomes(run: Path) -> dict[str, tuple[str, str]]:
    """Every row of every benchmark table: ``ok`` or ``failed`` with the row's error."""
    out: dict[str, tuple[str, str]] = {}
    for path in sorted((run / "tables").glob("*.parquet")):
        for row in pq.read_table(path, columns=["structure_id", "error"]).to_pylist():
            out[row["structure_id"]] = ("failed", row["error"]) if row["error"] else ("ok", "")
    return out


RECORD_READERS: dict[str, Callable[[Path], dict[str, tuple[str, str]]]] = {
    "screen": _screen_outcomes,
    "label": _label_outcomes,
    "bench": _bench_outcomes,
}


# ---- inputs -------------------------------------------------------------------------------------------------
CU = "Cu 0.0 0.0 0.0\nCu 0.0 1.8 1.8\nCu 1.8 0.0 1.8\nCu 1.8 1.8 0.0"
GOOD_FRAME = (
    f'4\nLattice="3.6 0.0 0.0 0.0 3.6 0.0 0.0 0.0 3.6" Properties=species:S:1:pos:R:3 pbc="T T T"\n{CU}\n'
)


AM_FRAME = (  # americium: beyond CHGNet's elements
    '1\nLattice="3.5 0.0 0.0 0.0 3.5 0.0 0.0 0.0 3.5" Properties=species:S:1:pos:R:3 pbc="T T T"\nAm 0.0 0.0 0.0\n'
)


EMPTY_FRAME = '0\nLattice="3.6 0.0 0.0 0.0 3.6 0.0 0.0 0.0 3.6" Properties=species:S:1:pos:R:3 pbc="T T T"\n'


def _frames(*frames: str) -> str:
    return "".join(frames)


def zero_volume_xyz(setup: Setup, third: str = "0.0 0.0 0.0") -> str:
    """Frame 0 fine; frame 1 a cell of volume 0 (third lattice vector ``third``); frame 2 fine (another one)."""
    flat = f'2\nLattice="3.6 0.0 0.0 0.0 3.6 0.0 {third}" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
    flat += "Cu 0.0 0.0 0.0\nCu 1.8 1.8 0.0\n"
    other = GOOD_FRAME.replace("Cu 1.8 1.8 0.0", "Cu 1.75 1.8 0.05")
    return setup.file("flat.extxyz", _frames(GOOD_FRAME, flat, other))


def coincident_xyz(setup: Setup) -> str:
    """Frame 1 has two Cu atoms at exactly the same point (the next-nearest pair is 2.55 A apart)."""
    twin = GOOD_FRAME.replace("4\n", "5\n", 1) + "Cu 1.8 1.8 0.0\n"
    return setup.file("twin.extxyz", _frames(GOOD_FRAME, twin))


def unknown_element_xyz(setup: Setup, labelled: bool = False) -> str:
    """Frame 1 has an atom of element 'Xx' (frames with labels for ``data convert``)."""
    good = labelled_frame() if labelled else GOOD_FRAME
    bad = good.replace("Cu 1.8 1.8 0.0", "Xx 1.8 1.8 0.0")
    return setup.file("xx.extxyz", _frames(good, bad))


def labelled_frame(position: str = "1.8 1.8 0.0") -> str:
    """A labelled frame (MACE's REF_ keys) whose last atom sits at ``position``."""
    lines = [
        "4",
        'Lattice="3.6 0.0 0.0 0.0 3.6 0.0 0.0 0.0 3.6" Properties=species:S:1:pos:R:3:REF_forces:R:3 '
        'REF_energy=-1.5 REF_stress="0.0 0.0 0.0 0.0 0.0 0.0" pbc="T T T"',
        "Cu 0.0 0.0 0.0 0.0 0.0 0.0",
        "Cu 0.0 1.8 1.8 0.0 0.0 0.0",
        "Cu 1.8 0.0 1.8 0.0 0.0 0.0",
        f"Cu {position} 0.0 0.0 0.0",
    ]
    return "\n".join(lines) + "\n"


def run_config(setup: Setup, sections: dict[str, Any]) -> str:
    return setup.file("loop.yaml", yaml.safe_dump(sections))


def foreign_folder(setup: Setup) -> str:
    """An existing folder with a user's file in it (not a run folder)."""
    folder = setup.tmp / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    return str(folder)


def locked_run_folder(setup: Setup, name: str = "locked") -> str:
    """An empty folder locked by this test process (the command runs in another one)."""
    folder = setup.tmp / name
    setup.keep(claim_folder(folder, "run.yaml", "the test"))
    return str(folder)


def generate_args(setup: Setup) -> list[str]:
    protos = setup.tmp / "protos"
    from tests.conftest import write_prototypes

    write_prototypes(protos)
    return ["generate", "-p", str(protos), "-e", "Al,Cu", "--no-progress"]


def labelled_xyz(setup: Setup) -> str:
    """Three labelled Cu frames (three different structures: enough for a train/valid/test split)."""
    frames = [labelled_frame(p) for p in ("1.8 1.8 0.0", "1.75 1.8 0.05", "1.8 1.7 0.1")]
    return setup.file("labelled.extxyz", _frames(*frames))


# ---- command lines (``out``: a path, or the default output folder under ``setup.tmp``) ------------------------
def screen(setup: Setup, xyz: str, out: str | None = None) -> list[str]:
    """``aloe screen XYZ -o OUT`` with the Lennard-Jones committee, no references (OUT default: ``out``)."""
    return ["screen", xyz, "-o", out or str(setup.tmp / "out"), *SCREEN_FAST]


def label(setup: Setup, xyz: str, out: str | None = None) -> list[str]:
    """``aloe label XYZ -o OUT`` with EMT, in this process (OUT default: ``out``)."""
    return ["label", xyz, "-o", out or str(setup.tmp / "out"), *LABEL_FAST]


def raising_factory(setup: Setup) -> str:
    """A ``module:factory`` spec whose factory raises (the module sits in the child's working folder)."""
    setup.file("broken_factory.py", "def make():\n    raise RuntimeError('no weights in here')\n")
    return "broken_factory:make"


def study(setup: Setup, config: dict[str, Any]) -> list[str]:
    """``aloe study study.yaml -o out`` with ``config`` as the study's keys."""
    return ["study", setup.file("study.yaml", yaml.safe_dump(config)), "-o", "out", "--no-progress"]


def bench_ev(setup: Setup, xyz: str) -> list[str]:
    """``aloe bench emt --suite ev --ev-structures XYZ -o out``."""
    return ["bench", "emt", "--suite", "ev", "--ev-structures", xyz, "-o", "out", "--no-progress"]


def convert(setup: Setup, source: str, target: str) -> list[str]:
    """``aloe data convert SOURCE tmp/TARGET``."""
    return ["data", "convert", source, str(setup.tmp / target)]


def run_loop(setup: Setup, sections: dict[str, Any], out: str | None = None) -> list[str]:
    """``aloe run loop.yaml -o OUT`` with the config ``sections`` (OUT default: ``loop``)."""
    return ["run", run_config(setup, sections), "-o", out or str(setup.tmp / "loop")]


# ---- expectations used by several cases ------------------------------------------------------------------------
FOREIGN = r"mine: folder is not empty and is not a run folder of aloe {verb} \(it holds notes\.txt\)"


def foreign(verb: str, *absent: str) -> Refused:
    """Refused: ``mine`` (see :func:`foreign_folder`) is not a run folder of ``verb``; ``absent`` not written."""
    return Refused(FOREIGN.format(verb=verb), absent=absent)


def in_use(*absent: str) -> Refused:
    """Refused: the folder (see :func:`locked_run_folder`) is locked by the test process; ``absent`` not written."""
    return Refused(rf"run folder \S*locked in use by process {TEST_PID}\b", absent=absent)


def screened_flat_cell() -> Recorded:
    """Frames 0 and 2 of :func:`zero_volume_xyz` screened, frame 1 failed for its degenerate cell."""
    return Recorded(
        "screen",
        "out",
        {
            "flat.extxyz:0": (r"rejected|selected", ""),
            "flat.extxyz:1": ("failed", r"invalid structure: degenerate cell \(volume 0 A\^3\)"),
            "flat.extxyz:2": (r"rejected|selected", ""),
        },
    )


# ---- the table ------------------------------------------------------------------------------------------------
CASES: list[Case] = [
    # -- structures a stage cannot treat: recorded per structure, the rest goes on --
    Case("screen-zero-volume-cell", lambda s: screen(s, zero_volume_xyz(s)), screened_flat_cell()),
    Case(
        "screen-coplanar-cell-vectors",  # no zero vector for ASE to complete: numpy's "Singular matrix" before
        lambda s: screen(s, zero_volume_xyz(s, "3.6 3.6 0.0")),
        screened_flat_cell(),
    ),
    Case(
        "screen-nan-position",
        lambda s: screen(
            s,
            s.file("nan.extxyz", _frames(GOOD_FRAME, GOOD_FRAME.replace("Cu 1.8 1.8 0.0", "Cu nan 1.8 0.0"))),
        ),
        Recorded(
            "screen",
            "out",
            {
                "nan.extxyz:0": (r"rejected|selected", ""),
                "nan.extxyz:1": (
                    "failed",
                    r"invalid structure: atomic positions hold NaN or infinite values",
                ),
            },
        ),
    ),
    Case(
        "label-zero-volume-cell",
        lambda s: label(s, zero_volume_xyz(s)),
        Recorded(
            "label",
            "out",
            {
                "flat.extxyz:0": ("labelled", ""),
                "flat.extxyz:1": ("failed:input", r"invalid structure: degenerate cell \(volume 0 A\^3\)"),
                "flat.extxyz:2": ("labelled", ""),
            },
        ),
    ),
    Case(
        "screen-coincident-atoms",
        lambda s: screen(s, coincident_xyz(s)),
        Recorded(
            "screen",
            "out",
            {
                "twin.extxyz:0": (r"rejected|selected", ""),
                "twin.extxyz:1": ("overlap", r"atoms 0 A apart"),
            },
        ),
    ),
    # -- screen: an element a model cannot handle fails only the structures containing it --
    Case(
        "screen-element-a-model-cannot-handle",  # CHGNet embeds Z <= 94: Am (95) raises IndexError in the model
        lambda s: [
            "screen",
            s.file("am.extxyz", _frames(GOOD_FRAME, AM_FRAME, GOOD_FRAME)),
            "-o",
            str(s.tmp / "out"),
            "-m",
            "chgnet-0.3.0",
            "-m",
            LJ[0],
            "--references",
            s.file("cu.yaml", "Cu: -3.7\n"),  # Am's references are computed (and fail for CHGNet)
            "--no-progress",
        ],
        Recorded(
            "screen",
            "out",
            {
                "am.extxyz:0": (r"rejected|selected|discarded", ""),
                "am.extxyz:1": ("failed", r"^no chgnet-0\.3\.0 reference for Am: every form: .*IndexError"),
                "am.extxyz:2": (r"rejected|selected|discarded", ""),
            },
        ),
    ),
    #
    # -- files that cannot be read: one line naming the file, the frame / record and the problem --
    Case(
        "screen-unknown-element",
        lambda s: screen(s, unknown_element_xyz(s)),
        Refused(r"xx\.extxyz: frame 1: unknown element 'Xx'$"),
    ),
    Case(
        "convert-unknown-element",
        lambda s: convert(s, unknown_element_xyz(s, labelled=True), "out.jsonl"),
        Refused(r"xx\.extxyz: frame 1: unknown element 'Xx'$", absent=("out.jsonl",)),
    ),
    Case(
        "convert-empty-jsonl",
        lambda s: convert(s, s.file("empty.jsonl", ""), "out.extxyz"),
        Refused(r"empty\.jsonl: holds no records; nothing written$", absent=("out.extxyz",)),
    ),
    Case(
        "convert-empty-json-list",
        lambda s: convert(s, s.file("empty.json", "[]\n"), "out.jsonl"),
        Refused(r"empty\.json: holds no records; nothing written$", absent=("out.jsonl",)),
    ),
    Case(
        "convert-empty-extxyz",
        lambda s: convert(s, s.file("empty.extxyz", ""), "out.jsonl"),
        Refused(r"empty\.extxyz: holds no records; nothing written$", absent=("out.jsonl",)),
    ),
    Case(
        "convert-nan-coordinate",
        lambda s: convert(
            s, s.file("nan.extxyz", labelled_frame() + labelled_frame("nan 1.8 0.0")), "out.jsonl"
        ),
        Refused(
            r"nan\.extxyz: frame 1: 'structure' site 3 has NaN or infinite '(abc|xyz)'", absent=("out.jsonl",)
        ),
    ),
    Case(
        "convert-infinite-coordinate",
        lambda s: convert(s, s.file("inf.extxyz", labelled_frame("1.8 inf 0.0")), "out.json"),
        Refused(r"inf\.extxyz: frame 0: 'structure' site 3 has NaN or infinite", absent=("out.json",)),
    ),
    Case(
        "convert-null-coordinate-in-jsonl",
        lambda s: convert(s, s.file("null.jsonl", _null_coordinate_jsonl()), "out.extxyz"),
        Refused(
            r"null\.jsonl: line 2: 'structure' site 0 has a null 'abc' coordinate", absent=("out.extxyz",)
        ),
    ),
    # -- configs: the file and the section are named, and nothing is written --
    Case(
        "run-config-unknown-key",
        lambda s: run_loop(s, {"screen": {"bogus": 1}}),
        Refused(r"loop\.yaml: section 'screen': key 'bogus': unknown key$", absent=("loop",)),
        subprocess=True,
    ),
    Case(
        "run-config-ill-typed-key",
        lambda s: run_loop(s, {"generate": {"chunk_size": "many"}}),
        Refused(r"loop\.yaml: section 'generate': key 'chunk_size': .*many", absent=("loop",)),
        subprocess=True,
    ),
    Case(
        "run-config-nested-key",
        lambda s: run_loop(s, {"label": {"gpaw": {"ecutt": 300}}}),
        Refused(r"loop\.yaml: section 'label': key 'gpaw\.ecutt': unknown key$", absent=("loop",)),
        subprocess=True,
    ),
    Case(
        "run-config-executor-in-a-stage-section",
        lambda s: run_loop(s, {"train": {"executor": "process"}}),
        Refused(r"loop\.yaml: section 'train': key 'executor': .*section 'executor'", absent=("loop",)),
        subprocess=True,
    ),
    Case(
        "run-config-unknown-executor-kind",
        lambda s: run_loop(s, {"executor": {"kind": "threads"}}),
        Refused(r"loop\.yaml: key 'executor\.kind': .*threads", absent=("loop",)),
        subprocess=True,
    ),
    # -- output folders: only a stage's own run folders, one process at a time --
    # -- aloe bench: a structure a benchmark cannot treat is a row; bad arguments are one line --
    # structures no benchmark can treat are refused before the run folder is made (one line: file and frame) ...
    Case(
        "bench-zero-volume-cell",
        lambda s: bench_ev(s, zero_volume_xyz(s)),
        Refused(r"flat\.extxyz: frame 1: degenerate cell \(volume 0 A\^3\)", absent=("out",)),
    ),
    Case(
        "bench-nan-cell",
        lambda s: bench_ev(
            s,
            s.file(
                "nancell.extxyz", _frames(GOOD_FRAME, GOOD_FRAME.replace("0.0 3.6 0.0", "0.0 nan 0.0", 1))
            ),
        ),
        Refused(r"nancell\.extxyz: frame 1: cell holds NaN or infinite values", absent=("out",)),
    ),
    Case(
        "bench-coincident-atoms",
        lambda s: bench_ev(s, coincident_xyz(s)),
        Refused(r"twin\.extxyz: frame 1: atoms 0 A apart", absent=("out",)),
    ),
    Case(
        "bench-zero-atom-frame",
        lambda s: bench_ev(s, s.file("none.extxyz", _frames(GOOD_FRAME, EMPTY_FRAME))),
        Refused(r"none\.extxyz: frame 1: structure has no atoms", absent=("out",)),
    ),
    Case(
        "bench-nan-position",
        lambda s: bench_ev(
            s,
            s.file("nan.extxyz", _frames(GOOD_FRAME, GOOD_FRAME.replace("Cu 1.8 1.8 0.0", "Cu nan 1.8 0.0"))),
        ),
        Refused(r"nan\.extxyz: frame 1: atomic positions hold NaN or infinite values", absent=("out",)),
    ),
    Case(
        "bench-empty-extxyz",
        lambda s: bench_ev(s, s.file("empty.extxyz", "")),
        Refused(r"empty\.extxyz: holds no structures$", absent=("out",)),
    ),
    Case(
        "bench-reference-without-forces",  # equilibrium has crystals, forces has nothing to compare against
        lambda s: [
            "bench",
            "emt",
            "--suite",
            "forces",
            "--structures",
            s.file("noforces.extxyz", GOOD_FRAME),
            "-o",
            "out",
        ],
        Refused(
            r"forces benchmark has no structures: .*noforces\.extxyz holds no structure with reference forces",
            absent=("out",),
        ),
    ),
    # ... or, on request, recorded as failed rows with the reason (never a score), the others computed
    Case(
        "bench-invalid-structures-recorded",
        lambda s: [*bench_ev(s, zero_volume_xyz(s)), "--set", "invalid_structures=record"],
        Recorded(
            "bench",
            "out",
            {
                "flat-0": ("ok", ""),
                "flat-1": ("failed", r"^invalid structure: degenerate cell \(volume 0 A\^3\)$"),
                "flat-2": ("ok", ""),
            },
        ),
    ),
    # a model that raises inside MD fails the row with its message: an error, not an instability
    Case(
        "bench-md-element-the-model-lacks",
        lambda s: [
            "bench",
            "emt",
            "--suite",
            "md",
            "--md-structures",
            s.file("ti.extxyz", _frames(GOOD_FRAME, GOOD_FRAME.replace("Cu 1.8 1.8 0.0", "Ti 1.8 1.8 0.0"))),
            "--set",
            "md.duration_ps=0.01",
            "-o",
            "out",
            "--no-progress",
        ],
        Recorded(
            "bench",
            "out",
            {
                "ti-0": ("ok", ""),
                "ti-1": ("failed", r"^nvt: emt raised NotImplementedError: No EMT-potential for Ti"),
            },
        ),
    ),
    Case(
        "bench-negative-verlet-skin",  # issue 21's MD setting: one line naming the key and the bound
        lambda s: ["bench", "emt", "--suite", "md", "--set", "md.neighbour_skin=-1", "-o", "out"],
        Refused(r"md\.neighbour_skin.*greater than or equal to 0", absent=("out",)),
    ),
    Case(
        "bench-empty-suite",
        lambda s: ["bench", "emt", "--suite", "", "-o", "out"],
        Refused(r"key 'suite'.*no benchmark given", absent=("out",)),
    ),
    Case(
        "bench-output-is-a-file",
        lambda s: ["bench", "emt", "--suite", "ev", "-o", s.file("taken.txt", "my notes\n")],
        Refused(r"taken\.txt: exists and is not a folder"),
    ),
    Case(
        "bench-factory-raises",  # the user's own factory fails while loading: one line naming it
        lambda s: [
            "bench",
            raising_factory(s),
            "--suite",
            "ev",
            "--ev-structures",
            s.file("cu.extxyz", GOOD_FRAME),
            "-o",
            "out",
        ],
        Refused(
            r"broken_factory:make: the factory raised RuntimeError: no weights in here$", absent=("out",)
        ),
        subprocess=True,  # run where the factory's module is importable (the child's working folder)
    ),
    Case(
        "bench-unknown-benchmark",
        lambda s: ["bench", "emt", "--suite", "ev,phonons", "-o", "out"],
        Refused(r"suite.*phonons|phonons.*suite", absent=("out",)),
    ),
    Case(
        "bench-forces-without-references",
        lambda s: ["bench", "emt", "--suite", "forces", "-o", "out"],
        Refused(r"forces benchmark needs reference structures", absent=("out",)),
    ),
    Case(
        "bench-missing-structures-file",
        lambda s: ["bench", "emt", "--suite", "ev", "--ev-structures", "nowhere.extxyz", "-o", "out"],
        Refused(r"nowhere\.extxyz: no such file", absent=("out",)),
    ),
    Case(
        "bench-unknown-potential",
        lambda s: ["bench", "emt", "chgnet-9.9", "--suite", "ev", "-o", "out"],
        Refused(r"unknown potential 'chgnet-9\.9'", absent=("out",)),
    ),
    Case(
        "bench-reference-unknown-labeler",
        lambda s: ["bench", "reference", "--labeler", "turbomole", "-o", "out"],
        Refused(r"labeler", absent=("out",)),
    ),
    Case(
        "bench-builtin-unknown-element",
        lambda s: ["bench", "emt", "--suite", "ev", "--ev-structures", "builtin:elements:Cu,Xx", "-o", "out"],
        Refused(r"unknown element symbol 'Xx'", absent=("out",)),
    ),
    Case(
        "bench-reference-unknown-element",
        lambda s: ["bench", "reference", "--labeler", "emt", "--elements", "Cu,Xx", "-o", "out"],
        Refused(r"key 'elements': .*unknown element symbol\(s\): Xx", absent=("out",)),
    ),
    # -- aloe study: a study that cannot run is refused before anything is written --
    Case(
        "study-unknown-arm",
        lambda s: study(s, {"arms": ["al", "bandit"]}),
        Refused(r"study\.yaml: key 'arms\.1': .*'al', 'random', 'near-eq' or 'combined'", absent=("out",)),
    ),
    Case(
        "study-budget-zero",
        lambda s: study(s, {"per_iteration": 0}),
        Refused(r"study\.yaml: key 'per_iteration': .*greater than or equal to 1", absent=("out",)),
    ),
    Case(
        "study-elements-the-labeler-lacks",
        lambda s: study(s, {"elements": ["Al", "Fe"]}),
        Refused(r"the labeler emt has no parameters for Fe", absent=("out",)),
    ),
    Case(
        "study-test-set-without-structures",  # H has no crystal to relax, and no binaries are asked for
        lambda s: study(s, {"elements": ["H"], "reference": {"binaries": []}}),
        Refused(r"the test set would hold no structures \(section 'reference'\)", absent=("out",)),
    ),
    Case(
        "study-combined-without-its-parts",
        lambda s: study(s, {"arms": ["al", "combined"]}),
        Refused(r"arm 'combined' trains on the data of 'al' and 'near-eq'", absent=("out",)),
    ),
    Case(
        "study-sample-exceeds-the-space",  # Cu, Ni in rock salt: one candidate
        lambda s: study(
            s,
            {
                "elements": ["Cu", "Ni"],
                "generate": {"prototypes": {"source": "builtin", "names": ["aflow_AB_cF8_225_a_b"]}},
            },
        ),
        Refused(r"study: seed_structures = \d+ exceeds the 1 candidate of the space", absent=("out",)),
    ),
    Case(
        "study-stage-section-typo",
        lambda s: study(s, {"train": {"preset": "tiny", "epochz": 3}}),
        Refused(r"study section 'train': key 'epochz': unknown key", absent=("out",)),
    ),
    Case(
        "generate-into-a-foreign-folder",
        lambda s: [*generate_args(s), "-o", foreign_folder(s)],
        foreign("generate", "mine/run.yaml", "mine/run.lock"),
    ),
    Case(
        "screen-into-a-foreign-folder",
        lambda s: screen(s, zero_volume_xyz(s), foreign_folder(s)),
        foreign("screen", "mine/run.yaml", "mine/inputs"),
    ),
    Case(
        "select-into-a-foreign-folder",
        lambda s: ["select", zero_volume_xyz(s), "-o", foreign_folder(s), "--no-progress"],
        foreign("select", "mine/run.yaml", "mine/inputs"),
    ),
    Case(
        "label-into-a-foreign-folder",
        lambda s: label(s, zero_volume_xyz(s), foreign_folder(s)),
        foreign("label", "mine/run.yaml", "mine/work"),
    ),
    Case(
        "train-into-a-foreign-folder",  # inputs that would train: the folder is what stops it
        lambda s: [
            "train",
            labelled_xyz(s),
            "-o",
            foreign_folder(s),
            "--preset",
            "tiny",
            "--e0s",
            "average",
            "--no-progress",
        ],
        foreign("train", "mine/run.yaml", "mine/run.lock", "mine/members", "mine/models"),
    ),
    Case(
        "run-into-a-foreign-folder",
        lambda s: run_loop(s, {}, foreign_folder(s)),
        foreign("run", "mine/config.yaml"),
        subprocess=True,
    ),
    Case(
        "bench-into-a-foreign-folder",
        lambda s: ["bench", "emt", "--suite", "ev", "-o", foreign_folder(s), "--no-progress"],
        foreign("bench", "mine/run.yaml", "mine/structures"),
    ),
    Case(
        "generate-in-a-locked-folder",
        lambda s: [*generate_args(s), "-o", locked_run_folder(s)],
        in_use("locked/run.yaml"),
        subprocess=True,
    ),
    Case(
        "label-in-a-locked-folder",
        lambda s: label(s, zero_volume_xyz(s), locked_run_folder(s)),
        in_use("locked/work"),
        subprocess=True,
    ),
    Case(
        "run-in-a-locked-folder",
        lambda s: run_loop(s, {}, locked_run_folder(s)),
        in_use("locked/config.yaml"),
        subprocess=True,
    ),
]


def _null_coordinate_jsonl() -> str:
    """Two MP-ALOE lines; the second has a ``null`` fractional coordinate (what a NaN becomes in JSON)."""
    import io

    from ase.io import read

    from aloe.data.formats import atoms_to_record

    atoms = read(io.StringIO(labelled_frame()), format="extxyz")
    good = atoms_to_record(atoms)
    bad = json.loads(json.dumps(good))
    bad["structure"]["sites"][0]["abc"][1] = None
    return json.dumps(good) + "\n" + json.dumps(bad) + "\n"


# ---- the driver ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    crashed: str | None  # an exception that escaped the CLI (would have been a traceback)


def run_cli(args: list[str], tmp: Path, in_subprocess: bool) -> Outcome:
    env = {**os.environ, "ALOE_CACHE_DIR": str(tmp / "cache"), "ALOE_PROGRESS": "0"}
    if in_subprocess:
        proc = subprocess.run(
            [sys.executable, "-m", "aloe.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            timeout=CHILD_TIMEOUT_S,  # a case that is not refused any more fails instead of running a whole job
        )
        return Outcome(proc.returncode, proc.stdout, proc.stderr, None)
    # A warning that is not sent to a run log would reach the user's screen: count it as a line of stderr.
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        result = CliRunner().invoke(app, args, env=env)
    stderr = result.stderr + "".join(f"{w.category.__name__}: {w.message}\n" for w in shown)
    crashed = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        crashed = f"{type(result.exception).__name__}: {result.exception}"
    return Outcome(result.exit_code, result.stdout, stderr, crashed)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # a default run folder (runs/...) would land here
    setup = Setup(tmp_path)
    try:
        out = run_cli(case.make(setup), tmp_path, case.subprocess)
    finally:
        setup.close()
    everything = out.stdout + out.stderr
    assert out.crashed is None, f"an exception escaped the CLI: {out.crashed}"
    assert "Traceback" not in everything, everything
    errors = [line for line in out.stderr.splitlines() if line.startswith("aloe: error:")]
    expect = case.expect
    if isinstance(expect, Refused):
        assert out.exit_code == expect.exit_code, everything
        assert len(errors) == 1, everything
        # nothing else on the screen's error stream (a library warning would be a second line)
        assert [line for line in out.stderr.splitlines() if line.strip()] == errors, out.stderr
        assert re.search(expect.pattern, errors[0]), errors[0]
        for rel in expect.absent:
            assert not (tmp_path / rel).exists(), f"{rel} was written"
        return
    assert out.exit_code == 0 and not errors, everything
    recorded = RECORD_READERS[expect.stage](tmp_path / expect.folder)
    assert set(recorded) == set(expect.outcomes), recorded
    for structure_id, (outcome, reason) in expect.outcomes.items():
        got_outcome, got_reason = recorded[structure_id]
        assert re.fullmatch(outcome, got_outcome), (structure_id, recorded[structure_id])
        assert re.search(reason, got_reason), (structure_id, recorded[structure_id])


# ---- beyond the table: what the cases rest on ------------------------------------------------------------------
def test_coincident_atoms_are_zero_apart_like_ase(tmp_path):
    """``min_distances`` against ASE's neighbour list (self-images included, its own zero term excluded)."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    from aloe.structures import StructureBatch

    rng = np.random.default_rng(7)
    frames, twins = [], []
    for k in range(12):
        cell = np.diag(rng.uniform(2.5, 5.0, 3)) + rng.uniform(-0.4, 0.4, (3, 3))
        frac = rng.uniform(0, 1, (int(rng.integers(1, 6)), 3))
        if len(frac) > 1 and k % 3 == 0:
            frac[-1] = frac[0]  # two atoms at one point
        elif len(frac) > 1 and k % 3 == 1:
            frac[-1] = frac[0] + [1.0, 0.0, -1.0]  # the same point, in another image
        twins.append(len(frac) > 1 and k % 3 < 2)
        frames.append(Atoms(f"Cu{len(frac)}", scaled_positions=frac, cell=cell, pbc=True))
    ours = StructureBatch.from_atoms(frames).min_distances()
    for atoms, d in zip(frames, ours, strict=True):
        assert d == pytest.approx(neighbor_list("d", atoms, 6.0).min(), abs=1e-9)
    assert any(twins) and (ours[twins] < 1e-9).all()


def test_degenerate_cells_are_listed_per_structure():
    from ase import Atoms

    from aloe.structures import StructureBatch

    frames = [
        Atoms("Cu", cell=[3.0, 3.0, 3.0], pbc=True),
        Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 0]], cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True),
        Atoms("Cu", cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True),  # coplanar vectors
        Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 0]]),  # an xyz file without a cell
    ]
    batch = StructureBatch.from_atoms(frames)  # no LinAlgError
    problems = batch.problems()
    assert sorted(problems) == [1, 2, 3]
    assert all(p.startswith("degenerate cell") for p in problems.values())
    d = batch.min_distances()
    assert d[0] == pytest.approx(3.0) and np.isnan(d[1:]).all()


LOCK_HOLDER = """
import os, sys, time
from aloe.runs import claim_folder

def child_main(marker):
    open(marker, "w").close()  # written after the fork hooks ran (they drop the inherited lock)
    time.sleep(60)

claim = claim_folder(sys.argv[1], "run.yaml", "a test")
if sys.argv[2] == "fork":  # a forked worker that outlives its parent must not keep the folder locked
    import multiprocessing
    marker = sys.argv[1] + ".child-started"
    child = multiprocessing.get_context("fork").Process(target=child_main, args=(marker,), daemon=False)
    child.start()
    while not os.path.exists(marker):  # on a busy machine the child may not have run at all yet
        time.sleep(0.01)
    print(child.pid, flush=True)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("workers", ["alone", "fork"])
def test_a_kill_9_releases_the_lock(tmp_path, workers):
    folder = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(folder), workers], stdout=subprocess.PIPE, text=True
    )
    child_pid = int(proc.stdout.readline()) if workers == "fork" else None
    assert proc.stdout.readline().strip() == "ready"
    with pytest.raises(Exception, match=rf"run folder .*run in use by process {proc.pid}\b"):
        claim_folder(folder, "run.yaml", "the test")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        claim = claim_folder(folder, "run.yaml", "the test")  # the kernel dropped the dead holder's lock
        claim.release()
    finally:
        if child_pid is not None:
            os.kill(child_pid, signal.SIGKILL)


def test_a_killed_stage_resumes_after_kill_9(tmp_path):
    """A generate run killed with SIGKILL leaves a lock file behind that does not block the resumed run."""
    args = [sys.executable, "-m", "aloe.cli.main", "generate", "-p", "builtin:binary", "--sample", "30000"]
    args += ["--chunk-size", "1500", "--no-progress", "-o", str(tmp_path / "run")]
    env = {**os.environ, "ALOE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunks = tmp_path / "run" / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and not list(chunks.glob("chunk-*.parquet")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "run" / "run.lock").exists()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "summary.yaml").exists()


def test_shards_share_a_folder_but_not_a_shard(tmp_path):
    """Shards of one generate run may work in its folder at once; the same shard twice, or a whole run, may not."""
    from aloe.errors import AloeError

    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom aloe.runs import claim_folder\n"
            "c = claim_folder(sys.argv[1], 'run.yaml', 't', 'run-shard-0-of-2.lock', shared=True)\n"
            "print('ready', flush=True)\ntime.sleep(60)\n",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        other = claim_folder(folder, "run.yaml", "t", "run-shard-1-of-2.lock", shared=True)
        other.release()
        with pytest.raises(AloeError, match=f"in use by process {holder.pid}"):
            claim_folder(folder, "run.yaml", "t", "run-shard-0-of-2.lock", shared=True)
        with pytest.raises(AloeError, match="in use by process"):
            claim_folder(folder, "run.yaml", "t")
    finally:
        holder.kill()
        holder.wait()


def test_a_resumed_stage_in_the_same_process_shares_the_lock(tmp_path):
    first = claim_folder(tmp_path / "run", "run.yaml", "t")
    second = claim_folder(tmp_path / "run", "run.yaml", "t")
    second.release()
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom aloe.runs import claim_folder\nclaim_folder(sys.argv[1], 'run.yaml', 't')",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
    )
    assert "in use by process" in probe.stderr  # still held by ``first``
    first.release()
    probe = subprocess.run(probe.args, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
