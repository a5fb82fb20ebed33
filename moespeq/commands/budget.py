"""`moespeq budget`: the GPU memory layout of one system under a byte budget (paper Table 2)."""

from moespeq.budget import MEMORY_RULES, BudgetConfig, plan_memory
from moespeq.commands.output import print_json, print_table
from moespeq.spec import resolve_model
from moespeq.units import parse_bytes

HELP = "lay out a GPU memory budget: non-expert weights, KV cache, draft experts, workspace and the expert cache left"


def add_arguments(p):
    p.add_argument("--model", required=True, help="model preset or checkpoint folder")
    p.add_argument("--budget", required=True, help="GPU bytes: 40GiB, 40GB or 4e10")
    p.add_argument("--system", default="speq", help=f"one of {', '.join(MEMORY_RULES)} (default speq)")
    p.add_argument("--context", type=int, default=BudgetConfig.context, help="tokens of KV cache to reserve")
    p.add_argument("--workspace", default=str(BudgetConfig.workspace_bytes), help="activation/scratch bytes")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    cfg = BudgetConfig(model=resolve_model(args.model), budget_bytes=parse_bytes(args.budget, "--budget"),
                       system=args.system, context=args.context,
                       workspace_bytes=parse_bytes(args.workspace, "--workspace"))
    layout = plan_memory(cfg)
    if args.json:
        print_json({"model": cfg.model.name, "context": cfg.context, **layout.to_dict()})
        return 0
    print(f"{cfg.model.name}, system {layout.system} ({layout.rule} rule), context {cfg.context} tokens")
    print_table(("component", "bytes"), layout.rows())
    return 0
