"""Token versions, staleness and ``--max-staleness`` (agentrl/run/staleness.py), and the async config
checks that refuse a run before anything starts (agentrl/run/async_config.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentrl.errors import ConfigError
from agentrl.run.async_config import AsyncConfig
from agentrl.run.staleness import enforce_staleness, token_versions, trained_staleness
from agentrl.run.train_config import PlacementConfig, TrainConfig
from agentrl.trainer.batch import trajectories_to_batch
from agentrl.trainer.config import AlgorithmConfig
from agentrl.types import Status, Trajectory


def _episode(
    turns: list[tuple[int, int, int | list[int]]], reward: float = 1.0, group: str = "g"
) -> Trajectory:
    """An episode from (sampled tokens, observation tokens, version or per-token versions) per turn."""
    t = Trajectory(prompt_ids=[1, 2], reward=reward, group_id=group)
    for n_sampled, n_obs, version in turns:
        turn: dict[str, Any] = {"n_sampled": n_sampled, "n_obs": n_obs}
        if isinstance(version, list):
            turn["token_versions"], turn["weight_version"] = version, min(version)
        else:
            turn["weight_version"] = version
        t.turns.append(turn)
        t.response_ids += [5] * (n_sampled + n_obs)
        t.loss_mask += [1] * n_sampled + [0] * n_obs
        t.rollout_logprobs += [-1.0] * n_sampled + [0.0] * n_obs
    versions = [v for *_, v in turns]
    t.weight_version = min(min(v) if isinstance(v, list) else v for v in versions)
    return t


def test_token_versions_follow_the_turns() -> None:
    # Turn 1: 2 sampled by v3, 1 observation; turn 2: 3 sampled, a weight update after the first (v3 -> v4).
    t = _episode([(2, 1, 3), (3, 0, [3, 4, 4])])
    assert token_versions(t) == [3, 3, None, 3, 4, 4]
    assert trained_staleness([t], trainer_version=5) == [2, 2, 2, 1, 1]
    t.response_ids.append(9)  # a token no turn accounts for
    with pytest.raises(ValueError, match="account for 6 tokens"):
        token_versions(t)


def test_drop_masks_only_the_stale_tokens_and_counts_them() -> None:
    # Trainer at v5, bound 1: versions (3, 3, -, 3, 4, 4) -> ages (2, 2, -, 2, 1, 1): 3 tokens dropped.
    t = _episode([(2, 1, 3), (3, 0, [3, 4, 4])])
    fresh = _episode([(2, 0, 5)], reward=0.0)
    kept, metrics = enforce_staleness([t, fresh], 5, 1, "drop")
    assert kept[0].loss_mask == [0, 0, 0, 0, 1, 1]
    assert t.loss_mask == [1, 1, 0, 1, 1, 1]  # the input is not changed
    assert kept[1] is fresh
    assert metrics["async/stale_tokens"] == 3
    # trained: ages 1, 1 (episode 1) and 0, 0 (fresh): mean 0.5, max 1, histogram {0: 2, 1: 2}
    assert metrics["async/trained_tokens"] == 4
    assert metrics["async/staleness_mean"] == 0.5
    assert metrics["async/staleness_max"] == 1
    assert metrics["async/staleness_tokens_0"] == 2 and metrics["async/staleness_tokens_1"] == 2
    # the group baseline still sees both rewards: advantages of a 2-episode GRPO group are +-0.7071
    batch, _ = trajectories_to_batch(kept, AlgorithmConfig())
    assert batch.advantages[0].tolist() == pytest.approx([0, 0, 0, 0, 0, 0, 0.70711, 0.70711], abs=1e-4)


def test_downweight_halves_the_advantage_per_version_over_the_bound() -> None:
    # Oldest token v2, trainer v5, bound 1: 2 versions over -> advantage x 0.25.
    old = _episode([(2, 0, 2)], reward=1.0)
    new = _episode([(2, 0, 5)], reward=0.0)
    kept, metrics = enforce_staleness([old, new], 5, 1, "downweight")
    assert kept[0].metrics["advantage_scale"] == 0.25 and kept[0].loss_mask == [1, 1]
    assert metrics["async/stale_tokens"] == 2
    batch, _ = trajectories_to_batch(kept, AlgorithmConfig())
    # GRPO: (1 - 0.5) / (std 0.7071 + 1e-6) = 0.70711 -> x 0.25 = 0.17678; the fresh one keeps -0.70711.
    assert batch.advantages[0].tolist()[2:] == pytest.approx([0.17678, 0.17678], abs=1e-4)
    assert batch.advantages[1].tolist()[2:] == pytest.approx([-0.70711, -0.70711], abs=1e-4)


@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 6)), min_size=1, max_size=4),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 3),
    st.sampled_from([Status.COMPLETED, Status.FAILED]),
)
def test_no_trained_token_exceeds_the_bound(turns: list[Any], bound: int, status: Status) -> None:
    episodes = [_episode(e, reward=float(i % 2)) for i, e in enumerate(turns)]
    episodes[0].status = status
    kept, metrics = enforce_staleness(episodes, 6, bound, "drop")
    ages = trained_staleness(kept, 6)
    assert all(age <= bound for age in ages)
    assert metrics["async/trained_tokens"] == len(ages)
    before = trained_staleness(episodes, 6)
    assert metrics["async/stale_tokens"] == sum(age > bound for age in before)  # dropped = over the bound


def _config(**kwargs: Any) -> TrainConfig:
    return TrainConfig(env="letter", model="tiny-gpt2", **kwargs)


def test_async_mode_refuses_to_start_without_an_off_policy_correction() -> None:
    one_step = AsyncConfig(async_mode="one-step")
    with pytest.raises(ConfigError, match="off-policy correction"):
        _config(asynchronous=one_step)
    assert _config(asynchronous=one_step, algorithm=AlgorithmConfig(tis_cap=2.0)).asynchronous.enabled
    icepop = AlgorithmConfig(icepop_low=0.5, icepop_high=5.0)
    assert _config(asynchronous=one_step, algorithm=icepop).asynchronous.enabled


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"asynchronous": AsyncConfig(update_weights_interval=2)}, "apply to asynchronous"),
        ({"asynchronous": AsyncConfig(async_mode="one-step", max_staleness=1)}, None),
        (
            {"asynchronous": AsyncConfig(async_mode="one-step", update_weights_interval=2), "save": "c"},
            "--save-interval=5 must be a multiple",
        ),
        (
            {
                "asynchronous": AsyncConfig(async_mode="one-step", update_weights_interval=2),
                "eval_interval": 3,
            },
            "--eval-interval=3 must be a multiple",
        ),
        ({"asynchronous": AsyncConfig(async_mode="one-step"), "debug_rollout_only": True}, "debug"),
        (
            {"asynchronous": AsyncConfig(async_mode="one-step"), "placement": PlacementConfig(num_gpus=2)},
            "Use --placement shared .* or --placement disaggregated",
        ),
        (  # shared: the engine keeps its memory, so one GPU can overlap both sides
            {
                "asynchronous": AsyncConfig(async_mode="one-step"),
                "placement": PlacementConfig(placement="shared", num_gpus=1),
            },
            None,
        ),
        (
            {
                "asynchronous": AsyncConfig(async_mode="one-step", stale_samples="downweight"),
                "algorithm": AlgorithmConfig(tis_cap=2.0, advantage_estimator="ppo"),
            },
            "downweight",
        ),
    ],
)
def test_async_config_errors(kwargs: dict[str, Any], match: str | None) -> None:
    kwargs.setdefault("algorithm", AlgorithmConfig(tis_cap=2.0))
    if match is None:
        _config(**kwargs)
        return
    with pytest.raises(ConfigError, match=match):
        _config(**kwargs)


def test_bad_values() -> None:
    with pytest.raises(ConfigError, match="update-weights-interval"):
        AsyncConfig(update_weights_interval=0)
    with pytest.raises(ConfigError, match="max-staleness"):
        AsyncConfig(max_staleness=-1)


def test_the_controller_keeps_the_versions_of_a_turn_sampled_across_an_update(tmp_path: Path) -> None:
    """Turn 1 sampled by v3; turn 2's tokens by v3 then v4 (a weight update mid-turn, as the embedded
    engine reports it in ``meta["token_versions"]``): every sampled token of the trajectory carries its
    own version, observation tokens none, and the episode's version is the oldest."""
    from rollout_harness import ScriptedEngine, ScriptedEnv, ScriptTurn
    from transformers import AutoTokenizer

    from agentrl.models import make_tiny_gpt2
    from agentrl.rollout.controller import RolloutConfig, RolloutController

    tokenizer = AutoTokenizer.from_pretrained(make_tiny_gpt2(tmp_path / "tiny"))
    script = [
        ScriptTurn("<call>look</call>", end="stop", observation=[{"role": "tool", "content": "found"}]),
        ScriptTurn("the answer"),
    ]

    class UpdatedMidTurn(ScriptedEngine):
        async def generate(
            self, input_ids: list[int], sampling: Any, *, session_id: str | None = None
        ) -> Any:
            out = await super().generate(input_ids, sampling, session_id=session_id)
            if len(self.calls) == 2:  # the second turn: its first 2 tokens by v3, the rest by v4
                out.meta["token_versions"] = [3, 3] + [4] * (len(out.output_ids) - 2)
            return out

    env, engine = ScriptedEnv(script), UpdatedMidTurn(tokenizer, script)
    controller = RolloutController(engine, tokenizer, RolloutConfig(max_new_tokens=64, max_context=512))
    traj = asyncio.run(controller.run_episode(env, task_id="t0", group_id="g"))
    first, second = (engine.turn_ids(turn) for turn in script)
    n_obs = traj.turns[0]["n_obs"]
    assert n_obs > 0
    assert token_versions(traj) == [3] * len(first) + [None] * n_obs + [3, 3] + [4] * (len(second) - 2)
    assert traj.weight_version == 3
