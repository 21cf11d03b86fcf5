"""刘二《PyTorch 深度学习实践》第 12 讲 循环神经网络（基础篇）：RNNCell、nn.RNN 与 "hello" → "ohlol"。

RNN 处理序列 x_1 … x_T：同一个单元（同一组权重）在每个时间步上反复使用，靠隐状态 h 传递历史：
    h_t = tanh(x_t W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh)
权重共享让参数量与序列长度无关，也让模型能处理任意长度。
- nn.RNNCell(input_size, hidden_size)：只算**一步**，要自己写 for 循环；
- nn.RNN(input_size, hidden_size, num_layers)：一次吃整条序列 (T, B, input)（batch_first=True 时 (B, T, input)），
  返回所有时间步的输出 (T, B, hidden) 和最后的隐状态 (num_layers, B, hidden)。
本讲先手写一步 RNNCell 与 nn.RNNCell 对照，再用 RNNCell 循环 + 共享权重复现 nn.RNN（含 2 层）。

课上的小任务：把 "hello" 变成 "ohlol"（字符表 e h l o）。输入每个字符 one-hot，
每个时间步做 4 分类（CrossEntropy），三种写法：RNNCell 循环、nn.RNN、Embedding + nn.RNN + Linear。

    python archive/liu2_lecture/lecture12_basic_rnn.py

图：checkpoints/figures/liu2_lecture12_basic_rnn.png（三种写法的训练损失）。
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.io import is_smoke, output_path
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

SMOKE = is_smoke()
IDX2CHAR = ["e", "h", "l", "o"]
X_TEXT, Y_TEXT = "hello", "ohlol"
EPOCHS = 15 if SMOKE else 100
LR = 0.1
RESTARTS = 4  # 随机重启次数（见 train_with_restarts）


def encode(text: str) -> torch.Tensor:
    unknown = sorted(set(text) - set(IDX2CHAR))
    if unknown:
        raise ValueError(f"字符 {unknown} 不在字符表 {IDX2CHAR} 里")
    return torch.tensor([IDX2CHAR.index(c) for c in text])


def decode(indices: torch.Tensor) -> str:
    return "".join(IDX2CHAR[i] for i in indices.tolist())


# =============================================================================
# 手写 RNN
# =============================================================================
def rnn_cell(x: torch.Tensor, h: torch.Tensor, w_ih, w_hh, b_ih, b_hh) -> torch.Tensor:
    """一步：h' = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)。x: (B, input)，h: (B, hidden)。"""
    if x.shape[-1] != w_ih.shape[1]:
        raise ValueError(f"x 的最后一维是 {x.shape[-1]}，但 W_ih 期望 input_size={w_ih.shape[1]}")
    return torch.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)


def rnn_with_cells(x: torch.Tensor, h0: torch.Tensor, rnn: nn.RNN) -> tuple[torch.Tensor, torch.Tensor]:
    """用 rnn_cell 循环复现 nn.RNN（batch_first=False）：x (T, B, input)，h0 (L, B, hidden)。
    第 l 层的输入序列是第 l−1 层的输出序列；每层在所有时间步上共享同一组权重。"""
    layer_input, h_last = x, []
    for layer in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
        h, outputs = h0[layer], []
        for x_t in layer_input:  # 沿时间维一步一步走
            h = rnn_cell(x_t, h, w_ih, w_hh, b_ih, b_hh)
            outputs.append(h)
        layer_input = torch.stack(outputs)  # (T, B, hidden)
        h_last.append(h)
    return layer_input, torch.stack(h_last)  # (T, B, hidden), (L, B, hidden)


# =============================================================================
# "hello" → "ohlol" 的三种写法
# =============================================================================
class CellModel(nn.Module):
    def __init__(self, hidden_size: int = 4) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.RNNCell(len(IDX2CHAR), hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[1], self.hidden_size)  # x: (T, B, 4)
        out = []
        for x_t in x:
            h = self.cell(x_t, h)  # (B, hidden)
            out.append(h)
        return torch.stack(out)  # (T, B, hidden=4)，直接当 4 类的 logit


