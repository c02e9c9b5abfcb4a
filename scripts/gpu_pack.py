"""Pack what a GPU machine without a package index needs, and check it unpacks runnable.

    python3 scripts/gpu_pack.py ray WHEEL OUT.tar.xz     # Ray's wheel, pruned, executables kept
    python3 scripts/gpu_pack.py split FILE DIR...        # a large file in equal parts, one a folder (+ sha256)
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


def split(path: Path, *dirs: Path) -> list[Path]:
    """``path`` in ``len(dirs)`` parts of equal size (the last may be shorter), ``NAME.partKK`` in
    ``dirs[KK]``, with ``NAME.sha256`` (``sha256sum -c`` format) beside the last part. Equal parts
    leave each device call the most room for the repo that travels with it (a call carries 64 MiB in
    all: the 98 MB model in two parts beside 3 MiB of repo already left under 1 MiB)."""
    if not dirs:
        raise ValueError("split needs at least one folder")
    size = path.stat().st_size
    part_bytes = max(-(-size // len(dirs)), 1)
    digest = hashlib.sha256()
    parts = []
    with path.open("rb") as src:
        for i, folder in enumerate(dirs):
            folder.mkdir(parents=True, exist_ok=True)
            part = folder / f"{path.name}.part{i:02d}"
            left = part_bytes
            with part.open("wb") as dst:
                while left > 0 and (chunk := src.read(min(left, 2**22))):
                    digest.update(chunk)
                    dst.write(chunk)
                    left -= len(chunk)
            parts.append(part)
    (dirs[-1] / f"{path.name}.sha256").write_text(f"{digest.hexdigest()}  {path.name}\n")
    return parts


def main(argv: list[str]) -> int:
    usage = "usage: gpu_pack.py ray WHEEL OUT.tar.xz | split FILE DIR... | check-ray OUT.tar.xz"
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
    if verb == "split" and len(args) >= 2:
        for part in split(*args):
            print(f"{part} {part.stat().st_size} bytes")
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
