"""Run folders: a manifest that pins the settings, chunk files written atomically, and a summary YAML.

Layout of a run folder::

    run.yaml          verb, settings, their fingerprint, aloe version (written once; checked on resume)
    run.lock          held (``flock``) by the process working in the folder; holds its process id
    chunks/           the stage's output, one file per chunk, each written to a temp name and renamed
    summary.yaml      command, resolved settings, seed, package versions, counts, timings (rewritten at the end)

A chunk file exists only when complete, so a killed stage resumes by skipping the chunks that exist; leftover
temp files are removed. A stage refuses an existing non-empty folder that is not one of its run folders, and a
run folder another process works in ("run folder X in use by process N"). The lock is an advisory ``flock`` on
``run.lock``, held open while the process works there: the kernel drops it when the process ends, however it ends
(a ``kill -9`` included), so a stale lock never blocks a resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import shlex
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from aloe import __version__
from aloe.errors import AloeError
from aloe.layout import CHUNKS, LOCK_FILE, MANIFEST, RUN_LOG, SUMMARY
from aloe.settings import AloeSettings

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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process's umask when aloe was imported: the permissions every file aloe writes gets (as ``open`` gives).
_UMASK = _current_umask()


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
        # mkstemp makes the file private (0600); a run folder on a shared filesystem is read by the group
        os.chmod(tmp_path, (0o777 if tmp_path.is_dir() else 0o666) & ~_UMASK)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def slug(text: str, length: int = 48, identity: str | None = None) -> str:
    """A file-name-safe, unique key of ``text``: its readable part and a short hash.

    Parameters
    ----------
    text
        What the name shows: characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``, the
        result is cut to ``length`` characters (``x`` when nothing is left).
    length
        Most characters of the readable part.
    identity
        What the hash (8 hex digits of SHA-1) makes unique; ``text`` by default.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:length] or "x"
    digest = hashlib.sha1((text if identity is None else identity).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def plain_data(value: Any) -> Any:
    """``value`` in plain YAML/JSON types (lists, Python numbers, strings; non-finite floats become ``None``).

    Dicts (keys as strings), lists, tuples and numpy arrays become dicts and lists; numpy scalars Python numbers;
    paths strings.
    """
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [plain_data(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_yaml_atomic(path: str | Path, data: Any) -> None:
    """Write YAML through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


# ---- locks --------------------------------------------------------------------------------------------------
#: Lock files this process holds: path -> [file descriptor, how many holders in this process].
_HELD: dict[str, list[int]] = {}


def _forget_inherited_locks() -> None:
    """Close the lock descriptors a forked child inherited.

    Closing, unlike ``LOCK_UN``, leaves the parent's lock in place; a worker that outlives a killed parent then
    does not keep its run folder locked.
    """
    for fd, _ in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)


class FolderLock:
    """An advisory lock on one lock file, held by this process until :meth:`release` (or until it ends).

    Re-entrant within a process (a stage resumed in the same process shares the lock); another process that asks
    for it gets an :class:`~aloe.errors.AloeError` naming the holder's process id.

    Parameters
    ----------
    path
        The lock file (created).
    folder
        The folder it guards (for the message).
    shared
        Take a shared lock (several holders at once, e.g. shards of one generate run) instead of an exclusive one.
    """

    def __init__(self, path: Path, folder: Path, shared: bool = False) -> None:
        self.path = path
        self._key = str(path.resolve())
        self._released = False
        held = _HELD.get(self._key)
        if held is not None:
            held[1] += 1
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock on Windows: run folders are not guarded there
            _HELD[self._key] = [-1, 1]
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AloeError(
                f"{folder}: cannot create the lock file {path.name} ({exc.strerror or exc})"
            ) from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise AloeError(
                f"run folder {folder} in use by {who} (wait for it to end, or use another output folder)"
            ) from None
        with contextlib.suppress(OSError):  # the pid is for the message only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[self._key] = [fd, 1]

    def release(self) -> None:
        """Give the lock up (once); the last holder in this process closes the file, which drops the lock."""
        if self._released:
            return
        self._released = True
        held = _HELD.get(self._key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _HELD[self._key]
            if held[0] >= 0:
                os.close(held[0])


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or "x")
    return None


def _tmp_of(name: str) -> re.Pattern[str]:
    """Names :func:`atomic_path` gives the temp files of ``name``."""
    return re.compile(rf"\.{re.escape(name)}\..*{re.escape(TMP_SUFFIX)}\Z")


def claim_folder(
    path: str | Path, marker: str, owner: str, lock_name: str = LOCK_FILE, shared: bool = False
) -> FolderClaim:
    """Create or reopen the run folder ``path`` and lock it for this process.

    Parameters
    ----------
    path
        The folder.
    marker
        The file that makes a folder one of ``owner``'s run folders (``run.yaml``, a loop's ``config.yaml``).
    owner
        Who asks (``aloe screen``), for the message.
    lock_name
        The lock file; with ``shared``, a shared lock on ``run.lock`` is also taken (see :class:`RunFolder`).
    shared
        Take ``lock_name`` exclusively but ``run.lock`` shared.

    Raises
    ------
    AloeError
        ``path`` is a file, cannot be created, is a non-empty folder without ``marker`` (the outputs would mix
        with files already there), or is locked by another process.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AloeError(f"{path}: exists and is not a folder; choose another output folder")
    _refuse_foreign(path, marker, owner)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AloeError(f"{path}: cannot create the run folder ({exc.strerror or exc})") from None
    locks = [FolderLock(path / LOCK_FILE, path, shared=True)] if shared else []
    try:
        locks.append(FolderLock(path / lock_name, path))
        # Again under the lock: another process may have filled the folder between the first look and now.
        _refuse_foreign(path, marker, owner)
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return FolderClaim(locks)


class FolderClaim:
    """The locks :func:`claim_folder` took on a folder, released together."""

    def __init__(self, locks: list[FolderLock]) -> None:
        self.locks = locks

    def release(self) -> None:
        """Release every lock (once)."""
        for lock in reversed(self.locks):
            lock.release()


def _refuse_foreign(path: Path, marker: str, owner: str) -> None:
    if not path.is_dir() or (path / marker).exists():
        return
    temp = _tmp_of(marker)
    # Before the marker is written a run folder holds at most its lock files, the marker's temp file and the run
    # log the CLI opens first (``aloe.log``, see aloe.logs; it removes the log again when the command is refused).
    others = sorted(
        p.name
        for p in path.iterdir()
        if not (p.name.endswith(".lock") and p.is_file()) and not temp.match(p.name) and p.name != RUN_LOG
    )
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise AloeError(
            f"{path}: folder is not empty and is not a run folder of {owner} (it holds {shown}); "
            "use a new or empty output folder"
        )


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

    The folder is locked for this process until :meth:`close` or until the object is garbage-collected (a stage
    function's return). Settings with a ``shard`` (``'K/N'``, generate) lock only their shard exclusively: shards
    of one run may work in its folder at the same time, each shard once.
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
        shard = getattr(settings, "shard", None)
        lock_name = f"run-shard-{shard.replace('/', '-of-')}.lock" if shard else LOCK_FILE
        self._lock = claim_folder(self.path, MANIFEST, f"aloe {verb}", lock_name, shared=bool(shard))
        self._finalizer = weakref.finalize(self, self._lock.release)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder's lock (the stage is done with it)."""
        self._finalizer()

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
