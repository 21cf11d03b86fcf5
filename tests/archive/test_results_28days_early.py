"""28 天挑战第 1–14 天：课文与演示里的数字说法都是真的。

每个测试独立地（numpy、标准库、手算或不经过课文函数的 torch 写法）重算一个课文里写死或打印的数字，
再和课文对照：dtype 字节数与 uint8 回绕、步长算术、广播报错信息、整数求和的提升与回绕、where 的 nan 梯度、
float32 下不同求和顺序的误差量级、median 取较小者、反复 cat 的 O(n²) 复制量、chunk / tensor_split 的块大小、
ReLU 输出为 0 的比例（基线 50% 与 200 个种子量出的区间）、gradcheck 的默认容差与有限差分误差、
load_state_dict 的 strict 语义。
"""

from __future__ import annotations

import inspect
import statistics

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.conftest import REPO_ROOT, load_script

DAYS_DIR = REPO_ROOT / "archive" / "28days_challenges"


def _day(number: int):
    (path,) = DAYS_DIR.glob(f"day{number:02d}_*.py")
    return load_script(path)


# ---------------------------------------------------------------------------
# 第 1 天：dtype 字节数、uint8 回绕、permute 之后逐元素运算沿用步长
# ---------------------------------------------------------------------------
def test_day01_dtype_sizes_and_uint8_wraparound(capsys):
    day = _day(1)
    sizes = {torch.float32: 4, torch.int32: 4, torch.float16: 2, torch.bfloat16: 2, torch.int64: 8, torch.float64: 8}
    for dtype, nbytes in sizes.items():  # 课文第 2 点的表：与 finfo/iinfo 的位数互相印证
        bits = (torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)).bits
        assert bits // 8 == nbytes == torch.empty(0, dtype=dtype).element_size()
    day.demo()
    out = capsys.readouterr().out
    assert (200 + 100) % 256 == 44
    assert "逐元素 a[0]+a[1] = 44" in out and "之和 = 300" in out


def test_day01_elementwise_op_on_a_permuted_view_keeps_its_strides(capsys):
    day = _day(1)
    day.demo()
    out = capsys.readouterr().out
    # (H, W, C) = (2, 3, 4) 的连续张量步长 (12, 4, 1)，permute(2, 0, 1) 之后 (1, 12, 4)：用 numpy 的字节步长独立算
    strides = np.empty((2, 3, 4), dtype=np.uint8).strides
    expected = (strides[2], strides[0], strides[1])
    assert expected == (1, 12, 4)
    assert f"stride={expected}，contiguous=False" in out
    # 课文 ex4 的说法：结果不连续（下游 view 之前要 .contiguous()）
    chw = day.ex4_image_to_float(torch.randint(0, 256, (5, 6, 3), dtype=torch.uint8))
    assert chw.stride() == (1, 18, 3) and not chw.is_contiguous()


# ---------------------------------------------------------------------------
# 第 2 天：负步长切片不支持；重复下标 += 只加一次（与 numpy 一致），index_add_ 累加
# ---------------------------------------------------------------------------
def test_day02_negative_step_raises_and_repeated_index_adds_once(capsys):
    day = _day(2)
    with pytest.raises(ValueError, match="step must be greater than zero"):
        torch.arange(4)[::-1]
    ref = np.zeros(3)
    ref[[1, 1, 1]] += 1  # numpy 的高级索引赋值：同样只加一次
    day.demo()
    out = capsys.readouterr().out
    assert f"只加一次：{ref.tolist()}" in out
    accumulated = np.zeros(3)
    np.add.at(accumulated, [1, 1, 1], 1)
    assert accumulated.tolist() == torch.zeros(3).index_add_(0, torch.tensor([1, 1, 1]), torch.ones(3)).tolist()


