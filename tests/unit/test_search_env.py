"""agentrl/Search-v0: Search-R1's protocol strings, observations, rewards, and the offline data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrl.envs import search_data
from agentrl.envs.search import (
    INVALID_ACTION,
    PROMPT,
    SearchEnv,
    exact_match,
    is_valid_sequence,
    normalize_answer,
)
from agentrl.envs.search_data import build, sources
from agentrl.errors import ConfigError
from agentrl.tools.retrieval.base import Doc, Retriever
from agentrl.tools.retrieval.bm25 import BM25Retriever

# Search-R1's prompt, typed out from scripts/data_process/nq_search.py (make_prefix, template "base").
SEARCH_R1_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you "
    "get new information. After reasoning, if you find you lack some knowledge, you can call a search engine "
    "by <search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: "
)


class FixedRetriever(Retriever):
    """Returns the same two passages for any query and records the queries."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def search(self, queries: list[str], topk: int = 3) -> list[list[Doc]]:
        self.queries += queries
        return [
            [Doc("a", "Amman", "Amman is the capital city of Jordan."), Doc("b", "Jordan", "A river.")][:topk]
        ]


@pytest.fixture(scope="module")
def bm25(tmp_path_factory: pytest.TempPathFactory) -> BM25Retriever:
    return BM25Retriever.from_file(cache_dir=tmp_path_factory.mktemp("bm25"))


def _env(**kwargs: object) -> SearchEnv:
    kwargs.setdefault("retriever", FixedRetriever())
    kwargs.setdefault("split", "test")
    return SearchEnv(**kwargs)  # type: ignore[arg-type]


def test_prompt_is_search_r1_verbatim_and_protocol_info() -> None:
    env = _env(question_types=["capital_of"])
    messages, info = env.reset(options={"task_id": "capital_of-jordan"})
    assert messages == [{"role": "user", "content": SEARCH_R1_PROMPT + "What is the capital of Jordan?\n"}]
    assert PROMPT.format(question="Q?") == SEARCH_R1_PROMPT + "Q?\n"
    assert info["stop"] == ["</search>", "</answer>"]
    assert info["observation_format"] == "inline"


def test_search_observation_is_search_r1_information_block() -> None:
    env = _env(topk=2)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(
        "<think> look up </think>\n<search> Jordan capital </search>"
    )
    # Search-R1: f"\n\n<information>{passages.strip()}</information>\n\n", passages "Doc i(Title: t) text\n".
    expected = (
        "\n\n<information>Doc 1(Title: Amman) Amman is the capital city of Jordan.\n"
        "Doc 2(Title: Jordan) A river.</information>\n\n"
    )
    assert [m["content"] for m in obs] == [expected]
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["tool_calls"] == 1 and info["query"] == "Jordan capital"


def test_invalid_action_message_and_think_tags_not_executed() -> None:
    env = _env()
    env.reset(seed=0)
    expected = (
        "\nMy previous action is invalid. If I want to search, I should put the query between <search> and "
        "</search>. If I want to give the final answer, I should put the answer between <answer> and </answer>. "
        "Let me try again.\n"
    )
    assert expected == INVALID_ACTION
    for text in ["I think it is Paris.", "<think> <search> x </search> </think>", "<search> unclosed"]:
        obs, reward, terminated, _, info = env.step(text)
        assert [m["content"] for m in obs] == [expected] and reward == 0.0 and not terminated
        assert info["tool_calls"] == 0


def test_answer_reward_and_truncation() -> None:
    env = _env(question_types=["capital_of"], max_turns=2)
    env.reset(options={"task_id": "capital_of-jordan"})
    obs, reward, terminated, truncated, info = env.step("<think> known </think><answer> amman </answer>")
    assert (obs, reward, terminated, truncated, info["success"]) == ([], 1.0, True, False, True)
    env.reset(options={"task_id": "capital_of-jordan"})
    assert env.step("<answer>Cairo</answer>")[1:4] == (0.0, True, False)
    env.reset(options={"task_id": "capital_of-jordan"})
    assert env.step("<search>a</search>")[2:4] == (False, False)
    assert env.step("<search>b</search>")[2:4] == (False, True)


