"""agentrl: an agentic environment gym and multi-turn RL trainer for LLMs."""

__version__ = "0.1.0"
