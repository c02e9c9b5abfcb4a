"""SGLang request bodies and response parsing, without a server.

The response below is a real ``/generate`` answer of sglang 0.5.23 on CPU (recorded by hand with curl
against a tiny GPT-2); the field names asserted for requests are those of ``io_struct.py`` in 0.5.23.
"""

from __future__ import annotations

import pytest

from agentrl.engines.base import SamplingParams
from agentrl.engines.sglang import protocol as proto
from agentrl.engines.sglang.engine import SGLangEngineConfig
from agentrl.engines.sglang.launcher import SGLangServerProcess, find_sglang_python, free_port
from agentrl.errors import ConfigError, EngineError

RECORDED = {
    "text": "do Paris",
    "output_ids": [277, 145, 174],
    "meta_info": {
        "id": "abc",
        "finish_reason": {"type": "length", "length": 3},
        "prompt_tokens": 3,
        "weight_version": "default",
        "output_token_logprobs": [[-5.95196, 277, None], [-5.76862, 145, None], [-5.61987, 174, None]],
        "cached_tokens": 0,
        "e2e_latency": 0.0136,
    },
}


def test_generate_payload_keeps_stop_strings_and_asks_only_output_logprobs() -> None:
    sampling = SamplingParams(
        max_new_tokens=7,
        temperature=0.5,
        top_p=0.9,
        top_k=20,
        stop=("</search>",),
        stop_token_ids=(2,),
        seed=11,
    )
    body = proto.generate_payload([1, 2, 3], sampling, rid="r1")
    assert body == {
        "rid": "r1",
        "input_ids": [1, 2, 3],
        "return_logprob": True,
        "logprob_start_len": -1,
        "stream": False,
        "sampling_params": {
            "max_new_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 20,
            "stop": ["</search>"],
            "stop_token_ids": [2],
            "sampling_seed": 11,
            "no_stop_trim": True,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
        },
    }
    plain = proto.sampling_params_payload(SamplingParams())
    assert "stop" not in plain and "stop_token_ids" not in plain and "sampling_seed" not in plain
    assert "ignore_eos" not in plain
    assert proto.sampling_params_payload(SamplingParams(ignore_eos=True))["ignore_eos"] is True


def test_parse_recorded_response() -> None:
    out = proto.parse_generate_response(RECORDED, default_version=4)
    assert out.output_ids == [277, 145, 174]
    assert out.logprobs == [-5.95196, -5.76862, -5.61987]
    assert out.finish_reason == "length"
    assert out.weight_version == 4  # "default" is not a number: keep the engine's own version
    assert out.meta["rid"] == "abc" and out.meta["prompt_tokens"] == 3


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ({"type": "stop", "matched": 2}, "stop"),
        ({"type": "abort", "message": "Aborted"}, "abort"),
        (None, "abort"),
    ],
)
def test_finish_reasons(finish: object, expected: str) -> None:
    data = {
        **RECORDED,
        "meta_info": {**RECORDED["meta_info"], "finish_reason": finish, "weight_version": "9"},
    }
    out = proto.parse_generate_response(data)
    assert out.finish_reason == expected and out.weight_version == 9


def test_mismatched_logprobs_and_errors_raise() -> None:
    bad = {**RECORDED, "output_ids": [277, 145, 999]}
    with pytest.raises(EngineError, match="logprobs"):
        proto.parse_generate_response(bad)
    with pytest.raises(EngineError, match="unknown finish_reason"):
        proto.parse_generate_response(
            {**RECORDED, "meta_info": {**RECORDED["meta_info"], "finish_reason": "x"}}
        )
    with pytest.raises(EngineError, match="failed"):
        proto.parse_generate_response({"error": {"message": "too long"}})


def test_weight_update_bodies() -> None:
    assert proto.update_weights_from_disk_payload("/ckpt/7", 7) == {
        "model_path": "/ckpt/7",
        "weight_version": "7",
        "flush_cache": True,
    }
    assert proto.abort_payload(None) == {"abort_all": True} and proto.abort_payload("r") == {"rid": "r"}
    assert proto.pause_payload("in_place") == {"mode": "in_place"}


def test_config_and_interpreter_errors_say_how_to_fix(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="model_path"):
        SGLangEngineConfig()
    monkeypatch.setenv("AGENTRL_SGLANG_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(ConfigError, match=r"setup_sglang\.sh"):
        find_sglang_python()


def test_server_process_command_and_startup_failure_reports_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import sys

    # A "server" that exits at once: the error must carry the exit code and the log tail.
    script = tmp_path / "fake.py"
    script.write_text("import sys\nprint('boom: no such model', file=sys.stderr)\nsys.exit(3)\n")
    port = free_port()
    server = SGLangServerProcess(
        sys.executable, "/m", port=port, extra_args=("--x",), log_path=tmp_path / "s.log"
    )
    assert server.command()[1:] == ["-m", "sglang.launch_server", "--model-path", "/m", "--host", "127.0.0.1",
                                    "--port", str(port), "--x"]  # fmt: skip
    server.python, server.command = sys.executable, lambda: [sys.executable, str(script)]  # type: ignore[method-assign]
    server.start()
    with pytest.raises(EngineError, match=r"exited with code 3(.|\n)*boom: no such model"):
        asyncio.run(server.wait_healthy(timeout_s=30, poll_s=0.05))
    server.kill()
