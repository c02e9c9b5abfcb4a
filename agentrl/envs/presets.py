"""Env kwargs the laptop default of `agentrl train` uses for an env when the user gives none.

Why Search has one: SmolLM2-135M-Instruct almost never writes Search-R1's tags (measured: with the
Search-R1 prompt it answers in prose; 0 to 12% of episodes sampled at temperature 1 end with an
``<answer>`` tag, 0 of 16 greedy ones, none with a right answer), so with the exact-match reward every
group's rewards agree and GRPO has nothing to learn from. The preset trains on single-hop questions with
Search-R1's own partial credit for format (``compute_score_em``: 0.1 for an answer tag, 0.2 for a
well-formed episode, +0.1 when a retrieved passage held the answer). It is a different reward from plain
Search-v0, so it is visible: the resolved config logs it, and ``--env-kwargs '{}'`` turns it off.
Success (exact match) is reported as before.
"""

from __future__ import annotations

from typing import Any

from agentrl.errors import AgentRLError

LAPTOP_ENV_KWARGS: dict[str, dict[str, Any]] = {
    "agentrl/Search-v0": {
        "hops": 1,
        "structure_format_score": 0.2,
        "final_format_score": 0.1,
        "retrieval_score": 0.1,
    },
}
"""Per env id: the kwargs ``agentrl train --env ID`` gets without ``--env-kwargs`` (and without a suite)."""


def laptop_env_kwargs(env: str, suite: str | None) -> dict[str, Any]:
    """The :data:`LAPTOP_ENV_KWARGS` preset of ``env`` (a short name or an id); none with a suite."""
    if suite is not None:
        return {}
    from agentrl.envs.registry import resolve

    try:
        env_id = resolve(env)
    except AgentRLError:  # an unknown name is reported by the input checks, with "did you mean"
        return {}
    return dict(LAPTOP_ENV_KWARGS.get(env_id, {}))
