"""The GPU machine's set-up (scripts/gpu_pack.py): Ray's wheel packed with its executables runnable, and
a large file split in equal parts that join back to the same bytes."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pack_module():
    spec = importlib.util.spec_from_file_location("gpu_pack", ROOT / "scripts" / "gpu_pack.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_ray_wheel(path: Path, executable: bool) -> None:
    """A wheel shaped like Ray's: two programs (0o755 when ``executable``), a module, a pruned part."""
    with zipfile.ZipFile(path, "w") as z:
        for name, mode in [
            ("ray/core/src/ray/gcs/gcs_server", 0o755 if executable else 0o644),
            ("ray/core/src/ray/raylet/raylet", 0o755 if executable else 0o644),
            ("ray/__init__.py", 0o644),
            ("ray/rllib/__init__.py", 0o644),
        ]:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100000 | mode) << 16  # a regular file with these permission bits
            z.writestr(info, f"#!/bin/sh\necho {name}\n")


def test_ray_programs_stay_executable_after_pack_and_unpack(tmp_path: Path) -> None:
    pack = _pack_module()
    wheel, tarball = tmp_path / "ray-0-py3-none-any.whl", tmp_path / "ray.tar.xz"
    _fake_ray_wheel(wheel, executable=True)
    assert pack.prune_wheel(wheel, tarball) == 3  # rllib pruned
    assert pack.not_executable(tarball) == []
    site = tmp_path / "site"
    site.mkdir()
    subprocess.run(["tar", "-xJf", str(tarball), "-C", str(site)], check=True)  # as gpu_env.sh unpacks it
    server = site / "ray/core/src/ray/gcs/gcs_server"
    assert os.access(server, os.X_OK)
    assert subprocess.run([str(server)], capture_output=True, text=True, check=True).stdout.strip() == (
        "ray/core/src/ray/gcs/gcs_server"
    )
    assert not (site / "ray/rllib").exists()


def test_check_ray_rejects_a_tarball_that_lost_the_bits(tmp_path: Path) -> None:
    """What Python's ``zipfile`` extraction used to produce: the check must fail, naming the programs."""
    pack = _pack_module()
    wheel, tarball = tmp_path / "ray-0-py3-none-any.whl", tmp_path / "ray.tar.xz"
    _fake_ray_wheel(wheel, executable=False)
    pack.prune_wheel(wheel, tarball)
    assert pack.not_executable(tarball) == list(pack.RAY_PROGRAMS)
    result = subprocess.run(
        ["python3", str(ROOT / "scripts" / "gpu_pack.py"), "check-ray", str(tarball)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "gcs_server" in result.stderr


@pytest.mark.parametrize(
    ("size", "folders", "sizes"),
    [(0, 2, [0, 0]), (1000, 2, [500, 500]), (2501, 2, [1251, 1250]), (2500, 3, [834, 834, 832])],
)
def test_split_joins_back_to_the_same_bytes(
    tmp_path: Path, size: int, folders: int, sizes: list[int]
) -> None:
    pack = _pack_module()
    data = os.urandom(size)
    src = tmp_path / "model.gguf"
    src.write_bytes(data)
    dirs = [tmp_path / f"d{i}" for i in range(folders)]
    parts = pack.split(src, *dirs)
    assert [p.stat().st_size for p in parts] == sizes
    assert [p.parent for p in parts] == dirs and parts[-1].name == f"model.gguf.part{folders - 1:02d}"
    joined = b"".join(p.read_bytes() for p in parts)
    assert joined == data
    b = dirs[-1]
    digest, name = (b / "model.gguf.sha256").read_text().split()
    assert (digest, name) == (hashlib.sha256(data).hexdigest(), "model.gguf")
    # the check the GPU machine runs after joining the parts
    (tmp_path / "join").mkdir()
    (tmp_path / "join" / "model.gguf").write_bytes(joined)
    subprocess.run(["sha256sum", "-c", str(b / "model.gguf.sha256")], cwd=tmp_path / "join", check=True)


def test_packed_tarball_members_are_files_with_modes(tmp_path: Path) -> None:
    pack = _pack_module()
    wheel, tarball = tmp_path / "ray-0-py3-none-any.whl", tmp_path / "ray.tar.xz"
    _fake_ray_wheel(wheel, executable=True)
    pack.prune_wheel(wheel, tarball)
    with tarfile.open(tarball) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert modes == {
        "ray/core/src/ray/gcs/gcs_server": 0o755,
        "ray/core/src/ray/raylet/raylet": 0o755,
        "ray/__init__.py": 0o644,
    }
