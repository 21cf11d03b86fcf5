"""Lion（对照论文算法的直接转写 + 不变量）与 Muon（对照 torch.optim.Muon，Newton–Schulz 的正交化性质）。"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training_sys.optimization import AdamW, Lion, Muon, build_muon_param_groups, zeropower_via_newton_schulz
from training_sys.optimization.muon import CUBIC_COEFFICIENTS, low_stable_rank_matrix


# ---------------------------------------------------------------------------
# Lion
# ---------------------------------------------------------------------------
def lion_paper_step(theta, m, g, lr, beta1, beta2, wd):
    """Chen et al. 2023 算法 2 的逐行转写（纯函数，不原地）。"""
    c = beta1 * m + (1 - beta1) * g
    theta = theta - lr * (torch.sign(c) + wd * theta)
    m = beta2 * m + (1 - beta2) * g
    return theta, m


@pytest.mark.parametrize("wd", [0.0, 0.5])
@pytest.mark.parametrize("shape", [(7,), (4, 5), (2, 3, 4)])
def test_lion_matches_paper_transcription(wd, shape):
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(shape))
    opt = Lion([p], lr=1e-2, betas=(0.9, 0.99), weight_decay=wd)
    theta, m = p.detach().clone(), torch.zeros(shape)
    for _ in range(20):
        g = torch.randn(shape)
        p.grad = g.clone()
        opt.step()
        theta, m = lion_paper_step(theta, m, g, 1e-2, 0.9, 0.99, wd)
        torch.testing.assert_close(p.detach(), theta, rtol=0, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=0, atol=1e-7)


def test_lion_first_step_moves_every_coordinate_by_exactly_lr():
    # 第一步 m=0，c=(1-β1)g：sign(c)=sign(g)；与梯度的尺度无关
    p = nn.Parameter(torch.zeros(1000))
    grad = torch.randn(1000) * torch.logspace(-6, 3, 1000)
    p.grad = grad
    Lion([p], lr=1e-3).step()
    torch.testing.assert_close(p.detach(), -1e-3 * torch.sign(grad))


def test_lion_zero_gradient_and_zero_momentum_means_no_move_and_maximize_flips():
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    p.grad, q.grad = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.0, 1.0, -1.0])
    Lion([p], lr=0.1).step()
    Lion([q], lr=0.1, maximize=True).step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, 0.9, 1.1]))
    torch.testing.assert_close(q.detach(), torch.tensor([1.0, 1.1, 0.9]))


@pytest.mark.parametrize("kwargs, match", [(dict(lr=-1.0), "lr"), (dict(betas=(0.9, 1.5)), "betas"),
                                           (dict(weight_decay=-1.0), "weight_decay")])
def test_lion_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Lion([nn.Parameter(torch.ones(1))], **kwargs)


# ---------------------------------------------------------------------------
# Newton–Schulz
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48)])
def test_quintic_newton_schulz_pushes_singular_values_near_one(shape):
    g = low_stable_rank_matrix(*shape)      # 奇异值 1, 1/2, …：条件数 = min(shape)
    before = torch.linalg.svdvals(g / g.norm())
    assert before.min() < 0.05
    o = zeropower_via_newton_schulz(g)
    assert o.shape == g.shape and o.dtype == torch.bfloat16
    s = torch.linalg.svdvals(o.float())
    assert 0.6 < s.min() and s.max() < 1.25


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_cubic_newton_schulz_converges_to_polar_factor(shape):
    g = low_stable_rank_matrix(*shape).double()
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    o = zeropower_via_newton_schulz(g, steps=40, coefficients=CUBIC_COEFFICIENTS, dtype=torch.float64)
    torch.testing.assert_close(o, u @ vh, rtol=0, atol=1e-8)
    torch.testing.assert_close(o.T @ o if shape[0] > shape[1] else o @ o.T, torch.eye(min(shape), dtype=torch.float64),
                               rtol=0, atol=1e-8)


def test_newton_schulz_keeps_singular_vectors():
    # 奇次多项式只改奇异值：Uᵀ O V 是对角阵
    g = low_stable_rank_matrix(32, 16).double()
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    core = u.T @ zeropower_via_newton_schulz(g, dtype=torch.float64) @ vh.T
    off_diag = core - torch.diag(torch.diagonal(core))
    assert off_diag.abs().max() < 1e-10


# ---------------------------------------------------------------------------
# Muon
# ---------------------------------------------------------------------------
SHAPES = [(32, 16), (16, 48), (24, 24)]


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
def test_muon_matches_torch_muon(nesterov, adjust_lr_fn):
    torch.manual_seed(0)
    ours_p = [nn.Parameter(torch.randn(s)) for s in SHAPES]
    ref_p = [nn.Parameter(p.detach().clone()) for p in ours_p]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.005}]  # noqa: E731
    ours, ref = Muon(groups(ours_p), **kw), torch.optim.Muon(groups(ref_p), **kw)
    for _ in range(15):
        grads = [torch.randn(s) for s in SHAPES]
        for params, opt in ((ours_p, ours), (ref_p, ref)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(ours_p, ref_p):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


class TinyLlamaLike(nn.Module):
    def __init__(self, vocab=50, d=16):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.q_proj, self.down_proj = nn.Linear(d, d, bias=False), nn.Linear(4 * d, d, bias=True)
        self.up_proj = nn.Linear(d, 4 * d, bias=False)
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        h = self.embed_tokens(idx)
        h = h + self.q_proj(h)
        h = h + self.down_proj(torch.relu(self.up_proj(h)))
        return self.lm_head(self.norm(h))


def test_build_muon_param_groups_splits_and_adamw_side_matches_torch_adamw():
    torch.manual_seed(0)
    model = TinyLlamaLike()
    groups = build_muon_param_groups(model, lr=0.02, adamw_lr=1e-3, adamw_weight_decay=0.1)
    muon_ids = {id(p) for p in groups[0]["params"]}
    assert groups[0]["use_muon"] and not groups[1]["use_muon"]
    assert muon_ids == {id(model.q_proj.weight), id(model.up_proj.weight), id(model.down_proj.weight)}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))

    # AdamW 那一侧必须与 torch.optim.AdamW（同样的 betas/eps/λ）逐步相同
    ref_model = TinyLlamaLike()
    ref_model.load_state_dict(model.state_dict())
    opt = Muon(groups)
    ref_groups = build_muon_param_groups(ref_model)
    ref_adamw = torch.optim.AdamW(ref_groups[1]["params"], lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ref_muon = torch.optim.Muon(ref_groups[0]["params"], lr=0.02, weight_decay=0.0, momentum=0.95)
    idx = torch.randint(0, 50, (4, 8))
    for _ in range(10):
        for m, opts in ((model, [opt]), (ref_model, [ref_adamw, ref_muon])):
            m.zero_grad()
            m(idx).logsumexp(-1).mean().backward()
            for o in opts:
                o.step()
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_build_muon_param_groups_handles_tied_weights():
    model = TinyLlamaLike()
    model.lm_head.weight = model.embed_tokens.weight
    groups = build_muon_param_groups(model)
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) and id(model.embed_tokens.weight) in {id(p) for p in groups[1]["params"]}


def test_muon_rejects_non_2d_params_with_a_hint():
    with pytest.raises(ValueError, match="build_muon_param_groups"):
        Muon([nn.Parameter(torch.ones(4))])
    with pytest.raises(ValueError, match="3-D"):
        Muon([nn.Parameter(torch.ones(2, 3, 4))])


@pytest.mark.parametrize("kwargs, match", [(dict(lr=-1.0), "lr"), (dict(momentum=1.0), "momentum"),
                                           (dict(adjust_lr_fn="bogus"), "adjust_lr_fn"), (dict(ns_steps=0), "ns_steps"),
                                           (dict(eps=0.0), "eps")])
def test_muon_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon([nn.Parameter(torch.ones(2, 2))], **kwargs)


def test_muon_adamw_group_checks_betas():
    with pytest.raises(ValueError, match="betas"):
        Muon([{"params": [nn.Parameter(torch.ones(3))], "use_muon": False, "betas": (0.9, 1.0)}])


def test_public_api_exports_resolve():
    import importlib
    import types

    import training_sys.optimization as opt

    # 先导入所有子模块：子模块名若与导出的函数同名，导入它会把包属性覆盖成模块（cross_entropy 曾经如此）
    for module in set(opt._EXPORTS.values()):
        importlib.import_module(f"training_sys.optimization.{module}")
    for name in opt.__all__:
        assert not isinstance(getattr(opt, name), types.ModuleType), name
    assert AdamW is opt.AdamW
    with pytest.raises(AttributeError, match="AdamW"):
        opt.NotAThing
