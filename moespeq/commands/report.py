"""`moespeq report`: compute the data behind the tables and figures into JSON files."""

from pathlib import Path

from moespeq.budget import BudgetConfig
from moespeq.commands.config import make_config
from moespeq.commands.simulate import DEFAULT_BUDGET, DEFAULT_HARDWARE

HELP = ("compute a trace's routing statistics, memory layouts, every system's simulated decoding and the "
        "Amortization Roofline into JSON files that `moespeq figures` draws")


def add_arguments(p):
    p.add_argument("--trace", help="trace file (default: the bundled demo trace)")
    p.add_argument("--hardware", default=DEFAULT_HARDWARE, help=f"profile name or .json (default {DEFAULT_HARDWARE})")
    p.add_argument("--budget", default=DEFAULT_BUDGET, help=f"GPU memory budget (default {DEFAULT_BUDGET}, as simulate)")
    p.add_argument("--context", type=int, default=BudgetConfig.context, help="tokens of KV cache the layouts reserve")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulations")
    p.add_argument("--out", default="results", help="folder for the data files (default results/)")


def run(args) -> int:
    from moespeq.analysis.report import ReportConfig, write_report
    from moespeq.hardware import get_hardware
    from moespeq.trace import demo_trace_path
    from moespeq.units import parse_bytes

    cfg = make_config(ReportConfig, trace=Path(args.trace) if args.trace else demo_trace_path(),
                      hardware=get_hardware(args.hardware), budget_bytes=parse_bytes(args.budget, "--budget"),
                      context=args.context, seed=args.seed)
    for path in write_report(cfg, Path(args.out)):
        print(f"wrote {path}")
    return 0
