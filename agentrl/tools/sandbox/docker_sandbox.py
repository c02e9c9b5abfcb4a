"""`DockerSandbox`: one hardened container per episode (docs/reliability.md A1-A9, B10-B14).

The container's own processes (``--init`` and a ``sleep TTL`` dead-man's switch) run as an unprivileged
keeper uid; model code runs as the ``sandbox`` uid through ``docker exec``. Because the two differ, a
``kill -9 -1`` by the sandbox uid stops every process of a call (after a timeout, an output flood or a
fork bomb) without stopping the container, and code cannot kill the timer that ends an orphaned
container. Every other limit is a container-level setting the code cannot raise: no network, cgroup
memory with no swap, CPU quota, pids limit, read-only root with size-capped tmpfs, no capabilities,
no-new-privileges, default seccomp, no host environment and no Docker socket.
"""

from __future__ import annotations

import logging
import shlex
import time
from typing import Any

import docker.errors

from agentrl.errors import SandboxError
from agentrl.tools.sandbox.base import ExecResult, Sandbox
from agentrl.tools.sandbox.config import KEEPER_UID, SANDBOX_UID, SandboxConfig, parse_size
from agentrl.tools.sandbox.docker_exec import RawExec, run_exec
from agentrl.tools.sandbox.engine import connect
from agentrl.tools.sandbox.output import limit_note, to_text
from agentrl.tools.sandbox.reaper import owner_labels

log = logging.getLogger(__name__)

USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
# Kill every process of the sandbox uid but this shell, until none is left (zombies take a moment to be
# reaped by --init). SIGSTOP first: stopped processes cannot fork. Builtins only (`kill`, `[ -O /proc/N ]`
# is true when process N runs as our uid): under a fork bomb this shell cannot fork, and dash exits on
# a failed fork.
_KILL_ALL = (
    "i=0; while [ $i -lt 2000 ]; do kill -STOP -1; kill -STOP -1; kill -9 -1; left=0; "
    'for p in /proc/[0-9]*; do [ "${p#/proc/}" = "$$" ] && continue; [ -O "$p" ] && left=1; done; '
    '[ "$left" = 0 ] && exit 0; i=$((i+1)); done; exit 1'
)
# Model code runs at the lowest priority: inside the container's CPU quota, agentrl's cleanup call (at
# normal priority) then gets the CPU at once even while a fork bomb or spinning processes fill it.
_NICE = ["nice", "-n", "19"]
_OOM_COUNT = "cat /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null; cat /sys/fs/cgroup/memory.events 2>/dev/null; exit 0"


class SandboxDiedError(SandboxError):
    """The sandbox's container stopped or vanished mid-episode; the episode should end FAILED."""


def host_config(client: Any, config: SandboxConfig) -> Any:
    """The hardened host configuration; every field here is a promise in docs/reliability.md A."""
    home_opts = (
        f"rw,nosuid,nodev,size={parse_size(config.tmpfs_size)},uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700"
    )
    return client.create_host_config(
        network_mode="none",
        mem_limit=config.memory_bytes,
        memswap_limit=config.memory_bytes,
        nano_cpus=int(config.cpus * 1e9),
        pids_limit=config.pids_limit,
        read_only=True,
        tmpfs={
            "/tmp": f"rw,nosuid,nodev,size={parse_size(config.tmpfs_size)},mode=1777",
            config.workdir: home_opts,
        },
        shm_size=parse_size(config.shm_size),
        ipc_mode="private",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        init=True,
        auto_remove=True,
        runtime=config.runtime,
    )


