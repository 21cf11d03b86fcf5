"""交叉熵内核：一次扫描同时算出 loss 与梯度，以及分块的融合 lm_head + 交叉熵（从不物化完整的 logits）。

运行：python inference_engine/kernels/cross_entropy.py   （SMOKE=1 几秒跑完；没有 GPU 时在 Triton 解释器里跑）

一、为什么 lm_head + 交叉熵是训练里最吃内存的一步
------------------------------------------------
语言模型最后一步：hidden (N, C) 乘 lm_head 的权重 W (V, C) 的转置得到 logits (N, V)，再对每行做交叉熵。
N = B·T 个 token，V 是词表大小——V 比 C 大一个数量级（Llama-2：C = 4096，V = 32000；Llama-3：V = 128256）。
logits 因此是整个网络里最大的单个激活：B = 8、T = 2048、V = 32000 时

    logits：N·V·4 B = 8·2048·32000·4 B ≈ 2.1 GB（fp32），它的梯度 ∂L/∂logits 又是同样的 2.1 GB；

而 PyTorch 的 F.cross_entropy 还要为反向存一份同样大小的 log_softmax。hidden 本身才 N·C·4 B ≈ 0.27 GB。

二、一次扫描算 loss 与梯度（cross_entropy）
------------------------------------------
一行 logits x ∈ R^V、目标 t：ℓ = LSE(x) − x_t，∂ℓ/∂x = softmax(x) − onehot(t)。
- 在线 logsumexp：按 BLOCK_V 个一块扫过词表，维护到目前为止的最大值 m 与 d = Σ exp(x_j − m)；
  遇到新块 m' = max(m, max(块))，d ← d·exp(m − m') + Σ_块 exp(x_j − m')。一遍扫完 LSE = m + log d，
  不需要先求全行最大值（两遍），也不需要把整行放进寄存器（V = 128k 放不下）。
- 第二遍：p_j = exp(x_j − m) / d，梯度 (p_j − [j = t]) / n_valid 直接写回——可以**就地**覆盖 logits 本身。
  既然 loss 的梯度只依赖这一行的 logits，前向时顺手算完，反向就只剩"乘上游梯度（一个标量）"。
  PyTorch 的做法是前向写出并保存 log_softmax（一个 N·V），反向再分配 ∂log_softmax 与 ∂logits（又两个 N·V），
  峰值约 3 个 N·V（基准实测 3.0）；这里前向读 logits 2 遍、写梯度 1 遍，不存 log_softmax：cross_entropy 为了不毁掉
  调用方的 logits 把梯度写进一个新缓冲（峰值 2 个 N·V，实测 2.0），linear_cross_entropy 的 logits 是自己的临时块，
  就地覆盖（1 块）。
- mean 归约除以的是有效 token 数 n_valid（target ≠ ignore_index 的行）；被忽略的行 loss = 0、梯度 = 0。

三、分块的 lm_head + 交叉熵（linear_cross_entropy，Liger-Kernel 的做法）
-----------------------------------------------------------------------
既然梯度在前向就能算出来，就不必让完整的 logits 活到反向：把 N 行切成大小为 chunk 的块，对每块

    logits_c = hidden_c @ Wᵀ                (chunk, V)    ← 唯一的大临时张量
    内核就地把 logits_c 变成 d logits_c，同时写出这一块的 loss
    d hidden_c = d logits_c @ W             (chunk, C)    链式法则：logits = h Wᵀ ⇒ ∂L/∂h = ∂L/∂logits · W
    d W       += d logits_c ᵀ @ hidden_c    (V, C)        ∂L/∂W = Σ_块 (∂L/∂logits_c)ᵀ h_c

然后丢掉 logits_c，处理下一块。反向只把存下的 d hidden、d W 乘上游梯度（训练里它是 1，或梯度累积时的 1/k）。
峰值额外内存 = 一块 logits：chunk·V 个元素，而不是 N·V 个 logits + N·V 个梯度（+ N·V 的 log_softmax）。

默认 chunk 怎么选（default_chunk_size）：让一块 logits 不超过 hidden 本身的大小，
    chunk·V ≤ N·C  ⇒  chunk = 不超过 N·C/V 的最大 2 的幂，
于是"额外的峰值内存"与已经存在的输入同一量级（O(N·C) 而不是 O(N·V)），省下的倍数约 V/C。再设一个下限 64 行：
块太小时矩阵乘的 M 维铺不满 Tensor Core 的 tile、Python 循环次数也变多，64·V·4 B（V = 32000 时 8 MB）无关紧要。
例：N = 16384、C = 4096、V = 32000 ⇒ N·C/V = 2097 ⇒ chunk = 2048，一块 logits 2048·32000·4 B ≈ 262 MB，
对比物化的 2.1 GB logits + 2.1 GB 梯度。

精度：矩阵乘用 hidden 的 dtype（与 nn.Linear 相同），内核在 fp32 里算 softmax；d W 在 fp32 的缓冲里跨块累加
（bf16 里逐块累加会每块舍入一次），最后转回 W 的 dtype——代价是 V·C·4 B 的累加器，仍远小于 logits。

全部被忽略（n_valid = 0）：与 F.cross_entropy 相同，loss = 0/0 = NaN；梯度是有限的 0（按 1/max(n_valid, 1) 缩放、
被忽略的行本来就是 0）。训练器把这样的 loss 乘 0 时，参数梯度保持全 0，不会被 NaN 污染——这正是 PyTorch 的行为。

自上而下：内核 → 启动器（检查 logits/targets，数有效 token）→ cross_entropy 的 autograd 包装 →
default_chunk_size → linear_cross_entropy 的 autograd 包装 → main() 对照 F.cross_entropy。
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from inference_engine.kernels.runtime import INTERPRET, KERNEL_DEVICE, check_tensor, tl, triton
from utils.io import is_smoke
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

__all__ = [
    "CrossEntropyFunction",
    "LinearCrossEntropyFunction",
    "count_valid_targets",
    "cross_entropy",
    "cross_entropy_forward",
    "default_chunk_size",
    "linear_cross_entropy",
]

TARGET_DTYPES = (torch.int64, torch.int32)
MIN_CHUNK = 64  # default_chunk_size 的下限：矩阵乘的 M 维至少铺满一个 Tensor Core tile


# ---------------------------------------------------------------------------------------------------
# 1. 内核：一个 program 处理一行。第一遍在线 logsumexp，第二遍写梯度（可以就地覆盖 logits）
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _cross_entropy_kernel(logits_ptr, grad_ptr, targets_ptr, loss_ptr, stride_logits, stride_grad, V,
                          ignore_index, grad_scale, BLOCK_V: tl.constexpr, COMPUTE_GRAD: tl.constexpr):
    # int64：row·stride 在 N·V > 2^31 时（16k 个 token × 128k 词表）会让 int32 溢出
    row = tl.program_id(0).to(tl.int64)
    logits_row = logits_ptr + row * stride_logits
    grad_row = grad_ptr + row * stride_grad
    target = tl.load(targets_ptr + row).to(tl.int64)

    if target == ignore_index:
        # 被忽略的行：loss 0、梯度 0，不必读 logits（SFT 里 prompt 部分常占一半的行）
        tl.store(loss_ptr + row, 0.0)
        if COMPUTE_GRAD:
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                tl.store(grad_row + cols, tl.zeros([BLOCK_V], dtype=tl.float32).to(grad_ptr.dtype.element_ty),
                         mask=cols < V)
        return

    # 第一遍：在线 logsumexp。m 从 −inf 开始：第一块时 exp(m − m') = 0，d 从 0 正确地开始累加
    m = float("-inf")
    d = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        # 越界位置填 −inf：exp(−inf) = 0，不影响最大值也不影响求和
        x = tl.load(logits_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new

    # ℓ = LSE − x_t = log d − (x_t − m)：先相减再加，避开 m 很大时 m + log d 的舍入误差
    x_t = tl.load(logits_row + target).to(tl.float32)  # 必须在第二遍就地覆盖之前读出来
    tl.store(loss_ptr + row, tl.log(d) - (x_t - m))

    if COMPUTE_GRAD:
        # 第二遍：∂ℓ/∂x_j = p_j − [j = t]，再乘 grad_scale = 1/n_valid（mean 归约）。
        # 每块先读后写、块与块不重叠，所以 grad_ptr == logits_ptr 的就地写是安全的
        inv_d = 1.0 / d
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            mask = cols < V
            x = tl.load(logits_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
            p = tl.exp(x - m) * inv_d
            g = (p - tl.where(cols == target, 1.0, 0.0)) * grad_scale
            tl.store(grad_row + cols, g.to(grad_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------
# 2. 启动器
# ---------------------------------------------------------------------------------------------------


def _block_v(vocab: int) -> int:
    # GPU：4096 个 fp32 / 8 个 warp = 每线程 16 个，寄存器放得下；解释器：块越大循环次数越少（numpy 向量化），取 16384
    return min(triton.next_power_of_2(vocab), 16384 if INTERPRET else 4096)


def count_valid_targets(targets: Tensor, vocab_size: int, ignore_index: int = -100) -> int:
    """检查 targets 的取值并返回有效（≠ ignore_index）的个数。

    越界的目标在内核里会读到别的行/别的内存，给出一个静默的错误 loss——所以在启动前检查（F.cross_entropy 也会报错）。
    GPU 上这是一次同步（.item()），mean 归约本来就要知道 n_valid。
    """
    valid = targets != ignore_index
    bad = valid & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise ValueError(f"target {value} 超出词表范围 [0, {vocab_size})，且不等于 ignore_index={ignore_index}："
                         "检查分词器与 vocab_size 是否一致，不计 loss 的位置请填 ignore_index")
    return int(valid.sum())


def _check_logits_targets(logits: Tensor, targets: Tensor) -> None:
    check_tensor("logits", logits)
    check_tensor("targets", targets, dtypes=TARGET_DTYPES)
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits 的形状 {tuple(logits.shape)} 不对：应为 (..., V)，V ≥ 1")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets 的形状 {tuple(targets.shape)} 应等于 logits 去掉最后一维 {tuple(logits.shape[:-1])}"
                         "（类别维在最后：logits (N, V) 配 targets (N,)，(B, T, V) 配 (B, T)）")


def cross_entropy_forward(logits: Tensor, targets: Tensor, ignore_index: int = -100, *, grad: Tensor | None = None,
                          grad_scale: float = 1.0) -> Tensor:
    """逐行交叉熵：logits (N, V)、targets (N,) -> loss (N,) fp32（被忽略的行为 0）。

    grad 不为 None 时，内核同时把 grad_scale·(softmax − onehot) 写进 grad（(N, V)，被忽略的行写 0）；
    grad 可以就是 logits 本身（就地覆盖，linear_cross_entropy 这样用）。targets 的取值由调用方先用
    count_valid_targets 检查。
    """
    _check_logits_targets(logits, targets)
    if logits.dim() != 2:
        raise ValueError(f"cross_entropy_forward 要二维的 logits (N, V)，收到 {tuple(logits.shape)}：请先 .view(-1, V)")
    if grad is not None:
        check_tensor("grad", grad)
        if grad.shape != logits.shape:
            raise ValueError(f"grad 的形状 {tuple(grad.shape)} 应与 logits {tuple(logits.shape)} 相同")
    n, vocab = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        g = logits if grad is None else grad  # 不算梯度时内核不会写它，随便给一个合法指针
        _cross_entropy_kernel[(n,)](logits, g, targets, loss, logits.stride(0), g.stride(0), vocab, ignore_index,
                                    float(grad_scale), BLOCK_V=_block_v(vocab), COMPUTE_GRAD=grad is not None,
                                    num_warps=8)
    return loss


def _scaled(grad: Tensor | None, grad_output: Tensor) -> Tensor | None:
    """反向：存下的梯度 × 上游梯度（标量）。

    上游梯度几乎总是 1（loss.backward()）：这时直接交出存下的梯度，省掉一份同样大小的拷贝——对 cross_entropy
    那是 N·V 个元素（GPU 上这个判断是一次同步，比搬 N·V 个元素便宜得多）。
    不原地乘：retain_graph 时反向可能再跑一次，存下的梯度必须保持不变。
    """
    if grad is None:
        return None
    if bool(grad_output == 1):
        return grad
    return grad * grad_output


def _needs_grad(t: Tensor) -> bool:
    # 在 autograd.Function.forward 之外判断：forward 里梯度模式已关，而 ctx.needs_input_grad 在 no_grad 下也会是 True
    return torch.is_grad_enabled() and t.requires_grad


# ---------------------------------------------------------------------------------------------------
# 3. cross_entropy 的 autograd 包装：前向就算好梯度，反向只乘上游梯度
# ---------------------------------------------------------------------------------------------------


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, ignore_index: int, compute_grad: bool) -> Tensor:
        n_valid = count_valid_targets(targets, logits.shape[-1], ignore_index)
        # 梯度写进一个新缓冲而不是覆盖 logits：调用方的 logits 可能还有别的用处（例如打印、采样）。
        # 想省掉这 N·V 的，用 linear_cross_entropy——它的 logits 是自己的临时块，可以就地覆盖。
        grad = torch.empty_like(logits) if compute_grad else None
        rows = cross_entropy_forward(logits, targets, ignore_index, grad=grad, grad_scale=1.0 / max(n_valid, 1))
        ctx.save_for_backward(grad)
        return rows.sum() / n_valid  # 全部忽略时是张量的 0/0 = NaN，与 F.cross_entropy 相同

    @staticmethod
    @torch.autograd.function.once_differentiable  # 梯度是前向算好的常量：没有二阶导，明确报错
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return _scaled(grad, grad_output), None, None, None


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """非忽略 token 上的平均交叉熵（fp32 标量），等于 F.cross_entropy(logits.float().view(-1, V), targets.view(-1))。

    logits (..., V)（fp32/fp16/bf16，连续），targets (...)（int64/int32）——类别维在最后，与语言模型的 (B, T, V) 一致
    （注意 F.cross_entropy 的三维输入是 (B, V, T)）。梯度 dtype 与 logits 相同。
    """
    _check_logits_targets(logits, targets)
    vocab = logits.shape[-1]
    return CrossEntropyFunction.apply(logits.view(-1, vocab), targets.view(-1), ignore_index, _needs_grad(logits))


# ---------------------------------------------------------------------------------------------------
# 4. 分块的融合 lm_head + 交叉熵
# ---------------------------------------------------------------------------------------------------


def default_chunk_size(n_rows: int, hidden_size: int, vocab_size: int) -> int:
    """一块多少行：不超过 N·C/V 的最大 2 的幂（一块 logits ≤ hidden 的大小），下限 64 行，上限 N。推导见模块说明。"""
    rows = max(1, n_rows * hidden_size // max(vocab_size, 1))
    chunk = 1 << (rows.bit_length() - 1)  # 不超过 rows 的最大 2 的幂
    return max(1, min(n_rows, max(chunk, MIN_CHUNK)))


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, chunk_size: int,
                grad_hidden_needed: bool, grad_weight_needed: bool) -> Tensor:
        n = hidden.shape[0]
        n_valid = count_valid_targets(targets, weight.shape[0], ignore_index)
        compute_grad = grad_hidden_needed or grad_weight_needed
        grad_hidden = torch.empty_like(hidden) if grad_hidden_needed else None
        # d W 的累加器用 fp32：低精度里逐块累加会每块舍入一次
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grad_weight_needed else None
        loss_rows = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h_c = hidden[start:end]                                   # (n_c, C)，连续的视图
            logits_c = h_c @ weight.t()                               # (n_c, V)：唯一的大临时张量
            loss_rows[start:end] = cross_entropy_forward(
                logits_c, targets[start:end], ignore_index, grad=logits_c if compute_grad else None,
                grad_scale=1.0 / max(n_valid, 1))                     # 此后 logits_c 里是 d logits_c
            if grad_hidden is not None:
                torch.mm(logits_c, weight, out=grad_hidden[start:end])  # d h_c = d logits_c @ W
            if grad_weight is not None:
                if logits_c.dtype == torch.float32:
                    grad_weight.addmm_(logits_c.t(), h_c)             # d W += d logits_cᵀ @ h_c
                else:
                    grad_weight += (logits_c.t() @ h_c).float()       # 低精度矩阵乘（内部 fp32 累加），再进 fp32 累加器
            del logits_c                                              # 下一块分配前释放：峰值只有一块
        ctx.save_for_backward(grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype))
        return loss_rows.sum() / n_valid                              # 全部忽略时 0/0 = NaN，与 F.cross_entropy 相同

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        # 上游梯度是标量（训练里通常是 1，梯度累积时是 1/k）：反向至多两次按元素乘，不再碰 (N, V)
        return _scaled(grad_hidden, grad_output), _scaled(grad_weight, grad_output), None, None, None, None, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100,
                         chunk_size: int | None = None) -> Tensor:
    """融合的 lm_head + 交叉熵：等于 F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index)，
    但按 chunk_size 行一块计算，完整的 (N, V) logits 从不出现。

    hidden (N, C) 或 (B, T, C)，weight (V, C)（lm_head.weight，无偏置），两者同 dtype、连续；
    targets 的形状 = hidden 去掉最后一维（int64/int32）。返回 fp32 标量（非忽略 token 上的平均）。
    梯度在前向里就算好（需要时才算：hidden/weight 不需要梯度、或在 no_grad 下，就不分配也不计算）。
    chunk_size=None 用 default_chunk_size(N, C, V)。
    """
    check_tensor("hidden", hidden)
    check_tensor("weight", weight, ndim=2)
    check_tensor("targets", targets, dtypes=TARGET_DTYPES)
    if hidden.dim() not in (2, 3):
        raise ValueError(f"hidden 应为 (N, C) 或 (B, T, C)，收到形状 {tuple(hidden.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden 的最后一维 {hidden.shape[-1]} 与 weight (V, C) 的 C = {weight.shape[1]} 不一致"
                         "（weight 应是 lm_head.weight，形状 (vocab_size, hidden_size)）")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden 是 {hidden.dtype}、weight 是 {weight.dtype}：请先转成同一个 dtype")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets 的形状 {tuple(targets.shape)} 应等于 hidden 去掉最后一维 {tuple(hidden.shape[:-1])}")
    if weight.shape[0] == 0:
        raise ValueError("weight 的词表维 V = 0：lm_head 至少要有一个输出")
    h2 = hidden.view(-1, hidden.shape[-1])
    n = h2.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(n, weight.shape[1], weight.shape[0])
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} 必须是正整数（或 None 用默认值）")
    return LinearCrossEntropyFunction.apply(h2, weight, targets.reshape(-1), ignore_index, chunk_size,
                                            _needs_grad(hidden), _needs_grad(weight))


# ---------------------------------------------------------------------------------------------------
# 5. 演示：与 F.cross_entropy 对照，并算出物化 logits 与一块 logits 的内存
# ---------------------------------------------------------------------------------------------------


def _max_err(a: Tensor, b: Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _check(name: str, err: float, tol: float) -> None:
    print(f"  {name:<34} 最大误差 {err:.2e}（容差 {tol:.0e}）")
    if not err <= tol:
        raise AssertionError(f"{name} 与 PyTorch 参考相差 {err:.2e} > {tol:g}")


def main() -> None:
    setup_seed(0)
    smoke = is_smoke()
    where = "Triton 解释器（CPU）" if INTERPRET else f"GPU {torch.cuda.get_device_name(0)}"
    print(f"交叉熵内核，运行在 {where}")

    # (a) cross_entropy：词表故意不是 2 的幂（最后一块靠掩码），四分之一的行被忽略
    n, vocab = (6, 1000) if smoke else (64, 50257)
    logits = (torch.randn(n, vocab, device=KERNEL_DEVICE) * 3).requires_grad_(True)
    targets = torch.randint(0, vocab, (n,), device=KERNEL_DEVICE)
    targets[::4] = -100
    loss = cross_entropy(logits, targets)
    loss.backward()
    ours_grad, logits.grad = logits.grad, None
    ref = F.cross_entropy(logits, targets, ignore_index=-100)
    ref.backward()
    print(f"(a) cross_entropy：N = {n}，V = {vocab}，{int((targets != -100).sum())} 行有效")
    _check("loss", abs(loss.item() - ref.item()), 1e-5)
    _check("∂logits", _max_err(ours_grad, logits.grad), 1e-4)

    # (b) linear_cross_entropy：分块，形状 (B, T, C)
    b, t, c, vocab = (2, 8, 16, 1000) if smoke else (4, 128, 64, 32000)
    hidden = torch.randn(b, t, c, device=KERNEL_DEVICE, requires_grad=True)
    weight = (torch.randn(vocab, c, device=KERNEL_DEVICE) / c**0.5).requires_grad_(True)
    targets = torch.randint(0, vocab, (b, t), device=KERNEL_DEVICE)
    targets[:, -1] = -100
    # SMOKE 的 16 行用 7 行一块（最后一块不满），否则用默认值
    chunk = 7 if smoke else default_chunk_size(b * t, c, vocab)
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    ref = F.cross_entropy((hidden @ weight.T).float().view(-1, vocab), targets.view(-1), ignore_index=-100)
    rh, rw = torch.autograd.grad(ref, (hidden, weight))
    print(f"(b) linear_cross_entropy：N = {b * t}，C = {c}，V = {vocab}，chunk = {chunk} 行")
    _check("loss", abs(loss.item() - ref.item()), 1e-5)
    _check("∂hidden", _max_err(gh, rh), 1e-4)
    _check("∂weight", _max_err(gw, rw), 1e-4)

    print("内存（fp32，B = 8，T = 2048，C = 4096，V = 32000，N = 16384）：")
    n, c, vocab = 8 * 2048, 4096, 32000
    chunk = default_chunk_size(n, c, vocab)
    full = n * vocab * 4
    print(f"  物化：logits {full / 1e9:.2f} GB + ∂logits {full / 1e9:.2f} GB（PyTorch 还为反向存 log_softmax，再加 "
          f"{full / 1e9:.2f} GB）")
    print(f"  分块：chunk = {chunk} 行，一块 logits {chunk * vocab * 4 / 1e9:.3f} GB（就地变成梯度），"
          f"hidden 本身 {n * c * 4 / 1e9:.3f} GB —— 峰值额外内存约为物化时的 {chunk / n / 2:.3f}×")
    print("  实测的 CPU 峰值内存见 benchmarks/kernels_cross_entropy_memory.py")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
