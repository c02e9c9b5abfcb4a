"""docs/reliability.md B14 end to end: a sandbox container killed mid-episode ends that episode FAILED within
one step, through agentrl/PythonTool-v0 and the rollout controller, and the next episode completes.

Everything is real except the model: a scripted engine emits SmolLM2 token ids of fixed turns.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from rollout_harness import ScriptedEngine, ScriptTurn
from transformers import AutoTokenizer

import agentrl
from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.models import resolve_model
from agentrl.rollout.controller import RolloutConfig, RolloutController
from agentrl.tools.sandbox import SandboxConfig
from agentrl.tools.sandbox.engine import connect
from agentrl.types import Status


def call(code: str) -> ScriptTurn:
    return ScriptTurn(f"<tool_call>{json.dumps({'name': 'python', 'arguments': {'code': code}})}</tool_call>")


class KillingEngine(ScriptedEngine):
    """Before generating turn ``kill_before``, kills every container of the run (the sandbox dies)."""

    def __init__(self, tokenizer: Any, script: list[ScriptTurn], run_id: str, kill_before: int) -> None:
        super().__init__(tokenizer, script)
        self.run_id, self.kill_before = run_id, kill_before

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        if len(self.calls) == self.kill_before:
            client = connect()
            for container in client.containers(filters={"label": f"agentrl.run={self.run_id}"}):
                client.kill(container["Id"])
        return await super().generate(input_ids, sampling, session_id=session_id)


def test_killed_container_fails_the_episode_and_the_next_one_runs() -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    run_id = f"test-episode-{uuid.uuid4().hex[:8]}"
    env = agentrl.make(
        "python-tool", split="test", tasks_per_generator=2, sandbox_config=SandboxConfig(run_id=run_id)
    )
    script = [call("print('turn one')"), call("print('turn two')"), call("print('turn three')")]
    config = RolloutConfig(max_new_tokens=200, max_context=8192)
    try:
        engine = KillingEngine(tokenizer, script, run_id, kill_before=1)
        failed = asyncio.run(RolloutController(engine, tokenizer, config).run_episode(env))
        assert failed.status is Status.FAILED
        assert "SandboxDiedError" in (failed.error or "")
        assert len(engine.calls) == 2  # the step right after the death ended the episode

        answer = ScriptTurn("<answer>0</answer>")
        engine = KillingEngine(tokenizer, [call("print(6 * 7)"), answer], run_id, kill_before=-1)
        ok = asyncio.run(RolloutController(engine, tokenizer, config).run_episode(env))
        assert ok.status is Status.COMPLETED, ok.error
        assert "42" in tokenizer.decode(ok.response_ids)  # the tool really ran in the new sandbox
    finally:
        env.close()
