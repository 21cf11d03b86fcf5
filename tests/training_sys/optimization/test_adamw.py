"""AdamW / SGD 对照 torch.optim：多步、权重衰减、多种形状、参数组、amsgrad / maximize / nesterov、state_dict 互换。"""

from __future__ import annotations

import copy

import pytest
import torch

from training_sys.optimization import SGD, AdamW, weight_decay_param_groups

SHAPES = [(), (7,), (5, 3), (2, 3, 4)]


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def groups(params, extra_lr: float):
    # 两个参数组：第二组学习率不同、不做权重衰减（LLM 里 norm / bias 的常见设置）
    return [{"params": params[:2]}, {"params": params[2:], "lr": extra_lr, "weight_decay": 0.0}]


def run_pair(make_ours, make_ref, steps: int, seed: int = 0, loss_sign: float = 1.0):
    ours_p, ref_p = make_params(seed), make_params(seed)
    ours, ref = make_ours(ours_p), make_ref(ref_p)
    gen = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        noise = [torch.randn(s, generator=gen) for s in SHAPES]
        for params, opt in ((ours_p, ours), (ref_p, ref)):
            opt.zero_grad()
            # 二次 loss + 随机梯度噪声；梯度尺度随步数变化，考验 v 的滑动平均
            loss = sum(((p - 0.5) ** 2).sum() * (1 + step % 3) + (p * n).sum() for p, n in zip(params, noise))
            (loss_sign * loss).backward()
            opt.step()
    return ours_p, ref_p, ours, ref


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_adamw_matches_torch_over_200_steps(amsgrad, maximize):
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, amsgrad=amsgrad, maximize=maximize)
    ours_p, ref_p, _, _ = run_pair(lambda p: AdamW(groups(p, 3e-3), **kw),
                                   lambda p: torch.optim.AdamW(groups(p, 3e-3), foreach=False, **kw),
                                   steps=200, loss_sign=-1.0 if maximize else 1.0)
    for a, b in zip(ours_p, ref_p):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_adamw_foreach_bit_identical_to_torch_foreach(amsgrad, maximize):
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, amsgrad=amsgrad, maximize=maximize)
    ours_p, ref_p, ours, ref = run_pair(lambda p: AdamW(groups(p, 3e-3), foreach=True, **kw),
                                        lambda p: torch.optim.AdamW(groups(p, 3e-3), foreach=True, **kw),
                                        steps=200, loss_sign=-1.0 if maximize else 1.0)
    for a, b in zip(ours_p, ref_p):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for i in range(len(SHAPES)):
        for key, value in ref.state_dict()["state"][i].items():
            torch.testing.assert_close(ours.state_dict()["state"][i][key], value, rtol=0, atol=0)


def test_adamw_foreach_matches_single_tensor_path_and_skips_params_without_grad():
    # 第 0 个参数前 5 步没有梯度：foreach 与逐参数两种写法都应跳过它（step 不前进），之后各参数的 step 不同
    kw = dict(lr=1e-2, weight_decay=0.1)
    params = {flag: make_params() for flag in (False, True)}
    opts = {flag: AdamW(groups(params[flag], 3e-3), foreach=flag, **kw) for flag in (False, True)}
    for step in range(20):
        for flag in (False, True):
            opts[flag].zero_grad(set_to_none=True)
            ps = params[flag] if step >= 5 else params[flag][1:]
            sum(((p - 0.5) ** 2).sum() for p in ps).backward()
            opts[flag].step()
    for a, b in zip(params[False], params[True]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # 两条路径的运算与舍入完全相同
    assert opts[True].state[params[True][0]]["step"].item() == 15
    assert opts[True].state[params[True][1]]["step"].item() == 20


def test_adamw_state_dict_interchangeable_with_torch():
    kw = dict(lr=1e-2, weight_decay=0.1)
    ours_p, ref_p, ours, ref = run_pair(lambda p: AdamW(p, **kw), lambda p: torch.optim.AdamW(p, **kw), steps=10)
    # 把 torch 的状态装进一个新的 AdamW（参数也换成 torch 那份），继续训练应与 torch 同步
    resumed = AdamW(ref_p_copy := [torch.nn.Parameter(p.detach().clone()) for p in ref_p], **kw)
    resumed.load_state_dict(copy.deepcopy(ref.state_dict()))  # state_dict 返回的是引用，不拷贝就会共享动量
    for _ in range(5):
        for params, opt in ((ref_p_copy, resumed), (ref_p, ref)):
            opt.zero_grad()
            sum((p**2).sum() for p in params).backward()
            opt.step()
    for a, b in zip(ref_p_copy, ref_p):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert set(ours.state_dict()["state"][0]) == set(ref.state_dict()["state"][0])


def test_adamw_works_with_lambda_lr_and_skips_params_without_grad():
    p, frozen = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = AdamW([p, frozen], lr=1.0, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    p.grad = torch.ones(3)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5
    torch.testing.assert_close(frozen.detach(), torch.ones(3))
    assert frozen not in opt.state


@pytest.mark.parametrize("cfg", [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3),
                                 dict(momentum=0.9, nesterov=True), dict(momentum=0.5, nesterov=True, maximize=True)])
def test_sgd_matches_torch_over_200_steps(cfg):
    kw = dict(lr=1e-2, weight_decay=1e-2, **cfg)
    ours_p, ref_p, ours, ref = run_pair(lambda p: SGD(groups(p, 3e-3), **kw),
                                        lambda p: torch.optim.SGD(groups(p, 3e-3), foreach=False, **kw),
                                        steps=200, loss_sign=-1.0 if cfg.get("maximize") else 1.0)
    for a, b in zip(ours_p, ref_p):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    if cfg.get("momentum"):
        torch.testing.assert_close(ours.state[ours_p[2]]["momentum_buffer"], ref.state[ref_p[2]]["momentum_buffer"],
                                   rtol=0, atol=1e-6)


def test_closure_is_called_and_returned():
    p = torch.nn.Parameter(torch.ones(2))
    for opt in (AdamW([p]), SGD([p], lr=0.1)):
        expected = (p.detach() ** 2).sum().item()  # closure 在更新之前求值

        def closure():
            opt.zero_grad()
            loss = (p**2).sum()
            loss.backward()
            return loss
        assert opt.step(closure).item() == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1e-3), "lr=-0.001"), (dict(betas=(0.9, 1.0)), r"betas\[1\]"), (dict(betas=(-0.1, 0.9)), r"betas\[0\]"),
    (dict(eps=0.0), "eps=0.0"), (dict(weight_decay=-0.1), "weight_decay"), (dict(betas=(0.9,)), "betas"),
])
def test_adamw_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_adamw_bad_group_lr():
    with pytest.raises(ValueError, match="lr"):
        AdamW([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": -1.0}])


@pytest.mark.parametrize("kwargs, match", [(dict(lr=-1.0), "lr"), (dict(momentum=-0.1), "momentum"),
                                           (dict(nesterov=True), "nesterov"),
                                           (dict(momentum=0.9, dampening=0.1, nesterov=True), "dampening")])
def test_sgd_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD([torch.nn.Parameter(torch.ones(1))], **{"lr": 0.1, **kwargs})


def test_weight_decay_param_groups_skip_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    decay, no_decay = weight_decay_param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 3
    AdamW([decay, no_decay], lr=1e-3)
    with pytest.raises(ValueError, match="weight_decay"):
        weight_decay_param_groups(model, -0.1)
