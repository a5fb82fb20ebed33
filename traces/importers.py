"""Importing routing logged by other tools: target (and prompt) routing only, or aggregate popularity.

An imported trace has `meta.lookahead = False`, k_max 0, empty draft/verify arrays and routing_source
`import:<format>`; the simulator synthesizes draft and verify routing from a stated draft-fidelity model.
Token ids that a file does not carry are stored as 0; gate weights it does not carry are stored as 1/K;
meta.extra["import"] says which. Layer numbers may be MoE-layer indices (0..L-1), decoder-layer indices
(first_dense..layers-1, as DeepSeek loggers write them) or 1-based (Megatron's layer_number); any other
set of layers is an error, as is a file that does not log every MoE layer. Every bad record is a
UserError naming the file and line. Accepted input, per format:

vllm-jsonl   One JSON object per line, one record per token per layer, as written by the vLLM MoE loggers
             (a `FusedMoE.select_experts` patch; e.g. `VLLM_LOG_MOE` loggers and routing profilers):
               request    "request_id" | "req_id" | "problem_id" (with "dataset", if present, as a prefix)
               token      "token_idx" | "token_pos" | "token_index": the token's position in its request
               layer      "layer" | "layer_id"
               experts    "experts" | "topk_ids"           (K ints, in the router's order)
               weights    "gating_probs" | "topk_weights"  (K floats; optional)
               optional   "token_id" (int), "phase": "prefill" | "decode" (prefill rows become prompt routing)
             Records whose "type" is not "route" (the loggers' {"type": "meta", ...} header) and blank lines
             are skipped. A repeated (request, token, layer) with the same experts is a duplicated prefill
             record and is dropped (counted in meta.extra); with other experts it is an error, because then
             the logger wrote each forward's row index instead of the token position.
megatron-jsonl  One JSON object per line: one MoE layer's routing for the tokens of one forward, as dumped
             from Megatron-Core's TopKRouter (its `top_indices`):
               "top_indices"  [T][K] ints (or [K] for one token);  "layer" | "layer_number"
               optional "probs" | "scores" [T][K]; "sequence_id" | "sample_id" | "request_id" (default 0);
               "tokens" [T] token ids; "phase" as above.
             Lines of the same sequence and layer are concatenated in file order (prefill, then decode steps).
llamacpp-csv CSV from a llama.cpp eval-callback trace of the `ffn_moe_topk-<layer>` tensors, with a header:
               "layer,expert[,weight]"   one row per selected expert: K consecutive rows of one layer form
                                         one token's top-k set (in the router's order);
               "layer_id,expert_ids"     one row per token, the K ids space-separated.
             Rows come forward by forward: each forward lists layer after layer, all of its T tokens per
             layer. Leading forwards with T > 1 are the prompt (prefill chunks), T = 1 forwards are generated
             tokens, and a T > 1 forward after generation starts a new sequence. With a single MoE layer,
             forwards cannot be told apart: every token is taken as generated.
eam-npy      MoE-Infinity expert activation matrix: a NumPy .npy of counts [L, E] (or a stack [S, L, E],
             summed over S). Aggregate only: no trace, but a popularity JSON (write_popularity) that
             `moespeq synth --popularity` follows:
               {"format": "moespeq-popularity", "version": 1, "source": "import:eam-npy", "file": ...,
                "model": name, "layers": L, "experts": E, "matrices": S,
                "counts": [L][E] floats, "popularity": [L][E] (each layer's counts / their sum)}

Usage:
    trace = import_trace("vllm-jsonl", "routes.jsonl", get_model("qwen1.5-moe-a2.7b"))
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moespeq import __version__
from moespeq.errors import UserError
from moespeq.spec import ModelSpec
from moespeq.trace import ID_DTYPE, TOKEN_DTYPE, WEIGHT_DTYPE, LookaheadTrace, SequenceTrace, TraceMeta

TRACE_FORMATS = ("vllm-jsonl", "megatron-jsonl", "llamacpp-csv")
FORMATS = (*TRACE_FORMATS, "eam-npy")


@dataclass
class _Row:
    """One token's routing at one layer, and where it came from."""

    ids: list[int]
    weights: list[float] | None
    line: int
    token_id: int | None = None
    prompt: bool = False