class RNNModel(nn.Module):
    def __init__(self, hidden_size: int = 4, num_layers: int = 1) -> None:
        super().__init__()
        self.rnn = nn.RNN(len(IDX2CHAR), hidden_size, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # h0 省略时为全 0
        return out  # (T, B, hidden)


class EmbeddingModel(nn.Module):
    """one-hot 又稀疏又高维；Embedding 查表得到稠密向量（等价于 one-hot 乘一个可学的矩阵）。"""

    def __init__(self, embedding_size: int = 10, hidden_size: int = 8, num_layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(len(IDX2CHAR), embedding_size)
        self.rnn = nn.RNN(embedding_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, len(IDX2CHAR))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(idx))  # idx: (B, T) → (B, T, emb) → (B, T, hidden)
        return self.fc(out)  # (B, T, 4)


def train_hello(kind: str, epochs: int = EPOCHS, seed: int = 0) -> tuple[str, list[float]]:
    """训练一种写法，返回 (最终预测的字符串, 损失曲线)。"""
    torch.manual_seed(seed)
    x_idx, y_idx = encode(X_TEXT), encode(Y_TEXT)
    if kind == "cell":
        model, inputs = CellModel(), F.one_hot(x_idx, 4).float()[:, None]  # (T, 1, 4)
    elif kind == "rnn":
        model, inputs = RNNModel(), F.one_hot(x_idx, 4).float()[:, None]
    elif kind == "embedding":
        model, inputs = EmbeddingModel(), x_idx[None]  # (1, T)
    else:
        raise ValueError(f"kind={kind!r} 未知，可选 'cell'、'rnn'、'embedding'")
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    history = []
    for _ in range(epochs):
        logits = model(inputs).reshape(-1, 4)  # (T·B, 4)：每个时间步一个 4 分类
        loss = F.cross_entropy(logits, y_idx)
        history.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return decode(model(inputs).reshape(-1, 4).argmax(1)), history


def train_with_restarts(kind: str, restarts: int = RESTARTS, epochs: int = EPOCHS) -> tuple[str, list[float], int]:
    """课上的 cell / rnn 写法直接把 4 维隐状态当 logit：tanh 把 logit 限制在 [−1, 1]，模型极小，
    有局部极小值（例如卡在 "ohlll"：第 3、4 步输入都是 'l'，要靠隐状态区分，有的初始化学不出来）。
    常见对策是随机重启：换几个种子各训练一次，取最终损失最低的。返回 (预测, 损失曲线, 卡住的次数)。"""
    runs = [train_hello(kind, epochs, seed) for seed in range(restarts)]
    best = min(runs, key=lambda r: r[1][-1])
    return best[0], best[1], sum(pred != Y_TEXT for pred, _ in runs)


def plot(histories: dict[str, list[float]]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, h in histories.items():
        ax.plot(h, label=k)
    ax.set(title="hello -> ohlol: training loss", xlabel="epoch", ylabel="cross-entropy")
    ax.legend()
    fig.tight_layout()
    path = output_path("figures", "liu2_lecture12_basic_rnn.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"图已保存：{path}")


def main() -> None:
    setup_seed()
    print("== 第 12 讲 基础 RNN ==")
    cell = nn.RNNCell(3, 5).double()
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    assert torch.allclose(rnn_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh), cell(x, h), atol=1e-12)
    for layers in (1, 2):
        rnn = nn.RNN(3, 5, num_layers=layers).double()
        xs, h0 = torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(layers, 2, 5, dtype=torch.float64)
        out, hn = rnn_with_cells(xs, h0, rnn)
        out_ref, hn_ref = rnn(xs, h0)
        assert torch.allclose(out, out_ref, atol=1e-12) and torch.allclose(hn, hn_ref, atol=1e-12)
    print("手写一步 = nn.RNNCell；RNNCell 循环（共享权重）= nn.RNN 的输出与末隐状态（1 层、2 层）")

    # 同一个种子下 nn.RNNCell 与 nn.RNN 的参数初始化完全相同，所以 cell 与 rnn 两种写法的训练轨迹逐步一致
    assert train_hello("cell", epochs=3)[1] == train_hello("rnn", epochs=3)[1]
    histories = {}
    for kind in ("cell", "rnn", "embedding"):
        pred, histories[kind], stuck = train_with_restarts(kind)
        print(f"{kind:>9}: {RESTARTS} 次随机重启（{stuck} 次没学成 ohlol）中最好的一次：{EPOCHS} 个 epoch，"
              f"loss {histories[kind][0]:.3f} → {histories[kind][-1]:.3f}，预测 {X_TEXT!r} → {pred!r}")
        # 学习结论：完整训练后三种写法都把 "hello" 映射成 "ohlol"
        assert histories[kind][-1] < histories[kind][0]
        if not SMOKE:
            assert pred == Y_TEXT, (kind, pred)
    plot(histories)


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
