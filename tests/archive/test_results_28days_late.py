"""第 15–28 天打印的"多少算好"与课文里的数字：

- 第 16 天：深层 ReLU 网络各层输出标准差的理论值（每层乘 fan_in·σ²/2，ReLU 输出 std = √((1 − 1/π)/2)·std(z)）
  与一个很宽的网络实测一致，演示把理论值印在实测旁边；
- 第 17 天：二次函数上的 SGD 是等比数列 (1 − lr·h)^T，演示印出的理论值就是实测值；
- 第 18 天：标签平滑的手算、均匀瞎猜 ln C、kl_div 'mean' 与 'batchmean' 之比 = 类别数；
- 第 19 天：按 Llama-2-7B 的形状数出 6,738,415,616 个参数（与逐项公式、HF 的数一致）；
- 第 20 天：一步训练的 FLOPs 是前向的 2.5 倍（第一层不需要 ∂x），演示印出本机的算力与带宽天花板；
- 第 21 天：--inductor 开关真的被接受；手写 tanh-GELU 是 9 个逐元素运算；
- 第 22 天：autocast(bf16) 矩阵乘的相对误差等于 √3·eps_bf16/√(32 ln 2) ≈ 2.87e-3，fp32 的 eps / u 由 torch.finfo 给出；
- 第 23 天：float32 下 1e4 + N(0,1) 的 E[x²] − E[x]² 只能是 8 的整数倍，会算成负数；两遍算法与 float64 一致；
- 第 25 天：q·k 的标准差理论值 √hs；
- 第 26 天：均匀 / unigram / bigram 基线与逐个计数一致；默认配置的 loss 落在印出的范围里；
- 第 28 天：每层参数 12C² + 13C，演示印出的总数等于真实模块的参数个数。
"""

from __future__ import annotations

import collections
import math
import re

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO_ROOT, load_script
from utils.lesson_cli import lesson_args

DAYS_DIR = REPO_ROOT / "archive" / "28days_challenges"


def _day(number: int):
    (path,) = DAYS_DIR.glob(f"day{number:02d}_*.py")
    return load_script(path)


def _demo_output(day, capsys, monkeypatch, smoke: bool) -> str:
    monkeypatch.setenv("SMOKE", "1" if smoke else "0")
    day.demo()
    return capsys.readouterr().out


def _range(text: str) -> tuple[float, float]:
    low, high = text.split("–")
    return float(low), float(high)


# ----------------------------------------------------------------------------- 第 16 天
def test_day16_relu_std_theory_matches_a_wide_network():
    day = _day(16)
    width, depth = 1024, 3
    g = torch.Generator().manual_seed(0)
    for weight_std in (1.0, math.sqrt(2.0 / width), 0.02):
        x = torch.randn(256, width, generator=g)
        for layer in range(1, depth + 1):
            x = torch.relu(x @ (torch.randn(width, width, generator=g) * weight_std).t())
            theory = day.relu_mlp_std_theory(layer, width, weight_std)
            assert float(x.std()) == pytest.approx(theory, rel=0.05), (weight_std, layer)
    # 逐项写出的公式：(width·σ²)^l / 2^(l−1) 的平方根乘 √((1 − 1/π)/2)
    assert day.relu_mlp_std_theory(20, 256, 1.0) == pytest.approx(
        math.sqrt(256.0**20 / 2**19) * math.sqrt((1 - 1 / math.pi) / 2), rel=1e-12)


def test_day16_demo_prints_theory_next_to_each_measurement(capsys, monkeypatch):
    out = _demo_output(_day(16), capsys, monkeypatch, smoke=True)
    lines = [line for line in out.splitlines() if "ReLU MLP" in line]
    assert len(lines) == 3 and all("理论" in line for line in lines), out
    assert "理论 0.826 → 0.826" in lines[2]  # Kaiming：√2 · 0.5838，每层不变
    assert "√6 ≈ 2.45 倍" in out


# ----------------------------------------------------------------------------- 第 17 天
def test_day17_sgd_on_a_quadratic_is_geometric(capsys, monkeypatch):
    out = _demo_output(_day(17), capsys, monkeypatch, smoke=False)
    sgd = next(line for line in out.splitlines() if "SGD lr=1.9e-3" in line)
    measured = float(re.search(r"p = \[[-\d.e]+, ([\d.]+)\]", sgd).group(1))
    theory = (1 - 1.9e-3) ** 200  # 平缓方向 h = 1：每步乘 (1 − lr)
    assert measured == pytest.approx(theory, abs=1e-4)
    assert f"{theory:.4f})" in sgd
    assert "f = 500.5" in out  # 起点的 f：½(1000 + 1)


