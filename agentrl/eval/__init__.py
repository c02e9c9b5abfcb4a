"""Evaluation on env suites, and `agentrl eval --run` (repeat a training run's own evaluation)."""
