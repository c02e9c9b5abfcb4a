"""Trainer vs engine logprobs of the sampled tokens (issue 17): how large the gap is, and where it comes from.

The embedded engine (the run's engine; bf16 weights on a GPU) samples completions and reports each
token's logprob, as in a rollout. The same tokens are then scored by each trainer path and by
variants that change one rounding point at a time:

- ``fp32``: fp32 weights, no autocast, fp32 logits (the exact value every path approximates);
- ``bf16w_bf16logits``: bf16 weights, logits rounded to bf16 (the engine's model, one full prefill);
- ``bf16w_fp32logits``: the same hidden states, lm head accumulated and returned in fp32;
- ``autocast_bf16logits``: fp32 weights under bf16 autocast, bf16 logits (the torch backend before
  issue 17);
- ``autocast_fp32head``: the same body, lm head in fp32;
- ``torch_backend``: :class:`TorchBackend` as configured by default;
- ``megatron``: :class:`MegatronBackend` (where megatron-core is installed).

Each line: mean and max |variant - engine| and mean |variant - fp32| over the sampled tokens.

    python bench/logprob_gap.py --model smollm2-135m --json out/gap.jsonl
    python bench/logprob_gap.py --shape smollm2-135m          # random-init weights of that shape
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

# bench/megatron.py is named like the megatron package: keep this folder off the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Who wrote Romeo and Juliet?",
    "What is 12 times 7?",
    "Explain photosynthesis in one sentence.",
    "What is the largest planet in the solar system?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Give a synonym for 'happy'.",
    "What is the boiling point of water in Celsius?",
    "Write a haiku about the sea.",
    "Which ocean lies between Africa and Australia?",
    "What does DNA stand for?",
    "How many days are in a leap year?",
    "Who painted the Mona Lisa?",
    "What language is spoken in Brazil?",
]


def sample(
    folder: Path, prompts: list[list[int]], n: int, new_tokens: int, seed: int, dtype: str
) -> list[tuple[list[int], list[int], list[float]]]:
    """(prompt ids, sampled ids, engine logprobs) of ``n`` samples of each prompt at temperature 1."""
    from agentrl.engines.base import SamplingParams
    from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig

    engine = EmbeddedEngine(str(folder), EmbeddedEngineConfig(dtype=dtype))

    async def run() -> list[Any]:
        try:
            jobs = [
                engine.generate(p, SamplingParams(max_new_tokens=new_tokens, seed=seed + 1000 * i + j))
                for i, p in enumerate(prompts)
                for j in range(n)
            ]
            return list(await asyncio.gather(*jobs))
        finally:
            await engine.close()

    outs = asyncio.run(run())
    pairs = [p for p in prompts for _ in range(n)]
    return [(p, o.output_ids, o.logprobs) for p, o in zip(pairs, outs, strict=True) if o.output_ids]


def _hf(folder: Path, dtype: torch.dtype, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device).eval()


@torch.no_grad()
def score_hf(
    model: Any, ids: list[torch.Tensor], n_prompt: list[int], *, autocast: bool, head: str
) -> list[torch.Tensor]:
    """Logprobs of each sequence's sampled tokens, one unpadded forward per sequence.

    ``head``: ``model`` (the model's own logits, bf16 under bf16 weights or autocast), ``fp32out``
    (bf16 hidden and weight, product accumulated and returned in fp32) or ``fp32`` (fp32 hidden and
    weight)."""
    device = next(model.parameters()).device
    weight = model.get_output_embeddings().weight
    out = []
    for x, p in zip(ids, n_prompt, strict=True):
        x = x.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            hidden = model.base_model(input_ids=x[None]).last_hidden_state[0, p - 1 : -1]  # (n_new, H)
            logits = model.lm_head(hidden) if head == "model" else None
        if head == "fp32out":
            # bf16 operands, exact products summed in fp32 (what mm(..., out_dtype=fp32) computes on a GPU)
            logits = hidden.bfloat16().float() @ weight.bfloat16().float().t()
        elif head == "fp32":
            logits = hidden.float() @ weight.float().t()
        lp = torch.log_softmax(logits.float(), -1).gather(1, x[p:, None]).squeeze(1)  # (n_new,)
        out.append(lp.cpu())
    return out


def _stats(
    name: str, got: list[torch.Tensor], engine: torch.Tensor, exact: torch.Tensor | None
) -> dict[str, Any]:
    g = torch.cat(got).double()
    d = (g - engine).abs()
    row = {
        "variant": name,
        "tokens": int(d.numel()),
        "mean_vs_engine": float(d.mean()),
        "max_vs_engine": float(d.max()),
    }
    if exact is not None:
        row["mean_vs_fp32"] = float((g - exact).abs().mean())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="an HF folder or alias (smollm2-135m)")
    ap.add_argument(
        "--shape", help="random-init weights of a reference shape (agentrl.trainer.megatron.shapes)"
    )
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-megatron", action="store_true")
    ap.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="on the CPU: engine and variants in bf16 (CPU kernels, the same rounding points)",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--prompts", type=int, default=len(QUESTIONS))
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from transformers import AutoTokenizer

    from agentrl.models import make_tiny_gpt2, resolve_model

    tmp = Path(tempfile.mkdtemp(prefix="gap-"))
    if args.shape:
        from agentrl.trainer.megatron.shapes import random_checkpoint

        folder = random_checkpoint(args.shape, tmp / args.shape, seed=args.seed, device=device)
        AutoTokenizer.from_pretrained(make_tiny_gpt2(tmp / "tok")).save_pretrained(folder)
        g = torch.Generator().manual_seed(args.seed)
        vocab = min(len(AutoTokenizer.from_pretrained(folder)), 200)
        prompts = [torch.randint(5, vocab, (40,), generator=g).tolist() for _ in QUESTIONS[: args.prompts]]
        label = f"{args.shape} (random init)"
    else:
        folder = resolve_model(args.model or "smollm2-135m")
        tok = AutoTokenizer.from_pretrained(folder)
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
            )
            for q in QUESTIONS[: args.prompts]
        ]
        prompts = [tok.encode(t, add_special_tokens=False) for t in texts]
        label = str(args.model or "smollm2-135m")
    bf16 = device == "cuda" or args.cpu_bf16
    samples = sample(
        folder, prompts, args.samples, args.new_tokens, args.seed, "bfloat16" if bf16 else "auto"
    )
    ids = [torch.tensor(p + o) for p, o, _ in samples]
    n_prompt = [len(p) for p, _, _ in samples]
    engine = torch.cat([torch.tensor(lp, dtype=torch.float64) for _, _, lp in samples])

    fp32 = _hf(folder, torch.float32, device)
    exact_list = score_hf(fp32, ids, n_prompt, autocast=False, head="fp32")
    exact = torch.cat(exact_list).double()
    rows = [_stats("fp32", exact_list, engine, exact)]
    if bf16:
        for name, head in (("autocast_bf16logits", "model"), ("autocast_fp32head", "fp32")):
            rows.append(_stats(name, score_hf(fp32, ids, n_prompt, autocast=True, head=head), engine, exact))
    del fp32
    if bf16:
        bf16w = _hf(folder, torch.bfloat16, device)
        rows.append(
            _stats(
                "bf16w_bf16logits",
                score_hf(bf16w, ids, n_prompt, autocast=False, head="model"),
                engine,
                exact,
            )
        )
        rows.append(
            _stats(
                "bf16w_fp32logits",
                score_hf(bf16w, ids, n_prompt, autocast=False, head="fp32out"),
                engine,
                exact,
            )
        )
        del bf16w
    from agentrl.trainer.torch_backend import TorchBackend

    backend = TorchBackend(folder)
    rows.append(
        _stats(
            "torch_backend",
            [lp[p:] for lp, p in zip(backend.logprobs(ids), n_prompt, strict=True)],
            engine,
            exact,
        )
    )
    del backend
    if device == "cuda" and not args.no_megatron:
        from agentrl.trainer.megatron.backend import MegatronBackend
        from agentrl.trainer.megatron.config import MegatronBackendConfig

        mb = MegatronBackend(folder, MegatronBackendConfig())
        rows.append(
            _stats(
                "megatron", [lp[p:] for lp, p in zip(mb.logprobs(ids), n_prompt, strict=True)], engine, exact
            )
        )
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{label} on {name}: {len(samples)} samples, {int(engine.numel())} sampled tokens")
    print(f"{'variant':<22} {'mean|v-engine|':>15} {'max|v-engine|':>14} {'mean|v-fp32|':>13}")
    for r in rows:
        print(
            f"{r['variant']:<22} {r['mean_vs_engine']:>15.4f} {r['max_vs_engine']:>14.4f} {r.get('mean_vs_fp32', 0):>13.4f}"
        )
    if args.json:
        with args.json.open("a") as f:
            for r in rows:
                f.write(json.dumps({"model": label, "device": name, **r}) + "\n")


if __name__ == "__main__":
    main()
