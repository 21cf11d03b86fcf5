"""刘二《PyTorch 深度学习实践》第 11 讲 卷积神经网络（高级篇）：Inception 块与残差块。

1×1 卷积：每个像素位置上对通道做一次线性组合（= 逐像素共享权重的 nn.Linear），用来**改变通道数**。
它是 GoogLeNet 降低计算量的关键：28×28 的图上把 192 个通道直接 5×5 卷成 32 个通道，乘法次数
    5²·28²·192·32 = 120,422,400
先用 1×1 卷积压到 16 个通道再做 5×5：
    1²·28²·192·16 + 5²·28²·16·32 = 2,408,448 + 10,035,200 = 12,443,648   （约少 10 倍）

Inception 块（课上的 InceptionA）：不确定哪种卷积核最好，就四条分支并联，再沿通道拼接：
    1×1(16) | 1×1(16)→5×5(24) | 1×1(16)→3×3(24)→3×3(24) | 3×3 平均池化→1×1(24)
每条分支都用 padding 保持 H×W 不变，才能 torch.cat(dim=1)，输出 16 + 24·3 = 88 个通道。

残差块：y = ReLU(x + F(x))，F = Conv→ReLU→Conv（通道与尺寸不变，才能相加）。
普通深网络里梯度要连乘几十个"小于 1"的雅可比，越往前越接近 0（梯度消失）；残差块的雅可比是
I + ∂F/∂x，恒等项让梯度可以绕过 F 直接回传。本讲量化这一点：20 层的普通卷积栈与 20 个残差块，
比较输入处的梯度范数；以及把 F 的权重置零时残差块就是 ReLU(x)，梯度照样能流过去。

数据：默认 sklearn 8×8 digits（卷积核 3×3、padding 1）；data/mnist/ 有 IDX 文件时用 MNIST（课上的 5×5）。

    python archive/liu2_lecture/lecture11_advanced_cnn.py

多少算好（classifier_baselines 在这份数据上现算）：测试准确率对照瞎猜 1/10、全猜训练集最多的数字、同样像素上的
线性 softmax（逻辑回归）；再对照第 10 讲的基础 CNN（digits 上实测 0.987，那一讲现场算）。在 1348 张 8×8 图上
这两个"高级"网络并不比基础 CNN 好——它们是为更大的图、更深的网络设计的；这一讲的重点是结构本身与梯度流。
默认配置的实测范围见 EXPECTED_TEST_ACC、EXPECTED_GRAD_RATIO。

图：checkpoints/figures/liu2_lecture11_advanced_cnn.png（各层梯度范数；两个网络的测试准确率与线性基线）。
"""

from __future__ import annotations

import gzip
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.ticker import MaxNLocator
from torch.utils.data import DataLoader, TensorDataset

from utils.io import data_dir, is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

SMOKE = is_smoke()
DEFAULT_EPOCHS = 12
EPOCHS = 2 if SMOKE else DEFAULT_EPOCHS
BATCH_SIZE = 64
LR = 1e-3
DEPTH = 20  # 梯度流实验的层数
# 默认配置（sklearn digits、12 epoch）的测试准确率：默认运行 InceptionNet 0.969、ResNet 0.982；模型初始化与 train
# 都用种子 1–3 时实测 InceptionNet 0.955–0.978、ResNet 0.938–0.962（449 张测试图，一张 = 0.0022；最后一个 epoch 的值
# 上下跳 ±0.01–0.02，没有 BatchNorm 的 ResNet 跳得更厉害）。两者都和线性基线 0.967 差不多，不如第 10 讲的基础 CNN。
EXPECTED_TEST_ACC = {"sklearn digits 8x8": {"InceptionNet": (0.95, 0.98), "ResNet": (0.93, 0.99)}}
BASIC_CNN_DIGITS_ACC = 0.987  # 第 10 讲 BasicCNN 在同一份 digits 划分上 15 个 epoch 的实测值（那一讲的默认运行）
# 梯度流实验（DEPTH=20、8 通道、默认初始化）种子 0–4 实测：第 0 层 / 最后一层输入处的梯度范数之比，
# 普通栈 1.0e-09–1.8e-08（种子 0 即默认运行，2.7e-09），残差栈 1.32–2.32（不衰减，反而略有放大）
EXPECTED_GRAD_RATIO = {"plain": (1e-9, 2e-8), "residual": (1.32, 2.32)}

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# =============================================================================
# 数据（MNIST 读取与第 09、10 讲相同；本文件自成一体，所以再写一遍）
# =============================================================================
def read_idx(path: str | Path) -> np.ndarray:
    """读 uint8 的 IDX 文件（可 gzip）：00 00 08 <维数 d>，d 个大端 int32 维度，然后是数据。"""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} 不是 uint8 的 IDX 文件（头 4 字节应为 00 00 08 <维数>，读到 {raw[:4].hex()}）")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} 头部声明形状 {dims}，实际数据 {body.size} 字节：文件不完整？")
    return body.reshape(dims)


