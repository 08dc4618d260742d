"""Fixtures of the select tests: a generate run of 100 candidates and a finished DIRECT selection of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from aloe.generate.settings import GenerateSettings
from aloe.generate.stage import generate
from aloe.select.stage import select
from tests.conftest import write_prototypes
from tests.select.helpers import select_settings


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("select")


@pytest.fixture(scope="module")
def gen_run(module_dir) -> Path:
    """100 candidates (5 elements, 4 prototypes) in 5 chunks of 20."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALOE_CACHE_DIR", str(module_dir / "cache"))
        settings = GenerateSettings.model_validate(
            {
                "prototypes": {"source": str(write_prototypes(module_dir / "protos"))},
                "elements": ["Li", "O", "Mg", "Fe", "Cu"],
                "chunk_size": 20,
                "output": str(module_dir / "gen"),
                "subsampling": {"enabled": False},
            }
        )
        generate(settings)
    return module_dir / "gen"


@pytest.fixture(scope="module")
def base(gen_run, module_dir):
    """A finished matminer select run of the generate run (read-only: tests that change it work on a copy)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALOE_CACHE_DIR", str(module_dir / "cache"))
        return select(select_settings(gen_run, module_dir / "sel"))
