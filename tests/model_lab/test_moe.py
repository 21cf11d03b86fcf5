"""MoE 课（model_lab/01_components/moe.py）：与 transformers 的 MixtralSparseMoeBlock / DeepseekV3MoE
逐项对照输出与梯度，辅助损失对照 load_balancing_loss_func，外加偏置更新、容量与丢 token、错误信息。"""

from __future__ import annotations

import importlib
import math
from dataclasses import replace

import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from utils.torch_playground import setup_seed

moe_lib = importlib.import_module("model_lab.01_components.moe")
MoE, MoEConfig = moe_lib.MoE, moe_lib.MoEConfig

TOL = 1e-5


def _fwd_bwd(module, x, g, ours: bool):
    x = x.clone().requires_grad_()
    out = module(x)[0] if ours else module(x)
    (out * g).sum().backward()
    return out, x.grad


def _assert_matches_hf(cfg: MoEConfig, shape: tuple[int, ...], seed: int, random_bias: bool = False):
    setup_seed(seed)
    moe = MoE(cfg)
    with torch.no_grad():  # 比默认初始化更大的权重：让路由分数拉开差距，也让误差更容易暴露
        for p in moe.parameters():
            p.normal_(std=0.3)
        if random_bias:
            moe.gate.e_score_correction_bias.normal_(std=0.2)
    ref = moe_lib.hf_reference(moe)
    x = torch.randn(*shape, cfg.hidden_size)
    g = torch.randn_like(x)
    out, x_grad = _fwd_bwd(moe, x, g, ours=True)
    ref_out, ref_x_grad = _fwd_bwd(ref, x, g, ours=False)
    torch.testing.assert_close(out, ref_out, atol=TOL, rtol=TOL)
    torch.testing.assert_close(x_grad, ref_x_grad, atol=TOL, rtol=TOL)
    ref_params = dict(ref.named_parameters())
    assert set(ref_params) == {n for n, _ in moe.named_parameters()}
    for name, p in moe.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=TOL, rtol=TOL, msg=name)
    return moe


@pytest.mark.parametrize(
    "hidden,inter,experts,top_k,shape,seed",
    [
        (16, 32, 4, 2, (2, 5), 0),
        (24, 16, 8, 2, (3, 7), 1),
        (8, 12, 6, 1, (1, 9), 2),  # k=1：Mixtral 的权重恒为 1
        (12, 8, 4, 4, (2, 3), 3),  # k=E：每个 token 走全部专家
        (16, 16, 8, 3, (4, 16), 4),
    ],
)
def test_mixtral_matches_hf(hidden, inter, experts, top_k, shape, seed):
    cfg = MoEConfig(hidden_size=hidden, intermediate_size=inter, num_experts=experts, top_k=top_k)
    _assert_matches_hf(cfg, shape, seed)


@pytest.mark.parametrize(
    "experts,top_k,n_group,topk_group,n_shared,norm,scale,shape,seed",
    [
        (8, 2, 1, 1, 1, True, 2.5, (2, 5), 0),
        (8, 2, 2, 1, 1, True, 2.5, (3, 6), 1),
        (16, 4, 4, 2, 2, False, 1.0, (2, 9), 2),
        (12, 3, 3, 2, 1, True, 1.7, (1, 13), 3),
        (32, 8, 8, 4, 1, True, 2.5, (4, 8), 4),  # DeepSeek-V3 的形状：8 组选 4 组、选 8 个专家
    ],
)
def test_deepseek_v3_matches_hf(experts, top_k, n_group, topk_group, n_shared, norm, scale, shape, seed):
    cfg = MoEConfig(
        hidden_size=16, intermediate_size=8, num_experts=experts, top_k=top_k, router="sigmoid",
        n_group=n_group, topk_group=topk_group, n_shared_experts=n_shared, norm_topk_prob=norm,
        routed_scaling_factor=scale,
    )  # fmt: skip
    _assert_matches_hf(cfg, shape, seed, random_bias=True)


