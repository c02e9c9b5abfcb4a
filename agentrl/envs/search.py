"""``agentrl/Search-v0``: Search-R1's search-and-answer protocol over a retriever."""

from __future__ import annotations

import re
import string
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agentrl.envs.base import Task, ToolEnv, TurnResult
from agentrl.errors import ConfigError
from agentrl.tools.parsers import ParseError, TagParser
from agentrl.tools.retrieval.base import Retriever, format_docs
from agentrl.types import Message

PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time "
    "you get new information. After reasoning, if you find you lack some knowledge, you can call a search "
    "engine by <search> query </search> and it will return the top searched results between "
    "<information> and </information>. You can search as many times as your want. If you find no further "
    "external knowledge needed, you can directly provide the answer inside <answer> and </answer>, "
    "without detailed illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)
"""Search-R1's user turn, verbatim (typo "as your want" included: trained checkpoints expect it)."""
INVALID_ACTION = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> and "
    "</search>. If I want to give the final answer, I should put the answer between <answer> and "
    "</answer>. Let me try again.\n"
)
"""Search-R1's observation after a turn with neither a search nor an answer."""

_UNANSWERED = {"success": False, "valid_format": False}
"""Info of a turn without an answer: an episode truncated after it counts as failed and ill-formed."""

_retrievers: dict[tuple[str, str], Retriever] = {}
_retrievers_lock = threading.Lock()


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def exact_match(prediction: str, golds: Iterable[str]) -> bool:
    """True when ``prediction`` equals any gold answer after :func:`normalize_answer`."""
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(g) for g in golds)


_TAG = re.compile(r"(</?(?:think|search|information|answer)>)")
# Search-R1's format machine: which tag may come in which state, and the state it leads to.
_TRANSITIONS = {
    ("start", "<think>"): "in_think",
    ("information", "<think>"): "in_think",
    ("in_think", "</think>"): "after_think",
    ("after_think", "<search>"): "in_search",
    ("in_search", "</search>"): "after_search",
    ("after_search", "<information>"): "in_information",
    ("in_information", "</information>"): "information",
    ("after_think", "<answer>"): "in_answer",
    ("in_answer", "</answer>"): "end",
}
_INSIDE = frozenset({"in_think", "in_search", "in_information", "in_answer"})


def is_valid_sequence(response: str) -> bool:
    """Search-R1's structure check of a whole response (the assistant text with its ``<information>``).

    Valid means ``<think>..</think>`` then any number of ``<search>..</search><information>..</information>
    <think>..</think>`` rounds, then ``<answer>..</answer>``, with only whitespace between tags and every
    tag balanced. It is ``is_valid_sequence`` of Search-R1's ``qa_em_format.py``, re-implemented.
    """
    state = "start"
    for part in _TAG.split(response):
        if not part.strip():
            continue
        if _TAG.fullmatch(part):
            next_state = _TRANSITIONS.get((state, part))
            if next_state is None:
                return False
            state = next_state
        elif state not in _INSIDE:
            return False  # free text between tags (or after the answer)
    return state == "end"


def retrieval_correct(response: str, golds: Iterable[str]) -> bool:
    """True when a normalised gold answer occurs in a normalised ``<information>`` block of ``response``."""
    blocks = [normalize_answer(b) for b in re.findall(r"<information>(.*?)</information>", response, re.S)]
    return any(normalize_answer(g) in b for g in golds for b in blocks)


def shaped_reward(
    success: bool,
    valid_format: bool,
    retrieved: bool,
    *,
    structure_format_score: float,
    final_format_score: float,
    retrieval_score: float,
) -> float:
    """Search-R1's ``compute_score_em`` for an answered episode (all scores 0: plain exact match).

    * right answer: 1, or ``1 - structure_format_score`` when the structure is not valid;
    * wrong answer, valid structure: ``structure_format_score`` (+ ``retrieval_score`` when a retrieved
      passage held a gold answer);
    * wrong answer, invalid structure: ``final_format_score`` (an answer tag at least).
    """
    if success:
        return 1.0 if valid_format else 1.0 - structure_format_score
    if valid_format:
        return structure_format_score + (retrieval_score if retrieved else 0.0)
    return final_format_score


def information(docs_text: str) -> str:
    """The observation after a search, spaced exactly as Search-R1 appends it to the response."""
    return f"\n\n<information>{docs_text.strip()}</information>\n\n"


