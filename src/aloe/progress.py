"""Progress of a stage: a redrawn tqdm bar on a terminal, plain lines elsewhere, nothing for tests and ``--no-progress``.

Off a terminal (a pipe, a file, a batch job's output) a redrawn bar would be one long line of carriage returns, so
the progress is written as plain lines instead: ``[iter 1/2] label (gpaw): 4/6 structures, 4 ok, 0 failed, 02:31``,
at most one every :data:`LINE_INTERVAL` seconds, one every :data:`HEARTBEAT` seconds while nothing changes, and one
when the bar closes. The run log gets such lines whatever the display: a terminal bar writes one to the log every
:data:`HEARTBEAT` seconds, and with progress off (``--no-progress``) a bar still writes its lines to an open run
log (:func:`make_bar`) or, in a worker process whose output is the run log, to that output (:func:`make_log_bar`). The ``[iter 1/2]`` prefix comes from :func:`progress_prefix` (the loop sets it around each stage); lines
written without a bar (the elemental references' ``references chgnet-r2scan: F 12/89 ...``) get it from
:func:`prefixed`. Both go to aloe's console (:mod:`aloe.logs`): the terminal, and the run log when one is open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from aloe.logs import console, echo, format_seconds, log_open

T = TypeVar("T")

#: Seconds between two plain progress lines of one bar (the last line is always written).
LINE_INTERVAL = 10.0
#: Seconds after which a line is written even when nothing changed: the run log hears from a long loop at least
#: this often, whatever ``--progress`` says.
HEARTBEAT = 30.0
#: Seconds a due line waits for the counts a stage sets right after an update.
SETTLE = 0.2

#: Text put before every bar's description (``[iter 1/2] `` while the loop runs a stage).
_prefix = ""


@contextlib.contextmanager
def progress_prefix(text: str) -> Iterator[None]:
    """Put ``text`` before the description of every bar made inside the block."""
    global _prefix
    old, _prefix = _prefix, text
    try:
        yield
    finally:
        _prefix = old


def prefixed(line: str) -> str:
    """``line`` with the current :func:`progress_prefix` before it (for progress lines written without a bar)."""
    return _prefix + line


def progress_enabled(requested: bool | None = None) -> bool:
    """Whether to show progress: an explicit request wins, then ``ALOE_PROGRESS=0/1``.

    Otherwise progress is shown when the CLI runs (a run log is open) or standard output is a terminal.
    """
    if requested is not None:
        return requested
    env = os.environ.get("ALOE_PROGRESS")
    if env is not None:
        return env not in {"0", "false", "no", ""}
    return log_open() or console().isatty()


def progress_bar(iterable: Iterable[T], *, enabled: bool | None = None, **kwargs: Any) -> Iterator[T]:
    """Iterate ``iterable`` with a progress display (keyword arguments: ``total``, ``desc``, ``unit``)."""
    if not progress_enabled(enabled) and not log_open():
        yield from iterable
        return
    if "total" not in kwargs:
        with contextlib.suppress(TypeError):
            kwargs["total"] = len(iterable)  # type: ignore[arg-type]
    bar = make_bar(enabled=enabled, **kwargs)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


def make_bar(
    *, enabled: bool | None = None, total: int | None = None, desc: str = "", unit: str = "it", **kwargs: Any
):
    """A manually updated progress display: tqdm on a terminal, :class:`LineProgress` elsewhere.

    With progress off, the lines still go to the run log when one is open (never to the terminal); without a run
    log the bar does nothing.
    """
    if not progress_enabled(enabled):
        return (
            LineProgress(total=total, desc=_prefix + desc, unit=unit, write=_to_log)
            if log_open()
            else _NullBar()
        )
    desc = _prefix + desc
    out = console()
    if out.isatty():
        return _TerminalBar(out.stream, total=total, desc=desc, unit=unit, **kwargs)
    return LineProgress(total=total, desc=desc, unit=unit)


def make_log_bar(*, total: int | None = None, desc: str = "", unit: str = "it") -> LineProgress | _NullBar:
    """Progress lines for the run log only, never for a terminal.

    In the process that holds the run log the lines go to it (file only). In a worker process of a CLI run (a
    pool worker inherits its output from the process that opened the log) they go to that output, unless it is a
    terminal; there is no log to write to then and the bar does nothing.
    """
    if log_open():
        return LineProgress(total=total, desc=_prefix + desc, unit=unit, write=_to_log)
    if console().isatty():
        return _NullBar()
    return LineProgress(
        total=total, desc=_prefix + desc, unit=unit, write=lambda line: console().write_line(line)
    )


def _to_log(line: str) -> None:
    """One line for the run log's file only (the terminal does not see it)."""
    logging.getLogger("aloe").info(line)


