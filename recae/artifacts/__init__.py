"""What training hands to serving: the trained model, the configuration it records, and its files.

Below both training (which builds a ``TrainedModel``) and serving (which publishes and loads one), so neither
imports the other to share it: ``trained_model`` (the scorer), ``train_config`` (how it was trained, kept in its
meta.json), ``model_files`` (safetensors + meta.json, atomic writes) and ``model_checks`` (what a file must hold).
"""
