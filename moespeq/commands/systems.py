"""`moespeq systems`: the decoding systems the simulator knows, their policies and their memory layout."""

from moespeq.commands.output import print_json, print_table

HELP = "list the decoding systems (policies, memory rule) and the cache each gets for a model and budget"


def add_arguments(p):
    from moespeq.commands.simulate import DEFAULT_BUDGET

    p.add_argument("--model", default="phi-3.5-moe", help="model preset or checkpoint folder (default phi-3.5-moe)")
    p.add_argument("--budget", default=DEFAULT_BUDGET, help=f"GPU memory budget (default {DEFAULT_BUDGET})")
    p.add_argument("--json", action="store_true", help="print JSON")


def _slots(spec, budget, name):
    from moespeq.budget import BudgetConfig, plan_memory
    from moespeq.errors import UserError

    try:
        layout = plan_memory(BudgetConfig(model=spec, budget_bytes=budget, system=name))
    except UserError:
        return None
    return layout


def run(args) -> int:
    from moespeq.sim.systems import SYSTEMS
    from moespeq.spec import resolve_model
    from moespeq.units import format_bytes, parse_bytes

    spec = resolve_model(args.model)
    budget = parse_bytes(args.budget, "--budget")
    layouts = {name: _slots(spec, budget, name) for name in SYSTEMS}
    if args.json:
        print_json({"model": spec.name, "budget": budget, "systems": {
            name: {"summary": s.summary, "memory_rule": s.memory_rule, "transfer": s.transfer,
                   "policy": s.policy(spec.name).to_dict(),
                   "memory": layouts[name].to_dict() if layouts[name] else None} for name, s in SYSTEMS.items()}})
        return 0
    print(f"{spec.name} at {args.budget}")
    rows = []
    for name, s in SYSTEMS.items():
        layout = layouts[name]
        slots = f"{layout.cache_slots_total}" if layout else "does not fit"
        if s.k_sweep and layout:  # without a draft (k = 0) the oracle takes the same-memory layout
            slots += f" (k=0: {_slots(spec, budget, 'lru-sm').cache_slots_total})"
        gov = s.governor.kind + (f" k={s.governor.k}" if s.governor.kind == "static" and not s.k_sweep else "")
        rows.append((name, s.memory_rule, f"{s.cache.eviction}/{s.cache.pool}", s.prefetch.kind,
                     "best static k" if s.k_sweep else gov, slots, s.summary))
    print_table(("system", "memory", "cache", "prefetch", "governor", "slots", "what it is"), rows)
    unfit = [n for n, lay in layouts.items() if lay is None]
    if unfit:
        print(f"\n{', '.join(unfit)}: the budget is below the minimum ({format_bytes(budget)}); see `moespeq budget`")
    return 0
