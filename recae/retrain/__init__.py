"""The nightly job: inbox of new ratings, warm start, champion/challenger verdict and run records."""
