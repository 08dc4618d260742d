"""Resolve potential specs (names, files, import paths, instances) to :class:`~aloe.potentials.base.Potential` objects.

Lazy by construction: nothing here imports torch or a model package until a spec that needs one is resolved
(``load_potential("emt")`` never imports torch).

Specs
-----
- a ``Potential`` instance: returned as it is;
- an ASE ``Calculator`` instance: wrapped (one structure at a time);
- built-in names: ``chgnet-0.3.0``, ``chgnet-0.2.0``, ``chgnet-r2scan`` (weights inside the chgnet wheel),
  ``emt`` and ``lj`` (cheap stand-ins for tests and demos; ``lj`` takes ``sigma``, ``epsilon``, ``rc`` options or
  its own printed name ``lj(sigma=2.5,epsilon=0.01,rc=6)``), and ``lj-nowall`` (Lennard-Jones without its
  repulsive wall: a deliberately broken stand-in that the benchmarks must flag);
- a MACE model file: ``path/to/file.model`` or ``mace:PATH``;
- ``package.module:factory``: a class or function returning an ASE calculator or a ``Potential``;
- optional extras: ``sevennet:MODEL`` (package sevenn), ``mattersim:MODEL`` (package mattersim).

Options (``None`` means "not given"): ``device`` ("cpu", "cuda", "auto": cuda if available), ``dtype``
("float32"/"float64", for models that offer a choice; CHGNet is float32 only), ``batch_size``, ``threads``
(torch threads per process; aloe's stages use 1), plus model-specific ones (``graph_builder`` for CHGNet and MACE:
``"batch"``, or the package's own per-structure inputs; ``head`` for MACE, LJ parameters, keyword arguments of a
factory).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aloe.devices import resolve_device
from aloe.errors import AloeError, one_line
from aloe.potentials.base import Potential

#: Built-in names (weights ship with their wheel, or no weights at all).
BUILTIN_NAMES: tuple[str, ...] = ("chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan", "emt", "lj", "lj-nowall")

#: Prefix -> (package to import, pip requirement, what it is) for models that are optional extras.
OPTIONAL_EXTRAS: dict[str, tuple[str, str, str]] = {
    "sevennet": ("sevenn", "sevenn", "SevenNet"),
    "mattersim": ("mattersim", "mattersim", "MatterSim"),
}

STANDARD_OPTIONS = frozenset({"device", "dtype", "batch_size", "threads"})
_LJ_OPTIONS = ("sigma", "epsilon", "rc", "smooth")
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_][\w.]*$")
_GLOB_CHARS = re.compile(r"[*?\[]")


def known_specs() -> str:
    """One line listing what :func:`load_potential` accepts (for error messages)."""
    extras = ", ".join(f"{p}:MODEL" for p in OPTIONAL_EXTRAS)
    return (
        f"{', '.join(BUILTIN_NAMES)}, a MACE .model file (or mace:PATH), {extras}, "
        "or package.module:factory (an ASE calculator or Potential factory)"
    )


def load_potential(spec: Any, **options: Any) -> Potential:
    """Resolve one spec (see the module docstring) to a :class:`Potential`.

    Parameters
    ----------
    spec
        Name, path, ``mace:PATH``, ``package.module:factory``, ``Potential`` or ASE ``Calculator`` instance, or a
        callable factory.
    **options
        ``device``, ``dtype``, ``batch_size``, ``threads`` and model-specific options; ``None`` values are ignored.

    Raises
    ------
    AloeError
        For an unknown name, a missing file, an absent optional package or an option the model does not take.
    """
    opts = {k: v for k, v in options.items() if v is not None}
    if isinstance(spec, Potential):
        return spec
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str):
        from ase.calculators.calculator import BaseCalculator

        if isinstance(spec, BaseCalculator):
            from aloe.potentials.ase_calculator import ASECalculatorPotential

            return ASECalculatorPotential(spec)
        if callable(spec):
            return _from_factory(spec, getattr(spec, "__name__", type(spec).__name__), opts)
        raise AloeError(f"cannot use a {type(spec).__name__} as a potential; give one of {known_specs()}")

    text = spec.strip()
    if text.startswith("chgnet-") and text in BUILTIN_NAMES:
        return _chgnet(text.removeprefix("chgnet-"), opts)
    if text == "emt":
        _reject(text, opts, allowed=STANDARD_OPTIONS)
        from aloe.potentials.ase_calculator import EMTPotential

        return EMTPotential()
    if text == "lj" or text.startswith("lj("):
        return _lennard_jones(text, opts)
    if text == "lj-nowall" or text.startswith("lj-nowall("):
        return _lennard_jones(text, opts, wall=False)
    prefix, sep, rest = text.partition(":")
    if sep and prefix == "mace":
        return _mace(rest, opts)
    if sep and prefix in OPTIONAL_EXTRAS:
        return _optional_extra(prefix, rest, opts)
    if text.endswith(".model"):
        return _mace(text, opts)
    if _IMPORT_PATH.match(text):
        from aloe.potentials.ase_calculator import import_object

        factory = import_object(text)
        if not callable(factory):
            raise AloeError(f"{text}: is a {type(factory).__name__}, not a calculator class or factory")
        return _from_factory(factory, text, opts)
    raise AloeError(f"unknown potential {text!r}: use {known_specs()}")


def load_committee(specs: Sequence[Any] | str, **options: Any) -> list[Potential]:
    """Resolve committee members; glob patterns of MACE files expand to one member per file (sorted).

    Parameters
    ----------
    specs
        Specs as for :func:`load_potential`; a string with ``*``, ``?`` or ``[`` (optionally after ``mace:``) is a
        pattern of MACE ``.model`` files.
    **options
        Passed to every member.

    Raises
    ------
    AloeError
        If a pattern matches no file, the committee is empty, or two members have the same name.
    """
    if isinstance(specs, str | Path):
        specs = [specs]
    members: list[Potential] = []
    for spec in specs:
        text = str(spec) if isinstance(spec, str | Path) else None
        if text is not None and text not in BUILTIN_NAMES and _GLOB_CHARS.search(text):
            pattern = text.removeprefix("mace:")
            files = sorted(glob.glob(os.path.expanduser(pattern)))
            if not files:
                raise AloeError(f"{pattern}: the pattern matches no MACE model file")
            members.extend(_mace(f, {k: v for k, v in options.items() if v is not None}) for f in files)
        else:
            members.append(load_potential(spec, **options))
    if not members:
        raise AloeError("the committee is empty: give at least one potential")
    names = [m.name for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AloeError(f"committee members need distinct names; repeated: {', '.join(dupes)}")
    return members


# ---- builders ---------------------------------------------------------------------------------------------
def _reject(name: str, opts: dict[str, Any], allowed: frozenset[str] | set[str]) -> None:
    extra = sorted(set(opts) - set(allowed))
    if extra:
        raise AloeError(f"{name}: unknown option(s) {', '.join(extra)}")


def _require(package: str, what: str, pip: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise AloeError(f"{what} needs the optional package {package}: pip install {pip}")


def _chgnet(model_name: str, opts: dict[str, Any]) -> Potential:
    name = f"chgnet-{model_name}"
    _reject(name, opts, allowed=STANDARD_OPTIONS | {"graph_builder"})
    _require("chgnet", name, "chgnet")
    from aloe.potentials.chgnet import CHGNetPotential

    # dtype is ignored: CHGNet runs in float32 only.
    return CHGNetPotential(
        model_name,
        device=opts.get("device", "cpu"),
        batch_size=int(opts.get("batch_size", 32)),
        threads=opts.get("threads"),
        graph_builder=opts.get("graph_builder", "batch"),
    )


def _mace(path: str, opts: dict[str, Any]) -> Potential:
    if not path:
        raise AloeError("mace: needs a model file, e.g. mace:models/committee-0.model")
    _reject(f"mace:{path}", opts, allowed=STANDARD_OPTIONS | {"head", "graph_builder"})
    file = Path(os.path.expanduser(path))
    if not file.is_file():
        raise AloeError(f"{path}: no such MACE model file")
    _require("mace", f"mace:{path}", "mace-torch")
    from aloe.potentials.mace import MACEPotential

    return MACEPotential(
        file,
        device=opts.get("device", "cpu"),
        dtype=opts.get("dtype", "float32"),
        batch_size=int(opts.get("batch_size", 32)),
        threads=opts.get("threads"),
        head=opts.get("head"),
        graph_builder=opts.get("graph_builder", "batch"),
    )


def _lennard_jones(text: str, opts: dict[str, Any], wall: bool = True) -> Potential:
    from aloe.potentials.ase_calculator import AttractiveLennardJonesPotential, LennardJonesPotential

    base = "lj" if wall else "lj-nowall"
    allowed = _LJ_OPTIONS if wall else _LJ_OPTIONS[:3]  # the broken stand-in has no smooth cutoff
    params: dict[str, Any] = {}
    if text != base:
        # The printed name, e.g. "lj(sigma=2.5,epsilon=0.01,rc=6,smooth)", resolves back to the same potential.
        inner = text[len(base) + 1 : -1] if text.endswith(")") else None
        if inner is None:
            raise AloeError(f"{text!r}: expected {base}(sigma=...,epsilon=...,rc=...)")
        for part in filter(None, (p.strip() for p in inner.split(","))):
            key, eq, value = part.partition("=")
            if key not in allowed:
                raise AloeError(
                    f"{text!r}: unknown Lennard-Jones parameter {key!r} (use {', '.join(allowed)})"
                )
            if key == "smooth":
                params[key] = not eq or value.strip().lower() in ("1", "true", "yes")
                continue
            try:
                params[key] = float(value)
            except ValueError:
                raise AloeError(f"{text!r}: {key} must be a number, not {value!r}") from None
    _reject(base, opts, allowed=STANDARD_OPTIONS | set(allowed))
    params.update({k: opts[k] for k in allowed if k in opts})
    return LennardJonesPotential(**params) if wall else AttractiveLennardJonesPotential(**params)


def _optional_extra(prefix: str, model: str, opts: dict[str, Any]) -> Potential:
    package, pip, _ = OPTIONAL_EXTRAS[prefix]
    spec = f"{prefix}:{model}"
    _require(package, spec, pip)
    if not model:
        raise AloeError(f"{spec}: name the model after the colon, e.g. {prefix}:MODEL")
    _reject(spec, opts, allowed=STANDARD_OPTIONS)
    from aloe.potentials.ase_calculator import ASECalculatorPotential, import_object

    device = resolve_device(opts.get("device", "cpu"))
    if prefix == "sevennet":
        factory = import_object("sevenn.calculator:SevenNetCalculator")
        kwargs: dict[str, Any] = {"model": model, "device": device}
    else:
        factory = import_object("mattersim.forcefield:MatterSimCalculator")
        kwargs = {"load_path": model, "device": device}
    potential = ASECalculatorPotential(factory, name=spec, kwargs=kwargs)
    potential.functional = None
    return potential


def _from_factory(factory: Callable[..., Any], name: str, opts: dict[str, Any]) -> Potential:
    from ase.calculators.calculator import BaseCalculator

    from aloe.potentials.ase_calculator import ASECalculatorPotential, accepted_kwargs

    extra = {k: v for k, v in opts.items() if k not in STANDARD_OPTIONS}
    standard = accepted_kwargs(factory, {k: v for k, v in opts.items() if k in STANDARD_OPTIONS})
    if "device" in standard:
        standard["device"] = resolve_device(standard["device"])
    kwargs = {**standard, **extra}
    if isinstance(factory, type) and issubclass(factory, BaseCalculator):
        # A calculator class: build lazily (and again for calculator()), like any factory.
        return ASECalculatorPotential(factory, name=name, kwargs=kwargs)
    try:
        made = factory(**kwargs)
    except AloeError:
        raise
    except Exception as exc:  # the user's code: its failure is one line naming it, not a traceback
        raise AloeError(f"{name}: the factory raised {one_line(exc)}") from None
    if isinstance(made, Potential):
        return made
    if isinstance(made, BaseCalculator):
        potential = ASECalculatorPotential(factory, name=name, kwargs=kwargs)
        potential._calc = made  # already built: use it rather than calling the factory twice
        return potential
    raise AloeError(
        f"{name}: the factory returned a {type(made).__name__}, not an ASE calculator or a Potential"
    )
