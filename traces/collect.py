"""Collecting a lookahead trace from a Hugging Face MoE checkpoint and its INT4 draft (DESIGN §3).

For each prompt the target decodes greedily; at every position n (x_0 = y[n]) the collector records
  R[n]        the target's routing when it consumes y[n] (producing y[n+1]),
  d[n, 1..J]  the draft's greedy tokens from the shared prefix, and D[n, j] its routing consuming x_{j-1},
  V[n, 0..J]  the target's routing of x_0..x_J when verifying them, V[n, 0] = R[n],
with J = k_max, exactly as the trace contract (moespeq/trace.py) defines them. One KV cache serves all
three, rolled back with `DynamicCache.crop` instead of recomputing prefixes. Per position, with the cache
holding the prompt and y[0..n-1] (the target's own KV, shared by the draft):
  1. draft: J one-token forwards with the draft's experts swapped in, consuming x_0..x_{J-1}; crop J.
  2. target: one forward consuming y[n] (a decode step exactly like `generate`'s): R[n], y[n+1].
  3. verify: one forward of x_1..x_J on top of y[n]'s KV; crop J.
Steps 2+3 compute what one verification pass of x_0..x_J computes (x_0's keys and values come from the
same target on the same prefix), split so that R and y are bit-identical to plain greedy decoding and
V[n, 0] = R[n] holds exactly. Forwards per position: J (draft) + 1 + 1 (J tokens).

Decoding stops after `max_new_tokens` tokens or once the target emits an end-of-sequence token (which is
then the last y and still gets its position's lookahead).

Dimension letters: P prompt tokens, N generated tokens, J draft steps, L MoE layers, K top-k.

Usage:
    ckpt, cfg = load_checkpoint("ckpt"), CollectConfig(max_new_tokens=32)
    trace = collect(ckpt, ["Once upon a time"], cfg, make_draft(ckpt, cfg))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from moespeq import __version__
from moespeq.errors import UserError
from moespeq.spec import QuantSpec
from moespeq.trace import ID_DTYPE, TOKEN_DTYPE, WEIGHT_DTYPE, LookaheadTrace, SequenceTrace, TraceMeta
from moespeq.trace_stats import lookahead_stats
from moespeq.traces.draft import DraftExperts, build_draft, draft_weights
from moespeq.traces.hf_model import Checkpoint, RoutingRecorder

log = logging.getLogger(__name__)

#: --draft value -> QuantSpec.method
DRAFTS = {"int4-rtn": "rtn", "int4-gptq": "gptq"}

#: prompts used when no --prompts file is given: short, varied, and in plain English
DEFAULT_PROMPTS = (
    "The history of the printing press begins",
    "def fibonacci(n):",
    "Explain why the sky is blue in two sentences.",
    "A recipe for tomato soup: first,",
)


@dataclass(frozen=True)
class CollectConfig:
    """What to collect: tokens per prompt, draft depth, and how the draft's experts are quantized."""

    max_new_tokens: int = 64
    k_max: int = 8
    draft: str = "int4-rtn"
    group: int = 128

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens={self.max_new_tokens} must be >= 1")
        if self.k_max < 1:
            raise ValueError(f"--k-max={self.k_max} must be >= 1 (the draft proposes k_max tokens at every position)")
        if self.draft not in DRAFTS:
            raise ValueError(f"--draft {self.draft!r}: use one of {', '.join(DRAFTS)}")

    @property
    def quant(self) -> QuantSpec:
        return QuantSpec(group=self.group, method=DRAFTS[self.draft])


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per non-blank line) or JSONL (objects with a string "prompt")."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read prompts ({exc})") from None
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise UserError(f"{path}: no prompts (the file is empty); put one prompt per line, or JSONL with a \"prompt\" field")
    if not numbered[0][1].lstrip().startswith("{"):
        return [line for _, line in numbered]
    prompts = []
    for number, line in numbered:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
            raise UserError(f"{path}:{number}: a JSONL prompt line needs a non-empty string field \"prompt\"")
        prompts.append(record["prompt"])
    return prompts


class _Stepper:
    """Runs forwards of the target (or, inside draft_weights, the draft) on one KV cache and pops routing."""

    def __init__(self, ckpt: Checkpoint, recorder: RoutingRecorder) -> None:
        import inspect

        self.ckpt, self.recorder = ckpt, recorder
        # transformers renamed forward's `past_key_values` to `cache` (5.2x); use whichever this version has
        params = inspect.signature(ckpt.model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.ckpt.model.config)
        cache.activate_past_recording()  # lets sliding-window layers roll back too
        return cache

    def forward(self, tokens: Sequence[int], cache: Any) -> tuple[int, np.ndarray, np.ndarray]:
        """Consume tokens [T]: (greedy next token after the last, routing ids [T, L, K], weights [T, L, K])."""
        import torch

        input_ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.ckpt.device)  # [1, T]
        kwargs = {self.cache_kwarg: cache}
        logits = self.ckpt.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **kwargs).logits
        next_token = int(logits[0, -1].argmax())  # SYNC: the next forward needs the token on the host
        ids, weights = self.recorder.pop()
        return next_token, ids, weights