def shared_retriever(kind: str, *, url: str | None = None, corpus: str | None = None) -> Retriever:
    """One retriever per (kind, location) per process, so that many envs share an index or a pool."""
    if kind not in ("bm25", "dense", "http"):
        raise ConfigError(f"retriever must be 'bm25', 'dense', 'http' or a Retriever instance, got {kind!r}")
    if kind == "http" and not url:
        raise ConfigError("retriever='http' needs retriever_url, e.g. 'http://127.0.0.1:8000/retrieve'")
    key = (kind, str(url if kind == "http" else corpus or ""))
    with _retrievers_lock:
        if key not in _retrievers:
            if kind == "http":
                from agentrl.tools.retrieval.http import HTTPRetriever

                _retrievers[key] = HTTPRetriever(str(url))
            elif kind == "dense":
                from agentrl.tools.retrieval.dense import DenseRetriever

                _retrievers[key] = DenseRetriever.from_file(corpus)
            else:
                from agentrl.tools.retrieval.bm25 import BM25Retriever

                _retrievers[key] = BM25Retriever.from_file(corpus)
        return _retrievers[key]


def _offline_tasks(split: str) -> list[Task]:
    from agentrl.envs.search_data import load_tasks

    return [
        Task(
            id=r["id"],
            prompt=r["question"],
            answer=list(r["answers"]),
            meta={
                "type": r["type"],
                "hops": r["hops"],
                "docs": list(r["docs"]),
                "data_source": "agentrl-offline",
            },
        )
        for r in load_tasks(split)
    ]


