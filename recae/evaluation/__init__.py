"""How good is a model: held-out splits, rating and ranking metrics, baselines and implicit-feedback (click) data.

Pure and seeded (the store is only read); ``evaluate`` composes the parts into one report for a published model.
"""
