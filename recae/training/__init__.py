"""Fitting models: the training loop, ensembles and blends, RBM training, tuning, distributed runs."""
