"""Request bodies and response parsing for SGLang's native HTTP API (checked against sglang 0.5.23).

Pure functions, no I/O, so that the exact field names live in one place and are unit-tested. Field
names follow ``sglang/srt/managers/io_struct.py`` (``GenerateReqInput``, ``UpdateWeightFromDiskReqInput``,
``UpdateWeightsFromTensorReqInput``, ``InitWeightsUpdateGroupReqInput``,
``UpdateWeightsFromDistributedReqInput``, ``PauseGenerationReqInput``, ``AbortReq``) and
``sglang/srt/sampling/sampling_params.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.errors import EngineError

PauseMode = Literal["abort", "retract", "in_place"]
"""``/pause_generation`` modes: abort in-flight requests, retract them to the queue, or freeze them."""


def sampling_params_payload(sampling: SamplingParams) -> dict[str, Any]:
    """SGLang ``sampling_params`` for one turn.

    ``no_stop_trim`` keeps a matched stop string in the output, so the ids the trainer sees are the ids
    the model sampled; ``skip_special_tokens`` is off because the text is only for logs.
    """
    params: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "no_stop_trim": True,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
    }
    if sampling.stop:
        params["stop"] = list(sampling.stop)
    if sampling.stop_token_ids:
        params["stop_token_ids"] = list(sampling.stop_token_ids)
    if sampling.seed is not None:
        params["sampling_seed"] = sampling.seed
    if sampling.ignore_eos:
        params["ignore_eos"] = True
    return params


def generate_payload(input_ids: Sequence[int], sampling: SamplingParams, rid: str) -> dict[str, Any]:
    """Body of ``POST /generate``: token ids in, logprobs of the sampled tokens only.

    ``logprob_start_len=-1`` asks for no prompt logprobs (they would cost a full prefill's worth of
    vocabulary softmaxes); ``rid`` lets ``/abort_request`` target this request.
    """
    return {
        "rid": rid,
        "input_ids": list(input_ids),
        "sampling_params": sampling_params_payload(sampling),
        "return_logprob": True,
        "logprob_start_len": -1,
        "stream": False,
    }


def _finish_reason(meta: dict[str, Any]) -> str:
    """Map SGLang's ``{"type": "stop" | "length" | "abort", ...}`` onto the engine contract."""
    raw = meta.get("finish_reason")
    kind = raw.get("type") if isinstance(raw, dict) else raw
    if kind in ("stop", "length", "abort"):
        return str(kind)
    if kind is None:
        # SGLang leaves it null only for unfinished (streamed) chunks; a final answer without one was cut.
        return "abort"
    raise EngineError(f"SGLang answered an unknown finish_reason {raw!r}; expected stop, length or abort")


def parse_weight_version(raw: Any, default: int) -> int:
    """SGLang reports ``weight_version`` as a string (``"default"`` before any update)."""
    try:
        return int(raw)
    except (TypeError, ValueError):
        return default


def parse_generate_response(data: dict[str, Any], default_version: int = 0) -> GenerateOutput:
    """Turn a ``/generate`` answer into a :class:`GenerateOutput`, checking ids and logprobs agree."""
    if "error" in data:
        raise EngineError(f"SGLang /generate failed: {data['error']}")
    meta = data.get("meta_info") or {}
    output_ids = [int(t) for t in data.get("output_ids") or []]
    entries = meta.get("output_token_logprobs") or []
    logprobs = [float(e[0]) for e in entries]
    logprob_ids = [int(e[1]) for e in entries]
    if logprob_ids != output_ids:
        raise EngineError(
            f"SGLang returned {len(output_ids)} output ids but logprobs for {len(logprob_ids)} tokens "
            f"({logprob_ids[:8]} vs {output_ids[:8]}); the request must set return_logprob=true"
        )
    return GenerateOutput(
        output_ids=output_ids,
        logprobs=logprobs,
        finish_reason=_finish_reason(meta),
        weight_version=parse_weight_version(meta.get("weight_version"), default_version),
        meta={
            "rid": meta.get("id"),
            "prompt_tokens": meta.get("prompt_tokens"),
            "cached_tokens": meta.get("cached_tokens"),
            "e2e_latency": meta.get("e2e_latency"),
            "text": data.get("text"),
        },
    )


def abort_payload(rid: str | None) -> dict[str, Any]:
    """Body of ``POST /abort_request``: one request by ``rid``, or every request when ``rid`` is None."""
    return {"rid": rid} if rid is not None else {"abort_all": True}


def flush_when_idle_path(timeout_s: float) -> str:
    """``/flush_cache`` that first waits up to ``timeout_s`` for the scheduler to be idle: SGLang refuses to
    flush while a request is in its batch, which one that has just answered can be for a scheduler step."""
    return f"/flush_cache?timeout={timeout_s:g}"


def pause_payload(mode: PauseMode) -> dict[str, Any]:
    """Body of ``POST /pause_generation``."""
    return {"mode": mode}


def update_weights_from_disk_payload(
    model_path: str, version: int, *, flush_cache: bool = True
) -> dict[str, Any]:
    """Body of ``POST /update_weights_from_disk``: load an HF folder, tag the served version."""
    return {"model_path": model_path, "weight_version": str(version), "flush_cache": flush_cache}


def join_pieces(pieces: Sequence[GenerateOutput]) -> GenerateOutput:
    """One request's output from its pieces: the partial outputs that weight updates cut, then the last.

    Ids and logprobs are concatenated; each id keeps the version of the piece that sampled it
    (``meta["token_versions"]`` when they differ) and ``weight_version`` is the oldest of them, as the
    embedded engine reports a request that a weight update reached mid-way; ``finish_reason`` and the
    rest of ``meta`` are the last piece's."""
    output_ids: list[int] = []
    logprobs: list[float] = []
    versions: list[int] = []
    for piece in pieces:
        output_ids += piece.output_ids
        logprobs += piece.logprobs
        versions += [piece.weight_version] * len(piece.output_ids)
    last = pieces[-1]
    meta = {**last.meta, "resumed": len(pieces) - 1}
    texts = [piece.meta.get("text") for piece in pieces]
    if all(isinstance(text, str) for text in texts):
        meta["text"] = "".join(texts)  # type: ignore[arg-type]
    if len(set(versions)) > 1:
        meta["token_versions"] = versions
    return GenerateOutput(
        output_ids,
        logprobs,
        last.finish_reason,
        weight_version=min(versions, default=last.weight_version),
        meta=meta,
    )
