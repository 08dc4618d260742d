from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aloe.errors import AloeError
from aloe.prototypes import distinct_occupations, load_prototypes, parse_weight_from_name
from aloe.prototypes.library import (
    Prototype,
    read_weight_table,
    shortest_periodic_distances,
    wrap_fractional,
)
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


def test_wrap_fractional_moves_sites_only_by_whole_lattice_vectors():
    rng = np.random.default_rng(5)
    # Random values, values just below 1 and 0, whole numbers and tiny negatives that round onto 1.0.
    x = np.concatenate(
        [
            rng.uniform(-3.0, 3.0, 3000),
            1.0 - rng.uniform(0.0, 2e-5, 200),
            np.nextafter(np.arange(-2.0, 3.0), -np.inf),
            np.arange(-2.0, 3.0),
            [-0.0, -1e-17, -(2.0**-54), -(2.0**-53), 0.99999238, 0.9999999999999999],
        ]
    )
    wrapped = wrap_fractional(x)
    assert np.all((wrapped >= 0.0) & (wrapped < 1.0))
    shift = x - wrapped
    assert np.abs(shift - np.round(shift)).max() <= 2**-52  # whole lattice vectors, to round-off
    inside = (x >= 0.0) & (x < 1.0)
    assert np.array_equal(wrapped[inside], x[inside])  # already inside: kept bit for bit
    # numpy's own modulo (what pymatgen's to_unit_cell uses) agrees wherever it stays below 1.
    ref = np.mod(x, 1.0)
    assert np.array_equal(wrapped[ref < 1.0], ref[ref < 1.0])
    assert np.all(wrapped[ref == 1.0] == 0.0) and np.any(ref == 1.0)


def test_from_structure_keeps_coordinates_as_read():
    from pymatgen.core import Lattice, Structure

    frac = np.array(
        [[0.0, 0.0, 0.0], [0.99999238, 0.5, 0.99999999], [0.25, 1.25, -0.25], [-1e-17, 0.5, 0.75]]
    )
    structure = Structure(Lattice.from_parameters(3.1, 3.4, 4.2, 85, 95, 100), ["H", "He", "He", "H"], frac)
    proto = Prototype.from_structure(structure, "test")
    expected = [[0.0, 0.0, 0.0], [0.99999238, 0.5, 0.99999999], [0.25, 0.25, 0.75], [0.0, 0.5, 0.75]]
    assert proto.frac_coords.tolist() == expected
    # Every site is where pymatgen has it, modulo lattice vectors: the same periodic distances.
    d = shortest_periodic_distances(proto.lattice, proto.frac_coords, cutoff=9.0)
    centers, neighbors, _, dist = structure.get_neighbor_list(9.0)
    for i in range(len(structure)):
        for j in range(len(structure)):
            assert d[i, j] == pytest.approx(dist[(centers == i) & (neighbors == j)].min(), abs=1e-12)


def test_published_coordinates_just_below_one_are_kept(published_dir):
    from pymatgen.core import Structure

    lib = load_prototypes(published_dir)
    near_one = 0
    for proto in lib:
        as_read = Structure.from_file(proto.source).frac_coords  # what the MP-ALOE reference code reads
        # The published files hold coordinates in [0, 1) only, so aloe must keep every one bit for bit.
        assert np.all((as_read >= 0.0) & (as_read < 1.0)), proto.name
        assert np.array_equal(proto.frac_coords, as_read), proto.name
        near_one += bool(np.any(as_read > 1.0 - 1e-5))
    assert near_one >= 10  # e.g. proto527 (0.99999238) and proto642: the case np.isclose used to move


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