@pytest.mark.parametrize(
    ("pred", "gold", "same"),
    [
        ("The Eiffel Tower!", "eiffel tower", True),  # case, article, punctuation
        ("  New   York ", "new york", True),  # whitespace collapsed
        ("U.S.A.", "USA", True),  # dots are punctuation
        ("an apple", "Apple", True),
        ("theater", "ater", False),  # "the" is removed only as a whole word
        ("Paris, France", "Paris", False),  # EM, not containment
        ("Bogota", "Bogotá", False),  # SQuAD keeps accents; the data adds an ASCII alias instead
    ],
)
def test_exact_match_squad_normalisation(pred: str, gold: str, same: bool) -> None:
    assert exact_match(pred, [gold]) is same
    assert exact_match(pred, ["nothing", gold]) is same


def test_normalize_answer_examples() -> None:
    assert normalize_answer("The  Quick, brown fox.") == "quick brown fox"
    assert normalize_answer("A") == ""


def test_filters_and_unknown_type() -> None:
    env = _env(split="train", hops=2)
    assert env.tasks and all(t.meta["hops"] == 2 for t in env.tasks)
    env = _env(split="heldout", question_types=["person_kind"])
    assert {t.meta["type"] for t in env.tasks} == {"person_kind"}
    with pytest.raises(ConfigError, match="do not occur in split 'train'"):
        _env(split="train", question_types=["person_kind"])
    with pytest.raises(ConfigError, match="retriever_url"):
        SearchEnv(retriever="http")


def test_splits_disjoint_and_heldout_types_unseen() -> None:
    tasks = {s: search_data.load_tasks(s) for s in search_data.SPLITS}
    ids = [t["id"] for ts in tasks.values() for t in ts]
    assert len(ids) == len(set(ids))
    questions = {s: {t["question"] for t in ts} for s, ts in tasks.items()}
    assert not questions["train"] & questions["test"] and not questions["train"] & questions["heldout"]
    subjects = {s: {t["id"][len(t["type"]) + 1 :] for t in ts} for s, ts in tasks.items()}
    assert not subjects["train"] & subjects["test"]
    types = search_data.question_types()
    assert set(types["test"]) == set(types["train"])
    assert types["heldout"] and not set(types["heldout"]) & set(types["train"])
    assert {t["hops"] for t in tasks["heldout"]} == {1, 2}


def test_scripted_episodes_retrieve_gold_docs_and_solve(bm25: BM25Retriever) -> None:
    for split in search_data.SPLITS:
        env = SearchEnv(split=split, retriever=bm25)
        for index in range(0, len(env.tasks), 25):
            env.reset(options={"task_index": index})
            assert env.task is not None
            seen: list[str] = []
            for text in env.scripted_episode():
                _, reward, terminated, truncated, info = env.step(text)
                seen += info.get("doc_ids", [])
            assert set(env.task.meta["docs"]) <= set(seen), env.task.id
            assert (reward, terminated, truncated) == (1.0, True, False), env.task.id


def test_task_file_in_search_r1_layout(tmp_path: Path) -> None:
    row = {
        "data_source": "nq",
        "prompt": [{"role": "user", "content": "ignored. Question: who wrote hamlet\n"}],
        "reward_model": {"style": "rule", "ground_truth": {"target": ["William Shakespeare", "Shakespeare"]}},
        "extra_info": {"split": "train", "index": 0},
    }
    path = tmp_path / "nq.jsonl"
    path.write_text(json.dumps(row) + "\n")
    env = _env(task_file=str(path))
    messages, _ = env.reset(seed=0)
    assert messages[0]["content"].endswith("Question: who wrote hamlet?\n")
    assert env.step("<answer>shakespeare</answer>")[1] == 1.0


def _tiny_facts() -> sources.Facts:
    fr = sources.Country("France", (), "Paris", ("EUR",), ("fr",), "Europe", "Western Europe", "French",
                         ("33",), (), (".fr",), 1, 1)  # fmt: skip
    h = sources.Element("Hydrogen", "H", 1, "1.0079", "Light.")
    he = sources.Element("Helium", "He", 2, "4.0026", "Inert.")
    lyon = sources.Instance("08936647", sources.LEX_LOCATION, ("Lyon",), ("city",), ("France",), "a city")
    return sources.Facts([fr], [h, he], [lyon])


