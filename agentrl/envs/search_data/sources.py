"""Readers of the packaged fact sources behind the offline Search corpus.

Three sources, all offline and redistributable: the ``countryinfo`` PyPI package (countries, capitals,
currencies, borders...), Debian ``wordnet-base`` (WordNet 3.0 noun database: named-entity "instance"
synsets with glosses) and Debian ``dict-elements`` (a dictd database of chemical elements). Each
reader returns plain frozen records sorted by a stable key, so the builder is deterministic.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from agentrl.errors import ConfigError

WORDNET_DIR = Path("/usr/share/wordnet")
ELEMENTS_DICT = Path("/usr/share/dictd/elements.dict.dz")
ELEMENTS_INDEX = Path("/usr/share/dictd/elements.index")
LEX_LOCATION, LEX_PERSON = 15, 18
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass(frozen=True)
class Country:
    """One country or territory of ``countryinfo``."""

    name: str
    alt_names: tuple[str, ...]
    capital: str
    currencies: tuple[str, ...]
    languages: tuple[str, ...]
    region: str
    subregion: str
    demonym: str
    calling_codes: tuple[str, ...]
    borders: tuple[str, ...]
    tlds: tuple[str, ...]
    population: int
    area: int


@dataclass(frozen=True)
class Element:
    """One chemical element of ``dict-elements`` that has an atomic number."""

    name: str
    symbol: str
    number: int
    weight: str
    description: str


@dataclass(frozen=True)
class Instance:
    """A WordNet noun synset that is an instance (a named entity: a place, a person, an event...)."""

    offset: str
    lexfile: int
    lemmas: tuple[str, ...]
    kinds: tuple[str, ...]
    """First lemmas of the synsets this one is an instance of (``@i`` pointers), e.g. ``("composer",)``."""
    part_of: tuple[str, ...]
    """First lemmas of the part holonyms (``#p`` pointers), e.g. ``("France",)`` for Lyon."""
    gloss: str


def missing_sources() -> list[str]:
    """The Debian files the builder needs that are not installed (empty when it can run)."""
    needed = [WORDNET_DIR / "data.noun", ELEMENTS_DICT, ELEMENTS_INDEX]
    return [str(p) for p in needed if not p.exists()]


def read_countries() -> list[Country]:
    """All ``countryinfo`` entries with a name and a single string capital, sorted by name."""
    try:
        from countryinfo import CountryInfo
    except ImportError as e:
        raise ConfigError(
            "the Search data builder needs countryinfo: pip install 'agentrl-gym[search]'"
        ) from e
    raw = CountryInfo.all()
    by_code = {str(v.get("ISO", {}).get("alpha3", "")): str(v["name"]) for v in raw.values()}
    out = []
    for v in raw.values():
        capital = v.get("capital")
        if not isinstance(capital, str) or not capital.strip():
            continue
        alts = (a for a in v.get("altSpellings") or [] if " " in a and a != v["name"])
        out.append(
            Country(
                name=str(v["name"]),
                alt_names=tuple(dict.fromkeys(alts)),
                capital=capital.strip(),
                currencies=tuple(v.get("currencies") or ()),
                languages=tuple(v.get("languages") or ()),
                region=str(v.get("region") or ""),
                subregion=str(v.get("subregion") or ""),
                demonym=str(v.get("demonym") or ""),
                calling_codes=tuple(c for c in v.get("callingCodes") or () if c),
                borders=tuple(sorted(by_code[b] for b in v.get("borders") or () if b in by_code)),
                tlds=tuple(v.get("tld") or ()),
                population=int(v.get("population") or 0),
                area=int(v.get("area") or 0),
            )
        )
    return sorted(out, key=lambda c: c.name)


def _b64_int(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def read_elements() -> list[Element]:
    """Elements of the dictd database that carry symbol and atomic number, sorted by atomic number."""
    text = gzip.decompress(ELEMENTS_DICT.read_bytes())
    out: dict[int, Element] = {}
    for line in ELEMENTS_INDEX.read_text(encoding="utf-8").splitlines():
        headword, start, length = line.split("\t")
        if headword.startswith("00database"):
            continue
        entry = text[_b64_int(start) : _b64_int(start) + _b64_int(length)].decode("utf-8", "replace")
        fields = dict(re.findall(r"^(Symbol|Atomic number|Atomic weight): *(.+)$", entry, re.M))
        if "Symbol" not in fields or not fields.get("Atomic number", "").strip().isdigit():
            continue
        body = [ln for ln in entry.splitlines()[1:] if not re.match(r"(Symbol|Atomic \w+):", ln)]
        desc = re.sub(r"\s+", " ", re.sub(r"[{}]", "", " ".join(body))).strip()
        number = int(fields["Atomic number"])
        element = Element(
            name=entry.splitlines()[0].strip().capitalize(),
            symbol=fields["Symbol"].strip(),
            number=number,
            weight=fields.get("Atomic weight", "").strip(),
            description=desc,
        )
        out.setdefault(number, element)
    return [out[n] for n in sorted(out)]


def _lemma(word: str) -> str:
    return re.sub(r"\(.*\)$", "", word).replace("_", " ")


def read_instances() -> list[Instance]:
    """WordNet noun synsets with an instance-hypernym pointer, sorted by synset offset."""
    rows: dict[str, tuple[int, tuple[str, ...], list[tuple[str, str]], str]] = {}
    for line in (WORDNET_DIR / "data.noun").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("  "):
            continue
        head, _, gloss = line.partition(" | ")
        f = head.split()
        n_words = int(f[3], 16)
        lemmas = tuple(_lemma(f[4 + 2 * i]) for i in range(n_words))
        p = 4 + 2 * n_words
        pointers = [(f[p + 1 + 4 * i], f[p + 2 + 4 * i]) for i in range(int(f[p]))]
        rows[f[0]] = (int(f[1]), lemmas, pointers, gloss.strip())
    out = []
    for offset, (lexfile, lemmas, pointers, gloss) in rows.items():
        kinds = tuple(rows[t][1][0] for sym, t in pointers if sym == "@i" and t in rows)
        if not kinds:
            continue
        part_of = tuple(rows[t][1][0] for sym, t in pointers if sym == "#p" and t in rows)
        out.append(Instance(offset, lexfile, lemmas, kinds, part_of, gloss))
    return sorted(out, key=lambda i: i.offset)


@dataclass(frozen=True)
class Facts:
    """Everything the documents and questions are generated from."""

    countries: list[Country]
    elements: list[Element]
    instances: list[Instance]


def slug(text: str) -> str:
    """A lower-case ASCII id fragment: ``"Côte d'Ivoire"`` -> ``"cote-d-ivoire"``."""
    return re.sub(r"[^a-z0-9]+", "-", ascii_fold(text).lower()).strip("-")


def ascii_fold(text: str) -> str:
    """Drop diacritics, so that ``Bogota`` matches ``Bogotá`` under SQuAD normalisation."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