def load_mnist(root: str | Path | None = None) -> tuple[np.ndarray, ...]:
    root = Path(root) if root is not None else data_dir() / "mnist"
    arrays = []
    for stem in MNIST_FILES:
        found = next((p for p in (root / stem, root / f"{stem}.gz") if p.exists()), None)
        if found is None:
            raise FileNotFoundError(
                f"找不到 MNIST 文件 {stem}[.gz]：请把 MNIST 的 4 个 IDX 文件（{', '.join(MNIST_FILES)}，可以是 .gz）"
                f"放到 {root}/；没有它们时脚本改用 sklearn 的 8×8 digits"
            )
        arrays.append(read_idx(found))
    return tuple(arrays)


def load_data(seed: int = 0) -> tuple[TensorDataset, TensorDataset, str]:
    try:
        tr_x, tr_y, te_x, te_y = load_mnist()
        norm = lambda a: (a.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD  # noqa: E731
        tr_x, te_x, name = norm(tr_x), norm(te_x), "MNIST 28x28"
    except FileNotFoundError as e:
        print(f"[提示] {e}")
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images.astype(np.float32) / 16.0 - 0.3) / 0.4
        idx = np.random.default_rng(seed).permutation(len(x))
        n_test = len(x) // 4
        tr_x, tr_y, te_x, te_y = x[idx[n_test:]], digits.target[idx[n_test:]], x[idx[:n_test]], digits.target[idx[:n_test]]
        name = "sklearn digits 8x8"
    to_ds = lambda x, y: TensorDataset(torch.from_numpy(x[:, None]), torch.from_numpy(y.astype(np.int64)))  # noqa: E731
    return to_ds(tr_x, tr_y), to_ds(te_x, te_y), name


# =============================================================================
# 1×1 卷积与计算量
# =============================================================================
def conv1x1_as_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """1×1 卷积 = 每个像素上的 nn.Linear：out[n,o,h,w] = Σ_c W[o,c]·x[n,c,h,w] + b[o]。"""
    return torch.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x) + bias[:, None, None]


def conv_mults(h: int, w: int, c_in: int, c_out: int, k: int) -> int:
    """'same' 卷积的乘法次数：每个输出元素 k·k·c_in 次乘法，共 h·w·c_out 个输出元素。"""
    return k * k * h * w * c_in * c_out


# =============================================================================
# Inception 块与残差块
# =============================================================================
class InceptionA(nn.Module):
    out_channels = 16 + 24 * 3  # 四条分支拼接后的通道数 88

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch5x5_1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch5x5_2 = nn.Conv2d(16, 24, kernel_size=5, padding=2)
        self.branch3x3_1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch3x3_2 = nn.Conv2d(16, 24, kernel_size=3, padding=1)
        self.branch3x3_3 = nn.Conv2d(24, 24, kernel_size=3, padding=1)
        self.branch_pool = nn.Conv2d(in_channels, 24, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)  # (N, 16, H, W)
        b5 = self.branch5x5_2(self.branch5x5_1(x))  # (N, 24, H, W)
        b3 = self.branch3x3_3(self.branch3x3_2(self.branch3x3_1(x)))  # (N, 24, H, W)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))  # (N, 24, H, W)
        return torch.cat([b1, b5, b3, bp], dim=1)  # (N, 88, H, W)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))  # F(x)，形状与 x 相同
        return F.relu(x + y)


def spatial_after_two_stages(image_size: int, kernel: int, padding: int) -> int:
    """(conv → MaxPool2d(2)) 两次之后的边长：每次 conv 变成 H + 2p − k + 1，池化再减半（向下取整）。"""
    s = image_size
    for _ in range(2):
        s = (s + 2 * padding - kernel + 1) // 2
    if s < 1:
        raise ValueError(f"image_size={image_size} 太小：两次 {kernel}×{kernel} 卷积（padding={padding}）+ 池化后没有像素了")
    return s


