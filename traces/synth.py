"""Synthetic lookahead traces with documented knobs, for what-if studies where no checkpoint is at hand.

Target routing is a Markov chain over tokens and layers. For each top-k slot of token t at layer l:
  with probability `locality`         repeat the expert in that slot for token t-1 (temporal reuse);
  else with probability `cross_layer` take pi_l(expert of the same slot at layer l-1), a fixed random
                                      permutation per layer (cross-layer correlation);
  else                                draw from layer l's popularity: Zipf(`skew`) over a random
                                      permutation of the experts, or a given [L, E] count matrix.
Experts stay distinct within a set; gate weights are a softmax of sorted Gaussian logits (slot 0 largest).

The draft's routing of an input equals the target's set with probability `draft_fidelity`, kept in the
same order with probability `order_fidelity` (hard match) or permuted (soft match); otherwise one expert
is replaced (miss). Draft token j is accepted with probability `acceptance` given tokens 1..j-1 were.
Verify routing follows the trace contract (moespeq/trace.py): on the greedy path it is the target
routing of that position; a rejected draft token continues the chain from the input before it.

Usage:
    trace = synthesize(SynthConfig(model=get_model("phi-3.5-moe"), seqs=2, tokens=192, k_max=8))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from moespeq import __version__
from moespeq.spec import ModelSpec, QuantSpec, get_model
from moespeq.trace import ID_DTYPE, TOKEN_DTYPE, WEIGHT_DTYPE, LookaheadTrace, SequenceTrace, TraceMeta


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; every one is recorded in the trace's routing_source and meta.extra."""

    model: ModelSpec
    seqs: int = 2
    tokens: int = 192  # generated tokens per sequence
    prompt_len: int = 64
    k_max: int = 8
    skew: float = 0.5  # Zipf exponent of per-layer expert popularity (0 = uniform)
    locality: float = 0.25  # P(a top-k slot repeats the previous token's expert)
    cross_layer: float = 0.3  # P(a slot follows the layer below through a fixed permutation)
    draft_fidelity: float = 0.909  # P(draft top-k set == target top-k set)
    order_fidelity: float = 0.485  # P(same order | same set)
    acceptance: float = 0.9  # P(draft token j accepted | 1..j-1 accepted)
    seed: int = 0
    popularity: tuple[tuple[float, ...], ...] | None = None  # [L, E] counts replacing the Zipf popularity

    def __post_init__(self) -> None:
        for name in ("seqs", "tokens", "prompt_len", "k_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"SynthConfig.{name}={getattr(self, name)} must be at least 1")
        for name in ("locality", "cross_layer", "draft_fidelity", "order_fidelity", "acceptance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SynthConfig.{name}={getattr(self, name)} must be in [0, 1]")
        if self.skew < 0:
            raise ValueError(f"SynthConfig.skew={self.skew} must be >= 0")
        if self.popularity is not None:
            shape = (len(self.popularity), len(self.popularity[0]) if self.popularity else 0)
            if shape != (self.model.moe_layers, self.model.experts):
                raise ValueError(f"SynthConfig.popularity has shape {shape}, expected "
                                 f"({self.model.moe_layers}, {self.model.experts}) for {self.model.name}")

    def knobs(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("skew", "locality", "cross_layer", "draft_fidelity", "order_fidelity",
                                              "acceptance", "seed")}

    def label(self) -> str:
        knobs = ",".join(f"{k}={v}" for k, v in self.knobs().items())
        return f"synthetic:markov-routing({knobs}{',popularity=given' if self.popularity else ''})"


def demo_config() -> SynthConfig:
    """The bundled demo trace: Phi-3.5-MoE geometry with the default knobs (sources in moespeq/data/README.md)."""
    return SynthConfig(model=get_model("phi-3.5-moe"))


class _RoutingModel:
    """Samples target routing rows, vectorized over a batch of independent chains (B rows at a time)."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator) -> None:
        spec = cfg.model
        self.cfg, self.rng, self.L, self.E, self.K = cfg, rng, spec.moe_layers, spec.experts, spec.top_k
        if cfg.popularity is not None:
            pop = np.asarray(cfg.popularity, dtype=np.float64) + 1e-9
        else:
            ranks = np.arange(1, self.E + 1, dtype=np.float64) ** -cfg.skew
            pop = np.stack([ranks[rng.permutation(self.E)] for _ in range(self.L)])  # [L, E]
        self.cdf = np.cumsum(pop / pop.sum(axis=1, keepdims=True), axis=1)  # [L, E]
        self.perm = np.stack([rng.permutation(self.E) for _ in range(self.L)])  # [L, E] layer l-1 -> l

    def _popular(self, layer: int, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf[layer], self.rng.random(n)), self.E - 1)

    def layer(self, layer: int, prev: np.ndarray | None, below: np.ndarray | None) -> np.ndarray:
        """[B, K] ids for one layer, given the previous token's ids [B, K] and the layer below's [B, K]."""
        B = (prev if prev is not None else below).shape[0] if (prev is not None or below is not None) else 1  # noqa: N806
        ids = np.full((B, self.K), -1, dtype=np.int64)
        for slot in range(self.K):
            u = self.rng.random(B)
            cand = self._popular(layer, B)
            if below is not None:
                cross = u >= self.cfg.locality
                cross &= self.rng.random(B) < self.cfg.cross_layer
                cand = np.where(cross, self.perm[layer][below[:, slot]], cand)
            if prev is not None:
                cand = np.where(u < self.cfg.locality, prev[:, slot], cand)
            dup = (ids[:, :slot] == cand[:, None]).any(axis=1)
            while dup.any():
                cand[dup] = self._popular(layer, int(dup.sum()))
                dup = (ids[:, :slot] == cand[:, None]).any(axis=1)
            ids[:, slot] = cand
        return ids

    def token(self, prev: np.ndarray | None, batch: int = 1) -> np.ndarray:
        """[B, L, K] ids of one token for B independent chains (prev: [B, L, K] or None)."""
        out = np.empty((batch, self.L, self.K), dtype=np.int64)
        for layer in range(self.L):
            out[:, layer] = self.layer(layer, None if prev is None else prev[:, layer],
                                       out[:, layer - 1] if layer else None)
        return out

    def chain(self, n: int, prev: np.ndarray | None = None) -> np.ndarray:
        """[n, L, K] ids of n consecutive tokens."""
        rows = []
        for _ in range(n):
            prev = self.token(prev)
            rows.append(prev[0])
        return np.stack(rows) if rows else np.empty((0, self.L, self.K), dtype=np.int64)

    def weights(self, shape: tuple[int, ...]) -> np.ndarray:
        """Gate weights [..., K], descending along the last axis, summing to 1."""
        logits = -np.sort(-self.rng.standard_normal((*shape, self.K)), axis=-1)
        w = np.exp(logits - logits[..., :1])
        return (w / w.sum(axis=-1, keepdims=True)).astype(WEIGHT_DTYPE)


def _draft_of(ids: np.ndarray, cfg: SynthConfig, model: _RoutingModel, rng: np.random.Generator) -> np.ndarray:
    """Draft routing [..., K] from target routing: hard match, soft match (permuted) or one expert replaced."""
    flat = ids.reshape(-1, ids.shape[-1]).copy()
    n, k = flat.shape
    u = rng.random(n)
    miss = u >= cfg.draft_fidelity
    soft = ~miss & (rng.random(n) >= cfg.order_fidelity) & (k > 1)
    for row in np.flatnonzero(soft):  # a permutation that is not the identity
        i, j = rng.choice(k, size=2, replace=False)
        flat[row, [i, j]] = flat[row, [j, i]]
    for row in np.flatnonzero(miss):
        slot = rng.integers(k)
        choices = np.setdiff1d(np.arange(model.E), flat[row])
        flat[row, slot] = rng.choice(choices)
    return flat.reshape(ids.shape)


def _draft_tokens(tokens: np.ndarray, cfg: SynthConfig, rng: np.random.Generator, vocab: int) -> np.ndarray:
    """[N, J] draft tokens: accepted ones equal the target's future tokens, the first rejection differs."""
    n_tok, j_max = tokens.shape[0], cfg.k_max
    accept = np.cumprod(rng.random((n_tok, j_max)) < cfg.acceptance, axis=1).astype(bool)
    draft = rng.integers(0, vocab, size=(n_tok, j_max))
    for n in range(n_tok):
        for j in range(j_max):
            future = tokens[n + 1 + j] if n + 1 + j < n_tok else -1
            if accept[n, j] and future >= 0:
                draft[n, j] = future
            elif draft[n, j] == future:  # a rejected token must differ from the target's
                draft[n, j] = (future + 1) % vocab
    return draft


def _sequence(cfg: SynthConfig, model: _RoutingModel, rng: np.random.Generator) -> SequenceTrace:
    spec = cfg.model
    prompt_ids = model.chain(cfg.prompt_len)  # [P, L, K]
    target_ids = model.chain(cfg.tokens, prev=prompt_ids[-1:])  # [N, L, K]
    tokens = rng.integers(0, spec.vocab, size=cfg.tokens)
    draft_tokens = _draft_tokens(tokens, cfg, rng, spec.vocab)
    seq = SequenceTrace(
        prompt_tokens=rng.integers(0, spec.vocab, size=cfg.prompt_len).astype(TOKEN_DTYPE),
        prompt_ids=prompt_ids.astype(ID_DTYPE), prompt_weights=model.weights(prompt_ids.shape[:2]),
        tokens=tokens.astype(TOKEN_DTYPE), target_ids=target_ids.astype(ID_DTYPE),
        target_weights=model.weights(target_ids.shape[:2]), draft_tokens=draft_tokens.astype(TOKEN_DTYPE),
        draft_ids=np.empty(0), draft_weights=np.empty(0), verify_ids=np.empty(0), verify_weights=np.empty(0),
    )
    _fill_lookahead(seq, cfg, model, rng)
    return seq


def _fill_lookahead(seq: SequenceTrace, cfg: SynthConfig, model: _RoutingModel, rng: np.random.Generator) -> None:
    """Verify and draft routing of every position from the target chain, the draft tokens and the knobs."""
    N, J = seq.n_tokens, cfg.k_max  # noqa: N806
    on_path = np.concatenate([np.ones((N, 1), bool), seq.accepted()], axis=1)  # [N, J+1]: input x_j on path
    verify = np.empty((N, J + 1, model.L, model.K), dtype=np.int64)
    verify[:, 0] = seq.target_ids
    for j in range(1, J + 1):
        fresh = model.token(verify[:, j - 1], batch=N)  # off-path inputs continue their own chain
        on = on_path[:, j] & (np.arange(N) + j < N)
        verify[:, j] = np.where(on[:, None, None], seq.target_ids[np.minimum(np.arange(N) + j, N - 1)], fresh)
    draft_on_path = _draft_of(seq.target_ids, cfg, model, rng)  # the draft's routing of y[m] given the prefix
    draft = _draft_of(verify[:, :J], cfg, model, rng)
    for j in range(J):
        on = on_path[:, j] & (np.arange(N) + j < N)
        draft[:, j] = np.where(on[:, None, None], draft_on_path[np.minimum(np.arange(N) + j, N - 1)], draft[:, j])
    seq.verify_ids, seq.verify_weights = verify.astype(ID_DTYPE), model.weights(verify.shape[:3])
    seq.verify_weights[:, 0] = seq.target_weights
    seq.draft_ids, seq.draft_weights = draft.astype(ID_DTYPE), model.weights(draft.shape[:3])


def synthesize(cfg: SynthConfig) -> LookaheadTrace:
    """A full lookahead trace (prompt, target, draft and verify routing) from the knobs of `cfg`."""
    rng = np.random.default_rng(cfg.seed)
    model = _RoutingModel(cfg, rng)
    meta = TraceMeta(model=cfg.model, k_max=cfg.k_max, routing_source=cfg.label(), lookahead=True,
                     draft_quant=QuantSpec(method="synthetic"), prompts=[f"synthetic prompt {i}" for i in range(cfg.seqs)],
                     tool_version=__version__, extra={"synth": {**cfg.knobs(), "seqs": cfg.seqs, "tokens": cfg.tokens,
                                                                 "prompt_len": cfg.prompt_len, "k_max": cfg.k_max}})
    return LookaheadTrace(meta, [_sequence(cfg, model, rng) for _ in range(cfg.seqs)])


def add_lookahead(trace: LookaheadTrace, k_max: int, draft_fidelity: float = 0.909, order_fidelity: float = 0.485,
                  acceptance: float = 0.9, seed: int = 0) -> LookaheadTrace:
    """Synthesize draft tokens and draft/verify routing for a trace that has only target routing.

    Popularity follows the trace's own per-layer expert counts; the result's routing_source keeps the
    original label and names the draft-fidelity model, so every result says its lookahead is synthetic.
    """
    spec = trace.meta.model
    counts = np.zeros((spec.moe_layers, spec.experts))
    for seq in trace.sequences:
        for layer in range(spec.moe_layers):
            counts[layer] += np.bincount(seq.target_ids[:, layer].ravel(), minlength=spec.experts)
    cfg = SynthConfig(model=spec, k_max=k_max, draft_fidelity=draft_fidelity, order_fidelity=order_fidelity,
                      acceptance=acceptance, seed=seed, popularity=tuple(map(tuple, counts.tolist())))
    rng = np.random.default_rng(seed)
    model = _RoutingModel(cfg, rng)
    sequences = []
    for seq in trace.sequences:
        seq = dataclasses.replace(seq, draft_tokens=_draft_tokens(seq.tokens, cfg, rng, spec.vocab).astype(TOKEN_DTYPE))
        _fill_lookahead(seq, cfg, model, rng)
        sequences.append(seq)
    label = (f"{trace.meta.routing_source}+synthetic-lookahead(draft_fidelity={draft_fidelity},"
             f"order_fidelity={order_fidelity},acceptance={acceptance},seed={seed})")
    meta = dataclasses.replace(trace.meta, k_max=k_max, lookahead=True, routing_source=label,
                               extra={**trace.meta.extra, "lookahead_synthesized": cfg.knobs()})
    return LookaheadTrace(meta, sequences)