class SearchEnv(ToolEnv):
    """Question answering with a search engine, in Search-R1's exact protocol.

    ## Description
    Each episode is one factoid question. The agent reasons in ``<think>``, searches with
    ``<search> query </search>`` (generation stops at ``</search>``), reads the top ``topk`` passages
    returned inside ``<information>``, and ends with ``<answer> ... </answer>``. By default the questions
    and the corpus are the packaged offline set (countries, capitals, chemical elements and WordNet named
    entities; single- and two-hop questions; see ``agentrl/envs/search_data``); ``task_file`` reads
    Search-R1 parquet/JSONL data (NQ, HotpotQA...) instead, to be used with an HTTP retriever over wiki-18.

    ## Action
    The agent's turn as text. The first ``<search>``/``<answer>`` tag outside ``<think>`` is the action
    (Search-R1 takes the first tag anywhere; a tag inside ``<think>`` is not executed here).

    ## Observation
    ``observation_format = "inline"``: observations are appended raw inside the assistant turn and masked
    out of the loss. Reset gives one user message, :data:`PROMPT` with the question. After a search: one
    message ``"\\n\\n<information>Doc 1(Title: t) text\\nDoc 2(...)...</information>\\n\\n"``; after an
    invalid turn: :data:`INVALID_ACTION`; after an answer: nothing.

    ## Reward
    1.0 when the answer equals a gold alias after SQuAD normalisation (:func:`exact_match`), else 0.0;
    given on the answer turn. ``info["success"]`` says the same (False on the turns before an answer, so
    that an episode truncated without one counts as a failure); ``info["tool_calls"]`` counts searches.
    With the opt-in format scores (Search-R1's ``compute_score_em``; all 0 by default, which is the
    plain exact-match reward above) the answer turn's reward is :func:`shaped_reward`: partial credit
    for a well-formed episode (:func:`is_valid_sequence`) or a well-formed answer even when the answer is
    wrong. ``info["success"]`` stays exact match; ``info["valid_format"]`` says whether the response so
    far is a complete, well-formed one (so it is False on every turn before the answer).

    ## Episode End
    Terminated on the first turn with an ``<answer>``; truncated after ``max_turns`` turns without one
    (Search-R1's "max turns 4" is 4 search rounds plus a final answer, i.e. ``max_turns=5`` here).

    ## Arguments
    * ``split``: ``"train"``, ``"test"`` (training question types, unseen subjects) or ``"heldout"``
      (question types never seen in training).
    * ``max_turns``: turn limit (default 5).
    * ``retriever``: ``"bm25"`` (local bm25s index, default), ``"dense"`` (local FAISS index over the
      packaged MiniLM encoder, built and cached on first use), ``"http"`` (a server speaking Search-R1's
      ``POST /retrieve``; give ``retriever_url``) or a :class:`~agentrl.tools.retrieval.base.Retriever`.
    * ``retriever_url``: URL of the ``/retrieve`` endpoint for ``retriever="http"``.
    * ``corpus``: JSONL(.gz) corpus for ``retriever="bm25"`` or ``"dense"`` (default: the packaged one).
    * ``topk``: passages per search (default 3).
    * ``hops``: keep only questions needing these many documents (an int or a list, e.g. ``2``).
    * ``question_types``: keep only these question types (e.g. ``["capital_of"]``).
    * ``task_file``: a Search-R1 ``.parquet``/``.jsonl`` QA file to read tasks from instead; a
      ``{split}`` in it is replaced by ``split`` (``data/{split}.parquet``), so that one ``--env-kwargs``
      serves the train split and the evaluation split.
    * ``structure_format_score``: reward of a wrong answer in a valid structure, and the penalty of a
      right answer in an invalid one (Search-R1 trains with 0.2; default 0).
    * ``final_format_score``: reward of a wrong answer in an invalid structure (Search-R1: 0.1; default 0).
    * ``retrieval_score``: added to ``structure_format_score`` when a retrieved passage contained a gold
      answer (Search-R1: 0 or 0.1; default 0).

    ## Version History
    * v0: initial version.
    """

    observation_format = "inline"
    stop_strings = ("</search>", "</answer>")

    def __init__(
        self,
        *,
        split: str = "train",
        max_turns: int = 5,
        retriever: str | Retriever = "bm25",
        retriever_url: str | None = None,
        corpus: str | None = None,
        topk: int = 3,
        hops: int | Sequence[int] | None = None,
        question_types: Sequence[str] | None = None,
        task_file: str | Path | None = None,
        structure_format_score: float = 0.0,
        final_format_score: float = 0.0,
        retrieval_score: float = 0.0,
        tasks: Sequence[Task] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if topk < 1:
            raise ConfigError(f"topk must be >= 1, got {topk}")
        self.format_scores = {
            "structure_format_score": float(structure_format_score),
            "final_format_score": float(final_format_score),
            "retrieval_score": float(retrieval_score),
        }
        if bad := {k: v for k, v in self.format_scores.items() if not 0.0 <= v < 1.0}:
            raise ConfigError(f"format scores must lie in [0, 1) (a right answer scores 1), got {bad}")
        self.topk = topk
        self.hops = None if hops is None else {hops} if isinstance(hops, int) else set(hops)
        self.question_types = None if question_types is None else set(question_types)
        self.task_file = task_file
        self._retriever_spec = retriever
        self._retriever_args = {"url": retriever_url, "corpus": corpus}
        self._retriever: Retriever | None = retriever if isinstance(retriever, Retriever) else None
        if isinstance(retriever, str) and (
            retriever not in ("bm25", "dense", "http") or (retriever == "http" and not retriever_url)
        ):
            shared_retriever(retriever, url=retriever_url)  # raises the ConfigError that says what to pass
        self._parser = TagParser({"search": "query", "answer": "answer"})
        super().__init__(split=split, max_turns=max_turns, tasks=tasks, render_mode=render_mode)

    # ----------------------------------------------------------------- ToolEnv hooks
    def load_tasks(self, split: str) -> Sequence[Task]:
        """The split's tasks (offline set or ``task_file``), after the ``hops``/``question_types`` filters."""
        if self.task_file is not None:
            from agentrl.envs.qa_files import read_qa_tasks

            tasks = read_qa_tasks(str(self.task_file).replace("{split}", split))
        else:
            tasks = _offline_tasks(split)
        if self.question_types is not None:
            known = {str(t.meta.get("type")) for t in tasks}
            if unknown := sorted(self.question_types - known):
                raise ConfigError(
                    f"question_types {unknown} do not occur in split {split!r}; available: {sorted(known)}"
                )
            tasks = [t for t in tasks if t.meta.get("type") in self.question_types]
        if self.hops is not None:
            tasks = [t for t in tasks if t.meta.get("hops") in self.hops]
        return tasks

    def initial_messages(self, task: Task) -> list[Message]:
        question = task.prompt.strip()
        if not question.endswith("?"):
            question += "?"  # as Search-R1's data preparation does
        return [{"role": "user", "content": PROMPT.format(question=question)}]

    def turn(self, text: str) -> TurnResult:
        assert self.task is not None
        calls = self._parser.parse(text)
        if isinstance(calls, ParseError) or not calls:
            kind = calls.kind if isinstance(calls, ParseError) else "no_action"
            info: dict[str, Any] = {"tool_calls": 0, "invalid_action": kind}
            return TurnResult([self._obs(INVALID_ACTION)], info={**info, **_UNANSWERED})
        call = calls[0]
        if call.name == "answer":
            answer = str(call.arguments["answer"])
            golds = [
                str(g)
                for g in (self.task.answer if isinstance(self.task.answer, list) else [self.task.answer])
            ]
            success = exact_match(answer, golds)
            response = self._response(text)
            valid = is_valid_sequence(response)
            in_docs = retrieval_correct(response, golds)
            reward = shaped_reward(success, valid, in_docs, **self.format_scores)
            info = {
                "tool_calls": 0,
                "success": success,
                "answer": answer,
                "valid_format": valid,
                "answer_in_docs": in_docs,
            }
            return TurnResult([], reward=reward, terminated=True, info=info)
        query = str(call.arguments["query"])
        docs = self.retriever.search([query], self.topk)[0]
        info = {"tool_calls": 1, "query": query, "doc_ids": [d.id for d in docs]}
        return TurnResult([self._obs(information(format_docs(docs)))], info={**info, **_UNANSWERED})

    def _response(self, last_turn: str) -> str:
        """The episode's response so far as Search-R1 scores it: every assistant turn and observation."""
        return "".join(str(m["content"]) for m in self.transcript if m["role"] != "user") + last_turn

    @staticmethod
    def _obs(content: str) -> Message:
        return {"role": "tool", "name": "search", "content": content}

    @property
    def retriever(self) -> Retriever:
        """The retriever, created on first use and shared with the other envs of this process."""
        if self._retriever is None:
            assert isinstance(self._retriever_spec, str)
            self._retriever = shared_retriever(self._retriever_spec, **self._retriever_args)
        return self._retriever

    # ----------------------------------------------------------------- demonstrations
    def expert_action(self) -> str:
        """The scripted expert: search with the question, read the returned documents, answer with the
        gold answer, in Search-R1's exact tag format.

        The answer names the gold alias found in the retrieved documents when there is one (what a
        reader of them could write), else the first alias. ``info["answer_in_docs"]`` of the answer turn
        says which: demonstrations whose documents held the answer teach reading, the others recall.
        """
        assert self.task is not None, "call reset() first"
        question = self.task.prompt.strip().rstrip("?")
        if self.turn_count == 0:
            return f"<think> I need to find out {_lower_first(question)}. </think>\n<search> {question}? </search>"
        golds = [
            str(g) for g in (self.task.answer if isinstance(self.task.answer, list) else [self.task.answer])
        ]
        read = "".join(str(m["content"]) for m in self.transcript if m["role"] == "tool")
        found = next(
            (g for g in golds if normalize_answer(g) and normalize_answer(g) in normalize_answer(read)), None
        )
        answer = found or golds[0]
        reason = "The documents say" if found else "I recall"
        return f"<think> {reason} the answer is {answer}. </think>\n<answer> {answer} </answer>"

    # ----------------------------------------------------------------- checks
    def scripted_episode(self) -> list[str]:
        """Agent turns that solve the current task: one search per gold document, then the answer.

        Each query is the gold document's title and text (an oracle query: it checks the search path,
        not retrieval quality, which ``bench/retrieval.py`` measures); tasks read from ``task_file`` (no
        gold documents) search the question.
        Used by ``agentrl envs check search``.
        """
        assert self.task is not None, "call reset() first"
        from agentrl.envs.search_data import doc_by_id

        queries = []
        for doc_id in self.task.meta.get("docs") or []:
            doc = doc_by_id(doc_id)
            queries.append(f"{doc['title']} {doc['text']}")
        turns = [
            f"<think> I need to look this up. </think>\n<search> {q} </search>"
            for q in queries or [self.task.prompt]
        ]
        golds = self.task.answer if isinstance(self.task.answer, list) else [self.task.answer]
        return [*turns, f"<think> I found it. </think>\n<answer> {golds[0]} </answer>"]