class InceptionNet(nn.Module):
    """课上的结构：conv(1→10) → pool → Inception → conv(88→20) → pool → Inception → Linear。"""

    def __init__(self, image_size: int = 28, kernel: int = 5, padding: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=kernel, padding=padding)
        self.conv2 = nn.Conv2d(InceptionA.out_channels, 20, kernel_size=kernel, padding=padding)
        self.incep1, self.incep2 = InceptionA(10), InceptionA(20)
        self.mp = nn.MaxPool2d(2)
        s = spatial_after_two_stages(image_size, kernel, padding)
        self.fc = nn.Linear(InceptionA.out_channels * s * s, 10)  # MNIST：88·4·4 = 1408

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.incep1(F.relu(self.mp(self.conv1(x))))
        x = self.incep2(F.relu(self.mp(self.conv2(x))))
        return self.fc(x.flatten(1))


class ResNet(nn.Module):
    """课上的结构：conv(1→16) → pool → Res → conv(16→32) → pool → Res → Linear。"""

    def __init__(self, image_size: int = 28, kernel: int = 5, padding: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=kernel, padding=padding)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=kernel, padding=padding)
        self.rblock1, self.rblock2 = ResidualBlock(16), ResidualBlock(32)
        self.mp = nn.MaxPool2d(2)
        s = spatial_after_two_stages(image_size, kernel, padding)
        self.fc = nn.Linear(32 * s * s, 10)  # MNIST：32·4·4 = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.rblock1(self.mp(F.relu(self.conv1(x))))
        x = self.rblock2(self.mp(F.relu(self.conv2(x))))
        return self.fc(x.flatten(1))


# =============================================================================
# 梯度流实验：普通卷积栈 vs 残差块栈
# =============================================================================
def input_grad_norms(depth: int = DEPTH, channels: int = 8, residual: bool = True, seed: int = 0) -> list[float]:
    """搭 depth 层（普通：Conv→ReLU；残差：ResidualBlock），对 sum(输出²) 反传，
    返回每一层**输入**处梯度的范数（下标 0 是网络最前面）。默认初始化，不加 BatchNorm。"""
    torch.manual_seed(seed)
    if residual:
        layers = [ResidualBlock(channels) for _ in range(depth)]
    else:
        layers = [nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()) for _ in range(depth)]
    h = torch.randn(4, channels, 8, 8, requires_grad=True)
    acts = []
    for layer in layers:
        h.retain_grad()  # 中间张量默认不保留 .grad，要显式要求
        acts.append(h)
        h = layer(h)
    (h**2).sum().backward()
    return [a.grad.norm().item() for a in acts]


def evaluate(model: nn.Module, ds: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in DataLoader(ds, batch_size=1000))
    model.train()
    return correct / len(ds)


def train(model: nn.Module, train_set, test_set, epochs: int = EPOCHS, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(seed))
    # 课上用 SGD；这两个网络更深（Inception 一条分支就有 3 层卷积），Adam 收敛快得多
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    accs = []
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        accs.append(evaluate(model, test_set))
    return accs


def classifier_baselines(train_set: TensorDataset, test_set: TensorDataset, num_classes: int = 10,
                         max_train: int = 10_000) -> dict[str, float]:
    """不用卷积的基线，训练集上拟合、测试集上评估：瞎猜 1/C；永远猜训练集最多的那一类；
    展平像素上的多项逻辑回归（sklearn，MNIST 时只用前 max_train 张，几秒钟拟合完）。"""
    from sklearn.linear_model import LogisticRegression

    y_tr, y_te = train_set.tensors[1].numpy(), test_set.tensors[1].numpy()
    x = train_set.tensors[0][:max_train].flatten(1).numpy()
    clf = LogisticRegression(max_iter=2000).fit(x, y_tr[:max_train])
    return {
        "chance": 1 / num_classes,
        "majority": float((y_te == np.bincount(y_tr, minlength=num_classes).argmax()).mean()),
        "linear": float(clf.score(test_set.tensors[0].flatten(1).numpy(), y_te)),
    }


def report(label: str, acc: float, baselines: dict[str, float], name: str) -> str:
    line = (f"{name}：{label} 训练 {EPOCHS} 个 epoch，测试准确率 {acc:.3f}（瞎猜 {baselines['chance']:.3f}，"
            f"多数类 {baselines['majority']:.3f}，线性 softmax（逻辑回归）{baselines['linear']:.3f}")
    if name in EXPECTED_TEST_ACC:
        lo, hi = EXPECTED_TEST_ACC[name][label]
        line += f"，第 10 讲基础 CNN {BASIC_CNN_DIGITS_ACC:.3f}；默认配置（{DEFAULT_EPOCHS} epoch）约 {lo:.2f}–{hi:.2f}）"
    else:
        line += "；MNIST 上本脚本没有实测范围，脚本断言 > 0.98）"
    return line


