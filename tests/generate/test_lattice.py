from __future__ import annotations

import numpy as np
import pytest

from aloe.elements import atomic_radius
from aloe.generate.lattice import guess_scale
from aloe.generate.settings import GenerateSettings
from aloe.generate.space import CandidateSpace
from aloe.prototypes import load_prototypes
from aloe.prototypes.library import shortest_periodic_distances


def test_scale_by_hand_on_cscl():
    # CsCl cell a = 1: d(H, He) = sqrt(3)/2, each self-image at 1.
    lattice = np.eye(3)
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    d = shortest_periodic_distances(lattice, frac, cutoff=9.0)
    r_na, r_cl = atomic_radius("Na"), atomic_radius("Cl")  # 1.80, 1.00
    s = guess_scale(d, np.array([[r_na, r_cl]]), factor=0.96)
    by_hand = 0.96 * max((r_na + r_cl) / (np.sqrt(3) / 2), 2 * r_na / 1.0, 2 * r_cl / 1.0)
    assert s[0] == pytest.approx(by_hand)
    assert s[0] == pytest.approx(0.96 * 3.6)  # the Na-Na self-image decides


def test_pairs_beyond_cutoff_are_ignored():
    d = np.array([[3.0, 20.0], [20.0, 3.0]])
    d[d > 9.0] = np.inf
    s = guess_scale(d, np.array([[1.0, 5.0]]), factor=1.0)
    assert s[0] == pytest.approx(10.0 / 3.0)  # the 5+5 self pair, not 1+5 at 20 A
    with pytest.raises(ValueError, match="cutoff"):
        guess_scale(np.full((2, 2), np.inf), np.ones((1, 2)))


def test_space_applies_guess_to_the_prototype_lattice(proto_dir):
    lib = load_prototypes(proto_dir).filter(names=["POSCAR_cscl"])
    settings = GenerateSettings(elements=["Na", "Cl"], perturbation={"enabled": False})
    space = CandidateSpace(lib, settings)
    batch = space.build(np.arange(space.size))
    # CsCl prototype has a = 3 A: the self-image distance is 3, the pair distance 3*sqrt(3)/2.
    r_na, r_cl = atomic_radius("Na"), atomic_radius("Cl")
    s = 0.96 * max((r_na + r_cl) / (3 * np.sqrt(3) / 2), 2 * r_na / 3, 2 * r_cl / 3)
    assert batch.scale[0] == pytest.approx(s)
    assert np.allclose(batch.cell[0], np.eye(3) * 3 * s)
    # H -> lowest Z (Na, 11), He -> Cl (17)
    assert batch.numbers.tolist() == [11, 17]


def test_hydrogen_and_noble_gas_radii_enter_the_guess(proto_dir):
    lib = load_prototypes(proto_dir).filter(names=["POSCAR_cscl"])
    space = CandidateSpace(lib, GenerateSettings(elements=["H", "Xe"], perturbation={"enabled": False}))
    batch = space.build([0])
    r_h, r_xe = atomic_radius("H"), atomic_radius("Xe")
    assert r_h == pytest.approx(0.75) and r_xe == pytest.approx(2.16)
    assert batch.scale[0] == pytest.approx(0.96 * max((r_h + r_xe) / (3 * np.sqrt(3) / 2), 2 * r_xe / 3))
