"""Build the default sandbox image without any image registry: debootstrap a rootfs, `docker import` it.

Why not a Dockerfile: CI machines and many clusters reach the Debian package mirror but no image
registry. A minbase Debian with python3 (about 35 s, 260 MB) plus a non-root user is all the python tool
needs. The rootfs tarball is cached under ``${AGENTRL_CACHE:-~/.cache/agentrl}/sandbox`` and the whole
build is skipped when the image already exists.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from agentrl.errors import SandboxError
from agentrl.tools.sandbox.config import SANDBOX_UID

log = logging.getLogger(__name__)

SUITE = "bookworm"
IMAGE_VERSION = "1"
"""Bump when the rootfs recipe changes, so cached tarballs of an older recipe are not reused."""
IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV HOME=/home/sandbox",
    "WORKDIR /home/sandbox",
    f"USER {SANDBOX_UID}",
    f'LABEL agentrl.image.version="{IMAGE_VERSION}"',
    'CMD ["/bin/sh"]',
)
# Documentation, caches and package lists are dead weight in a sandbox (about a third of the rootfs).
_PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
)


def cache_dir() -> Path:
    """Where the rootfs tarball and engine logs live."""
    root = Path(os.environ.get("AGENTRL_CACHE") or Path.home() / ".cache" / "agentrl")
    return root / "sandbox"


def rootfs_tarball() -> Path:
    return cache_dir() / f"rootfs-{SUITE}-python3-v{IMAGE_VERSION}.tar"


def add_sandbox_user(rootfs: Path) -> None:
    """Add user and group ``sandbox`` (uid/gid 1000, home /home/sandbox) by editing the files directly.

    Editing /etc/passwd, /etc/group and /etc/shadow avoids running ``chroot useradd``; the account
    has no password (``!``), so nothing can log into it.
    """
    etc = rootfs / "etc"
    lines = {
        "passwd": f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:agentrl sandbox:/home/sandbox:/bin/sh\n",
        "group": f"sandbox:x:{SANDBOX_UID}:\n",
        "shadow": "sandbox:!:19000:0:99999:7:::\n",
    }
    for name, line in lines.items():
        path = etc / name
        text = path.read_text() if path.exists() else ""
        if not any(row.split(":", 1)[0] == "sandbox" for row in text.splitlines()):
            path.write_text(text + ("" if text.endswith("\n") or not text else "\n") + line)
    home = rootfs / "home" / "sandbox"
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, SANDBOX_UID, SANDBOX_UID)
    home.chmod(0o700)


def _debootstrap(rootfs: Path, mirror: str | None) -> None:
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed; run `apt-get install -y debootstrap` (as root)")
    if os.geteuid() != 0:
        raise SandboxError(
            "building the sandbox rootfs needs root (debootstrap); run `sudo agentrl sandbox build`"
        )
    cmd = ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(rootfs)]
    if mirror:
        cmd.append(mirror)
    log.info("debootstrap %s into %s (about 35 s)", SUITE, rootfs)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise SandboxError(
            f"debootstrap failed (exit {done.returncode}); check that a Debian mirror is reachable "
            f"(or pass --mirror URL):\n{tail}"
        )


def build_rootfs_tarball(mirror: str | None = None, *, force: bool = False) -> Path:
    """Make (or reuse) the cached rootfs tarball; returns its path."""
    target = rootfs_tarball()
    if target.exists() and not force:
        log.info("reusing cached rootfs %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _debootstrap(rootfs, mirror)
        for rel in _PRUNE:
            shutil.rmtree(rootfs / rel, ignore_errors=True)
        add_sandbox_user(rootfs)
        partial = target.with_suffix(".tar.partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(rootfs, arcname=".")
        partial.replace(target)  # atomic: a killed build never leaves a half tarball behind
    return target


def image_exists(client: object, image: str) -> bool:
    """Whether the engine already has ``image`` (a docker.APIClient)."""
    import docker.errors

    try:
        client.inspect_image(image)  # type: ignore[attr-defined]
    except docker.errors.ImageNotFound:
        return False
    return True


def build_image(client: object, image: str, *, mirror: str | None = None, force: bool = False) -> bool:
    """Build ``image`` from the debootstrap rootfs; returns False when it existed and nothing was done."""
    if image_exists(client, image) and not force:
        log.info("image %s exists; nothing to do (use --force to rebuild)", image)
        return False
    tarball = build_rootfs_tarball(mirror, force=force)
    repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    log.info("importing %s as %s", tarball, image)
    client.import_image_from_file(  # type: ignore[attr-defined]
        str(tarball), repository=repository, tag=tag, changes=list(IMPORT_CHANGES)
    )
    if not image_exists(client, image):
        raise SandboxError(f"docker import of {tarball} did not produce image {image}; see the engine log")
    return True
