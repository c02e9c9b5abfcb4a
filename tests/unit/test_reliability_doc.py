"""docs/reliability.md lists A1-G25 once each, every test it cites exists, and code cites only that file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
LABELS = [
    f"{group}{n}"
    for group, numbers in zip(
        "ABCDEFG", ([1, 10], [10, 16], [16, 20], [20, 22], [22, 24], [24, 25], [25, 26]), strict=True
    )
    for n in range(*numbers)
]


def rows() -> list[tuple[str, str | None, str]]:
    """(label, the section's test file or None, the row's test cell) for each table row."""
    out = []
    section_file = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section_file = None
        elif m := re.match(r"Tests: `(tests/[^`]+\.py)`", line):
            section_file = m.group(1)
        elif m := re.match(r"\| ([A-G]\d+) \|.*\| (.+) \|$", line):
            out.append((m.group(1), section_file, m.group(2)))
    return out


def test_every_property_is_listed_once_in_order() -> None:
    assert [label for label, _, _ in rows()] == LABELS


def test_every_cited_test_exists() -> None:
    cited = 0
    for label, section_file, cell in rows():
        current = section_file
        for ref in re.findall(r"`([^`]+)`", cell):
            path, _, name = ref.rpartition("::") if "::" in ref else (ref, "", "")
            if path.endswith(".py"):
                current = path
                assert (ROOT / path).is_file(), f"{label}: {path} does not exist"
            elif ref.startswith("test_"):
                name = ref
            if name:
                assert current is not None, f"{label}: {ref} names no file"
                source = (ROOT / current).read_text()
                assert re.search(rf"^(async )?def {re.escape(name)}\(", source, re.M), (
                    f"{label}: no {name} in {current}"
                )
                cited += 1
    assert cited >= len(LABELS)


def test_code_cites_docs_reliability_only() -> None:
    stale = [
        f"{p.relative_to(ROOT)}:{i}"
        for folder in ("agentrl", "docs", "tests")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".md") and p != Path(__file__)
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "RELIABILITY" in line
    ]
    assert stale == []
