"""How well the draft predicts the target, from a lookahead trace: the statistics `collect` prints and stores.

Per MoE layer, the draft's top-k set for an input x_j (D[n, j], its (j+1)-th forward) is compared with the
target's for the same input when verifying (V[n, j]), over every position n and draft step j < k_max:
  hard  same experts in the same order (the paper's Fig. 6 reports 44.1 % on Qwen1.5-MoE, top-4)
  soft  same set, other order                                        (46.8 %)
  miss  not the same set: at least one expert differs                (9.1 %)
Acceptance by draft position j (1-based): `cumulative` = P(d[n, 1..j] all accepted), `conditional` =
P(d[n, j] accepted | d[n, 1..j-1] accepted) (the p_j of the governor's model, paper §3.2), both over the
positions n whose future y[n + j] is known (n + j < N).

Dimension letters: N positions, J draft steps, L MoE layers, K top-k.

Usage:
    stats = lookahead_stats(trace.sequences)   # {"agreement": {...}, "acceptance": [...]}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from moespeq.trace import SequenceTrace


def agreement_counts(draft_ids: np.ndarray, verify_ids: np.ndarray) -> np.ndarray:
    """[L, 3] counts of (hard, soft, miss) for draft_ids [N, J, L, K] against verify_ids [N, J(+1), L, K]."""
    n_steps = draft_ids.shape[1]
    draft, verify = draft_ids, verify_ids[:, :n_steps]  # V[n, j] routes the same input x_j as D[n, j]
    hard = (draft == verify).all(axis=-1)  # [N, J, L]
    same_set = (np.sort(draft, axis=-1) == np.sort(verify, axis=-1)).all(axis=-1)
    soft = same_set & ~hard
    miss = ~same_set
    return np.stack([m.sum(axis=(0, 1)) for m in (hard, soft, miss)], axis=1)  # [L, 3]


def acceptance_counts(seq: SequenceTrace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per draft position j: (positions with known future, all 1..j accepted, all 1..j-1 accepted) [J] each."""
    n, n_steps = seq.draft_tokens.shape
    accepted = seq.accepted()  # [N, J] cumulative
    known = np.arange(n)[:, None] + 1 + np.arange(n_steps)[None, :] < n  # y[n + 1 + j] exists (0-based j)
    before = np.concatenate([np.ones((n, 1), bool), accepted[:, :-1]], axis=1)  # 1..j-1 accepted
    return known.sum(axis=0), (accepted & known).sum(axis=0), (before & known).sum(axis=0)


def lookahead_stats(sequences: Sequence[SequenceTrace]) -> dict[str, Any]:
    """Agreement per layer and overall, and acceptance by draft position, as JSON-ready fractions."""
    counts = sum(agreement_counts(s.draft_ids, s.verify_ids) for s in sequences)  # [L, 3]
    known, cumulative, before = (sum(parts) for parts in zip(*(acceptance_counts(s) for s in sequences), strict=True))
    return {
        "agreement": {
            "layers": [_fractions(row) for row in counts],
            "overall": _fractions(counts.sum(axis=0)),
        },
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
    return float(num) / float(den) if den else None  # None: nothing to measure (JSON null)
