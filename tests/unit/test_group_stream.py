"""The rollout manager's stream of groups (``--async-mode fully``, agentrl/rollout/stream.py): groups come
back as they finish, named by their index, while the manager's other work (a weight update, a batch of
``generate``) runs beside the episodes still going; closing cancels the groups still running."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rollout_harness import ScriptedEngine, ScriptedEnv, ScriptTurn

from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.errors import EngineDeadError
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig
from agentrl.rollout.driver import EnvSpec, RolloutManager
from agentrl.rollout.episodes import GenerationSettings

SCRIPT = [ScriptTurn("done", end="eos")]


class GatedEngine(ScriptedEngine):
    """Answers at once, except for sessions of the groups in ``gated`` (group id prefix
    ``"<index>/"``), which wait for ``release``; outputs carry the weights' version."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, SCRIPT)
        self.version = 0
        self.gated: set[int] = set()
        self.release = threading.Event()
        self.dead = False

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        if self.dead:
            raise EngineDeadError("the engine process exited")
        while int((session_id or "0/").split("/", 1)[0]) in self.gated and not self.release.is_set():
            await asyncio.sleep(0.005)
        ids = self.turn_ids(SCRIPT[0])
        return GenerateOutput(ids, [-0.1] * len(ids), "stop", weight_version=self.version)

    async def update_weights(self, source: Any, *, version: int) -> None:
        self.version = version


@pytest.fixture()
def manager(tmp_path: Path) -> Any:
    from transformers import AutoTokenizer

    model = make_tiny_gpt2(tmp_path / "tiny")
    engine = GatedEngine(AutoTokenizer.from_pretrained(model))
    manager = RolloutManager(
        engine,
        model,
        [EnvSpec("scripted", "train")],
        rollout=RolloutConfig(),
        seed=0,
        env_factory=lambda **kw: ScriptedEnv(SCRIPT, num_tasks=2, with_tools=False, **kw),
    )
    yield manager, engine
    manager.close()


def _poll_until(manager: RolloutManager, n: int) -> list[tuple[int, list[Any]]]:
    got: list[tuple[int, list[Any]]] = []
    deadline = time.monotonic() + 30
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} groups came back"
        got += manager.stream_poll(0.05)
    return got


def test_groups_come_back_as_they_finish_while_other_work_runs(manager: Any) -> None:
    manager, engine = manager
    engine.gated = {0}
    settings = GenerationSettings(2, 1.0)
    manager.stream_submit([(0, "0:t0"), (1, "0:t1")], settings)
    ((index, episodes),) = _poll_until(manager, 1)  # group 1 finishes, group 0 waits on the engine
    assert index == 1 and [t.group_id for t in episodes] == ["1/0:t1", "1/0:t1"]
    assert [t.sample_index for t in episodes] == [0, 1] and {t.weight_version for t in episodes} == {0}
    manager.update_weights(None, version=7)  # returns while group 0's episodes are still running
    batch = manager.generate(["0:t1"], GenerationSettings(1, 1.0, step=3))
    assert [t.group_id for t in batch] == ["3/0:t1"] and batch[0].weight_version == 7
    assert manager.stream_poll(0.05) == []  # group 0 is still gated
    engine.release.set()
    ((index, episodes),) = _poll_until(manager, 1)
    assert index == 0 and len(episodes) == 2 and {t.weight_version for t in episodes} == {7}


def test_close_cancels_running_groups_and_a_dead_engine_is_raised(manager: Any) -> None:
    manager, engine = manager
    engine.gated = {5}
    manager.stream_submit([(5, "0:t0")], GenerationSettings(2, 1.0))
    start = time.monotonic()
    manager.close()  # group 5 never finishes by itself
    assert time.monotonic() - start < 10


def test_a_dead_engine_ends_the_stream(manager: Any) -> None:
    manager, engine = manager
    engine.dead = True
    manager.stream_submit([(0, "0:t0")], GenerationSettings(2, 1.0))
    with pytest.raises(EngineDeadError):
        _poll_until(manager, 1)
