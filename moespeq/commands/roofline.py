"""`moespeq roofline`: the Amortization Roofline operating points (I_amort, Theta) of k = 0..k_max."""

from moespeq.commands.output import print_json, print_table

HELP = "Amortization Roofline operating points for k = 0..k_max: I_amort, Theta, compute and I/O roofs, simulated tok/s"


def add_arguments(p):
    from moespeq.commands.simulate import DEFAULT_BUDGET, DEFAULT_HARDWARE

    p.add_argument("--trace", help="lookahead trace (.parquet); default: the bundled demo trace")
    p.add_argument("--hardware", default=DEFAULT_HARDWARE, help=f"profile name or .json (default {DEFAULT_HARDWARE})")
    p.add_argument("--budget", default=DEFAULT_BUDGET, help=f"GPU memory budget (default {DEFAULT_BUDGET})")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--json", action="store_true", help="print JSON")


COLUMNS = (("k", "k"), ("tok/cycle", "tokens_per_cycle"), ("N_new", "new_experts"),
           ("I_amort tok/GB", "i_amort_tok_per_gb"), ("T_cycle ms", "t_cycle_ms"),
           ("compute roof", "compute_roof_tok_s"), ("I/O roof", "io_roof_tok_s"), ("Theta model", "theta_tok_s"),
           ("Theta sim", "simulated_tok_s"))


def run(args) -> int:
    from moespeq.commands.simulate import load_inputs
    from moespeq.sim.roofline import roofline_points

    path, trace, hardware, budget = load_inputs(args)
    rows = roofline_points(trace, hardware, budget, args.seed)
    if args.json:
        print_json({"trace": path, "hardware": hardware.name, "budget": budget, "points": rows})
        return 0
    print(f"trace {path}, hardware {hardware.name}, budget {args.budget}; throughput in tokens/s")
    print_table([c for c, _ in COLUMNS], [[row[k] for _, k in COLUMNS] for row in rows])
    best = max(rows, key=lambda r: r["theta_tok_s"])
    print(f"\nmodel's k* = {best['k']} (Theta {best['theta_tok_s']:.3g} tok/s); "
          f"simulated best k = {max(rows, key=lambda r: r['simulated_tok_s'])['k']}")
    return 0