def test_bias_changes_choice_but_not_weights():
    setup_seed(5)
    cfg = MoEConfig(hidden_size=16, intermediate_size=8, num_experts=8, top_k=2, router="sigmoid",
                    norm_topk_prob=False, n_shared_experts=1)  # fmt: skip
    moe = MoE(cfg)
    x = torch.randn(20, 16)
    moe.gate.e_score_correction_bias[3] = 10.0  # 专家 3 必被选中
    logits, weights, idx = moe.gate(x)
    assert (idx == 3).any(dim=-1).all()
    # 权重仍是未加偏置的 sigmoid 分数
    torch.testing.assert_close(weights, logits.sigmoid().gather(1, idx))


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_sorted_dispatch_equals_dense(router):
    setup_seed(6)
    extra = dict(router="sigmoid", n_group=2, topk_group=1, n_shared_experts=1) if router == "sigmoid" else {}
    moe = MoE(MoEConfig(hidden_size=16, intermediate_size=24, num_experts=8, top_k=2, **extra))
    x = torch.randn(3, 11, 16)
    torch.testing.assert_close(moe(x)[0], moe_lib.dense_moe(moe, x), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("n_tokens,experts,top_k,layers,seed", [(32, 8, 2, 1, 0), (50, 4, 1, 3, 1), (17, 16, 4, 2, 2)])
def test_load_balancing_loss_matches_hf(n_tokens, experts, top_k, layers, seed):
    setup_seed(seed)
    logits = [torch.randn(n_tokens, experts, requires_grad=True) for _ in range(layers)]
    ours = moe_lib.load_balancing_loss(logits, top_k=top_k)
    theirs = load_balancing_loss_func(tuple(logits), experts, top_k=top_k)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    ours_grads = torch.autograd.grad(ours, logits)
    theirs_grads = torch.autograd.grad(theirs, logits)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_load_balancing_loss_is_k_when_balanced_and_larger_when_skewed():
    experts, top_k = 4, 2
    # 每个 token 的前两名轮换、概率形状相同 -> f_i = k/E、P_i = 1/E
    base = torch.tensor([3.0, 2.0, 0.0, 0.0])
    balanced = torch.stack([base.roll(i) for i in range(experts)] * 5)
    assert math.isclose(moe_lib.load_balancing_loss(balanced, top_k).item(), top_k, rel_tol=1e-6)
    skewed = base.repeat(20, 1)  # 所有 token 都去专家 0、1
    assert moe_lib.load_balancing_loss(skewed, top_k).item() > 1.5 * top_k


def test_bias_update_balances_load():
    setup_seed(7)
    cfg = MoEConfig(hidden_size=16, intermediate_size=8, num_experts=8, top_k=2, router="sigmoid", n_shared_experts=1)
    moe = MoE(cfg)
    skew = torch.randn(16)
    with torch.no_grad():
        moe.gate.weight.normal_(std=0.3)
        x0 = torch.randn(256, 16) + 2 * skew
        before = moe_lib.max_violation(moe(x0)[1].load)
        for _ in range(150):  # 只跑路由器：负载只取决于它，省掉专家的计算
            _, _, idx = moe.gate(torch.randn(256, 16) + 2 * skew)
            moe.update_bias(torch.bincount(idx.flatten(), minlength=8), speed=0.01)
        after = moe_lib.max_violation(moe(x0)[1].load)
    assert before > 1.0, before  # 起点确实不均衡
    assert after < before / 3, (before, after)


def test_bias_update_rule_and_softmax_error():
    moe = MoE(MoEConfig(hidden_size=8, intermediate_size=8, num_experts=4, top_k=1, router="sigmoid"))
    moe.update_bias(torch.tensor([5, 1, 1, 1]), speed=0.1)  # 均值 2：专家 0 过载
    torch.testing.assert_close(moe.gate.e_score_correction_bias, torch.tensor([-0.1, 0.1, 0.1, 0.1]))
    with pytest.raises(ValueError, match="sigmoid"):
        MoE(MoEConfig(hidden_size=8, num_experts=4, top_k=1)).update_bias(torch.ones(4))


@pytest.mark.parametrize("router,n_shared", [("softmax", 0), ("sigmoid", 0), ("sigmoid", 1)])
def test_capacity_drops_tokens_first_come_first_served(router, n_shared):
    setup_seed(8)
    cfg = MoEConfig(hidden_size=16, intermediate_size=8, num_experts=4, top_k=2, router=router,
                    n_shared_experts=n_shared)  # fmt: skip
    free = MoE(cfg)
    with torch.no_grad():
        free.gate.weight.normal_(std=1.0)
    capped = MoE(replace(cfg, capacity_factor=0.25))
    capped.load_state_dict(free.state_dict())
    x = torch.randn(2, 24, 16)
    y_free, info_free = free(x)
    y, info = capped(x)
    n, k, e = 48, 2, 4
    assert info.capacity == math.ceil(0.25 * n * k / e) == 6
    torch.testing.assert_close(info.load, info_free.load)
    torch.testing.assert_close(info.kept, info.load.clamp(max=6))
    assert int(info.slot_kept.sum()) == int(info.kept.sum()) < n * k  # 确实丢了
    # 先到先得：每个专家保留的恰好是最早分给它的 6 个槽位
    flat_idx, flat_kept = info.topk_idx.reshape(-1), info.slot_kept.reshape(-1)
    for expert in range(e):
        kept_mask = flat_kept[flat_idx == expert]
        assert kept_mask[: int(info.kept[expert])].all() and not kept_mask[int(info.kept[expert]) :].any()
    y, y_free = y.reshape(n, -1), y_free.reshape(n, -1)
    shared = capped.shared_experts(x.reshape(n, -1)) if n_shared else torch.zeros_like(y)
    all_dropped = ~info.slot_kept.any(-1)
    all_kept = info.slot_kept.all(-1)
    assert info.dropped_tokens == int(all_dropped.sum()) > 0
    # 整个被丢的 token：MoE 只剩共享专家（没有共享专家时恰好为 0，靠残差通过）
    torch.testing.assert_close(y[all_dropped], shared[all_dropped], atol=0, rtol=0)
    torch.testing.assert_close(y[all_kept], y_free[all_kept], atol=TOL, rtol=TOL)
    # 部分保留的 token：逐槽位手算 Σ_{保留的 j} g_j · FFN_{e_j}(x) + 共享专家
    flat_x = x.reshape(n, -1)
    with torch.no_grad():
        for t in torch.nonzero(~(all_dropped | all_kept)).flatten().tolist():
            expected = shared[t].clone()
            for j in range(k):
                if info.slot_kept[t, j]:
                    expected += info.topk_weights[t, j] * _expert_ffn(capped, int(info.topk_idx[t, j]), flat_x[t])
            torch.testing.assert_close(y[t], expected, atol=TOL, rtol=TOL)


def _expert_ffn(moe, e, x):
    gate, up = (moe.experts.gate_up_proj[e] @ x).chunk(2)
    return moe.experts.down_proj[e] @ (torch.nn.functional.silu(gate) * up)


def test_large_capacity_changes_nothing():
    setup_seed(9)
    cfg = MoEConfig(hidden_size=16, intermediate_size=8, num_experts=4, top_k=2)
    free, capped = MoE(cfg), MoE(replace(cfg, capacity_factor=2.0))  # C = 2·N·k/E ≥ 任何专家的负载上限 N
    capped.load_state_dict(free.state_dict())
    x = torch.randn(3, 10, 16)
    (y, info), (y_free, _) = capped(x), free(x)
    assert info.dropped_tokens == 0 and bool(info.slot_kept.all())
    torch.testing.assert_close(y, y_free, atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_experts=4, top_k=5), "top_k=5"),
        (dict(num_experts=4, top_k=0), "top_k=0"),
        (dict(capacity_factor=0.0), "capacity_factor"),
        (dict(capacity_factor=-1.0), "capacity_factor"),
        (dict(capacity_factor=float("nan")), "capacity_factor"),
        (dict(router="sigmoid", num_experts=8, n_group=3), "n_group=3"),
        (dict(router="sigmoid", num_experts=8, n_group=2, topk_group=3), "topk_group=3"),
        (dict(router="sigmoid", num_experts=8, n_group=4, topk_group=1, top_k=3), "top_k=3"),
        (dict(router="sigmoid", num_experts=4, n_group=4, topk_group=1, top_k=1), "至少要 2 个"),
        (dict(num_experts=8, n_group=2), "sigmoid"),
        (dict(router="relu"), "router='relu'"),
    ],
)
def test_bad_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoEConfig(**kwargs)


def test_hidden_size_mismatch_error():
    moe = MoE(MoEConfig(hidden_size=16, intermediate_size=8, num_experts=4, top_k=2))
    with pytest.raises(ValueError, match="hidden_size=16"):
        moe(torch.randn(2, 3, 12))


def test_hf_reference_rejects_what_hf_cannot_express():
    with pytest.raises(ValueError, match="capacity_factor"):
        moe_lib.hf_reference(MoE(MoEConfig(num_experts=4, top_k=2, capacity_factor=1.0)))
    with pytest.raises(ValueError, match="Mixtral"):
        moe_lib.hf_reference(MoE(MoEConfig(num_experts=4, top_k=2, n_shared_experts=1)))
