"""GPTQ：用校准激活的 Hessian 把逐列量化的误差推给还没量化的列（Frantar et al., 2022, arXiv:2210.17323）。

RTN 把每个权重各自取最近的网格点，误差互相独立地叠加进输出。可是我们真正在乎的不是 ||W − Q||，而是这一层的输出：

    min_Q  E(Q) = (1/N) · || X Wᵀ − X Qᵀ ||²_F = Σ_行 (w − q) · H/2 · (w − q)ᵀ，    H = 2 XᵀX / N    (in, in)

X (N, in) 是这一层在校准数据上的输入。目标对输出行可分（每行 w 一个独立的二次型），且所有行共用同一个 H——
这两点是 GPTQ 能在几分钟内量化千亿参数模型的根源。

## 1. OBS：固定一个坐标，其余坐标的最优补偿
E 在 w 处的梯度为 0、Hessian 恰好是 H（目标本身就是二次的，不是近似）。把第 j 个坐标从 w_j 改成网格点 q_j，
并允许其余坐标任意移动 δ 来补偿，约束 e_jᵀ δ = q_j − w_j 下最小化 ½ δ H δᵀ（拉格朗日乘子）得：

    δ = −(w_j − q_j) / [H⁻¹]_jj · H⁻¹_{j,:}，        ΔE = (w_j − q_j)² / (2 [H⁻¹]_jj)

（Optimal Brain Surgeon，LeCun/Hassibi 剪枝时代的公式；剪枝是 q_j = 0 的特例。）
固定 j 之后，剩下坐标的问题还是一个二次型，它的逆 Hessian 是 H⁻¹ 去掉 j 的 Schur 补（一步高斯消元）：

    H_F⁻¹ ← H⁻¹ − H⁻¹_{:,j} H⁻¹_{j,:} / [H⁻¹]_jj          （F = 还没量化的坐标）

## 2. OBQ → GPTQ：所有行用同一个顺序
OBQ（Frantar & Alistarh 2022）每行贪心地挑 ΔE 最小的坐标，每行的顺序不同，于是每行都要维护自己的 H_F⁻¹：
O(d_row · d_col³)，对 4096×4096 的层要几小时。GPTQ 观察到：大模型上"按固定顺序逐列量化"几乎一样好，
而顺序固定以后，H_F⁻¹ 的序列只依赖 H、与行无关——只算一遍，所有行共享；每列的补偿是一个秩 1 更新
W[:, j+1:] −= err ⊗ (H_F⁻¹ 的第 j 行)，一次更新所有行。

## 3. 为什么用 H⁻¹ 的上三角 Cholesky 因子（数值稳定的形式）
对称正定矩阵 A = H⁻¹ 的 Cholesky 分解 A = UᵀU（U 上三角）的第一行是 U_{0,:} = A_{0,:} / √A_00，
去掉第 0 行第 0 列后剩下的 U[1:, 1:] 正好是 Schur 补 A − A_{:,0}A_{0,:}/A_00 的 Cholesky 因子。归纳可知：
**第 j 步高斯消元后的 H_F⁻¹ 的第 j 行 = U_jj · U_{j, j:}**，于是 OBS 的补偿写成

    err = (w_j − q_j) / U_jj，       W[:, j:] −= err ⊗ U_{j, j:}         （H_F⁻¹ 的对角元 = U_jj²）

所有需要的行一次性从 U 里读出来，不再逐步做消元。逐步消元在 float32、几千列的矩阵上会累积舍入误差，
H_F⁻¹ 很快不再正定（对角元变小甚至变负，除以它之后权重爆炸）；而 Cholesky 是向后稳定的 LAPACK 例程，只做一次。
再加阻尼 H += λI，λ = percdamp · mean(diag H)（默认 1%）：条件数有了上界，校准 token 少于列数（H 奇异）时也能分解。
输入恒为 0 的"死"通道（H_jj = 0）：把 H_jj 置 1、权重列置 0——这一列对输出没有贡献，怎么量化都无所谓，置 0 让它精确。

## 4. 懒批量更新（lazy batch）为什么快
逐列的秩 1 更新每一步都要读写整个剩余的 W（d_row × 剩余列），计算量与访存量同阶：纯访存受限，GPU 几乎闲着。
但第 j 列在被量化之前，只需要"它之前各列的误差"都加进来即可，不需要更早。于是把列分成 B = 128 一块：
块内照常逐列做秩 1 更新（只碰 d_row × B 的一小块，常驻缓存）；块结束时把整块的误差 Err (d_row, B) 一次性推给后面的列：

    W[:, i2:] −= Err @ U[i1:i2, i2:]                  （一个 GEMM，B 个秩 1 更新合在一起）

浮点运算总量不变，但对 W 的整表读写次数少了 B 倍，从访存受限变成计算受限（论文里 175B 模型 ~4 GPU 小时）。
代数上与"每步都更新所有列"完全相同：测试里 block_size = 128 与 block_size = 整个宽度结果一致（差 < 1e-5）。

## 5. 分组量化：组的 scale 在"量化到这一组的第一列"时才算
GPTQ 的列在量化之前已经被前面各列的误差改过了，所以一组的 (scale, zero) 用**此刻**（已经吸收了补偿的）权重来算，
网格跟着补偿后的权重走（参考实现的做法）。懒批量时，组里超出当前块的列还欠着块内的补偿：这里把它补上再求参数
（W[:, c] − Err[:, :i] @ U[i1:i1+i, c]，精确），因此任意 block_size 与 group_size 的组合都与不分块的结果相同。

## 6. act_order（"desc_act"）与分组：选了静态分组
按 diag(H) 从大到小的顺序量化：激活能量大的列先量化，它们的误差还有大量列可以补偿；能量小的列放最后，
误差几乎没有地方补偿，但它们对输出本来就影响小。实现上把 W 的列与 H 的行列一起置换、量化完再把码换回原顺序。
分组与 act_order 同时用时有两种做法：
- 参考实现的默认（动态组）：组按**置换后的**顺序划分、在组开始时求参数。于是原始第 j 列属于哪一组要另存一个
  g_idx (in,)，同一组的列在原始布局里不连续——反量化 kernel 得逐列按 g_idx 去取 scale（exllama / Marlin 为此专门
  重排输入），存储格式也和普通 int4 不一样。
- **静态组（这里的选择，参考实现的 static_groups=True）**：量化开始之前就用原始权重、按原始的连续分组求好所有组的
  (scale, zero)，act_order 只改变"量化与补偿的顺序"。存储与不用 act_order 时完全一样（连续分组、没有 g_idx），
  同一个 int4 kernel 就能跑。代价是网格不再跟着补偿后的权重走（补偿把权重推出 [lo, hi] 时会被截断），
  实测在 diag(H) 差异大的层上 act_order + 静态组仍然不差于不用 act_order（见测试）。

## 7. 代价
Hessian：N·in² 次乘加（按批累加，float64）；Cholesky 与求逆：O(in³)；逐列量化：O(out · in²)（与一次 (out, in) × (in, in)
的矩阵乘同阶）。内存：H 与 U 各 in² 个 float64（in = 11008 时约 1 GB）。这里全程用 float64：CPU 上只慢约 2 倍，
换来 block_size 不同、或 H = I 时与 RTN 比较时逐位可复现的结果；GPU 上的参考实现用 float32。
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
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

__all__ = ["GPTQLinear", "GPTQResult", "gptq_quantize", "hessian_from_calibration", "toy_activations"]


# ---------------------------------------------------------------------------------------------------
# 1. Hessian：H = 2 XᵀX / N，按批在 float64 里累加
# ---------------------------------------------------------------------------------------------------


def hessian_from_calibration(calib_inputs: Tensor | Iterable[Tensor], in_features: int, *,
                             device: torch.device | str = "cpu") -> tuple[Tensor, int]:
    """返回 (H (in, in) float64, 校准 token 数 N)。calib_inputs：(..., in) 的张量，或一串这样的批。

    先累加 Σ XᵀX、最后除以 N：与参考实现的"滑动平均"代数相同；float64 累加让几十万个 token 的和也不丢精度。
    """
    batches = calibration_batches(calib_inputs, in_features, "GPTQ", torch.device(device))
    h = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
    n = 0
    for x in batches:
        x = x.to(torch.float64)
        h.addmm_(x.T, x)  # += XᵀX
        n += x.shape[0]
    if n == 0:
        raise ValueError("GPTQ 的 calib_inputs 里一个 token 都没有：至少给一批 (N, in_features) 的激活")
    return h.mul_(2.0 / n), n


# ---------------------------------------------------------------------------------------------------
# 2. 核心算法：逐列量化 + 误差补偿 + 懒批量更新（+ 可选 act_order）
# ---------------------------------------------------------------------------------------------------


@dataclass
class GPTQResult:
    codes: Tensor    # (O, I) uint8，原始列顺序
    scales: Tensor   # (O, G) float64
    zeros: Tensor    # (O, G) float64（整数值）
    loss: float      # Σ (w_j − q_j)² / (2 U_jj²)：按 OBS 公式累加的目标增量 = ½·Σ_行 (w − q) H_damp (w − q)ᵀ
    damp: float      # 加到对角线上的 λ


def _inverse_hessian_cholesky(h: Tensor, percdamp: float) -> tuple[Tensor, float]:
    """U = chol(H⁻¹)（上三角），H 先加阻尼 λ = percdamp · mean(diag H)。"""
    damp = percdamp * torch.diagonal(h).mean().item()
    h = h.clone()
    h.diagonal().add_(damp)
    lower, info = torch.linalg.cholesky_ex(h)
    if info.item() != 0:
        raise ValueError(f"GPTQ：加阻尼 λ={damp:.3g} 后的 Hessian 仍不是正定的（Cholesky 在第 {info.item()} 列失败）："
                         "请增大 percdamp（如 0.1），或检查校准激活是否退化")
    h_inv = torch.cholesky_inverse(lower)
    upper, info = torch.linalg.cholesky_ex(h_inv, upper=True)
    if info.item() != 0:
        raise ValueError("GPTQ：H⁻¹ 的 Cholesky 分解失败（数值上不正定）：请增大 percdamp")
    return upper, damp


def gptq_quantize(weight: Tensor, hessian: Tensor, *, bits: int = 4, group_size: int | None = 128,
                  block_size: int = 128, percdamp: float = 0.01, act_order: bool = False) -> GPTQResult:
    """对 weight (O, I) 用 hessian (I, I) 做 GPTQ，返回整数码与每组参数（全程 float64）。"""
    out_features, in_features = weight.shape
    gs = resolve_group_size(in_features, bits, group_size)
    if hessian.shape != (in_features, in_features):
        raise ValueError(f"GPTQ：hessian 形状 {tuple(hessian.shape)} 与权重的 in_features={in_features} 不符")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size={block_size!r} 必须是正整数（默认 128）")
    if not (isinstance(percdamp, (int, float)) and 0 <= percdamp and math.isfinite(percdamp)):
        raise ValueError(f"percdamp={percdamp!r} 必须是有限的非负数（默认 0.01）")
    if not torch.isfinite(hessian).all():
        raise ValueError("GPTQ：hessian 含 NaN / Inf：检查校准激活")

    w = weight.detach().to(torch.float64).clone()
    h = hessian.detach().to(device=w.device, dtype=torch.float64).clone()

    # 死通道：输入恒为 0，这一列对输出没有贡献 → 权重置 0，H_jj 置 1 让 H 可逆
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    n_groups = in_features // gs
    scales = torch.zeros(out_features, n_groups, dtype=torch.float64, device=w.device)
    zeros = torch.zeros_like(scales)
    perm = None
    if act_order:
        # 静态组：在原始顺序、原始权重上先求好所有组的参数（见模块说明 §6）
        s, z = group_qparams(w.reshape(out_features, n_groups, gs), bits)
        scales.copy_(s)
        zeros.copy_(z)
        perm = torch.argsort(torch.diagonal(h), descending=True)
        w = w[:, perm]
        h = h[perm][:, perm]

    u, damp = _inverse_hessian_cholesky(h, percdamp)
    codes = torch.zeros_like(w)
    loss = torch.zeros((), dtype=torch.float64, device=w.device)  # 留在设备上累加：逐列 .item() 在 GPU 上每列同步一次
    group_of = None if perm is None else (perm // gs).tolist()    # act_order：置换后第 k 列属于原始的哪一组
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        w1 = w[:, i1:i2].clone()           # 当前块：块内的补偿立即做
        err1 = torch.zeros_like(w1)        # 块内每列的 (w − q) / U_jj，块结束时一次推给后面的列
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if act_order:
                scale, zero = scales[:, group_of[col]], zeros[:, group_of[col]]
            elif col % gs == 0:
                # 组的第一列：用此刻（已吸收补偿）的权重求这一组的参数
                g_end = min(col + gs, in_features)
                current = w1[:, i:min(i + gs, i2 - i1)]
                if g_end > i2:
                    # 组里超出当前块的列还欠着块内前 i 列的补偿：补上（懒批量与逐列更新精确一致）
                    rest = w[:, i2:g_end] - err1[:, :i] @ u[i1:col, i2:g_end]
                    current = torch.cat([current, rest], dim=1)
                scale, zero = group_qparams(current, bits)
                scales[:, col // gs], zeros[:, col // gs] = scale, zero
            q = quantize_with_qparams(w1[:, i], scale, zero, bits)
            w_hat = scale * (q - zero)
            d = u1[i, i]
            err = (w1[:, i] - w_hat) / d
            loss += 0.5 * err.pow(2).sum()                        # ΔE = (w − q)² / (2 [H_F⁻¹]_jj)
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]        # OBS 补偿（块内，秩 1）
            err1[:, i] = err
            codes[:, col] = q
        w[:, i2:] -= err1 @ u[i1:i2, i2:]                         # 懒批量：整块误差一次推给后面的列

    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    return GPTQResult(codes.to(torch.uint8), scales, zeros, loss.item(), damp)


# ---------------------------------------------------------------------------------------------------
# 3. 层：from_float 在校准数据上跑 GPTQ；存储与 forward 与 int4 weight-only 相同（反量化再 matmul）
# ---------------------------------------------------------------------------------------------------


class GPTQLinear(GroupwiseQuantLinear):
    """GPTQ 量化后的 nn.Linear 替身：qweight / scales / zeros / bias 四个 buffer，forward = 反量化 + F.linear。"""

    scheme: ClassVar[str] = "gptq"

    def __init__(self, in_features: int, out_features: int, bias: bool, *, bits: int = 4,
                 group_size: int | None = 128, block_size: int = 128, percdamp: float = 0.01,
                 act_order: bool = False) -> None:
        super().__init__(in_features, out_features, bias, bits=bits, group_size=group_size)
        self.block_size, self.percdamp, self.act_order = block_size, percdamp, act_order
        self.gptq_loss = math.nan  # from_float 之后 = 按 OBS 公式累加的目标增量（不进 state_dict，只为报告）

    def options(self) -> dict:
        return {**super().options(), "block_size": self.block_size, "percdamp": self.percdamp,
                "act_order": self.act_order}

    @classmethod
    def from_float(cls, linear: nn.Linear, *, calib_inputs: Tensor | Iterable[Tensor] | None = None,
                   min_tokens: int | None = None, **options: Any) -> GPTQLinear:
        """在 calib_inputs（这一层的输入激活，(N, in) 或一串批）上做 GPTQ。

        min_tokens 默认 = in_features：少于列数时 XᵀX 秩亏，没见过的方向只剩阻尼在撑，GPTQ 会对校准集过拟合。
        """
        cls._check_linear(linear, cls.__name__)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, **options)
        h, n = hessian_from_calibration(calib_inputs, linear.in_features, device=linear.weight.device)
        need = linear.in_features if min_tokens is None else min_tokens
        check_token_count(n, need, "GPTQ", f"Hessian 是 {linear.in_features}×{linear.in_features}，"
                                           "token 少于列数时它是奇异的")
        result = gptq_quantize(linear.weight, h, bits=layer.bits, group_size=layer.group_size,
                               block_size=layer.block_size, percdamp=layer.percdamp, act_order=layer.act_order)
        layer = layer.to(linear.weight.device)
        layer._store(result.codes, result.scales, result.zeros, linear.bias)
        layer.gptq_loss = result.loss
        return layer


# ---------------------------------------------------------------------------------------------------
# 4. 演示：toy MLP（512 → 2048 → 1024），RTN vs GPTQ vs GPTQ + act_order 的逐层输出 SQNR
# ---------------------------------------------------------------------------------------------------


def toy_activations(n: int, dim: int, *, generator: torch.Generator, rank: int | None = None,
                    channel_spread: float = 1.0) -> Tensor:
    """像真实激活的合成数据：低秩相关（少数方向占了大部分能量）+ 各向同性噪声 + 通道尺度不均 + 非零均值。

    真实 LLM 的激活协方差高度各向异性（谱快速衰减、少数通道幅度特别大）：GPTQ 正是靠这种结构
    把误差推到"输出看不见"的方向上；各向同性的高斯输入下 H ∝ I，GPTQ 就退化成 RTN。
    channel_spread：各通道尺度 = exp(spread · N(0,1))，>0 时 diag(H) 差异大（act_order 有用武之地）。
    """
    rank = max(1, dim // 8) if rank is None else rank
    latent = torch.randn(n, rank, generator=generator)
    mixing = torch.randn(rank, dim, generator=generator) / math.sqrt(rank)
    decay = torch.arange(1, rank + 1, dtype=torch.float32).pow(-0.5)[:, None]      # 因子的能量按 k^-1 衰减
    x = latent @ (decay * mixing) * 3.0 + 0.1 * torch.randn(n, dim, generator=generator)
    x = x + 0.2 * torch.randn(1, dim, generator=generator)                          # 每通道的均值
    return x * torch.exp(channel_spread * 0.5 * torch.randn(1, dim, generator=generator))


def _rtn_weight(weight: Tensor, bits: int, group_size: int) -> Tensor:
    codes, s, z = rtn_groupwise(weight, bits, group_size)
    return dequantize_groupwise(codes, s, z, group_size)


def _plot(rows: list[dict], title: str, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['layer']}\nint{r['bits']}" for r in rows]
    methods = ["RTN", "GPTQ", "GPTQ+act_order"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        ax.bar([i + k * width for i in range(len(rows))], [r[m] for r in rows], width, label=m)
    ax.set_xticks([i + width for i in range(len(rows))], labels)
    ax.set_xlabel("layer and bit width")
    ax.set_ylabel("output SQNR (dB, held-out tokens)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main() -> None:
    setup_seed(0)
    smoke = is_smoke()
    d_in, d_hidden, d_out = (128, 256, 128) if smoke else (512, 2048, 1024)
    n_batches, batch_tokens = (4, 96) if smoke else (10, 256)
    group_size = 64 if smoke else 128
    gen = torch.Generator().manual_seed(0)
    fc1, fc2 = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out)
    act = nn.GELU()
    # 同一个分布里采校准批与留出批：SQNR 在留出 token 上量，防止"在校准集上过拟合"被算成好成绩
    x_all = toy_activations((n_batches + 2) * batch_tokens, d_in, generator=gen, channel_spread=1.0)
    x_cal, x_test = x_all[: n_batches * batch_tokens], x_all[n_batches * batch_tokens:]
    with torch.no_grad():
        layers = {"fc1": (fc1, x_cal, x_test), "fc2": (fc2, act(fc1(x_cal)), act(fc1(x_test)))}
        rows = []
        print(f"toy MLP {d_in}→{d_hidden}→{d_out}，{n_batches} 批 × {batch_tokens} token 校准，group_size={group_size}")
        print(f"{'层':<5}{'位':>3}{'RTN dB':>9}{'GPTQ dB':>9}{'+act_order':>11}{'GPTQ 秒':>9}")
        for bits in (4, 3):
            for name, (lin, xc, xt) in layers.items():
                ref = lin(xt)
                rtn = nn.functional.linear(xt, _rtn_weight(lin.weight, bits, group_size), lin.bias)
                batches = list(xc.split(batch_tokens))
                t0 = time.perf_counter()
                g = GPTQLinear.from_float(lin, calib_inputs=batches, bits=bits, group_size=group_size)
                seconds = time.perf_counter() - t0
                ga = GPTQLinear.from_float(lin, calib_inputs=batches, bits=bits, group_size=group_size, act_order=True)
                row = {"layer": name, "bits": bits, "RTN": sqnr(ref, rtn), "GPTQ": sqnr(ref, g(xt)),
                       "GPTQ+act_order": sqnr(ref, ga(xt))}
                rows.append(row)
                print(f"{name:<5}{bits:>3}{row['RTN']:>9.2f}{row['GPTQ']:>9.2f}{row['GPTQ+act_order']:>11.2f}"
                      f"{seconds:>9.2f}")
    print("基线是 RTN（同一个网格、逐元素取最近）。默认配置实测：4 位 GPTQ 比 RTN 高 10–11 dB、act_order 再高 1–5 dB，"
          "3 位高 10–11 dB（fc1 的 RTN/GPTQ/act_order = 23.7/35.1/39.8 dB）；SMOKE 配置高 9–13 dB")
    path = output_path("figures", "gptq_vs_rtn.png")
    _plot(rows, f"GPTQ vs RTN, group_size={group_size}, toy MLP {d_in}→{d_hidden}→{d_out}", path)
    print(f"图：{path}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