def _draft_rollout(step: _Stepper, draft: DraftExperts, x0: int, cache: Any,
                   n_steps: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The draft's greedy tokens d[1..J] from x_0 and its routing [J, L, K]; the cache is left as it was."""
    proposed, ids, weights = [], [], []
    with draft_weights(step.ckpt, draft):
        x = x0
        for _ in range(n_steps):
            x, ids_j, weights_j = step.forward([x], cache)  # consumes x_{j-1}
            proposed.append(x)
            ids.append(ids_j[0])
            weights.append(weights_j[0])
    cache.crop(-n_steps)  # the draft's own KV entries are never kept
    return proposed, np.stack(ids), np.stack(weights)


def _collect_sequence(step: _Stepper, prompt: Sequence[int], cfg: CollectConfig, draft: DraftExperts,
                      eos: set[int], bar: tqdm) -> SequenceTrace:
    n_steps = cfg.k_max
    cache = step.new_cache()
    first, prompt_ids, prompt_weights = step.forward(prompt, cache)  # prefill: P routing, y[0]
    tokens = [first]
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("R_ids", "R_w", "d", "D_ids", "D_w", "V_ids", "V_w")}
    for n in range(cfg.max_new_tokens):
        y = tokens[n]
        # ---- 1. draft: J greedy tokens from the shared prefix, consuming x_0 .. x_{J-1}
        proposed, d_ids, d_w = _draft_rollout(step, draft, y, cache, n_steps)
        # ---- 2. target decode step on y[n]
        y_next, r_ids, r_w = step.forward([y], cache)
        # ---- 3. verify x_1 .. x_J (x_0 = y[n] is in the cache from step 2)
        _, v_ids, v_w = step.forward(proposed, cache)
        cache.crop(-n_steps)
        for key, value in (("R_ids", r_ids[0]), ("R_w", r_w[0]), ("d", np.array(proposed)), ("D_ids", d_ids), ("D_w", d_w),
                           ("V_ids", np.concatenate([r_ids, v_ids])), ("V_w", np.concatenate([r_w, v_w]))):
            rows[key].append(value)
        bar.update(1)
        if y in eos or n + 1 == cfg.max_new_tokens:
            break
        tokens.append(y_next)
    return SequenceTrace(
        prompt_tokens=np.asarray(prompt, dtype=TOKEN_DTYPE), prompt_ids=prompt_ids, prompt_weights=prompt_weights,
        tokens=np.asarray(tokens, dtype=TOKEN_DTYPE),
        target_ids=np.stack(rows["R_ids"]).astype(ID_DTYPE), target_weights=np.stack(rows["R_w"]).astype(WEIGHT_DTYPE),
        draft_tokens=np.stack(rows["d"]).astype(TOKEN_DTYPE),
        draft_ids=np.stack(rows["D_ids"]).astype(ID_DTYPE), draft_weights=np.stack(rows["D_w"]).astype(WEIGHT_DTYPE),
        verify_ids=np.stack(rows["V_ids"]).astype(ID_DTYPE), verify_weights=np.stack(rows["V_w"]).astype(WEIGHT_DTYPE),
    )


def tokenize(ckpt: Checkpoint, prompts: Sequence[str]) -> list[list[int]]:
    token_lists = [list(ckpt.tokenizer(p).input_ids) for p in prompts]
    for prompt, tokens in zip(prompts, token_lists, strict=True):
        if not tokens:
            raise UserError(f"prompt {prompt!r} tokenizes to nothing; remove it")
    return token_lists


def _eos_ids(ckpt: Checkpoint) -> set[int]:
    eos = ckpt.model.generation_config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def make_draft(ckpt: Checkpoint, cfg: CollectConfig, calib_prompts: Sequence[str] = ()) -> DraftExperts:
    """The INT4 draft `cfg.draft` asks for (GPTQ calibrates on `calib_prompts`)."""
    return build_draft(ckpt, cfg.quant, tokenize(ckpt, calib_prompts) if cfg.quant.method == "gptq" else ())


def collect(ckpt: Checkpoint, prompts: Sequence[str], cfg: CollectConfig, draft: DraftExperts,
            progress: bool = True) -> LookaheadTrace:
    """The lookahead trace of greedy decoding on every prompt with `draft` (from make_draft); stats in meta.extra."""
    import torch
    import transformers

    token_lists = tokenize(ckpt, prompts)
    sequences = []
    with torch.inference_mode(), RoutingRecorder(ckpt) as recorder:
        step = _Stepper(ckpt, recorder)
        for tokens in tqdm(token_lists, desc="prompts", unit="prompt", disable=not progress):
            with tqdm(total=cfg.max_new_tokens, desc="positions", unit="pos", leave=False, disable=not progress) as bar:
                sequences.append(_collect_sequence(step, tokens, cfg, draft, _eos_ids(ckpt), bar))
    extra = {
        "collector": {"max_new_tokens": cfg.max_new_tokens, "draft": cfg.draft, "device": ckpt.device,
                      "dtype": ckpt.dtype, "torch": torch.__version__, "transformers": transformers.__version__,
                      "calib_prompts": draft.stats.get("calib_prompts", 0)},
        "draft_quantization": draft.stats,
        **lookahead_stats(sequences),
    }
    meta = TraceMeta(model=ckpt.spec, k_max=cfg.k_max, routing_source=f"hf:{ckpt.path}", lookahead=True,
                     draft_quant=draft.quant, prompts=list(prompts), tool_version=__version__, extra=extra)
    return LookaheadTrace(meta, sequences)
