"""Prototype structures with placeholder species (H, He, Li stand for the first, second and third element)."""

from __future__ import annotations

from aloe.prototypes.library import (
    DEFAULT_PLACEHOLDERS,
    LoadReport,
    Prototype,
    PrototypeLibrary,
    load_prototypes,
    parse_weight_from_name,
)
from aloe.prototypes.occupations import distinct_occupations

__all__ = [
    "DEFAULT_PLACEHOLDERS",
    "LoadReport",
    "Prototype",
    "PrototypeLibrary",
    "distinct_occupations",
    "load_prototypes",
    "parse_weight_from_name",
]
