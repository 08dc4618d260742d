"""Labeler names -> backends (imported lazily: GPAW and pymatgen's VASP sets load only when used)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aloe.errors import AloeError

if TYPE_CHECKING:
    from aloe.label.base import Labeler
    from aloe.label.settings import LabelSettings

LABELERS = ("gpaw", "vasp", "emt")


def load_labeler(settings: LabelSettings) -> Labeler:
    """The backend named by ``settings.labeler``, configured by its section of the settings."""
    name = settings.labeler
    if name == "emt":
        from aloe.label.emt import EMTLabeler

        return EMTLabeler(settings.emt)
    if name == "gpaw":
        try:
            from aloe.label.gpaw import GPAWLabeler
        except ImportError as exc:  # gpaw itself is imported inside the backend; this guards the module
            raise AloeError(f"labeler gpaw is not available ({exc})") from None
        return GPAWLabeler(settings.gpaw)
    if name == "vasp":
        from aloe.label.vasp import VASPLabeler

        # VASP stops its own process group at the limit (a killed Python parent would leave VASP running).
        return VASPLabeler(settings.vasp, timeout=settings.timeout)
    raise AloeError(f"unknown labeler {name!r}: use one of {', '.join(LABELERS)}")
