"""Built-in rewards on hand-made cases, rewards by import path (sync, async, batched, dict, reward model),
``metadata.rm_type`` choosing the reward per sample, and errors that name the reward."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agentrl.envs.rewards import (
    RewardError,
    RewardSample,
    boxed_math,
    exact_match,
    f1_score,
    math_equal,
    resolve_reward,
)
from agentrl.envs.rewards.runner import RewardRunner
from agentrl.envs.rewards.text import final_answer, last_boxed
from agentrl.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))  # reward_fixtures, named by import path
import reward_fixtures


@pytest.mark.parametrize(
    ("response", "label", "expected"),
    [
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),  # a fraction and its decimal
        ("so x = 0.5", "\\frac{1}{2}", 1.0),
        ("the answer is 1/2", "\\frac{1}{2}", 1.0),
        ("It takes \\boxed{5 \\text{ km}}", "5", 1.0),  # units dropped
        ("It is 5 km away", "5", 1.0),
        ("There are 1,000 of them", "1000", 1.0),  # thousands separator
        ("I got 41 then 42.", "42", 1.0),  # the last number is the answer
        ("I got 42 then 41.", "42", 0.0),
        ("\\boxed{3}<|im_end|>", "3", 1.0),  # an end token the engine kept is ignored
        ("no number here", "3", 0.0),
        ("\\boxed{7}", ["6", "7"], 1.0),  # any of several labels
    ],
)
def test_math_reward(response: str, label: object, expected: float) -> None:
    assert math_equal(response, label) == expected


def test_boxed_math_takes_only_the_last_boxed_answer() -> None:
    assert boxed_math("first \\boxed{2}, finally \\boxed{\\frac{3}{4}}", "0.75") == 1.0
    assert boxed_math("first \\boxed{0.75}, finally \\boxed{1}", "0.75") == 0.0
    assert boxed_math("the answer is 0.75", "0.75") == 0.0  # math finds it, boxed_math wants the box
    assert math_equal("the answer is 0.75", "0.75") == 1.0
    assert last_boxed("\\boxed{\\frac{1}{\\sqrt{2}}}") == "\\frac{1}{\\sqrt{2}}"  # nested braces
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("\\fbox{4}") == "4"


def test_exact_match_normalises_case_space_dollars_and_the_final_period() -> None:
    assert exact_match("  PARIS. ", "paris") == 1.0
    assert exact_match("$42$", "42") == 1.0
    assert exact_match("reasoning... <answer>New  York</answer>", "new york") == 1.0
    assert exact_match("so \\boxed{B}", "b") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert final_answer("a <answer>1</answer> b <answer>2</answer>") == "2"


def test_f1_tokenisation() -> None:
    # SQuAD normalisation: case, punctuation and articles go. "the Eiffel Tower!" -> [eiffel, tower];
    # "Eiffel tower in Paris" -> [eiffel, tower, in, paris]: 2 common, P = 2/2, R = 2/4, F1 = 2/3.
    assert f1_score("the Eiffel Tower!", "Eiffel tower in Paris") == pytest.approx(2 / 3)
    # "cat cat" vs "the cat" -> [cat, cat] vs [cat]: 1 common token, P = 1/2, R = 1, F1 = 2/3.
    assert f1_score("cat cat", "the cat") == pytest.approx(2 / 3)
    assert f1_score("An apple", "apple") == 1.0
    assert f1_score("dog", "cat") == 0.0
    assert f1_score("dog", ["cat", "big dog"]) == pytest.approx(2 / 3)  # best label: P = 1, R = 1/2


def _sample(response: str, label: object = "42", **metadata: object) -> RewardSample:
    return RewardSample(response=response, label=label, metadata=dict(metadata))


def test_rewards_by_import_path_sync_async_dict() -> None:
    runner = RewardRunner("reward_fixtures:length_ratio")
    assert runner.score(_sample("A:", "ab")) == {"reward": 1.0, "format": 1.0}
    assert runner.score(_sample("xyz", "ab")) == {"reward": 0.0, "format": 0.0}
    runner = RewardRunner("reward_fixtures:async_exact")
    assert runner.score(_sample(" 42 ")) == {"reward": 1.0}
    assert runner.score(_sample("41")) == {"reward": 0.0}


def test_metadata_rm_type_chooses_the_reward_per_sample() -> None:
    runner = RewardRunner("exact")
    assert runner.score(_sample("the answer is 42"))["reward"] == 0.0  # exact: the whole text
    assert runner.score(_sample("the answer is 42", rm_type="math"))["reward"] == 1.0
    assert runner.score(_sample("the answer is 42", rm_type="reward_fixtures:async_exact"))["reward"] == 0.0


def test_batched_reward_gathers_concurrent_samples_into_one_call() -> None:
    reward_fixtures.calls.clear()
    runner = RewardRunner("reward_fixtures:judge", batch_wait_s=0.2)
    samples = [_sample(f"it is {x}") for x in (42, 7, 42)]
    with ThreadPoolExecutor(3) as pool:  # as three env threads would
        results = list(pool.map(runner.score, samples))
    assert [r["reward"] for r in results] == [1.0, 0.0, 1.0]
    assert reward_fixtures.calls == [3]


def test_reward_model_class_is_scored_in_batches_of_max_batch() -> None:
    reward_fixtures.calls.clear()
    runner = RewardRunner("reward_fixtures:LengthModel", batch_wait_s=0.2)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(runner.score, [_sample("x" * n) for n in (1, 2, 3, 4)]))
    assert sorted(r["reward"] for r in results) == [0.1, 0.2, 0.3, 0.4]
    assert reward_fixtures.calls == [2, 2]  # max_batch = 2


def test_a_raising_or_bad_reward_is_a_reward_error_naming_it() -> None:
    with pytest.raises(
        RewardError, match=r"reward 'reward_fixtures:broken' raised ValueError: the judge is down"
    ):
        RewardRunner("reward_fixtures:broken").score(_sample("42"))
    with pytest.raises(RewardError, match="returned 'yes'; it must return a number or a dict"):
        RewardRunner("reward_fixtures:not_a_number").score(_sample("42"))


def test_unknown_rewards_are_config_errors_that_say_what_exists() -> None:
    with pytest.raises(ConfigError, match=r"'mth' is not a built-in reward \(exact, f1, math, boxed_math\)"):
        resolve_reward("mth")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        resolve_reward("no_such_module:fn")
    with pytest.raises(ConfigError, match=r"has no attribute 'nope'; it defines: .*length_ratio"):
        resolve_reward("reward_fixtures:nope")


def test_sequence_classifier_reward_model_scores_batches_like_single_passes(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GPT2ForSequenceClassification

    from agentrl.models import make_tiny_gpt2

    base = make_tiny_gpt2(tmp_path / "tiny")
    torch.manual_seed(0)
    rm_dir = tmp_path / "rm"
    GPT2ForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(base).save_pretrained(rm_dir)
    prompt = [{"role": "user", "content": "2 + 2?"}]
    samples = [RewardSample(r, "4", prompt=prompt) for r in ("4", "It is four, I am quite sure of it", "5")]
    runner = RewardRunner(f"rm:{rm_dir}", batch_wait_s=0.2)
    with ThreadPoolExecutor(3) as pool:  # one padded batch of three
        batched_scores = [r["reward"] for r in pool.map(runner.score, samples)]
    # Independently: each conversation alone (no padding) through the model, its logit read directly.
    model = GPT2ForSequenceClassification.from_pretrained(rm_dir).eval()
    tok = AutoTokenizer.from_pretrained(rm_dir)
    for sample, score in zip(samples, batched_scores, strict=True):
        text = tok.apply_chat_template(
            [*prompt, {"role": "assistant", "content": sample.response}], tokenize=False
        )
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = float(model(input_ids=ids).logits[0, 0])
        assert score == pytest.approx(expected, abs=1e-4)
    assert len(set(batched_scores)) == 3  # a random head still tells the three apart
    with pytest.raises(ConfigError, match="no Hugging Face model folder"):
        resolve_reward(f"rm:{tmp_path / 'none'}", build=False)


def test_a_built_in_reward_without_a_label_is_an_error() -> None:
    with pytest.raises(RewardError, match="compares with a label, and d/3 has none"):
        RewardRunner("math").score(RewardSample("\\boxed{1}", None, task_id="d/3"))
