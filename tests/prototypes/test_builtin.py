from __future__ import annotations

import json
import re
import sys
from collections import Counter

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Lattice, Structure

from aloe.errors import AloeError
from aloe.prototypes import PrototypeLibrary, load_prototypes
from aloe.prototypes import builtin as builtin_module
from aloe.prototypes.builtin import MATCHER_TOLERANCES, builtin_library, cache_path
from aloe.prototypes.library import natural_key

ROCKSALT = "aflow_AB_cF8_225_a_b"
CSCL = "aflow_AB_cP2_221_b_a"  # pymatgen's AFLOW data puts Cs on 1b and Cl on 1a


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """A private cache directory for the whole module, so the cold build runs once here."""
    directory = tmp_path_factory.mktemp("aloe_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALOE_CACHE_DIR", str(directory))
        yield directory


@pytest.fixture(scope="module")
def library(module_cache) -> PrototypeLibrary:
    return load_prototypes("builtin")


def _same_library(a: PrototypeLibrary, b: PrototypeLibrary) -> None:
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa.lattice, pb.lattice)
        np.testing.assert_array_equal(pa.frac_coords, pb.frac_coords)
        np.testing.assert_array_equal(pa.placeholder_index, pb.placeholder_index)
        assert pa.source == pb.source
        assert dict(pa.metadata) == dict(pb.metadata)


def test_loads_through_load_prototypes(library):
    assert isinstance(library, PrototypeLibrary)
    assert library.source == "builtin"
    # 129 entries pass the filters; a handful merge as duplicates.
    assert 100 <= len(library) <= 129
    assert library.report.loaded == len(library)
    assert library.report.skipped == []
    assert all(p.weight is None for p in library)


def test_every_prototype_is_a_small_binary_or_ternary(library):
    arities = Counter(p.arity for p in library)
    assert set(arities) == {2, 3}
    assert arities[2] > arities[3] > 10
    for proto in library:
        assert 2 <= proto.n_sites <= 8, proto.name
        assert proto.placeholders == ("H", "He", "Li")
        used = {proto.placeholders[k] for k in proto.placeholder_index}
        assert used == set(("H", "He", "Li")[: proto.arity]), proto.name
        assert proto.volume > 0
        assert proto.source == f"aflow:{proto.metadata['aflow']}"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in proto.metadata.items())
        assert {"formula", "species", "aflow", "pearson", "strukturbericht", "mineral"} <= set(proto.metadata)


def test_placeholders_follow_site_count_then_electronegativity(library):
    for proto in library:
        counts = np.bincount(proto.placeholder_index)
        real = dict(item.split("=") for item in proto.metadata["species"].split())
        assert list(real) == list(proto.placeholders[: proto.arity]), proto.name
        keys = [(-int(counts[k]), Element(real[p]).X, real[p]) for k, p in enumerate(real)]
        assert keys == sorted(keys), proto.name


@pytest.mark.parametrize(
    ("name", "spacegroup", "coords", "formula"),
    [
        (ROCKSALT, "Fm-3m", [[0, 0, 0], [0.5, 0.5, 0.5]], "NaCl"),
        (CSCL, "Pm-3m", [[0, 0, 0], [0.5, 0.5, 0.5]], "CsCl"),
    ],
)
def test_classic_prototypes_present(library, name, spacegroup, coords, formula):
    proto = library[name]
    assert proto.n_sites == 2
    assert proto.formula == "H1He1"
    assert proto.metadata["formula"] == formula
    reference = Structure.from_spacegroup(spacegroup, Lattice.cubic(4.0), ["H", "He"], coords)
    matcher = StructureMatcher(**MATCHER_TOLERANCES)
    assert matcher.fit(proto.to_structure(), reference.get_primitive_structure())


def test_rocksalt_mapping_and_tags(library):
    proto = library[ROCKSALT]
    # Equal site counts, so the less electronegative Na becomes H.
    assert proto.metadata["species"] == "H=Na He=Cl"
    assert proto.metadata["strukturbericht"] == "B1"
    assert proto.metadata["pearson"] == "cF8"


def test_no_two_prototypes_match(library):
    matcher = StructureMatcher(
        primitive_cell=False, scale=True, attempt_supercell=False, **MATCHER_TOLERANCES
    )
    by_shape: dict[tuple[int, ...], list] = {}
    for proto in library:
        counts = tuple(sorted(np.bincount(proto.placeholder_index).tolist()))
        by_shape.setdefault(counts, []).append(proto)
    pairs = 0
    for group in by_shape.values():
        structures = [(p.name, p.to_structure()) for p in group]
        for i, (name_a, a) in enumerate(structures):
            for name_b, b in structures[i + 1 :]:
                pairs += 1
                assert not matcher.fit_anonymous(a, b), f"{name_a} matches {name_b}"
    assert pairs > 100  # the check really compared something


