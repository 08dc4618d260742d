from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ase.calculators.emt import EMT

from aloe.errors import AloeError
from aloe.potentials import Potential, load_committee, load_potential
from aloe.potentials.ase_calculator import ASECalculatorPotential, EMTPotential, LennardJonesPotential
from aloe.potentials.registry import BUILTIN_NAMES, resolve_device
from aloe.structures import StructureBatch
from tests.potentials.conftest import emt_structures


def make_lj(sigma: float = 2.0):
    """A calculator factory importable as tests.potentials.test_registry:make_lj."""
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=sigma, rc=3 * sigma)


def make_potential(batch_size: int = 32, device: str = "cpu"):
    """A Potential factory taking standard options."""
    pot = EMTPotential()
    pot.batch_size = batch_size
    pot.device_seen = device
    return pot


def test_import_and_emt_do_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        import aloe.potentials
        from aloe.potentials import load_potential, load_committee
        from aloe.structures import StructureBatch
        from ase.build import bulk
        pots = [load_potential("emt"), load_potential("lj", sigma=2.0)] + load_committee(["emt", "lj"])
        batch = StructureBatch.from_atoms([bulk("Cu", "fcc", a=3.6)])
        assert all(p.predict(batch).errors == [None] for p in pots)
        heavy = sorted(m for m in ("torch", "chgnet", "mace", "e3nn") if m in sys.modules)
        print("HEAVY", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_instances_pass_through_or_get_wrapped():
    pot = EMTPotential()
    assert load_potential(pot) is pot
    wrapped = load_potential(EMT())
    assert isinstance(wrapped, ASECalculatorPotential) and wrapped.name == "emt"
    assert isinstance(load_potential(make_lj), ASECalculatorPotential)


def test_builtin_names_resolve_lazily():
    if importlib.util.find_spec("chgnet") is None:
        pytest.skip("chgnet not installed")
    from aloe.potentials.chgnet import CHGNetPotential

    for spec in ("chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan"):
        pot = load_potential(spec, device="cpu", dtype="float32", batch_size=7, threads=1)
        assert isinstance(pot, CHGNetPotential)
        assert (pot.name, pot.batch_size, pot.threads) == (spec, 7, 1)
        assert pot._model is None  # nothing loaded until the first prediction
    assert load_potential("chgnet-r2scan", device=None).device == "cpu"  # None = not given


def test_emt_and_lj():
    assert isinstance(load_potential("emt"), EMTPotential)
    lj = load_potential("lj", sigma=2.2, epsilon=0.05, rc=5.0)
    assert isinstance(lj, LennardJonesPotential)
    assert lj.name == "lj(sigma=2.2,epsilon=0.05,rc=5.0)"
    # the printed name resolves back to the same potential
    again = load_potential(lj.name)
    assert again.name == lj.name and again.kwargs == lj.kwargs
    assert load_potential("lj(sigma=2.0,smooth)").kwargs["smooth"] is True
    with pytest.raises(AloeError, match="unknown Lennard-Jones parameter 'alpha'"):
        load_potential("lj(alpha=1)")
    with pytest.raises(AloeError, match="sigma must be a number"):
        load_potential("lj(sigma=big)")


def test_import_path_factories():
    batch = StructureBatch.from_atoms(emt_structures())
    by_class = load_potential("ase.calculators.emt:EMT")
    assert by_class.name == "ase.calculators.emt:EMT"
    np.testing.assert_allclose(by_class.predict(batch).energy, EMTPotential().predict(batch).energy)
    by_function = load_potential("tests.potentials.test_registry:make_lj", sigma=2.4, device="cpu")
    assert (
        by_function.calculator().parameters["sigma"] == 2.4
    )  # factory kwarg; device not accepted -> dropped
    pot = load_potential("tests.potentials.test_registry:make_potential", batch_size=5, device="auto")
    assert isinstance(pot, EMTPotential) and pot.batch_size == 5
    assert pot.device_seen in ("cpu", "cuda")  # 'auto' resolved before reaching the factory
    assert isinstance(load_potential("aloe.potentials.ase_calculator:EMTPotential"), EMTPotential)
    with pytest.raises(
        AloeError, match="os:getcwd: the factory returned a str, not an ASE calculator or a Potential"
    ):
        load_potential("os:getcwd")


def test_errors_are_one_line_and_helpful(tmp_path):
    with pytest.raises(AloeError) as err:
        load_potential("chgnet-9")
    message = str(err.value)
    assert "\n" not in message
    for name in BUILTIN_NAMES:
        assert name in message
    assert "package.module:factory" in message and ".model" in message
    with pytest.raises(AloeError, match="no such MACE model file"):
        load_potential(str(tmp_path / "nope.model"))
    with pytest.raises(AloeError, match="no such MACE model file"):
        load_potential(f"mace:{tmp_path / 'nope.bin'}")
    with pytest.raises(AloeError, match="unknown option"):
        load_potential("emt", cutoff=3)
    with pytest.raises(AloeError, match="cannot import"):
        load_potential("no_such_pkg_xyz:factory")
    with pytest.raises(AloeError, match="cannot use a int as a potential"):
        load_potential(3)


@pytest.mark.parametrize(("prefix", "package"), [("sevennet", "sevenn"), ("mattersim", "mattersim")])
def test_optional_extras_name_the_package(prefix, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(AloeError, match=f"needs the optional package {package}: pip install {package}"):
        load_potential(f"{prefix}:some-model")


def test_committee_globs_and_names(tiny_mace_file, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for stem in ("c", "a", "b"):
        shutil.copy(tiny_mace_file, folder / f"{stem}.model")
    members = load_committee([str(folder / "*.model"), "emt"], dtype="float64", batch_size=4)
    assert [m.name for m in members] == ["mace:a", "mace:b", "mace:c", "emt"]
    assert all(m.dtype == "float64" and m.batch_size == 4 for m in members[:3])
    assert [m.name for m in load_committee(f"mace:{folder}/[ab].model")] == ["mace:a", "mace:b"]
    single = load_potential(folder / "a.model")
    assert single.name == "mace:a"
    with pytest.raises(AloeError, match=r"empty/\*\.model: the pattern matches no MACE model file"):
        load_committee([str(tmp_path / "empty" / "*.model")])
    with pytest.raises(AloeError, match="distinct names; repeated: emt"):
        load_committee(["emt", "emt"])
    with pytest.raises(AloeError, match="committee is empty"):
        load_committee([])


def test_resolve_device():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(AloeError, match="sees no CUDA GPU"):
            resolve_device("cuda")
        pot = load_potential("chgnet-0.3.0", device="cuda")  # lazy: the error comes with the first use
        with pytest.raises(AloeError, match="sees no CUDA GPU"):
            pot.predict(StructureBatch.from_atoms(emt_structures()[:1]))


def test_everything_is_a_potential():
    assert all(isinstance(p, Potential) for p in load_committee(["emt", "lj", "ase.calculators.emt:EMT"]))
