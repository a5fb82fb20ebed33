"""`moespeq export TRACE --format jsonl --out F`: the trace as one JSON object per line.

Routing lines: {"seq", "kind", "pos", "j", "layer", "experts", "weights"} with kind prompt | target
(j = 0), draft (j = 1..k_max: the draft's j-th forward) or verify (j = 1..k_max+1: the j-th of the
k_max+1 inputs a full verification processes). Token lines: {"seq", "kind": "token", "pos", "token",
"draft_tokens"}, one per generated position.
"""

import json
from pathlib import Path

from moespeq.errors import UserError
from moespeq.trace import read_trace

HELP = "export a trace as JSON lines (routing records and per-position token records)"


def add_arguments(p):
    p.add_argument("trace", help="trace file")
    p.add_argument("--format", default="jsonl", choices=["jsonl"], help="output format")
    p.add_argument("--out", required=True, help="output file")


def _routing_lines(seq_index, kind, ids, weights, j_offset):
    """ids/weights [T, (J,) L, K] -> one record per (pos, j, layer)."""
    if ids.ndim == 3:
        ids, weights, j_offset = ids[:, None], weights[:, None], 0
    for pos in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            for layer in range(ids.shape[2]):
                yield {"seq": seq_index, "kind": kind, "pos": pos, "j": j + j_offset, "layer": layer,
                       "experts": ids[pos, j, layer].tolist(), "weights": [round(float(w), 6) for w in weights[pos, j, layer]]}


def run(args) -> int:
    trace = read_trace(args.trace)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    tmp = out.with_name(out.name + ".tmp")
    lines = 0
    with tmp.open("w") as f:
        for i, seq in enumerate(trace.sequences):
            parts = [("prompt", seq.prompt_ids, seq.prompt_weights, 0), ("target", seq.target_ids, seq.target_weights, 0),
                     ("draft", seq.draft_ids, seq.draft_weights, 1), ("verify", seq.verify_ids, seq.verify_weights, 1)]
            for kind, ids, weights, j_offset in parts:
                for record in _routing_lines(i, kind, ids, weights, j_offset):
                    f.write(json.dumps(record) + "\n")
                    lines += 1
            for pos in range(seq.n_tokens):
                f.write(json.dumps({"seq": i, "kind": "token", "pos": pos, "token": int(seq.tokens[pos]),
                                    "draft_tokens": seq.draft_tokens[pos].tolist()}) + "\n")
                lines += 1
    tmp.replace(out)
    print(f"wrote {lines} lines to {out}")
    return 0
