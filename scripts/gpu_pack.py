"""Pack what a GPU machine without a package index needs, and check it unpacks runnable.

    python3 scripts/gpu_pack.py ray WHEEL OUT.tar.xz     # Ray's wheel, pruned, executables kept
    python3 scripts/gpu_pack.py split FILE DIR_A DIR_B   # a large file in two parts (+ its sha256)
    python3 scripts/gpu_pack.py check-ray OUT.tar.xz     # every program Ray starts is executable

Ray's 79 MB wheel becomes a 20 MB tarball without Java, RLlib, Serve, Data, Tune, Train, LLM and the
dashboard's web client. A wheel is a zip, and Python's zipfile drops the permission bits when it extracts,
so Ray's ``gcs_server`` and ``raylet`` came out unrunnable (``PermissionError`` at ``ray.init`` on the GPU
machine): the bits are put back from each member's ``external_attr``, and ``check-ray`` verifies them in
the packed tarball. Used by ``scripts/gpu_tests.sh pack`` and ``scripts/gpu_search_r1.sh pack``; tested by
``tests/unit/test_gpu_pack.py``.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

PRUNED = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/serve/", "ray/data/", "ray/tune/",
          "ray/train/", "ray/llm/")  # fmt: skip
"""Parts of Ray a training run never imports."""

RAY_PROGRAMS = ("ray/core/src/ray/gcs/gcs_server", "ray/core/src/ray/raylet/raylet")
"""What ``ray.init`` starts as processes: must be executable after unpacking."""

PART_BYTES = 33 * 2**20
"""First part's size: beside the wheels and Ray (24 MiB), the repo and a snapshot of it, under a device
call's 64 MiB; the second part (61 MiB) travels with the repo alone."""


def prune_wheel(wheel: Path, out: Path, pruned: tuple[str, ...] = PRUNED) -> int:
    """Write ``wheel``'s members except ``pruned`` prefixes into the xz tarball ``out``, with each member's
    permission bits from the zip (executables stay executable). Returns the number of members kept."""
    kept = 0
    with zipfile.ZipFile(wheel) as z, tarfile.open(out, "w:xz") as tar:
        for info in z.infolist():
            if info.is_dir() or info.filename.startswith(pruned):
                continue
            data = z.read(info)
            member = tarfile.TarInfo(info.filename)
            member.size = len(data)
            mode = (info.external_attr >> 16) & 0o777
            member.mode = mode if mode else 0o644  # zips written on Windows carry no Unix bits
            tar.addfile(member, io.BytesIO(data))
            kept += 1
    return kept


def not_executable(tarball: Path, programs: tuple[str, ...] = RAY_PROGRAMS) -> list[str]:
    """The ``programs`` missing from ``tarball`` or not executable by their owner there."""
    with tarfile.open(tarball) as tar:
        modes = {m.name.removeprefix("./"): m.mode for m in tar.getmembers()}
    return [p for p in programs if not (modes.get(p, 0) & 0o100)]


def split(path: Path, first: Path, second: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """``path`` as ``NAME.part00`` in ``first`` and the rest as ``NAME.part01`` in ``second``, with
    ``NAME.sha256`` (``sha256sum -c`` format) beside the last part."""
    first.mkdir(parents=True, exist_ok=True)
    second.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    parts = [first / f"{path.name}.part00", second / f"{path.name}.part01"]
    with path.open("rb") as src:
        for i, part in enumerate(parts):
            with part.open("wb") as dst:
                left = part_bytes if i == 0 else None
                while left is None or left > 0:
                    chunk = src.read(min(left or 2**22, 2**22))
                    if not chunk:
                        break
                    digest.update(chunk)
                    dst.write(chunk)
                    if left is not None:
                        left -= len(chunk)
    (second / f"{path.name}.sha256").write_text(f"{digest.hexdigest()}  {path.name}\n")
    return parts


def main(argv: list[str]) -> int:
    usage = "usage: gpu_pack.py ray WHEEL OUT.tar.xz | split FILE DIR_A DIR_B | check-ray OUT.tar.xz"
    if len(argv) < 2:
        print(usage, file=sys.stderr)
        return 2
    verb, args = argv[0], [Path(a) for a in argv[1:]]
    if verb == "ray" and len(args) == 2:
        print(f"{args[1]}: {prune_wheel(args[0], args[1])} files")
        verb, args = "check-ray", [args[1]]
    if verb == "check-ray" and len(args) == 1:
        bad = not_executable(args[0])
        if bad:
            print(f"{args[0]}: not executable or missing: {', '.join(bad)}", file=sys.stderr)
            return 1
        print(f"{args[0]}: {', '.join(RAY_PROGRAMS)} executable")
        return 0
    if verb == "split" and len(args) == 3:
        for part in split(*args):
            print(f"{part} {part.stat().st_size} bytes")
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
