"""`moespeq bench --kernels`: time the MoE kernels, the bf16 library baseline, expert copies and overlap."""

HELP = "benchmark the fused INT4 MoE kernel, the bf16 verify kernel, expert H2D copies and copy/compute overlap on this GPU"


def add_arguments(p):
    from moespeq.runtime.bench_kernels import add_arguments as bench_arguments

    p.add_argument("--kernels", action="store_true", help="run the kernel benchmark (the only benchmark so far)")
    bench_arguments(p)


def run(args) -> int:
    import sys

    from moespeq.errors import UserError
    from moespeq.runtime.bench_kernels import run_from_args

    if not args.kernels:
        raise UserError("say what to benchmark: --kernels")
    return run_from_args(args, command="moespeq " + " ".join(sys.argv[1:]))
