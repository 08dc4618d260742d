"""Synthetic documents in the MatPES / MP-ALOE schema for the data-format tests (no pymatgen needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from aloe.data.formats import structure_dict


def make_doc(
    n: int = 2,
    seed: int = 0,
    mp_id: str | None = "mp-1",
    *,
    symbols: list[str] | None = None,
    energy: float | None = None,
    forces: Any = None,
    stress: Any = None,
    functional: str = "r2SCAN",
    cohesive: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A document with a random triclinic cell of ``n`` sites (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(3.0, 6.0, 3)) + rng.uniform(-0.4, 0.4, (3, 3))
    frac = rng.uniform(0.0, 1.0, (n, 3))
    symbols = symbols or [("Na", "Cl", "Fe", "O")[k % 4] for k in range(n)]
    positions = frac @ cell
    doc: dict[str, Any] = {
        "structure": structure_dict(cell, symbols, positions),
        "energy": float(rng.normal(-4.0 * n, 1.0)) if energy is None else energy,
        "forces": rng.normal(0.0, 0.5, (n, 3)).tolist() if forces is None else forces,
        "stress": rng.normal(0.0, 20.0, 6).tolist() if stress is None else stress,
        "matpes_id": f"matpes-{seed}",
        "nsites": n,
        "elements": sorted(set(symbols)),
        "functional": functional,
        "cohesive_energy_per_atom": cohesive,
        "provenance": {"original_mp_id": mp_id},
    }
    doc.update(extra)
    return doc


def write_jsonl(path: Path, docs: list[Any], raw_lines: dict[int, str] | None = None) -> Path:
    """Docs as JSON lines; ``raw_lines`` (1-based line -> text) replaces lines verbatim."""
    lines = [json.dumps(d) for d in docs]
    for k, text in (raw_lines or {}).items():
        lines[k - 1] = text
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        import gzip

        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def write_json_list(path: Path, docs: list[Any], indent: int | None = None) -> Path:
    """Docs as ONE JSON list (MatPES's layout)."""
    text = json.dumps(docs, indent=indent)
    if path.name.endswith(".gz"):
        import gzip

        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def leftovers(folder: Path) -> list[str]:
    """Temp files a writer left behind (there must be none)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
