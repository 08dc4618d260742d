"""Candidate generation: substitution into prototypes, lattice guess, perturbation (MP-ALOE rules), or near-eq MD."""

from __future__ import annotations

from aloe.generate.settings import GenerateSettings, NearEqSettings
from aloe.generate.space import CandidateBatch, CandidateSpace

__all__ = ["CandidateBatch", "CandidateSpace", "GenerateSettings", "NearEqSettings"]
