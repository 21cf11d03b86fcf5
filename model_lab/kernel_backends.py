"""内核后端注册表：RMSNorm、RoPE、SwiGLU、lm_head + 交叉熵这几个算子按名字挑实现，更快的内核往这里注册。

与 attention_backends.py 是同一个思路、同一个方向：模型（model_lab）从不 import 内核（inference_engine/kernels），
内核包在导入时把自己**注册**进来；模型前向时按 `config.kernels` 这个名字查表。于是

    import inference_engine.backends                     # 注册 "triton"（以及注意力后端 "triton_flash"）
    model = Llama(LlamaConfig(..., kernels="triton", attn_implementation="triton_flash"))

就让同一个 Llama 跑在手写内核上，权重、checkpoint、训练循环都不用改；`kernels="torch"`（默认）是 PyTorch 写法。

每个算子的接口（语义必须与模型里的 PyTorch 写法逐项相同，测试按这个对照）：
- rms_norm(x, weight, eps) -> y：y = weight * (x.float() * rsqrt(mean(x.float()²) + eps)).to(x.dtype)，
  输出 dtype = torch.result_type(weight, x)（与 llama.RMSNorm 相同）。
- apply_rope(x, rope) -> y：x (B, T, H, D) 相邻配对布局（见 llama.interleave_halves），可以是非连续的视图；
  rope 是 llama.rope_table 的 (B 或 1, T, 1, D/2, 2) fp32 表；输出 (B, T, H, D)，x 的 dtype。
- swiglu(gate, up) -> silu(gate) * up：MLP 的激活与逐元素乘融合成一个内核。
- linear_cross_entropy(hidden, weight, targets, ignore_index=-100) -> loss：hidden (N, C)，weight (V, C)，
  targets (N,)；返回非忽略 token 上的平均交叉熵（fp32 标量），等于 F.cross_entropy((hidden @ weight.T).float(), ...)，
  但从不物化 (N, V) 的 logits——这正是它省内存的地方，所以用它时训练前向不返回 logits（见 Llama.forward）。

某个算子是 None 就用模型自己的 PyTorch 写法：一个后端可以只加速其中几个算子。
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

__all__ = ["KERNEL_BACKENDS", "KERNEL_OPS", "KernelBackend", "get_kernel_backend", "register_kernel_backend"]

KernelFn = Callable[..., object]


@dataclass(frozen=True)
class KernelBackend:
    """一组算子实现；None = 用模型里的 PyTorch 写法。各算子的接口见模块说明。"""

    name: str
    rms_norm: KernelFn | None = None
    apply_rope: KernelFn | None = None
    swiglu: KernelFn | None = None
    linear_cross_entropy: KernelFn | None = None


KERNEL_OPS: tuple[str, ...] = tuple(f.name for f in fields(KernelBackend) if f.name != "name")

KERNEL_BACKENDS: dict[str, KernelBackend] = {"torch": KernelBackend("torch")}


def register_kernel_backend(name: str, **ops: KernelFn | None) -> KernelBackend:
    """注册（或覆盖）一组算子实现：register_kernel_backend("triton", rms_norm=..., swiglu=...)。

    算子名必须是 KERNEL_OPS 之一——拼错的名字直接报错，否则它会被悄悄忽略、模型照旧跑 PyTorch 写法，
    而你以为在测自己的内核。"torch" 是参照实现，不能被覆盖。
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"内核后端名 {name!r} 必须是非空字符串")
    if name == "torch":
        raise ValueError("kernels='torch' 是 PyTorch 参照实现，不能被覆盖；给你的实现起个别的名字")
    unknown = sorted(set(ops) - set(KERNEL_OPS))
    if unknown:
        raise ValueError(f"内核后端 {name!r} 的算子 {unknown} 未知；可注册的算子：{list(KERNEL_OPS)}")
    for op, fn in ops.items():
        if fn is not None and not callable(fn):
            raise ValueError(f"内核后端 {name!r} 的 {op} 必须是可调用对象或 None，收到 {type(fn).__name__}")
    backend = KernelBackend(name, **ops)
    KERNEL_BACKENDS[name] = backend
    return backend


def get_kernel_backend(name: str) -> KernelBackend:
    """按名字取后端；名字未注册时报错，列出已注册的名字并提示怎样注册（例如先 import inference_engine.kernels）。"""
    backend = KERNEL_BACKENDS.get(name)
    if backend is None:
        raise ValueError(f"kernels={name!r} 未注册；已注册的内核后端：{sorted(KERNEL_BACKENDS)}"
                         "（Triton 内核要先 `import inference_engine.backends` 才会注册 'triton'；"
                         "不需要时用 kernels='torch'）")
    return backend
