"""A Hugging Face sequence-classification reward model: ``--reward rm:PATH``.

The model scores the whole conversation (the prompt messages and the response as the assistant's turn,
rendered with the reward model's own chat template when it has one) in batches. One label: the score is
that logit; several labels: the probability of the last one (``[bad, good]`` classifiers). Batches run
on a thread, one at a time (``concurrency = 1``: a forward pass uses every core or the GPU anyway).

A generative judge served by an engine is a class of your own with the same ``async score(samples)``
(see :class:`~agentrl.envs.rewards.RewardModel`), named by ``--reward package.module:Class``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.envs.rewards import RewardSample
from agentrl.errors import ConfigError

PREFIX = "rm:"


class SequenceClassifierReward:
    """Scores samples with ``AutoModelForSequenceClassification`` from ``path``."""

    concurrency = 1
    """Forward passes in flight."""

    def __init__(
        self, path: str, *, device: str = "cpu", max_batch: int = 16, max_length: int = 4096
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"--reward {PREFIX}{path}: no Hugging Face model folder (config.json) there")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval().to(device)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device, self.max_batch, self.max_length = device, max_batch, max_length

    def text(self, sample: RewardSample) -> str:
        """The conversation the model judges, as text."""
        messages = [*sample.prompt, {"role": "assistant", "content": sample.response}]
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False))
        return "\n".join(str(m["content"]) for m in messages)

    def score_batch(self, samples: Sequence[RewardSample]) -> list[float]:
        """One forward pass over ``samples`` (right-padded; the model reads the last real token)."""
        import torch

        batch = self.tokenizer(
            [self.text(s) for s in samples],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=False,
            return_tensors="pt",
        ).to(self.device)
        with torch.no_grad():
            logits = self.model(**batch).logits.float()  # (B, num_labels)
        scores = logits[:, 0] if logits.shape[1] == 1 else logits.softmax(-1)[:, -1]
        return [float(x) for x in scores]

    async def score(self, samples: Sequence[RewardSample]) -> list[float]:
        return await asyncio.to_thread(self.score_batch, list(samples))


def model_reward(name: str, build: bool) -> Any:
    """The reward model ``rm:PATH`` names, or (``build=False``) only a check that PATH holds a model."""
    path = name[len(PREFIX) :]
    if not build:
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"--reward {name}: no Hugging Face model folder (config.json) at {path}")
        return None
    return SequenceClassifierReward(path)
