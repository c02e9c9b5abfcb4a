"""The ``python`` tool: run model-written code in a :class:`~agentrl.tools.sandbox.base.Sandbox`.

The sandbox is obtained through a callable so that an env can create it lazily (the first call of an
episode pays the start-up, episodes that never call the tool pay nothing). The observation reports
stdout, stderr and the exit code, and says explicitly when output was cut or time ran out, so that the
model learns what happened instead of reading a silently shortened result.
"""

from __future__ import annotations

from collections.abc import Callable

from agentrl.tools.sandbox.base import ExecResult, Sandbox
from agentrl.tools.schema import Tool

PYTHON_TOOL_DESCRIPTION = (
    "Run a Python 3 program and return what it printed. State is not kept between calls; "
    "print() every value you want to see."
)


def truncate(text: str, max_chars: int) -> tuple[str, bool]:
    """Keep the head and the tail of ``text`` within ``max_chars`` (errors are usually at the end)."""
    if len(text) <= max_chars:
        return text, False
    head = max_chars * 2 // 3
    tail = max_chars - head
    return f"{text[:head]}\n...\n{text[-tail:] if tail else ''}", True


def format_exec_result(result: ExecResult, max_chars: int = 4000) -> str:
    """Render an :class:`ExecResult` as the observation text the model reads."""
    if result.timed_out:
        status = "timed out (the program was killed)"
    elif result.oom_killed:
        status = "killed: memory limit exceeded"
    else:
        status = f"exit code {result.exit_code}"
    parts = [f"[{status}]"]
    for label, text, cut_by_sandbox in (
        ("stdout", result.stdout, result.stdout_truncated),
        ("stderr", result.stderr, result.stderr_truncated),
    ):
        if not text and not cut_by_sandbox:
            continue
        shown, cut_here = truncate(text, max_chars)
        parts.append(f"{label}:\n{shown.strip(chr(10)).rstrip()}")
        if cut_by_sandbox or cut_here:
            total = f"{len(text)}+" if cut_by_sandbox else str(len(text))
            parts.append(f"[{label} truncated: showing {min(len(text), max_chars)} of {total} characters]")
    if len(parts) == 1:
        parts.append("(no output)")
    return "\n".join(parts)


def make_python_tool(
    get_sandbox: Callable[[], Sandbox], *, timeout: float = 10.0, max_output_chars: int = 4000
) -> Tool:
    """Build the ``python`` tool over the sandbox that ``get_sandbox()`` returns.

    Args:
        get_sandbox: Returns the episode's sandbox (created on first use).
        timeout: Seconds one program may run; fixed by the host, never by the model.
        max_output_chars: Characters of stdout and of stderr kept in the observation.
    """

    def python(code: str) -> str:
        result = get_sandbox().run_python(code, timeout=timeout)
        return format_exec_result(result, max_output_chars)

    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "The Python 3 source code to run."}},
        "required": ["code"],
    }
    return Tool(name="python", description=PYTHON_TOOL_DESCRIPTION, parameters=parameters, fn=python)
