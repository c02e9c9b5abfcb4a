"""The buffer of ``--async-mode fully`` (agentrl/run/group_buffer.py) and the checks of the mode's flags.

Hand-worked cases, then a property over random interleavings of admitting, finishing (in any order)
and taking: the buffer never holds more than its capacity, batches leave in admission order and only
once every older group is finished, and every admitted group leaves exactly once (trained or rejected).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentrl.cli import main
from agentrl.engines.config import EngineConfig
from agentrl.errors import CheckpointError, ConfigError
from agentrl.run.async_config import AsyncConfig
from agentrl.run.group_buffer import GroupBuffer
from agentrl.run.train_config import TrainConfig
from agentrl.trainer.config import AlgorithmConfig
from agentrl.types import Trajectory


def _group(index: int, rewards: tuple[float, ...] = (0.0, 1.0)) -> list[Trajectory]:
    return [
        Trajectory(prompt_ids=[1], group_id=f"{index}/k", sample_index=i, reward=r)
        for i, r in enumerate(rewards)
    ]


def _informative(group: list[Trajectory]) -> bool:
    return len({t.reward for t in group}) > 1


def test_batches_leave_in_admission_order_once_the_older_groups_are_in() -> None:
    buffer = GroupBuffer(capacity=3)
    for key in "abc":
        buffer.admit(key, {"cursor": ord(key)})
    assert buffer.room == 0
    with pytest.raises(RuntimeError, match="full"):
        buffer.admit("d", {})
    buffer.finish(1, _group(1))  # group 1 is in, group 0 is not: nothing leaves
    assert not buffer.advance(1) and buffer.ready == 1 and buffer.generating == 2
    buffer.finish(0, _group(0))
    assert buffer.advance(2)
    batch, rejected = buffer.take()
    assert [g.index for g in batch] == [0, 1] and rejected == []
    assert buffer.room == 2 and [g.key for g in buffer.groups] == ["c"]


def test_rejected_groups_leave_and_make_room_but_count_with_the_batch() -> None:
    buffer = GroupBuffer(capacity=2, keep=_informative)
    buffer.admit("a", {})
    buffer.admit("b", {})
    buffer.finish(0, _group(0, (1.0, 1.0)))  # every reward the same: rejected
    buffer.finish(1, _group(1))
    assert not buffer.advance(2)  # group 1 waits for a second kept group
    assert buffer.room == 1  # group 0 made room; group 1 still counts
    buffer.admit("c", {})
    buffer.finish(2, _group(2))
    assert buffer.advance(2)
    batch, rejected = buffer.take()
    assert [g.index for g in batch] == [1, 2] and len(rejected) == 1 and rejected[0][0].group_id == "0/k"


def test_state_round_trip_and_refusals() -> None:
    buffer = GroupBuffer(capacity=4)
    for key in "ab":
        buffer.admit(key, {"cursor": 1})
    with pytest.raises(RuntimeError, match="drain point"):
        buffer.state_dict()
    buffer.finish(0, _group(0))
    buffer.finish(1, _group(1))
    state = buffer.state_dict()
    again = GroupBuffer(capacity=4)
    again.load_state_dict(state)
    assert again.next_index == 2 and [g.key for g in again.groups] == ["a", "b"]
    assert again.groups[1].episodes == buffer.groups[1].episodes
    with pytest.raises(CheckpointError, match="--async-buffer-size"):
        GroupBuffer(capacity=3).load_state_dict(state)


@given(
    capacity=st.integers(1, 6),
    batch=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    steps=st.integers(1, 60),
)
def test_every_group_leaves_once_in_order_within_capacity(
    capacity: int, batch: int, seed: int, steps: int
) -> None:
    batch = min(batch, capacity)
    rng = random.Random(seed)
    buffer = GroupBuffer(capacity, keep=_informative)
    left: list[int] = []
    for _ in range(steps):
        while buffer.room:
            buffer.admit("k", {})
        generating = [g.index for g in buffer.groups if g.episodes is None]
        for index in rng.sample(generating, rng.randint(0, len(generating))):
            rewards = (0.0, 1.0) if rng.random() < 0.7 else (0.0, 0.0)
            buffer.finish(index, _group(index, rewards))
        assert len(buffer.groups) + len(buffer.batch) <= capacity
        if buffer.advance(batch):
            taken, rejected = buffer.take()
            assert len(taken) == batch and all(_informative(g.episodes or []) for g in taken)
            left += [g.index for g in taken] + [int(g[0].group_id.split("/")[0]) for g in rejected]
            assert all(g.index > max(left) for g in buffer.groups)  # older groups all left first
    pending = [g.index for g in buffer.batch] + [int(g[0].group_id.split("/")[0]) for g in buffer.rejected]
    gone = sorted(left + pending)
    assert gone == list(range(len(gone)))  # each admitted group left at most once, oldest first
    assert gone + [g.index for g in buffer.groups] == list(range(buffer.next_index))


def _config(**kwargs: Any) -> TrainConfig:
    kwargs.setdefault("algorithm", AlgorithmConfig(tis_cap=2.0))
    return TrainConfig(env="letter", model="tiny-gpt2", rollout_batch_size=4, **kwargs)


@pytest.mark.parametrize(
    ("asynchronous", "extra", "match"),
    [
        (AsyncConfig(async_mode="fully"), {}, None),
        (AsyncConfig(async_mode="fully", async_buffer_size=4), {}, None),
        (AsyncConfig(async_mode="fully"), {"inference": EngineConfig(engine="sglang")}, None),
        (AsyncConfig(async_mode="fully", async_buffer_size=3), {}, "cannot hold one batch"),
        (AsyncConfig(async_buffer_size=8), {}, "--async-buffer-size bounds the buffer"),
        (AsyncConfig(async_mode="one-step", async_buffer_size=8), {}, "one-step has no buffer"),
        (AsyncConfig(async_mode="fully"), {"algorithm": AlgorithmConfig()}, "off-policy correction"),
        (AsyncConfig(async_mode="fully"), {"buffer": "my.mod:Replay"}, "drop --buffer"),
        (
            AsyncConfig(async_mode="fully", update_weights_interval=2),
            {"save": "ckpt", "save_interval": 3},
            "--save-interval=3 must be a multiple",
        ),
    ],
)
def test_fully_async_flag_checks(asynchronous: AsyncConfig, extra: dict[str, Any], match: str | None) -> None:
    if match is None:
        assert _config(asynchronous=asynchronous, **extra).asynchronous.buffer_groups(4) >= 4
        return
    with pytest.raises(ConfigError, match=match):
        _config(asynchronous=asynchronous, **extra)
    with pytest.raises(ConfigError, match="must be >= 1"):
        AsyncConfig(async_buffer_size=0)


def test_fully_async_refuses_a_replay_buffer_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray started before the flags were checked")

    monkeypatch.setattr(ray, "init", forbidden)
    argv = ["train", "--env", "search", "--async-mode", "fully", "--tis-cap", "2", "--engine", "sglang"]
    assert main([*argv, "--buffer", "my.mod:Replay"]) == 2
    err = capsys.readouterr().err
    assert "--async-mode fully has its own buffer" in err and "Traceback" not in err
