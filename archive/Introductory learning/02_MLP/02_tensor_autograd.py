"""张量自动微分引擎（基于 numpy）：把 micrograd 从标量推广到多维数组，然后用它训练手写数字分类 MLP。

与标量版相比，新出现的难点只有三个，本文件逐一推导：

1. **广播（broadcasting）的反向**。前向 a(3,1) + b(4,) → (3,4)：numpy 把 a 沿第 1 维、b 沿新加的第 0 维
   "复制"了。复制 = 一个变量被多处使用，按链式法则梯度要把这些使用处 **加起来**：
   所以反向时把上游梯度在"被广播出来的维度"上求和，缩回输入原来的形状（_unbroadcast）。
2. **矩阵乘法**。Y = A B，A (m,k)、B (k,n)。Y_ij = Σ_p A_ip B_pj ⇒ ∂L/∂A_ip = Σ_j G_ij B_pj，即
   dA = G Bᵀ；同理 dB = Aᵀ G。（形状自检：G (m,n) · Bᵀ (n,k) = (m,k) ✓）带 batch 维时前面的维度也按广播处理。
3. **归约与变形**。sum 的反向把梯度沿被求和的轴"复制"回去（与广播互为对偶）；reshape/transpose
   只是搬动元素，反向做逆变换；索引 x[idx] 的反向是把梯度"散射"回被取的位置，同一位置被取多次要累加
   （np.add.at，而不是 z[idx] += g——后者遇到重复下标只会加一次）。

softmax / log-softmax 作为原语实现（比拼装更稳定，反向公式也更简洁）：
    s = softmax(x)，y = s：      dx = s ⊙ (g − Σ_j g_j s_j)      （Jacobian = diag(s) − s sᵀ）
    y = log_softmax(x) = x − logsumexp(x)：dx = g − s · Σ_j g_j
交叉熵 = −mean(log_softmax(logits)[i, y_i])，由 log_softmax + 索引 + mean 拼成；
它的梯度自动就是 (softmax − onehot)/N（见 05_information_theory.py 的推导）。

数据：sklearn 自带的 load_digits（8×8 手写数字，1797 张，离线），以及一个从零写的 IDX 解析器，
在 data/mnist/ 下放好 MNIST 原始文件时可训练真正的 MNIST（--dataset mnist）。

多少算好（digits 测试准确率）：瞎猜 10%；永远猜训练集里最多的那一类，测试集上 7.8%；同一份像素上的线性分类器
（多项逻辑回归，本脚本现场拟合）96.7%；这个 64→128→128→10 的 MLP 默认配置（30 个 epoch）97.8%，
换初始化/打乱的种子 97.8–98.6%（换测试集的切分则约 96–98%）。MNIST 的数字本仓库没有测过（没有离线数据）。

    python "archive/Introductory learning/02_MLP/02_tensor_autograd.py"                  # digits，测试准确率约 98%
    python "archive/Introductory learning/02_MLP/02_tensor_autograd.py" --dataset mnist  # 需要 data/mnist/*-ubyte(.gz)

图：checkpoints/figures/tensor_autograd_digits.png（我们的引擎与 PyTorch 的训练损失曲线重合）。
"""

from __future__ import annotations

import argparse
import gzip
import math
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from utils.io import data_dir, is_smoke, save_figure
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import setup_seed, time_block

SMOKE = is_smoke()
# digits 默认配置（30 个 epoch、hidden 128、lr 0.05）的测试准确率：实测 97.8%，换 5 个初始化/打乱种子 97.8–98.6%
REFERENCE_DIGITS_ACC = (0.97, 0.99)


# =============================================================================
# 1. 广播的工具函数
# =============================================================================
def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...], op: str) -> tuple[int, ...]:
    """numpy/PyTorch 的广播规则：从最后一维往前对齐，每一对维度要么相等，要么有一个是 1（缺的维度视为 1）。"""
    for i in range(1, min(len(a), len(b)) + 1):
        da, db = a[-i], b[-i]
        if da != db and da != 1 and db != 1:
            raise ValueError(
                f"{op}: 形状 {a} 与 {b} 无法广播——倒数第 {i} 维的大小 {da} 与 {db} 既不相等也不为 1"
                f"（The size of tensor a ({da}) must match the size of tensor b ({db}) at non-singleton dimension）；"
                f"请 reshape 或插入大小为 1 的维度使它们对齐"
            )
    return tuple(np.broadcast_shapes(a, b))


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """把广播后形状的梯度求和缩回 shape：先把多出来的前导维度加掉，再把原来是 1 的维度加掉（保留该维）。"""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    ones = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    if ones:
        grad = grad.sum(axis=ones, keepdims=True)
    return grad


