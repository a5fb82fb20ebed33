"""`moespeq report`: compute the data behind the tables and figures into JSON files."""

from pathlib import Path

from moespeq.analysis.report import ReportConfig, write_report
from moespeq.commands.config import make_config
from moespeq.trace import demo_trace_path
from moespeq.units import parse_bytes

HELP = "compute routing statistics and memory layouts of a trace into JSON files that `moespeq figures` draws"


def add_arguments(p):
    p.add_argument("--trace", help="trace file (default: the bundled demo trace)")
    p.add_argument("--budget", default="40GB", help="GPU budget for the memory layouts (default 40GB, the paper's A100)")
    p.add_argument("--context", type=int, default=ReportConfig.context, help="tokens of KV cache")
    p.add_argument("--out", default="results", help="folder for the data files (default results/)")


def run(args) -> int:
    cfg = make_config(ReportConfig, trace=Path(args.trace) if args.trace else demo_trace_path(),
                      budget_bytes=parse_bytes(args.budget, "--budget"), context=args.context)
    for path in write_report(cfg, Path(args.out)):
        print(f"wrote {path}")
    return 0
