"""The lookahead trace: the contract between collector, simulator, runtime replay and analysis.

Greedy speculative decoding is deterministic along the target's greedy path, so one trace indexed by
position lets the simulator replay any draft length and any cycle boundaries. Per sequence:

  prompt_tokens   [P]            prompt token ids
  prompt_ids/w    [P, L, K]      routing of each prompt token in prefill (TTFT)
  tokens          [N]            y: the target's greedy tokens; prefill produces y[0]
  target_ids/w    [N, L, K]      R: routing of y[n] when the target consumes it (producing y[n+1])
  draft_tokens    [N, J]         d: the draft's J = k_max greedy tokens proposed at position n
  draft_ids/w     [N, J, L, K]   D: the draft's routing in its j-th forward, which consumes x_{j-1}
  verify_ids/w    [N, J+1, L, K] V: the target's routing of x_{j-1} when verifying the draft

where x_0 = y[n] and x_i = d[n, i] (1-based j). A cycle at n with draft length k drafts with D[n, :k] (the
Expert Lookahead Buffer), verifies the k+1 inputs x_0..x_k with V[n, :k+1] (so V[n, 0] == R[n]), and
accepts the longest prefix of d[n, :k] equal to y[n+1 : n+1+k] plus one target token. Ids are int16,
gate weights float32, each top-k row in the router's selection order (largest weight first for
softmax-top-k routers; Phi-3.5-MoE's sparsemixer picks its first expert, then its second).

Importers fill only prompt and target routing: J = 0 and `meta.lookahead` is False.

File: Parquet, one row per sequence with flat list columns, metadata as JSON under the key `moespeq`.

Usage:
    trace = read_trace("t.parquet"); write_trace(trace, "copy.parquet")
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moespeq.errors import UserError
from moespeq.spec import ModelSpec, QuantSpec

FORMAT_VERSION = 1
META_KEY = b"moespeq"
ID_DTYPE = np.int16
WEIGHT_DTYPE = np.float32
TOKEN_DTYPE = np.int64
_ROUTING = ("prompt", "target", "draft", "verify")  # each has <name>_ids and <name>_weights


@dataclass(frozen=True)
class TraceMeta:
    """What a trace is: the model it routes, where its routing came from, and how it was made."""

    model: ModelSpec
    k_max: int
    routing_source: str  # hf:<checkpoint> | synthetic:<generator+params> | import:<format>
    lookahead: bool = True  # False: only prompt/target routing (imported traces)
    draft_quant: QuantSpec | None = None
    prompts: list[str] = field(default_factory=list)
    tool_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # generator parameters, collection statistics
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        types = {"k_max": int, "routing_source": str, "lookahead": bool, "prompts": list, "tool_version": str,
                 "extra": dict, "version": int}
        for name, kind in types.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"TraceMeta.{name}={value!r} must be of type {kind.__name__}")
        if not all(isinstance(p, str) for p in self.prompts):
            raise ValueError("TraceMeta.prompts must be a list of strings")
        if self.k_max < 0 or (self.lookahead and self.k_max < 1):
            raise ValueError(f"TraceMeta.k_max={self.k_max}: a lookahead trace needs k_max >= 1")
        if self.routing_source.split(":", 1)[0] not in ("hf", "synthetic", "import"):
            raise ValueError(f"TraceMeta.routing_source={self.routing_source!r} must start with hf:, synthetic: or import:")

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TraceMeta:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("metadata is not a JSON object")
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise _VersionError(version)
        data["model"] = ModelSpec.from_dict(data["model"])
        if data.get("draft_quant") is not None:
            data["draft_quant"] = QuantSpec(**data["draft_quant"])
        return cls(**data)


class _VersionError(ValueError):
    def __init__(self, version: Any) -> None:
        super().__init__(f"trace format version {version!r} is not supported (this moespeq reads version {FORMAT_VERSION}); "
                         "re-collect or convert it with the moespeq that wrote it")


@dataclass
class SequenceTrace:
    """One prompt and its greedy continuation, with all routing (shapes in the module docstring)."""

    prompt_tokens: np.ndarray
    prompt_ids: np.ndarray
    prompt_weights: np.ndarray
    tokens: np.ndarray
    target_ids: np.ndarray
    target_weights: np.ndarray
    draft_tokens: np.ndarray
    draft_ids: np.ndarray
    draft_weights: np.ndarray
    verify_ids: np.ndarray
    verify_weights: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_prompt(self) -> int:
        return int(self.prompt_tokens.shape[0])

    def accepted(self) -> np.ndarray:
        """[N, J] bool: draft token j (0-based) at position n is accepted, given all before it were.

        False past the end of the generated sequence, where acceptance is unknown.
        """
        n, j = self.draft_tokens.shape
        future = np.full((n, j), -1, dtype=TOKEN_DTYPE)  # future[n, j] = y[n + 1 + j]
        for jj in range(j):
            future[: max(n - 1 - jj, 0), jj] = self.tokens[1 + jj:]
        return np.cumprod(self.draft_tokens == future, axis=1).astype(bool)

    def accepted_length(self, k: int) -> np.ndarray:
        """[N] accepted draft tokens at every position for draft length k (the bonus token excluded)."""
        return self.accepted()[:, :k].sum(axis=1)

    def empty_like_lookahead(self) -> bool:
        return self.draft_tokens.shape[1] == 0


@dataclass
class LookaheadTrace:
    meta: TraceMeta
    sequences: list[SequenceTrace]

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.sequences)


# ---- shapes and validation ----------------------------------------------------------------------------

def expected_shapes(meta: TraceMeta, n_prompt: int, n_tokens: int) -> dict[str, tuple[int, ...]]:
    L, K, J = meta.model.moe_layers, meta.model.top_k, meta.k_max if meta.lookahead else 0  # noqa: N806
    shapes = {"prompt_tokens": (n_prompt,), "tokens": (n_tokens,), "draft_tokens": (n_tokens, J)}
    leading = {"prompt": (n_prompt,), "target": (n_tokens,), "draft": (n_tokens, J),
               "verify": (n_tokens, J + 1 if J else 0)}
    for name, lead in leading.items():
        shapes[f"{name}_ids"] = shapes[f"{name}_weights"] = (*lead, L, K)
    return shapes


def _geometry(meta: TraceMeta) -> str:
    spec = meta.model
    return f"model {spec.name} (L={spec.moe_layers}, E={spec.experts}, K={spec.top_k}, k_max={meta.k_max})"


def validate_sequence(meta: TraceMeta, seq: SequenceTrace, where: str) -> None:
    """UserError unless every array has its shape, ids are distinct valid experts, weights are finite."""
    spec = meta.model
    shapes = expected_shapes(meta, seq.n_prompt, seq.n_tokens)
    for name, shape in shapes.items():
        got = getattr(seq, name).shape
        if got != shape:
            raise UserError(f"{where}: {name} has shape {got}, expected {shape} for {_geometry(meta)}")
    for name in _ROUTING:
        ids, weights = getattr(seq, f"{name}_ids"), getattr(seq, f"{name}_weights")
        if ids.size == 0:
            continue
        if ids.min() < 0 or ids.max() >= spec.experts:
            raise UserError(f"{where}: {name} routing names expert {int(ids.max())}, but {spec.name} has {spec.experts} experts")
        ordered = np.sort(ids, axis=-1)
        if spec.top_k > 1 and (ordered[..., 1:] == ordered[..., :-1]).any():
            raise UserError(f"{where}: {name} routing repeats an expert within one top-{spec.top_k} set")
        if not np.isfinite(weights).all():
            raise UserError(f"{where}: {name} gate weights are not all finite")
    for name in ("prompt_tokens", "tokens", "draft_tokens"):
        tok = getattr(seq, name)
        if tok.size and (tok.min() < 0 or tok.max() >= spec.vocab):
            raise UserError(f"{where}: {name} holds a token id outside the vocabulary of {spec.vocab}")


# ---- Parquet I/O ------------------------------------------------------------------------------------

_ARRAY_DTYPES: dict[str, type[np.generic]] = {
    "prompt_tokens": TOKEN_DTYPE, "tokens": TOKEN_DTYPE, "draft_tokens": TOKEN_DTYPE,
    **{f"{name}_ids": ID_DTYPE for name in _ROUTING}, **{f"{name}_weights": WEIGHT_DTYPE for name in _ROUTING},
}
_ARROW_TYPES = {np.dtype(ID_DTYPE): pa.int16(), np.dtype(WEIGHT_DTYPE): pa.float32(), np.dtype(TOKEN_DTYPE): pa.int64()}


def write_trace(trace: LookaheadTrace, path: str | Path) -> None:
    """Validate and write; the file is complete or absent (written to a temporary name, then renamed)."""
    path = Path(path)
    for i, seq in enumerate(trace.sequences):
        validate_sequence(trace.meta, seq, f"sequence {i}")
    columns: dict[str, pa.Array] = {
        "n_prompt": pa.array([s.n_prompt for s in trace.sequences], pa.int32()),
        "n_tokens": pa.array([s.n_tokens for s in trace.sequences], pa.int32()),
    }
    for name, dtype in _ARRAY_DTYPES.items():
        arrow_type = _ARROW_TYPES[np.dtype(dtype)]
        columns[name] = pa.array([np.ascontiguousarray(getattr(s, name), dtype=dtype).ravel() for s in trace.sequences],
                                 pa.list_(arrow_type))
    table = pa.table(columns).replace_schema_metadata({META_KEY: trace.meta.to_json().encode()})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


# What pyarrow raises on damaged files (UnicodeDecodeError is a ValueError: a damaged column name).
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, IndexError, TypeError, KeyError, OverflowError, AttributeError)


def _flat_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    column = table.column(name).combine_chunks()
    return column.offsets.to_numpy(), column.values.to_numpy(zero_copy_only=False)


def _read_table(path: Path) -> tuple[pa.Table, TraceMeta]:
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such trace file") from None
    except _READ_ERRORS as exc:
        raise UserError(f"{path}: not a moespeq trace (unreadable Parquet: {_first_sentence(str(exc))})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise UserError(f"{path}: not a moespeq trace (no '{META_KEY.decode()}' metadata in the Parquet file)")
    try:
        meta = TraceMeta.from_json(raw.decode())
    except _VersionError as exc:
        raise UserError(f"{path}: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, UserError) as exc:
        raise UserError(f"{path}: corrupt trace metadata ({str(exc).splitlines()[0][:160]})") from None
    return table, meta


def _expected_schema() -> dict[str, pa.DataType]:
    return {"n_prompt": pa.int32(), "n_tokens": pa.int32(),
            **{name: pa.list_(_ARROW_TYPES[np.dtype(dtype)]) for name, dtype in _ARRAY_DTYPES.items()}}


def _columns(table: pa.Table, path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Lengths and flat (offsets, values) per array column, after checking names, types and nulls."""
    for name, arrow_type in _expected_schema().items():
        if name not in table.column_names:
            raise UserError(f"{path}: corrupt trace (missing column {name!r})")
        column = table.column(name)
        if column.type != arrow_type or column.null_count:
            raise UserError(f"{path}: corrupt trace (column {name!r} is {column.type} with {column.null_count} nulls, "
                            f"expected {arrow_type} without nulls)")
    flat = {name: _flat_column(table, name) for name in _ARRAY_DTYPES}
    return table.column("n_prompt").to_numpy(), table.column("n_tokens").to_numpy(), flat


