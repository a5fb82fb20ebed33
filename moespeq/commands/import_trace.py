"""`moespeq import --format F FILE --model M --out OUT`: routing logged by other tools, as a trace or statistics.

Trace formats give target (and prompt) routing only; eam-npy gives per-layer expert popularity (JSON) that
`moespeq synth --popularity` follows. Accepted input is documented in moespeq.traces.importers.
"""

from moespeq.spec import resolve_model
from moespeq.trace import write_trace
from moespeq.traces.importers import FORMATS, import_trace, write_popularity

HELP = "import routing from vLLM-logger JSONL, Megatron JSONL or llama.cpp CSV (target routing only), or a MoE-Infinity activation matrix (popularity)"


def add_arguments(p):
    p.add_argument("file", help="the file to import")
    p.add_argument("--format", required=True, choices=FORMATS, help="what the file is")
    p.add_argument("--model", required=True, help="model preset or checkpoint folder whose geometry the routing has")
    p.add_argument("--out", required=True, help="trace to write (.parquet); for eam-npy, the popularity JSON")


def run(args) -> int:
    spec = resolve_model(args.model)
    if args.format == "eam-npy":
        data = write_popularity(args.file, spec, args.out)
        print(f"imported {args.file} as import:eam-npy: expert popularity of {data['layers']} layers x "
              f"{data['experts']} experts from {data['matrices']} activation matrices (aggregate only, no trace)")
        print(f"wrote {args.out}; follow it with `moespeq synth --model {args.model} --popularity {args.out}`")
        return 0
    trace = import_trace(args.format, args.file, spec)
    write_trace(trace, args.out)
    info = trace.meta.extra["import"]
    n_prompt = sum(s.n_prompt for s in trace.sequences)
    print(f"imported {args.file} as {trace.meta.routing_source}: {len(trace.sequences)} sequences, "
          f"{trace.n_tokens} generated and {n_prompt} prompt tokens, {spec.moe_layers} MoE layers of {spec.name}")
    print("target routing only: no draft lookahead (k_max 0); simulations synthesize draft and verify routing "
          "from a draft-fidelity model and label their results so")
    print(f"token ids: {info['token_ids']}; gate weights: {info['gate_weights']}"
          + (f"; {info['duplicates_dropped']} duplicated records dropped" if info["duplicates_dropped"] else ""))
    print(f"wrote {args.out}")
    return 0
