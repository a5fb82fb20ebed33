"""`moespeq figures`: draw every figure from saved data files and list each one's inputs."""

from pathlib import Path

from moespeq.errors import UserError

HELP = "draw the figures from the data files of `moespeq report` (never reruns anything) and index them in a README"


def add_arguments(p):
    p.add_argument("--results", default="results", help="folder of data files written by `moespeq report`")
    p.add_argument("--out", default="paper_figs", help="folder for the figures and their README")


def run(args) -> int:
    from moespeq.analysis.figures import make_figures

    results, out = Path(args.results), Path(args.out)
    if not results.is_dir():
        raise UserError(f"--results {results} is not a folder; run `moespeq report --out {results}` first")
    drawn = make_figures(results, out)
    if not drawn:
        raise UserError(f"{results} holds no data files that a figure reads; run `moespeq report --out {results}`")
    lines = ["# Figures", "", f"Drawn by `moespeq figures --results {results} --out {out}` from the data files that",
             f"`moespeq report --out {results}` computed (each data file records its own command and versions).", "",
             "| figure | shows | inputs |", "|---|---|---|"]
    lines += [f"| `{name}` | {caption} | {', '.join(f'`{i}`' for i in inputs)} |" for name, caption, inputs in drawn]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    for name, _, _ in drawn:
        print(f"wrote {out / name}")
    return 0
