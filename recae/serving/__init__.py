"""Published models: the version registry, the scorer, recommendations, fold-in, similar films and HTTP."""
