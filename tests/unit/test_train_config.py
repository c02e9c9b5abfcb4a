"""TrainConfig validation, the dataclass-generated CLI, the task sampler and the metric helpers."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from agentrl.cli.dataclass_args import add_dataclass_args, build_dataclass, compact_help_formatter, field_docs
from agentrl.errors import CheckpointError, ConfigError
from agentrl.rollout.controller import RolloutConfig
from agentrl.run.metrics import read_metrics, rollout_metrics, summarize
from agentrl.run.task_sampler import TaskSampler
from agentrl.run.train_config import LAPTOP_LR, TrainConfig
from agentrl.trainer.config import OptimizerConfig
from agentrl.types import Status, Trajectory


def _parser() -> tuple[argparse.ArgumentParser, list]:
    parser = argparse.ArgumentParser(
        prog="agentrl train", usage="%(prog)s [options]", formatter_class=compact_help_formatter
    )
    return parser, add_dataclass_args(parser, TrainConfig)


def _parse(argv: list[str]) -> TrainConfig:
    parser, spec = _parser()
    return build_dataclass(TrainConfig, spec, parser.parse_args(argv))


def test_batch_identity_message_names_all_four_values_and_the_fix() -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig(rollout_batch_size=8, n_samples_per_prompt=4, global_batch_size=16, steps_per_rollout=1)
    msg = str(e.value)
    for text in (
        "rollout_batch_size (8)",
        "n_samples_per_prompt (4)",
        "global_batch_size (16)",
        "steps_per_rollout (1)",
    ):
        assert text in msg
    assert "--global-batch-size 32" in msg


def test_valid_batch_shapes() -> None:
    TrainConfig(rollout_batch_size=8, n_samples_per_prompt=4, global_batch_size=16, steps_per_rollout=2)
    with pytest.raises(ConfigError, match="whole groups"):
        TrainConfig(rollout_batch_size=3, n_samples_per_prompt=4, global_batch_size=6, steps_per_rollout=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resume": True},
        {"rollout": RolloutConfig(temperature=0.0)},
        {"num_rollouts": -1},
        {"num_rollouts": 0, "eval_episodes": 0},  # 0 rollouts only evaluate: nothing would run
        {"eval_interval": -1},
        {"over_sample": 0.5},
    ],
)
def test_bad_values_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_cli_flags_map_to_nested_fields_and_keep_parent_defaults() -> None:
    config = _parse(["--kl-coef", "0.01", "--weight-decay", "0.1", "--dual-clip-c", "none", "--no-progress"])
    assert config.algorithm.kl_coef == 0.01
    assert config.algorithm.dual_clip_c is None
    assert config.optimizer.weight_decay == 0.1
    # lr was not given: TrainConfig's default factory (LAPTOP_LR) wins over OptimizerConfig's own (1e-6)
    assert config.optimizer.lr == TrainConfig().optimizer.lr == LAPTOP_LR != OptimizerConfig().lr
    assert config.progress is False
    torch_config = config.torch_backend_config()
    assert torch_config.algorithm is config.algorithm and torch_config.seed == config.seed
    assert torch_config.micro_batch_tokens == config.torch.micro_batch_tokens


def test_cli_parses_tuples_dicts_and_literals() -> None:
    config = _parse(
        [
            "--betas",
            "0.9",
            "0.95",
            "--env-kwargs",
            '{"hops": 1}',
            "--engine",
            "sglang",
            "--sglang-urls",
            "u1",
            "u2",
        ]
    )
    assert config.optimizer.betas == (0.9, 0.95)
    assert config.env_kwargs == {"hops": 1}
    assert config.inference.engine == "sglang"
    assert config.inference.sglang_urls == ("u1", "u2")
    parser, _ = _parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--engine", "vllm"])


def test_cli_batch_error_surfaces_as_config_error() -> None:
    with pytest.raises(ConfigError, match="global_batch_size"):
        _parse(["--n-samples-per-prompt", "8"])


def test_sglang_flags_pass_through_the_real_cli() -> None:
    from agentrl.cli import build_parser
    from agentrl.cli.train import config_from_args

    parser = build_parser()
    args, extra = parser.parse_known_args(
        ["train", "--engine", "sglang", "--sglang-mem-fraction-static", "0.5"]
    )
    args.passthrough = extra
    assert config_from_args(args).inference.sglang_args == ("--mem-fraction-static", "0.5")


def _flags(text: str) -> list[str]:
    return sorted({w.rstrip(",") for line in text.splitlines() for w in line.split() if w.startswith("--")})


def test_help_is_generated_from_docstrings_and_lists_at_most_45_flags() -> None:
    from agentrl.cli import build_parser

    parser, _ = _parser()
    text = parser.format_help()
    assert "Prompts (tasks) per rollout [4]" in text
    assert "--kl-coef" in text
    assert "--micro-batch-tokens" not in text and "--weight-decay" not in text  # rare: --help-all
    assert field_docs(TrainConfig)["num_rollouts"].startswith("Rollouts")
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[
        1
    ]
    shown = [
        a for a in train._actions if a.help != argparse.SUPPRESS and a.option_strings != ["-h", "--help"]
    ]
    assert 30 <= len(shown) <= 45, len(shown)
    # Rare flags still parse, and --help-all lists them.
    assert _parse(["--micro-batch-tokens", "512"]).torch.micro_batch_tokens == 512


def test_help_all_lists_the_rare_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from agentrl.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help-all"])
    text = capsys.readouterr().out
    assert "--micro-batch-tokens" in text and "--weight-decay" in text and "--keep-last" in text
    from agentrl.cli import dataclass_args

    dataclass_args.SHOW_RARE = False


def test_config_file_round_trips_the_logged_resolved_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from agentrl.config_io import config_to_dict

    config = _parse(["--env", "python-tool", "--max-turns", "3", "--kl-coef", "0.01", "--engine", "sglang",
                     "--sglang-urls", "u1", "--micro-batch-tokens", "512", "--lr-decay-style", "cosine"])  # fmt: skip
    logged = tmp_path / "config.json"
    logged.write_text(json.dumps(config_to_dict(config)))
    again = _parse(["--config", str(logged)])
    assert again == config
    assert again.optimizer.lr_decay_steps == config.optimizer.lr_decay_steps == 8  # resolved, kept
    # flags win over the file; flag names work as keys (dashes or underscores), YAML types are checked
    assert _parse(["--config", str(logged), "--max-turns", "4"]).rollout.max_turns == 4
    flat = tmp_path / "flat.yaml"
    flat.write_text("max-turns: 2\nkl_coef: 0.5\nsglang-urls: [a, b]\nengine: sglang\n")
    loaded = _parse(["--config", str(flat)])
    assert (loaded.rollout.max_turns, loaded.algorithm.kl_coef) == (2, 0.5)
    assert loaded.inference.sglang_urls == ("a", "b")
    flat.write_text("max-turns: many\n")
    with pytest.raises(ConfigError, match=r"flat\.yaml: max_turns: invalid literal"):
        _parse(["--config", str(flat)])
    flat.write_text("max_turnz: 2\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'max_turnz' in TrainConfig; accepted: "):
        _parse(["--config", str(flat)])
    with pytest.raises(ConfigError, match="no such file"):
        _parse(["--config", str(tmp_path / "missing.yaml")])


def test_train_eval_and_rollout_share_flag_names_for_shared_concepts() -> None:
    from agentrl.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    with_rare = {}
    from agentrl.cli import dataclass_args

    dataclass_args.SHOW_RARE = True
    try:
        commands = build_parser()._subparsers._group_actions[0].choices
        for name in ("train", "eval", "rollout"):
            with_rare[name] = {o for a in commands[name]._actions for o in a.option_strings}
    finally:
        dataclass_args.SHOW_RARE = False
    shared = {
        "--env", "--env-kwargs", "--model", "--max-turns", "--max-new-tokens", "--max-context",
        "--temperature", "--top-p", "--max-concurrency", "--n-samples-per-prompt", "--engine",
        "--sglang-urls", "--sglang-python", "--engine-device", "--seed", "--config",
    }  # fmt: skip
    for name, flags in with_rare.items():
        assert shared <= flags, (name, sorted(shared - flags))
    retired = {"--max-total-tokens", "--concurrency", "--samples-per-task", "--n", "--sglang-url"}
    assert not retired & (with_rare["train"] | with_rare["eval"] | with_rare["rollout"])


def test_task_sampler_is_a_seeded_permutation_per_epoch() -> None:
    keys = [f"t{i}" for i in range(5)]
    sampler = TaskSampler(keys, seed=3)
    first = sampler.sample(5)
    assert sorted(first) == keys  # one epoch covers every task exactly once
    second = sampler.sample(5)
    assert sorted(second) == keys and second != first  # a new permutation each epoch
    assert TaskSampler(keys, seed=3).sample(10) == first + second  # crossing epochs in one call
    assert TaskSampler(keys, seed=4).sample(5) != first


def test_task_sampler_resumes_exactly_and_refuses_other_task_lists() -> None:
    keys = [f"t{i}" for i in range(7)]
    straight = TaskSampler(keys, seed=0)
    expected = [straight.sample(3) for _ in range(5)]
    part = TaskSampler(keys, seed=0)
    got = [part.sample(3) for _ in range(2)]
    state = json.loads(json.dumps(part.state_dict()))
    resumed = TaskSampler(keys, seed=0)
    resumed.load_state_dict(state)
    got += [resumed.sample(3) for _ in range(3)]
    assert got == expected
    with pytest.raises(CheckpointError, match="same"):
        TaskSampler(keys[:-1], seed=0).load_state_dict(state)


def _traj(
    reward: float, status: Status = Status.COMPLETED, success: bool | None = None, sampled: int = 3
) -> Trajectory:
    metrics = {} if success is None else {"success": success, "tool_calls": 2}
    return Trajectory(
        prompt_ids=[1, 2],
        response_ids=[5] * (sampled + 1),
        loss_mask=[1] * sampled + [0],
        rollout_logprobs=[-0.5] * sampled + [0.0],
        reward=reward,
        status=status,
        turns=[{"tool_calls": 1}, {"tool_calls": 0}],
        metrics=metrics,
    )


def test_rollout_metrics_exclude_failed_episodes_from_means_but_count_them() -> None:
    trajs = [
        _traj(1.0, success=True),
        _traj(0.0, Status.TRUNCATED, success=False, sampled=5),
        _traj(7.0, Status.FAILED),
    ]
    m = rollout_metrics(trajs)
    # means over the two trainable episodes: rewards (1 + 0) / 2, sampled tokens (3 + 5) / 2
    assert m["rollout/reward"] == 0.5
    assert m["rollout/reward_std"] == 0.5
    assert m["rollout/success"] == 0.5
    assert m["rollout/response_tokens"] == 4.0
    assert m["rollout/tool_calls"] == 2.0
    assert m["rollout/turns"] == 2.0
    assert m["rollout/status_failed"] == 1.0 and m["rollout/status_completed"] == 1.0
    assert m["rollout/episodes"] == 3.0
    assert math.isnan(rollout_metrics([_traj(1.0)])["rollout/success"])  # no env reported success


def test_summary_compares_first_and_last_rollouts_and_evals(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "rollout/reward": 0.1 * s} for s in range(1, 7)]
    rows.insert(0, {"step": 0, "eval/reward": 0.2})
    rows.append({"step": 6, "eval/reward": 0.5})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = read_metrics(path)
    assert records[-1] == {"step": 6, "rollout/reward": pytest.approx(0.6), "eval/reward": 0.5}
    text = summarize(records)
    # first 3 rollouts: mean(0.1, 0.2, 0.3) = 0.2; last 3: mean(0.4, 0.5, 0.6) = 0.5
    assert "0.200" in text and "0.500" in text and "+0.300" in text
    assert "eval  reward" in text and "+0.300" in text.splitlines()[-1]


def test_negative_time_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--time-limit-s=-5\.0 must be >= 0"):
        TrainConfig(time_limit_s=-5.0)
