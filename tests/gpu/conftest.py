"""GPU tier: skipped unless CUDA and megatron-core are present (scripts/gpu_tests.sh runs it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

HAVE_MEGATRON = (
    importlib.util.find_spec("megatron") is not None and importlib.util.find_spec("megatron.core") is not None
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None if torch.cuda.is_available() else "needs CUDA"
    if reason is None and not HAVE_MEGATRON:
        reason = "needs megatron-core (scripts/gpu_tests.sh installs the carried wheels)"
    if reason:
        for item in items:
            if "gpu" in Path(str(item.fspath)).parts:
                item.add_marker(pytest.mark.skip(reason=reason))
