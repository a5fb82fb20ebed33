"""`moespeq inspect TRACE`: what a trace holds and how its routing behaves."""

from moespeq.commands.output import print_json, print_table
from moespeq.trace import demo_trace_path, read_trace
from moespeq.trace_stats import summarize

HELP = "summarize a lookahead trace: model, tokens, routing source, per-layer load/entropy, draft agreement, acceptance"


def add_arguments(p):
    p.add_argument("trace", nargs="?", help="trace file (default: the bundled demo trace)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    path = args.trace or demo_trace_path()
    summary = summarize(read_trace(path))
    if args.json:
        print_json({"trace": str(path), **summary})
        return 0
    print(f"trace        {path}")
    print(f"model        {summary['model']} ({summary['arch']})")
    print(f"routing      {summary['routing_source']}")
    print(f"sequences    {summary['sequences']}, {summary['tokens']} generated tokens, "
          f"{summary['prompt_tokens']} prompt tokens, k_max {summary['k_max']}")
    agree = summary["agreement"]
    if agree:
        print(f"draft agreement  hard {agree['hard']:.1%}  soft {agree['soft']:.1%}  miss {agree['miss']:.1%}")
        print("acceptance by draft position  " + "  ".join(f"{j + 1}:{p:.2f}" for j, p in
                                                            enumerate(summary["acceptance_by_position"])))
    else:
        print("no draft lookahead (imported routing); the simulator synthesizes it and labels results so")
    cols = ["layer", "entropy bits", "max bits", "top share", "unused", "reuse"] + (["hard", "soft", "miss"] if agree else [])
    keys = ["layer", "entropy_bits", "max_entropy_bits", "top_expert_share", "unused_experts", "reuse"] + (
        ["hard", "soft", "miss"] if agree else [])
    print_table(cols, [[row[k] for k in keys] for row in summary["layers"]])
    return 0
