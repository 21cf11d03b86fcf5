"""utils/debug_checklist.md 里的每一条坑都在这里复现一遍：断言报错类型与报错原文片段（或现象），
再断言清单给出的修复确实有效。

ERRORS 里的每个报错片段必须逐字出现在清单里（test_every_quoted_error_is_in_the_checklist）：
torch 升级后措辞一变，复现测试先失败，提醒我们同时更新测试和清单。
"""

from __future__ import annotations

import re
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.conftest import REPO_ROOT, requires_cuda
from utils.torch_playground import inspect, setup_seed

CHECKLIST = REPO_ROOT / "utils" / "debug_checklist.md"

ERRORS = {
    "conv_nhwc": "expected input[8, 32, 32, 3] to have 3 channels, but got 32 channels instead",
    "batchnorm_btc": "running_mean should contain 10 elements not 16",
    "ce_unflattened": "Expected target size [2, 7], got [2, 5]",
    "ce_half_flattened": "Expected input batch_size (10) to match target batch_size (2).",
    "mse_broadcast": "Using a target size (torch.Size([4])) that is different to the input size (torch.Size([4, 1]))",
    "keepdim": "The size of tensor a (4) must match the size of tensor b (3) at non-singleton dimension 1",
    "view": "view size is not compatible with input tensor's size and stride",
    "linear_long": "mat1 and mat2 must have the same dtype, but got Long and Float",
    "linear_double": "mat1 and mat2 must have the same dtype, but got Double and Float",
    "mean_long": "mean(): could not infer output dtype",
    "ce_float_target": "expected target dtype to be Long or Byte, but got Float",
    "ce_int_target": "expected target dtype to be Long or Byte, but got Int",
    "device_meta": "Tensor on device cpu is not on the expected device meta!",
    "device_cuda": "Expected all tensors to be on the same device",
    "non_scalar": "grad can be implicitly created only for scalar outputs",
    "batchnorm_bs1": "Expected more than 1 value per channel when training",
    "numpy_grad": "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.",
    "inplace": "one of the variables needed for gradient computation has been modified by an inplace operation",
    "anomaly": "Function 'LogBackward0' returned nan values in its 0th output.",
}


def raises(exc_type, key):
    return pytest.raises(exc_type, match=re.escape(ERRORS[key]))


@pytest.fixture(autouse=True)
def _seed():
    setup_seed(0)


# ---------------------------------------------------------------------------
# 清单本身
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(ERRORS))
def test_every_quoted_error_is_in_the_checklist(key):
    assert ERRORS[key] in CHECKLIST.read_text(encoding="utf-8")


def test_checklist_snippets_compile_and_mention_inspect():
    text = CHECKLIST.read_text(encoding="utf-8")
    # 列表项里的代码块带缩进：按开头的 ``` 的缩进去掉
    snippets = re.findall(r"^( *)```python\n(.*?)^\1```", text, flags=re.DOTALL | re.MULTILINE)
    assert len(snippets) > 20
    for _, snippet in snippets:
        compile(textwrap.dedent(snippet), "<debug_checklist.md>", "exec")
    assert "from utils.torch_playground import inspect" in text
    for section in ("## 1. 形状", "## 2. dtype", "## 3. 设备", "## 4. 梯度", "## 5. NaN / Inf"):
        assert section in text


def test_inspect_reveals_contiguity_and_nan():
    y = torch.randn(2, 4, 3, 8).transpose(1, 2)
    assert "contiguous=False" in inspect(y, "y", verbose=False)
    assert "nan=1 inf=1" in inspect(torch.tensor([1.0, float("nan"), float("inf")]), "t", verbose=False)


# ---------------------------------------------------------------------------
# §1 形状
# ---------------------------------------------------------------------------
def test_conv_wants_channels_first():
    images = torch.randn(8, 32, 32, 3)  # (B, H, W, C)
    conv = nn.Conv2d(3, 16, kernel_size=3)
    with raises(RuntimeError, "conv_nhwc"):
        conv(images)
    assert conv(images.permute(0, 3, 1, 2)).shape == (8, 16, 30, 30)


def test_batchnorm1d_wants_btc_transposed():
    x = torch.randn(4, 10, 16)  # (B, T, C)
    bn = nn.BatchNorm1d(16)
    with raises(RuntimeError, "batchnorm_btc"):
        bn(x)
    out = bn(x.transpose(1, 2)).transpose(1, 2)
    assert out.shape == x.shape
    # 修复后确实按通道（最后一维）归一化：每个通道在 (B, T) 上均值 ≈ 0
    torch.testing.assert_close(out.mean(dim=(0, 1)), torch.zeros(16), atol=1e-5, rtol=0)


