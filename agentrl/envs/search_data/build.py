"""Build the offline knowledge corpus and QA tasks of ``agentrl/Search-v0`` from packaged fact sources.

Why: Search-R1 trains on NQ/HotpotQA over a 21M-passage Wikipedia dump that needs hub access; this
corpus gives the same protocol (search, read ``Doc i(Title: ...)`` passages, answer) on data that ships
with the wheel. Each fact lives in exactly one document (a capital is only stated in the capital's own
document, never in the country's), so two-hop questions really need two searches.

Splits: ``train`` and ``test`` share question types but ask about disjoint subjects (a country asked about
in ``test`` is never the subject of a ``train`` question); ``heldout`` holds only question types that
never appear in training, for the held-out suite.

Regenerate (needs the Debian packages; the packaged output is committed, so users never need them)::

    apt-get install -y wordnet-base dict-elements
    pip install 'agentrl-gym[search]'
    python -m agentrl.envs.search_data.build            # rewrites agentrl/envs/search_data/*.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path

from agentrl.envs.search_data import questions
from agentrl.envs.search_data.sources import (
    Country,
    Element,
    Facts,
    Instance,
    ascii_fold,
    missing_sources,
    read_countries,
    read_elements,
    read_instances,
    slug,
)
from agentrl.errors import ConfigError

DATA_DIR = Path(__file__).parent
TEST_PERCENT = 20


def _join(items: tuple[str, ...] | list[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def country_doc(c: Country) -> dict[str, str]:
    """A country's document; it deliberately omits the capital (stated in the capital's document)."""
    where = f" in the subregion {c.subregion} of {c.region}" if c.subregion else ""
    s = [f"{c.name} is a country or territory{where}."]
    if c.alt_names:
        s.append(f"It is also known as {_join(c.alt_names)}.")
    if c.currencies:
        s.append(f"Its currency has the ISO 4217 code {_join(c.currencies)}.")
    if c.languages:
        s.append(f"Its official languages have the ISO 639-1 codes {_join(c.languages)}.")
    if c.borders:
        s.append(f"It shares land borders with {_join(c.borders)}.")
    if c.calling_codes:
        s.append(f"Its international calling code is {_join(['+' + x for x in c.calling_codes])}.")
    if c.tlds:
        s.append(f"Its internet top-level domain is {_join(c.tlds)}.")
    if c.population and c.area:
        s.append(f"It has about {c.population:,} inhabitants on {c.area:,} square kilometres.")
    if c.demonym:
        s.append(f"People from {c.name} are called {c.demonym}.")
    return {"id": f"country:{slug(c.name)}", "title": c.name, "text": " ".join(s)}


def capital_doc(capital: str, countries: list[Country]) -> dict[str, str]:
    names = _join([c.name for c in countries])
    return {
        "id": f"city:{slug(capital)}",
        "title": capital,
        "text": f"{capital} is the capital city of {names}.",
    }


def element_doc(e: Element) -> dict[str, str]:
    weight = f" Its atomic weight is {e.weight}." if e.weight else ""
    text = f"{e.name} is a chemical element with the symbol {e.symbol} and atomic number {e.number}.{weight}"
    return {"id": f"element:{slug(e.name)}", "title": e.name, "text": f"{text} {e.description}".strip()}


def instance_doc(i: Instance) -> dict[str, str]:
    title, kinds = i.lemmas[0], _join(list(dict.fromkeys(i.kinds)))
    s = [f"{title} is {_article(kinds)} {kinds}."]
    if len(i.lemmas) > 1:
        s.append(f"It is also called {_join(i.lemmas[1:])}.")
    if i.part_of:
        s.append(f"It is part of {_join(i.part_of)}.")
    gloss = i.gloss[:1].upper() + i.gloss[1:]
    s.append(gloss if gloss.endswith(".") else gloss + ".")
    return {"id": f"wn:{i.offset}", "title": title, "text": " ".join(s)}


def build_corpus(facts: Facts) -> list[dict[str, str]]:
    """All documents, sorted by id."""
    docs = [country_doc(c) for c in facts.countries]
    by_capital: dict[str, list[Country]] = {}
    for c in facts.countries:
        by_capital.setdefault(c.capital, []).append(c)
    docs += [capital_doc(cap, cs) for cap, cs in by_capital.items()]
    docs += [element_doc(e) for e in facts.elements]
    docs += [instance_doc(i) for i in facts.instances]
    ids = Counter(d["id"] for d in docs)
    if dupes := [i for i, n in ids.items() if n > 1]:
        raise ConfigError(f"duplicate corpus doc ids {dupes[:5]}: make the id scheme in build.py unique")
    return sorted(docs, key=lambda d: d["id"])


def _hash(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16)


def split_of(subject: str) -> str:
    """``test`` for about TEST_PERCENT% of subjects (by a stable hash), ``train`` for the rest."""
    return "test" if _hash(subject) % 100 < TEST_PERCENT else "train"


def build_tasks(facts: Facts) -> list[dict[str, object]]:
    """QA tasks of every question type, at most ``qtype.cap`` per type, sorted by split then id."""
    tasks = []
    for qtype in questions.QUESTION_TYPES:
        generated = sorted(qtype.generate(facts), key=lambda q: _hash(qtype.name + q.subject))
        for q in generated[: qtype.cap]:
            tasks.append(
                {
                    "id": f"{qtype.name}-{slug(q.subject)}",
                    "split": "heldout" if qtype.heldout else split_of(q.subject),
                    "question": q.question,
                    "answers": list(
                        dict.fromkeys(a for ans in q.answers for a in (ans, ascii_fold(ans)) if a)
                    ),
                    "type": qtype.name,
                    "hops": qtype.hops,
                    "docs": list(q.docs),
                }
            )
    ids = Counter(str(t["id"]) for t in tasks)
    if dupes := [i for i, n in ids.items() if n > 1]:
        raise ConfigError(f"duplicate task ids {dupes[:5]}: make subjects unique in questions.py")
    return sorted(tasks, key=lambda t: (str(t["split"]), str(t["id"])))


def _write_jsonl_gz(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """Byte-reproducible gzip: no file name and mtime 0 in the header."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    path.write_bytes(buf.getvalue())


def build(out_dir: Path = DATA_DIR, facts_fn: Callable[[], Facts] | None = None) -> dict[str, object]:
    """Write ``corpus.jsonl.gz``, ``tasks.jsonl.gz`` and ``manifest.json`` into ``out_dir``."""
    if facts_fn is None and (missing := missing_sources()):
        raise ConfigError(f"missing {missing}: apt-get install -y wordnet-base dict-elements")
    facts = facts_fn() if facts_fn else Facts(read_countries(), read_elements(), read_instances())
    corpus, tasks = build_corpus(facts), build_tasks(facts)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl_gz(out_dir / "corpus.jsonl.gz", corpus)
    _write_jsonl_gz(out_dir / "tasks.jsonl.gz", tasks)
    manifest = {
        "sources": {
            "countryinfo": version("countryinfo"),
            "wordnet-base": "3.0",
            "dict-elements": "20001107",
        },
        "docs": len(corpus),
        "tasks": dict(sorted(Counter(f"{t['split']}/{t['type']}" for t in tasks).items())),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _iter_summary(manifest: dict[str, object]) -> Iterator[str]:
    yield f"docs: {manifest['docs']}"
    tasks = manifest["tasks"]
    assert isinstance(tasks, dict)
    yield from (f"{k}: {v}" for k, v in tasks.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default: the package's)")
    args = parser.parse_args(argv)
    for line in _iter_summary(build(args.out)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
