from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from aloe.errors import AloeError
from aloe.select.encoders import BUILTIN_ENCODERS, Encoder, load_encoder
from aloe.structures import StructureBatch
from tests.select.helpers import FailsOnElement, ToyEncoder, WideToyEncoder, WrongShapeEncoder


def small_structures() -> list:
    mgo = bulk("MgO", "rocksalt", a=4.2, cubic=True)
    mgo.rattle(0.05, seed=1)  # off the symmetric positions, so the invariance checks mean something
    return [
        bulk("Cu", "fcc", a=3.6, cubic=True),
        bulk("NaCl", "rocksalt", a=5.64),
        bulk("Si", "diamond", a=5.43),
        mgo,
        bulk("Fe", "bcc", a=2.87),
    ]


def batch_of(atoms_list) -> StructureBatch:
    return StructureBatch.from_atoms(atoms_list, [f"s{i}" for i in range(len(atoms_list))])


@pytest.fixture(scope="module")
def structures():
    return small_structures()


@pytest.fixture(scope="module")
def chgnet():
    return load_encoder("chgnet-0.3.0", batch_size=4)


@pytest.fixture(scope="module")
def chgnet_features(chgnet, structures):
    return chgnet.encode(batch_of(structures))


# ---- CHGNet -------------------------------------------------------------------------------------------------
def test_chgnet_features_shape_finite_and_stable(chgnet, chgnet_features, structures):
    assert chgnet.dim == 64 and chgnet.name == "chgnet-0.3.0"
    assert chgnet.identity().startswith("chgnet-0.3.0:")
    assert len(chgnet.feature_names()) == 64
    f = chgnet_features.features
    assert f.shape == (len(structures), 64) and f.dtype == np.float64
    assert np.isfinite(f).all()
    assert chgnet_features.errors == [None] * len(structures)
    again = chgnet.encode(batch_of(structures))
    np.testing.assert_array_equal(again.features, f)


def test_chgnet_batch_size_does_not_change_features(chgnet_features, structures):
    one = load_encoder("chgnet-0.3.0", batch_size=1)
    assert one.batch_size == 1
    np.testing.assert_allclose(one.encode(batch_of(structures)).features, chgnet_features.features, atol=1e-5)


def test_chgnet_features_ignore_atom_order_and_rigid_translation(chgnet, structures):
    a = structures[3]
    permuted = a[np.random.default_rng(0).permutation(len(a))]
    shifted = a.copy()
    shifted.positions += [0.37, -1.2, 2.5]  # leaves atoms outside the cell (frac coords not wrapped)
    by_lattice = a.copy()
    by_lattice.positions += a.cell[0] + 2 * a.cell[2]
    f = chgnet.encode(batch_of([a, permuted, shifted, by_lattice])).features
    for other in f[1:]:
        # float32 model: round-off of the neighbour-list geometry is ~1e-5
        np.testing.assert_allclose(other, f[0], atol=5e-5)


def test_chgnet_features_are_the_mean_over_atoms(chgnet, structures):
    a = structures[3]
    f = chgnet.encode(batch_of([a, a.repeat((2, 1, 1))])).features
    np.testing.assert_allclose(f[1], f[0], atol=5e-5)


def test_chgnet_different_structures_differ(chgnet_features):
    f = chgnet_features.features
    d = np.linalg.norm(f[:, None] - f[None], axis=-1)
    off_diagonal = d[~np.eye(len(f), dtype=bool)]
    assert off_diagonal.min() > 1e-2


# ---- matminer -----------------------------------------------------------------------------------------------
def test_matminer_features(structures):
    enc = load_encoder("matminer")
    assert enc.dim == 159 and len(enc.feature_names()) == enc.dim
    assert len(set(enc.feature_names())) == enc.dim
    assert enc.identity().startswith("matminer-")
    first = enc.encode(batch_of(structures))
    assert first.features.shape == (len(structures), 159)
    assert np.isfinite(first.features).all() and first.errors == [None] * len(structures)
    np.testing.assert_array_equal(enc.encode(batch_of(structures)).features, first.features)
    assert np.linalg.norm(first.features[0] - first.features[4]) > 1e-3


# ---- failure isolation --------------------------------------------------------------------------------------
def test_one_bad_structure_does_not_spoil_its_batch(structures):
    enc = FailsOnElement(element=26, batch_size=8)  # Fe is structures[4]; the batch of all five raises
    good = ToyEncoder().encode(batch_of(structures))
    out = enc.encode(batch_of(structures))
    assert out.features.shape == (5, enc.dim)
    np.testing.assert_array_equal(out.features[:4], good.features[:4])
    assert np.isnan(out.features[4]).all()
    assert out.errors[:4] == [None] * 4
    assert out.errors[4] == "toy-fails raised RuntimeError: no element 26"


def test_batches_are_split_by_batch_size(structures):
    enc = ToyEncoder(batch_size=2)
    out = enc.encode(batch_of(structures))
    assert enc.calls == 3 and np.isfinite(out.features).all()


def test_wrong_feature_shape_is_an_error_per_structure(structures):
    out = WrongShapeEncoder(batch_size=8).encode(batch_of(structures[:3]))
    assert out.features.shape == (3, 9) and np.isnan(out.features).all()
    assert all("returned features of shape (1, 10), expected (1, 9)" in e for e in out.errors)


def test_all_nan_row_without_error_is_flagged(structures):
    class Silent(ToyEncoder):
        name = "silent"

        def _encode_batch(self, batch):
            part = super()._encode_batch(batch)
            part.features[0] = np.nan
            return part

    out = Silent().encode(batch_of(structures[:2]))
    assert out.errors == ["silent returned no finite feature", None]


# ---- load_encoder -------------------------------------------------------------------------------------------
def test_unknown_encoder_lists_the_known_ones():
    with pytest.raises(AloeError) as info:
        load_encoder("m3gnet")
    message = str(info.value)
    assert "'m3gnet'" in message
    for name in BUILTIN_ENCODERS:
        assert name in message
    with pytest.raises(AloeError, match=r"unknown CHGNet model '9\.9'"):
        load_encoder("chgnet-9.9")


def test_factory_must_return_an_encoder():
    with pytest.raises(AloeError, match="returned dict, not an aloe Encoder"):
        load_encoder("tests.select.helpers:not_an_encoder")
    with pytest.raises(AloeError, match="cannot import"):
        load_encoder("tests.select.helpers:no_such_factory")
    with pytest.raises(AloeError, match="cannot import"):
        load_encoder("tests.select.no_such_module:factory")


def test_factory_by_path_gets_the_options_it_accepts():
    enc = load_encoder("tests.select.helpers:toy_encoder", device="cuda", batch_size=7, threads=3)
    assert isinstance(enc, ToyEncoder) and enc.batch_size == 7 and enc.device == "cuda"
    cls = load_encoder("tests.select.helpers:FailsOnIron", batch_size=5)  # a class is a factory too
    assert isinstance(cls, Encoder) and cls.batch_size == 5 and cls.element == 26
    assert load_encoder(enc) is enc


def test_encoders_of_another_dim(structures):
    narrow = ToyEncoder().encode(batch_of(structures))
    wide = WideToyEncoder().encode(batch_of(structures))
    assert narrow.features.shape == (5, 9) and wide.features.shape == (5, 12)
    np.testing.assert_array_equal(wide.features[:, :9], narrow.features)
    assert WideToyEncoder().feature_names()[-1] == "toy-wide_11"
