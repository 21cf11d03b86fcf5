"""RNN、LSTM、GRU 从零实现：与 nn.RNN / nn.LSTM / nn.GRU 在相同权重下输出、梯度逐项相等；BPTT 与梯度裁剪。

三种单元（x 是当前输入，h 是上一步隐状态；PyTorch 的约定 y = x Wᵀ + b，两套偏置 b_ih、b_hh 都保留）：

    RNN   h' = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)

    LSTM  [i, f, g, o] = x W_ihᵀ + b_ih + h W_hhᵀ + b_hh        （按 i, f, g, o 的顺序切成 4 块）
          i, f, o = σ(·)，g = tanh(·)
          c' = f ⊙ c + i ⊙ g              ← 细胞状态是"加法"更新
          h' = o ⊙ tanh(c')

    GRU   [r_x, z_x, n_x] = x W_ihᵀ + b_ih，[r_h, z_h, n_h] = h W_hhᵀ + b_hh   （顺序 r, z, n）
          r = σ(r_x + r_h)，z = σ(z_x + z_h)
          n = tanh(n_x + r ⊙ n_h)          ← 注意 r 乘在"h 那一半（含 b_hn）"上，这是 PyTorch/cuDNN 的版本
          h' = (1 − z) ⊙ n + z ⊙ h

BPTT（沿时间的反向传播）：把循环按时间展开，就是一张共享权重的深层前馈网络，对它做普通反向传播即可。
对 L = L(h_T)，链式法则给出

    ∂L/∂h_t = ∂L/∂h_T · ∏_{k=t+1..T} ∂h_k/∂h_{k−1}，   RNN 里 ∂h_k/∂h_{k−1} = diag(1 − h_k²) W_hh

T − t 个雅可比矩阵连乘：它们的谱范数普遍 < 1 时梯度按几何级数消失，> 1 时爆炸。
LSTM 的细胞状态 ∂c_k/∂c_{k−1} = diag(f_k)，是逐元素的门控而不是反复乘同一个矩阵——
遗忘门接近 1 时梯度几乎原样流回去，这就是 LSTM 能记住长距离依赖的原因（GRU 的 z 同理）。
但默认初始化下 f = σ(一个 0 附近的小数) ≈ 0.35–0.65，连乘 T 次照样消失；所以常把遗忘门偏置初始化成正数
（Jozefowicz et al. 2015），让网络"默认记住"，需要时再学会遗忘——图里 lstm(forget bias=3) 那条线就是这个技巧的效果。
实测（T=50，H=32，默认种子）‖∂L/∂x_1‖ / ‖∂L/∂x_T‖：RNN 1.5e−16（平均每步 ×0.48），GRU 8e−11，LSTM 5e−10（每步 ×0.65），
遗忘门偏置 3 的 LSTM 0.29（每步 ×0.975）。每步的倍数比平均遗忘门 σ(0) = 0.5、σ(3) = 0.953 都大
（0.5^49 ≈ 2e−15，0.953^49 ≈ 0.09）：∂L/∂x_t 不只走细胞状态这一条路（还有经过 h 与各个门的路径），
遗忘门也因单元而异（实测 5%–95% 分位 0.36–0.64），所以 f^(T−1) 只是量级上的估计。
梯度消失靠结构（门控）解决；梯度爆炸靠"梯度裁剪"兜底：总范数超过阈值就整体缩放，方向不变。

    python "archive/Introductory learning/03_Transformer/01_rnn_lstm_gru.py"

图：checkpoints/figures/rnn_gradient_flow.png（∂L/∂x_t 的范数随 t 的变化：RNN 消失最快，遗忘门偏置为 3 的 LSTM
往回 49 步只衰减到约 0.3 倍）。
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed, time_block

SMOKE = is_smoke()
SEQ_LEN = 20 if SMOKE else 50  # 梯度流动图的序列长度
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}  # 每种单元 W_ih 的行数是 gates × hidden_size


# =============================================================================
# 1. 三种单元：一步的计算
# =============================================================================
def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity: str = "tanh"):
    """(B, I), (B, H) -> (B, H)。h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)。"""
    pre = x @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        pre = pre + b_ih + b_hh
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_cell(x, state, w_ih, w_hh, b_ih=None, b_hh=None):
    """(B, I), ((B, H), (B, H)) -> (h', c')。门的顺序 i, f, g, o 与 PyTorch 的权重布局一致。"""
    h, c = state
    gates = x @ w_ih.T + h @ w_hh.T  # (B, 4H)：四个门一次矩阵乘算完，比四次小矩阵乘快
    if b_ih is not None:
        gates = gates + b_ih + b_hh
    i, f, g, o = gates.chunk(4, dim=-1)  # 各 (B, H)
    i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
    g = torch.tanh(g)
    c_next = f * c + i * g  # 加法更新：∂c'/∂c = f，梯度沿细胞状态流动时只被逐元素门控
    h_next = o * torch.tanh(c_next)
    return h_next, c_next


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """(B, I), (B, H) -> (B, H)。门的顺序 r, z, n；r 作用在 (h W_hnᵀ + b_hn) 上。"""
    gx = x @ w_ih.T  # (B, 3H)
    gh = h @ w_hh.T  # (B, 3H)
    if b_ih is not None:
        gx, gh = gx + b_ih, gh + b_hh
    r_x, z_x, n_x = gx.chunk(3, dim=-1)
    r_h, z_h, n_h = gh.chunk(3, dim=-1)
    r = torch.sigmoid(r_x + r_h)
    z = torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    # h' = (1 − z) n + z h：z 是"保留旧状态"的比例，∂h'/∂h 里有一项 diag(z)，与 LSTM 的 f 作用相同
    return (1 - z) * n + z * h


# =============================================================================
# 2. 多层循环网络：参数名、形状、初始化都与 nn.RNN/nn.LSTM/nn.GRU 相同
# =============================================================================
class ScratchRNN(nn.Module):
    """mode ∈ {"rnn_tanh", "rnn_relu", "lstm", "gru"} 的多层单向循环网络。

    参数名 weight_ih_l{k} / weight_hh_l{k} / bias_ih_l{k} / bias_hh_l{k} 与 PyTorch 一致，
    所以 `scratch.load_state_dict(torch_module.state_dict())` 就能拿到完全相同的权重。
    第 k 层的输入是第 k−1 层在每个时间步的输出（第 0 层的输入是 x）。
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False):
        super().__init__()
        if mode not in GATES:
            raise ValueError(f"mode={mode!r} 不支持；可选 {sorted(GATES)}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} 必须是 >= 1 的整数")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        rows = GATES[mode] * hidden_size
        # PyTorch 的初始化：所有参数 ~ U(−1/√H, 1/√H)（方差 1/(3H)）：h W_hhᵀ 是 H 项之和，这一项的方差
        # 是 Var(h)/3，与 H 无关；x W_ihᵀ 那一项是 I·Var(x)/(3H)，随 I/H 变化
        bound = 1.0 / math.sqrt(hidden_size)
        for k in range(num_layers):
            in_k = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(rows, in_k).uniform_(-bound, bound)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(rows, hidden_size).uniform_(-bound, bound)))
            if bias:
                self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(rows).uniform_(-bound, bound)))
                self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(rows).uniform_(-bound, bound)))

    def layer_weights(self, k: int):
        w = [getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")]
        if self.bias:
            w += [getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}")]
        return w

    def _check(self, x: torch.Tensor, hx):
        if x.dim() != 3:
            layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
            raise ValueError(f"输入应为 3 维 {layout}，收到形状 {tuple(x.shape)}")
        if x.size(-1) != self.input_size:
            raise ValueError(f"输入最后一维是 {x.size(-1)}，但 input_size={self.input_size}")
        batch = x.size(0) if self.batch_first else x.size(1)
        want = (self.num_layers, batch, self.hidden_size)
        states = hx if isinstance(hx, tuple) else (hx,)
        if self.mode == "lstm" and hx is not None and not isinstance(hx, tuple):
            raise ValueError("LSTM 的初始状态要传 (h_0, c_0) 元组")
        for s in states:
            if s is not None and tuple(s.shape) != want:
                raise ValueError(f"初始状态形状应为 (num_layers, B, hidden_size)={want}，收到 {tuple(s.shape)}")

    def forward(self, x: torch.Tensor, hx=None):
        """x: (T, B, I)（batch_first 时 (B, T, I)）。返回 (output, h_n)，LSTM 返回 (output, (h_n, c_n))。

        output 是最后一层在每个时间步的 h，形状同 x 的前两维 + hidden_size。
        """
        self._check(x, hx)
        if self.batch_first:
            x = x.transpose(0, 1)  # 内部统一按 (T, B, I) 循环
        T, B, _ = x.shape
        zeros = x.new_zeros(self.num_layers, B, self.hidden_size)
        if self.mode == "lstm":
            h0, c0 = hx if hx is not None else (zeros, zeros)
        else:
            h0 = hx if hx is not None else zeros
        layer_input = x
        h_n, c_n = [], []
        for k in range(self.num_layers):
            w = self.layer_weights(k)
            h = h0[k]
            c = c0[k] if self.mode == "lstm" else None
            outputs = []
            for t in range(T):  # 时间上必须串行：h_t 依赖 h_{t−1}，这正是 RNN 难以并行的根源
                if self.mode == "lstm":
                    h, c = lstm_cell(layer_input[t], (h, c), *w)
                elif self.mode == "gru":
                    h = gru_cell(layer_input[t], h, *w)
                else:
                    h = rnn_cell(layer_input[t], h, *w, nonlinearity=self.mode[4:])
                outputs.append(h)
            layer_input = torch.stack(outputs)  # (T, B, H)，作为下一层的输入
            h_n.append(h)
            c_n.append(c)
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        if self.mode == "lstm":
            return output, (torch.stack(h_n), torch.stack(c_n))
        return output, torch.stack(h_n)


def torch_reference(mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                    bias: bool = True, batch_first: bool = False) -> nn.Module:
    """与 ScratchRNN 同配置的 PyTorch 模块（nn.RNN 的 nonlinearity 由 mode 决定）。"""
    kwargs = dict(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                  bias=bias, batch_first=batch_first)
    if mode == "lstm":
        return nn.LSTM(**kwargs)
    if mode == "gru":
        return nn.GRU(**kwargs)
    return nn.RNN(nonlinearity=mode[4:], **kwargs)


# =============================================================================
# 3. 梯度裁剪：按全部参数的总 L2 范数整体缩放
# =============================================================================
def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """总范数 ‖g‖ = sqrt(Σ_p ‖g_p‖²)；若 ‖g‖ > max_norm，所有梯度乘以 max_norm / (‖g‖ + eps)。返回裁剪前的 ‖g‖。

    为什么按"总范数"而不是逐元素截断（clip_value）：整体缩放保持梯度方向不变，只是步子变小；
    逐元素截断会改变方向。eps 防止 ‖g‖ = 0 时除零，与 torch.nn.utils.clip_grad_norm_ 取同一个值。
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm={max_norm} 必须 > 0")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(max_norm / (total + eps), max=1.0)  # ≤ 1：范数没超标时不放大
    for g in grads:
        g.mul_(coef)
    return total


# =============================================================================
# 4. 检查与演示
# =============================================================================
def compare_with_torch(mode: str, num_layers: int, batch_first: bool, bias: bool = True,
                       T: int = 7, B: int = 3, I: int = 5, H: int = 6) -> tuple[float, float]:
    """同权重、同输入下与 PyTorch 比较：返回 (输出最大误差, 梯度最大误差)，梯度含输入、初始状态与全部参数。"""
    ref = torch_reference(mode, I, H, num_layers, bias, batch_first)
    ours = ScratchRNN(mode, I, H, num_layers, bias, batch_first)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn((B, T, I) if batch_first else (T, B, I), requires_grad=True)
    h0 = torch.randn(num_layers, B, H, requires_grad=True)
    hx = (h0, torch.randn(num_layers, B, H, requires_grad=True)) if mode == "lstm" else h0
    out_r, st_r = ref(x, hx)
    out_o, st_o = ours(x, hx)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]  # noqa: E731
    out_err = max((a - b).abs().max().item() for a, b in zip([out_r, *flat(st_r)], [out_o, *flat(st_o)]))
    # 一个同时依赖输出与末状态的标量损失，权重随机，避免"恰好对称"掩盖错误
    weights = [torch.randn_like(t) for t in [out_r, *flat(st_r)]]
    inputs = [x, *flat(hx)]

    def grads(module, out, st):
        loss = sum((w * t).sum() for w, t in zip(weights, [out, *flat(st)]))
        return torch.autograd.grad(loss, inputs + list(module.parameters()))

    g_r = grads(ref, out_r, st_r)
    g_o = grads(ours, out_o, st_o)
    grad_err = max((a - b).abs().max().item() for a, b in zip(g_r, g_o))
    return out_err, grad_err


def gradient_flow(mode: str, T: int, H: int = 32, forget_bias: float | None = None) -> torch.Tensor:
    """‖∂L/∂x_t‖，L = 最后一步隐状态之和：衡量第 t 步的输入还能对最终结果产生多大影响。

    forget_bias（只对 LSTM）：把遗忘门那一块的 b_ih 设成这个值（b_hh 置 0），f ≈ σ(forget_bias)。
    """
    model = ScratchRNN(mode, 8, H)
    if forget_bias is not None:
        with torch.no_grad():  # i, f, g, o 顺序：第 [H, 2H) 行是遗忘门
            model.bias_ih_l0[H:2 * H] = forget_bias
            model.bias_hh_l0[H:2 * H] = 0.0
    x = torch.randn(T, 1, 8, requires_grad=True)
    _, state = model(x)
    h_T = state[0] if mode == "lstm" else state
    h_T.sum().backward()
    return x.grad.norm(dim=(1, 2))  # (T,)


def per_step_factor(grad_norms: torch.Tensor) -> float:
    """(‖∂L/∂x_1‖ / ‖∂L/∂x_T‖)^(1/(T−1))：梯度每往回穿过一步平均乘上的倍数（< 1 消失，> 1 爆炸）。"""
    if grad_norms.numel() < 2:
        raise ValueError("至少要 2 个时间步才谈得上每步的倍数")
    return (grad_norms[0] / grad_norms[-1]).item() ** (1.0 / (grad_norms.numel() - 1))


def plot_gradient_flow(flows: dict[str, torch.Tensor]):
    """每种单元的 ‖∂L/∂x_t‖ 随 t 的变化（对数纵轴），返回 Figure。t 从 1 开始，与公式里的 x_1..x_T 一致。"""
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, g in flows.items():
        ax.semilogy(range(1, g.numel() + 1), g.numpy(), label=mode)
    ax.set_xlabel("time step t (input x_t; L is computed at t = T)")
    ax.set_ylabel("||dL/dx_t||  (L = sum of h_T)")
    ax.set_title("Gradient flow through time (BPTT)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def main() -> None:
    setup_seed()
    print("== 1. 从零实现 vs nn.RNN / nn.LSTM / nn.GRU（相同权重，fp32）==")
    with time_block("equivalence", verbose=False) as t:
        worst = 0.0
        for mode in GATES:
            for num_layers, batch_first, bias in ((1, False, True), (2, True, True), (3, False, False)):
                out_err, grad_err = compare_with_torch(mode, num_layers, batch_first, bias)
                worst = max(worst, out_err, grad_err)
                print(f"  {mode:9s} layers={num_layers} batch_first={batch_first!s:5s} bias={bias!s:5s} "
                      f"输出误差 {out_err:.1e}  梯度误差 {grad_err:.1e}")
    assert worst < 1e-5, f"与 PyTorch 不一致：最大误差 {worst:.2e}"
    print(f"  全部一致（最大误差 {worst:.1e}，用时 {t.ms:.0f} ms）")

    print(f"\n== 2. BPTT：梯度随时间的流动（T={SEQ_LEN}）==")
    setup_seed()
    flows = {mode: gradient_flow(mode, SEQ_LEN) for mode in ("rnn_tanh", "gru", "lstm")}
    flows["lstm (forget bias=3)"] = gradient_flow("lstm", SEQ_LEN, forget_bias=3.0)
    print(f"  {'':20s} ‖∂L/∂x_1‖ / ‖∂L/∂x_T‖   平均每步的倍数（对照：遗忘门 σ(0) = 0.5，σ(3) = {torch.sigmoid(torch.tensor(3.0)):.3f}）")
    for mode, g in flows.items():
        ratio = g[0].item() / g[-1].item()
        print(f"  {mode:20s} {ratio:20.2e}   {per_step_factor(g):.3f}")
    path = save_figure(plot_gradient_flow(flows), "rnn_gradient_flow.png", dpi=120)
    print(f"  图已保存：{path}")

    print("\n== 3. 梯度爆炸与裁剪 ==")
    model = ScratchRNN("rnn_tanh", 4, 16)
    with torch.no_grad():  # 把 W_hh 放大：雅可比范数 > 1，连乘后梯度爆炸
        model.weight_hh_l0.mul_(4.0)
    out, _ = model(torch.randn(SEQ_LEN, 2, 4))
    out.pow(2).sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    total = clip_grad_norm(model.parameters(), max_norm=1.0)
    ref_params = [nn.Parameter(torch.zeros_like(g)) for g in reference]
    for p, g in zip(ref_params, reference):
        p.grad = g.clone()
    ref_total = torch.nn.utils.clip_grad_norm_(ref_params, max_norm=1.0)
    clip_err = max((p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), ref_params))
    new_total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    print(f"  裁剪前总范数 {total.item():.3g}（torch: {ref_total.item():.3g}），裁剪后 {new_total.item():.4f}；"
          f"与 clip_grad_norm_ 的梯度差 {clip_err:.1e}")
    assert abs(total.item() - ref_total.item()) <= 1e-4 * ref_total.item() and clip_err < 1e-6


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
