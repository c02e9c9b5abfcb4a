"""`agentrl sandbox build | doctor | reap`: the sandbox image, the engine's health, leftover containers.

Examples::

    agentrl sandbox build            # debootstrap + docker import; a no-op once the image exists
    agentrl sandbox doctor           # engine, runc, gVisor (runsc), image
    agentrl sandbox reap             # remove containers whose controller process died
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from agentrl.tools.sandbox.config import DEFAULT_IMAGE

    parser = subparsers.add_parser(
        "sandbox", help="build the sandbox image, check the engine, reap containers"
    )
    sub = parser.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build the default Python sandbox image without a registry")
    build.add_argument("--image", default=DEFAULT_IMAGE, help=f"image name (default {DEFAULT_IMAGE})")
    build.add_argument("--mirror", default=None, help="Debian mirror URL for debootstrap (default: its own)")
    build.add_argument("--force", action="store_true", help="rebuild the rootfs and the image")
    doctor = sub.add_parser("doctor", help="report the engine, runc, gVisor and the image")
    doctor.add_argument("--image", default=DEFAULT_IMAGE)
    reap = sub.add_parser("reap", help="remove sandbox containers left by dead controllers")
    reap.add_argument("--all", action="store_true", help="remove every agentrl sandbox, live owners too")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return {"build": _build, "doctor": _doctor, "reap": _reap}[args.sandbox_command](args)


def _build(args: argparse.Namespace) -> int:
    from agentrl.tools.sandbox.engine import connect
    from agentrl.tools.sandbox.image import build_image

    built = build_image(connect(), args.image, mirror=args.mirror, force=args.force)
    print(f"image {args.image} {'built' if built else 'already present'}")
    return 0


def _version_of(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        return "not installed"
    done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False, timeout=10)
    first = (done.stdout or done.stderr).strip().splitlines()
    return f"{first[0] if first else 'unknown version'} ({path})"


def _doctor(args: argparse.Namespace) -> int:
    from agentrl.errors import SandboxUnavailableError
    from agentrl.tools.sandbox.engine import connect
    from agentrl.tools.sandbox.image import image_exists

    rows: list[tuple[str, str]] = []
    healthy = True
    try:
        client = connect()
    except SandboxUnavailableError as e:
        rows.append(("engine", f"UNREACHABLE: {e}"))
        client, healthy = None, False
    if client is not None:
        info = client.info()
        version = client.version()
        rows.append(("engine", f"Docker {version.get('Version')} (API {version.get('ApiVersion')})"))
        rows.append(("cgroup", f"v{info.get('CgroupVersion', '?')} ({info.get('CgroupDriver', '?')})"))
        runtimes = sorted(info.get("Runtimes", {}))
        rows.append(("runtimes", ", ".join(runtimes)))
        rows.append(("gVisor", "available: set runtime='runsc'" if "runsc" in runtimes else "not configured"))
        present = image_exists(client, args.image)
        healthy = healthy and present
        rows.append(
            ("image", f"{args.image} {'present' if present else 'MISSING: run `agentrl sandbox build`'}")
        )
    rows.append(("runc", _version_of("runc")))
    rows.append(("runsc", _version_of("runsc")))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0 if healthy else 1


def _reap(args: argparse.Namespace) -> int:
    from agentrl.tools.sandbox.engine import connect
    from agentrl.tools.sandbox.reaper import reap_orphans

    removed = reap_orphans(connect(), everything=args.all)
    print(f"removed {len(removed)} container(s)")
    return 0