def test_multihead_attention_without_batch_first_mixes_samples():
    B, T, C = 3, 5, 8
    x = torch.randn(B, T, C)
    for batch_first, leaks in ((False, True), (True, False)):
        setup_seed(0)
        mha = nn.MultiheadAttention(C, num_heads=2, batch_first=batch_first).eval()
        out = mha(x, x, x, need_weights=False)[0]
        x2 = x.clone()
        x2[1] += 1.0  # 只改第 1 个样本
        out2 = mha(x2, x2, x2, need_weights=False)[0]
        changed = not torch.allclose(out[0], out2[0])  # 第 0 个样本的输出变没变
        assert changed == leaks, f"batch_first={batch_first}"


def test_cross_entropy_needs_flattened_logits_and_targets():
    logits = torch.randn(2, 5, 7)  # (B, T, V)
    targets = torch.randint(0, 7, (2, 5))
    with raises(RuntimeError, "ce_unflattened"):
        F.cross_entropy(logits, targets)
    with raises(ValueError, "ce_half_flattened"):
        F.cross_entropy(logits.view(-1, 7), targets)
    B, T, V = logits.shape
    loss = F.cross_entropy(logits.view(B * T, V), targets.view(B * T))
    # 等价写法：类别放第 1 维
    torch.testing.assert_close(loss, F.cross_entropy(logits.transpose(1, 2), targets))


def test_broadcasting_silently_builds_a_matrix():
    pred, target = torch.randn(4, 1), torch.randn(4)
    assert ((pred - target) ** 2).shape == (4, 4)
    with pytest.warns(UserWarning, match=re.escape(ERRORS["mse_broadcast"])):
        wrong = F.mse_loss(pred, target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 修复后不再有警告
        right = F.mse_loss(pred.squeeze(-1), target)
    torch.testing.assert_close(right, ((pred.squeeze(-1) - target) ** 2).mean())
    assert not torch.allclose(wrong, right)


def test_forgotten_keepdim():
    x = torch.rand(3, 4)
    with raises(RuntimeError, "keepdim"):
        x / x.sum(-1)
    torch.testing.assert_close((x / x.sum(-1, keepdim=True)).sum(-1), torch.ones(3))
    # 方阵时不报错、却按列除了：每行之和不再是 1
    square = torch.rand(4, 4) + 0.1
    assert not torch.allclose((square / square.sum(-1)).sum(-1), torch.ones(4))


def test_view_needs_contiguous():
    B, nh, T, hs = 2, 4, 3, 8
    y = torch.randn(B, nh, T, hs)
    with raises(RuntimeError, "view"):
        y.transpose(1, 2).view(B, T, nh * hs)
    fixed = y.transpose(1, 2).contiguous().view(B, T, nh * hs)
    torch.testing.assert_close(fixed, y.transpose(1, 2).reshape(B, T, nh * hs))
    torch.testing.assert_close(fixed[1, 2, 8:16], y[1, 1, 2])  # 第 1 个头的第 2 个位置


# ---------------------------------------------------------------------------
# §2 dtype
# ---------------------------------------------------------------------------
def test_linear_needs_float32_inputs():
    layer = nn.Linear(3, 2)
    with raises(RuntimeError, "linear_long"):
        layer(torch.tensor([[1, 2, 3]]))
    with raises(RuntimeError, "linear_double"):
        layer(torch.from_numpy(np.ones((1, 3))))
    with raises(RuntimeError, "mean_long"):
        torch.tensor([1, 2, 3]).mean()
    a = layer(torch.tensor([[1, 2, 3]], dtype=torch.float32))
    b = layer(torch.from_numpy(np.array([[1.0, 2.0, 3.0]])).float())
    torch.testing.assert_close(a, b)


def test_cross_entropy_needs_long_targets():
    logits = torch.randn(2, 3)
    with raises(RuntimeError, "ce_float_target"):
        F.cross_entropy(logits, torch.tensor([0.0, 2.0]))
    with raises(RuntimeError, "ce_int_target"):
        F.cross_entropy(logits, torch.tensor([0, 2], dtype=torch.int32))
    loss = F.cross_entropy(logits, torch.tensor([0.0, 2.0]).long())
    torch.testing.assert_close(loss, -(logits.log_softmax(-1)[[0, 1], [0, 2]]).mean())
    # 陷阱：与 logits 同形状的 float 标签被当成概率分布（soft label），不报错
    soft = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
    torch.testing.assert_close(F.cross_entropy(logits, soft), -(soft * logits.log_softmax(-1)).sum(-1).mean())


# ---------------------------------------------------------------------------
# §3 设备
# ---------------------------------------------------------------------------
def test_device_mismatch_on_meta():
    layer = nn.Linear(3, 2)
    with raises(RuntimeError, "device_meta"):
        layer(torch.randn(1, 3, device="meta"))
    out = layer.to("meta")(torch.randn(1, 3, device="meta"))  # 修复：模型和输入同一设备
    assert out.device.type == "meta" and out.shape == (1, 2)


@requires_cuda
def test_device_mismatch_on_cuda():
    model = nn.Linear(3, 2).to("cuda")
    with raises(RuntimeError, "device_cuda"):
        model(torch.randn(1, 3))
    assert model(torch.randn(1, 3).to("cuda")).device.type == "cuda"


# ---------------------------------------------------------------------------
# §4 梯度
# ---------------------------------------------------------------------------
def test_forgotten_zero_grad_accumulates():
    model = nn.Linear(3, 1)
    x = torch.randn(8, 3)
    model(x).pow(2).mean().backward()
    once = model.weight.grad.clone()
    model(x).pow(2).mean().backward()  # 没清零
    torch.testing.assert_close(model.weight.grad, 2 * once)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    assert model.weight.grad is None
    model(x).pow(2).mean().backward()
    torch.testing.assert_close(model.weight.grad, once)


def test_non_scalar_loss():
    x = torch.randn(3, requires_grad=True)
    with raises(RuntimeError, "non_scalar"):
        ((x - 1) ** 2).backward()
    ((x - 1) ** 2).mean().backward()
    torch.testing.assert_close(x.grad, 2 * (x.detach() - 1) / 3)


def test_dropout_train_vs_eval():
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5))
    x = torch.randn(4, 16)
    assert not torch.equal(model(x), model(x))  # 训练模式：每次随机
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(model(x), model[0](x))  # 评估模式：Dropout 是恒等映射


