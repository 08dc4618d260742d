from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aloe.errors import AloeError
from aloe.prototypes import distinct_occupations, load_prototypes, parse_weight_from_name
from aloe.prototypes.library import read_weight_table, shortest_periodic_distances
from tests.conftest import CSCL, ROCKSALT


def test_weight_from_file_name():
    assert parse_weight_from_name(
        "ICSD_POSCAR_proto661_3n_sg-123_abc2.89-2.89-4.15_ang90.0-90.0-90.0_weight0.006735"
    ) == pytest.approx(0.006735)
    assert parse_weight_from_name("MP_POSCAR_proto1_2n_sg-1_abc1.0-1.0-1.0_ang90.0-90.0-90.0") is None
    assert parse_weight_from_name("x_weight1e-3") == pytest.approx(1e-3)


def test_load_folder(proto_dir):
    lib = load_prototypes(proto_dir)
    assert [p.name for p in lib] == [
        "POSCAR_cscl",
        "POSCAR_fluorite",
        "POSCAR_perovskite_weight0.25",
        "POSCAR_rocksalt",
    ]
    assert lib.report.skipped == []
    perov = lib["POSCAR_perovskite_weight0.25"]
    assert perov.arity == 3 and perov.n_sites == 5 and perov.weight == pytest.approx(0.25)
    assert perov.formula == "H1He1Li3"
    assert lib["POSCAR_rocksalt"].weight is None
    assert lib.filter(arity=[2]).prototypes[0].arity == 2 and len(lib.filter(arity=[2])) == 3
    with pytest.raises(AloeError, match="no prototype named 'nope'"):
        lib["nope"]


def test_weight_side_table_overrides_name(proto_dir, tmp_path):
    table = tmp_path / "weights.csv"
    table.write_text("name,weight\nPOSCAR_perovskite_weight0.25,0.04\nPOSCAR_cscl,0.5\n")
    lib = load_prototypes(proto_dir, weights=table)
    assert lib["POSCAR_perovskite_weight0.25"].weight == pytest.approx(0.04)
    assert lib["POSCAR_cscl"].weight == pytest.approx(0.5)
    assert read_weight_table(table)["POSCAR_cscl"] == 0.5
    bad = tmp_path / "bad.csv"
    bad.write_text("POSCAR_cscl,0.5\nPOSCAR_rocksalt,-1\n")
    with pytest.raises(AloeError, match=r"bad.csv: row 2: weight -1.0 must be"):
        read_weight_table(bad)


def _bad_files(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "POSCAR_good").write_text(CSCL)
    (folder / "POSCAR_binary").write_bytes(b"\x00\xff\xfe\x89PNG\x00" * 20)
    (folder / "POSCAR_malformed").write_text("just some words\nnot a poscar\n")
    (folder / "POSCAR_unknown").write_text(ROCKSALT.replace("H He", "Fe He"))
    (folder / "POSCAR_skip_he").write_text(ROCKSALT.replace("H He", "H Li"))
    (folder / "POSCAR_zero").write_text(ROCKSALT.replace("0.0 2.0 2.0", "0.0 0.0 0.0"))
    (folder / "POSCAR_negative").write_text(CSCL.replace("0.0 0.0 3.0", "0.0 0.0 -3.0"))
    (folder / "POSCAR_overlap").write_text(CSCL.replace("0.5 0.5 0.5", "0.0 0.0 0.001"))
    (folder / "POSCAR_empty").write_text("")
    (folder / "notes.txt").write_text("ignored: not a structure file pattern")
    return {
        "POSCAR_binary": "not a text structure file",
        "POSCAR_malformed": "malformed structure file",
        "POSCAR_unknown": "unknown placeholder 'Fe'",
        "POSCAR_skip_he": "placeholders must be used in order: He missing before Li",
        "POSCAR_zero": "zero cell volume",
        "POSCAR_negative": "negative cell volume",
        "POSCAR_overlap": "overlapping sites 0 and 1",
        "POSCAR_empty": "malformed structure file (empty file)",
    }


def test_bad_files_are_skipped_with_one_line_reasons(tmp_path):
    expected = _bad_files(tmp_path / "mixed")
    lib = load_prototypes(tmp_path / "mixed")
    assert [p.name for p in lib] == ["POSCAR_good"]
    reasons = {Path(path).name: reason for path, reason in lib.report.skipped}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])
    for line in lib.report.lines():
        assert "\n" not in line and line.startswith(str(tmp_path))


def test_missing_or_empty_source(tmp_path):
    with pytest.raises(AloeError, match="does not exist"):
        load_prototypes(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AloeError, match="no structure files"):
        load_prototypes(tmp_path / "empty")


def test_cif_file_loads(tmp_path):
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(3.0), ["H", "He"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.to(filename=str(tmp_path / "cscl.cif"))
    lib = load_prototypes(tmp_path / "cscl.cif")
    assert lib[0].name == "cscl" and lib[0].n_sites == 2


def test_shortest_periodic_distances_by_hand():
    lattice = np.diag([3.0, 3.0, 4.0])
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    d = shortest_periodic_distances(lattice, frac, cutoff=9.0)
    assert d[0, 0] == pytest.approx(3.0) and d[1, 1] == pytest.approx(3.0)
    assert d[0, 1] == pytest.approx(np.sqrt(1.5**2 * 2 + 2.0**2))
    assert d[0, 1] == d[1, 0]
    assert np.isinf(shortest_periodic_distances(lattice, frac, cutoff=2.5)).all()


@pytest.mark.parametrize(
    ("name", "n_occ"),
    [("POSCAR_rocksalt", 1), ("POSCAR_cscl", 1), ("POSCAR_fluorite", 2), ("POSCAR_perovskite_weight0.25", 6)],
)
def test_distinct_occupations_of_known_prototypes(proto_dir, name, n_occ):
    lib = load_prototypes(proto_dir)
    occ = distinct_occupations(lib[name])
    assert len(occ) == n_occ
    assert occ[0] == tuple(range(lib[name].arity))


def test_perovskite_occupations_put_each_species_on_the_big_sublattice(proto_dir):
    perov = load_prototypes(proto_dir)["POSCAR_perovskite_weight0.25"]
    occ = distinct_occupations(perov)
    # A (12-fold, corner) and B (6-fold, body centre) are not equivalent: moving the origin to B puts X on the
    # cube edges, not the faces. So all 3! assignments are distinct, each element twice on the X sublattice.
    assert sorted(perm[2] for perm in occ) == [0, 0, 1, 1, 2, 2]


def test_published_prototypes_all_load(published_dir):
    lib = load_prototypes(published_dir)
    assert len(lib) == 817 and lib.report.skipped == []
    binaries = [p for p in lib if p.arity == 2]
    ternaries = [p for p in lib if p.arity == 3]
    assert len(binaries) == 660 and len(ternaries) == 157
    assert all(p.weight is None for p in binaries)
    assert all(p.weight is not None and p.weight > 0 for p in ternaries)
    assert all(2 <= p.n_sites <= 8 for p in lib)
    assert all(p.name.startswith("MP_POSCAR_proto") for p in binaries)
    assert all(p.name.startswith("ICSD_POSCAR_proto") for p in ternaries)
