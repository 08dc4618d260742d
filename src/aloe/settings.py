"""Typed settings shared by every stage: strict pydantic models, YAML configs and command-line overrides.

Every field carries a description (shown by ``--help`` and written to each run's summary). Unknown or ill-typed
keys fail with one line naming the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from aloe.errors import AloeError

M = TypeVar("M", bound="AloeSettings")

#: Verb names whose sections a combined config file may hold.
VERBS = (
    "prototypes",
    "generate",
    "screen",
    "select",
    "label",
    "train",
    "run",
    "bench",
    "bench-reference",
    "data",
    "executor",
)


class AloeSettings(BaseModel):
    """Base of every settings model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)

    def fingerprint(self, exclude: set[str] | None = None) -> str:
        """Stable hash of the settings (for detecting a resumed run with other settings)."""
        data = self.model_dump(mode="json", exclude=_nested_exclude(exclude or set()))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _nested_exclude(keys: set[str]) -> dict[str, Any]:
    """``{"a", "b.c"}`` -> ``{"a": True, "b": {"c": True}}`` (pydantic's nested exclude)."""
    out: dict[str, Any] = {}
    for key in keys:
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if child is True:
                break
            node = child
        else:
            node[leaf] = True
    return out


def format_validation_error(error: ValidationError, source: str | None = None) -> str:
    """Turn a pydantic error into one line: ``source: key 'a.b': problem`` (+ how many more)."""
    errors = error.errors()
    first = errors[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    kind = first["type"]
    if kind == "extra_forbidden":
        problem = "unknown key"
    elif kind == "missing":
        problem = "missing key"
    else:
        value = first.get("input")
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        problem = f"{first['msg']} (got {shown})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    prefix = f"{source}: " if source else ""
    return f"{prefix}key '{key}': {problem}{more}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, bad YAML or a non-mapping top level is an :class:`AloeError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise AloeError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise AloeError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AloeError(f"{path}: a config file must hold a mapping of keys, not {type(data).__name__}")
    return data


def section_for(data: Mapping[str, Any], verb: str) -> dict[str, Any]:
    """The part of a config that belongs to ``verb``.

    A file whose top-level keys are all verb names (``generate:``, ``screen:`` ...) is a combined file and
    the verb's section is used; any other file is taken whole as the verb's settings. A study's settings hold
    stage sections of their own: its file is taken whole unless it has a ``study:`` section.
    """
    if verb == "study":
        return dict(data.get("study") or {}) if "study" in data else dict(data)
    if data and all(k in VERBS for k in data):
        section = data.get(verb) or {}
        if not isinstance(section, dict):
            raise AloeError(f"section '{verb}' of the config must be a mapping")
        return dict(section)
    return dict(data)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted = 'a.b'``, creating intermediate mappings."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def absolute_paths(settings: M, base: Path | None = None) -> M:
    """``settings`` with every relative path field (``Path``, ``Path | None``, ``list[Path]``) made absolute.

    Relative to ``base`` (default: the working directory), nested settings included. The CLI does this before a
    stage builds its tasks: workers of a cluster run elsewhere (a Slurm job runs where it was submitted from), and
    a relative run folder or input would send them to other files.
    """
    base = Path.cwd() if base is None else base
    update: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            new = absolute_paths(value, base)
        elif isinstance(value, Path):
            new = value if value.is_absolute() else base / value
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            new = [v if v.is_absolute() else base / v for v in value]
        else:
            continue
        if new != value:
            update[name] = new
    return settings.model_copy(update=update) if update else settings


def build_settings(
    model: type[M],
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    verb: str | None = None,
) -> M:
    """Build settings from an optional YAML file plus overrides (dotted keys; ``None`` values are ignored).

    Raises
    ------
    AloeError
        One line naming the file and key for an unknown or ill-typed key.

    """
    data: dict[str, Any] = {}
    source = None
    if config is not None:
        source = str(config)
        raw = load_yaml(config)
        data = section_for(raw, verb) if verb else raw
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise AloeError(format_validation_error(exc, source or "settings")) from None
