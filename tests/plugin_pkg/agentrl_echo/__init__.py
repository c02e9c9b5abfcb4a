"""A minimal third-party agentrl env package, installed by tests/unit/test_registry.py."""

from __future__ import annotations

from collections.abc import Sequence

from agentrl.envs import Message, Task, ToolEnv, TurnResult, register

WORDS = ("apple", "river", "cloud", "stone")


class EchoEnv(ToolEnv):
    """Repeat a word.

    ## Description
    The agent is shown a word and must write it back inside ``<answer>`` tags.

    ## Action
    Text; ``<answer>word</answer>`` ends the episode.

    ## Observation
    Chat messages: the instruction, then a reminder after a turn without an answer.

    ## Reward
    1.0 when the answer equals the word (upper-cased when ``shout``), else 0.0.

    ## Episode End
    Terminated on an answer; truncated after ``max_turns``.

    ## Arguments
    ``split``, ``max_turns``, ``shout`` (expect the word in capitals).

    ## Version History
    * v0: initial version.
    """

    def __init__(self, *, split: str = "train", max_turns: int = 2, shout: bool = False, **kwargs: object):
        self.shout = shout
        super().__init__(split=split, max_turns=max_turns, **kwargs)  # type: ignore[arg-type]

    def load_tasks(self, split: str) -> Sequence[Task]:
        return [
            Task(f"echo-{i}", f"Repeat the word {w!r}.", w.upper() if self.shout else w)
            for i, w in enumerate(WORDS)
        ]

    def initial_messages(self, task: Task) -> list[Message]:
        return [{"role": "user", "content": task.prompt}]

    def turn(self, text: str) -> TurnResult:
        assert self.task is not None
        if "<answer>" in text and "</answer>" in text:
            answer = text.split("<answer>", 1)[1].split("</answer>", 1)[0].strip()
            return TurnResult([], float(answer == self.task.answer), terminated=True)
        return TurnResult([{"role": "user", "content": "Answer inside <answer></answer>."}])

    def scripted_episode(self) -> list[str]:
        assert self.task is not None
        return ["Let me think.", f"<answer>{self.task.answer}</answer>"]


def register_envs() -> None:
    register("agentrl_echo/Shout-v0", "agentrl_echo:EchoEnv", kwargs={"shout": True})
