"""Retrieval quality of the BM25 (and dense) retriever on the Search test splits: hit@1 and hit@3.

Why: the Search env's reward ceiling is bounded by what the retriever finds. This measures, for the
*question itself* used as the query (what an agent's first search often is):

* ``ans@k``: a top-k passage contains a gold answer (normalised, as a whole-word substring), the
  measure Search-R1-style papers report;
* ``doc@k``: the first gold document (the one a solver needs first) is in the top k.

Two-hop questions can only rarely be answered from the first search, which is the point of them.

Run::

    python bench/retrieval.py                 # splits test and heldout
    python bench/retrieval.py --split train --topk 5
    python bench/retrieval.py --dense         # also the dense retriever (packaged MiniLM, FAISS), and
                                              # an ALL row per backend side by side
    python bench/retrieval.py --dense --encoder path/to/e5-base-v2

The dense index is built on first use and cached (``python -m agentrl.tools.retrieval.index`` builds
it ahead of time, with a progress bar).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from agentrl.envs.search import normalize_answer
from agentrl.envs.search_data import load_tasks
from agentrl.tools.retrieval.base import Retriever
from agentrl.tools.retrieval.bm25 import BM25Retriever


def contains_answer(text: str, answers: list[str]) -> bool:
    haystack = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(a)} " in haystack for a in answers if normalize_answer(a))


def evaluate(retriever: Retriever, split: str, topk: int) -> dict[str, dict[str, float]]:
    tasks = load_tasks(split)
    hits = retriever.search([t["question"] for t in tasks], topk)
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for task, docs in zip(tasks, hits, strict=True):
        for key in (task["type"], f"ALL ({split})"):
            row = rows[key]
            row["n"] += 1
            row["hops"] = task["hops"] if key == task["type"] else 0
            for k in (1, topk):
                row[f"ans@{k}"] += any(contains_answer(d.contents, task["answers"]) for d in docs[:k])
                row[f"doc@{k}"] += task["docs"][0] in [d.id for d in docs[:k]]
    return {
        key: {m: (v if m in ("n", "hops") else v / row["n"]) for m, v in row.items()}
        for key, row in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", action="append", help="test, heldout or train (repeatable)")
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--dense", action="store_true", help="also measure the dense retriever")
    parser.add_argument("--encoder", default=None, help="dense encoder (default: the packaged MiniLM)")
    args = parser.parse_args()
    started = time.perf_counter()
    retriever = BM25Retriever.from_file()
    print(f"BM25 index over {len(retriever.docs)} docs ready in {time.perf_counter() - started:.2f} s")
    cols = ["ans@1", f"ans@{args.topk}", "doc@1", f"doc@{args.topk}"]
    print(f"{'question type':<28}{'hops':>5}{'n':>6}" + "".join(f"{c:>8}" for c in cols))
    for split in args.split or ["test", "heldout"]:
        started = time.perf_counter()
        table = evaluate(retriever, split, args.topk)
        for key in sorted(table, key=lambda k: (k.startswith("ALL"), k)):
            row = table[key]
            hops = str(int(row["hops"])) if row["hops"] else ""
            print(f"{key:<28}{hops:>5}{int(row['n']):>6}" + "".join(f"{row[c]:>8.3f}" for c in cols))
        print(
            f"({split}: {int(table[f'ALL ({split})']['n'])} queries in {time.perf_counter() - started:.2f} s)"
        )
    if args.dense:
        compare_dense(retriever, args.encoder, args.split or ["test", "heldout"], args.topk, cols)


def compare_dense(
    bm25: BM25Retriever, encoder: str | None, splits: list[str], topk: int, cols: list[str]
) -> None:
    """One ALL row per split and backend, BM25 next to dense."""
    from agentrl.tools.retrieval.dense import DenseRetriever

    started = time.perf_counter()
    dense = DenseRetriever.from_file(encoder=encoder)
    print(f"\ndense index ({dense.info['encoder']}, dim {dense.info['dim']}) ready in "
          f"{time.perf_counter() - started:.2f} s")  # fmt: skip
    print(f"{'split':<12}{'backend':<24}{'n':>6}" + "".join(f"{c:>8}" for c in cols))
    for split in splits:
        for name, retriever in (("bm25", bm25), (f"dense {dense.info['encoder']}", dense)):
            started = time.perf_counter()
            row = evaluate(retriever, split, topk)[f"ALL ({split})"]
            took = time.perf_counter() - started
            print(
                f"{split:<12}{name:<24}{int(row['n']):>6}"
                + "".join(f"{row[c]:>8.3f}" for c in cols)
                + f"   ({took:.1f} s)"
            )


if __name__ == "__main__":
    main()
