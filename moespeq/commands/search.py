"""`moespeq search`: tune speq's governor and scheduler offline; writes the best policy and a Pareto table."""

from moespeq.commands.output import print_table

HELP = ("search speq's policy knobs (k range, EMA, warm-up, Phase II aggressiveness, eviction tie-breaks, cache "
        "split) with a grid + scipy differential evolution in parallel; writes the best policy JSON and a Pareto table")


def add_arguments(p):
    from moespeq.commands.simulate import DEFAULT_BUDGET, DEFAULT_HARDWARE
    from moespeq.sim.search import SearchConfig

    p.add_argument("--trace", help="lookahead trace (.parquet); default: the bundled demo trace")
    p.add_argument("--hardware", default=DEFAULT_HARDWARE, help=f"profile name or .json (default {DEFAULT_HARDWARE})")
    p.add_argument("--budget", default=DEFAULT_BUDGET, help=f"GPU memory budget (default {DEFAULT_BUDGET})")
    slo = p.add_mutually_exclusive_group()
    slo.add_argument("--slo-tpot-ms", type=float, help="minimize TTFT subject to TPOT <= this")
    slo.add_argument("--slo-ttft-ms", type=float, help="minimize TPOT subject to TTFT <= this")
    p.add_argument("--evals", type=int, default=SearchConfig.evals, help="simulations to run in all")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the search and of the simulations")
    p.add_argument("--out", required=True, help="best policy JSON; the Pareto table goes to <out>.pareto.csv")


def run(args) -> int:
    from pathlib import Path

    import pandas as pd
    from tqdm import tqdm

    from moespeq.commands.config import make_config
    from moespeq.commands.simulate import load_inputs
    from moespeq.policy.config import save_policy
    from moespeq.sim.search import SearchConfig, search

    path, trace, hardware, budget = load_inputs(args)
    cfg = make_config(SearchConfig, trace_path=str(path), hardware=args.hardware, budget_bytes=budget, evals=args.evals,
                      jobs=args.jobs, seed=args.seed, slo_tpot_ms=args.slo_tpot_ms, slo_ttft_ms=args.slo_ttft_ms)
    with tqdm(total=cfg.evals, desc="search", unit="sim", disable=None) as bar:
        result = search(cfg, progress=bar.update)
    save_policy(result.best, args.out)
    rows = [{"tpot_ms": e.tpot_ms, "ttft_ms": e.ttft_ms, **e.grid, **e.knobs} for e in result.pareto()]
    pareto_path = Path(args.out).with_suffix(".pareto.csv")
    pd.DataFrame(rows).to_csv(pareto_path, index=False)
    best = result.best_eval
    print(f"{len(result.evaluations)} simulations of speq on {path} ({hardware.name}, {args.budget})")
    print(f"best: TPOT {best.tpot_ms:.3f} ms, TTFT {best.ttft_ms:.1f} ms -> {args.out}")
    print(f"Pareto front (TPOT vs TTFT) -> {pareto_path}")
    print_table(list(rows[0]), [list(r.values()) for r in rows])
    return 0
