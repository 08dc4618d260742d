"""Run folders: a manifest that pins the settings, chunk files written atomically, and a summary YAML.

Layout of a run folder::

    run.yaml          verb, settings, their fingerprint, aloe version (written once; checked on resume)
    chunks/           the stage's output, one file per chunk, each written to a temp name and renamed
    summary.yaml      command, resolved settings, seed, package versions, counts, timings (rewritten at the end)

A chunk file exists only when complete, so a killed stage resumes by skipping the chunks that exist; leftover
temp files are removed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from aloe import __version__
from aloe.errors import AloeError
from aloe.settings import AloeSettings

MANIFEST = "run.yaml"
SUMMARY = "summary.yaml"
CHUNKS = "chunks"
TMP_SUFFIX = ".tmp"

#: Packages whose versions every summary records.
REPORTED_PACKAGES = (
    "numpy",
    "scipy",
    "pymatgen",
    "ase",
    "pyarrow",
    "pydantic",
    "typer",
    "torch",
    "chgnet",
    "mace-torch",
)


def package_versions(names: tuple[str, ...] = REPORTED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (absent packages are left out), plus Python and aloe."""
    versions = {"python": platform.python_version(), "aloe": __version__}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def default_run_dir(verb: str, root: str | Path = "runs") -> Path:
    """``runs/<verb>-<UTC timestamp>`` (not created)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{verb}-{stamp}"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success rename it onto ``target``, on failure delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_yaml_atomic(path: str | Path, data: Any) -> None:
    """Write YAML through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


class RunFolder:
    """A stage's run folder.

    Parameters
    ----------
    path
        The folder (created if missing).
    verb
        The stage that owns it (``generate``, ``screen`` ...).
    settings
        The run's settings; their fingerprint (without ``runtime_keys``) must match an existing manifest.
    runtime_keys
        Settings that may change between a run and its resumption (workers, output paths ...).

    """

    def __init__(
        self,
        path: str | Path,
        verb: str,
        settings: AloeSettings,
        runtime_keys: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        self.path = Path(path)
        self.verb = verb
        self.settings = settings
        self.fingerprint = settings.fingerprint(exclude=set(runtime_keys))
        self.started = time.time()
        self.resumed = False
        self._open()

    @property
    def chunk_dir(self) -> Path:
        """Folder of the chunk files."""
        return self.path / CHUNKS

    def _open(self) -> None:
        manifest_path = self.path / MANIFEST
        if manifest_path.exists():
            try:
                manifest = yaml.safe_load(manifest_path.read_text()) or {}
            except yaml.YAMLError:
                raise AloeError(f"{manifest_path}: unreadable run manifest") from None
            if manifest.get("verb") != self.verb:
                raise AloeError(
                    f"{self.path}: this run folder belongs to 'aloe {manifest.get('verb')}', not {self.verb}"
                )
            if manifest.get("fingerprint") != self.fingerprint:
                diff = _first_difference(manifest.get("settings", {}), self.settings.model_dump(mode="json"))
                raise AloeError(
                    f"{self.path}: run folder was made with other settings ({diff}); use a new --output folder"
                )
            self.resumed = True
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            write_yaml_atomic(
                manifest_path,
                {
                    "verb": self.verb,
                    "aloe_version": __version__,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "fingerprint": self.fingerprint,
                    "settings": self.settings.model_dump(mode="json"),
                },
            )
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.chunk_dir.glob(f".*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)

    def subfolder(self, name: str) -> Path:
        """A further output folder of the run (created; temp files a killed run left there are removed)."""
        folder = self.path / name
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(f".*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
        return folder

    def chunk_path(self, name: str) -> Path:
        """Path of a chunk file."""
        return self.chunk_dir / name

    def done(self, name: str) -> bool:
        """Whether a chunk is complete."""
        return self.chunk_path(name).exists()

    def write_chunk(self, name: str, writer: Callable[[Path], None]) -> Path:
        """Run ``writer(temp_path)`` and move the result into place atomically."""
        target = self.chunk_path(name)
        with atomic_path(target) as tmp:
            writer(tmp)
        return target

    def write_summary(
        self,
        counts: dict[str, Any],
        timings: dict[str, float],
        extra: dict | None = None,
        name: str = SUMMARY,
        command: str | None = None,
    ) -> Path:
        """Write the summary YAML: command, settings, seed, versions, counts, timings (seconds)."""
        data: dict[str, Any] = {
            "verb": self.verb,
            "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "run_folder": str(self.path),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "resumed": self.resumed,
            "seed": getattr(self.settings, "seed", None),
            "settings": self.settings.model_dump(mode="json"),
            "versions": package_versions(),
            "counts": counts,
            "timings_s": {k: round(float(v), 4) for k, v in timings.items()},
        }
        if extra:
            data.update(extra)
        path = self.path / name
        write_yaml_atomic(path, data)
        return path


def open_stage_run(
    settings: Any, verb: str, runtime_keys: frozenset[str], subfolders: tuple[str, ...] = ()
) -> tuple[RunFolder, Any]:
    """Open (or resume) a stage's run folder: ``settings.output`` or ``runs/<verb>-<time>``.

    Returns the run and the settings with ``output`` filled in; ``subfolders`` are created and cleaned.
    """
    output = settings.output or default_run_dir(verb)
    settings = settings.model_copy(update={"output": Path(output)})
    run = RunFolder(output, verb, settings, runtime_keys)
    for name in subfolders:
        run.subfolder(name)
    return run, settings


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
        return "no visible difference"
    return f"{prefix.rstrip('.')}: {old!r} -> {new!r}"
