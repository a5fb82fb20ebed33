"""The Expert Lookahead Buffer (ELB, paper §3.3.1): what the draft says verification will need.

For draft length k and L MoE layers it holds k x L entries, each the draft's full top-K set with its gate
weights (the paper stores one (id, confidence) per entry; with K > 1 an entry must hold the whole set).
It is summarized as [L, E] arrays because every decision asks "is (layer, expert) predicted, how often,
how confidently", never "which row":

  mask        [L, E] bool   predicted by at least one row
  reuse       [L, E] int    rows predicting it (verification tokens that will share one load)
  confidence  [L, E] float  summed gate weight over those rows
  first_row   [L, E] int    the earliest row predicting it (row 0 = the first verified token)

`verify_layer` is where verification is (-1 while drafting); an expert predicted at a layer not yet
verified is next used at that layer, otherwise its next use is unknown (`next_use`).

Usage:
    elb = ExpertLookaheadBuffer(layers=32, experts=16); elb.start(k=4); elb.add(ids, weights)  # ids [L, K]
"""

from __future__ import annotations

import numpy as np

#: next-use distance of an expert the ELB does not predict (farther than any layer)
FAR = 1 << 20


class ExpertLookaheadBuffer:
    def __init__(self, layers: int, experts: int) -> None:
        self.L, self.E = layers, experts
        self._row_starts = np.arange(layers)[:, None] * experts  # [L, 1] flat index of each layer's expert 0
        self._layer_of = np.repeat(np.arange(layers), experts)  # [L*E] layer of each flat index
        self.mask = np.zeros((layers, experts), dtype=bool)
        self.reuse = np.zeros((layers, experts), dtype=np.int32)
        self.confidence = np.zeros((layers, experts), dtype=np.float64)
        self.first_row = np.full((layers, experts), FAR, dtype=np.int64)
        # [L*E] views of the four, for flat indexing
        self._flat_views = tuple(a.reshape(-1) for a in (self.mask, self.reuse, self.confidence, self.first_row))
        self._predicted_layer = np.full(layers * experts, -1)  # [L*E] layer of each predicted expert, else -1
        self._next_use = np.full(layers * experts, FAR, dtype=np.int64)  # [L*E] see next_use
        self.k = 0
        self.rows = 0
        self.verify_layer = -1

    def start(self, k: int) -> None:
        """Empty the buffer for a cycle of draft length k."""
        if self.rows:  # else nothing was added since it was last emptied (plain decoding: most cycles)
            self.mask[:] = False
            self.reuse[:] = 0
            self.confidence[:] = 0.0
            self.first_row[:] = FAR
            self._predicted_layer[:] = -1
            self._next_use[:] = FAR
        self.k, self.rows, self.verify_layer = k, 0, -1

    def add(self, ids: np.ndarray, weights: np.ndarray) -> None:
        """Append one draft forward's routing: ids, weights [L, K] (ids distinct within a row)."""
        mask, reuse, confidence, first_row = self._flat_views
        at = (self._row_starts + ids).ravel()  # [L*K] distinct pairs, so plain gathers/scatters (no ufunc.at)
        mask[at] = True
        reuse[at] += 1
        confidence[at] += weights.ravel()
        first_row[at] = np.minimum(first_row[at], self.rows)
        self._predicted_layer[at] = self._layer_of[at]
        self.rows += 1
        self._refresh_next_use()

    def verify_at(self, layer: int) -> None:
        """Verification is now computing `layer` (experts of earlier layers are no longer needed this cycle)."""
        if not self.rows:  # nothing predicted (plain decoding): every next use is already FAR
            self.verify_layer = layer
            return
        passed_from = max(self.verify_layer, 0)
        self.verify_layer = layer
        if layer >= passed_from:  # the usual step forward: the layers just passed lose their predictions
            self._next_use[passed_from * self.E: layer * self.E] = FAR
        else:  # a new pass over the same buffer (a prefill after the last cycle): earlier layers count again
            self._refresh_next_use()

    def _refresh_next_use(self) -> None:
        self._next_use = np.where(self._predicted_layer >= max(self.verify_layer, 0), self._predicted_layer, FAR)

    def next_use(self) -> np.ndarray:
        """[L*E] the verify layer at which each expert is next needed (FAR when the ELB predicts no use at
        or after the current one). Kept current as rows arrive and verification advances, so it is cheap
        to ask at every decision; callers must not modify it."""
        return self._next_use