def _normalize_axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise IndexError(f"axis={a} 超出范围：张量只有 {ndim} 维（合法范围 [{-ndim}, {ndim - 1}]）")
        out.append(a % max(ndim, 1))
    return tuple(sorted(set(out)))


# =============================================================================
# 2. Tensor
# =============================================================================
class Tensor:
    """一个带梯度的 numpy 数组。只有 requires_grad 的张量（及由它们算出的张量）才会记录计算图。"""

    __array_priority__ = 1000  # 让 ndarray + Tensor 调用 Tensor.__radd__，而不是 numpy 逐元素地吞掉 Tensor

    def __init__(self, data, requires_grad: bool = False, _prev: tuple[Tensor, ...] = (), _op: str = ""):
        if isinstance(data, Tensor):
            raise TypeError("Tensor(Tensor(...)) 没有意义：直接使用那个 Tensor，或用 t.data 取出数组")
        arr = np.asarray(data)
        if arr.dtype.kind not in "f":
            arr = arr.astype(np.float64)  # 整数/布尔一律转成浮点：梯度只对连续量有意义
        self.data: np.ndarray = arr
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self._prev = _prev
        self._op = _op
        self._backward = None  # (上游梯度) -> None，把梯度累加到 _prev

    # ---- 基本属性
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def __len__(self) -> int:
        return len(self.data)

    def item(self) -> float:
        if self.data.size != 1:
            raise ValueError(f"item() 只能用于只有一个元素的张量，当前形状 {self.shape}")
        return float(self.data.item())

    def numpy(self) -> np.ndarray:
        return self.data

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, op={self._op or 'leaf'}, requires_grad={self.requires_grad})"

    # ---- 建图的工具
    def _lift(self, other) -> Tensor:
        if isinstance(other, Tensor):
            return other
        if isinstance(other, (int, float, np.ndarray, np.number)) and not isinstance(other, bool):
            return Tensor(np.asarray(other, dtype=self.data.dtype))  # 常数跟随本张量的 dtype（float32 不被提升）
        raise TypeError(f"Tensor 只能与 Tensor / 数 / ndarray 运算，收到 {type(other).__name__}")

    @staticmethod
    def _make(data: np.ndarray, parents: tuple[Tensor, ...], op: str, backward) -> Tensor:
        if not any(p.requires_grad for p in parents):  # 没人需要梯度就不记图：推理时不保留中间结果，省内存
            return Tensor(data, _op=op)
        out = Tensor(data, requires_grad=True, _prev=parents, _op=op)
        out._backward = backward
        return out

    def _accumulate(self, grad: np.ndarray) -> None:
        if not self.requires_grad:
            return
        grad = _unbroadcast(np.asarray(grad), self.shape).astype(self.data.dtype, copy=False)
        self.grad = np.array(grad, copy=True) if self.grad is None else self.grad + grad

    # ---- 逐元素二元运算（带广播）
    def __add__(self, other) -> Tensor:
        other = self._lift(other)
        broadcast_shape(self.shape, other.shape, "add")
        return self._make(self.data + other.data, (self, other), "add",
                          lambda g: (self._accumulate(g), other._accumulate(g)))

    def __mul__(self, other) -> Tensor:
        other = self._lift(other)
        broadcast_shape(self.shape, other.shape, "mul")
        a, b = self.data, other.data
        return self._make(a * b, (self, other), "mul",
                          lambda g: (self._accumulate(g * b), other._accumulate(g * a)))

    def __pow__(self, k) -> Tensor:
        if isinstance(k, Tensor) or not isinstance(k, (int, float)) or isinstance(k, bool):
            raise TypeError("只支持常数指数 x ** k（k 为 int/float）；变量指数请写成 (k * x.log()).exp()")
        a = self.data
        return self._make(a**k, (self,), f"pow{k}", lambda g: self._accumulate(g * k * a ** (k - 1)))

    def __neg__(self) -> Tensor:
        return self * -1.0

    def __sub__(self, other) -> Tensor:
        return self + (-self._lift(other))

    def __truediv__(self, other) -> Tensor:
        return self * self._lift(other) ** -1

    def __radd__(self, other) -> Tensor:
        return self._lift(other) + self

    def __rmul__(self, other) -> Tensor:
        return self._lift(other) * self

    def __rsub__(self, other) -> Tensor:
        return self._lift(other) - self

    def __rtruediv__(self, other) -> Tensor:
        return self._lift(other) / self

    # ---- 矩阵乘法
    def __matmul__(self, other) -> Tensor:
        other = self._lift(other)
        a, b = self.data, other.data
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul 不接受 0 维张量（形状 {a.shape} @ {b.shape}）；标量相乘请用 *")
        k_a = a.shape[-1]
        k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if k_a != k_b:
            raise ValueError(
                f"matmul: 形状 {a.shape} @ {b.shape} 不匹配——左边最后一维 {k_a} ≠ 右边{'唯一' if b.ndim == 1 else '倒数第二'}维 {k_b}"
                f"（mat1 and mat2 shapes cannot be multiplied）；也许需要转置其中一个"
            )
        if a.ndim > 2 or b.ndim > 2:  # batch 维按广播规则对齐
            broadcast_shape(a.shape[:-2] if a.ndim > 2 else (), b.shape[:-2] if b.ndim > 2 else (), "matmul 的 batch 维")

        def backward(g):
            # 一维的情形先补成矩阵：a (k,) 看成 (1,k)，b (k,) 看成 (k,1)，输出里被去掉的那一维在 g 里补回来
            a2 = a[None, :] if a.ndim == 1 else a
            b2 = b[:, None] if b.ndim == 1 else b
            g2 = g[..., None] if b.ndim == 1 else g
            g2 = g2[..., None, :] if a.ndim == 1 else g2
            da = g2 @ np.swapaxes(b2, -1, -2)  # dA = G Bᵀ
            db = np.swapaxes(a2, -1, -2) @ g2  # dB = Aᵀ G
            self._accumulate(_unbroadcast(da, a2.shape).reshape(a.shape))
            other._accumulate(_unbroadcast(db, b2.shape).reshape(b.shape))

        return self._make(a @ b, (self, other), "matmul", backward)

    # ---- 归约
    def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        axes = _normalize_axes(axis, self.ndim)
        shape = self.shape

        def backward(g):
            # 把被求和掉的轴补回为 1，再广播回原形状：y = Σ_i x_i ⇒ ∂y/∂x_i = 1，每个 x_i 拿到同一份 g
            if not keepdims:
                g = np.expand_dims(g, axes)
            self._accumulate(np.broadcast_to(g, shape))

        return self._make(self.data.sum(axis=axes, keepdims=keepdims), (self,), "sum", backward)

    def mean(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        axes = _normalize_axes(axis, self.ndim)
        count = math.prod(self.shape[a] for a in axes)
        return self.sum(axes, keepdims) * (1.0 / count)

    # ---- 变形与索引
    def reshape(self, *shape) -> Tensor:
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            out = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: 无法把形状 {self.shape}（{self.data.size} 个元素）变成 {shape}；元素总数必须相同") from None
        old = self.shape
        return self._make(out, (self,), "reshape", lambda g: self._accumulate(g.reshape(old)))

    def transpose(self, *axes) -> Tensor:
        """与 numpy 相同：不给 axes 时反转所有维度；给了就是一个排列（等价于 torch.permute）。"""
        axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = axes or tuple(reversed(range(self.ndim)))
        if sorted(a % max(self.ndim, 1) for a in axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: {axes} 不是 {self.ndim} 个维度的一个排列")
        inverse = np.argsort([a % self.ndim for a in axes])  # 反向做逆排列
        return self._make(self.data.transpose(axes), (self,), "transpose",
                          lambda g: self._accumulate(g.transpose(inverse)))

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def __getitem__(self, idx) -> Tensor:
        def as_index(i):  # 允许用 Tensor 当下标（取其整数值）
            return i.data.astype(np.int64) if isinstance(i, Tensor) else i

        idx = tuple(map(as_index, idx)) if isinstance(idx, tuple) else as_index(idx)
        shape, dtype = self.shape, self.data.dtype

        def backward(g):
            full = np.zeros(shape, dtype=dtype)
            np.add.at(full, idx, g)  # 重复下标要累加，所以用 add.at 而不是 full[idx] += g
            self._accumulate(full)

        return self._make(self.data[idx], (self,), "getitem", backward)

    # ---- 逐元素一元函数
    def exp(self) -> Tensor:
        y = np.exp(self.data)
        return self._make(y, (self,), "exp", lambda g: self._accumulate(g * y))

    def log(self) -> Tensor:
        a = self.data
        with np.errstate(divide="ignore", invalid="ignore"):  # 与 PyTorch 一致：log(0) = −inf，log(负数) = nan
            y = np.log(a)
        return self._make(y, (self,), "log", lambda g: self._accumulate(g / a))

    def tanh(self) -> Tensor:
        y = np.tanh(self.data)
        return self._make(y, (self,), "tanh", lambda g: self._accumulate(g * (1.0 - y * y)))

    def relu(self) -> Tensor:
        mask = self.data > 0  # x = 0 处导数取 0，与 PyTorch 相同
        return self._make(self.data * mask, (self,), "relu", lambda g: self._accumulate(g * mask))

    # ---- softmax 家族：减去最大值防溢出（softmax(x) = softmax(x − c) 对任意常数 c 成立）
    def softmax(self, axis: int = -1) -> Tensor:
        (ax,) = _normalize_axes(axis, self.ndim)
        e = np.exp(self.data - self.data.max(axis=ax, keepdims=True))
        s = e / e.sum(axis=ax, keepdims=True)
        # dx_i = Σ_j g_j ∂s_j/∂x_i = Σ_j g_j s_j(δ_ij − s_i) = s_i (g_i − Σ_j g_j s_j)
        return self._make(s, (self,), "softmax",
                          lambda g: self._accumulate(s * (g - (g * s).sum(axis=ax, keepdims=True))))

    def log_softmax(self, axis: int = -1) -> Tensor:
        (ax,) = _normalize_axes(axis, self.ndim)
        shifted = self.data - self.data.max(axis=ax, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=ax, keepdims=True))
        y = shifted - lse  # log s = x − logsumexp(x)
        s = np.exp(y)
        # ∂y_j/∂x_i = δ_ij − s_i ⇒ dx_i = g_i − s_i Σ_j g_j
        return self._make(y, (self,), "log_softmax",
                          lambda g: self._accumulate(g - s * g.sum(axis=ax, keepdims=True)))

    # ---- 反向传播
    def backward(self, grad: np.ndarray | None = None) -> None:
        """从本张量反向传播。非标量输出必须显式给出 grad（与输出同形的 ∂L/∂out），和 PyTorch 一样。"""
        if not self.requires_grad:
            raise RuntimeError(
                "这个张量不需要梯度、也没有计算图（element 0 of tensors does not require grad）；"
                "给叶子张量设置 requires_grad=True 后再做前向"
            )
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs：输出形状 {self.shape} 不是标量；"
                    f"先 .sum() 或 .mean() 成标量，或传入与输出同形的 grad=..."
                )
            grad = np.ones_like(self.data)
        grad = np.asarray(grad, dtype=self.data.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward: grad 的形状 {grad.shape} 必须与输出的形状 {self.shape} 相同")

        topo: list[Tensor] = []
        visited: set[int] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:  # 迭代式后序 DFS（理由见 01_micrograd.py）
            node, done = stack.pop()
            if done:
                topo.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in node._prev if c.requires_grad and id(c) not in visited)
        for node in topo:  # 中间节点的梯度每次反向都从 0 开始；叶子的梯度累加（与 PyTorch 的 .grad 语义相同）
            if node._prev:
                node.grad = None
        self.grad = grad
        for node in reversed(topo):
            if node._backward is not None and node.grad is not None:
                node._backward(node.grad)


