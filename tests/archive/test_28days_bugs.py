"""第 15–28 天：自检能抓住学习者"真会犯"的错。

tests/archive/test_28days.py 用通用的扰动（输出 +1、函数还没写）证明每道题的自检能失败；这里换成
调试清单和课文里点名的那些**看起来对、实际错**的写法（AdamW 写成 L2 正则、忘了 zero_grad、
续训没存优化器状态、bf16 直接截断……），每个都必须被判为 ✗，而其余练习不受影响。
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO_ROOT, load_script

DAYS_DIR = REPO_ROOT / "archive" / "28days_challenges"


def _day(number: int):
    (path,) = DAYS_DIR.glob(f"day{number:02d}_*.py")
    return load_script(path)


# ---------------------------------------------------------------------------
# 有 bug 的解答：每个都与正确答案只差"一个常见的坑"
# ---------------------------------------------------------------------------
def linear_init_bias_first(in_features, out_features, seed):
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(in_features)
    bias = torch.empty(out_features).uniform_(-bound, bound, generator=g)  # 抽随机数的顺序反了
    weight = torch.empty(out_features, in_features).uniform_(-bound, bound, generator=g)
    return weight, bias


def adamw_as_l2(p, grads, lr, betas, eps, weight_decay):
    p, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * p  # 把权重衰减当成 L2 正则塞进梯度：这是 Adam，不是 AdamW
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p = p - lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
    return p


def ce_ignore_mean_over_all(logits, targets, ignore_index):
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)
    ce = torch.logsumexp(logits, dim=-1) - logits[torch.arange(len(targets)), safe]
    return torch.where(valid, ce, 0.0).sum() / len(targets)  # 分母用了总个数，不是有效个数


def adam_bytes_without_step(model):
    return sum(2 * p.nbytes for p in model.parameters() if p.requires_grad)  # 漏了每个参数 4 字节的 step


def train_flops_all_layers_3x(batch, sizes):
    return sum(3 * 2 * batch * a * b for a, b in zip(sizes, sizes[1:]))  # 第一层不需要 ∂x，不该算 3 倍


def branch_with_python_if(x):
    if x.sum() > 0:  # 数据相关的 Python 分支：fullgraph=True 编译会报错
        return x * 2
    return x - 1


def bf16_truncate(x):
    return (x.view(torch.int32) & -65536).view(torch.float32)  # 直接截断，没有就近舍入


def naive_variance(x):
    return (x * x).mean(-1) - x.mean(-1) ** 2  # E[x²] − E[x]²：灾难性相消


def train_without_zero_grad(model, x, y, lr, steps):
    for _ in range(steps):
        F.mse_loss(model(x), y).backward()  # 梯度一步步累加
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return [p.detach() for p in model.parameters()]


def attention_without_scaling(q, k, v, causal):
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1)  # 忘了除以 √hs
    if causal:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def accumulate_without_dividing(model, x, y, accum):
    for xb, yb in zip(x.chunk(accum), y.chunk(accum)):
        F.cross_entropy(model(xb).flatten(0, 1), yb.flatten()).backward()  # 没除以 accum
    return [p.grad for p in model.parameters()]


def resume_without_optimizer_state(day):
    def resume(make_model, data, steps_before, steps_after):
        model = make_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(steps_before):
            day._train_step(model, opt, data, step)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)  # 只存了模型
        buffer.seek(0)
        model = make_model()
        model.load_state_dict(torch.load(buffer))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # Adam 的 m、v、step 从零开始
        for step in range(steps_before, steps_before + steps_after):
            day._train_step(model, opt, data, step)
        return [p.detach() for p in model.parameters()]

    return resume


def roll_wrong_direction(a, shift):
    return a[(torch.arange(len(a)) + shift) % len(a)]  # 往左滚了


def layer_norm_unbiased(x, weight, bias, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).sum(-1, keepdim=True) / (x.shape[-1] - 1)  # LayerNorm 用的是有偏方差
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


BUGS = [
    (16, "ex5_linear_default_init", lambda day: linear_init_bias_first),
    (17, "ex4_adamw", lambda day: adamw_as_l2),
    (18, "ex4_cross_entropy_ignore", lambda day: ce_ignore_mean_over_all),
    (19, "ex2_adam_state_bytes", lambda day: adam_bytes_without_step),
    (20, "ex3_mlp_train_flops", lambda day: train_flops_all_layers_3x),
    (21, "ex2_branch_free", lambda day: branch_with_python_if),
    (22, "ex2_round_to_bf16", lambda day: bf16_truncate),
    (23, "ex5_variance", lambda day: naive_variance),
    (24, "ex6_train_sgd", lambda day: train_without_zero_grad),
    (25, "ex3_attention", lambda day: attention_without_scaling),
    (26, "ex4_accumulated_grads", lambda day: accumulate_without_dividing),
    (26, "ex6_resume", resume_without_optimizer_state),
    (27, "ex5_roll", lambda day: roll_wrong_direction),
    (28, "ex1_layer_norm", lambda day: layer_norm_unbiased),
]


@pytest.mark.parametrize("number, name, make_bug", BUGS, ids=[f"day{n}-{name}" for n, name, _ in BUGS])
def test_realistic_bug_is_caught(number, name, make_bug, monkeypatch, capsys):
    day = _day(number)
    monkeypatch.setattr(day, "PUZZLE_ALLOWED", {})  # 只看数值比较（有的 bug 版本用了白名单外的函数）
    monkeypatch.setattr(day, name, make_bug(day))
    # ex25 的 ex3 被 ex5、ex7 调用，ex28 的 ex1 被 ex5、ex7 调用：依赖它的题一起失败也是对的
    dependants = {(25, "ex3_attention"): 2, (28, "ex1_layer_norm"): 2}.get((number, name), 0)
    total = len(day.CHECKS)
    passed, _ = day.run_checks(verbose=True, seeds=(0, 1, 2))  # 固定三组输入：与 SMOKE 无关
    out = capsys.readouterr().out
    assert f"✗ {name}:" in out, out
    assert passed == total - 1 - dependants, out


def test_day21_cond_and_where_agree_on_both_branches():
    day = _day(21)
    for x in (torch.ones(2, 3), -torch.ones(2, 3)):  # 两个分支各走一次
        torch.testing.assert_close(day.ex2_branch_free(x), day._ref_cond(x))
        torch.testing.assert_close(day.ex2_branch_free(x), day._branchy(x))


def test_day24_demo_reproduces_every_pitfall(capsys):
    day = _day(24)
    day.demo()
    out = capsys.readouterr().out
    for symptom in ("expected input[8, 32, 32, 3] to have 3 channels", "Expected target size",
                    "view size is not compatible", "must have the same dtype", "expected target dtype to be Long",
                    "Expected more than 1 value per channel", "nan"):
        assert symptom in out, symptom
