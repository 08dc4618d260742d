from __future__ import annotations

import gzip
import inspect
import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from aloe.data import formats
from aloe.data.formats import (
    RecordReader,
    convert,
    detect_format,
    read_records,
    record_to_atoms,
    structure_arrays,
    write_records,
)
from aloe.data.records import EV_PER_A3_IN_KBAR, make_record, stress_from_kbar
from aloe.errors import AloeError, InputFileError
from tests.data import leftovers, make_doc, write_json_list, write_jsonl

ALL_NAMES = ["d.jsonl", "d.jsonl.gz", "d.json", "d.json.gz", "d.xyz", "d.extxyz.gz", "d.db"]
TOL = 1e-10


def docs(k: int = 4) -> list[dict]:
    out = [make_doc(n=2 + s % 5, seed=s, mp_id=None if s == 1 else f"mp-{s}") for s in range(k)]
    if k > 2:
        out[2]["functional"] = "EMT (stand-in, not DFT)"
    if k > 3:
        out[3]["structure"]["sites"][0]["properties"] = {"magmom": 0.5}
        for site in out[3]["structure"]["sites"][1:]:
            site["properties"] = {"magmom": -0.25}
    return out


def assert_same(a: dict, b: dict, tol: float = TOL) -> None:
    ca, sa, pa, pbca = structure_arrays(a["structure"])
    cb, sb, pb, pbcb = structure_arrays(b["structure"])
    assert sa == sb and pbca == pbcb
    np.testing.assert_allclose(cb, ca, atol=tol, rtol=0)
    np.testing.assert_allclose(pb, pa, atol=tol, rtol=0)
    assert abs(a["energy"] - b["energy"]) <= tol
    np.testing.assert_allclose(b["forces"], a["forces"], atol=tol, rtol=0)
    np.testing.assert_allclose(b["stress"], a["stress"], atol=tol, rtol=0)


# ---- round trips -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_NAMES)
def test_round_trip_each_format(tmp_path, name):
    original = docs()
    assert write_records(original, tmp_path / name) == len(original)
    back = list(read_records(tmp_path / name))
    assert len(back) == len(original)
    for a, b in zip(original, back, strict=True):
        assert_same(a, b)
        assert b["functional"] == a["functional"]
        assert b["matpes_id"] == a["matpes_id"]
        assert b["provenance"]["original_mp_id"] == a["provenance"]["original_mp_id"]
    assert back[3]["structure"]["sites"][0]["properties"]["magmom"] == 0.5
    assert leftovers(tmp_path) == []


def test_chain_jsonl_json_extxyz_db_jsonl(tmp_path):
    original = docs(6)
    write_records(original, tmp_path / "a.jsonl.gz")
    chain = ["b.json.gz", "c.extxyz", "d.db", "e.json", "f.jsonl"]
    src = tmp_path / "a.jsonl.gz"
    for name in chain:
        result = convert(src, tmp_path / name)
        assert result.n_written == 6 and result.n_skipped == 0
        src = tmp_path / name
    for a, b in zip(original, read_records(src), strict=True):
        assert_same(a, b)
        assert b["provenance"] == a["provenance"]


def test_records_from_extxyz_and_db_are_pymatgen_structures(tmp_path):
    from pymatgen.core import Structure

    original = docs(3)
    for name in ("x.xyz", "x.db"):
        write_records(original, tmp_path / name)
        for a, b in zip(original, read_records(tmp_path / name), strict=True):
            sa, sb = Structure.from_dict(a["structure"]), Structure.from_dict(b["structure"])
            np.testing.assert_allclose(sb.lattice.matrix, sa.lattice.matrix, atol=TOL)
            np.testing.assert_allclose(sb.cart_coords, sa.cart_coords, atol=TOL)
            np.testing.assert_allclose(sb.frac_coords, sa.frac_coords, atol=TOL)
            assert [str(s) for s in sb.species] == [str(s) for s in sa.species]
            assert b["nsites"] == len(sa) and b["formula_pretty"] == sa.composition.reduced_formula
            assert b["abs_forces"] == pytest.approx(np.linalg.norm(a["forces"], axis=1).tolist())


