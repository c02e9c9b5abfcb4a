"""Shared test configuration: tiers by directory (unit / integration / gpu) and common fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

TIERS = ("unit", "integration", "gpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture
def recompile_limit_hits() -> Iterator[list[str]]:
    """Messages torch._dynamo logs when a function reaches its recompile limit (past which it runs
    eagerly, silently), collected while the test runs."""
    hits: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "recompile_limit" in message or "cache_size_limit" in message:
                hits.append(message)

    handler = Catch()
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    try:
        yield hits
    finally:
        logger.removeHandler(handler)
