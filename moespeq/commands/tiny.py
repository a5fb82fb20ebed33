"""`moespeq tiny --arch A --out DIR`: a random-initialized MoE checkpoint for testing without downloads."""

from moespeq.commands.config import make_config
from moespeq.spec import SUPPORTED_ARCHS

HELP = "write a tiny random-initialized Hugging Face MoE checkpoint (safetensors + byte tokenizer) of any supported architecture"


def add_arguments(p):
    from moespeq.traces.tiny import TinyConfig

    d = TinyConfig(arch=SUPPORTED_ARCHS[0])
    p.add_argument("--arch", required=True, help=f"architecture: {', '.join(SUPPORTED_ARCHS)}")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--layers", type=int, default=d.layers, help=f"decoder layers (default {d.layers}; DeepSeek's first is dense)")
    p.add_argument("--experts", type=int, default=d.experts, help=f"routed experts per MoE layer (default {d.experts})")
    p.add_argument("--top-k", type=int, default=d.top_k, help=f"experts per token (default {d.top_k}; phimoe: 2 only)")
    p.add_argument("--hidden", type=int, default=d.hidden, help=f"hidden size, a multiple of 32 (default {d.hidden})")
    p.add_argument("--moe-ffn", type=int, default=d.moe_ffn, help=f"expert FFN size (default {d.moe_ffn})")
    p.add_argument("--vocab", type=int, default=d.vocab, help=f"vocabulary size, >= 259 (default {d.vocab})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"initialization seed (default {d.seed})")


def run(args) -> int:
    from moespeq.spec import ModelSpec
    from moespeq.traces.tiny import TinyConfig, save_tiny

    cfg = make_config(TinyConfig, arch=args.arch, layers=args.layers, experts=args.experts, top_k=args.top_k,
                      hidden=args.hidden, moe_ffn=args.moe_ffn, vocab=args.vocab, seed=args.seed)
    path = save_tiny(cfg, args.out)
    spec = ModelSpec.from_hf_config(path)
    print(f"wrote {path}: {spec.arch}, {spec.layers} layers ({spec.moe_layers} MoE), {spec.experts} experts, "
          f"top-{spec.top_k}, hidden {spec.hidden}, expert FFN {spec.moe_ffn}, {spec.total_params:,} parameters")
    return 0
