"""`moespeq hardware`: the hardware profiles and where their numbers come from."""

from moespeq.commands.output import print_json, print_table
from moespeq.hardware import HARDWARE_PRESETS, get_hardware, save_hardware

HELP = "list hardware profiles (PCIe bandwidth vs size, HBM, FLOP/s) with their sources; --save writes one as JSON"

_SIZES = (2**20, 16 * 2**20, 64 * 2**20, 2**30)


def add_arguments(p):
    p.add_argument("name", nargs="?", help="one profile: a preset name or a profile .json")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--save", metavar="FILE", help="write the named profile to FILE (edit it, pass it to --hardware)")


def run(args) -> int:
    profiles = [get_hardware(args.name)] if args.name else list(HARDWARE_PRESETS.values())
    if args.save:
        save_hardware(profiles[0], args.save)
    if args.json:
        print_json([p.to_dict() for p in profiles] if not args.name else profiles[0].to_dict())
        return 0
    rows = [(p.name, *(f"{p.h2d_gbps(s):.1f}" for s in _SIZES), f"{p.h2d_gbps(2**26, pinned=False):.1f}",
             p.h2d_during_d2h_gbps, p.hbm_gbps, p.bf16_tflops) for p in profiles]
    print_table(("profile", "H2D 1MiB", "16MiB", "64MiB", "1GiB", "pageable", "H2D|D2H", "HBM GB/s", "bf16 TFLOP/s"), rows)
    for p in profiles:
        print(f"\n{p.name}: {p.gpu}\n  source: {p.source}")
    return 0
