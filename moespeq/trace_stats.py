"""Statistics of a lookahead trace: expert load and entropy, reuse, draft agreement, acceptance.

These are what `moespeq inspect` prints and what the synthetic generator's tests check its knobs against.
Agreement compares the draft's and the target's top-k sets for the same input (paper Fig. 6):
hard = same set in the same order, soft = same set in another order, miss = a different set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moespeq.trace import LookaheadTrace


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


def agreement(trace: LookaheadTrace) -> dict[str, np.ndarray]:
    """Per-layer fractions {"hard", "soft", "miss"} [L] of draft vs verify routing over all draft inputs."""
    spec = trace.meta.model
    hard, soft, total = np.zeros(spec.moe_layers), np.zeros(spec.moe_layers), 0
    for seq in trace.sequences:
        if seq.draft_ids.size == 0:
            continue
        draft, verify = seq.draft_ids, seq.verify_ids[:, : seq.draft_ids.shape[1]]  # [N, J, L, K] each
        same_order = (draft == verify).all(axis=-1)
        same_set = (np.sort(draft, axis=-1) == np.sort(verify, axis=-1)).all(axis=-1)
        hard += same_order.sum(axis=(0, 1))
        soft += (same_set & ~same_order).sum(axis=(0, 1))
        total += draft.shape[0] * draft.shape[1]
    total = max(total, 1)
    return {"hard": hard / total, "soft": soft / total, "miss": 1 - (hard + soft) / total}


def acceptance_by_position(trace: LookaheadTrace) -> np.ndarray:
    """[J] P(draft token j accepted | tokens 1..j-1 accepted), over positions whose future is known."""
    J = trace.meta.k_max if trace.meta.lookahead else 0  # noqa: N806
    accepted, offered = np.zeros(J), np.zeros(J)
    for seq in trace.sequences:
        acc = seq.accepted()  # [N, J]
        for j in range(J):
            known = np.arange(seq.n_tokens) + j + 1 < seq.n_tokens
            prior = acc[:, j - 1] if j else np.ones(seq.n_tokens, bool)
            offered[j] += (known & prior).sum()
            accepted[j] += (known & acc[:, j]).sum()
    return accepted / np.maximum(offered, 1)


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
