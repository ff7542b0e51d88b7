"""Published models: the version registry, evaluating a version, recommendations, fold-in, similar films and HTTP."""
