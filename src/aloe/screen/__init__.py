"""Query-by-committee screening: committee predictions, MP-ALOE disagreement metrics, selection."""

from __future__ import annotations

from aloe.screen.settings import ScreenSettings

__all__ = ["ScreenSettings"]
