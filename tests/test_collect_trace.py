"""The collected trace against transformers' own greedy decoding, on a tiny checkpoint of every architecture.

Independent references: router hooks written here (not the collector's), `model.generate`, and an INT4
draft built here straight from moespeq.int4 (not from moespeq.traces.quantize/draft).
"""

import inspect

import numpy as np
import pytest
import torch

from moespeq import int4
from moespeq.cli import main
from moespeq.spec import SUPPORTED_ARCHS
from moespeq.trace import read_trace

PROMPTS = ["Hello there, tiny model", "x = 1"]
NEW_TOKENS, K_MAX = 6, 3


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """arch -> (checkpoint folder, trace), built lazily through the CLI."""
    root = tmp_path_factory.mktemp("collect")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cache = {}

    def get(arch):
        if arch not in cache:
            ckpt, out = root / arch, root / f"{arch}.parquet"
            layers = 3 if arch.startswith("deepseek") else 2  # two MoE layers behind DeepSeek's dense one
            assert main(["tiny", "--arch", arch, "--out", str(ckpt), "--layers", str(layers)]) == 0
            assert main(["collect", "--model", str(ckpt), "--prompts", str(prompts), "--max-new-tokens", str(NEW_TOKENS),
                         "--k-max", str(K_MAX), "--device", "cpu", "--dtype", "fp32", "--out", str(out)]) == 0
            cache[arch] = (ckpt, read_trace(out))
        return cache[arch]
    return get


def _load(ckpt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(ckpt)


def _moe_mlps(model):
    return [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "experts")]


def _hooked_generate(model, prompt_ids, new_tokens):
    """generate's tokens, and per router call (ids [T, K], weights [T, K]) per layer, from hooks set here."""
    calls = [[] for _ in _moe_mlps(model)]
    expert_inputs = [[] for _ in _moe_mlps(model)]
    handles = []
    for slot, mlp in enumerate(_moe_mlps(model)):
        router = mlp.router if hasattr(mlp, "router") else mlp.gate
        handles.append(router.register_forward_hook(
            lambda m, a, out, s=slot: calls[s].append((out[2].clone(), out[1].clone()))))
        handles.append(mlp.experts.register_forward_pre_hook(
            lambda m, a, s=slot: expert_inputs[s].append((a[1].clone(), a[2].clone()))))
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False)
    for h in handles:
        h.remove()
    return out[0, len(prompt_ids):].tolist(), calls, expert_inputs


def _as_dict(ids, weights):
    return {int(i): float(w) for i, w in zip(ids, weights, strict=True)}


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_target_routing_and_tokens_equal_generate(collected, arch):
    ckpt, trace = collected(arch)
    model, tok = _load(ckpt)
    ordered = not arch.startswith("deepseek")  # DeepSeek routers return top-k unsorted; the trace sorts by weight
    for prompt, seq in zip(PROMPTS, trace.sequences, strict=True):
        prompt_ids = tok(prompt).input_ids
        assert seq.prompt_tokens.tolist() == prompt_ids
        # one more token than the trace, so that generate also consumes y[N-1] (R has N rows)
        tokens, calls, expert_inputs = _hooked_generate(model, prompt_ids, seq.n_tokens + 1)
        assert seq.tokens.tolist() == tokens[: seq.n_tokens]
        for layer, layer_calls in enumerate(calls):
            # the weights the router hands out are exactly what the experts multiply by
            for (ids, w), (e_ids, e_w) in zip(layer_calls, expert_inputs[layer], strict=True):
                assert torch.equal(ids, e_ids) and torch.equal(w, e_w)
            rows_ids = torch.cat([c[0] for c in layer_calls]).numpy()  # [P + N, K]
            rows_w = torch.cat([c[1] for c in layer_calls]).float().numpy()
            got_ids = np.concatenate([seq.prompt_ids[:, layer], seq.target_ids[:, layer]])
            got_w = np.concatenate([seq.prompt_weights[:, layer], seq.target_weights[:, layer]])
            assert rows_ids.shape == got_ids.shape == (seq.n_prompt + seq.n_tokens, trace.meta.model.top_k)
            for t in range(rows_ids.shape[0]):
                want, got = _as_dict(rows_ids[t], rows_w[t]), _as_dict(got_ids[t], got_w[t])
                assert want.keys() == got.keys()
                np.testing.assert_allclose([got[e] for e in want], list(want.values()), rtol=1e-6, atol=1e-7)
                assert np.all(np.diff(got_w[t]) <= 0) or arch == "phimoe"  # largest first (phimoe: selection order)
            if ordered:
                np.testing.assert_array_equal(got_ids, rows_ids)


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_first_verify_entry_is_target_routing(collected, arch):
    _, trace = collected(arch)
    spec = trace.meta.model
    for seq in trace.sequences:
        assert seq.verify_ids.shape == (seq.n_tokens, K_MAX + 1, spec.moe_layers, spec.top_k)
        assert seq.draft_ids.shape == (seq.n_tokens, K_MAX, spec.moe_layers, spec.top_k)
        np.testing.assert_array_equal(seq.verify_ids[:, 0], seq.target_ids)
        np.testing.assert_array_equal(seq.verify_weights[:, 0], seq.target_weights)


