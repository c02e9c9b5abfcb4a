"""Env suites: the packaged YAML files load, and every kind of bad file is reported with path and field."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import agentrl
from agentrl.envs.suites import PACKAGED_DIR, EnvSuite, SuiteEntry, list_suites, load_suite
from agentrl.errors import SuiteError

REPO = Path(__file__).resolve().parents[2]
GOOD = {
    "name": "mini",
    "version": 2,
    "description": "two entries",
    "entries": [
        {"env": "python-tool", "kwargs": {"max_turns": 3}, "split": "test", "episodes": 10, "seed": 7},
        {"env": "agentrl/PythonTool-v0", "episodes": 5},
    ],
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_good_file_loads_into_frozen_dataclasses(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, GOOD))
    assert suite == EnvSuite(
        "mini",
        2,
        "two entries",
        (
            SuiteEntry("agentrl/PythonTool-v0", {"max_turns": 3}, "test", 10, 7),
            SuiteEntry("agentrl/PythonTool-v0", {}, "train", 5, None),
        ),
        tmp_path / "suite.yaml",
    )
    assert suite.episodes == 15
    env = suite.entries[0].make(sandbox="local", tasks_per_generator=1)
    assert (env.unwrapped.split, env.unwrapped.max_turns) == ("test", 3)


def test_packaged_suites_load_and_heldout_families_are_unseen() -> None:
    assert {"python-train", "python-heldout"} <= set(list_suites())
    train, heldout = agentrl.load_suite("python-train"), agentrl.load_suite("python-heldout")
    assert (train.entries[0].split, heldout.entries[0].split) == ("train", "test")
    train_env = train.entries[0].make(sandbox="local", tasks_per_generator=1)
    test_env = heldout.entries[0].make(sandbox="local", tasks_per_generator=1)
    train_families = {t.meta["generator"] for t in train_env.unwrapped.tasks}
    test_families = {t.meta["generator"] for t in test_env.unwrapped.tasks}
    assert train_families and test_families and not train_families & test_families


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("name"), "name must be a non-empty string, got None"),
        (lambda d: d.update(version=0), "version must be a positive integer, got 0"),
        (lambda d: d.update(version="1"), "version must be a positive integer, got '1'"),
        (lambda d: d.update(extra=1), "key 'extra' is not a suite field"),
        (lambda d: d.update(entries=[]), "entries must be a non-empty list"),
        (lambda d: d["entries"][1].update(episodes=0), r"entries\[1\]\.episodes must be a positive integer, got 0"),
        (lambda d: d["entries"][0].update(env="pyton-tool"), r"entries\[0\]\.env names no registered env: .*Did you mean 'agentrl/PythonTool-v0'"),
        (lambda d: d["entries"][0].update(kwargs=[1]), r"entries\[0\]\.kwargs must be a mapping"),
        (lambda d: d["entries"][0]["kwargs"].update(split="x"), r"entries\[0\]\.kwargs\.split is not allowed"),
        (lambda d: d["entries"][0].update(seed=1.5), r"entries\[0\]\.seed must be an integer or absent"),
        (lambda d: d["entries"][1].update(episodes=True), r"entries\[1\]\.episodes must be a positive integer, got True"),
        (lambda d: d["entries"][1].update(typo=1), r"entries\[1\]\.typo is not an entry field"),
        (lambda d: d["entries"].append("python-tool"), r"entries\[2\] must be a mapping"),
    ],
)  # fmt: skip
def test_bad_files_name_path_and_field(tmp_path: Path, mutate: Callable[[Any], object], message: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))  # deep copy
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(SuiteError, match=f"^{path}: {message}"):
        load_suite(path)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed", encoding="utf-8")
    with pytest.raises(SuiteError, match=f"^{bad}: cannot read YAML"):
        load_suite(bad)
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "absent.yaml")
    with pytest.raises(SuiteError, match=r"no suite named 'nope'; known suites: .*python-heldout"):
        load_suite("nope")


def test_suites_path_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(GOOD), encoding="utf-8")
    monkeypatch.setenv("AGENTRL_SUITES_PATH", str(tmp_path))
    assert "mine" in list_suites()
    assert load_suite("mine").name == "mini"


def test_packaged_dir_is_the_repo_folder_and_ships_in_the_wheel(tmp_path: Path) -> None:
    assert PACKAGED_DIR.resolve() == (REPO / "envs_registry").resolve()
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "tests", "*.egg-info", "__pycache__", "build"), symlinks=True)  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(src)],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("agentrl_gym-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agentrl/envs_registry/python-heldout.yaml" in names
    assert "agentrl/envs_registry/python-train.yaml" in names