# ----------------------------------------------------------------------------- 第 18 天
def test_day18_demo_prints_hand_computed_losses_and_the_kl_ratio(capsys, monkeypatch):
    out = _demo_output(_day(18), capsys, monkeypatch, smoke=True)
    z = [2.0, 0.5, -1.0]
    lse = math.log(sum(math.exp(v) for v in z))
    ce = lse - z[0]
    smooth = 0.9 * ce + 0.1 * sum(lse - v for v in z) / 3
    assert f"CE = {ce:.4f}（手算 {ce:.4f}；均匀瞎猜 ln 3 = {math.log(3):.4f}）" in out
    assert f"CE = {smooth:.4f}（手算 {smooth:.4f}" in out
    assert "比值 10.00 = 类别数 10" in out


# ----------------------------------------------------------------------------- 第 19 天
def test_day19_llama2_7b_parameter_count(capsys, monkeypatch):
    day = _day(19)
    d, n_layer, d_ff, vocab = 4096, 32, 11008, 32000
    by_hand = n_layer * (4 * d * d + 3 * d * d_ff + 2 * d) + 2 * vocab * d + d  # 每层 + 嵌入与 lm_head + 最后的 norm
    assert day.llama2_7b_param_count() == by_hand == day.LLAMA2_7B_PARAMS == 6_738_415_616
    out = _demo_output(day, capsys, monkeypatch, smoke=True)
    assert "6,738,415,616 个参数" in out and f"16P = {16 * by_hand / 2**30:.1f} GiB" in out


# ----------------------------------------------------------------------------- 第 20 天
def test_day20_train_step_is_two_and_a_half_forwards(capsys, monkeypatch):
    out = _demo_output(_day(20), capsys, monkeypatch, smoke=True)
    # 两层 MLP（64→256→64，batch 32）：前向 F = 2·32·64·256·2；反向第一层只有 ∂W（F/2），第二层 ∂W + ∂x（F）
    fwd = 2 * 32 * 64 * 256 * 2
    assert f"一步训练 {(fwd + fwd / 2 + fwd) / 1e6:.1f} MFLOPs（前向 {fwd / 1e6:.1f} 的 2.50 倍" in out
    assert "本机上限参考：单个 256×256 矩阵乘" in out and "GB/s" in out
    for n in (16, 256, 4096):
        line = next(line for line in out.splitlines() if f"n={n:5d}" in line)
        assert f"{n / 6:7.1f} FLOPs/字节" in line and ("内存受限" in line or "计算受限" in line)


# ----------------------------------------------------------------------------- 第 21 天
def test_day21_inductor_flag_is_accepted_and_unknown_flags_are_not(capsys):
    day = _day(21)
    assert lesson_args(day.__doc__, day._parser(), ["--inductor"]).inductor is True
    assert lesson_args(day.__doc__, day._parser(), []).inductor is False
    with pytest.raises(SystemExit) as err:
        lesson_args(day.__doc__, day._parser(), ["--inductr"])
    assert err.value.code == 2
    assert day.BACKEND == "aot_eager"  # 被导入（而不是加 --inductor 运行）时不用 Inductor


def test_day21_gelu_tanh_is_nine_elementwise_ops():
    day = _day(21)
    assert day.ex1_graph_sizes(day._gelu_tanh, torch.randn(4)) == [9]  # 6 次乘、2 次加、1 次 tanh
    assert "9 个逐元素运算" in day.ex5_fused_gelu.__doc__


# ----------------------------------------------------------------------------- 第 22 天
def test_day22_bf16_matmul_error_matches_theory():
    day = _day(22)
    theory = day.bf16_matmul_error_theory()
    assert theory == pytest.approx(2.0**-7 * math.sqrt(3 / (32 * math.log(2))), rel=1e-12)
    assert theory == pytest.approx(2.873e-3, rel=1e-3)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 256, generator=g), torch.randn(256, 256, generator=g)
    exact = a.double() @ b.double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = a @ b
    assert day.relative_error(low, exact) == pytest.approx(theory, rel=0.05)
    u32 = 2.0**-24
    assert u32 < day.relative_error(a @ b, exact) < 20 * u32  # fp32：几个 u，与 bf16 差四个数量级


def test_day22_demo_states_exact_fp32_epsilon_and_unit_roundoff(capsys, monkeypatch):
    out = _demo_output(_day(22), capsys, monkeypatch, smoke=True)
    eps = torch.finfo(torch.float32).eps
    assert eps == 2.0**-23
    assert f"eps = 2⁻²³ = {eps:.3g}" in out and f"u = 2⁻²⁴ = {eps / 2:.3g}" in out
    assert "1.19e-07" in out and "5.96e-08" in out and "约 1e-7" not in out
    assert "理论 √3·eps_bf16/√(32 ln 2) = 2.87e-03" in out


