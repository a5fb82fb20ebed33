"""`moespeq simulate`: every decoding system on one trace, machine and GPU memory budget (DESIGN §1, §7)."""

from moespeq.commands.output import print_json, print_table

HELP = ("simulate offloaded MoE decoding (MoE-SpeQ and every baseline) on a lookahead trace; "
        "with no arguments: the bundled demo trace on a100-40g-pcie4 at 36GiB, every system")

DEFAULT_HARDWARE = "a100-40g-pcie4"
# The paper's machine is an A100-PCIE-40GB: 40e9 bytes = 37.25 GiB, of which the CUDA context and the
# allocator's slack take about 1 GiB; 36 GiB is the most a run can lay out, the paper's high-memory case.
DEFAULT_BUDGET = "36GiB"
COLUMNS = (("system", None), ("TPOT ms", "tpot_ms"), ("TTFT ms", "ttft_ms"), ("tok/s", "tokens_per_s"),
           ("hit %", "hit_rate"), ("mean k", "mean_k"), ("acc/cycle", "accepted_per_cycle"),
           ("stall ms/tok", "stall_ms_per_token"), ("PCIe GB", "pcie_gb"), ("PCIe util", "pcie_util"))


def add_arguments(p):
    p.add_argument("--trace", help="lookahead trace (.parquet); default: the bundled demo trace")
    p.add_argument("--hardware", default=DEFAULT_HARDWARE, help=f"profile name or .json (default {DEFAULT_HARDWARE})")
    p.add_argument("--budget", default=DEFAULT_BUDGET,
                   help=f"GPU memory budget (default {DEFAULT_BUDGET}: an A100-40GB's 37.25 GiB less ~1 GiB for "
                        "the CUDA context; the paper's high-memory setting)")
    p.add_argument("--systems", default="all", help="comma-separated systems or 'all' (see `moespeq systems`)")
    p.add_argument("--policy-file", help="policy JSON (from `moespeq search`) for the system it names")
    p.add_argument("--timeline", metavar="OUT.json", help="write a Chrome/Perfetto trace of every system's events")
    p.add_argument("--per-token", metavar="OUT.parquet", help="write one row per generated token and system")
    p.add_argument("--seed", type=int, default=0, help="random seed (gate-prediction noise, synthesized lookahead)")
    p.add_argument("--json", action="store_true", help="print JSON")


def load_inputs(args):
    """(trace path, trace, hardware, budget bytes) from the shared flags, with one-line errors."""
    from moespeq.hardware import get_hardware
    from moespeq.sim.run import check_trace
    from moespeq.trace import demo_trace_path, read_trace
    from moespeq.units import parse_bytes

    path = args.trace or str(demo_trace_path())
    hardware = get_hardware(args.hardware)
    budget = parse_bytes(args.budget, "--budget")
    trace = read_trace(path)
    check_trace(trace)
    return path, trace, hardware, budget


def run(args) -> int:
    from tqdm import tqdm

    from moespeq.errors import UserError
    from moespeq.policy.config import load_policy
    from moespeq.sim.run import (
        SimConfig,
        layout_for,
        resolve_policy,
        simulate,
        write_per_token,
        write_timeline,
    )
    from moespeq.sim.systems import get_system, parse_systems

    path, trace, hardware, budget = load_inputs(args)
    names = parse_systems(args.systems)
    policy = load_policy(args.policy_file, model=trace.meta.model.name) if args.policy_file else None
    if policy is not None and policy.system not in names:
        raise UserError(f"policy file {args.policy_file} configures {policy.system}, which is not among --systems "
                        f"({', '.join(names)})")
    for name in names:  # every layout first: a budget too small for one system fails before any run
        layout_for(trace, get_system(name), budget, SimConfig.context)
    results = []
    for name in tqdm(names, desc="simulate", unit="system", disable=None, leave=False):
        cfg = SimConfig(system=name, budget_bytes=budget, hardware=hardware, seed=args.seed,
                        policy=resolve_policy(name, policy), record=bool(args.timeline))
        results.append(simulate(trace, cfg))
    if args.timeline:
        write_timeline(results, args.timeline)
    if args.per_token:
        write_per_token(results, args.per_token)
    if args.json:
        print_json({"trace": path, "hardware": hardware.name, "budget": budget, "systems": {
            r.system: r.to_dict() for r in results}})
        return 0
    print(f"trace {path}: {trace.meta.model.name}, {trace.n_tokens} tokens, routing {results[0].routing_source}")
    print(f"hardware {hardware.name}, budget {args.budget} ({budget:,} bytes), seed {args.seed}")
    rows = []
    for r in results:
        m = {**r.metrics, "hit_rate": 100 * r.metrics["hit_rate"], "pcie_gb": round(r.metrics["pcie_gb"])}
        rows.append([r.system] + [m[k] for _, k in COLUMNS[1:]])
    print_table([c for c, _ in COLUMNS] + ["cache slots"],
                [row + [r.layout.cache_slots_total] for row, r in zip(rows, results, strict=True)])
    return 0
