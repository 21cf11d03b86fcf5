"""AWQ：按激活幅度给输入通道做缩放、再做 RTN（Lin et al., 2023, "Activation-aware Weight Quantization", arXiv:2306.00978）。

## 1. 不是所有权重都一样重要
一个输出 y = Σ_j w_j x_j。权重量化把 w_j 换成 Q(w_j) = Δ · round(w_j / Δ)（Δ 是这一组的步长），误差
    Q(w_j) x_j − w_j x_j = Δ · r_j · x_j，       r_j = round(w_j/Δ) − w_j/Δ ∈ [−½, ½]，E|r_j| ≈ ¼
所以**第 j 个权重的误差对输出的贡献正比于 |x_j|**：少数激活幅度大的输入通道（LLM 里约 1%）上的权重最要紧，
与权重本身大不大关系不大。AWQ 论文的实验：把按激活幅度挑出来的 1% 通道留在 fp16、其余 int3，OPT-6.7B 的困惑度
几乎回到 fp16；按权重幅度挑 1% 则几乎没用。可混合精度对硬件很不友好（同一个矩阵里夹着不规则的 fp16 列）。

## 2. 不用混合精度也能保护：先放大，再量化
对第 j 个输入通道乘 s > 1、再把输入除以 s，数学上不变：y = Σ_j (w_j s)(x_j / s)。量化之后：
    Q(w_j s) · x_j / s − w_j x_j = Δ' · r_j · x_j / s
只要 w_j s 没有成为组里的新最大值，这一组的步长 Δ' = Δ 不变（步长由组的 max/min 决定），于是这个通道的误差
**缩小为 1/s**——相当于给它多了 log2(s) 位，而存储仍是整齐的 int4。
但 s 太大时 w_j s 会把组的最大值撑大，Δ' 变大，组里其余（不重要的）通道的误差都跟着变大。所以要折中：
    s = s_x^α / √(max · min)，    s_x = mean_t |X_tj|（逐通道的平均激活幅度），α ∈ {0, 1/20, …, 19/20}
在校准数据上直接量输出误差 L(α) = || X Wᵀ − (X / s) · Q(W · diag(s))ᵀ ||²，取最小的 α。
α = 0 时 s ≡ 1，就是普通 RTN（测试里逐位相等）；网格里包含 α = 0，所以在校准 token 上 AWQ 永远不差于 RTN。
除以 √(max·min) 只是把 s 居中到 1 附近：min/max 网格是正齐次的，Q(c·W) = c·Q(W)，整体乘常数不改变结果。
与 GPTQ 的区别：AWQ 不做反向、不拟合校准集的 Hessian，只用一个逐通道统计量和一维搜索，不容易对校准集过拟合；
两者也可以叠加（先 AWQ 缩放，再 GPTQ）。

## 3. 1/s 放在哪里
真正的 AWQ 把 1/s 折进**上一个算子**，运行时零开销：q/k/v_proj 的输入来自 RMSNorm，令 γ ← γ / s（三个投影共用一个 s，
在注意力块的输出上一起搜）；down_proj 的输入是 act(gate) ⊙ up，令 up_proj 的输出行 ← / s；o_proj 的输入来自 v_proj，
令 v_proj 的输出行 ← / s。这里为了让每一层自成一体、可以单独替换和保存，把 s 留在层里：forward 先算 x / s
（每次调用多一个逐元素除法），apply.py 之后可以把它折进前一层。

## 4. 权重截断（可选，参考实现默认开启）
组里的一个离群权重决定了整组的步长。把组的范围截到 [−r·max|w|, r·max|w|]（r ∈ {1, 0.95, …, 0.55}）：
被截断的那个权重误差变大，组里其余权重的步长变小。对每个 (输出行, 组) 各自选 r，使这一组对输出的贡献误差
mean_t (X_g · (w_g − Q(clip(w_g))))² 最小（在缩放之后的权重与输入上搜）。
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference_engine.quantization._groupwise import (
    GroupwiseQuantLinear,
    calibration_batches,
    check_token_count,
    dequantize_groupwise,
    group_qparams,
    quantize_with_qparams,
    resolve_group_size,
    rtn_groupwise,
)
from inference_engine.quantization.basics import sqnr
from utils.io import is_smoke, output_path, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

__all__ = ["AWQLinear", "AWQSearch", "awq_search_clip", "awq_search_scale", "fake_quantize"]


def _subsample(x: Tensor, max_tokens: int) -> Tensor:
    """等间隔取至多 max_tokens 个 token（与参考实现的 x[::N // n] 相同思路）：搜索时的误差只需一个无偏的样本。"""
    if x.shape[0] <= max_tokens:
        return x
    return x[:: math.ceil(x.shape[0] / max_tokens)]


def fake_quantize(weight: Tensor, bits: int, group_size: int, max_val: Tensor | None = None) -> Tensor:
    """逐组 RTN 之后再反量化（float64）：w (O, I) -> ŵ (O, I)。max_val (O, G)：先把每组截到 [−max_val, max_val]。"""
    out_features, in_features = weight.shape
    wg = weight.to(torch.float64).reshape(out_features, in_features // group_size, group_size)
    if max_val is not None:
        m = max_val.to(torch.float64)[..., None]
        wg = torch.maximum(torch.minimum(wg, m), -m)
    scale, zero = group_qparams(wg, bits)
    q = quantize_with_qparams(wg, scale[..., None], zero[..., None], bits)
    return (scale[..., None] * (q - zero[..., None])).reshape(out_features, in_features)


# ---------------------------------------------------------------------------------------------------
# 1. 缩放搜索：s = s_x^α（归一化），α 在 [0, 1) 的 n_grid 个点上取输出误差最小者
# ---------------------------------------------------------------------------------------------------


@dataclass
class AWQSearch:
    scale: Tensor          # (I,) float32，最优的 s
    alpha: float           # 最优的 α
    alphas: list[float]    # 搜过的 α
    losses: list[float]    # 每个 α 的输出均方误差（在搜索用的 token 上）


def awq_search_scale(weight: Tensor, x: Tensor, *, bits: int = 4, group_size: int | None = 128, n_grid: int = 20,
                     alpha: float | None = None, max_tokens: int = 512) -> AWQSearch:
    """weight (O, I)、x (N, I)（这一层的输入）-> 最优的逐输入通道缩放。alpha 给定时只试这一个值。"""
    in_features = weight.shape[1]
    gs = resolve_group_size(in_features, bits, group_size)
    # s_x = mean|X|：在全部校准 token 上统计（float64 累加）
    s_x = x.to(torch.float64).abs().mean(dim=0)
    xs = _subsample(x, max_tokens).to(torch.float32)
    w = weight.detach().to(torch.float32)
    y_ref = xs @ w.T
    alphas = [i / n_grid for i in range(n_grid)] if alpha is None else [float(alpha)]
    losses, best = [], (math.inf, None, None)
    for a in alphas:
        s = s_x.pow(a).clamp(min=1e-4)
        s = (s / (s.max() * s.min()).sqrt()).to(torch.float32)
        # 反量化后的等效权重 Q(W·s) / s；(X / s) Q(W s)ᵀ = X (Q(W s) / s)ᵀ
        w_eff = (fake_quantize(w * s, bits, gs) / s).to(torch.float32)
        loss = (y_ref - xs @ w_eff.T).pow(2).mean().item()
        losses.append(loss)
        if loss < best[0]:  # 严格小于：并列时保留较小的 α（α = 0 即 RTN 在最前面）
            best = (loss, a, s)
    return AWQSearch(scale=best[2], alpha=best[1], alphas=alphas, losses=losses)


# ---------------------------------------------------------------------------------------------------
# 2. 截断搜索：每个 (输出行, 组) 的最大幅度缩到 r · max|w|，r ∈ {1, 1 − 1/n_grid, …}，取组输出误差最小者
# ---------------------------------------------------------------------------------------------------


def awq_search_clip(weight: Tensor, x: Tensor, *, bits: int = 4, group_size: int | None = 128, n_grid: int = 20,
                    max_shrink: float = 0.5, max_tokens: int = 512, rows_per_chunk: int = 256) -> Tensor:
    """weight (O, I) 与 x (N, I)（都已经过缩放）-> 每组的截断阈值 max_val (O, G)。"""
    out_features, in_features = weight.shape
    gs = resolve_group_size(in_features, bits, group_size)
    n_groups = in_features // gs
    xg = _subsample(x, max_tokens).to(torch.float32).reshape(-1, n_groups, gs)      # (T, G, gs)
    ratios = [1 - i / n_grid for i in range(int(max_shrink * n_grid))]
    best_all = []
    for r0 in range(0, out_features, rows_per_chunk):                                # 分块：误差张量 (rows, T, G)
        w = weight[r0:r0 + rows_per_chunk].detach().to(torch.float32)
        wg = w.reshape(w.shape[0], n_groups, gs)
        org_max = wg.abs().amax(dim=-1)                                              # (rows, G)
        best_err = torch.full_like(org_max, math.inf)
        best_max = org_max.clone()
        for r in ratios:
            max_val = org_max * r
            dw = wg - fake_quantize(w, bits, gs, max_val).to(torch.float32).reshape_as(wg)
            # 每组对每个 token 输出的误差贡献：Σ_k x[t, g, k] · Δw[o, g, k]
            err = torch.einsum("tgk,ogk->otg", xg, dw).pow(2).mean(dim=1)             # (rows, G)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, max_val, best_max)
        best_all.append(best_max)
    return torch.cat(best_all, dim=0)


# ---------------------------------------------------------------------------------------------------
# 3. 层：存 Q(W·s) 的码、每组参数与 s；forward = (x / s) @ 反量化(Q(W s))ᵀ + b
# ---------------------------------------------------------------------------------------------------


class AWQLinear(GroupwiseQuantLinear):
    """AWQ 量化后的 nn.Linear 替身：在 GroupwiseQuantLinear 的 buffers 之外多一个 input_scale (I,)。"""

    scheme: ClassVar[str] = "awq"

    def __init__(self, in_features: int, out_features: int, bias: bool, *, bits: int = 4,
                 group_size: int | None = 128, alpha: float | None = None, n_grid: int = 20, clip: bool = True,
                 max_tokens: int = 512) -> None:
        super().__init__(in_features, out_features, bias, bits=bits, group_size=group_size)
        if alpha is not None and not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
            raise ValueError(f"alpha={alpha!r} 必须在 [0, 1] 里（None = 在网格上搜索）")
        if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
            raise ValueError(f"n_grid={n_grid!r} 必须是正整数（默认 20）")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens!r} 必须是正整数（默认 512）")
        self.alpha, self.n_grid, self.clip, self.max_tokens = alpha, n_grid, bool(clip), max_tokens
        self.register_buffer("input_scale", torch.ones(self.in_features, dtype=torch.float32))
        self.search: AWQSearch | None = None  # from_float 之后：搜索的 α 与误差曲线（不进 state_dict，只为报告）

    def options(self) -> dict:
        return {**super().options(), "alpha": self.alpha, "n_grid": self.n_grid, "clip": self.clip,
                "max_tokens": self.max_tokens}

    @classmethod
    def from_float(cls, linear: nn.Linear, *, calib_inputs: Tensor | Iterable[Tensor] | None = None,
                   min_tokens: int = 64, **options: Any) -> AWQLinear:
        """在 calib_inputs（这一层的输入激活）上搜索缩放（与可选的截断），再逐组 RTN。

        min_tokens 默认 64：mean|X| 与搜索误差都是样本统计量，太少的 token 会让 α 的选择由噪声决定。
        """
        cls._check_linear(linear, cls.__name__)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, **options)
        device = linear.weight.device
        x = torch.cat(calibration_batches(calib_inputs, linear.in_features, "AWQ", device))
        check_token_count(x.shape[0], min_tokens, "AWQ", "逐通道的 mean|X| 与搜索用的输出误差需要足够的样本")
        w = linear.weight.detach().to(torch.float32)
        search = awq_search_scale(w, x, bits=layer.bits, group_size=layer.group_size, n_grid=layer.n_grid,
                                  alpha=layer.alpha, max_tokens=layer.max_tokens)
        w_scaled = w.to(torch.float64) * search.scale.to(torch.float64)
        max_val = None
        if layer.clip:
            max_val = awq_search_clip(w_scaled, x.to(torch.float32) / search.scale, bits=layer.bits,
                                      group_size=layer.group_size, max_tokens=layer.max_tokens)
            m = max_val.to(torch.float64).repeat_interleave(layer.group_size, dim=1)
            w_scaled = torch.maximum(torch.minimum(w_scaled, m), -m)
        codes, scales, zeros = rtn_groupwise(w_scaled, layer.bits, layer.group_size)
        layer = layer.to(device)
        layer._store(codes, scales, zeros, linear.bias)
        layer.input_scale.copy_(search.scale)
        layer.search = search
        return layer

    def dequantize(self) -> Tensor:
        """等效的 (out, in) 浮点权重 Q(W·s) · diag(1/s)。"""
        return super().dequantize() / self.input_scale

    def forward(self, x: Tensor) -> Tensor:
        # 真正的 AWQ 把 1/s 折进上一层（RMSNorm 的 γ 或上一个 Linear 的输出行），这里留在层里：一次逐元素除法
        x = x / self.input_scale.to(x.dtype)
        w = dequantize_groupwise(self.codes(), self.scales, self.zeros, self.group_size).to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)