def cross_entropy(logits: Tensor, targets: np.ndarray) -> Tensor:
    """L = −(1/N) Σ_i log softmax(logits_i)[y_i]，logits (N, C)，targets (N,) 取值 0..C−1。"""
    targets = np.asarray(targets)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits 的形状应为 (N, C)，收到 {logits.shape}")
    if targets.shape != (logits.shape[0],) or targets.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: targets 应为形状 ({logits.shape[0]},) 的整数类别下标，收到 {targets.shape} {targets.dtype}")
    if targets.size and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise IndexError(f"cross_entropy: 类别下标必须在 [0, {logits.shape[1] - 1}]，收到范围 [{targets.min()}, {targets.max()}]")
    logp = logits.log_softmax(axis=1)  # (N, C)
    return -logp[np.arange(len(targets)), targets].mean()


# =============================================================================
# 3. 用引擎搭 MLP，并写一个 SGD(momentum)
# =============================================================================
class Linear:
    """y = x W + b，W (in, out)。初始化 U(−1/√in, 1/√in)，与 nn.Linear 的默认分布相同。"""

    def __init__(self, fan_in: int, fan_out: int, rng: np.random.Generator, dtype=np.float64):
        bound = 1.0 / math.sqrt(fan_in)
        self.W = Tensor(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype), requires_grad=True)
        self.b = Tensor(rng.uniform(-bound, bound, fan_out).astype(dtype), requires_grad=True)

    def __call__(self, x: Tensor) -> Tensor:
        return x @ self.W + self.b  # (N, in) @ (in, out) + (out,) → (N, out)，b 广播到每一行

    def parameters(self) -> list[Tensor]:
        return [self.W, self.b]


