"""`agentrl eval --run`: reading a run's config and metrics into an evaluation plan (no model involved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrl.errors import ConfigError
from agentrl.eval.compare_run import comparison_lines, plan_from_run, run_reference
from agentrl.eval.evaluate import EvalConfig, make_plan


def write_run(root: Path, config: dict, metrics: list[str], export: bool = True) -> Path:  # type: ignore[type-arg]
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    (root / "metrics.jsonl").write_text("\n".join(metrics) + "\n")
    if export:
        (root / "hf_model").mkdir()
        (root / "hf_model" / "config.json").write_text("{}")
    return root


BASE = {
    "env": "search",
    "suite": None,
    "env_kwargs": {"hops": 1, "retriever": "http", "retriever_url": "http://127.0.0.1:9/retrieve"},
    "eval_split": "heldout",
    "eval_episodes": 7,
    "max_turns": 3,
    "max_new_tokens": 48,
    "max_context": 900,
    "seed": 5,
}


def test_reference_is_the_last_evaluation_and_a_cut_line_is_skipped(tmp_path: Path) -> None:
    run = write_run(
        tmp_path / "run",
        BASE,
        [
            '{"step": 0, "eval/reward": 0.1, "eval/success": 0.0, "eval/episodes": 7}',
            '{"step": 1, "rollout/reward": 0.2}',
            '{"step": 2, "rollout/reward": 0.3, "eval/reward": 0.25, "eval/success": 0.125, "eval/episodes": 7}',
            '{"step": 3, "rollout/reward": 0.4}',
            '{"step": 4, "rollout/rew',  # a kill cut the last line
        ],
    )
    ref = run_reference(run)
    assert ref == {"step": 2, "reward": 0.25, "success": 0.125, "episodes": 7, "final_step": 3}
    lines = comparison_lines(ref, {"reward": 0.5, "success": 0.25, "episodes": 7.0})
    assert lines[0] == "| metric | run's eval (step 2) | this eval |"
    assert "| reward | 0.2500 | 0.5000 |" in lines and "| success | 0.1250 | 0.2500 |" in lines
    assert any("last evaluation was at step 2, but it trained until step 3" in line for line in lines)


def test_plan_repeats_the_runs_evaluation_with_single_kwargs_overridden(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", BASE, ['{"step": 0, "eval/reward": 0.0}'])
    plan = plan_from_run(run, env_kwargs={"retriever": "bm25"})
    assert plan.model == str(run / "hf_model")
    assert (plan.first_tasks, plan.max_turns, plan.max_new_tokens, plan.max_context, plan.seed) == (
        7,
        3,
        48,
        900,
        5,
    )
    [spec] = plan.specs
    assert (spec.env, spec.split) == ("search", "heldout")
    assert spec.kwargs == {"hops": 1, "retriever": "bm25", "retriever_url": "http://127.0.0.1:9/retrieve"}
    assert plan_from_run(run, model="other/folder").model == "other/folder"


def test_a_suite_run_evaluates_every_entry_on_the_eval_split(tmp_path: Path) -> None:
    config = {**BASE, "suite": "search-train", "env_kwargs": {}}
    plan = plan_from_run(write_run(tmp_path / "run", config, []))
    assert plan.specs and all(spec.split == "heldout" for spec in plan.specs)
    assert plan.reference == {}
    assert comparison_lines(plan.reference, {}) == ["The run logged no evaluation to compare with."]


def test_a_run_without_export_says_how_to_get_one(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", BASE, [], export=False)
    with pytest.raises(ConfigError, match=r"holds no exported policy.*--resume.*--model"):
        plan_from_run(run)
    with pytest.raises(ConfigError, match="not found: --run takes a training run's log folder"):
        plan_from_run(tmp_path / "nothing")
    no_eval = write_run(tmp_path / "no_eval", {**BASE, "eval_episodes": 0}, [])
    with pytest.raises(ConfigError, match="--eval-episodes 0: it has no evaluation to repeat"):
        plan_from_run(no_eval)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"env": "search"}')
    with pytest.raises(ConfigError, match=r"lacks \['eval_split'.*not written by `agentrl train`"):
        plan_from_run(tmp_path / "bad")


def test_make_plan_refuses_flags_the_run_decides_and_keeps_an_explicit_model(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", BASE, [])
    config = EvalConfig(run=str(run), model="mine", env_kwargs={"retriever": "bm25"})
    with pytest.raises(ConfigError, match="--episodes, --seed: with --run"):
        make_plan(config, frozenset({"episodes", "seed", "model"}))
    assert make_plan(config, frozenset({"model", "env_kwargs", "out"})).model == "mine"
    assert make_plan(config, frozenset()).model == str(run / "hf_model")  # the alias default is not "given"