class DockerSandbox(Sandbox):
    """A fresh container for one episode; `close` removes it. Use `make_sandbox` or a `SandboxPool`."""

    def __init__(self, config: SandboxConfig | None = None, *, client: Any = None) -> None:
        self.config = config or SandboxConfig()
        self._client = client or connect(self.config.api_timeout_s)
        self._oom_seen = 0
        self._closed = False
        self.id = self._start()

    def _start(self) -> str:
        cfg = self.config
        labels = {"agentrl.sandbox": "1", "agentrl.run": cfg.run_id, "agentrl.ttl": str(cfg.ttl_s)}
        labels.update(owner_labels())
        try:
            created = self._client.create_container(
                cfg.image,
                command=["sleep", f"{cfg.ttl_s:g}"],
                user=f"{KEEPER_UID}:{KEEPER_UID}",
                hostname="sandbox",
                working_dir=cfg.workdir,
                labels=labels,
                network_disabled=True,
                host_config=host_config(self._client, cfg),
            )
            self._client.start(created["Id"])
        except docker.errors.ImageNotFound as e:
            raise SandboxError(
                f"sandbox image {cfg.image!r} is missing; build it with `agentrl sandbox build`"
            ) from e
        except docker.errors.APIError as e:
            hint = " (is gVisor installed? see `agentrl sandbox doctor`)" if cfg.runtime == "runsc" else ""
            raise SandboxError(f"could not start a sandbox container from {cfg.image!r}{hint}: {e}") from e
        return str(created["Id"])

    def exec(
        self, cmd: str | list[str], *, timeout: float | None = None, stdin: str | None = None
    ) -> ExecResult:
        """Run ``cmd``; a shell string runs under ``/bin/sh -c``. Raises `SandboxDiedError` if the container died."""
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        limit = self.config.effective_timeout(timeout)
        data = stdin.encode("utf-8", "surrogateescape") if stdin is not None else None
        start = time.monotonic()
        raw = self._run(argv, data, limit)
        return self._result(raw, limit, time.monotonic() - start)

    def _run(self, argv: list[str], stdin: bytes | None, timeout: float, output_limit: int = 0) -> RawExec:
        if self._closed:
            raise SandboxError("this sandbox was closed; make a new one with make_sandbox()")
        try:
            raw = run_exec(
                self._client,
                self.id,
                [*_NICE, *argv],
                user=USER,
                workdir=self.config.workdir,
                stdin=stdin,
                timeout=timeout,
                output_limit=output_limit or self.config.output_limit_bytes,
            )
        except (docker.errors.APIError, OSError) as e:
            raise self._died(str(e)) from e
        if raw.timed_out or raw.overflowed:
            self._stop_call_processes()
        elif raw.exit_code == 137:
            raw.oom_killed = self._new_oom_kill()
        elif raw.exit_code is None:
            self._check_alive()
        return raw

    def _result(self, raw: RawExec, limit: float, duration: float) -> ExecResult:
        stderr = to_text(raw.stderr.getvalue(), truncated=raw.stderr.overflowed)
        oom = raw.oom_killed
        if raw.timed_out:
            stderr += limit_note("time limit exceeded", f"the call ran past {limit:g} s and was stopped")
        if raw.overflowed:
            stderr += limit_note(
                "output truncated", f"more than {self.config.output_limit_bytes} bytes; the call was stopped"
            )
        if oom:
            stderr += limit_note("memory limit exceeded", f"the sandbox allows {self.config.memory}; killed")
        return ExecResult(
            stdout=to_text(raw.stdout.getvalue(), truncated=raw.stdout.overflowed),
            stderr=stderr,
            exit_code=None if raw.timed_out or raw.overflowed else raw.exit_code,
            stdout_truncated=raw.stdout.overflowed,
            stderr_truncated=raw.stderr.overflowed,
            timed_out=raw.timed_out,
            oom_killed=oom,
            duration_s=duration,
        )

    def _internal(self, argv: list[str], timeout: float = 10.0) -> RawExec:
        """An exec of agentrl's own (cleanup, checks): no stdin, its own small output cap."""
        return run_exec(
            self._client,
            self.id,
            argv,
            user=USER,
            workdir="/",
            stdin=None,
            timeout=timeout,
            output_limit=65536,
        )

    def _stop_call_processes(self) -> None:
        """Kill every process of the sandbox uid; if even that cannot run, the container is unusable."""
        for _ in range(5):
            try:
                if self._internal(["/bin/sh", "-c", _KILL_ALL]).exit_code == 0:
                    return
            except (docker.errors.APIError, OSError):
                self._check_alive()
            time.sleep(0.1)  # a fork bomb may hold every pid slot; a slot frees up as its processes die
        self.close()
        raise SandboxDiedError(
            "the sandbox's processes could not be stopped (a fork bomb holding every pid slot?); it was removed"
        )

    def _new_oom_kill(self) -> bool:
        """After exit 137 (SIGKILL): was it the OOM killer, the code itself, or the container dying?

        A probe reads the cgroup's OOM-kill counter (v1 or v2). If the probe cannot run, the container
        may be going down (killed from outside): its state is watched until it settles.
        """
        try:
            probe = self._internal(["/bin/sh", "-c", _OOM_COUNT])
        except (docker.errors.APIError, OSError) as e:
            raise self._died(str(e)) from e
        if probe.exit_code != 0:
            self._check_alive(settle_s=1.0)
            return False
        text = probe.stdout.getvalue().decode(errors="replace")
        counts = [int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill ")]
        count = max(counts, default=0)
        grew, self._oom_seen = count > self._oom_seen, count
        return grew

    def _check_alive(self, settle_s: float = 0.0) -> None:
        """Raise `SandboxDiedError` unless the container runs (watched for ``settle_s`` seconds)."""
        deadline = time.monotonic() + settle_s
        while True:
            try:
                state = self._client.inspect_container(self.id)["State"]
            except (docker.errors.APIError, OSError) as e:
                raise self._died(str(e)) from e
            if not state.get("Running"):
                raise self._died(f"status {state.get('Status')}, exit code {state.get('ExitCode')}")
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)

    def _died(self, why: str) -> SandboxDiedError:
        self.close()
        return SandboxDiedError(
            f"sandbox container {self.id[:12]} is gone ({why}); end this episode as FAILED and start a new "
            f"sandbox (its TTL is {self.config.ttl_s:g} s; `agentrl sandbox doctor` checks the engine)"
        )

    def read_file(self, path: str) -> bytes:
        """Read ``path`` (relative to the workdir); FileNotFoundError/IsADirectoryError/PermissionError as usual."""
        script = 'test -e "$1" || exit 3; test -d "$1" && exit 4; test -r "$1" || exit 5; exec cat -- "$1"'
        raw = self._run(
            ["/bin/sh", "-c", script, "sh", path],
            None,
            self.config.exec_timeout_s,
            self.config.file_limit_bytes,
        )
        errors = {3: FileNotFoundError, 4: IsADirectoryError, 5: PermissionError}
        if raw.exit_code in errors:
            raise errors[raw.exit_code](f"{path}: cannot read it in the sandbox")
        if raw.stdout.total > self.config.file_limit_bytes:
            raise OSError(f"{path} is larger than file_limit_bytes={self.config.file_limit_bytes}")
        if raw.exit_code != 0:
            raise OSError(f"reading {path} in the sandbox failed: {to_text(raw.stderr.getvalue())}")
        return raw.stdout.getvalue()

    def write_file(self, path: str, data: bytes | str) -> None:
        """Write ``path`` (relative to the workdir); a full tmpfs raises OSError (ENOSPC) like a local disk."""
        payload = data.encode("utf-8") if isinstance(data, str) else data
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
        raw = self._run(["/bin/sh", "-c", script, "sh", path], payload, self.config.exec_timeout_s)
        if raw.exit_code != 0:
            raise OSError(
                f"writing {shlex.quote(path)} in the sandbox failed: {to_text(raw.stderr.getvalue())}"
            )

    def close(self) -> None:
        """Stop, kill, then remove the container; each step is bounded and errors are only logged."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.stop(self.id, timeout=max(0, int(self.config.stop_timeout_s)))
        except docker.errors.NotFound:
            return  # already auto-removed
        except Exception as e:  # teardown must never raise into training (docs/reliability.md B12)
            log.debug("sandbox %s did not stop (%s); killing it", self.id[:12], e)
            self._quietly(lambda: self._client.kill(self.id))
        self._quietly(lambda: self._client.remove_container(self.id, force=True))

    def _quietly(self, step: Any) -> None:
        try:
            step()
        except Exception as e:  # NotFound / "removal in progress" are expected; nothing may escape
            log.debug("sandbox %s close step: %s", self.id[:12], e)