def test_builder_on_hand_made_facts(tmp_path: Path) -> None:
    facts = _tiny_facts()
    corpus = {d["id"]: d for d in build.build_corpus(facts)}
    assert "Paris" not in corpus["country:france"]["text"]  # the capital lives only in its own doc
    assert corpus["city:paris"]["text"] == "Paris is the capital city of France."
    assert corpus["wn:08936647"]["text"] == "Lyon is a city. It is part of France. A city."
    tasks = {t["id"]: t for t in build.build_tasks(facts)}
    assert tasks["capital_by_place-lyon"]["docs"] == ["wn:08936647", "city:paris"]
    assert tasks["element_next-hydrogen"]["answers"] == ["Helium"]
    assert tasks["element_symbol_prev-helium"]["split"] == "heldout"
    build.build(tmp_path / "a", facts_fn=_tiny_facts)
    build.build(tmp_path / "b", facts_fn=_tiny_facts)
    for name in ("corpus.jsonl.gz", "tasks.jsonl.gz", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.skipif(
    bool(sources.missing_sources()), reason="needs apt-get install wordnet-base dict-elements"
)
def test_regenerating_gives_the_packaged_files(tmp_path: Path) -> None:
    build.build(tmp_path)
    for name in ("corpus.jsonl.gz", "tasks.jsonl.gz", "manifest.json"):
        assert (tmp_path / name).read_bytes() == (search_data.DATA_DIR / name).read_bytes(), name


@pytest.mark.parametrize(
    ("response", "valid"),
    [
        ("<think> a </think>\n<answer> x </answer>", True),
        # one search round: think, search, information, think, answer
        (
            "<think> a </think><search> q </search>\n\n<information>Doc 1</information>\n\n"
            "<think> b </think><answer> x </answer>",
            True,
        ),
        ("<answer> x </answer>", False),  # no think first
        ("<think> a </think> so <answer> x </answer>", False),  # free text between tags
        ("<think> a </think><answer> x </answer> done", False),  # text after the answer
        ("<think> a </think><search> q </search>", False),  # never answered
        # a search must be followed by its information, then a new think before the answer
        (
            "<think> a </think><search> q </search>\n\n<information>D</information>\n\n<answer> x </answer>",
            False,
        ),
        (
            "<think> a </think><search> q </search>"
            + INVALID_ACTION
            + "<think> b </think><answer> x </answer>",
            False,
        ),
    ],
)
def test_is_valid_sequence_follows_search_r1_machine(response: str, valid: bool) -> None:
    assert is_valid_sequence(response) is valid


# Search-R1's compute_score_em with its training setting structure_format_score=0.2,
# final_format_score=0.1, retrieval_score=0.1 (case by case from its if/else ladder):
#   right & valid 1.0 | right & invalid 1 - 0.2 = 0.8 | wrong & valid 0.2 (+0.1 if retrieved = 0.3)
#   wrong & invalid 0.1
SCORES = {"structure_format_score": 0.2, "final_format_score": 0.1, "retrieval_score": 0.1}


@pytest.mark.parametrize(
    ("turns", "reward", "success", "valid"),
    [
        (["<think> k </think><answer> Amman </answer>"], 1.0, True, True),
        (["<answer> Amman </answer>"], 0.8, True, False),
        (["<think> k </think><answer> Cairo </answer>"], 0.2, False, True),
        # the search returns "Amman is the capital city of Jordan." (FixedRetriever): gold retrieved
        (
            ["<think> k </think><search> q </search>", "<think> k </think><answer> Cairo </answer>"],
            0.3,
            False,
            True,
        ),
        (["I guess <answer> Cairo </answer>"], 0.1, False, False),
    ],
)
def test_format_scores_are_search_r1_compute_score_em(
    turns: list[str], reward: float, success: bool, valid: bool
) -> None:
    env = _env(question_types=["capital_of"], **SCORES)
    env.reset(options={"task_id": "capital_of-jordan"})
    for text in turns[:-1]:
        assert env.step(text)[1] == 0.0
    _, r, terminated, _, info = env.step(turns[-1])
    assert terminated and r == pytest.approx(reward)
    assert (info["success"], info["valid_format"]) == (success, valid)


def test_format_scores_default_to_plain_exact_match_and_are_checked() -> None:
    env = _env(question_types=["capital_of"])
    for text, reward in [("<answer> Amman </answer>", 1.0), ("I guess <answer> Cairo </answer>", 0.0)]:
        env.reset(options={"task_id": "capital_of-jordan"})
        assert env.step(text)[1] == reward  # no format credit, no penalty for a bad structure
    with pytest.raises(ConfigError, match="format scores"):
        _env(structure_format_score=1.0)


def test_turns_without_an_answer_report_failure_so_truncation_counts_as_one() -> None:
    env = _env(question_types=["capital_of"], max_turns=2)
    env.reset(options={"task_id": "capital_of-jordan"})
    info = env.step("<think> k </think><search> q </search>")[4]
    assert (info["success"], info["valid_format"]) == (False, False)
    *_, truncated, info = env.step("no tags")
    assert truncated and (info["success"], info["valid_format"]) == (False, False)