def _int4_experts(model, group=128):
    """Per MoE layer (gate_up, down) quantized with moespeq.int4 RTN and dequantized, fp32."""
    out = []
    for mlp in _moe_mlps(model):
        mats = []
        for w in (mlp.experts.gate_up_proj, mlp.experts.down_proj):
            deq = [int4.dequantize(*int4.quantize_rtn(m.detach().numpy(), group), group) for m in w]
            mats.append(torch.nn.Parameter(torch.from_numpy(np.stack(deq)), requires_grad=False))
        out.append(mats)
    return out


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_draft_tokens_are_int4_greedy_continuation(collected, arch):
    from transformers import DynamicCache

    ckpt, trace = collected(arch)
    model, _ = _load(ckpt)
    target = [(m.experts.gate_up_proj, m.experts.down_proj) for m in _moe_mlps(model)]
    draft = _int4_experts(model)
    seq = trace.sequences[0]
    for n in (0, seq.n_tokens - 1):
        prefix = seq.prompt_tokens.tolist() + seq.tokens[:n].tolist()
        cache = DynamicCache(config=model.config)
        kv = {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}
        with torch.no_grad():
            model(torch.tensor([prefix]), use_cache=True, **kv)  # the target's KV of the prefix
            for mlp, (gu, down) in zip(_moe_mlps(model), draft, strict=True):
                mlp.experts.gate_up_proj, mlp.experts.down_proj = gu, down
            x, proposed = int(seq.tokens[n]), []
            for _ in range(K_MAX):
                logits = model(torch.tensor([[x]]), use_cache=True, **kv).logits
                x = int(logits[0, -1].argmax())
                proposed.append(x)
            for mlp, (gu, down) in zip(_moe_mlps(model), target, strict=True):
                mlp.experts.gate_up_proj, mlp.experts.down_proj = gu, down
        assert seq.draft_tokens[n].tolist() == proposed


def test_meta_and_statistics(collected):
    _, trace = collected("qwen2_moe")
    meta = trace.meta
    assert meta.lookahead and meta.k_max == K_MAX and meta.routing_source.startswith("hf:")
    assert meta.draft_quant.method == "rtn" and meta.draft_quant.group == 128 and meta.prompts == PROMPTS
    layers = meta.extra["agreement"]["layers"]
    assert len(layers) == meta.model.moe_layers
    for row in layers:
        assert row["hard"] + row["soft"] + row["miss"] == pytest.approx(1.0)
        assert row["inputs"] == len(PROMPTS) * NEW_TOKENS * K_MAX
    # the first MoE layer's router sees no expert output, so draft and target always agree there
    assert layers[0]["hard"] == 1.0
    acceptance = meta.extra["acceptance"]
    assert [a["position"] for a in acceptance] == [1, 2, 3]
    assert all(a["known"] == len(PROMPTS) * (NEW_TOKENS - a["position"]) for a in acceptance)
    first_accepted = sum(int((s.draft_tokens[:-1, 0] == s.tokens[1:]).sum()) for s in trace.sequences)
    assert acceptance[0]["cumulative"] == pytest.approx(first_accepted / acceptance[0]["known"])


def test_inspect_and_export_read_a_collected_trace(collected, tmp_path, capsys):
    ckpt, _ = collected("mixtral")
    out = tmp_path / "t.parquet"
    assert main(["collect", "--model", str(ckpt), "--max-new-tokens", "3", "--k-max", "2", "--device", "cpu",
                 "--dtype", "fp32", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "agreement" in captured.out and "acceptance" in captured.out
    assert "positions" in captured.err  # progress bar on stderr
    assert main(["inspect", str(out)]) == 0
    assert "hf:" in capsys.readouterr().out
    assert main(["export", str(out), "--out", str(tmp_path / "t.jsonl")]) == 0
    assert (tmp_path / "t.jsonl").read_text().count('"kind": "draft"') > 0


@pytest.mark.parametrize("arch", ["olmoe", "qwen3_moe", "deepseek_v2"])
def test_verify_routing_is_one_verification_pass(collected, arch):
    """V[n] equals the routing of x_0..x_J in one target forward on the prefix (the collector splits it in two)."""
    from transformers import DynamicCache

    ckpt, trace = collected(arch)
    model, _ = _load(ckpt)
    calls = [[] for _ in _moe_mlps(model)]
    handles = [(m.router if hasattr(m, "router") else m.gate).register_forward_hook(
        lambda mod, a, out, s=slot: calls[s].append((out[2].clone(), out[1].clone())))
        for slot, m in enumerate(_moe_mlps(model))]
    seq = trace.sequences[1]
    for n in (0, 2):
        prefix = seq.prompt_tokens.tolist() + seq.tokens[:n].tolist()
        cache = DynamicCache(config=model.config)
        kv = {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}
        with torch.no_grad():
            model(torch.tensor([prefix]), use_cache=True, **kv)
            for c in calls:
                c.clear()
            model(torch.tensor([[int(seq.tokens[n]), *seq.draft_tokens[n].tolist()]]), use_cache=True, **kv)
        for layer, ((ids, w),) in enumerate(calls):
            for j in range(K_MAX + 1):
                want = _as_dict(ids[j].numpy(), w[j].float().numpy())
                got = _as_dict(seq.verify_ids[n, j, layer], seq.verify_weights[n, j, layer])
                assert want.keys() == got.keys()
                np.testing.assert_allclose([got[e] for e in want], list(want.values()), rtol=1e-4, atol=1e-6)
    for h in handles:
        h.remove()