def _sequence_from_columns(meta: TraceMeta, i: int, n_prompt: int, n_tokens: int,
                           flat: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> SequenceTrace:
    if n_prompt < 0 or n_tokens < 0:
        raise UserError(f"{path}: sequence {i} has a negative length")
    shapes = expected_shapes(meta, n_prompt, n_tokens)
    arrays = {}
    for name, (offsets, values) in flat.items():
        chunk = values[offsets[i]:offsets[i + 1]]
        if chunk.size != int(np.prod(shapes[name])):
            raise UserError(f"{path}: sequence {i} column {name} holds {chunk.size} values, expected "
                            f"{int(np.prod(shapes[name]))} for shape {shapes[name]} of {_geometry(meta)}")
        arrays[name] = chunk.astype(_ARRAY_DTYPES[name], copy=False).reshape(shapes[name])
    seq = SequenceTrace(**arrays)
    validate_sequence(meta, seq, f"{path}: sequence {i}")
    return seq


def _first_sentence(message: str, limit: int = 160) -> str:
    """A library's error cut to its first sentence, so the one-line error ends where a thought ends."""
    line = message.splitlines()[0] if message else "no detail"
    end = line.find(". ")
    line = line[: end + 1] if end >= 0 else line
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_trace(path: str | Path) -> LookaheadTrace:
    """Load and validate; any problem is a one-line UserError naming the file."""
    path = Path(path)
    table, meta = _read_table(path)
    try:
        n_prompt, n_tokens, flat = _columns(table, path)
        sequences = [_sequence_from_columns(meta, i, int(n_prompt[i]), int(n_tokens[i]), flat, path)
                     for i in range(table.num_rows)]
    except _READ_ERRORS as exc:
        raise UserError(f"{path}: corrupt trace columns ({str(exc).splitlines()[0][:120]})") from None
    if not sequences:
        raise UserError(f"{path}: the trace holds no sequences")
    return LookaheadTrace(meta, sequences)


def demo_trace_path() -> Path:
    """The bundled demo trace (Phi-3.5-MoE geometry, synthetic routing; see moespeq/data/README.md)."""
    return Path(__file__).parent / "data" / "demo.parquet"
