"""Write GSM8K-style math word problems as prompt files for ``agentrl train --prompt-data`` (offline).

The problems come from reasoning-gym's ``gsm_symbolic`` generator (GSM8K questions with new numbers and
names, procedurally generated: no download) and, as a second, easier eval set, ``chain_sum`` with two
one-digit terms (a 135M model solves some of those, and almost no GSM8K problem).
Each record is ``{"question": ..., "answer": ..., "metadata": {...}}``, the layout slime and verl read::

    {"question": "Tom has 3 times as many ... How many ...?", "answer": "288", "metadata": {"source": "gsm_symbolic"}}

``--chat`` writes the question as chat messages instead (a system message asking for a boxed answer,
then the user's question), to try ``--input-key question`` on chat-format prompts.

Run::

    python examples/gsm8k/prepare_data.py --out runs/gsm8k/data     # train.jsonl, gsm.jsonl, arith.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

INSTRUCTION = "Solve the problem. Put the final answer, a number, in \\boxed{}."
EASY = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
SETS: dict[str, tuple[str, int, int, dict[str, Any]]] = {
    # file: (generator, records, seed, generator config); the train and eval files use different seeds
    "train": ("gsm_symbolic", 256, 0, {}),
    "gsm": ("gsm_symbolic", 32, 1, {}),
    "arith": ("chain_sum", 32, 2, EASY),
}


def records(generator: str, size: int, seed: int, config: dict[str, Any], chat: bool) -> list[dict[str, Any]]:
    """``size`` problems of ``generator`` as prompt-file records."""
    import reasoning_gym

    out = []
    for item in reasoning_gym.create_dataset(generator, size=size, seed=seed, **config):
        question: Any = item["question"]
        if chat:
            question = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": question}]
        else:
            question = f"{question}\n{INSTRUCTION}"
        out.append({"question": question, "answer": str(item["answer"]), "metadata": {"source": generator}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/gsm8k/data", help="folder for the .jsonl files")
    parser.add_argument("--chat", action="store_true", help="write questions as chat messages")
    parser.add_argument("--train-size", type=int, default=SETS["train"][1], help="training records")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (generator, size, seed, config) in SETS.items():
        rows = records(generator, args.train_size if name == "train" else size, seed, config, args.chat)
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} records of {generator}")


if __name__ == "__main__":
    main()
