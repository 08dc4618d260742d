from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("ALOE_PROGRESS", "0")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PUBLISHED_PROTOTYPES = SHARED_DATA / "mp-aloe-prototypes"

# Small hand-made prototypes (POSCAR text) with known distinct occupations.
ROCKSALT = """rocksalt
1.0
0.0 2.0 2.0
2.0 0.0 2.0
2.0 2.0 0.0
H He
1 1
direct
0.0 0.0 0.0
0.5 0.5 0.5
"""
CSCL = """CsCl
1.0
3.0 0.0 0.0
0.0 3.0 0.0
0.0 0.0 3.0
H He
1 1
direct
0.0 0.0 0.0
0.5 0.5 0.5
"""
FLUORITE = """fluorite (HHe2)
1.0
0.0 2.7 2.7
2.7 0.0 2.7
2.7 2.7 0.0
H He
1 2
direct
0.0 0.0 0.0
0.25 0.25 0.25
0.75 0.75 0.75
"""
PEROVSKITE = """cubic perovskite (H He Li3)
1.0
3.9 0.0 0.0
0.0 3.9 0.0
0.0 0.0 3.9
H He Li
1 1 3
direct
0.0 0.0 0.0
0.5 0.5 0.5
0.5 0.5 0.0
0.5 0.0 0.5
0.0 0.5 0.5
"""


def write_prototypes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "POSCAR_rocksalt").write_text(ROCKSALT)
    (folder / "POSCAR_cscl").write_text(CSCL)
    (folder / "POSCAR_fluorite").write_text(FLUORITE)
    (folder / "POSCAR_perovskite_weight0.25").write_text(PEROVSKITE)
    return folder


@pytest.fixture
def proto_dir(tmp_path: Path) -> Path:
    return write_prototypes(tmp_path / "protos")


@pytest.fixture
def published_dir() -> Path:
    if not PUBLISHED_PROTOTYPES.is_dir():
        pytest.skip(
            f"published MP-ALOE prototypes not found at {PUBLISHED_PROTOTYPES} (../shared/data is absent)"
        )
    return PUBLISHED_PROTOTYPES
