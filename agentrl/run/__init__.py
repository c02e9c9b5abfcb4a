"""A training run: the loop, Ray actors, placement, task sampling and metrics."""
