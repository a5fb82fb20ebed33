"""`moespeq calibrate`: measure this machine's GPU and PCIe link and write a hardware profile."""

HELP = ("measure H2D/D2H bandwidth vs size, HBM bandwidth, bf16 throughput and the MoE kernels' times on this GPU; "
        "write a hardware profile for `moespeq simulate --hardware`")


def add_arguments(p):
    p.add_argument("--model", default="phi-3.5-moe", help="model preset whose expert shapes the kernels are timed at")
    p.add_argument("--out", default="hw.json", metavar="FILE", help="where to write the profile (JSON)")
    p.add_argument("--tokens", default="1,2,4,8,12,16", help="token counts of the kernel tables")
    p.add_argument("--name", default="", help="profile name (default: calibrated-<gpu>)")
    p.add_argument("--no-tune", action="store_true", help="keep the launch parameters in runtime/configs as they are")


def run(args) -> int:
    import sys

    from moespeq.commands.output import print_table
    from moespeq.errors import UserError
    from moespeq.hardware import save_hardware
    from moespeq.runtime.backend import require_gpu
    from moespeq.runtime.calibrate import CalibrateConfig, calibrate

    try:
        tokens = tuple(int(t) for t in args.tokens.split(",") if t)
    except ValueError:
        raise UserError(f"--tokens {args.tokens!r}: give comma-separated integers, e.g. 1,4,8") from None
    cfg = CalibrateConfig(model=args.model, tokens=tokens, tune=not args.no_tune, name=args.name)
    require_gpu("moespeq calibrate")
    profile = calibrate(cfg, command="moespeq " + " ".join(sys.argv[1:]))
    save_hardware(profile, args.out)
    print_table(("size", "H2D pinned GB/s", "D2H pinned GB/s"),
                [(f"{s / 2**20:g} MiB", profile.h2d_pinned.at(s), profile.d2h_pinned.at(s)) for s in profile.h2d_pinned.size_bytes])
    print(f"\nH2D during D2H {profile.h2d_during_d2h_gbps:.1f} GB/s, pageable {profile.h2d_gbps(2**26, pinned=False):.1f} GB/s, "
          f"HBM copy {profile.hbm_gbps:.0f} GB/s, bf16 {profile.bf16_tflops:.0f} TFLOP/s, "
          f"overlap {profile.copy_compute_overlap:.3f}, launch {profile.launch_overhead_s * 1e6:.1f} us")
    print(f"wrote {args.out} ({profile.name}); use it with `moespeq simulate --hardware {args.out}`")
    return 0
