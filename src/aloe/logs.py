"""The run log: everything goes to ``<run folder>/aloe.log``; the terminal gets aloe's own messages only.

While :func:`run_log` is open (the CLI opens it around every stage verb and ``aloe run``):

- file descriptors 1 and 2 point at the log, so whatever libraries print (Python ``print``, C code, the child
  processes that labelling and training start, which inherit them) lands in the log, not on the screen;
- Python warnings and every logger (the root logger's handlers are replaced by one on the log file) go to the log;
- :func:`echo` writes aloe's messages (run folder, stage and progress lines, results) to the terminal, kept on a
  copy of the original standard output, and to the log.

Errors stay visible: the context restores the terminal before an exception leaves it, so ``aloe: error: ...`` lines
and crash tracebacks are printed on the screen as before (and the log records them too).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TextIO

from aloe.layout import RUN_LOG as LOG_FILE

#: aloe's messages; the run log's file handler records them (the terminal gets them from :func:`echo`).
_log = logging.getLogger("aloe")


class Console:
    """aloe's messages to the user: one stream (the terminal, or whatever standard output was)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def isatty(self) -> bool:
        """Whether the stream is a terminal (then progress may redraw a line)."""
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def write_line(self, message: str) -> None:
        """``message`` and a newline, flushed (a pipe shows it at once)."""
        with self._lock:
            self.stream.write(message + "\n")
            self.stream.flush()


#: The console of the open run log (None: none is open; :func:`console` then uses the current standard output).
_active: Console | None = None


def console() -> Console:
    """Where aloe's messages go: the open run log's terminal, else the current ``sys.stdout``."""
    return _active if _active is not None else Console(sys.stdout)


def log_open() -> bool:
    """Whether a run log is open (the CLI is running a stage or a loop)."""
    return _active is not None


def echo(message: str) -> None:
    """Show one of aloe's messages on the terminal and record it in the run log (when one is open)."""
    console().write_line(message)
    _log.info(message)


def _terminal_stream(stream: TextIO) -> tuple[TextIO, bool]:
    """A stream to the terminal that survives fd 1 being pointed at the log: ``(stream, owned)``.

    A real standard output is duplicated onto a new descriptor; one without a descriptor (a test runner's buffer)
    is used as it is, since redirecting descriptors does not touch it.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return stream, False
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=encoding, errors="replace"), True


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning into the log (logger ``py.warnings``, as ``logging.captureWarnings`` does).

    Warnings raised inside aloe's code go there too: most come from libraries it calls (matplotlib, pymatgen) and
    name aloe's line through their ``stacklevel``.
    """
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning(text)


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@contextlib.contextmanager
def run_log(folder: str | Path, command: str | None = None) -> Iterator[Path]:
    """Send everything but aloe's messages to ``folder/aloe.log`` (appended to) while the block runs.

    Nested calls (a loop's stages) keep the log that is already open. When the block fails before anything but
    the log was written in ``folder`` (a bad setting), the log and a folder made for it are removed again, so a
    refused command leaves no run folder behind.

    Yields
    ------
    Path
        The log file.
    """
    global _active
    folder = Path(folder)
    if _active is not None:
        yield folder / LOG_FILE
        return
    from aloe.errors import AloeError

    if folder.exists() and not folder.is_dir():
        raise AloeError(f"{folder}: exists and is not a folder; choose another output folder")
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission ...
        raise AloeError(f"{folder}: cannot create the run folder ({exc.strerror or exc})") from None
    before = _names(folder)
    path = folder / LOG_FILE
    new_log = not path.exists()

    sys.stdout.flush()
    sys.stderr.flush()
    terminal, owned = _terminal_stream(sys.stdout)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved: dict[int, int] = {}
    for fd in (1, 2):
        with contextlib.suppress(OSError):  # a closed descriptor stays closed
            saved[fd] = os.dup(fd)
            os.dup2(log_fd, fd)
    # The log as Python's standard streams too (appending: lines of this process and its children interleave).
    log_stream = os.fdopen(log_fd, "a", buffering=1, encoding="utf-8", errors="replace")
    old_streams = (sys.stdout, sys.stderr)
    sys.stdout = sys.stderr = log_stream

    root = logging.getLogger()
    old_root = (root.handlers[:], root.level)
    handler = logging.StreamHandler(log_stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    old_aloe_level = _log.level
    _log.setLevel(logging.INFO)
    old_showwarning = warnings.showwarning
    warnings.showwarning = _showwarning
    _active = Console(terminal)
    forkserver_before = _forkserver_pid()
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    _log.info("==== %s (started %s, pid %d)", command or "aloe", started, os.getpid())
    failed = True
    try:
        yield path
        failed = False
    except Exception as exc:
        import click

        from aloe.errors import AloeError

        if isinstance(exc, click.exceptions.Exit):
            raise
        if isinstance(exc, AloeError):
            _log.error("aloe: error: %s", exc)
        else:
            _log.exception("aloe stopped by an unexpected error")
        raise
    except KeyboardInterrupt:
        _log.error("aloe: interrupted")
        raise
    finally:
        _active = None
        if forkserver_before is None:
            _stop_forkserver()
        warnings.showwarning = old_showwarning
        _log.setLevel(old_aloe_level)
        root.handlers, level = old_root
        root.setLevel(level)
        sys.stdout, sys.stderr = old_streams
        log_stream.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        log_stream.close()
        if owned:
            terminal.close()
        if failed and new_log and _names(folder) - {LOG_FILE} == before - {LOG_FILE}:
            # Nothing but the log was written: a refused command leaves no trace.
            path.unlink(missing_ok=True)
            for folder_made in made:
                with contextlib.suppress(OSError):
                    folder_made.rmdir()


def _forkserver_pid() -> int | None:
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def _stop_forkserver() -> None:
    """Stop a forkserver this log's block started: its children inherit its descriptors, which point at this log.

    (Only matters when one process opens several logs, e.g. tests; the next block then starts a fresh server.)
    """
    from multiprocessing import forkserver

    if _forkserver_pid() is not None:
        with contextlib.suppress(Exception):  # private API of the standard library: best effort
            forkserver._forkserver._stop()


def format_seconds(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour on)."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


__all__ = ["LOG_FILE", "Console", "console", "echo", "format_seconds", "log_open", "run_log"]