def _postfix_item(key: str, value: Any) -> str:
    """``ok=4`` -> ``4 ok``; ``per_s="8.0"`` -> ``8.0/s``; ``element="Cu"`` -> ``element Cu``."""
    if key == "per_s":
        return f"{value}/s"
    if isinstance(value, int | float) or (isinstance(value, str) and value.replace(",", "").isdigit()):
        return f"{value} {key}"
    return f"{key} {value}"


def _plural(unit: str) -> str:
    unit = unit.strip() or "item"
    if unit.endswith("y") and not unit.endswith(("ay", "ey", "oy")):
        return unit[:-1] + "ies"
    return unit if unit.endswith("s") else unit + "s"


class _Counts:
    """What a progress line says: ``desc: n/total units, postfix, mm:ss``."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix = ""
        self.started = time.monotonic()

    def _state(self) -> str:
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        parts = [f"{self.desc}: {count} {_plural(self.unit)}"]
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def line(self) -> str:
        """The current progress line."""
        return f"{self._state()}, {format_seconds(time.monotonic() - self.started)}"

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Shown after the progress: counts as ``4 ok, 0 failed``, other values as ``element Cu``."""
        items = dict(*args, **kwargs)
        self.postfix = ", ".join(_postfix_item(key, value) for key, value in items.items())


class LineProgress(_Counts):
    """Progress as plain lines, for pipes and log files.

    A line is written when something changed and :data:`LINE_INTERVAL` seconds passed since the last one, every
    :data:`HEARTBEAT` seconds while nothing changes (a DFT calculation can take minutes: the time shows the run is
    alive), and at the close. A due line waits :data:`SETTLE` seconds, so that counts a stage sets right after an
    update are in it. Has the parts of tqdm's API that aloe uses (``update``, ``set_postfix``, ``set_postfix_str``,
    ``close``).

    Parameters
    ----------
    total, desc, unit
        As tqdm's.
    interval, heartbeat
        Seconds between lines while something changes, and while nothing does (default :data:`HEARTBEAT`).
    write
        Where a line goes: :func:`aloe.logs.echo` (the console and the run log) by default.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        interval: float = LINE_INTERVAL,
        heartbeat: float | None = None,
        write: Callable[[str], None] = echo,
    ) -> None:
        super().__init__(total, desc, unit)
        self.interval, self.heartbeat = interval, HEARTBEAT if heartbeat is None else heartbeat
        self._emit = write
        self.last = self.started
        self.closed = False
        self._written = ""  # the last line without its time
        self._due_at: float | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="aloe-progress", daemon=True)
        self._thread.start()

    def _write(self, now: float) -> None:
        self._emit(self.line())
        self.last, self._written, self._due_at = now, self._state(), None

    def _changed(self) -> None:
        """Something changed: a line is due once the interval since the last one is over (not for the last item)."""
        with self._lock:
            now = time.monotonic()
            done = self.total is not None and self.n >= self.total  # close() writes that line
            if not done and self._due_at is None and self._state() != self._written:
                self._due_at = max(now + SETTLE, self.last + self.interval)

    def _watch(self) -> None:
        while not self._halt.wait(SETTLE):
            with self._lock:
                now = time.monotonic()
                if self._due_at is not None and now >= self._due_at:
                    self._write(now)
                elif now - self.last >= self.heartbeat:
                    self._write(now)

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.n += n
        self._changed()

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Shown after the progress: counts as ``4 ok, 0 failed``, other values as ``element Cu``."""
        super().set_postfix(*args, **kwargs)
        self._changed()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """Free text after the progress (the train stage's epochs)."""
        self.postfix = text
        self._changed()

    def close(self) -> None:
        """Write the final line and stop."""
        if self.closed:
            return
        self.closed = True
        self._halt.set()
        with self._lock:
            self._write(time.monotonic())

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TerminalBar:
    """tqdm on the terminal; the run log gets its state as a line every :data:`HEARTBEAT` seconds and at the end."""

    def __init__(self, stream: Any, total: int | None, desc: str, unit: str, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, **kwargs)
        self._line = _Counts(total, desc, unit)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="aloe-progress-log", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._halt.wait(HEARTBEAT):
            _to_log(self._line.line())

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self._bar.update(n)
        self._line.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Counts after the bar."""
        self._bar.set_postfix(*args, **kwargs)
        self._line.set_postfix(*args, **kwargs)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """Free text after the bar."""
        self._bar.set_postfix_str(text, refresh=refresh)
        self._line.postfix = text

    def close(self) -> None:
        """Close the bar (tqdm leaves it on screen) and log its final state."""
        if self._halt.is_set():
            return
        self._halt.set()
        self._bar.close()
        _to_log(self._line.line())

    def __enter__(self) -> _TerminalBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NullBar:
    """Does nothing; has the parts of tqdm's API that aloe uses."""

    def update(self, n: int = 1) -> None:
        """Ignore an update."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Ignore a postfix."""

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        """Ignore a postfix."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