# ---------------------------------------------------------------------------
# 第 3 天：步长算术
# ---------------------------------------------------------------------------
def test_day03_stride_arithmetic_of_the_docstring(capsys):
    day = _day(3)
    item = np.dtype(np.float32).itemsize
    np_strides = tuple(s // item for s in np.empty((2, 3, 4), dtype=np.float32).strides)
    assert np_strides == (12, 4, 1) == day.ex1_contiguous_strides((2, 3, 4))
    a = torch.randn(5, 7)[:, :5]  # 行步长 7、列步长 1 的方阵视图
    assert torch.diagonal(a).stride() == (a.stride(0) + a.stride(1),) == (8,)
    assert torch.arange(3).expand(4, 3).stride() == (0, 1)
    assert torch.arange(10).unfold(0, 3, 1).stride() == (1, 1)  # 窗口维与滑动维共用步长
    assert torch.empty(0, 5).t().is_contiguous() and torch.empty(3, 1).as_strided((3, 1), (1, 99)).is_contiguous()
    day.demo()
    out = capsys.readouterr().out
    assert "stride=(12, 4, 1)" in out and "stride=(1, 12, 4) contiguous=False" in out


# ---------------------------------------------------------------------------
# 第 4 天：课文引用的报错信息；练习模式（ex8 还没写）下演示不崩
# ---------------------------------------------------------------------------
def test_day04_quoted_error_message_is_what_torch_raises():
    day = _day(4)
    quoted = "The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 1"
    assert "(2, 3) + (2, 4)" in day.__doc__ and quoted in day.__doc__
    with pytest.raises(RuntimeError) as err:
        torch.ones(2, 3) + torch.ones(2, 4)
    assert str(err.value) == quoted


def test_day04_demo_survives_an_unwritten_ex8(monkeypatch, capsys):
    day = _day(4)

    def stub(*args, **kwargs):
        raise NotImplementedError("练习：按广播规则算结果形状")

    monkeypatch.setattr(day, "ex8_broadcast_shape", stub)
    day.demo()  # 练习模式把 ex8 换成桩：演示照常跑完（不抛 NotImplementedError），把 ✗ 留给随后的自检
    out = capsys.readouterr().out
    assert "ex8 手写版本还没写" in out and "broadcast_shapes((5, 1, 3), (4, 1)) = (5, 4, 3)" in out


# ---------------------------------------------------------------------------
# 第 5 天：整数求和提升到 int64（int8 里会回绕到 16），int64 自己满了照样回绕；var 的两种修正
# ---------------------------------------------------------------------------
def test_day05_integer_sums_promote_and_int64_still_wraps(capsys):
    day = _day(5)
    wrapped = int(np.full(100, 100, dtype=np.int8).sum(dtype=np.int8))
    assert wrapped == 16
    day.demo()
    out = capsys.readouterr().out
    assert "100 个 100 之和 = 10000（torch.int64）" in out and f"回绕成 {wrapped}（= 10000 mod 256）" in out
    assert torch.tensor([2**62, 2**62]).sum().item() == -(2**63)  # 课文："int64 本身满了照样回绕，不报错"
    v = [1.0, 2.0, 3.0, 4.0]
    assert f"var 默认无偏 {statistics.variance(v):.4f}，correction=0 时 {statistics.pvariance(v):.4f}" in out


# ---------------------------------------------------------------------------
# 第 7 天：where 的梯度陷阱、整行屏蔽的 softmax
# ---------------------------------------------------------------------------
def test_day07_where_gradient_trap_and_fully_masked_row(capsys):
    day = _day(7)
    day.demo()
    out = capsys.readouterr().out
    d_sqrt_at_4 = 1 / (2 * 4**0.5)  # d√x/dx = 1/(2√x)
    assert f"梯度 = [nan, {d_sqrt_at_4}]" in out
    assert f"先 clamp 再 sqrt：梯度 = [0.0, {d_sqrt_at_4}]" in out
    assert "整行被屏蔽时 softmax = [[nan, nan, nan]]" in out


# ---------------------------------------------------------------------------
# 第 8 天：float32 下不同求和顺序差 1e-6 量级（所以自检用 float64）
# ---------------------------------------------------------------------------
def test_day08_float32_summation_orders_differ_by_about_1e_minus_6():
    day = _day(8)
    worst32 = worst64 = 0.0
    for seed in range(300):
        a, b = day._matmul_inputs(torch.Generator().manual_seed(seed))
        broadcast_sum = (a[:, :, None] * b[None]).sum(1)
        worst64 = max(worst64, (broadcast_sum - a @ b).abs().max().item())
        a32, b32 = a.float(), b.float()
        worst32 = max(worst32, ((a32[:, :, None] * b32[None]).sum(1) - a32 @ b32).abs().max().item())
    assert 1e-7 < worst32 < 5e-6, worst32  # 练习的尺寸（k ≤ 5）上最坏约 1e-6
    assert worst64 < 1e-13, worst64


def test_day08_demo_prints_ratio_and_difference_for_every_shape(monkeypatch, capsys):
    day = _day(8)
    shapes = ((1, 2, 5, 3), (2, 1, 7, 4))
    monkeypatch.setattr(day, "DEMO_SHAPES", shapes)
    monkeypatch.setattr(day, "benchmark_interleaved", lambda fns, **kw: [0.3, 0.2])  # 假计时：只测打印的算术
    day.demo()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("注意力分数")]
    assert [line.split("：")[0] for line in lines] == [f"注意力分数 {shape}" for shape in shapes]
    for line in lines:  # 假计时 0.3 ms vs 0.2 ms：比值 1.50，差 +100 µs
        assert "einsum 0.300 ms vs matmul 0.200 ms（einsum/matmul = 1.50，einsum − matmul = +100 µs）" in line
        assert float(line.rsplit("最大差 ", 1)[1]) < 1e-5


