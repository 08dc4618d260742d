"""The label stage: DFT (GPAW, VASP) or stand-in labels for selected structures, as MatPES-schema records."""
