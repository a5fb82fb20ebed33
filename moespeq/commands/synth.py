"""`moespeq synth`: a synthetic lookahead trace with documented knobs (see moespeq.traces.synth)."""

import dataclasses
import json
from pathlib import Path

from moespeq.commands.config import make_config
from moespeq.errors import UserError
from moespeq.spec import resolve_model
from moespeq.trace import write_trace

HELP = "generate a synthetic lookahead trace (popularity skew, reuse, cross-layer correlation, draft fidelity, acceptance)"


def _defaults():
    from moespeq.traces.synth import SynthConfig

    return {f.name: f.default for f in dataclasses.fields(SynthConfig) if f.name != "model"}


def add_arguments(p):
    d = _defaults()
    p.add_argument("--model", required=True, help="model preset or checkpoint folder (its geometry)")
    p.add_argument("--seqs", type=int, default=d["seqs"], help="sequences")
    p.add_argument("--tokens", type=int, default=d["tokens"], help="generated tokens per sequence")
    p.add_argument("--prompt-len", type=int, default=d["prompt_len"], help="prompt tokens per sequence")
    p.add_argument("--k-max", type=int, default=d["k_max"], help="longest draft the trace supports")
    p.add_argument("--skew", type=float, default=d["skew"], help="Zipf exponent of per-layer expert popularity")
    p.add_argument("--locality", type=float, default=d["locality"], help="P(a top-k slot repeats the previous token's expert)")
    p.add_argument("--cross-layer", type=float, default=d["cross_layer"], help="P(a slot follows the layer below)")
    p.add_argument("--draft-fidelity", type=float, default=d["draft_fidelity"], help="P(draft top-k set == target's)")
    p.add_argument("--order-fidelity", type=float, default=d["order_fidelity"], help="P(same order | same set)")
    p.add_argument("--acceptance", type=float, default=d["acceptance"], help="P(draft token accepted | previous accepted)")
    p.add_argument("--popularity", metavar="JSON", help="per-layer expert counts to follow instead of --skew "
                   "(written by `moespeq import --format eam-npy`)")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed")
    p.add_argument("--out", required=True, help="output trace (.parquet)")


def _load_popularity(path):
    try:
        data = json.loads(Path(path).read_text())
        return tuple(tuple(float(c) for c in row) for row in data["counts"])
    except FileNotFoundError:
        raise UserError(f"{path}: no such popularity file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a popularity JSON with a 'counts' [L][E] list ({exc})") from None


def run(args) -> int:
    from moespeq.traces.synth import SynthConfig, synthesize

    cfg = make_config(
        SynthConfig, model=resolve_model(args.model), seqs=args.seqs, tokens=args.tokens, prompt_len=args.prompt_len,
        k_max=args.k_max, skew=args.skew, locality=args.locality, cross_layer=args.cross_layer,
        draft_fidelity=args.draft_fidelity, order_fidelity=args.order_fidelity, acceptance=args.acceptance,
        seed=args.seed, popularity=_load_popularity(args.popularity) if args.popularity else None)
    trace = synthesize(cfg)
    write_trace(trace, args.out)
    print(f"wrote {args.out}: {len(trace.sequences)} sequences x {cfg.tokens} tokens, {cfg.label()}")
    return 0
