"""Looking inside a model: latent maps, plots, anomalies and exported codes."""