def test_structure_arrays_match_pymatgen():
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    doc = make_doc(n=7, seed=3)
    cell, symbols, positions, pbc = structure_arrays(doc["structure"])
    atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(doc["structure"]))
    np.testing.assert_allclose(cell, atoms.cell[:], atol=1e-12)
    np.testing.assert_allclose(positions, atoms.positions, atol=1e-12)
    assert symbols == atoms.get_chemical_symbols() and pbc == [True] * 3


# ---- units and signs ---------------------------------------------------------------------------------------------
def test_stress_sign_and_units_in_extxyz_and_db(tmp_path):
    import ase.db
    import ase.io

    doc = make_doc(n=2, seed=5, stress=[30.0, 30.0, 30.0, 3.0, 2.0, 1.0])  # kbar, compressive positive
    # eV/A^3, tensile positive
    expected_ase = -np.array([30.0, 30.0, 30.0, 3.0, 2.0, 1.0]) / EV_PER_A3_IN_KBAR
    np.testing.assert_allclose(stress_from_kbar(doc["stress"]), expected_ase, rtol=1e-15)
    write_records([doc], tmp_path / "s.xyz")
    atoms = ase.io.read(tmp_path / "s.xyz")
    np.testing.assert_allclose(atoms.info["REF_stress"], expected_ase, rtol=1e-15)
    assert atoms.info["REF_stress"][0] < 0  # compression is negative in ASE's convention
    assert atoms.info["REF_energy"] == doc["energy"]
    np.testing.assert_array_equal(atoms.arrays["REF_forces"], np.array(doc["forces"]))
    write_records([doc], tmp_path / "s.db")
    row = next(ase.db.connect(tmp_path / "s.db").select())
    np.testing.assert_allclose(row.stress, expected_ase, rtol=1e-15)
    np.testing.assert_allclose(row.toatoms().get_stress(), expected_ase, rtol=1e-15)
    assert row.energy == doc["energy"]
    assert record_to_atoms(doc, ref_keys=False).get_stress() == pytest.approx(expected_ase, rel=1e-15)


