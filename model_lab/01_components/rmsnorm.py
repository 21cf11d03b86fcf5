"""RMSNorm：去掉 LayerNorm 的"减均值"，只保留"除以均方根"。

运行：python model_lab/01_components/rmsnorm.py   （或 python -m model_lab.01_components.rmsnorm；SMOKE=1 几秒跑完）

LayerNorm（Ba et al. 2016）对最后一维做：
    y = (x − μ) / sqrt(σ² + ε) · γ + β,    μ = mean(x),  σ² = mean((x − μ)²)
RMSNorm（Zhang & Sennrich 2019）只留缩放：
    y = x / sqrt(mean(x²) + ε) · γ          （无 β，eps 在根号里面）

为什么可以不减均值？
- LayerNorm 的好处来自两种不变性：re-centering（输入整体平移不变）与 re-scaling（输入/权重整体缩放不变）。
  论文的消融显示，稳定训练靠的是 re-scaling；re-centering 几乎没有贡献。
- 在 pre-norm Transformer 里，norm 后面紧跟一个线性层，真需要偏移的话它自己就能学；
  减均值反而把 x 投影到与全 1 向量正交的超平面上，白白丢掉一个自由度。
代价对比：LayerNorm 要两个归约（μ 与 σ²，或一次 Welford）再做减法和加 β；RMSNorm 一个归约、没有 β。
在 GPU 上两者都是访存瓶颈（读 x、写 y 占大头），RMSNorm 省的是算术与寄存器，论文报告快 7%~64%；
更重要的是实现更简单、更好融合（与残差相加、与量化融合），LLaMA 之后几乎所有 LLM 都用它。

精度：bf16/fp16 输入时在 fp32 里算均方根（HF 的 LlamaRMSNorm 也是这样做的）。
- fp16 的最大值是 65504：激活里出现 |x| ≥ 256 的离群值（LLM 里常见；256² = 65536）时 x² 直接溢出成 inf，输出全变 0；
- bf16 范围够大，但只有 8 位有效位（7 位显式尾数 + 隐含的 1，单位舍入 2⁻⁸ ≈ 3.9e-3），
  x²、rsqrt、乘法每一步都多一次这么大的舍入。
顺序也是约定的一部分：Llama 先把归一化结果转回输入 dtype、再乘 γ；Gemma 在 fp32 里乘 (1 + γ) 后才转回。
照抄参考实现的顺序，bf16 下才能逐位相等。
"""

from __future__ import annotations

import torch
from torch import nn

from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed


def _check_last_dim(x: torch.Tensor, hidden_size: int, name: str) -> None:
    if x.dim() == 0 or x.shape[-1] != hidden_size:
        raise ValueError(f"{name}(hidden_size={hidden_size}) 收到最后一维为 "
                         f"{x.shape[-1] if x.dim() else '标量'} 的输入 {tuple(x.shape)}；"
                         f"请让 hidden_size 与输入的最后一维一致")


class RMSNorm(nn.Module):
    """y = γ · x / sqrt(mean(x²) + ε)，在 fp32 里计算；与 transformers 的 LlamaRMSNorm 逐位相等。"""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        if hidden_size <= 0:
            raise ValueError(f"hidden_size={hidden_size} 必须是正整数")
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))  # γ 初始化为 1：一开始就是纯归一化

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(x, self.hidden_size, "RMSNorm")
        input_dtype = x.dtype
        x = x.float()  # (…, d) 升到 fp32 再平方求和
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)  # rsqrt = 1/sqrt，一个算子
        return self.weight * x.to(input_dtype)  # 先转回输入 dtype 再乘 γ（Llama 的约定）

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


