"""Statistics of a lookahead trace: expert load and entropy, reuse, draft agreement, acceptance.

These are what `moespeq inspect` prints and what the synthetic generator's tests check its knobs against.
Agreement compares the draft's and the target's top-k sets for the same input (paper Fig. 6):
hard = same set in the same order, soft = same set in another order, miss = a different set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from moespeq.trace import LookaheadTrace, SequenceTrace


def expert_counts(trace: LookaheadTrace) -> np.ndarray:
    """[L, E] how often each expert is chosen along the target's greedy path."""
    spec = trace.meta.model
    counts = np.zeros((spec.moe_layers, spec.experts), dtype=np.int64)
    for seq in trace.sequences:
        for layer in range(spec.moe_layers):
            counts[layer] += np.bincount(seq.target_ids[:, layer].ravel().astype(np.int64), minlength=spec.experts)
    return counts


def entropy_bits(counts: np.ndarray) -> np.ndarray:
    """[L] Shannon entropy of each layer's expert distribution, in bits."""
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nansum(np.where(p > 0, p * np.log2(p), 0.0), axis=1)


def reuse_rate(trace: LookaheadTrace) -> np.ndarray:
    """[L] fraction of a token's experts that the previous token also used, per layer."""
    spec = trace.meta.model
    hits, total = np.zeros(spec.moe_layers), 0
    for seq in trace.sequences:
        ids = seq.target_ids.astype(np.int64)  # [N, L, K]
        if len(ids) < 2:
            continue
        same = (ids[1:, :, :, None] == ids[:-1, :, None, :]).any(axis=-1)  # [N-1, L, K]
        hits += same.sum(axis=(0, 2))
        total += same.shape[0] * spec.top_k
    return hits / max(total, 1)


def agreement_counts(draft_ids: np.ndarray, verify_ids: np.ndarray) -> np.ndarray:
    """[L, 3] counts of (hard, soft, miss) for draft_ids [N, J, L, K] against verify_ids [N, J(+1), L, K]."""
    draft, verify = draft_ids, verify_ids[:, : draft_ids.shape[1]]  # V[n, j] routes the same input as D[n, j]
    hard = (draft == verify).all(axis=-1)  # [N, J, L]
    same_set = (np.sort(draft, axis=-1) == np.sort(verify, axis=-1)).all(axis=-1)
    return np.stack([m.sum(axis=(0, 1)) for m in (hard, same_set & ~hard, ~same_set)], axis=1)  # [L, 3]


def acceptance_counts(seq: SequenceTrace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per draft position j: (positions whose future is known, 1..j accepted, 1..j-1 accepted), [J] each."""
    n, n_steps = seq.draft_tokens.shape
    accepted = seq.accepted()  # [N, J] cumulative
    known = np.arange(n)[:, None] + 1 + np.arange(n_steps)[None, :] < n  # y[n + 1 + j] exists (0-based j)
    before = np.concatenate([np.ones((n, 1), bool), accepted[:, :-1]], axis=1)
    return known.sum(axis=0), (accepted & known).sum(axis=0), (before & known).sum(axis=0)


def agreement(trace: LookaheadTrace) -> dict[str, np.ndarray]:
    """Per-layer fractions {"hard", "soft", "miss"} [L] of draft vs verify routing over all draft inputs."""
    counts = np.sum([agreement_counts(s.draft_ids, s.verify_ids) for s in trace.sequences], axis=0)  # [L, 3]
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return {name: fractions[:, i] for i, name in enumerate(("hard", "soft", "miss"))}


def acceptance_by_position(trace: LookaheadTrace) -> np.ndarray:
    """[J] P(draft token j accepted | tokens 1..j-1 accepted): the governor's p_j (paper §3.2)."""
    if not trace.meta.lookahead:
        return np.zeros(0)
    _, accepted, offered = _acceptance_totals(trace.sequences)
    return accepted / np.maximum(offered, 1)


def _acceptance_totals(sequences: Sequence[SequenceTrace]) -> np.ndarray:
    """[3, J] acceptance_counts summed over sequences."""
    return np.sum([np.stack(acceptance_counts(s)) for s in sequences], axis=0)


def lookahead_stats(sequences: Sequence[SequenceTrace]) -> dict[str, Any]:
    """Agreement per layer and overall, and acceptance by draft position (cumulative and conditional), as
    JSON-ready fractions; None where nothing was measured. `collect` prints and stores these."""
    counts = np.sum([agreement_counts(s.draft_ids, s.verify_ids) for s in sequences], axis=0)  # [L, 3]
    known, cumulative, before = _acceptance_totals(sequences)
    return {
        "agreement": {"layers": [_fractions(row) for row in counts], "overall": _fractions(counts.sum(axis=0))},
        "acceptance": [
            {"position": j + 1, "known": int(known[j]),
             "cumulative": _ratio(cumulative[j], known[j]), "conditional": _ratio(cumulative[j], before[j])}
            for j in range(len(known))
        ],
    }


def _fractions(row: np.ndarray) -> dict[str, Any]:
    total = int(row.sum())
    return {name: _ratio(row[i], total) for i, name in enumerate(("hard", "soft", "miss"))} | {"inputs": total}


def _ratio(num: Any, den: Any) -> float | None:
    return float(num) / float(den) if den else None


def summarize(trace: LookaheadTrace) -> dict[str, Any]:
    """Everything `moespeq inspect --json` prints."""
    meta, spec = trace.meta, trace.meta.model
    counts = expert_counts(trace)
    entropy = entropy_bits(counts)
    agree = agreement(trace) if meta.lookahead else None
    return {
        "model": spec.name, "arch": spec.arch, "routing_source": meta.routing_source, "lookahead": meta.lookahead,
        "format_version": meta.version, "tool_version": meta.tool_version, "k_max": meta.k_max,
        "sequences": len(trace.sequences), "tokens": trace.n_tokens,
        "prompt_tokens": sum(s.n_prompt for s in trace.sequences),
        "layers": [
            {"layer": layer, "entropy_bits": float(entropy[layer]), "max_entropy_bits": float(np.log2(spec.experts)),
             "top_expert_share": float(counts[layer].max() / max(counts[layer].sum(), 1)),
             "unused_experts": int((counts[layer] == 0).sum()), "reuse": float(r),
             **({k: float(v[layer]) for k, v in agree.items()} if agree else {})}
            for layer, r in enumerate(reuse_rate(trace))
        ],
        "agreement": {k: float(v.mean()) for k, v in agree.items()} if agree else None,
        "acceptance_by_position": acceptance_by_position(trace).tolist(),
    }
