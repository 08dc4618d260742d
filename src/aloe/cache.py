"""aloe's cache folder (converted prototype libraries, elemental references, isolated-atom energies)."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that overrides the cache directory.
CACHE_ENV = "ALOE_CACHE_DIR"


def cache_dir() -> Path:
    """Directory of aloe's caches: ``$ALOE_CACHE_DIR`` if set, else ``~/.cache/aloe``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aloe"