class LayerNorm(nn.Module):
    """从零写的 LayerNorm（减均值 + 除标准差 + γ、β），用来和 RMSNorm 对比；与 nn.LayerNorm 相等。

    方差用有偏估计（除以 d 而不是 d−1），ε 加在根号里面——这两点都和 PyTorch 一致。
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(x, self.hidden_size, "LayerNorm")
        mean = x.mean(-1, keepdim=True)  # 第一个归约
        var = (x - mean).pow(2).mean(-1, keepdim=True)  # 第二个归约（有偏方差）
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y + self.bias if self.bias is not None else y


def rms_norm_naive(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """反面教材：直接在输入 dtype 里算。fp32 下没问题，fp16 下大激活会溢出。"""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rms_norm_backward(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor,
                      eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """手推的反向传播，返回 (dL/dx, dL/dγ)；测试里与 autograd 对照。

    记 r = (mean(x²) + ε)^{-1/2}，x̂ = x·r，g = dL/dy ⊙ γ。由 ∂r/∂x_i = −r³·x_i/d：
        dL/dx_i = Σ_j g_j ∂x̂_j/∂x_i = r·g_i − r³·x_i·mean(g ⊙ x) = r · (g_i − x̂_i · mean(g ⊙ x̂))
        dL/dγ   = Σ_{batch} dL/dy ⊙ x̂
    对比 LayerNorm：dx = r·(g − mean(g) − x̂·mean(g ⊙ x̂))，RMSNorm 少了 mean(g) 这一项——
    梯度也不再被投影到与全 1 向量正交的子空间里。
    """
    dtype = torch.promote_types(x.dtype, torch.float32)  # 至少 fp32；fp64 输入保持 fp64
    x32, g_out = x.to(dtype), grad_out.to(dtype)
    r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    x_hat = x32 * r
    g = g_out * weight.to(dtype)
    grad_x = r * (g - x_hat * (g * x_hat).mean(-1, keepdim=True))
    grad_w = (g_out * x_hat).reshape(-1, x.shape[-1]).sum(0)
    return grad_x.to(x.dtype), grad_w.to(weight.dtype)


def main() -> None:
    setup_seed()
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    smoke = is_smoke()
    B, T, d = (2, 7, 64) if smoke else (4, 256, 1024)
    print(f"== RMSNorm 对照 transformers.LlamaRMSNorm（B={B}, T={T}, d={d}）==")
    ours, ref = RMSNorm(d), LlamaRMSNorm(d)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(d))
        ref.weight.copy_(ours.weight)
    x = torch.randn(B, T, d, requires_grad=True)
    grad = torch.randn(B, T, d)
    y, y_ref = ours(x), ref(x)
    gx, gw = torch.autograd.grad((y * grad).sum(), (x, ours.weight))
    gx_ref, gw_ref = torch.autograd.grad((y_ref * grad).sum(), (x, ref.weight))
    gx_hand, gw_hand = rms_norm_backward(x.detach(), ours.weight.detach(), grad)
    print(f"  fp32 输出差 {(y - y_ref).abs().max().item():.1e}  dx 差 {(gx - gx_ref).abs().max().item():.1e}"
          f"  dγ 差 {(gw - gw_ref).abs().max().item():.1e}（期望 0：与 LlamaRMSNorm 同一串算子、同一顺序）")
    print(f"  手推 dx 差 {(gx_hand - gx).abs().max().item():.1e}（期望 ≲ 1e-6：同一个公式换了求和顺序，"
          f"fp32 的 ε = 2⁻²³ ≈ 1.19e-7 乘上 |dx| 的量级；默认配置 9.5e-7，SMOKE 4.8e-7）")
    assert torch.allclose(y, y_ref, atol=1e-6) and torch.allclose(gx, gx_ref, atol=1e-6)
    assert torch.allclose(gx_hand, gx, atol=1e-5) and torch.allclose(gw_hand, gw, rtol=1e-4, atol=1e-3)

    xb = x.detach().to(torch.bfloat16)
    same = torch.equal(ours.to(torch.bfloat16)(xb), ref.to(torch.bfloat16)(xb))
    print(f"  bf16（权重也是 bf16）与 HF 逐位相等：{same}")
    assert same

    print("== 为什么要在 fp32 里算：fp16 输入里有一个 300 的离群值 ==")
    xh = torch.randn(4, d).half()
    xh[:, 0] = 300.0  # 300² = 90000 > fp16 最大值 65504
    w = torch.ones(d, dtype=torch.float16)
    truth = xh.double() * torch.rsqrt(xh.double().pow(2).mean(-1, keepdim=True) + 1e-6)
    naive, upcast = rms_norm_naive(xh, w), RMSNorm(d).half()(xh)

    def rel_err(y: torch.Tensor) -> float:  # 相对于输出量级的最大误差
        return ((y.double() - truth).abs().max() / truth.abs().max()).item()

    fp16_u = torch.finfo(torch.float16).eps / 2  # 单位舍入 2⁻¹¹ ≈ 4.9e-4：把结果存成 fp16 就免不了的误差
    print(f"  naive fp16：x² 溢出为 inf → 输出 {naive[0, :3].tolist()}…  相对误差 {rel_err(naive):.3g}"
          f"（输出全 0 时就是 1：完全错了）")
    print(f"  upcast    ：输出 {[round(v, 4) for v in upcast[0, :3].tolist()]}…  相对误差 {rel_err(upcast):.3g}"
          f"（fp16 的单位舍入 2⁻¹¹ = {fp16_u:.2g} 以内即最好结果；默认配置 2.4e-4，SMOKE 1.9e-4）")
    assert rel_err(upcast) < 1e-3 and rel_err(naive) > 0.5

    reps = 3 if smoke else 10
    x = x.detach().requires_grad_()
    rows = [("RMSNorm (ours)", RMSNorm(d)), ("LlamaRMSNorm (HF)", LlamaRMSNorm(d)),
            ("LayerNorm (ours)", LayerNorm(d)), ("nn.LayerNorm", nn.LayerNorm(d)), ("nn.RMSNorm", nn.RMSNorm(d))]
    print(f"== 计时（前向+反向，五个实现轮流各跑一次，重复 {reps} 轮取中位数）==")
    times = benchmark_interleaved([lambda m=module: m(x).sum().backward() for _, module in rows], warmup=2, reps=reps)
    for (name, _), ms in zip(rows, times):
        print(f"  {name:20s} {ms:8.3f} ms")
    print(timing_note("benchmarks/model_lab_components.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
