"""Fitting models: configuration, the training loop, ensembles and blends, tuning, distributed runs."""
