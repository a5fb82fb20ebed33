"""`moespeq collect --model DIR --out TRACE`: a lookahead trace from a Hugging Face MoE checkpoint.

Greedy-decodes every prompt with the target and, at every position, the INT4 draft's k_max tokens with
their routing and the target's routing when verifying them (moespeq.traces.collect). Prints and stores
in the trace's metadata the draft's per-layer top-k agreement and the acceptance rate by draft position.
"""

from pathlib import Path

from moespeq.commands.config import make_config
from moespeq.commands.output import print_json, print_table
from moespeq.errors import UserError

HELP = "collect a lookahead trace (target routing, INT4-draft tokens and routing, verify routing) from a HF MoE checkpoint"


def add_arguments(p):
    from moespeq.traces.collect import DRAFTS, CollectConfig

    d = CollectConfig()
    p.add_argument("--model", required=True, metavar="DIR", help="Hugging Face checkpoint folder (e.g. from `moespeq tiny`)")
    p.add_argument("--prompts", metavar="FILE", help="one prompt per line, or JSONL with a \"prompt\" field (default: 4 built-in prompts)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help=f"generated tokens per prompt (default {d.max_new_tokens})")
    p.add_argument("--k-max", type=int, default=d.k_max, help=f"draft tokens recorded at every position (default {d.k_max})")
    p.add_argument("--draft", default=d.draft, choices=list(DRAFTS), help=f"how the draft's routed experts are quantized (default {d.draft})")
    p.add_argument("--calib-prompts", metavar="FILE", help="GPTQ calibration prompts, same format as --prompts (default: the prompts)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="model dtype (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--out", required=True, metavar="TRACE", help="trace file to write (Parquet)")
    p.add_argument("--json", action="store_true", help="print the collection statistics as JSON")


def run(args) -> int:
    import torch

    from moespeq.trace import write_trace
    from moespeq.traces.collect import DEFAULT_PROMPTS, CollectConfig, collect, make_draft, read_prompts
    from moespeq.traces.draft import check_quantizable
    from moespeq.traces.hf_model import check_checkpoint_folder, load_checkpoint

    cfg = make_config(CollectConfig, max_new_tokens=args.max_new_tokens, k_max=args.k_max, draft=args.draft)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    try:  # before loading anything: the folder, the architecture, and expert sizes that INT4 groups can split
        check_quantizable(check_checkpoint_folder(Path(args.model)), cfg.quant)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    prompts = read_prompts(args.prompts) if args.prompts else list(DEFAULT_PROMPTS)
    calib = read_prompts(args.calib_prompts) if args.calib_prompts else prompts
    ckpt = load_checkpoint(args.model, args.device, args.dtype)
    trace = collect(ckpt, prompts, cfg, make_draft(ckpt, cfg, calib))
    write_trace(trace, args.out)
    extra = trace.meta.extra
    if args.json:
        print_json({"trace": args.out, "tokens": trace.n_tokens, "sequences": len(trace.sequences), **extra})
        return 0
    print(f"collected {len(trace.sequences)} sequences, {trace.n_tokens} tokens, k_max {cfg.k_max}, "
          f"draft {cfg.draft} (group {cfg.group}), {ckpt.device} {ckpt.dtype}; routing {trace.meta.routing_source}")
    if cfg.quant.method == "gptq":
        q = extra["draft_quantization"]
        source = args.calib_prompts or "the collection prompts (no --calib-prompts given)"
        print(f"GPTQ on {q['calib_prompts']} calibration prompts ({q['calib_tokens']} tokens) from {source}: "
              f"expert output error on them {q['output_error_gptq']:.4g} vs RTN {q['output_error_rtn']:.4g}")
    _print_stats(extra)
    print(f"wrote {args.out}")
    return 0


def _print_stats(extra) -> None:
    agreement = extra["agreement"]
    rows = [(i, f"{a['hard']:.1%}", f"{a['soft']:.1%}", f"{a['miss']:.1%}", a["inputs"])
            for i, a in enumerate(agreement["layers"])]
    o = agreement["overall"]
    rows.append(("all", f"{o['hard']:.1%}", f"{o['soft']:.1%}", f"{o['miss']:.1%}", o["inputs"]))
    print("draft vs target top-k agreement per MoE layer (hard: same set and order; soft: same set; miss: other set)")
    print_table(("layer", "hard", "soft", "miss", "inputs"), rows)
    print("acceptance by draft position (conditional: given all earlier draft tokens were accepted)")
    print_table(("position", "cumulative", "conditional", "positions"),
                [(a["position"], _pct(a["cumulative"]), _pct(a["conditional"]), a["known"]) for a in extra["acceptance"]])


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"
