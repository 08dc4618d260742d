"""The train stage: a committee of MACE models trained by mace-torch's run_train, each on its own split."""