class MLP:
    def __init__(self, sizes: Sequence[int], seed: int = 0, dtype=np.float64):
        if len(sizes) < 2:
            raise ValueError(f"sizes 至少要有输入和输出两个数，收到 {list(sizes)}")
        rng = np.random.default_rng(seed)
        self.layers = [Linear(sizes[i], sizes[i + 1], rng, dtype) for i in range(len(sizes) - 1)]

    def __call__(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x

    def parameters(self) -> list[Tensor]:
        return [p for layer in self.layers for p in layer.parameters()]


class SGD:
    """带动量的 SGD，与 torch.optim.SGD 的公式相同：v ← μ v + g；θ ← θ − lr·v（第一步 v = g）。"""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0):
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.velocity: list[np.ndarray | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            v = p.grad if self.velocity[i] is None else self.momentum * self.velocity[i] + p.grad
            self.velocity[i] = v
            p.data = p.data - self.lr * v


def torch_mlp_from(model: MLP) -> torch.nn.Sequential:
    """同一组权重的 PyTorch 版本（nn.Linear 的 weight 是 (out, in)，所以要转置）。"""
    mods: list[torch.nn.Module] = []
    for i, layer in enumerate(model.layers):
        lin = torch.nn.Linear(*layer.W.shape, dtype=torch.from_numpy(layer.W.data).dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(layer.W.data.T))
            lin.bias.copy_(torch.from_numpy(layer.b.data))
        mods.append(lin)
        if i < len(model.layers) - 1:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods)