@dataclass
class _Parsed:
    """sequence name -> file layer -> rows in token order; plus what the file lacked."""

    rows: dict[str, dict[int, list[_Row]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    duplicates_dropped: int = 0


# ---- shared record checks -------------------------------------------------------------------------------

def _first(record: dict[str, Any], keys: tuple[str, ...], where: str, required: bool = True) -> Any:
    for key in keys:
        if key in record:
            return record[key]
    if required:
        raise UserError(f"{where}: no {' / '.join(repr(k) for k in keys)} field")
    return None


def _int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{where}: {name} must be a non-negative integer, got {value!r}")
    return value


def _expert_ids(value: Any, spec: ModelSpec, where: str) -> list[int]:
    if not isinstance(value, list) or len(value) != spec.top_k:
        raise UserError(f"{where}: expected {spec.top_k} expert ids (top-{spec.top_k} of {spec.name}), got {value!r}")
    ids = [_int(v, "an expert id", where) for v in value]
    if max(ids) >= spec.experts:
        raise UserError(f"{where}: expert {max(ids)} does not exist ({spec.name} has {spec.experts} experts)")
    if len(set(ids)) != len(ids):
        raise UserError(f"{where}: expert ids {ids} repeat an expert")
    return ids


def _gate_weights(value: Any, k: int, where: str) -> list[float] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != k
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)):
        raise UserError(f"{where}: expected {k} finite gate weights, got {value!r}")
    return [float(v) for v in value]


def _phase(record: dict[str, Any], where: str) -> bool:
    """True for prompt (prefill) rows."""
    phase = record.get("phase", "decode")
    if phase not in ("prefill", "decode"):
        raise UserError(f"{where}: \"phase\" must be \"prefill\" or \"decode\", got {phase!r}")
    return phase == "prefill"


