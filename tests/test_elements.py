from __future__ import annotations

import numpy as np
import pytest

from aloe.elements import atomic_radius, default_elements, radius_table, resolve_elements, symbol_to_z
from aloe.errors import AloeError


def test_default_elements_are_the_89_of_mp_aloe():
    elements = default_elements()
    assert len(elements) == 89
    assert elements[0] == "H" and elements[-1] == "Pu"
    for excluded in ("Po", "At", "Rn", "Fr", "Ra"):
        assert excluded not in elements
    zs = [symbol_to_z(s) for s in elements]
    assert zs == sorted(zs)


def test_radius_overrides_and_multipliers():
    from pymatgen.core import Element

    assert atomic_radius("He") == pytest.approx(0.868)
    assert atomic_radius("Ne") == pytest.approx(1.064)
    assert atomic_radius("Ar") == pytest.approx(1.775)
    assert atomic_radius("Kr") == pytest.approx(1.76)
    assert atomic_radius("Xe") == pytest.approx(2.16)
    assert atomic_radius("H") == pytest.approx(3 * float(Element("H").atomic_radius))
    for s in ("K", "Rb", "Cs"):
        assert atomic_radius(s) == pytest.approx(0.9 * float(Element(s).atomic_radius))
    assert atomic_radius("Fe") == pytest.approx(float(Element("Fe").atomic_radius))
    table = radius_table()
    assert np.isfinite(table[[symbol_to_z(s) for s in default_elements()]]).all()


def test_resolve_elements_sorts_by_z_and_rejects_outsiders():
    assert resolve_elements(["O", "Fe", "H", "O"]) == ("H", "O", "Fe")
    with pytest.raises(AloeError, match="'Po' is outside"):
        resolve_elements(["Fe", "Po"])
    with pytest.raises(AloeError, match="unknown element symbol 'Xx'"):
        resolve_elements(["Xx"])
    with pytest.raises(AloeError, match="empty"):
        resolve_elements([])
