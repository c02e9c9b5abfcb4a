"""Shared test configuration: tiers by directory (unit / integration / gpu) and common fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "integration", "gpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
