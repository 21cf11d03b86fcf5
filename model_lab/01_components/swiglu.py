"""SwiGLU 前馈层（以及 GeGLU、ReLU² 作对比），和 Llama 的 8/3·d 隐藏维度。

运行：python model_lab/01_components/swiglu.py   （或 python -m model_lab.01_components.swiglu；SMOKE=1 几秒跑完）

从 FFN 到 GLU
-------------
原版 Transformer 的 FFN：FFN(x) = act(x W1) W2，W1: d×4d，W2: 4d×d。
GLU（Dauphin et al. 2017）把"激活"换成两条支路相乘：一条过非线性当"门"，一条是线性的"值"：
    GLU_act(x) = (act(x W_gate) ⊙ x W_up) W_down
Shazeer 2020（GLU Variants Improve Transformer）比较了各种 act，SwiGLU（act = Swish_1 = SiLU）
与 GeGLU（act = GELU）在同等参数与计算量下困惑度最好，PaLM、LLaMA 之后成为标配。
直觉：乘法门让每个隐藏单元的输出是输入的二次函数（门 × 值），表达力比"单个逐元素非线性"更强；
SiLU(x) = x·σ(x) 平滑、非单调（x ≈ −1.28 处有最小值 −0.278），负半轴梯度不像 ReLU 那样直接为零。

为什么隐藏维度是 8/3·d
----------------------
普通 FFN 有 2 个 d×4d 矩阵：参数 8d²，每 token 前向 16d² FLOPs。GLU 有 3 个 d×h 矩阵（gate、up、down），
令 3·d·h = 8d² ⇒ h = 8d/3，参数量与计算量和普通 FFN 持平，比较才公平。
Meta 再把 h 向上取整到 multiple_of 的倍数（LLaMA 用 256）：矩阵的维度是 64/128 的倍数时 GPU 的
tensor core tile 才能铺满，张量并行切到 8 张卡时每份也要整除。Llama 2-70B / Llama 3 还乘一个
ffn_dim_multiplier（1.3）把 FFN 加宽，补偿 GQA 省下的注意力参数。

ReLU²（So et al. 2021, Primer）：不加门的 FFN，act(x) = relu(x)²，用在 Primer、Nemotron、modded-nanogpt；
输出天然稀疏（随机初始化时 pre-activation 关于 0 对称，恰好约一半为 0；main 里实测），对推理时的稀疏加速友好。
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from utils.io import is_smoke, output_path, save_figure
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed

# 名字与 transformers 的 config.hidden_act 相同，这样 HF 的 config 可以原样拿来用
GATE_ACTIVATIONS = {
    "silu": F.silu,  # SwiGLU：x·σ(x)
    "gelu": F.gelu,  # GeGLU：x·Φ(x)，Φ 是标准正态 CDF（erf 精确版）
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GeGLU 的 tanh 近似版（Gemma 用）
}


def llama_intermediate_size(hidden_size: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """Meta LLaMA 的 FFN 隐藏维度：8/3·d（× 可选的 multiplier），再向上取整到 multiple_of 的倍数。

    例：d=4096 → int(2·4·4096/3) = 10922 → 向上取整到 256 的倍数 = 11008（LLaMA-7B 的 intermediate_size）。
    """
    if hidden_size <= 0 or multiple_of <= 0:
        raise ValueError(f"hidden_size={hidden_size}、multiple_of={multiple_of} 都必须是正整数")
    hidden = int(2 * (4 * hidden_size) / 3)  # 先取整再乘 multiplier，与 Meta 的代码顺序一致
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def _check_input(x: torch.Tensor, hidden_size: int, name: str) -> None:
    if x.dim() == 0 or x.shape[-1] != hidden_size:
        raise ValueError(f"{name}(hidden_size={hidden_size}) 收到形状 {tuple(x.shape)} 的输入；"
                         f"最后一维必须等于 hidden_size")


class GatedMLP(nn.Module):
    """down_proj(act(gate_proj(x)) ⊙ up_proj(x))。hidden_act="silu" 即 SwiGLU（= LlamaMLP），"gelu" 即 GeGLU。

    权重名 gate_proj / up_proj / down_proj 与 HF 相同：state_dict 可以直接互相加载。
    """

    def __init__(self, hidden_size: int, intermediate_size: int | None = None, hidden_act: str = "silu",
                 bias: bool = False):
        super().__init__()
        if hidden_act not in GATE_ACTIVATIONS:
            raise ValueError(f"未知的 hidden_act={hidden_act!r}；可选：{', '.join(GATE_ACTIVATIONS)}")
        intermediate_size = intermediate_size or llama_intermediate_size(hidden_size)
        if hidden_size <= 0 or intermediate_size <= 0:
            raise ValueError(f"hidden_size={hidden_size}、intermediate_size={intermediate_size} 都必须是正整数")
        self.hidden_size, self.intermediate_size, self.hidden_act = hidden_size, intermediate_size, hidden_act
        self.act_fn = GATE_ACTIVATIONS[hidden_act]
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.hidden_size, "GatedMLP")
        # (…, d) → 两条 (…, h) 支路 → 逐元素相乘 → (…, d)
        # gate 与 up 可以合成一个 d×2h 的矩阵乘（vLLM 的 MergedColumnParallelLinear 就这么做），这里分开写更清楚
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ReLU2MLP(nn.Module):
    """不加门的 FFN：down_proj(relu(up_proj(x))²)，与 transformers 的 NemotronMLP(hidden_act="relu2") 相等。

    只有两个矩阵，所以与 SwiGLU 同参数量时隐藏维度取 4d 而不是 8/3·d。
    """

    def __init__(self, hidden_size: int, intermediate_size: int | None = None, bias: bool = False):
        super().__init__()
        intermediate_size = intermediate_size or 4 * hidden_size
        if hidden_size <= 0 or intermediate_size <= 0:
            raise ValueError(f"hidden_size={hidden_size}、intermediate_size={intermediate_size} 都必须是正整数")
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.hidden_size, "ReLU2MLP")
        return self.down_proj(F.relu(self.up_proj(x)).square())


def activation_figure():
    """左：各激活函数；右：它们的导数（autograd 求）。返回 Figure；图上用英文（默认字体没有中文字形）。"""
    x = torch.linspace(-4, 3, 701, requires_grad=True)
    acts = {"ReLU": F.relu, "GELU": F.gelu, "SiLU (Swish)": F.silu, "ReLU²": lambda t: F.relu(t).square()}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, fn in acts.items():
        y = fn(x)
        (dy,) = torch.autograd.grad(y.sum(), x)
        ax1.plot(x.detach(), y.detach(), label=name)
        ax2.plot(x.detach(), dy, label=name)
    ax1.set(ylim=(-0.6, 3.2), title="activation", xlabel="x (pre-activation)", ylabel="f(x)")
    ax2.set(ylim=(-0.3, 3.2), title="derivative", xlabel="x (pre-activation)", ylabel="df/dx")
    for ax in (ax1, ax2):
        ax.axhline(0, color="gray", lw=0.5)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_activations(path):
    """画 activation_figure 并原子地存到 path，返回 path。"""
    return save_figure(activation_figure(), path, dpi=120)


def main() -> None:
    setup_seed()
    from transformers import LlamaConfig, NemotronConfig
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers.models.nemotron.modeling_nemotron import NemotronMLP

    print("== 8/3·d 取整：与公开模型的 intermediate_size 对照 ==")
    known = [("LLaMA-7B", 4096, 256, None, 11008), ("LLaMA-13B", 5120, 256, None, 13824),
             ("Llama-2-70B", 8192, 4096, 1.3, 28672), ("Llama-3-8B", 4096, 1024, 1.3, 14336)]
    for name, d, mult, ffn_mult, expected in known:
        h = llama_intermediate_size(d, mult, ffn_mult)
        print(f"  {name:12s} d={d:5d} multiple_of={mult:4d} ffn_dim_multiplier={ffn_mult}  →  {h}（{h / d:.3f}·d）")
        assert h == expected

    smoke = is_smoke()
    B, T, d = (2, 5, 96) if smoke else (4, 256, 768)  # 8/3·d 恰为 64 的倍数：参数量正好 8d²
    h = llama_intermediate_size(d, multiple_of=64)
    x = torch.randn(B, T, d, requires_grad=True)
    grad = torch.randn(B, T, d)
    print(f"== 对照 transformers（B={B}, T={T}, d={d}, h={h}；期望差全为 0：同名权重、同一串算子、同一顺序）==")
    for act in GATE_ACTIVATIONS:
        ref = LlamaMLP(LlamaConfig(hidden_size=d, num_attention_heads=1, intermediate_size=h, hidden_act=act))
        ours = GatedMLP(d, h, act)
        ours.load_state_dict(ref.state_dict())  # 同名权重，直接加载
        y, y_ref = ours(x), ref(x)
        gx, gw = torch.autograd.grad((y * grad).sum(), (x, ours.gate_proj.weight))
        gx_ref, gw_ref = torch.autograd.grad((y_ref * grad).sum(), (x, ref.gate_proj.weight))
        errs = [(a - b).abs().max().item() for a, b in [(y, y_ref), (gx, gx_ref), (gw, gw_ref)]]
        print(f"  GatedMLP[{act:17s}] vs LlamaMLP   输出差 {errs[0]:.1e}  dx 差 {errs[1]:.1e}  dW_gate 差 {errs[2]:.1e}")
        assert max(errs) < 1e-5
    ref = NemotronMLP(NemotronConfig(hidden_size=d, num_attention_heads=1, intermediate_size=4 * d, hidden_act="relu2"))
    ours = ReLU2MLP(d, 4 * d)
    ours.load_state_dict(ref.state_dict())
    err = (ours(x) - ref(x)).abs().max().item()
    print(f"  ReLU2MLP vs NemotronMLP(relu2)  输出差 {err:.1e}")
    assert err < 1e-5

    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in
                [("SwiGLU (h=8/3·d)", GatedMLP(d, h)), ("ReLU² (h=4d)", ReLU2MLP(d))]}
    print("== 参数量（与普通 4d FFN 的 8d² 对比）==")
    for name, n in n_params.items():
        print(f"  {name:18s} {n:>10,d}  = {n / d**2:.2f}·d²（普通 FFN：2·d·4d = 8d² = {8 * d * d:,}）")
    with torch.no_grad():
        zero_frac = (F.relu(ours.up_proj(x)) == 0).float().mean().item()  # ours 此时是上面的 ReLU2MLP(d, 4d)
    print(f"  ReLU² 隐层里恰为 0 的比例 {zero_frac:.3f}（pre-activation 关于 0 对称时理论值 0.5；"
          f"SwiGLU 的 silu(·)·up 几乎没有精确的 0）")

    reps = 3 if smoke else 10
    swiglu, llama_mlp = GatedMLP(d, h), LlamaMLP(LlamaConfig(hidden_size=d, num_attention_heads=1, intermediate_size=h))
    llama_mlp.load_state_dict(swiglu.state_dict())
    ours_ms, hf_ms = benchmark_interleaved([lambda: swiglu(x).sum().backward(), lambda: llama_mlp(x).sum().backward()],
                                           warmup=2, reps=reps)
    print(f"== 计时（前向+反向，中位数）：ours {ours_ms:.2f} ms  LlamaMLP {hf_ms:.2f} ms  比值 {ours_ms / hf_ms:.2f}")
    print(timing_note("benchmarks/model_lab_components.py"))
    print(f"激活函数图：{plot_activations(output_path('figures', 'swiglu_activations.png'))}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
