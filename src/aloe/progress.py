"""Progress bars (tqdm) that switch off cleanly for tests, pipes and ``--quiet``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled(requested: bool | None = None) -> bool:
    """Whether to draw bars: an explicit request wins, then ``ALOE_PROGRESS=0/1``, then "is stderr a terminal"."""
    if requested is not None:
        return requested
    env = os.environ.get("ALOE_PROGRESS")
    if env is not None:
        return env not in {"0", "false", "no", ""}
    return sys.stderr.isatty()


def progress_bar(iterable: Iterable[T], *, enabled: bool | None = None, **kwargs) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar when enabled (keyword arguments go to tqdm)."""
    if not progress_enabled(enabled):
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, dynamic_ncols=True, **kwargs)


def make_bar(*, enabled: bool | None = None, **kwargs):
    """A manually updated tqdm bar, or a no-op stand-in when disabled."""
    if not progress_enabled(enabled):
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(dynamic_ncols=True, **kwargs)


class _NullBar:
    """Does nothing; has the parts of tqdm's API that aloe uses."""

    def update(self, n: int = 1) -> None:
        """Ignore an update."""

    def set_postfix(self, *args, **kwargs) -> None:
        """Ignore a postfix."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc) -> None:
        return None