# ----------------------------------------------------------------------------- 第 23 天
def test_day23_naive_float32_variance_is_a_multiple_of_8_and_can_go_negative():
    day = _day(23)
    assert day.float32_spacing(1e8) == 8.0 == 2.0 ** (26 - 23)
    naives = []
    for seed in range(20):
        data = 1e4 + torch.randn(10_000, generator=torch.Generator().manual_seed(seed))
        naive = ((data * data).mean() - data.mean() ** 2).item()
        assert naive % 8 == 0, naive
        naives.append(naive)
        assert day.ex5_variance(data[None]).item() == pytest.approx(data.double().var(correction=0).item(), abs=1e-3)
    assert min(naives) < 0 < max(naives), naives


def test_day23_demo_prints_the_float64_reference(capsys, monkeypatch):
    out = _demo_output(_day(23), capsys, monkeypatch, smoke=True)
    assert f"{1000 + math.log1p(math.exp(-1)):.6f}" in out
    assert "float64 算出的真值" in out and "只能是 8 的整数倍" in out


# ----------------------------------------------------------------------------- 第 25 天
def test_day25_demo_prints_the_sqrt_hs_theory(capsys, monkeypatch):
    out = _demo_output(_day(25), capsys, monkeypatch, smoke=True)
    assert "（理论 √64 = 8）" in out and "（理论 1）" in out


# ----------------------------------------------------------------------------- 第 26 天
def _entropies_by_counting(tokens: list[int]) -> tuple[float, float]:
    nxt = collections.Counter(tokens[1:])
    n = len(tokens) - 1
    unigram = -sum(c / n * math.log(c / n) for c in nxt.values())
    pairs = collections.Counter(zip(tokens, tokens[1:]))
    rows = collections.Counter(tokens[:-1])
    bigram = -sum(c / n * math.log(c / rows[a]) for (a, _), c in pairs.items())
    return unigram, bigram


def test_day26_token_baselines_match_brute_force_counts():
    day = _day(26)
    g = torch.Generator().manual_seed(0)
    seq = [0]
    for _ in range(2000):  # 大多是 +1，偶尔随机跳：unigram ≈ ln V，bigram 明显更低但不为 0
        seq.append((seq[-1] + 1) % 7 if torch.rand((), generator=g) < 0.8 else int(torch.randint(7, (), generator=g)))
    base = day.token_baselines(torch.tensor(seq), 9)  # 词表 9 > 实际出现的 7：没出现的 token 不贡献
    unigram, bigram = _entropies_by_counting(seq)
    assert base["uniform"] == pytest.approx(math.log(9))
    assert base["unigram"] == pytest.approx(unigram, rel=1e-12)
    assert base["bigram"] == pytest.approx(bigram, rel=1e-12)
    assert 0.3 < base["bigram"] < base["unigram"] < math.log(7) + 1e-9
    train, _ = day.demo_data()
    demo = day.token_baselines(train, day.VOCAB)  # 确定的循环：下一个完全由当前决定
    assert demo["bigram"] == 0.0 and math.copysign(1, demo["bigram"]) == 1  # 不打印 "-0.0000"


def test_day26_default_run_lands_in_the_printed_range():
    day = _day(26)
    history = day.demo_training(200, seed=0)  # 默认配置
    assert [step for step, _, _ in history] == [0, 100, 200]
    low, high = _range(day.DEMO_EXPECTED_INIT)
    assert low <= history[0][2] <= high
    low, high = _range(day.DEMO_EXPECTED_VAL[200])
    assert low <= history[-1][2] <= high


def test_day26_demo_prints_baselines_and_range(capsys, monkeypatch):
    out = _demo_output(_day(26), capsys, monkeypatch, smoke=True)
    assert f"均匀瞎猜 ln 11 = {math.log(11):.4f}" in out and "bigram 条件熵 0.0000" in out
    final = out.strip().splitlines()[-1]
    assert "第  30 步后" in final and "1.2e-4–2.9e-4" in final


def test_day26_demo_losses_are_cross_entropies_of_all_windows():
    day = _day(26)
    model = day.TinyLM(dim=16)
    _, val = day.demo_data()
    w = val.unfold(0, day.DEMO_BLOCK + 1, 1)
    expected = F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten()).item()
    assert day._all_windows_loss(model, val, day.DEMO_BLOCK) == pytest.approx(expected)
    assert model.training


# ----------------------------------------------------------------------------- 第 28 天
def test_day28_demo_parameter_count_matches_the_module(capsys, monkeypatch):
    day = _day(28)
    for C in (8, 32, 128):
        assert day.ex6_block_param_count(C, 4 * C) == 12 * C * C + 13 * C
    out = _demo_output(day, capsys, monkeypatch, smoke=True)
    C, n_layer = 32, 2
    real = sum(p.numel() for p in day._encoder(C, 4, n_layer).parameters())
    assert f"{real:,} 个参数" in out and f"：{n_layer * (12 * C * C + 13 * C) + 2 * C:,}）" in out
    assert "最大变化 0.0e+00" in out
