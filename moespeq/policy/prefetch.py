"""Prefetchers: which experts to copy before a layer asks for them, told events, returning requests.

A request is a tuple (step, layer, expert, score): fetch `expert` of `layer` for decoding step `step`;
the copy queue orders requests by (step, layer, -score) and drops one whose step and layer have passed.
Prefetchers only name experts the cache lacks (ABSENT); admission and victims are the cache's business.

  none      nothing: every miss is fetched on demand.
  gate      next-layer gate prediction (Pre-gated MoE, ProMoE): when layer l routes, the gate of layer
            l+1 applied to layer l's hidden state predicts l+1's experts, which are fetched at once. The
            driver passes the prediction (`predicted_next`): the runtime computes it, the simulator
            draws it from the true routing at a stated accuracy (ProMoE's 84.7 %, paper §2.5).
  eam       activation-matrix matching in the style of MoE-Infinity: the current window's layer x expert
            count matrix (EAM) is matched by cosine similarity against stored EAMs (the prompts' and
            every finished window of `window` decoded tokens, never the future), and the matched
            matrix's `width` most active experts of each of the next `depth` layers are fetched,
            scored by their share of the row. Re-matched at every layer as the current EAM fills.
  perfect   the oracle: at each step start, every expert the step will need; after each layer, the
            next step's experts of that layer (so copies never stop). Uses the true schedule.
  elb       MoE-SpeQ's three-phase scheduler (moespeq.policy.scheduler).

Usage:
    pf = GatePrefetcher(cache); requests = pf.on_router(layer, ids, predicted_next)
"""

from __future__ import annotations

import numpy as np

from moespeq.policy.cache import ABSENT, ExpertCache
from moespeq.policy.eviction import FutureUses

Request = tuple[int, int, int, float]  # (step, layer, expert, score)


class Prefetcher:
    """The decision points (DESIGN §4); each returns the requests it wants queued."""

    name = "none"

    def __init__(self, cache: ExpertCache) -> None:
        self.cache = cache
        self.step = 0

    def begin_step(self, step: int, tokens: int, k: int) -> list[Request]:
        """A step starts: a prefill of `tokens` prompt tokens, or a cycle verifying k + 1 tokens."""
        self.step = step
        return []

    def on_draft_row(self, j: int, ids: np.ndarray, weights: np.ndarray, backlog_s: float) -> list[Request]:
        """Draft forward j (0-based) routed to ids/weights [L, K]; the copy queue needs backlog_s to drain."""
        return []

    def on_router(self, layer: int, ids: np.ndarray, predicted_next: np.ndarray | None) -> list[Request]:
        """A verify layer routed its tokens to ids [T, K]; predicted_next [T, K] guesses layer + 1."""
        return []

    def on_layer_done(self, layer: int) -> list[Request]:
        return []

    def end_step(self, tokens: int) -> None:
        """The step produced (or prefilled) `tokens` tokens."""

    def _absent(self, layer: int, experts: np.ndarray) -> np.ndarray:
        return experts[self.cache.state[layer * self.cache.E + experts] == ABSENT]


class NoPrefetch(Prefetcher):
    name = "none"


class GatePrefetcher(Prefetcher):
    name = "gate"

    def on_router(self, layer: int, ids: np.ndarray, predicted_next: np.ndarray | None) -> list[Request]:
        if predicted_next is None:
            return []
        experts, votes = np.unique(predicted_next, return_counts=True)
        wanted = self._absent(layer + 1, experts)
        score = dict(zip(experts.tolist(), votes.tolist(), strict=True))
        return [(self.step, layer + 1, e, float(score[e])) for e in wanted.tolist()]


class EamPrefetcher(Prefetcher):
    name = "eam"

    def __init__(self, cache: ExpertCache, top_k: int, window: int = 16, width: int = 0, depth: int = 0,
                 library_size: int = 256) -> None:
        super().__init__(cache)
        self.L, self.E = cache.L, cache.E
        self.window, self.width = window, width or top_k
        self.depth = depth or self.L
        self.library_size = library_size
        self.current = np.zeros((self.L, self.E))  # [L, E] counts of the current window
        self.window_tokens = 0
        self.library = np.zeros((0, self.L * self.E))  # [M, L*E] unit-norm stored EAMs
        self.raw = np.zeros((0, self.L, self.E))  # [M, L, E] the same, as counts
        self.requested = np.zeros((self.L, self.E), dtype=bool)

    def begin_step(self, step: int, tokens: int, k: int) -> list[Request]:
        self.requested[:] = False
        return super().begin_step(step, tokens, k)

    def on_router(self, layer: int, ids: np.ndarray, predicted_next: np.ndarray | None) -> list[Request]:
        np.add.at(self.current[layer], ids.ravel(), 1.0)
        if not len(self.library) or layer + 1 >= self.L:
            return []
        query = self.current.ravel()
        match = self.raw[int(np.argmax(self.library @ query))]  # [L, E]
        hi = min(self.L, layer + 1 + self.depth)
        rows = match[layer + 1:hi]  # [D, E]
        top = np.argsort(-rows, axis=1, kind="stable")[:, : self.width]  # [D, W]
        share = np.take_along_axis(rows, top, axis=1) / np.maximum(rows.sum(axis=1, keepdims=True), 1e-12)
        requests = []
        for d, (experts, scores) in enumerate(zip(top, share, strict=True)):
            lay = layer + 1 + d
            for e, s in zip(experts.tolist(), scores.tolist(), strict=True):
                if s > 0 and not self.requested[lay, e] and self.cache.state[lay * self.E + e] == ABSENT:
                    self.requested[lay, e] = True
                    requests.append((self.step, lay, e, s))
        return requests

    def end_step(self, tokens: int) -> None:
        self.window_tokens += tokens
        if self.window_tokens >= self.window:
            flat = self.current.ravel()
            unit = flat / max(float(np.linalg.norm(flat)), 1e-12)
            self.library = np.vstack([self.library, unit[None]])[-self.library_size:]
            self.raw = np.concatenate([self.raw, self.current[None]])[-self.library_size:]
            self.current = np.zeros((self.L, self.E))
            self.window_tokens = 0


class PerfectPrefetcher(Prefetcher):
    name = "perfect"

    def __init__(self, cache: ExpertCache, future: FutureUses) -> None:
        super().__init__(cache)
        self.future = future

    def _needs(self, step: int, layers: range) -> list[Request]:
        if step >= self.future.S:
            return []
        out = []
        for layer in layers:
            for e in self._absent(layer, np.flatnonzero(self.future.need[step, layer])).tolist():
                out.append((step, layer, e, 0.0))
        return out

    def begin_step(self, step: int, tokens: int, k: int) -> list[Request]:
        super().begin_step(step, tokens, k)
        return self._needs(step, range(self.cache.L))

    def on_layer_done(self, layer: int) -> list[Request]:
        return self._needs(self.step + 1, range(layer, layer + 1))