def grad_ratio_report(plain: list[float], res: list[float]) -> str:
    (p_lo, p_hi), (r_lo, r_hi) = EXPECTED_GRAD_RATIO["plain"], EXPECTED_GRAD_RATIO["residual"]
    return (f"{len(plain)} 层梯度流：第 0 层输入处梯度范数 / 最后一层输入处（1 = 不衰减）—— 普通栈 {plain[0] / plain[-1]:.1e}，"
            f"残差栈 {res[0] / res[-1]:.2f}（默认 {DEPTH} 层、种子 0–4 实测：普通栈 {p_lo:.0e}–{p_hi:.0e}，残差栈 {r_lo}–{r_hi}）")


def make_figure(plain, res, accs: dict[str, list[float]], name: str, baselines: dict[str, float]):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.semilogy(plain, "o-", label="plain conv+relu stack")
    ax1.semilogy(res, "s-", label="residual blocks")
    ax1.set(title=f"gradient norm at each layer input (depth {len(plain)})", xlabel="layer (0 = first)",
            ylabel="||dL/dx|| (log scale)")
    ax1.legend(loc="lower right")  # 普通栈从左下升到右上、残差栈在顶上：右下角是空的
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    for k, v in accs.items():
        ax2.plot(range(1, len(v) + 1), v, "o-", ms=4, label=k)  # accs[i] 是第 i + 1 个 epoch 之后测的：横轴从 1 开始
    ax2.axhline(baselines["linear"], color="tab:gray", ls="--", label=f"linear softmax {baselines['linear']:.3f}")
    ax2.set(title=f"test accuracy ({name})", xlabel="epoch", ylabel="test accuracy")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot(plain, res, accs: dict[str, list[float]], name: str, baselines: dict[str, float]) -> None:
    path = save_figure(make_figure(plain, res, accs, name, baselines), "liu2_lecture11_advanced_cnn.png", dpi=120)
    print(f"图已保存：{path}")


def main() -> None:
    setup_seed()
    print("== 第 11 讲 高级 CNN ==")
    conv = nn.Conv2d(6, 4, 1).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    assert torch.allclose(conv1x1_as_linear(x, conv.weight, conv.bias), conv(x), atol=1e-12)
    direct = conv_mults(28, 28, 192, 32, 5)
    bottleneck = conv_mults(28, 28, 192, 16, 1) + conv_mults(28, 28, 16, 32, 5)
    print(f"1×1 卷积 = 逐像素 Linear（einsum 对照 nn.Conv2d）；5×5 卷积 192→32 乘法 {direct:,}，"
          f"先 1×1 降到 16 通道只需 {bottleneck:,}（{direct / bottleneck:.1f} 倍）")

    # Inception：四条分支拼成 88 通道、尺寸不变，每条分支都拿到梯度
    block = InceptionA(10)
    out = block(torch.randn(2, 10, 12, 12))
    assert out.shape == (2, 88, 12, 12)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    # 残差块：F 的最后一层权重置零 ⇒ 块就是 ReLU(x)，对正输入是恒等映射，梯度全为 1
    rb = ResidualBlock(4)
    nn.init.zeros_(rb.conv2.weight)
    nn.init.zeros_(rb.conv2.bias)
    xr = (torch.rand(2, 4, 6, 6) + 0.1).requires_grad_()
    yr = rb(xr)
    yr.sum().backward()
    assert torch.equal(yr, xr) and torch.equal(xr.grad, torch.ones_like(xr))
    print("Inception 块输出 (N, 88, H, W)、每条分支都有梯度；F=0 的残差块 = 恒等映射，梯度无损流过")

    plain, res = input_grad_norms(residual=False), input_grad_norms(residual=True)
    print(grad_ratio_report(plain, res))
    # 普通栈每层都把梯度缩小，传到最前面几乎消失；残差栈靠恒等项保住了梯度
    assert plain[0] / plain[-1] < 1e-3 and res[0] / res[-1] > 0.1

    train_set, test_set, name = load_data()
    size = train_set.tensors[0].shape[-1]
    kernel, padding = (5, 0) if size == 28 else (3, 1)  # 8×8 的图经不起两次 5×5 无填充卷积
    if SMOKE:
        train_set = TensorDataset(*(t[:600] for t in train_set.tensors))
    baselines = classifier_baselines(train_set, test_set)
    accs = {}
    for label, net in (("InceptionNet", InceptionNet(size, kernel, padding)), ("ResNet", ResNet(size, kernel, padding))):
        accs[label] = train(net, train_set, test_set)
        print(report(label, accs[label][-1], baselines, name))
        # 学习结论：digits 上完整训练 > 0.95，MNIST > 0.98
        assert accs[label][-1] > 0.2
        if not SMOKE:
            assert accs[label][-1] > (0.98 if size == 28 else 0.95)
    plot(plain, res, accs, name, baselines)


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