def test_batchnorm_no_grad_does_not_protect_running_stats():
    bn = nn.BatchNorm1d(4)
    x_val = torch.randn(16, 4) + 3.0
    with torch.no_grad():  # 忘了 eval()：no_grad 不管模式
        bn(x_val)
    assert not torch.allclose(bn.running_mean, torch.zeros(4))

    bn = nn.BatchNorm1d(4).eval()
    with torch.no_grad():
        bn(x_val)
    torch.testing.assert_close(bn.running_mean, torch.zeros(4), rtol=0, atol=0)

    with raises(ValueError, "batchnorm_bs1"):
        nn.BatchNorm1d(4)(torch.randn(1, 4))
    assert nn.BatchNorm1d(4).eval()(torch.randn(1, 4)).shape == (1, 4)


def test_numpy_on_tensor_that_requires_grad():
    x = torch.randn(3, requires_grad=True)
    with raises(RuntimeError, "numpy_grad"):
        x.numpy()
    np.testing.assert_array_equal(x.detach().numpy(), x.tolist())


def test_inplace_modification_breaks_backward():
    x = torch.randn(3, requires_grad=True)
    y = x.sigmoid()
    y.mul_(2)
    with raises(RuntimeError, "inplace"):
        y.sum().backward()
    y = x.sigmoid() * 2
    y.sum().backward()
    s = x.detach().sigmoid()
    torch.testing.assert_close(x.grad, 2 * s * (1 - s))


# ---------------------------------------------------------------------------
# §5 NaN / Inf
# ---------------------------------------------------------------------------
def _train_linear_regression(lr: float, steps: int = 50) -> list[float]:
    setup_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 3.0]) + 0.5
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_learning_rate_too_high_diverges_to_nan():
    losses = _train_linear_regression(lr=3.0)
    assert losses[1] > losses[0] and losses[2] > losses[1]  # 先涨
    assert any(np.isinf(losses)) and np.isnan(losses[-1])  # 再 inf，再 nan
    assert _train_linear_regression(lr=0.1)[-1] < 1e-2


def test_division_by_zero():
    v = torch.zeros(3)
    assert torch.isnan(v / v.norm()).all()
    assert torch.isnan(torch.softmax(torch.full((3,), float("-inf")), dim=0)).all()
    torch.testing.assert_close(v / v.norm().clamp_min(1e-12), v)
    torch.testing.assert_close(F.normalize(v, dim=0), v)


def test_log_of_zero():
    logits = torch.tensor([0.0, -200.0], requires_grad=True)
    naive = torch.log(torch.softmax(logits, dim=0))
    assert torch.isneginf(naive[1])
    stable = F.log_softmax(logits, dim=0)
    torch.testing.assert_close(stable.detach(), torch.tensor([0.0, -200.0]))
    stable[1].backward()
    assert torch.isfinite(logits.grad).all()


def test_detect_anomaly_names_the_operator():
    x = torch.zeros(1, requires_grad=True)
    with raises(RuntimeError, "anomaly"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # detect_anomaly 自己会发一个"很慢"的警告
        with torch.autograd.detect_anomaly():
            (x * torch.log(x)).sum().backward()
    loss = (x * torch.log(x)).sum()
    assert not torch.isfinite(loss)  # 日常训练的廉价检查就能发现
