"""``--async-mode fully`` on a real SGLang server on CPU (tiny GPT-2): partial rollouts over HTTP.

First the engine alone: a weight update (``/abort_request``, then ``/update_weights_from_disk``) lands
while long requests run; each comes back as one output of its full length whose ids before the cut were
sampled by the old weights and the rest by the new ones, every logprob equal to transformers' forward
pass of the weights its ``token_versions`` names (so the continuation really re-sent prompt + partial ids
and ran under the new weights). Then ``agentrl train --async-mode fully --engine sglang`` end to end: it
trains, every sampled token carries a version no newer than the trainer's and no older than the one
before it, and no trained token is over ``--max-staleness``. Skipped without the SGLang venv
(scripts/setup_sglang.sh).
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import ray
import tiny_envs
from test_sglang_engine import prompt_ids, reference_logprobs, sglang_python_or_skip, sharpened_copy

from agentrl.engines.base import SamplingParams
from agentrl.engines.config import EngineConfig
from agentrl.engines.sglang.engine import SGLangEngine, SGLangEngineConfig
from agentrl.engines.sglang.launcher import CPU_SERVER_ARGS
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig
from agentrl.run.async_config import AsyncConfig
from agentrl.run.loop import train
from agentrl.run.metrics import read_metrics
from agentrl.run.staleness import token_versions
from agentrl.run.train_config import TrainConfig
from agentrl.trainer.config import AlgorithmConfig, OptimizerConfig
from agentrl.types import load_jsonl

LOGPROB_TOL = 1e-3
MAX_NEW = 1500


def test_a_weight_update_under_running_requests_continues_them_under_the_new_weights(tmp_path: Path) -> None:
    python = sglang_python_or_skip()
    base = make_tiny_gpt2(tmp_path / "tiny")
    old = sharpened_copy(base, tmp_path / "old", scale=6.0)
    new = sharpened_copy(base, tmp_path / "new", scale=6.0, noise_seed=7)
    prompts = [prompt_ids(old, text) for text in ("The capital of France is", "Once upon a time", "2 + 2 =")]
    sampling = SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, ignore_eos=True)
    config = SGLangEngineConfig(
        model_path=str(old),
        python=python,
        sglang_args=CPU_SERVER_ARGS,
        log_dir=str(tmp_path / "logs"),
        startup_timeout_s=300,
    )

    async def main() -> list:  # type: ignore[type-arg]
        async with SGLangEngine(config) as engine:
            await engine.generate(prompts[0], SamplingParams(max_new_tokens=4))  # warm: the first is slow
            requests = [
                asyncio.create_task(engine.generate(p, sampling, session_id=f"s{i}"))
                for i, p in enumerate(prompts)
            ]
            # they are decoding (600 ids once all ended within 3 s on an idle box: 1500, checked after 1 s)
            await asyncio.sleep(1.0)
            assert not any(r.done() for r in requests), "the requests ended before the update: raise MAX_NEW"
            await engine.update_weights(str(new), version=1)
            outputs = await asyncio.gather(*requests)
            after = await engine.generate(prompts[0], SamplingParams(max_new_tokens=4))
            assert after.weight_version == 1 and "token_versions" not in after.meta
            return outputs

    outputs = asyncio.run(main())
    cut = 0
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out.finish_reason == "length" and len(out.output_ids) == len(out.logprobs) == MAX_NEW
        versions = out.meta.get("token_versions", [out.weight_version] * MAX_NEW)
        assert versions == sorted(versions) and set(versions) <= {0, 1}
        cut += len(set(versions)) == 2
        assert out.weight_version == min(versions)
        for version, folder in ((0, old), (1, new)):
            # Teacher-forced over the whole output: each id's logprob given everything before it.
            expected = reference_logprobs(folder, prompt, out.output_ids)
            mine = [(a, b) for a, b, v in zip(out.logprobs, expected, versions, strict=True) if v == version]
            assert all(abs(a - b) < LOGPROB_TOL for a, b in mine), (version, mine[:4])
    # Timing: a request still queued when the update lands is cut with no id (all new), one whose answer
    # was on its way keeps the old version for all; at least one must have been decoding.
    assert cut >= 1, "no request was cut by the update: nothing partial was checked"


def test_agentrl_train_fully_async_on_sglang(tmp_path: Path) -> None:
    python = sglang_python_or_skip()
    model = make_tiny_gpt2(tmp_path / "tiny", seed=3)
    ray.cloudpickle.register_pickle_by_value(tiny_envs)
    rollouts, bound = 4, 1
    config = TrainConfig(
        env="letter",
        model=str(model),
        inference=EngineConfig(engine="sglang", sglang_python=python, sglang_args=CPU_SERVER_ARGS),
        rollout_batch_size=4,
        n_samples_per_prompt=4,
        global_batch_size=16,
        num_rollouts=rollouts,
        rollout=RolloutConfig(max_turns=1, max_new_tokens=512, max_context=768),
        eval_episodes=0,
        dynamic_filter=False,
        progress=False,
        export_hf=False,
        log_dir=str(tmp_path / "logs"),
        seed=0,
        num_cpus=2,
        optimizer=OptimizerConfig(lr=1e-2),
        algorithm=AlgorithmConfig(tis_cap=2.0),
        asynchronous=AsyncConfig(async_mode="fully", async_buffer_size=8, max_staleness=bound),
    )
    try:
        train(config, env_factory=functools.partial(tiny_envs.LetterEnv, num_tasks=8))
    finally:
        ray.shutdown()
    logs = tmp_path / "logs"
    records = {
        r["step"]: r for r in read_metrics(logs / "metrics.jsonl") if r.get("async/step_s") is not None
    }
    assert sorted(records) == list(range(1, rollouts + 1))
    assert sum(not r["train/skipped"] for r in records.values()) >= 2, "the run barely trained"
    partial = 0
    for step, r in records.items():
        trainer = r["async/trainer_version"]
        for t in load_jsonl(logs / "rollouts" / f"step_{step:06d}.jsonl"):
            versions = token_versions(t)
            for v, m in zip(versions, t.loss_mask, strict=True):
                assert (v is not None) == (m == 1)  # every sampled token has a version, no other does
            sampled = [v for v in versions if v is not None]
            assert sampled == sorted(sampled) and all(v <= trainer for v in sampled)
            partial += any("token_versions" in turn for turn in t.turns)
        assert r["async/staleness_max"] <= bound
        assert r.get("rollout/failed_engine", 0) == 0  # no request was lost to a weight update
    # Whether a sync lands under a running request here is timing (measured: 0 to 14 episodes a run on
    # the 2-core box, fewer once training teaches the tiny model to stop early): the episodes it reaches
    # are checked above when it does; the cut itself is checked by the engine test above.
    print(f"episodes a weight update reached mid-turn: {partial}")
    summary = (logs / "summary.txt").read_text()
    assert "async (fully)" in summary and "the trainer waited" in summary
