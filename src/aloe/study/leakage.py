"""The held-out test set of a study: the test structures that match no training structure of any arm.

A test crystal that matches a training structure (pymatgen ``StructureMatcher``, compared within the same reduced
formula) is dropped with its displaced supercells; a supercell that matches one is dropped alone. What is kept is
written as an ``aloe bench reference`` folder (``crystals.extxyz``, ``supercells.extxyz``, ``atom_energies.json``:
the kept frames copied byte for byte from the test set), which ``aloe bench --structures`` reads; every match is
listed in ``leakage.json``.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aloe import layout
from aloe.runs import atomic_path
from aloe.study.settings import LeakageSettings


def extxyz_frames(path: Path) -> list[str]:
    """The frames of an extxyz file as their exact text (count line, comment line, atom lines)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    frames, k = [], 0
    while k < len(lines):
        if not lines[k].strip():
            k += 1
            continue
        n = int(lines[k].split()[0])
        frames.append("".join(lines[k : k + n + 2]))
        k += n + 2
    return frames


def training_structures(label_runs: Iterable[Path], root: Path | None = None) -> list[tuple[str, Any]]:
    """``(where, pymatgen Structure)`` of every record of some label runs.

    ``where`` is ``<folder>#<record>``, the folder relative to ``root`` when it lies inside it.
    """
    from pymatgen.core import Structure

    from aloe.data.formats import read_records

    out = []
    for folder in label_runs:
        name = Path(folder)
        if root is not None and name.is_relative_to(root):
            name = name.relative_to(root)
        for k, doc in enumerate(read_records(folder)):
            out.append((f"{name.as_posix()}#{k}", Structure.from_dict(doc["structure"])))
    return out


def find_matches(
    test: Iterable[tuple[str, Any]], train: Iterable[tuple[str, Any]], settings: LeakageSettings
) -> dict[str, list[str]]:
    """``{test id: [matching training structures]}`` (only test structures with a match).

    Parameters
    ----------
    test, train
        ``(id, pymatgen Structure)`` pairs.
    settings
        The matcher's tolerances.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(
        ltol=settings.ltol, stol=settings.stol, angle_tol=settings.angle_tol, scale=settings.scale
    )
    by_formula: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for where, structure in train:
        by_formula[structure.composition.reduced_formula].append((where, structure))
    out: dict[str, list[str]] = {}
    for ident, structure in test:
        hits = [
            where
            for where, other in by_formula.get(structure.composition.reduced_formula, [])
            if matcher.fit(structure, other)
        ]
        if hits:
            out[ident] = hits
    return out


def write_heldout_set(
    test_dir: Path, label_runs: Iterable[Path], out_dir: Path, settings: LeakageSettings, root: Path
) -> dict[str, Any]:
    """Match the test set of ``test_dir`` against the training data, write the kept part to ``out_dir``.

    Returns
    -------
    dict
        ``test_structures``, ``matched`` (test structures with a match), ``dropped`` (those and the supercells of
        matched crystals), ``kept`` (counts), ``training_structures`` (how many were compared against) and
        ``matches`` (test id -> training structures, folders relative to ``root``); the same goes to
        ``leakage.json`` beside ``out_dir``.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    from aloe.bench.structures import read_reference_set

    reference = read_reference_set(str(test_dir))
    test = [(s.id, AseAtomsAdaptor.get_structure(s.atoms)) for s in reference.structures]
    train = training_structures(label_runs, root)
    matches = find_matches(test, train, settings)
    dropped_crystals = {i for i in matches if "/sc" not in i}
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = 0
    for name in (layout.REFERENCE_CRYSTALS, layout.REFERENCE_SUPERCELLS):
        source = test_dir / name
        if not source.exists():
            continue
        frames = extxyz_frames(source)
        ids = [s.id for s in read_reference_set(str(source)).structures]
        keep = [
            frame
            for frame, ident in zip(frames, ids, strict=True)
            if ident not in matches and ident.split("/sc")[0] not in dropped_crystals
        ]
        kept += len(keep)
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text("".join(keep), encoding="utf-8")
    shutil.copy2(test_dir / layout.REFERENCE_ATOM_ENERGIES, out_dir / layout.REFERENCE_ATOM_ENERGIES)
    report = {
        "test_structures": len(test),
        "training_structures": len(train),
        "matched": len(matches),
        "dropped": len(test) - kept,
        "kept": kept,
        "matches": matches,
        "matcher": settings.model_dump(),
    }
    with atomic_path(out_dir.parent / layout.STUDY_LEAKAGE) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report


__all__ = ["extxyz_frames", "find_matches", "training_structures", "write_heldout_set"]
