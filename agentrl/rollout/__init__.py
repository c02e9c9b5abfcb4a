"""Multi-turn rollout: the controller, token-in/token-out tokenization, the one driver, the viewer."""
