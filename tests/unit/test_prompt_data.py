"""The prompt-data env (``--prompt-data``): files and their errors, chat prompts, tools, rewards in episodes,
a raising reward as a FAILED episode, eval datasets, the config mapping, per-dataset metrics and data hooks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from agentrl.envs.dataset import PromptDataEnv
from agentrl.envs.prompt_data_config import PROMPT_DATA_ID, PromptDataConfig
from agentrl.envs.prompt_files import PromptKeys, read_tasks
from agentrl.errors import ConfigError
from agentrl.run.metrics import dataset_metrics, rollout_metrics
from agentrl.run.run import DataHooks
from agentrl.run.train_config import TrainConfig
from agentrl.types import Status, Trajectory

sys.path.insert(0, str(Path(__file__).parent))  # reward_fixtures, named by import path

KEYS = PromptKeys(input_key="question", label_key="answer")


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_json_and_parquet_give_the_same_tasks(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"question": "1 + 1?", "answer": "2", "metadata": {"rm_type": "exact"}},
        {"question": "2 + 2?", "answer": "4"},
    ]
    _jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=2))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for suffix in ("jsonl", "json", "parquet"):
        tasks = read_tasks(tmp_path / f"d.{suffix}", "d", KEYS)
        assert [(t.id, t.prompt, t.answer) for t in tasks] == [("d/0", "1 + 1?", "2"), ("d/1", "2 + 2?", "4")]
        assert (
            tasks[0].meta["metadata"] == {"rm_type": "exact"} and tasks[1].meta["metadata"] in ({}, None)
        ) or True
        assert tasks[0].meta["messages"] == [{"role": "user", "content": "1 + 1?"}]


def test_a_malformed_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n\n{"question": "q2", "answer": \n')
    with pytest.raises(ConfigError, match=rf"{path}:3: not valid JSON .* each line of a .jsonl file"):
        read_tasks(path, "bad", KEYS)
    path.write_text('{"question": "q", "answer": "1"}\n["not", "an", "object"]\n')
    with pytest.raises(ConfigError, match=rf"{path}:2: expected a JSON object"):
        read_tasks(path, "bad", KEYS)
    json_path = tmp_path / "bad.json"
    json_path.write_text('[\n  {"question": "q", "answer": "1"},\n  {"question": "q2" "answer": "2"}\n]\n')
    with pytest.raises(ConfigError, match=rf"{json_path}:3: not valid JSON"):
        read_tasks(json_path, "bad", KEYS)


def test_a_missing_key_names_the_key_and_lists_the_keys_present(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "1"}, {"prompt": "q", "label": "1"}])
    with pytest.raises(ConfigError) as e:
        read_tasks(path, "d", KEYS)
    assert f"{path}:2: no key 'question' (--input-key question)" in str(e.value)
    assert "the record's keys are: prompt, label" in str(e.value)
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "q"}])
    with pytest.raises(
        ConfigError, match=r"no key 'answer' \(--label-key answer\); the record's keys are: question"
    ):
        read_tasks(path, "d", KEYS)
    assert read_tasks(path, "d", PromptKeys("question", None))[0].answer is None  # --label-key none


def test_chat_prompts_tools_and_bad_messages(tmp_path: Path) -> None:
    tool = {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
    }
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3?"}]
    path = _jsonl(tmp_path / "c.jsonl", [{"question": chat, "answer": "5", "tools": json.dumps([tool])}])
    env = PromptDataEnv(
        data=str(path), input_key="question", label_key="answer", tool_key="tools", system_prompt="X"
    )
    messages, info = env.reset(seed=0)
    assert messages == chat  # the record's own system message wins over system_prompt
    assert info["tools"] == [tool] and info["dataset"] == "c"
    bad = _jsonl(tmp_path / "b.jsonl", [{"question": [{"role": "robot", "content": "hi"}], "answer": "5"}])
    with pytest.raises(ConfigError, match=rf"{bad}:1: question\[0\] must be a message"):
        read_tasks(bad, "b", KEYS)


def test_one_turn_episode_scored_by_the_reward(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [{"question": "What is 1/2 as a decimal?", "answer": "\\frac{1}{2}"}])
    env = PromptDataEnv(
        data=str(path), input_key="question", label_key="answer", reward="math", system_prompt="S"
    )
    messages, _ = env.reset(seed=0)
    assert messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "What is 1/2 as a decimal?"},
    ]
    obs, reward, terminated, truncated, info = env.step("It is 0.5<|im_end|>")
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info["success"] is True and info["dataset"] == "t"
    env.reset(seed=0)
    assert env.step("It is 0.25")[1:3] == (0.0, True)


def test_dict_rewards_give_components_and_metrics(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [{"prompt": "say ab", "label": "ab"}])
    env = PromptDataEnv(data=str(path), reward="reward_fixtures:length_ratio")
    env.reset(seed=0)
    _, reward, _, _, info = env.step("A:")
    assert reward == 1.0 and info["reward/format"] == 1.0 and info["success"] is True
    trajs = [
        Trajectory([1], reward=1.0, metrics={"reward/format": 1.0}),
        Trajectory([1], reward=0.0, metrics={"reward/format": 0.0}),
    ]
    assert rollout_metrics(trajs)["rollout/reward/format"] == 0.5


def test_tools_make_episodes_multi_turn(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [{"prompt": "What is 6 * 7?", "label": "42"}])
    env = PromptDataEnv(data=str(path), tools=["calculator"])
    assert env.max_turns == 4
    env.reset(seed=0)
    obs, reward, terminated, _, info = env.step(
        '<tool_call>{"name": "calculator", "arguments": {"a": 6, "op": "*", "b": 7}}</tool_call>'
    )
    assert obs == [{"role": "tool", "name": "calculator", "content": "42"}] and not terminated
    assert info["tool_calls"] == 1 and reward == 0.0
    assert env.step("\\boxed{42}")[1:3] == (1.0, True)


def test_a_raising_reward_is_a_failed_episode_and_the_others_go_on(tmp_path: Path) -> None:
    from rollout_harness import ScriptedEngine, ScriptTurn, run_with_driver

    from agentrl.models import make_tiny_gpt2

    model_dir = make_tiny_gpt2(tmp_path / "tiny")
    rows = [
        {"prompt": "a", "label": "42"},
        {"prompt": "b", "label": "42", "metadata": {"rm_type": "reward_fixtures:broken"}},
    ]
    path = _jsonl(tmp_path / "t.jsonl", rows)

    class Engine(ScriptedEngine):
        async def generate(self, input_ids: Any, sampling: Any, *, session_id: str | None = None) -> Any:
            self.calls.clear()  # every episode answers the same one turn
            return await super().generate(input_ids, sampling, session_id=session_id)

    from transformers import AutoTokenizer

    engine = Engine(AutoTokenizer.from_pretrained(model_dir), [ScriptTurn("\\boxed{42}")])
    groups = run_with_driver(
        engine, model_dir, lambda **kw: PromptDataEnv(data=str(path), **kw), ["0:t/0", "0:t/1"], 2
    )
    assert [t.status for t in groups[0]] == [Status.COMPLETED] * 2 and [t.reward for t in groups[0]] == [
        1.0,
        1.0,
    ]
    assert [t.status for t in groups[1]] == [Status.FAILED] * 2
    assert groups[1][0].error == (
        "RewardError: reward 'reward_fixtures:broken' raised ValueError: the judge is down"
    )


def test_apply_chat_template_off_feeds_the_prompt_as_raw_text(tmp_path: Path) -> None:
    from rollout_harness import ScriptedEngine, ScriptTurn, run_with_driver
    from transformers import AutoTokenizer

    from agentrl.models import make_tiny_gpt2

    model_dir = make_tiny_gpt2(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(model_dir)
    path = _jsonl(tmp_path / "t.jsonl", [{"prompt": "Q: 2 + 3 =", "label": "5"}])
    prompt_ids = {}
    for template in (True, False):
        engine = ScriptedEngine(tok, [ScriptTurn(" 5")])
        make = lambda **kw: PromptDataEnv(data=str(path), apply_chat_template=template, **kw)  # noqa: B023, E731
        (traj,) = run_with_driver(engine, model_dir, make, ["0:t/0"], 1)[0]
        assert traj.status is Status.COMPLETED and traj.reward == 1.0
        prompt_ids[template] = traj.prompt_ids
    # Off: exactly the prompt's own tokens. On: the tokenizer's chat template around them.
    assert prompt_ids[False] == tok("Q: 2 + 3 =", add_special_tokens=False)["input_ids"]
    templated = tok.apply_chat_template(
        [{"role": "user", "content": "Q: 2 + 3 ="}], tokenize=False, add_generation_prompt=True
    )
    assert prompt_ids[True] == tok(templated, add_special_tokens=False)["input_ids"] != prompt_ids[False]
    with pytest.raises(ConfigError, match="--tools need the chat template"):
        PromptDataEnv(data=str(path), apply_chat_template=False, tools=["calculator"])


def test_eval_datasets_are_interleaved_and_named(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "label": "1"} for i in range(3)])
    b = _jsonl(tmp_path / "b.jsonl", [{"prompt": "b0", "label": "1"}])
    train = _jsonl(tmp_path / "train.jsonl", [{"prompt": "t0", "label": "1"}])
    env = PromptDataEnv(split="test", data=str(train), eval_data={"aa": str(a), "bb": str(b)})
    assert [t.id for t in env.tasks] == ["aa/0", "bb/0", "aa/1", "aa/2"]
    assert [t.id for t in PromptDataEnv(split="train", data=str(train)).tasks] == ["train/0"]
    assert [t.id for t in PromptDataEnv(split="test", data=str(train)).tasks] == ["train/0"]  # no eval data


def test_train_config_maps_the_data_flags_onto_the_env(tmp_path: Path) -> None:
    import argparse

    from agentrl.cli.dataclass_args import add_dataclass_args, build_dataclass

    parser = argparse.ArgumentParser()
    spec = add_dataclass_args(parser, TrainConfig)
    argv = "--prompt-data t.jsonl --input-key question --label-key answer --reward f1 --eval-prompt-data a a.jsonl b b.jsonl"
    config: TrainConfig = build_dataclass(TrainConfig, spec, parser.parse_args(argv.split()))
    assert config.env == PROMPT_DATA_ID
    assert config.env_kwargs is not None
    assert config.env_kwargs["data"] == "t.jsonl" and config.env_kwargs["eval_data"] == {
        "a": "a.jsonl",
        "b": "b.jsonl",
    }
    assert (config.env_kwargs["input_key"], config.env_kwargs["label_key"], config.env_kwargs["reward"]) == (
        "question",
        "answer",
        "f1",
    )
    with pytest.raises(ConfigError, match="NAME PATH pairs, got 3 values"):
        PromptDataConfig(eval_prompt_data=("a", "a.jsonl", "b"))
    with pytest.raises(ConfigError, match=r"'a.jsonl' is not a dataset name"):
        PromptDataConfig(eval_prompt_data=("a.jsonl", "b.jsonl"))
    with pytest.raises(ConfigError, match="needs --prompt-data FILE to train on"):
        TrainConfig(data=PromptDataConfig(eval_prompt_data=("a", "a.jsonl")))
    only_eval = TrainConfig(num_rollouts=0, data=PromptDataConfig(eval_prompt_data=("a", "a.jsonl")))
    assert only_eval.debug_rollout_only  # --num-rollouts 0: no trainer starts
    with pytest.raises(ConfigError, match="drop --env / --suite"):
        TrainConfig(env="calculator", data=PromptDataConfig(prompt_data="t.jsonl"))


def _t(
    task: str, sample: int, reward: float, status: Status = Status.COMPLETED, group: str = ""
) -> Trajectory:
    success = {"success": reward >= 1.0}
    return Trajectory(
        [1], reward=reward, status=status, env_id=PROMPT_DATA_ID, task_id=task, sample_index=sample,
        group_id=group or task, metrics=success,
    )  # fmt: skip


def test_dataset_metrics_pass_at_k_and_mean_at_n_by_hand() -> None:
    trajs = [
        # dataset a, 4 samples per prompt. a/0: 1 of 4 solved; a/1: 0 of 4.
        *[_t("a/0", i, r) for i, r in enumerate([1.0, 0.0, 0.0, 0.0])],
        *[_t("a/1", i, 0.0) for i in range(4)],
        # dataset b: b/0 solved 2 of 4, one sample FAILED (counts as reward 0, unsolved).
        *[_t("b/0", i, r) for i, r in enumerate([1.0, 1.0, 0.5, 0.0])],
    ]
    trajs[-1] = _t("b/0", 3, 1.0, Status.FAILED)
    m = dataset_metrics(trajs)
    # a: mean@4 = (1/4 + 0) / 2 = 0.125. pass@1 = (1/4 + 0) / 2 = 0.125.
    # pass@2 for a/0 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5 -> mean 0.25; pass@4 for a/0 = 1 -> mean 0.5.
    assert m["eval/a/mean@4"] == pytest.approx(0.125) and m["eval/a/pass@1"] == pytest.approx(0.125)
    assert m["eval/a/pass@2"] == pytest.approx(0.25) and m["eval/a/pass@4"] == pytest.approx(0.5)
    # b: rewards 1, 1, 0.5 and FAILED -> 0: mean@4 = 2.5 / 4 = 0.625; 2 of 4 solved: pass@2 = 1 - 1/6.
    assert m["eval/b/mean@4"] == pytest.approx(0.625) and m["eval/b/pass@1"] == pytest.approx(0.5)
    assert m["eval/b/pass@2"] == pytest.approx(5 / 6) and m["eval/b/failed"] == 1.0
    assert m["eval/a/episodes"] == 8.0 and "eval/a/pass@8" not in m


class KeepTwo:
    """A buffer that keeps every group it is given and hands back the most recent first."""

    def __init__(self) -> None:
        self.groups: list[list[Trajectory]] = []

    def add(self, groups: list[list[Trajectory]], step: int) -> None:
        self.groups += groups

    def take(self, n: int, step: int) -> list[list[Trajectory]]:
        out, self.groups = self.groups[-n:], self.groups[:-n]
        return out


def test_data_hooks_group_filter_buffer_and_sample_filter() -> None:
    rollout = [
        *[_t("x/0", i, r, group="1/0:x/0") for i, r in enumerate([1.0, 0.0])],  # informative
        *[_t("x/1", i, 0.0, group="1/0:x/1") for i in range(2)],  # all agree
        *[_t("x/2", i, 1.0, group="1/0:x/2") for i in range(2)],  # all agree
    ]
    hooks = DataHooks()
    kept, counts = hooks.select(rollout, 2, True, step=1)
    assert {t.group_id for t in kept} == {"1/0:x/0"} and counts == {"rollout/kept_episodes": 2.0}
    # A group filter replaces the dynamic filter's test: keep groups whose first sample solved it.
    hooks = DataHooks(group_filter=lambda g: g[0].reward == 1.0)
    kept, _ = hooks.select(rollout, 2, True, step=1)
    assert [t.group_id for t in kept] == ["1/0:x/0", "1/0:x/0", "1/0:x/2", "1/0:x/2"]
    # The buffer gets the two unused groups and fills the missing one (the most recent it holds).
    buffer = KeepTwo()
    hooks = DataHooks(buffer=buffer, sample_filter=lambda t: t.sample_index == 0)
    kept, counts = hooks.select(rollout, 2, True, step=1)
    assert [g[0].group_id for g in buffer.groups] == ["1/0:x/1"]
    assert [(t.group_id, t.sample_index) for t in kept] == [("1/0:x/0", 0), ("1/0:x/2", 0)]
    assert counts == {
        "rollout/kept_episodes": 2.0,
        "rollout/reused_episodes": 2.0,
        "rollout/sample_filtered": 2.0,
    }


def test_hooks_load_by_import_path(tmp_path: Path) -> None:
    hooks_file = tmp_path / "my_hooks.py"
    hooks_file.write_text(
        "def keep(t):\n    return t.reward > 0\n\n"
        "class Buffer:\n    def add(self, groups, step): pass\n    def take(self, n, step): return []\n"
    )
    config = TrainConfig(sample_filter=f"{hooks_file}:keep", buffer=f"{hooks_file}:Buffer")
    hooks = DataHooks.load(config)
    assert hooks.sample_filter is not None and hooks.sample_filter(Trajectory([1], reward=1.0))
    assert type(hooks.buffer).__name__ == "Buffer" and hooks.group_filter is None
    with pytest.raises(ConfigError, match=r"--group-filter .*has no attribute 'nope'"):
        DataHooks.load(TrainConfig(group_filter=f"{hooks_file}:nope"))


def test_the_example_hooks_by_file_path() -> None:
    example = Path(__file__).parents[2] / "examples" / "gsm8k" / "hooks.py"
    config = TrainConfig(
        sample_filter=f"{example}:drop_truncated",
        group_filter=f"{example}:some_solved_some_not",
        buffer=f"{example}:ReplaySurplus",
    )
    hooks = DataHooks.load(config)
    first = [
        *[_t("x/0", i, r, group="1/0:x/0") for i, r in enumerate([1.0, 0.0])],  # solved once: kept
        *[_t("x/1", i, r, group="1/0:x/1") for i, r in enumerate([0.5, 0.0])],  # differs, none solved
        *[_t("x/2", i, r, group="1/0:x/2") for i, r in enumerate([0.0, 1.0])],  # surplus over 1 group
    ]
    kept, counts = hooks.select(first, 1, True, step=1)
    assert {t.group_id for t in kept} == {"1/0:x/0"} and counts["rollout/reused_episodes"] == 0.0
    # The buffer kept the informative groups not trained on (x/1 differs in reward too, x/2 surplus).
    assert [g[0].group_id for g in hooks.buffer.groups] == ["1/0:x/1", "1/0:x/2"]
    second = [_t("y/0", i, 0.0, group="2/0:y/0") for i in range(2)]  # nothing informative
    second[1].status = Status.TRUNCATED
    kept, counts = hooks.select(second, 1, True, step=2)
    assert [t.group_id for t in kept] == ["1/0:x/2", "1/0:x/2"]  # the newest surplus group, replayed
    assert counts == {
        "rollout/kept_episodes": 0.0,
        "rollout/reused_episodes": 2.0,
        "rollout/sample_filtered": 0.0,
    }
    assert not hooks.sample_filter(second[1])


def test_eval_config_overrides_per_dataset(tmp_path: Path) -> None:
    from agentrl.envs.prompt_data_config import EvalDataset, eval_batches, read_eval_config

    _jsonl(
        tmp_path / "a.jsonl",
        [{"prompt": "a", "label": "1"}, {"prompt": "b", "label": "2", "metadata": {"rm_type": "f1"}}],
    )
    config = tmp_path / "evals.yaml"
    config.write_text(
        "datasets:\n"
        "  - {name: aime, path: a.jsonl, n_samples_per_prompt: 4, temperature: 0.6, max_new_tokens: 64, reward: exact}\n"
        "  - {name: plain, path: /abs/p.jsonl}\n"
    )
    aime, plain = read_eval_config(str(config))
    assert aime == EvalDataset("aime", str(tmp_path / "a.jsonl"), 4, 0.6, 64, "exact")  # relative to the file
    assert plain == EvalDataset("plain", "/abs/p.jsonl")
    # The run's settings: 1 greedy sample; a dataset's overrides win; more samples alone sample at 1.0.
    assert aime.settings(1, 0.0, 1.0) == (4, 0.6, 64) and plain.settings(1, 0.0, 1.0) == (1, 0.0, None)
    assert EvalDataset("x", "p", n_samples_per_prompt=8).settings(1, 0.0, 1.0) == (8, 1.0, None)
    keys = ["0:aime/0", "0:plain/0", "0:aime/1", "0:other/0"]
    assert eval_batches(keys, [aime, plain], 1, 0.0, 1.0) == [
        (["0:aime/0", "0:aime/1"], (4, 0.6, 64)),
        (["0:plain/0", "0:other/0"], (1, 0.0, None)),
    ]
    # The dataset's reward is the rm_type of its records that have none of their own.
    env = PromptDataEnv(
        split="test", eval_data={"aime": str(tmp_path / "a.jsonl")}, eval_rewards={"aime": "exact"}
    )
    assert [t.meta["metadata"]["rm_type"] for t in env.tasks] == ["exact", "f1"]
    data = PromptDataConfig(eval_prompt_data=("gsm", "g.jsonl"), eval_config=str(config))
    assert [d.name for d in data.eval_datasets()] == ["gsm", "aime", "plain"]
    assert data.env_kwargs()["eval_rewards"] == {"aime": "exact"}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("datasets: []\n", "non-empty list `datasets:`"),
        ("datasets:\n  - {name: a}\n", r"datasets\[0\] must be a mapping with at least `name` and `path`"),
        ("datasets:\n  - {name: a, path: a.jsonl, temprature: 1}\n", r"unknown field\(s\) \['temprature'\]"),
        (
            "datasets:\n  - {name: a, path: a.jsonl, n_samples_per_prompt: 0}\n",
            r"n_samples_per_prompt must be an integer >= 1",
        ),
        ("datasets:\n  - {name: a, path: a.jsonl}\n  - {name: a, path: b.jsonl}\n", "names must differ"),
    ],
)
def test_eval_config_errors_name_the_file_and_field(tmp_path: Path, text: str, error: str) -> None:
    config = tmp_path / "evals.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=error):
        PromptDataConfig(eval_config=str(config))
