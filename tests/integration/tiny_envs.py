"""A tiny env for training tests: one turn, the reward is how often the agent writes the letter ``e``.

Why this env: a random-init tiny GPT-2 must be able to learn it within a few CPU steps, and its reward
must be measurable independently of the trainer (we count characters). ``sign=-1`` rewards avoiding the
letter instead, which tests use to show that improvement comes from the gradient's direction.
"""

from __future__ import annotations

from agentrl.envs.base import Task, ToolEnv, TurnResult


def letter_fraction(text: str, letter: str = "e") -> float:
    """Share of the text's characters that are ``letter`` (0 for empty text)."""
    return text.count(letter) / len(text) if text else 0.0


class LetterEnv(ToolEnv):
    """Single-turn env; reward = sign x (share of 'e' characters in the agent's turn)."""

    def __init__(self, *, sign: float = 1.0, num_tasks: int = 24, **kwargs: object) -> None:
        self.sign = sign
        self.num_tasks = num_tasks
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def load_tasks(self, split: str) -> list[Task]:
        offset = 0 if split == "train" else 1000
        return [
            Task(id=f"{split}-{i}", prompt=f"Say something {i + offset}.", answer=None)
            for i in range(self.num_tasks)
        ]

    def initial_messages(self, task: Task) -> list[dict[str, str]]:
        return [{"role": "user", "content": task.prompt}]

    def turn(self, text: str) -> TurnResult:
        share = letter_fraction(text)
        return TurnResult(
            [], reward=self.sign * share, terminated=True, info={"success": share >= 0.2, "share": share}
        )


class FailingAfterTwoEnv(LetterEnv):
    """LetterEnv whose constructor raises from its third instance on, per process (like a sandbox pool
    that ran dry): listing the train and eval tasks builds two; every later build fails."""

    built = 0

    def __init__(self, **kwargs: object) -> None:
        type(self).built += 1
        if type(self).built > 2:
            raise RuntimeError("sandbox pool exhausted")
        super().__init__(**kwargs)  # type: ignore[arg-type]


class FailOnTaskEnv(LetterEnv):
    """LetterEnv whose turn raises (a tool that is down: the episode FAILS) on task ``fail_task`` while the
    file ``flag`` exists; removing the file heals it (a resumed run)."""

    def __init__(self, *, fail_task: str, flag: str, **kwargs: object) -> None:
        self.fail_task, self.flag = fail_task, flag
        super().__init__(**kwargs)

    def turn(self, text: str) -> TurnResult:
        import os

        if self.task is not None and self.task.id == self.fail_task and os.path.exists(self.flag):
            raise RuntimeError("tool down")
        return super().turn(text)
