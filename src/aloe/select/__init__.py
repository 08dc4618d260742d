"""The select stage: DIRECT down-sampling (encoders, PCA + BIRCH, k per cluster)."""