def test_ase_stress_survives_record_and_extxyz(tmp_path):
    """ASE's stress -> make_record (kbar, VASP sign) -> extxyz REF_stress -> record: the same numbers."""
    import ase.io
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.5) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    stress = atoms.get_stress()
    record = make_record(
        atoms,
        atoms.get_potential_energy(),
        atoms.get_forces(),
        stress,
        functional="EMT (stand-in, not DFT)",
        code="emt",
        code_version="test",
        settings={},
    )
    write_records([record], tmp_path / "cu.extxyz")
    back_atoms = ase.io.read(tmp_path / "cu.extxyz")
    np.testing.assert_allclose(back_atoms.info["REF_stress"], stress, atol=TOL)
    np.testing.assert_allclose(back_atoms.arrays["REF_forces"], atoms.get_forces(), atol=TOL)
    np.testing.assert_allclose(back_atoms.positions, atoms.positions, atol=TOL)
    assert back_atoms.info["functional"] == "EMT (stand-in, not DFT)"
    assert back_atoms.info["aloe_record_id"] == record["aloe_record_id"]
    assert_same(record, next(read_records(tmp_path / "cu.extxyz")))


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_mace_reads_the_extxyz(tmp_path):
    """mace-torch's loader with its default keys (REF_energy, REF_forces, REF_stress) and its AtomicData.

    MACE's training data hold the stress as a 3x3 matrix with ASE's sign, in eV/A^3.
    """
    pytest.importorskip("mace")
    from mace.data.atomic_data import AtomicData
    from mace.data.utils import KeySpecification, load_from_xyz
    from mace.tools.utils import AtomicNumberTable

    doc = make_doc(n=3, seed=2, stress=[10.0, 20.0, 30.0, 4.0, 5.0, 6.0])
    write_records([doc], tmp_path / "train.xyz")
    _, configs = load_from_xyz(
        str(tmp_path / "train.xyz"), key_specification=KeySpecification.from_defaults()
    )
    props = configs[0].properties
    assert props["energy"] == pytest.approx(doc["energy"], abs=TOL)
    np.testing.assert_allclose(props["forces"], doc["forces"], atol=TOL)
    data = AtomicData.from_config(configs[0], z_table=AtomicNumberTable([8, 11, 17, 26]), cutoff=4.0)
    xx, yy, zz, yz, xz, xy = -np.array(doc["stress"]) / EV_PER_A3_IN_KBAR
    expected = [[[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]]
    np.testing.assert_allclose(data.stress.double().numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(data.forces.double().numpy(), doc["forces"], rtol=1e-6)


def test_extxyz_matches_ase_writer(tmp_path):
    """aloe's direct writer and ase.io.write of the same Atoms read back alike (ASE rounds to 8 decimals)."""
    import ase.io

    original = docs(4)
    write_records(original, tmp_path / "aloe.xyz")
    frames = []
    for doc in original:
        atoms = record_to_atoms(doc)  # REF_ keys, ids, provenance, REF_magmoms
        frames.append(atoms)
    ase.io.write(tmp_path / "ase.xyz", frames, format="extxyz")
    ours = ase.io.read(tmp_path / "aloe.xyz", ":")
    theirs = ase.io.read(tmp_path / "ase.xyz", ":")
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs, strict=True):
        assert set(a.info) == set(b.info) and set(a.arrays) == set(b.arrays)
        np.testing.assert_allclose(a.cell[:], b.cell[:], atol=1e-12)
        assert (a.pbc == b.pbc).all() and a.get_chemical_symbols() == b.get_chemical_symbols()
        for key in a.arrays:
            np.testing.assert_allclose(a.arrays[key], b.arrays[key], atol=1e-7)
        for key in a.info:
            if isinstance(a.info[key], str | dict):
                assert a.info[key] == b.info[key], key
            else:
                np.testing.assert_allclose(a.info[key], b.info[key], rtol=1e-12)


@pytest.mark.parametrize(
    "value", ["r2SCAN", "mp-149", "123", "1e5", "T", "True", "with space", 'q"uote', "back\\slash", "a=b"]
)
def test_extxyz_info_strings_read_back_as_strings(tmp_path, value):
    import ase.io

    doc = make_doc(seed=1, functional=value, matpes_id=value)
    write_records([doc], tmp_path / "v.xyz")
    atoms = ase.io.read(tmp_path / "v.xyz")
    assert atoms.info["functional"] == value and atoms.info["matpes_id"] == value
    assert next(read_records(tmp_path / "v.xyz"))["functional"] == value


def test_float_text_is_exact_both_ways():
    """orjson's float text and the repr fallback both read back bit for bit."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 6)) * 10.0 ** rng.integers(-300, 300, (50, 6))
    values[0, :4] = [0.0, -0.0, 1e-7, 1.7976931348623157e308]
    for dump in (formats._dump_floats, formats._repr_floats):
        rows = dump(values)[2:-2].split(b"] [")
        back = np.array([[float(x) for x in row.split(b",")] for row in rows])
        np.testing.assert_array_equal(back, values)
        assert np.signbit(back[0, 1])
        flat = dump(values[3])[1:-1].split(b",")
        np.testing.assert_array_equal([float(x) for x in flat], values[3])


# ---- formats -------------------------------------------------------------------------------------------------
def test_detect_format():
    assert detect_format("a/MP-ALOE-2025.jsonl.gz") == "jsonl"
    assert detect_format("MatPES-R2SCAN-2025.1.json.gz") == "json"
    assert detect_format("train.extxyz") == detect_format("t.xyz") == detect_format("t.xyz.gz") == "extxyz"
    assert detect_format("x.db") == "db"
    with pytest.raises(AloeError, match="cannot tell the format"):
        detect_format("x.cif")
    with pytest.raises(AloeError, match="unknown record format"):
        RecordReader(Path("x.jsonl"), "parquet")


def test_named_format_overrides_the_name(tmp_path):
    write_records(docs(2), tmp_path / "data.txt", format="jsonl")
    assert len(list(read_records(tmp_path / "data.txt", "jsonl"))) == 2


def test_empty_inputs(tmp_path):
    for name in ("e.jsonl", "e.json"):
        write_records([], tmp_path / name)
        assert list(read_records(tmp_path / name)) == []
    assert json.loads((tmp_path / "e.json").read_text()) == []
    (tmp_path / "blank.jsonl").write_text("\n\n")
    assert list(read_records(tmp_path / "blank.jsonl")) == []


def test_json_list_layout(tmp_path):
    write_records(docs(3), tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    assert text.startswith("[\n{") and text.rstrip().endswith("}\n]") and text.count(",\n{") == 2
    assert len(json.loads(text)) == 3


# ---- bad input -----------------------------------------------------------------------------------------------
def _fails(src: Path, out: Path, match: str, **kwargs) -> InputFileError:
    with pytest.raises(InputFileError, match=match) as info:
        convert(src, out, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(src))
    assert not out.exists(), "partial output left behind"
    assert not out.parent.exists() or leftovers(out.parent) == []  # bad input may be refused before any write
    return info.value


@pytest.mark.parametrize("name", ["t.jsonl.gz", "t.json.gz", "t.extxyz.gz"])
def test_truncated_gzip(tmp_path, name):
    src = tmp_path / name
    write_records(docs(40), src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out" / "o.jsonl"
    _fails(src, out, "truncated")


def test_not_gzip(tmp_path):
    src = tmp_path / "plain.jsonl.gz"
    src.write_text(json.dumps(make_doc()) + "\n")
    _fails(src, tmp_path / "o.jsonl", "not a valid gzip file")


def test_bad_json_line_names_its_number_and_skip_bad_counts(tmp_path):
    src = write_jsonl(tmp_path / "b.jsonl", docs(5), raw_lines={3: '{"structure": {', 5: "not json"})
    out = tmp_path / "o.jsonl"
    _fails(src, out, r"line 3: bad JSON")
    result = convert(src, out, skip_bad=True)
    assert (result.n_written, result.n_skipped) == (3, 2)
    assert result.messages[0].startswith("line 3: bad JSON") and result.messages[1].startswith("line 5")
    assert [d["matpes_id"] for d in read_records(out)] == ["matpes-0", "matpes-1", "matpes-3"]


def test_existing_output_kept_when_conversion_fails(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("precious\n")
    src = write_jsonl(tmp_path / "b.jsonl", docs(3), raw_lines={3: "{oops"})
    with pytest.raises(InputFileError):
        convert(src, out)
    assert out.read_text() == "precious\n" and leftovers(tmp_path) == []


@pytest.mark.parametrize("key", ["structure", "energy", "forces", "stress"])
def test_missing_key(tmp_path, key):
    bad = docs(3)
    del bad[1][key]
    src = write_jsonl(tmp_path / "m.jsonl", bad)
    _fails(src, tmp_path / "o.xyz", rf"line 2: missing key '{key}'")
    assert convert(src, tmp_path / "o.xyz", skip_bad=True).n_skipped == 1


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("structure", [1, 2], "'structure' must be a pymatgen structure dict"),
        ("structure", {"lattice": {}}, "'structure' has no list of 'sites'"),
        ("energy", "-1.0", "'energy' must be a finite number"),
        ("energy", None, "'energy' must be a finite number"),
        ("energy", True, "'energy' must be a finite number"),
        ("forces", "zero", "'forces' must be an n x 3 list of numbers"),
        ("forces", 0.0, r"'forces' have shape \(\) but the structure has 4 sites"),
        ("forces", [[1, 2, "x"], [0, 0, 0]], "'forces' must be an n x 3 list of numbers"),
        ("stress", {"xx": 1}, "'stress' must be"),
        ("stress", [1, 2, "3", 4, 5, "a"], "'stress' must be a list of 6 numbers"),
    ],
)
def test_ill_typed_keys(tmp_path, key, value, match):
    bad = docs(3)
    bad[2][key] = value
    src = write_jsonl(tmp_path / "t.jsonl", bad)
    _fails(src, tmp_path / "o.jsonl", rf"line 3: {match}")


def test_force_shape_mismatch(tmp_path):
    bad = docs(3)
    bad[1]["forces"] = bad[1]["forces"] + [[0.0, 0.0, 0.0]]  # 4 rows for 3 sites
    src = write_jsonl(tmp_path / "f.jsonl", bad)
    _fails(src, tmp_path / "o.db", r"line 2: 'forces' have shape \(4, 3\) but the structure has 3 sites")
    bad[1]["forces"] = [row[:2] for row in docs(3)[1]["forces"]]
    src = write_jsonl(tmp_path / "f.jsonl", bad)
    _fails(src, tmp_path / "o.db", r"line 2: 'forces' have shape \(3, 2\)")


@pytest.mark.parametrize("stress", [[1.0] * 5, [1.0] * 9, [[1.0] * 3] * 3, 5.0])
def test_stress_not_six_values(tmp_path, stress):
    bad = docs(2)
    bad[1]["stress"] = stress
    src = write_json_list(tmp_path / "s.json", bad)
    _fails(src, tmp_path / "o.jsonl", r"record 1 \(line 1\): 'stress' must be 6 values")


def test_non_finite_values(tmp_path):
    bad = docs(2)
    bad[0]["forces"][0][0] = float("nan")
    src = tmp_path / "n.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in bad) + "\n")  # json writes NaN, which is not JSON
    _fails(src, tmp_path / "o.jsonl", "line 1: bad JSON")


def test_json_list_errors(tmp_path):
    out = tmp_path / "o.jsonl"
    good = [make_doc(seed=s) for s in range(3)]
    src = tmp_path / "x.json"
    src.write_text(json.dumps(good[0]))
    _fails(src, out, "expected a JSON list")
    text = json.dumps(good, indent=1)
    src.write_text(text[: len(text) // 2])
    _fails(src, out, r"truncated: the file ends inside record 1")
    src.write_text(json.dumps(good)[:-1])
    _fails(src, out, r"truncated: the file ends after record 2")
    src.write_text(json.dumps(good) + " []")
    _fails(src, out, r"line 1: unexpected text after the list")
    src.write_text(json.dumps(good).replace('}, {"structure"', '} {"structure"', 1))
    _fails(src, out, r"record 0 \(line 1\): expected ',' or ']'")
    pretty = json.dumps(good, indent=2)
    lines = pretty.splitlines()
    k = next(i for i, line in enumerate(lines) if '"energy"' in line and i > len(lines) // 2)
    lines[k] = lines[k].replace('"energy":', '"energy" -')
    src.write_text("\n".join(lines))
    err = _fails(src, out, r"bad JSON")
    record = sum(1 for line in lines[:k] if line == "  {") - 1
    assert f"record {record} (line {k + 1}): bad JSON" in str(err)


def test_json_list_skip_bad_skips_invalid_records_not_syntax(tmp_path):
    bad = docs(4)
    del bad[2]["energy"]
    src = write_json_list(tmp_path / "s.json.gz", bad)
    result = convert(src, tmp_path / "o.jsonl", skip_bad=True)
    assert (result.n_written, result.n_skipped) == (3, 1)
    assert result.messages == ("record 2 (line 1): missing key 'energy'",)


def test_extxyz_without_labels(tmp_path):
    import ase.io
    from ase.build import bulk

    atoms = bulk("Cu")
    atoms.info["REF_energy"] = -1.0
    ase.io.write(tmp_path / "nolabels.xyz", [atoms, atoms])
    _fails(tmp_path / "nolabels.xyz", tmp_path / "o.jsonl", r"frame 0: no forces \(REF_forces\)")
    (tmp_path / "junk.xyz").write_text("3\nnot extxyz\nCu 0 0\n")
    _fails(tmp_path / "junk.xyz", tmp_path / "o.jsonl", "frame 0: not readable as extxyz")


def test_extxyz_reads_plain_calculator_keys(tmp_path):
    """An extxyz with ASE's plain energy/forces/stress (a SinglePointCalculator) reads as records too."""
    import ase.io

    doc = make_doc(seed=4)
    atoms = record_to_atoms(doc, ref_keys=False)
    ase.io.write(tmp_path / "plain.xyz", atoms)
    assert_same(doc, next(read_records(tmp_path / "plain.xyz")), tol=1e-7)


def test_db_errors(tmp_path):
    (tmp_path / "bad.db").write_text("not sqlite " * 100)
    _fails(tmp_path / "bad.db", tmp_path / "o.jsonl", "not a readable ASE database")
    with pytest.raises(InputFileError, match="no such file"):
        list(read_records(tmp_path / "missing.db"))
    assert not (tmp_path / "missing.db").exists()


def test_writer_rejects_unwritable_records_atomically(tmp_path):
    bad = docs(3)
    bad[2]["structure"]["sites"][0]["species"].append({"element": "K", "occu": 0.5})
    for name in ("w.xyz", "w.db"):
        with pytest.raises(AloeError, match=r"record 2: cannot write it"):
            write_records(bad, tmp_path / name)
        assert not (tmp_path / name).exists()
    assert leftovers(tmp_path) == []


def test_convert_refuses_to_overwrite_its_input(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", docs(1))
    with pytest.raises(AloeError, match="overwrite the input"):
        convert(src, tmp_path / "a.jsonl")


# ---- streaming -------------------------------------------------------------------------------------------------
def test_readers_are_lazy(tmp_path):
    """Records come out before a bad line at the end of the file is reached: nothing is read whole."""
    for name in ("lazy.jsonl", "lazy.json"):
        src = tmp_path / name
        write_records(docs(5), src)
        text = src.read_text().rstrip()
        src.write_text(text + "\n@@@\n" if name.endswith("jsonl") else text[:-1] + "@")
        it = read_records(src)
        assert inspect.isgenerator(it) or not isinstance(it, list | tuple)
        assert next(it)["matpes_id"] == "matpes-0"
        with pytest.raises(InputFileError):
            list(it)


class CountingText(io.StringIO):
    """A text stream that records how much each read asked for and returned."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.served = 0

    def read(self, size: int | None = -1) -> str:
        out = super().read(size)
        self.served += len(out)
        return out


def test_json_list_reader_reads_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "JSON_CHUNK_CHARS", 1000)
    many = [make_doc(n=2 + s % 7, seed=s) for s in range(300)]
    text = json.dumps(many, indent=1)
    stream = CountingText(text)
    reader = RecordReader(tmp_path / "unused.json")
    it = reader._json_list(stream)
    first = next(it)
    assert first["matpes_id"] == "matpes-0"
    assert stream.served < 5000 < len(text)  # a few chunks, not the file
    rest = list(it)
    assert [d["matpes_id"] for d in rest] == [f"matpes-{s}" for s in range(1, 300)]
    assert stream.served == len(text)


def test_json_list_document_larger_than_a_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "JSON_CHUNK_CHARS", 64)
    big = [make_doc(n=40, seed=1), make_doc(n=1, seed=2), make_doc(n=30, seed=3)]
    src = write_json_list(tmp_path / "big.json.gz", big, indent=3)
    back = list(read_records(src))
    for a, b in zip(big, back, strict=True):
        assert_same(a, b, tol=0)


def _peak_while_reading(path: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_records(path))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", ["mem.jsonl.gz", "mem.json.gz"])
def test_memory_does_not_grow_with_the_number_of_documents(tmp_path, name, monkeypatch):
    monkeypatch.setattr(formats, "JSON_CHUNK_CHARS", 1 << 14)
    peaks = {}
    for n in (1000, 4000):
        src = tmp_path / f"{n}{name}"
        write_records((make_doc(n=4, seed=s % 50) for s in range(n)), src)
        size = len(gzip.decompress(src.read_bytes()))
        count, peaks[n] = _peak_while_reading(src)
        assert count == n
        assert peaks[n] < size / 5, (peaks[n], size)
    assert peaks[4000] < 1.5 * peaks[1000] + (64 << 10), peaks
