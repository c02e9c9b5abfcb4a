"""Configuration of :class:`~agentrl.engines.sglang.engine.SGLangEngine` (launch or connect, budgets)."""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.engines.sglang import protocol as proto
from agentrl.errors import ConfigError


@dataclass(frozen=True)
class SGLangEngineConfig:
    """How to reach (or start) SGLang servers and how hard to try."""

    model_path: str | None = None
    """HF folder to serve on launched servers; ignored when ``server_urls`` is given."""
    server_urls: tuple[str, ...] = ()
    """Running servers (or one ``sglang_router`` URL) to connect to; when set, nothing is launched."""
    num_servers: int = 1
    """How many servers to launch (ignored with ``server_urls``)."""
    python: str | None = None
    """Interpreter of the SGLang venv; default ``AGENTRL_SGLANG_PYTHON`` or the setup_sglang.sh venv."""
    sglang_args: tuple[str, ...] = ()
    """Extra ``sglang.launch_server`` flags, verbatim (e.g. ``("--tp", "2", "--mem-fraction-static", "0.7")``)."""
    gpus_per_server: int = 0
    """GPUs each launched server uses; server ``i`` gets ``--base-gpu-id i*gpus_per_server``. 0 on CPU."""
    original_logprobs: bool = True
    """Launch with ``SGLANG_RETURN_ORIGINAL_LOGPROB=1`` so logprobs are before temperature scaling, as
    the Engine contract says; connected servers must be started with it by the user."""
    host: str = "127.0.0.1"
    """Address launched servers bind to."""
    log_dir: str | None = None
    """Server logs go here; default ``${AGENTRL_CACHE:-~/.cache/agentrl}/logs``."""
    startup_timeout_s: float = 600.0
    """How long a launched server may take to answer ``/health_generate``."""
    request_timeout_s: float = 600.0
    """Upper bound of one ``/generate`` call; a longer call counts as a dead server."""
    control_timeout_s: float = 120.0
    """Upper bound of control calls (weights update, pause, abort, flush)."""
    max_retries: int = 3
    """Re-sends of a request whose server failed, each on a live server, before it returns ``abort``."""
    retry_backoff_s: float = 0.5
    """First retry delay; doubled each retry."""
    max_concurrency_per_server: int = 256
    """In-flight ``/generate`` calls per server; more wait in agentrl (SGLang's queue stays short)."""
    health_interval_s: float = 5.0
    """Seconds between health probes of every server."""
    health_timeout_s: float = 30.0
    """A ``/health_generate`` slower than this fails (SGLang itself gives up after 20 s)."""
    health_failures: int = 2
    """Consecutive failed probes before a running process is declared dead (an exited one is at once)."""
    restart_budget: int = 2
    """Restarts of launched servers over the engine's life; one more death then raises EngineError."""
    exit_grace_s: float = 2.0
    """A launched server whose connection broke (during a request or a weight load) is given this long to
    show that its process exited, so that it is restarted at once (with the newest weights) and the
    requests wait for it, rather than aborting them or failing the load."""
    server_wait_s: float = 120.0
    """How long a request waits for some server to be alive (e.g. during a restart) before ``abort``."""
    pause_mode: proto.PauseMode = "abort"
    """``/pause_generation`` mode: "abort" returns in-flight requests with ``finish_reason="abort"``;
    "in_place" and "retract" keep them and finish them after ``resume()``."""
    max_sessions: int = 65536
    """Session-to-server assignments remembered (least recently used are forgotten)."""

    def __post_init__(self) -> None:
        if self.model_path is None and not self.server_urls:
            raise ConfigError(
                "SGLangEngineConfig needs model_path (to launch servers) or server_urls (to connect to "
                "running servers or a router)"
            )
        if self.num_servers < 1 or self.max_concurrency_per_server < 1:
            raise ConfigError("num_servers and max_concurrency_per_server must be at least 1")