# ---------------------------------------------------------------------------
# 第 9 天：偶数个元素的 median 取较小者
# ---------------------------------------------------------------------------
def test_day09_median_of_even_length_is_the_lower_one(monkeypatch, capsys):
    day = _day(9)
    monkeypatch.setattr(day, "benchmark_interleaved", lambda fns, **kw: [0.25, 12.5])  # 假计时：sort/topk = 50
    day.demo()
    out = capsys.readouterr().out
    x = [3.0, 1.0, 2.0, 5.0]
    assert statistics.median_low(x) == 2.0 != statistics.median(x) == 2.5
    assert f"median = {statistics.median_low(x)}（较小的中位数，不是 {statistics.median(x)}）" in out
    assert f"n={day.VOCAB} 取前 {day.TOP_K}：topk 0.250 ms vs 完整 sort 12.500 ms（sort/topk = 50×）" in out


# ---------------------------------------------------------------------------
# 第 10 天：反复 cat 复制 n(n+1)/2 行；chunk 可能少于 n 块；tensor_split 与 numpy.array_split 相同
# ---------------------------------------------------------------------------
def test_day10_repeated_cat_is_quadratic_and_split_sizes(capsys):
    day = _day(10)
    for n in (1, 7, 60):
        assert day.rows_copied_by_repeated_cat(n) == sum(range(1, n + 1)) == n * (n + 1) // 2
    day.demo()
    out = capsys.readouterr().out
    assert "共复制 500500 行" in out and "cat 一次：1000 行" in out
    assert [len(c) for c in torch.arange(6).chunk(4)] == [2, 2, 2]
    assert [len(c) for c in torch.arange(6).tensor_split(4)] == [len(c) for c in np.array_split(np.arange(6), 4)]
    assert [len(c) for c in np.array_split(np.arange(6), 4)] == [2, 2, 1, 1]


# ---------------------------------------------------------------------------
# 第 12 天：ReLU 输出为 0 的比例——基线 50%，200 个种子量出的区间与课文常数一致
# ---------------------------------------------------------------------------
def _zero_stats_by_hand(model: nn.Sequential, x: torch.Tensor):
    """不用钩子，逐层前向，算每个 ReLU 的 (输出为 0 的比例, 死神经元个数)。"""
    stats = {}
    for name, layer in model.named_children():
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            zero = x == 0
            stats[name] = (zero.float().mean().item(), int(zero.all(0).sum()))
    return stats


