"""Question types of the offline Search tasks: one generator per type over the extracted facts.

Each generator yields only unambiguous questions (a capital shared by two countries, or a place name
carried by two WordNet entities, is skipped) together with every acceptable answer and the ids of the
documents that hold the facts needed, in the order a solver needs them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agentrl.envs.search_data.sources import LEX_LOCATION, LEX_PERSON, Country, Facts, Instance, slug


@dataclass(frozen=True)
class Question:
    """One generated question before splitting."""

    subject: str
    """The entity asked about; splits keep subjects disjoint between ``train`` and ``test``."""
    question: str
    answers: tuple[str, ...]
    docs: tuple[str, ...]
    """Ids of the gold documents, in the order a solver retrieves them."""


@dataclass(frozen=True)
class QuestionType:
    """A family of questions with one template."""

    name: str
    hops: int
    """How many documents must be read to answer (1 or 2)."""
    heldout: bool
    """True for types never seen in training (they go to the ``heldout`` split)."""
    cap: int
    """At most this many questions of the type (a stable hash picks which), to balance the types."""
    generate: Callable[[Facts], Iterator[Question]]


def _cdoc(c: Country) -> str:
    return f"country:{slug(c.name)}"


def _capdoc(c: Country) -> str:
    return f"city:{slug(c.capital)}"


def _unique_capitals(facts: Facts) -> list[Country]:
    counts = Counter(c.capital for c in facts.countries)
    return [c for c in facts.countries if counts[c.capital] == 1]


def _places(facts: Facts) -> Iterator[tuple[Instance, Country]]:
    """WordNet locations that are part of exactly one countryinfo country and have a unique name."""
    by_name = {c.name.lower(): c for c in facts.countries}
    titles = Counter(i.lemmas[0].lower() for i in facts.instances)
    for i in facts.instances:
        countries = [by_name[p.lower()] for p in i.part_of if p.lower() in by_name]
        title = i.lemmas[0]
        if i.lexfile != LEX_LOCATION or len(countries) != 1 or titles[title.lower()] > 1:
            continue
        if title.lower() in by_name or countries[0].name.lower() in title.lower():
            continue
        yield i, countries[0]


def capital_of(f: Facts) -> Iterator[Question]:
    for c in f.countries:
        yield Question(c.name, f"What is the capital of {c.name}?", (c.capital,), (_capdoc(c),))


def currency_of(f: Facts) -> Iterator[Question]:
    for c in f.countries:
        if c.currencies:
            q = f"What is the ISO 4217 code of the currency used in {c.name}?"
            yield Question(c.name, q, c.currencies, (_cdoc(c),))


def subregion_of(f: Facts) -> Iterator[Question]:
    for c in f.countries:
        if c.subregion:
            q = f"In which subregion of the world is {c.name}?"
            yield Question(c.name, q, (c.subregion,), (_cdoc(c),))


def demonym_of(f: Facts) -> Iterator[Question]:
    for c in f.countries:
        if c.demonym:
            q = f"What are people from {c.name} called?"
            yield Question(c.name, q, (c.demonym,), (_cdoc(c),))


def currency_by_capital(f: Facts) -> Iterator[Question]:
    for c in _unique_capitals(f):
        if c.currencies:
            q = f"What is the ISO 4217 code of the currency used in the country whose capital is {c.capital}?"
            yield Question(c.name, q, c.currencies, (_capdoc(c), _cdoc(c)))


def subregion_by_capital(f: Facts) -> Iterator[Question]:
    for c in _unique_capitals(f):
        if c.subregion:
            q = f"In which subregion of the world is the country whose capital is {c.capital}?"
            yield Question(c.name, q, (c.subregion,), (_capdoc(c), _cdoc(c)))


def demonym_by_capital(f: Facts) -> Iterator[Question]:
    for c in _unique_capitals(f):
        if c.demonym:
            q = f"What are people from the country whose capital is {c.capital} called?"
            yield Question(c.name, q, (c.demonym,), (_capdoc(c), _cdoc(c)))


def element_symbol(f: Facts) -> Iterator[Question]:
    for e in f.elements:
        q = f"What is the chemical symbol of {e.name.lower()}?"
        yield Question(e.name, q, (e.symbol,), (f"element:{slug(e.name)}",))


def element_number(f: Facts) -> Iterator[Question]:
    for e in f.elements:
        q = f"What is the atomic number of {e.name.lower()}?"
        yield Question(e.name, q, (str(e.number),), (f"element:{slug(e.name)}",))


def element_by_number(f: Facts) -> Iterator[Question]:
    for e in f.elements:
        q = f"Which chemical element has atomic number {e.number}?"
        yield Question(str(e.number), q, (e.name,), (f"element:{slug(e.name)}",))


def element_next(f: Facts) -> Iterator[Question]:
    by_number = {e.number: e for e in f.elements}
    for e in f.elements:
        if nxt := by_number.get(e.number + 1):
            q = f"Which chemical element has an atomic number one greater than that of {e.name.lower()}?"
            yield Question(e.name, q, (nxt.name,), (f"element:{slug(e.name)}", f"element:{slug(nxt.name)}"))


def element_symbol_prev(f: Facts) -> Iterator[Question]:
    by_number = {e.number: e for e in f.elements}
    for e in f.elements:
        if prv := by_number.get(e.number - 1):
            q = (
                "What is the chemical symbol of the element whose atomic number is one less than that of "
                f"{e.name.lower()}?"
            )
            yield Question(e.name, q, (prv.symbol,), (f"element:{slug(e.name)}", f"element:{slug(prv.name)}"))


def located_in(f: Facts) -> Iterator[Question]:
    for i, c in _places(f):
        q = f"In which country is {i.lemmas[0]} located?"
        yield Question(i.lemmas[0], q, (c.name, *c.alt_names), (f"wn:{i.offset}",))


def capital_by_place(f: Facts) -> Iterator[Question]:
    for i, c in _places(f):
        q = f"What is the capital of the country in which {i.lemmas[0]} is located?"
        yield Question(i.lemmas[0], q, (c.capital,), (f"wn:{i.offset}", _capdoc(c)))


def calling_code_by_place(f: Facts) -> Iterator[Question]:
    for i, c in _places(f):
        if c.calling_codes:
            q = f"What is the international calling code of the country in which {i.lemmas[0]} is located?"
            yield Question(i.lemmas[0], q, c.calling_codes, (f"wn:{i.offset}", _cdoc(c)))


def person_kind(f: Facts) -> Iterator[Question]:
    titles = Counter(i.lemmas[0].lower() for i in f.instances)
    for i in f.instances:
        if i.lexfile == LEX_PERSON and titles[i.lemmas[0].lower()] == 1:
            q = f"What kind of person was {i.lemmas[0]}, in one or two words?"
            yield Question(i.lemmas[0], q, i.kinds, (f"wn:{i.offset}",))


QUESTION_TYPES: tuple[QuestionType, ...] = (
    QuestionType("capital_of", 1, False, 400, capital_of),
    QuestionType("currency_of", 1, False, 400, currency_of),
    QuestionType("subregion_of", 1, False, 400, subregion_of),
    QuestionType("element_symbol", 1, False, 400, element_symbol),
    QuestionType("element_number", 1, False, 400, element_number),
    QuestionType("element_by_number", 1, False, 400, element_by_number),
    QuestionType("located_in", 1, False, 400, located_in),
    QuestionType("currency_by_capital", 2, False, 400, currency_by_capital),
    QuestionType("subregion_by_capital", 2, False, 400, subregion_by_capital),
    QuestionType("element_next", 2, False, 400, element_next),
    QuestionType("capital_by_place", 2, False, 400, capital_by_place),
    QuestionType("demonym_of", 1, True, 100, demonym_of),
    QuestionType("person_kind", 1, True, 100, person_kind),
    QuestionType("demonym_by_capital", 2, True, 100, demonym_by_capital),
    QuestionType("element_symbol_prev", 2, True, 100, element_symbol_prev),
    QuestionType("calling_code_by_place", 2, True, 100, calling_code_by_place),
)
"""Train/test types first, then the held-out types (``heldout=True``)."""
