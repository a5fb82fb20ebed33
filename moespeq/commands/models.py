"""`moespeq models`: the model presets with their shapes and derived sizes."""

from moespeq.commands.output import print_json, print_table
from moespeq.spec import PRESETS, ModelSpec

HELP = "list the model presets (shapes from each model's published config.json) and their derived sizes"


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    p.add_argument("--config", metavar="DIR", help="read one model's shapes from a checkpoint folder or config.json")


def run(args) -> int:
    specs = [ModelSpec.from_hf_config(args.config)] if args.config else list(PRESETS.values())
    if args.json:
        print_json([s.summary() for s in specs])
        return 0
    rows = [(s.name, s.arch, s.layers, s.moe_layers, s.experts, s.top_k, s.shared_experts, s.hidden, s.moe_ffn,
             f"{s.expert_bytes_bf16 / 1e6:.1f}", f"{s.expert_bytes_int4() / 1e6:.2f}",
             f"{s.total_params / 1e9:.1f}", f"{s.active_params / 1e9:.2f}", f"{s.nonexpert_bytes_bf16 / 1e9:.2f}")
            for s in specs]
    print_table(("model", "arch", "layers", "moe", "E", "K", "shared", "D", "F", "expert MB bf16", "MB int4",
                 "params B", "active B", "non-expert GB"), rows)
    return 0