def test_day12_relu_zero_stats_match_a_hookless_forward():
    day = _day(12)
    torch.manual_seed(3)
    model, x = day.demo_model(), torch.randn(64, 4)
    with torch.no_grad():
        expected = _zero_stats_by_hand(model, x)
    got = day.relu_zero_stats(model, x)
    assert list(got) == list(expected) == ["1", "3"]
    for name, (frac, dead) in expected.items():
        assert got[name] == (pytest.approx(frac), dead, 16)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_day12_zero_fraction_baseline_and_range_over_200_seeds(capsys):
    day = _day(12)
    per_layer = {"1": [], "3": []}
    dead = {"1": [], "3": []}
    with torch.no_grad():
        for seed in range(200):
            torch.manual_seed(seed)
            model = day.demo_model()
            for name, (frac, n_dead) in _zero_stats_by_hand(model, torch.randn(64, 4)).items():
                per_layer[name].append(frac)
                dead[name].append(n_dead)
    for name, (lo, hi, dead_hi) in day.ZERO_FRACTION_RANGE.items():
        fracs = np.array(per_layer[name])
        assert abs(fracs.mean() - 0.5) < 0.02  # 对称初始化的基线：预激活正负各半
        assert np.quantile(fracs, 0.05) == pytest.approx(lo, abs=0.01)
        assert np.quantile(fracs, 0.95) == pytest.approx(hi, abs=0.01)
        assert int(np.quantile(dead[name], 0.95)) == dead_hi
    day.demo()
    out = capsys.readouterr().out
    assert out.count("对称初始化的基线 50%；200 个随机种子的 90% 区间") == 2
    assert "90% 区间 40%–58%" in out and "90% 区间 36%–64%" in out


# ---------------------------------------------------------------------------
# 第 13 天：gradcheck 的默认参数、机器精度的两种说法、有限差分误差的极值
# ---------------------------------------------------------------------------
def test_day13_gradcheck_defaults_and_machine_epsilon_claims():
    params = inspect.signature(torch.autograd.gradcheck).parameters
    assert (params["eps"].default, params["atol"].default, params["rtol"].default) == (1e-6, 1e-5, 1e-3)
    assert torch.finfo(torch.float32).eps == 2.0**-23 == 2 * 2.0**-24
    assert float(np.nextafter(np.float32(1), np.float32(2)) - np.float32(1)) == 2.0**-23  # 1 附近的间距 1.2e-7
    assert f"{2.0**-24:.0e}" == "6e-08" and f"{2.0**-53:.1e}" == "1.1e-16"


def test_day13_finite_difference_error_extremes_match_docstring():
    day = _day(13)
    err32 = day.finite_difference_error(torch.float32)
    err64 = day.finite_difference_error(torch.float64)
    assert "最大约 7e-2" in day.__doc__ and "实测中位数 ~2e-11、最大 ~1e-10" in day.__doc__
    assert 6e-2 < err32.max().item() < 8e-2
    assert 1e-11 < err64.median().item() < 3e-11 and 5e-11 < err64.max().item() < 2e-10


# ---------------------------------------------------------------------------
# 第 14 天：load_state_dict 的 strict 语义；state_dict 的值 detach 且共享存储
# ---------------------------------------------------------------------------
def test_day14_load_state_dict_strict_semantics_and_shared_storage():
    day = _day(14)
    assert "missing_keys / unexpected_keys" in day.__doc__
    layer = nn.Linear(2, 3)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        layer.load_state_dict({"weight": torch.zeros(3, 2), "bias": torch.zeros(3), "extra": torch.zeros(1)})
    result = layer.load_state_dict({"weight": torch.zeros(3, 2), "extra": torch.zeros(1)}, strict=False)
    assert (result.missing_keys, result.unexpected_keys) == (["bias"], ["extra"])
    with pytest.raises(RuntimeError, match="size mismatch"):
        layer.load_state_dict({"weight": torch.zeros(2, 2)}, strict=False)
    weight = layer.state_dict()["weight"]
    assert not weight.requires_grad and weight.data_ptr() == layer.weight.data_ptr()