def batches(n: int, batch_size: int, epochs: int, seed: int) -> Iterable[np.ndarray]:
    """每个 epoch 重新打乱；两个引擎用同一个生成器，看到的小批次完全一样。"""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield perm[start : start + batch_size]


def train(model: MLP, X: np.ndarray, y: np.ndarray, epochs: int, batch_size: int = 32, lr: float = 0.05,
          momentum: float = 0.9, seed: int = 0) -> list[float]:
    opt = SGD(model.parameters(), lr, momentum)
    losses = []
    for idx in batches(len(X), batch_size, epochs, seed):
        loss = cross_entropy(model(Tensor(X[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def train_torch(model: torch.nn.Module, X: np.ndarray, y: np.ndarray, epochs: int, batch_size: int = 32,
                lr: float = 0.05, momentum: float = 0.9, seed: int = 0) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    losses = []
    for idx in batches(len(X), batch_size, epochs, seed):
        loss = torch.nn.functional.cross_entropy(model(Xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def accuracy(model: MLP, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model(Tensor(X)).data.argmax(axis=1) == y))


def baselines(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray, n_classes: int = 10,
              max_train: int = 10_000) -> dict[str, float]:
    """测试准确率的三把尺子（同一份数据现算）：

    - chance：均匀瞎猜，1/类别数；
    - majority：永远输出训练集里最常见的类别，在测试集上的准确率（类别均衡时略低于或高于 1/类别数）；
    - linear：同样的像素上拟合多项逻辑回归（即去掉隐藏层的 MLP）。MLP 要比它好，才说明隐藏层学到了东西。
      MNIST 时只取前 max_train 张训练图，几秒钟拟合完。
    """
    from sklearn.linear_model import LogisticRegression

    majority = np.bincount(ytr, minlength=n_classes).argmax()
    clf = LogisticRegression(max_iter=2000).fit(Xtr[:max_train], ytr[:max_train])
    return {"chance": 1.0 / n_classes, "majority": float(np.mean(yte == majority)), "linear": float(clf.score(Xte, yte))}


def plot_losses(losses: list[float], losses_ref: list[float], dataset: str, acc: float) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 4.6))
    # losses[i] 是第 i 次更新之前、在第 i 个小批次上算的 loss（losses[0] 是训练前的值），所以横轴从 0 开始
    steps = np.arange(len(losses))
    ax.plot(steps, losses, lw=1, label="our numpy autograd")
    ax.plot(steps, losses_ref, "--", lw=1, label="PyTorch")
    ax.axhline(math.log(10), color="tab:gray", ls=":", lw=1, label="chance: ln 10")
    ax.set(title=f"MLP on {dataset}: test acc {acc:.1%}", xlabel="step (mini-batch updates done)",
           ylabel="cross-entropy on the mini-batch (nats)", yscale="log")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)  # 放在图外：曲线占满了整个图
    fig.tight_layout()
    path = save_figure(fig, f"tensor_autograd_{dataset}.png", dpi=110)
    print(f"图已保存：{path}")
    return fig


# =============================================================================
# 4. 数据：load_digits 与从零写的 MNIST IDX 解析器
# =============================================================================
def digits_split(test_fraction: float = 0.2, seed: int = 0):
    """8×8 灰度数字（像素 0..16，除以 16 缩放到 [0,1]），按固定种子打乱后切出测试集。"""
    d = load_digits()
    X, y = d.data / 16.0, d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(X))
    n_test = int(len(X) * test_fraction)
    te, tr = perm[:n_test], perm[n_test:]
    return X[tr], y[tr], X[te], y[te]


# IDX 格式（LeCun 的 MNIST 原始格式），全部大端序：
#   字节 0-1：0x00 0x00；字节 2：元素类型码；字节 3：维数 ndim；
#   接着 ndim 个 uint32 依次是各维大小；然后是按行优先排列的数据。
#   例：train-images-idx3-ubyte 的头是 00 00 08 03 | 60000 | 28 | 28。
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """把一段 IDX 字节解析成 numpy 数组（原生字节序）。"""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{name}: 不是 IDX 文件（前两个字节应为 0x00 0x00）；是不是还没解压，或下载到了 HTML 错误页？")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"{name}: 未知的 IDX 元素类型码 0x{code:02X}（合法值 {[hex(c) for c in IDX_DTYPES]}）")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{name}: 文件在头部就结束了（需要 {header} 字节的头，只有 {len(raw)} 字节）")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{name}: 头部声明形状 {dims}（{expected} 字节数据），实际有 {len(raw) - header} 字节——文件被截断或损坏")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """读一个 IDX 文件；文件名以 .gz 结尾时先用 gzip 解压。"""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return parse_idx(f.read(), name=str(path))


def mnist_dir() -> Path:
    return data_dir() / "mnist"


def load_mnist(root: str | Path | None = None):
    """读 data/mnist/ 下的 4 个 MNIST 文件，返回 (X_train, y_train, X_test, y_test)，图像展平并缩放到 [0,1]。

    每个文件接受 `train-images-idx3-ubyte`、`.gz` 压缩版，以及有些镜像使用的 `train-images.idx3-ubyte` 写法。
    """
    root = Path(root) if root is not None else mnist_dir()
    found, missing = {}, []
    for key, stem in MNIST_FILES.items():
        variants = [stem, stem.replace("-idx", ".idx")]
        cands = [root / (v + ext) for v in variants for ext in ("", ".gz")]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            missing.append(stem + "(.gz)")
        found[key] = hit
    if missing:
        raise FileNotFoundError(
            f"在 {root} 下找不到 MNIST 文件：{', '.join(missing)}。\n"
            f"请手动下载 4 个原始 IDX 文件（例如 https://ossci-datasets.s3.amazonaws.com/mnist/ 上的 "
            f"train-images-idx3-ubyte.gz 等，或 http://yann.lecun.com/exdb/mnist/），放到 {root}/ 下（.gz 不必解压）；"
            f"或者不加 --dataset mnist，改用离线的 load_digits。"
        )
    Xtr, ytr = read_idx(found["train_images"]), read_idx(found["train_labels"])
    Xte, yte = read_idx(found["test_images"]), read_idx(found["test_labels"])
    for X, y, split in ((Xtr, ytr, "train"), (Xte, yte, "test")):
        if X.ndim != 3 or y.ndim != 1 or len(X) != len(y):
            raise ValueError(f"MNIST {split}: 图像形状 {X.shape} 与标签形状 {y.shape} 不匹配（应为 (N,28,28) 与 (N,)）")
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64) / 255.0  # noqa: E731
    return flat(Xtr), ytr.astype(np.int64), flat(Xte), yte.astype(np.int64)


# =============================================================================
# main
# =============================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="numpy 张量自动微分引擎：训练手写数字 MLP 并与 PyTorch 逐步对照")
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits",
                   help="digits：scikit-learn 自带的 8×8 手写数字（离线可用）；mnist：28×28 的 MNIST，"
                        "需要先把 4 个原始 IDX 文件放进 data/mnist/；默认 %(default)s")
    p.add_argument("--epochs", type=int, default=None, help="训练多少遍（epoch）整个训练集；默认 digits 30、mnist 5，SMOKE=1 时 1")
    p.add_argument("--hidden", type=int, default=128,
                   help="两个隐藏层各自的宽度（神经元个数），MLP 为 输入 → hidden → hidden → 10；默认 %(default)s")
    p.add_argument("--lr", type=float, default=0.05,
                   help="SGD（动量 0.9、batch 32）的学习率，numpy 引擎与 PyTorch 参照两边相同；默认 %(default)s")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = lesson_args(__doc__, build_parser(), argv)
    setup_seed()
    # 这里的矩阵都很小（一个批次 32 × 64 乘 64 × 128）：多线程的同步开销比计算本身还大，机器忙时更明显，所以只用 1 个线程
    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy 的 OpenBLAS 同理（threadpoolctl 随 scikit-learn 安装）
    print("== numpy 张量自动微分引擎 ==")
    if args.dataset == "mnist":
        Xtr, ytr, Xte, yte = load_mnist()
    else:
        Xtr, ytr, Xte, yte = digits_split()
        where = mnist_dir()
        print(f"（MNIST：{'已找到 ' + str(where) + '，' if where.is_dir() else '把原始 IDX 文件放进 ' + str(where) + '/ 后'}"
              f"可用 --dataset mnist）")
    if SMOKE:
        Xtr, ytr, Xte, yte = Xtr[:256], ytr[:256], Xte[:128], yte[:128]
    epochs = args.epochs or (1 if SMOKE else (30 if args.dataset == "digits" else 5))
    sizes = [Xtr.shape[1], args.hidden, args.hidden, 10]
    print(f"数据 {args.dataset}：训练 {Xtr.shape}，测试 {Xte.shape}；MLP {sizes}，{epochs} 个 epoch")

    model = MLP(sizes, seed=0)
    reference = torch_mlp_from(model)  # 训练前复制权重：两个引擎从同一点出发，走同样的批次
    with time_block("ours", verbose=False) as t_ours:
        losses = train(model, Xtr, ytr, epochs, lr=args.lr)
    with time_block("torch", verbose=False) as t_ref:
        losses_ref = train_torch(reference, Xtr, ytr, epochs, lr=args.lr)
    diff = float(np.abs(np.array(losses) - np.array(losses_ref)).max())
    acc = accuracy(model, Xte, yte)
    with torch.no_grad():
        acc_ref = float((reference(torch.from_numpy(Xte)).argmax(1).numpy() == yte).mean())
    print(f"{len(losses)} 步：我们的引擎 {t_ours.ms / 1000:.2f} s，PyTorch {t_ref.ms / 1000:.2f} s；"
          f"逐步 loss 的最大差 {diff:.2e}")
    print(timing_note())
    base = baselines(Xtr, ytr, Xte, yte)
    reference = (f"digits 默认配置约 {REFERENCE_DIGITS_ACC[0]:.0%}–{REFERENCE_DIGITS_ACC[1]:.0%}" if args.dataset == "digits"
                 else "MNIST 的范围本仓库没有测过")
    print(f"测试准确率：我们的引擎 {acc:.2%}，PyTorch {acc_ref:.2%}（瞎猜 {base['chance']:.0%}，多数类 {base['majority']:.1%}，"
          f"线性分类器 {base['linear']:.1%}；{reference}）")
    assert diff < 1e-8, "我们的引擎与 PyTorch 的训练轨迹不一致"
    plot_losses(losses, losses_ref, args.dataset, acc)
    return {"test_acc": acc, "test_acc_torch": acc_ref, "max_loss_diff": diff, "baselines": base}


if __name__ == "__main__":
    main()
