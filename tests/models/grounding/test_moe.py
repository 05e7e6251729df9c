"""MedPLIB Mixture-of-Experts FFN: conversion, routing, losses, statistics, cost (tiny Qwen2)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pathmllm.models.grounding.moe import (
    MoEFeedForward,
    convert_to_moe,
    load_balancing_loss,
    router_z_loss,
    routing_statistics,
)

transformers = pytest.importorskip("transformers")

H = 64


def _model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(
        vocab_size=300, hidden_size=H, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    return transformers.Qwen2ForCausalLM(cfg).eval()


def _ids(b: int = 2, t: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 300, (b, t), generator=g)


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _moe(num_experts: int = 2, top_k: int = 1, seed: int = 0) -> MoEFeedForward:
    """A standalone MoE of distinct Qwen2 MLP experts with a router that really spreads tokens."""
    mlp = _model().model.layers[0].mlp
    experts = [copy.deepcopy(mlp) for _ in range(num_experts)]
    for e, ex in enumerate(experts):
        _randomise(ex, 100 + e)
    moe = MoEFeedForward(experts, H, top_k=top_k).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        moe.router.weight.normal_(std=1.0)
    return moe


def _x(b: int = 3, t: int = 10, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, t, H, generator=torch.Generator().manual_seed(seed))


def _count_calls(moe: MoEFeedForward) -> tuple[list[int], list[int]]:
    calls, tokens = [0] * moe.num_experts, [0] * moe.num_experts

    def hook(e):
        def fn(_mod, inputs, _out):
            calls[e] += 1
            tokens[e] += inputs[0].shape[:-1].numel()
        return fn

    for e, ex in enumerate(moe.experts):
        ex.register_forward_hook(hook(e))
    return calls, tokens


# --------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("grad", [False, True])
def test_converted_model_equals_original(grad: bool) -> None:
    model = _model()
    moe_model = copy.deepcopy(model)
    mods = convert_to_moe(moe_model, "all", num_experts=2, top_k=1)
    assert len(mods) == 2 and all(isinstance(m.model.layers[i].mlp, MoEFeedForward)
                                  for i, m in [(0, moe_model), (1, moe_model)])
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    with torch.set_grad_enabled(grad):
        out = moe_model(ids).logits
    torch.testing.assert_close(out.detach(), ref, atol=1e-5, rtol=0)
    # the random router really used both experts somewhere (so the equality is not trivial)
    used = torch.cat([m.last_expert_index.reshape(-1) for m in mods]).unique()
    assert used.numel() == 2


def test_convert_selected_layers_and_state_dicts() -> None:
    model = _model()
    mlp = model.model.layers[1].mlp
    other = copy.deepcopy(mlp)
    _randomise(other, 7)
    mods = convert_to_moe(model, [-1], num_experts=3, top_k=2,
                          expert_state_dicts=[None, other.state_dict(), None])
    assert len(mods) == 1 and mods[0].layer_index == 1 and mods[0].top_k == 2
    assert not isinstance(model.model.layers[0].mlp, MoEFeedForward)
    experts = model.model.layers[1].mlp.experts
    torch.testing.assert_close(experts[0].gate_proj.weight, mlp.gate_proj.weight)
    torch.testing.assert_close(experts[1].gate_proj.weight, other.gate_proj.weight)
    assert experts[0].gate_proj.weight.data_ptr() != mlp.gate_proj.weight.data_ptr()
    with pytest.raises(ValueError, match="already"):
        convert_to_moe(model, [1])


def test_convert_peft_wrapped_model() -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_model(), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    mods = convert_to_moe(model, [0])
    assert isinstance(model.get_base_model().model.layers[0].mlp, MoEFeedForward)
    with torch.no_grad():
        model(input_ids=_ids())
    assert mods[0].last_expert_index.shape == (2 * 12, 1)


def test_errors() -> None:
    with pytest.raises(IndexError, match="out of range"):
        convert_to_moe(_model(), [2])
    with pytest.raises(IndexError, match="out of range"):
        convert_to_moe(_model(), [-3])
    with pytest.raises(ValueError, match="top_k"):
        convert_to_moe(_model(), "all", num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="top_k"):
        MoEFeedForward([nn.Linear(H, H)], H, top_k=2)
    with pytest.raises(ValueError, match="expert_state_dicts"):
        convert_to_moe(_model(), "all", num_experts=2, expert_state_dicts=[None])

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ffn = nn.Linear(H, H)

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([Layer(), Layer()])

    class NoMlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Inner()

    with pytest.raises(ValueError, match=r"no `\.mlp`"):
        convert_to_moe(NoMlp(), "all")
    with pytest.raises(ValueError, match="decoder layers"):
        convert_to_moe(nn.Linear(2, 2), "all")


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize("grad", [False, True])
def test_top1_equals_chosen_expert_token_by_token(grad: bool) -> None:
    moe = _moe(num_experts=3, top_k=1)
    x = _x()
    with torch.set_grad_enabled(grad):
        y = moe(x)
    idx = moe.last_expert_index
    assert idx.shape == (30, 1)
    assert idx.unique().numel() == 3
    with torch.no_grad():
        flat = x.reshape(-1, H)
        choice = (flat @ moe.router.weight.T).argmax(-1)
        assert torch.equal(choice, idx[:, 0])
        ref = torch.stack([moe.experts[int(choice[j])](flat[j:j + 1]).squeeze(0) for j in range(30)])
    torch.testing.assert_close(y.detach().reshape(-1, H), ref, atol=1e-5, rtol=1e-5)


def test_top2_equals_renormalised_weighted_sum() -> None:
    moe = _moe(num_experts=3, top_k=2)
    x = _x()
    with torch.no_grad():
        y = moe(x).reshape(-1, H)
        flat = x.reshape(-1, H)
        probs = (flat @ moe.router.weight.T).softmax(-1)
        ref = torch.zeros_like(flat)
        for j in range(flat.shape[0]):
            order = sorted(range(3), key=lambda e: -float(probs[j, e]))[:2]
            total = probs[j, order].sum()
            for e in order:
                ref[j] += probs[j, e] / total * moe.experts[e](flat[j:j + 1]).squeeze(0)
            assert set(moe.last_expert_index[j].tolist()) == set(order)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_force_expert() -> None:
    moe = _moe(num_experts=2)
    x = _x()
    calls, tokens = _count_calls(moe)
    moe.force_expert = 1
    with torch.no_grad():
        y = moe(x)
        assert tokens == [0, 30] and calls == [0, 1]
        ref = moe.experts[1](x)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
    assert torch.equal(moe.last_expert_index, torch.ones(30, 1, dtype=torch.long))
    moe.force_expert = 5
    with pytest.raises(ValueError, match="force_expert"):
        moe(x)


@pytest.mark.parametrize("top_k", [1, 2])
def test_each_token_runs_exactly_k_experts(top_k: int) -> None:
    moe = _moe(num_experts=3, top_k=top_k)
    calls, tokens = _count_calls(moe)
    with torch.no_grad():
        moe(_x())
    n = 30
    assert sum(tokens) == n * top_k  # not num_experts * n
    counts = torch.bincount(moe.last_expert_index.reshape(-1), minlength=3).tolist()
    assert tokens == counts
    assert calls == [1 if c else 0 for c in counts]  # one batched call per used expert


def test_gradients_reach_router_and_experts() -> None:
    for top_k in (1, 2):
        moe = _moe(num_experts=2, top_k=top_k).train()
        x = _x().requires_grad_(True)
        y = moe(x)
        (y.pow(2).sum() + 0.1 * load_balancing_loss([moe])).backward()
        g = moe.router.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
        for ex in moe.experts:
            assert ex.down_proj.weight.grad is not None and ex.down_proj.weight.grad.abs().sum() > 0
        assert x.grad is not None


def test_top1_router_gradient_is_straight_through_switch() -> None:
    """d/dW of sum(c * y) equals that of sum(c * p_i / sg(p_i) * E_i(x)) computed by hand."""
    moe = _moe(num_experts=2, top_k=1).train()
    x = _x()
    c = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    (moe(x) * c).sum().backward()
    got = moe.router.weight.grad.clone()
    w = moe.router.weight.detach().clone().requires_grad_(True)
    flat = x.reshape(-1, H)
    probs = (flat @ w.T).softmax(-1)
    p, i = probs.max(-1)
    with torch.no_grad():
        e_out = torch.stack([moe.experts[int(i[j])](flat[j:j + 1]).squeeze(0) for j in range(30)])
    ((p / p.detach()).unsqueeze(-1) * e_out * c.reshape(-1, H)).sum().backward()
    torch.testing.assert_close(got, w.grad, atol=1e-5, rtol=1e-4)


def test_jitter_only_in_training() -> None:
    moe = _moe()
    moe.jitter = 0.5
    x = _x()
    with torch.no_grad():
        a = moe(x)
        b = moe(x)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- losses and statistics


def test_load_balancing_loss_by_hand() -> None:
    moe = _moe(num_experts=3)
    x = _x()
    with torch.no_grad():
        moe(x)
    probs = (x.reshape(-1, H) @ moe.router.weight.T).softmax(-1)
    choice = probs.argmax(-1)
    f = torch.stack([(choice == e).float().mean() for e in range(3)])
    expected = 3 * (f * probs.mean(0)).sum()
    torch.testing.assert_close(load_balancing_loss([moe]), expected, atol=1e-6, rtol=1e-6)

    # mean over modules; token mask leaves tokens out
    moe2 = _moe(num_experts=3, seed=3)
    with torch.no_grad():
        moe2(x)
    both = load_balancing_loss([moe, moe2])
    torch.testing.assert_close(both, (load_balancing_loss([moe]) + load_balancing_loss([moe2])) / 2)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0] = True
    sub = probs[:10]
    f_sub = torch.stack([(sub.argmax(-1) == e).float().mean() for e in range(3)])
    torch.testing.assert_close(load_balancing_loss([moe], mask), 3 * (f_sub * sub.mean(0)).sum(),
                               atol=1e-6, rtol=1e-6)


def test_load_balancing_loss_is_one_for_uniform_routing() -> None:
    moe = _moe(num_experts=4)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe(_x())
    torch.testing.assert_close(load_balancing_loss([moe]), torch.tensor(1.0))
    # any skewed router does worse
    moe = _moe(num_experts=4)
    with torch.no_grad():
        moe(_x())
    assert load_balancing_loss([moe]) > 1.0


def test_router_z_loss() -> None:
    moe = _moe(num_experts=2)
    x = _x()
    with torch.no_grad():
        moe(x)
    logits = x.reshape(-1, H) @ moe.router.weight.T
    expected = torch.logsumexp(logits, -1).pow(2).mean()
    torch.testing.assert_close(router_z_loss([moe]), expected, atol=1e-5, rtol=1e-5)


def test_losses_need_a_forward() -> None:
    with pytest.raises(RuntimeError, match="forward"):
        load_balancing_loss([_moe()])


def test_routing_statistics_per_group() -> None:
    model = _model()
    mods = convert_to_moe(model, "all", num_experts=2)
    for m in mods:
        with torch.no_grad():
            m.router.weight.normal_(std=1.0)
    ids = _ids(b=2, t=12)
    with torch.no_grad():
        model(ids)
    image = torch.zeros(2, 12, dtype=torch.bool)
    image[:, 2:8] = True
    seg = torch.zeros(2, 12, dtype=torch.bool)
    seg[1, 11] = True
    none = torch.zeros(2, 12, dtype=torch.bool)
    stats = routing_statistics(mods, {"text": ~image, "image": image, "seg": seg, "none": none})
    assert set(stats) == {"text", "image", "seg", "none"}
    for m in mods:
        idx = m.last_expert_index[:, 0].reshape(2, 12)
        for name, mask in (("text", ~image), ("image", image)):
            frac = stats[name][m.layer_index]
            assert frac == pytest.approx([(idx[mask] == e).float().mean().item() for e in range(2)])
            assert sum(frac) == pytest.approx(1.0)
        assert stats["seg"][m.layer_index][int(idx[1, 11])] == 1.0
        assert all(v != v for v in stats["none"][m.layer_index])  # NaN: no tokens
    with pytest.raises(ValueError, match="token mask"):
        routing_statistics(mods, {"bad": torch.ones(3, 3, dtype=torch.bool)})


def test_generation_runs_with_moe() -> None:
    model = _model()
    ref = copy.deepcopy(model)
    convert_to_moe(model, "all")
    ids = _ids(b=2, t=6)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, **kw), ref.generate(ids, **kw))