def test_dedup_keeps_the_symmetric_parent(library):
    names = {p.name for p in library}
    # Tetragonal PbZrO3 (P4mm) is a small distortion of cubic perovskite: only the cubic one stays.
    assert "aflow_AB3C_cP5_221_a_c_b" in names
    assert "aflow_A3BC_tP5_99_bc_a_b" not in names
    assert "aflow_A3BC_tP5_99_bc_a_b" in library["aflow_AB3C_cP5_221_a_c_b"].metadata["merged"].split()
    # L1_0 CuAu is not B2 CsCl (different coordination): both stay.
    assert {CSCL, "aflow_AB_tP2_123_a_d"} <= names


def test_names_unique_readable_and_sorted(library):
    names = [p.name for p in library]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"aflow_[A-Za-z0-9_.-]+", n) for n in names)
    assert names == sorted(names, key=natural_key)
    # pymatgen holds FeSi and CO under one AFLOW label: the formula tells them apart.
    assert {"aflow_AB_cP8_198_a_a_FeSi", "aflow_AB_cP8_198_a_a_CO"} <= set(names)


def test_binary_and_ternary_specs(library):
    binary = load_prototypes("builtin:binary")
    ternary = builtin_library("builtin:ternary")
    assert binary.source == "builtin:binary"
    assert len(binary) > 0 and all(p.arity == 2 for p in binary)
    assert len(ternary) > 0 and all(p.arity == 3 for p in ternary)
    assert [p.name for p in binary] == [p.name for p in library if p.arity == 2]
    assert sorted([p.name for p in binary] + [p.name for p in ternary], key=natural_key) == [
        p.name for p in library
    ]


@pytest.mark.parametrize("spec", ["builtin:quaternary", "builtin:", "builtin:Binary"])
def test_unknown_spec_raises(module_cache, spec):
    with pytest.raises(AloeError, match=re.escape(repr(spec))) as info:
        load_prototypes(spec)
    assert "builtin:binary" in str(info.value)


def test_folder_named_like_builtin_is_a_folder(tmp_path, monkeypatch):
    # Only 'builtin' and 'builtin:<kind>' select the built-in library; 'builtins' is a path like any other.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AloeError, match="builtins: prototype source does not exist"):
        load_prototypes("builtins")


def test_bad_placeholders_raise(module_cache):
    with pytest.raises(AloeError, match="distinct"):
        builtin_library(placeholders=("H", "H", "Li"))
    with pytest.raises(AloeError, match="at least 3"):
        builtin_library("builtin:ternary", placeholders=("H", "He"))


def test_second_call_is_served_from_cache(tmp_path, monkeypatch, library):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path))
    path = cache_path()
    assert path.parent == tmp_path and not path.exists()
    first = builtin_library()
    assert path.is_file()
    assert [f.name for f in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    data = json.loads(path.read_text())
    assert len(data["prototypes"]) == len(first)

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although the cache is valid")

    monkeypatch.setattr(builtin_module, "_build_library", no_build)
    # Loading from the cache must not need StructureMatcher: make importing it fail.
    monkeypatch.setitem(sys.modules, "pymatgen.analysis.structure_matcher", None)
    second = builtin_library()
    _same_library(first, second)
    _same_library(first, library)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda text: "{not json at all",
        lambda text: text[: len(text) // 2],
        lambda text: "[]",
        lambda text: text.replace(f'"format": {builtin_module.CACHE_FORMAT}', '"format": -1'),
        lambda text: text.replace('"placeholder_index": [0', '"placeholder_index": [7', 1),
    ],
    ids=["garbage", "truncated", "wrong-type", "stale-format", "bad-prototype"],
)
def test_corrupted_cache_is_rebuilt(tmp_path, monkeypatch, module_cache, library, corrupt):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path))
    path = cache_path()
    good = (module_cache / path.name).read_text()
    bad = corrupt(good)
    assert bad != good
    path.write_text(bad)

    calls = []

    def counting_build(*args, **kwargs):
        calls.append(1)
        # The real build is covered elsewhere; reuse its result to keep this test fast.
        return PrototypeLibrary(list(library), source="builtin", report=library.report)

    monkeypatch.setattr(builtin_module, "_build_library", counting_build)
    rebuilt = builtin_library()
    assert calls == [1]
    _same_library(rebuilt, library)
    assert json.loads(path.read_text()) == json.loads(good)  # the bad file was replaced


def test_corrupted_cache_real_rebuild(tmp_path, monkeypatch, library):
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path))
    path = cache_path()
    path.write_bytes(b"\x00\xff garbage")
    rebuilt = builtin_library()
    _same_library(rebuilt, library)
    assert json.loads(path.read_text())["prototypes"]


def test_unwritable_cache_still_loads(tmp_path, monkeypatch, library):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("ALOE_CACHE_DIR", str(blocker / "cache"))
    # The build runs, the cache write fails quietly, and the library is still returned.
    monkeypatch.setattr(
        builtin_module,
        "_build_library",
        lambda *a, **k: PrototypeLibrary(list(library), source="builtin", report=library.report),
    )
    _same_library(builtin_library(), library)
