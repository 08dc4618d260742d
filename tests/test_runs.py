"""aloe.runs: atomic writes."""

from __future__ import annotations

import os
import stat

import pytest

from aloe.runs import atomic_path


def test_an_atomic_write_gets_the_permissions_of_a_plain_write(tmp_path):
    """mkstemp's private 0600 must not reach the run folder: group members read it on a shared filesystem."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with atomic_path(tmp_path / "atomic.txt") as tmp:
        tmp.write_text("x")
    mode = stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode)
    assert mode & stat.S_IRGRP or os.umask(os.umask(0)) & stat.S_IRGRP


def test_a_failed_atomic_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
