"""Cost per position of lookahead collection (`moespeq collect`) on random checkpoints, against plain greedy decoding.

Per generated position the collector runs k_max one-token draft forwards, one target decode step and one
k_max-token verify forward (moespeq.traces.collect), so its cost is several decode steps. This script
builds a tiny and a mid-size random Mixtral-style checkpoint, times the INT4 draft's quantization (RTN and
GPTQ), collection per position, and HF `generate` per token on the same prompts, prints a table and writes
JSON with the command, machine and library versions.

Usage:
    python benchmarks/bench_collect.py [--device cpu|cuda] [--cases tiny,mid] [--out bench_collect.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

import moespeq
from moespeq.commands.output import print_table
from moespeq.traces.collect import CollectConfig, collect, make_draft, tokenize
from moespeq.traces.hf_model import default_device, default_dtype, load_checkpoint
from moespeq.traces.tiny import TinyConfig, save_tiny

#: random checkpoints timed; "mid" is ~0.9 B parameters (fp32 ~3.4 GB, plus the draft's experts)
CASES = {
    "tiny": TinyConfig(arch="mixtral", layers=2, experts=8, top_k=2, hidden=128, moe_ffn=256),
    "mid": TinyConfig(arch="mixtral", layers=8, experts=16, top_k=2, hidden=1024, moe_ffn=1792, vocab=32000),
}
PROMPTS = ("The history of the printing press begins", "def fibonacci(n):")


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def _generate_s_per_token(ckpt, new_tokens: int) -> float:
    """Plain greedy decoding (HF generate), seconds per generated token, prefill excluded."""
    total = 0.0
    for tokens in tokenize(ckpt, PROMPTS):
        ids = torch.tensor([tokens], device=ckpt.device)
        with torch.inference_mode():
            _, prefill_s = _timed(lambda ids=ids: ckpt.model.generate(ids, max_new_tokens=1, do_sample=False))
            _, full_s = _timed(lambda ids=ids: ckpt.model.generate(ids, max_new_tokens=new_tokens + 1, do_sample=False))
        total += (full_s - prefill_s) / new_tokens
    return total / len(PROMPTS)


def bench_case(name: str, tiny: TinyConfig, device: str, new_tokens: int, k_max: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = load_checkpoint(save_tiny(tiny, Path(tmp) / name), device, default_dtype(device))
        cfg = CollectConfig(max_new_tokens=new_tokens, k_max=k_max)
        draft, rtn_s = _timed(lambda: make_draft(ckpt, cfg))
        _, gptq_s = _timed(lambda: make_draft(ckpt, CollectConfig(draft="int4-gptq"), PROMPTS))
        collect(ckpt, PROMPTS[:1], CollectConfig(max_new_tokens=2, k_max=k_max), draft, progress=False)  # warm-up
        trace, collect_s = _timed(lambda: collect(ckpt, PROMPTS, cfg, draft, progress=False))
        prefill_s = sum(_timed(lambda t=t: ckpt.model(torch.tensor([t], device=device), logits_to_keep=1))[1]
                        for t in tokenize(ckpt, PROMPTS))
        per_position_s = (collect_s - prefill_s) / trace.n_tokens
        greedy_s = _generate_s_per_token(ckpt, new_tokens)
        spec = ckpt.spec
        return {"case": name, "arch": spec.arch, "params": spec.total_params, "layers": spec.layers,
                "experts": spec.experts, "top_k": spec.top_k, "hidden": spec.hidden, "moe_ffn": spec.moe_ffn,
                "device": device, "dtype": ckpt.dtype, "k_max": k_max, "positions": trace.n_tokens,
                "collect_s_per_position": per_position_s, "generate_s_per_token": greedy_s,
                "overhead_vs_generate": per_position_s / greedy_s, "draft_rtn_s": rtn_s, "draft_gptq_s": gptq_s,
                "forwards_per_position": k_max + 2}


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=default_device(), choices=["cpu", "cuda"])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--new-tokens", type=int, default=16, help="generated tokens per prompt")
    parser.add_argument("--k-max", type=int, default=8)
    parser.add_argument("--out", default="bench_collect.json")
    args = parser.parse_args()
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; use {', '.join(CASES)}")
    results = [bench_case(c, CASES[c], args.device, args.new_tokens, args.k_max) for c in args.cases.split(",")]
    print_table(("case", "params", "D", "F", "L", "E", "K", "k_max", "positions", "ms/position", "generate ms/token",
                 "x generate", "RTN s", "GPTQ s"),
                [(r["case"], r["params"], r["hidden"], r["moe_ffn"], r["layers"], r["experts"], r["top_k"], r["k_max"],
                  r["positions"], 1e3 * r["collect_s_per_position"], 1e3 * r["generate_s_per_token"],
                  r["overhead_vs_generate"], r["draft_rtn_s"], r["draft_gptq_s"]) for r in results])
    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine(),
              "versions": {"moespeq": moespeq.__version__, "torch": torch.__version__,
                           "transformers": transformers.__version__, "python": platform.python_version()},
              "results": results}
    Path(args.out).write_text(json.dumps(report, indent=2))
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