# ---------------------------------------------------------------------------------------------------
# 4. 演示：10% 的输入通道激活大 10 倍的层上，AWQ vs RTN；α 曲线画成图
# ---------------------------------------------------------------------------------------------------


def salient_activations(n: int, dim: int, *, generator: torch.Generator, frac: float = 0.1,
                        factor: float = 10.0) -> tuple[Tensor, Tensor]:
    """高斯激活，随机挑 frac 的通道放大 factor 倍（LLM 里的"离群通道"）。返回 (x (n, dim), 被放大的通道下标)。"""
    x = torch.randn(n, dim, generator=generator)
    salient = torch.randperm(dim, generator=generator)[: max(1, int(frac * dim))]
    x[:, salient] *= factor
    return x, salient


def _plot(search: AWQSearch, rtn_loss: float, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(search.alphas, search.losses, marker="o", label="AWQ: loss(α)")
    ax.axhline(rtn_loss, color="gray", linestyle="--", label="RTN (α = 0, no clip)")
    ax.axvline(search.alpha, color="tab:red", linestyle=":", label=f"best α = {search.alpha:.2f}")
    ax.set(xlabel="α  (s = mean|X|^α)", ylabel="output MSE on calibration tokens", yscale="log",
           title="AWQ scale search, 10% channels with 10× activations")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main() -> None:
    setup_seed(0)
    smoke = is_smoke()
    d_in, d_out, n_cal, n_test = (256, 256, 512, 256) if smoke else (1024, 1024, 2048, 1024)
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(d_in, d_out)
    x_all, salient = salient_activations(n_cal + n_test, d_in, generator=gen)
    x_cal, x_test = x_all[:n_cal], x_all[n_cal:]
    print(f"层 {d_in}→{d_out}，{len(salient)} 个输入通道（10%）的激活大 10 倍；{n_cal} 个校准 token，{n_test} 个留出 token")
    print(f"{'方法':<22}{'位':>3}{'输出 SQNR dB':>14}{'相对 RTN 误差':>14}{'秒':>7}")
    with torch.no_grad():
        ref = linear(x_test)
        for bits in (4, 3):
            rtn = AWQLinear.from_float(linear, calib_inputs=x_cal, bits=bits, alpha=0.0, clip=False)
            err_rtn = (ref - rtn(x_test)).pow(2).mean().item()
            for label, opts in [("RTN (α = 0)", {"alpha": 0.0, "clip": False}),
                                ("AWQ scale", {"clip": False}), ("AWQ scale + clip", {})]:
                t0 = time.perf_counter()
                layer = AWQLinear.from_float(linear, calib_inputs=x_cal, bits=bits, **opts)
                seconds = time.perf_counter() - t0
                out = layer(x_test)
                rel = (ref - out).pow(2).mean().item() / err_rtn
                alpha = f" α={layer.search.alpha:.2f}" if layer.alpha is None else ""
                print(f"{label + alpha:<22}{bits:>3}{sqnr(ref, out):>14.2f}{rel:>14.3f}{seconds:>7.2f}")
            if bits == 4:
                searched = AWQLinear.from_float(linear, calib_inputs=x_cal, bits=bits, clip=False).search
    print("基线是 RTN（α = 0、不截断）；在这个 10% 通道激活大 10 倍的层上，默认配置实测 AWQ 缩放 + 截断把 4 位的输出误差"
          "降到 RTN 的 0.80（+1.0 dB）、3 位 0.80（+1.0 dB）；SMOKE 配置 0.79 / 0.78")
    path = output_path("figures", "awq_alpha_search.png")
    _plot(searched, searched.losses[0], path)
    print(f"图：{path}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