def _json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for every non-blank line; a line that is not a JSON object is an error."""
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None


def _line_of(where: str) -> int:
    return int(where.rsplit(":", 1)[1])


# ---- vLLM logger JSONL -------------------------------------------------------------------------------------

def _parse_vllm(path: Path, spec: ModelSpec) -> _Parsed:
    parsed = _Parsed()
    by_position: dict[tuple[str, int], dict[int, _Row]] = defaultdict(dict)  # (request, layer) -> token -> row
    for where, rec in _json_lines(path):
        if rec.get("type", "route") != "route":
            continue
        request = str(_first(rec, ("request_id", "req_id", "problem_id"), where))
        if "dataset" in rec:
            request = f"{rec['dataset']}/{request}"
        token = _int(_first(rec, ("token_idx", "token_pos", "token_index"), where), "the token index", where)
        layer = _int(_first(rec, ("layer", "layer_id"), where), "the layer", where)
        row = _Row(_expert_ids(_first(rec, ("experts", "topk_ids"), where), spec, where),
                   _gate_weights(_first(rec, ("gating_probs", "topk_weights"), where, required=False), spec.top_k, where),
                   _line_of(where), _optional_token(rec, where), _phase(rec, where))
        seen = by_position[(request, layer)]
        if token in seen:
            if seen[token].ids != row.ids:
                raise UserError(f"{where}: request {request} token {token} layer {layer} was logged on line "
                                f"{seen[token].line} with other experts; token_idx must be the token's position "
                                "in its request, not its row in a forward batch")
            parsed.duplicates_dropped += 1
            continue
        seen[token] = row
    for (request, layer), tokens in by_position.items():
        order = sorted(tokens)
        if order != list(range(order[0], order[0] + len(order))):
            missing = sorted(set(range(order[0], order[-1] + 1)) - set(order))[0]
            raise UserError(f"{path}: request {request} layer {layer} has no record for token {missing}")
        parsed.rows[request][layer] = [tokens[t] for t in order]
    return parsed


def _optional_token(rec: dict[str, Any], where: str) -> int | None:
    value = _first(rec, ("token_id",), where, required=False)
    return None if value is None else _int(value, "token_id", where)


# ---- Megatron routing JSONL ----------------------------------------------------------------------------

def _parse_megatron(path: Path, spec: ModelSpec) -> _Parsed:
    parsed = _Parsed()
    for where, rec in _json_lines(path):
        indices = _first(rec, ("top_indices",), where)
        layer = _int(_first(rec, ("layer", "layer_number"), where), "the layer", where)
        sequence = str(_first(rec, ("sequence_id", "sample_id", "request_id"), where, required=False) or 0)
        probs = _first(rec, ("probs", "scores"), where, required=False)
        tokens = _first(rec, ("tokens",), where, required=False)
        if isinstance(indices, list) and indices and not isinstance(indices[0], list):
            indices, probs = [indices], None if probs is None else [probs]  # one token
        if not isinstance(indices, list) or not indices:
            raise UserError(f"{where}: \"top_indices\" must be a non-empty [T][K] list")
        for name, values in (("probs", probs), ("tokens", tokens)):
            if values is not None and (not isinstance(values, list) or len(values) != len(indices)):
                raise UserError(f"{where}: \"{name}\" must list one entry per token ({len(indices)})")
        prompt = _phase(rec, where)
        for t, ids in enumerate(indices):
            parsed.rows[sequence][layer].append(_Row(
                _expert_ids(ids, spec, where), _gate_weights(None if probs is None else probs[t], spec.top_k, where),
                _line_of(where), None if tokens is None else _int(tokens[t], "a token id", where), prompt))
    return parsed


# ---- llama.cpp moe-trace CSV ---------------------------------------------------------------------------

def _llamacpp_selections(path: Path, spec: ModelSpec) -> list[tuple[int, _Row]]:
    """(file layer, row) per token and layer, in file order."""
    lines = _read_lines(path)
    if not lines:
        raise UserError(f"{path}: empty file; expected a header \"layer,expert\" or \"layer_id,expert_ids\"")
    header = [h.strip() for h in lines[0].split(",")]
    if header not in (["layer", "expert"], ["layer", "expert", "weight"], ["layer_id", "expert_ids"]):
        raise UserError(f"{path}:1: header {lines[0]!r} is not \"layer,expert[,weight]\" or \"layer_id,expert_ids\"")
    selections: list[tuple[int, _Row]] = []
    pending: list[tuple[int, int, float | None, int]] = []  # (layer, expert, weight, line) of a partial top-k set
    for number, cells in enumerate(csv.reader(lines[1:]), start=2):
        where = f"{path}:{number}"
        if not cells:
            continue
        if len(cells) != len(header):
            raise UserError(f"{where}: expected {len(header)} columns ({','.join(header)}), got {len(cells)}")
        try:
            layer = int(cells[0])
            values = [int(v) for v in cells[1].split()] if header[0] == "layer_id" else [int(cells[1])]
            weight = float(cells[2]) if len(header) == 3 else None
        except ValueError:
            raise UserError(f"{where}: not integers{' and a weight' if len(header) == 3 else ''}: {','.join(cells)}") from None
        if header[0] == "layer_id":
            selections.append((layer, _Row(_expert_ids(values, spec, where), None, number)))
            continue
        if pending and pending[0][0] != layer:
            raise UserError(f"{where}: layer {layer} starts before layer {pending[0][0]}'s top-{spec.top_k} set "
                            f"(from line {pending[0][3]}) is complete")
        pending.append((layer, values[0], weight, number))
        if len(pending) == spec.top_k:
            weights = None if weight is None else [p[2] for p in pending]
            row = _Row(_expert_ids([p[1] for p in pending], spec, where),
                       _gate_weights(weights, spec.top_k, where), pending[0][3])
            selections.append((layer, row))
            pending = []
    if pending:
        raise UserError(f"{path}:{pending[-1][3]}: the file ends inside a top-{spec.top_k} set")
    return selections


def _parse_llamacpp(path: Path, spec: ModelSpec) -> _Parsed:
    parsed = _Parsed()
    selections = _llamacpp_selections(path, spec)
    layers = sorted({layer for layer, _ in selections})
    runs: list[tuple[int, list[_Row]]] = []  # consecutive selections of one layer
    for layer, row in selections:
        if runs and runs[-1][0] == layer and len(layers) > 1:
            runs[-1][1].append(row)
        else:
            runs.append((layer, [row]))
    if len(layers) == 1:  # forwards cannot be told apart: each selection is one generated token
        parsed.rows["0"][layers[0]] = [row for _, rows in runs for row in rows]
        return parsed
    sequence, generating = -1, True
    for start in range(0, len(runs), len(layers)):
        forward = runs[start:start + len(layers)]
        first_line = forward[0][1][0].line
        if [layer for layer, _ in forward] != layers:
            raise UserError(f"{path}:{first_line}: a forward must list layers {layers} in order, "
                            f"got {[layer for layer, _ in forward]}")
        n_tokens = len(forward[0][1])
        if any(len(rows) != n_tokens for _, rows in forward):
            raise UserError(f"{path}:{first_line}: the layers of one forward hold different numbers of tokens "
                            f"{[len(rows) for _, rows in forward]}")
        prefill = n_tokens > 1
        if sequence < 0 or (prefill and generating):  # the first forward, or a prompt after generated tokens
            sequence += 1
        generating = not prefill
        for layer, rows in forward:
            for row in rows:
                row.prompt = prefill
            parsed.rows[str(sequence)][layer].extend(rows)
    return parsed


# ---- building the trace --------------------------------------------------------------------------------

def _layer_map(layers: set[int], spec: ModelSpec, path: Path) -> dict[int, int]:
    """File layer number -> MoE layer index 0..L-1."""
    n = spec.moe_layers
    for offset in (0, spec.first_dense, 1):
        if layers == set(range(offset, offset + n)):
            return {layer: layer - offset for layer in layers}
    raise UserError(f"{path}: the file logs layers {sorted(layers)[:8]}{'...' if len(layers) > 8 else ''} "
                    f"({len(layers)} layers), but {spec.name} has {n} MoE layers; a trace needs every MoE layer, "
                    f"numbered 0..{n - 1}, {spec.first_dense}..{spec.layers - 1} or 1..{n}")


def _sequence(name: str, by_layer: dict[int, list[_Row]], layer_map: dict[int, int], spec: ModelSpec,
              path: Path) -> SequenceTrace:
    counts = {layer: len(rows) for layer, rows in by_layer.items()}
    if set(by_layer) != set(layer_map) or len(set(counts.values())) != 1:
        raise UserError(f"{path}: sequence {name} has token counts per layer {dict(sorted(counts.items()))}; "
                        f"every layer of {sorted(layer_map)} needs a record for every token")
    ordered = [by_layer[layer] for layer in sorted(layer_map, key=layer_map.get)]  # [L][T]
    prompt_flags = [row.prompt for row in ordered[0]]
    n_prompt = sum(prompt_flags)
    if prompt_flags != [True] * n_prompt + [False] * (len(prompt_flags) - n_prompt):
        raise UserError(f"{path}: sequence {name} has prefill records after decode records (line {ordered[0][n_prompt].line})")
    ids = np.array([[row.ids for row in rows] for rows in ordered], dtype=ID_DTYPE).transpose(1, 0, 2)  # [T, L, K]
    weights = np.array([[row.weights or [1.0 / spec.top_k] * spec.top_k for row in rows] for rows in ordered],
                       dtype=WEIGHT_DTYPE).transpose(1, 0, 2)
    tokens = np.array([row.token_id or 0 for row in ordered[0]], dtype=TOKEN_DTYPE)
    if tokens.size and tokens.max() >= spec.vocab:
        raise UserError(f"{path}: sequence {name} has token id {int(tokens.max())} beyond {spec.name}'s vocabulary of {spec.vocab}")
    n_gen, n_layers, k = len(prompt_flags) - n_prompt, spec.moe_layers, spec.top_k
    return SequenceTrace(
        prompt_tokens=tokens[:n_prompt], prompt_ids=ids[:n_prompt], prompt_weights=weights[:n_prompt],
        tokens=tokens[n_prompt:], target_ids=ids[n_prompt:], target_weights=weights[n_prompt:],
        draft_tokens=np.zeros((n_gen, 0), TOKEN_DTYPE), draft_ids=np.zeros((n_gen, 0, n_layers, k), ID_DTYPE),
        draft_weights=np.zeros((n_gen, 0, n_layers, k), WEIGHT_DTYPE),
        verify_ids=np.zeros((n_gen, 0, n_layers, k), ID_DTYPE),
        verify_weights=np.zeros((n_gen, 0, n_layers, k), WEIGHT_DTYPE))


_PARSERS = {"vllm-jsonl": _parse_vllm, "megatron-jsonl": _parse_megatron, "llamacpp-csv": _parse_llamacpp}


def import_trace(fmt: str, path: str | Path, spec: ModelSpec) -> LookaheadTrace:
    """A target-routing-only trace of the routing logged in `path` (format in the module docstring)."""
    if fmt not in _PARSERS:
        raise UserError(f"--format {fmt!r}: a trace is imported from one of {', '.join(TRACE_FORMATS)}")
    path = Path(path)
    parsed = _PARSERS[fmt](path, spec)
    if not parsed.rows:
        raise UserError(f"{path}: no routing records")
    layer_map = _layer_map({layer for by_layer in parsed.rows.values() for layer in by_layer}, spec, path)
    names = list(parsed.rows)
    sequences = [_sequence(name, parsed.rows[name], layer_map, spec, path) for name in names]
    rows = [row for by_layer in parsed.rows.values() for rs in by_layer.values() for row in rs]
    has_tokens = all(row.token_id is not None for row in rows)
    has_weights = all(row.weights is not None for row in rows)
    extra = {"import": {
        "format": fmt, "file": str(path), "sequences": names, "records": len(rows),
        "duplicates_dropped": parsed.duplicates_dropped,
        "layer_numbers_in_file": sorted(layer_map),
        "token_ids": "from the file" if has_tokens else "not in the file: stored as 0",
        "gate_weights": "from the file" if has_weights else f"not in the file: stored as 1/K = {1 / spec.top_k:.4g}",
    }}
    meta = TraceMeta(model=spec, k_max=0, routing_source=f"import:{fmt}", lookahead=False,
                     tool_version=__version__, extra=extra)
    return LookaheadTrace(meta, sequences)


# ---- MoE-Infinity activation matrix --------------------------------------------------------------------

def read_activation_matrix(path: str | Path, spec: ModelSpec) -> tuple[np.ndarray, int]:
    """(counts [L, E] float64, number of matrices summed) from an EAM .npy of [L, E] or [S, L, E]."""
    path = Path(path)
    try:
        matrix = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: not a NumPy .npy array ({str(exc).splitlines()[0][:120]})") from None
    if matrix.ndim not in (2, 3) or matrix.shape[-2:] != (spec.moe_layers, spec.experts):
        raise UserError(f"{path}: activation matrix has shape {matrix.shape}, expected [{spec.moe_layers}, "
                        f"{spec.experts}] (or [S, {spec.moe_layers}, {spec.experts}]) for {spec.name}")
    if not np.issubdtype(matrix.dtype, np.number) or not np.isfinite(matrix).all() or (matrix < 0).any():
        raise UserError(f"{path}: activation counts must be finite non-negative numbers")
    stacked = matrix.reshape(-1, spec.moe_layers, spec.experts).astype(np.float64)
    counts = stacked.sum(axis=0)
    empty = np.flatnonzero(counts.sum(axis=1) == 0)
    if empty.size:
        raise UserError(f"{path}: MoE layer {int(empty[0])} has no activations; popularity needs counts in every layer")
    return counts, stacked.shape[0]


def write_popularity(path: str | Path, spec: ModelSpec, out: str | Path) -> dict[str, Any]:
    """Write the popularity JSON of an EAM .npy (format in the module docstring); returns what it wrote."""
    counts, matrices = read_activation_matrix(path, spec)
    data = {"format": "moespeq-popularity", "version": 1, "source": "import:eam-npy", "file": str(path),
            "model": spec.name, "layers": spec.moe_layers, "experts": spec.experts, "matrices": matrices,
            "counts": counts.tolist(), "popularity": (counts / counts.sum(axis=1, keepdims=True)).tolist()}
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out)
    return data
