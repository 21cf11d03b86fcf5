"""第 21 天 torch.compile：Dynamo 抓图、graph break、重编译与动态形状、编译后的梯度。

torch.compile(fn) 分三层：
1. **Dynamo**：在 Python 字节码层面"边执行边记录"，把张量运算抓成一张 FX 图（torch.fx.GraphModule）。
   遇到它理解不了的东西（print、数据相关的 if、调用 numpy、torch._dynamo.graph_break()）就
   **graph break**：前半段成一张图，回到 Python 执行那一句，后半段再起一张图。图越碎，能融合的越少。
2. **AOTAutograd**：对抓到的前向图提前推导出反向图（所以编译后的模型照样能 backward）。
3. **后端**：默认 Inductor 把图里的逐元素运算融合成一个 kernel（CPU 上生成 C++/OpenMP，GPU 上生成 Triton）。
   后端就是一个函数 backend(gm, example_inputs) -> callable，可以自己写（今天的 ex1 就写一个）。
   backend="eager" 只跑 Dynamo；"aot_eager" 再加 AOTAutograd——都不生成代码，编译很快，用来调试。

编译结果带**守卫**（guards：形状、dtype、设备、全局变量…）缓存起来。守卫失败就**重编译**：
- dynamic=None（默认）：第一次按具体形状编译；同一维度第二次出现新长度时，改成符号形状再编译一次，之后不再重编译；
- dynamic=True：一开始就用符号形状（长度 0 和 1 仍会被特化）；dynamic=False：每个新形状都编译一次。
`torch.compile(..., fullgraph=True)` 遇到 graph break 直接报错——写"能被整图编译"的代码时用它检查。

本机是 CPU：自检用 backend="aot_eager"（真正经过 Dynamo 与 AOTAutograd，编译只要零点几秒）；
Inductor 在 CPU 上要调用 C++ 编译器，首次编译要几十秒（本仓库的 2 核机器上，演示里的 GELU 实测 23–28 秒，
`--inductor` 的自检又要近一分钟；编译结果缓存在 /tmp/torchinductor_<用户名>，同样的形状再运行一次，
自检从 55 秒降到 4 秒），所以放在 `--inductor` 开关后面。
每道题都把编译结果与 eager 结果对比。

练习：ex1–ex5；ex2 是谜题（只许用 torch.where 与 .sum，不许有 Python 的 if）。运行：

    python archive/28days_challenges/day21_torch_compile.py [--inductor]
"""

from __future__ import annotations

import argparse

import torch
import torch._dynamo as dynamo
import torch.nn as nn
import torch.nn.functional as F

from utils import exercises
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, time_block

# 自检默认用 aot_eager：真正经过 Dynamo 与 AOTAutograd，却不需要 C++ 编译器，编译零点几秒；
# 只有直接运行本文件并加 --inductor 时才用 Inductor（main guard 解析命令行后改这两个全局变量；
# 被测试导入时不解析命令行，保持 aot_eager）
USE_INDUCTOR = False
BACKEND = "aot_eager"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inductor", action="store_true",
                        help="自检与演示改用 Inductor 后端（CPU 上要现场编译 C++，首次编译要几十秒）")
    return parser


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_graph_sizes(fn, x: torch.Tensor) -> list[int]:
    """写一个自定义后端：每收到一张 FX 图，就记下图里运算节点（op 为 call_function / call_method /
    call_module）的个数，然后原样执行。返回 fn(x) 被切成的每张图的运算节点数（对照 torch._dynamo.explain）。"""
    sizes = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        sizes.append(sum(node.op in ("call_function", "call_method", "call_module") for node in gm.graph.nodes))
        return gm.forward  # 后端返回"怎么执行这张图"：这里原样执行

    dynamo.reset()  # 清掉之前编译的缓存，否则 fn 根本不会再交给后端
    torch.compile(fn, backend=backend)(x)
    return sizes


def ex2_branch_free(x: torch.Tensor) -> torch.Tensor:
    """谜题：与下面的 _branchy 等价，但没有 Python 的 if（数据相关的分支会 graph break），
    因此能被 torch.compile(fullgraph=True) 整图编译。只许用 torch.where 与 .sum。
    （对照 torch.cond：内置的"可编译的 if"，只执行被选中的分支；torch.where 两边都算，再挑。）"""
    return torch.where(x.sum() > 0, x * 2, x - 1)  # 0 维的条件广播到 x 的形状


def ex3_num_compilations(lengths: list[int], dynamic: bool | None) -> int:
    """预测：torch.compile(f, dynamic=dynamic) 依次处理长度为 lengths 的一维输入（长度都 ≥ 2），
    一共编译几次（对照：数一数后端被调用了几次）。"""
    if dynamic is True:
        return 1  # 一开始就是符号形状
    if dynamic is False:
        return len(set(lengths))  # 每个新长度一次（缓存上限 8，本题用不到）
    return 1 if len(set(lengths)) == 1 else 2  # 默认：第二个新长度触发一次"动态"编译，之后都命中


def ex4_compiled_grads(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """用 torch.compile(model, backend=BACKEND) 做一次前向、对 out.pow(2).sum() 反向，
    返回每个参数的梯度（对照 eager 的结果：AOTAutograd 推导出的反向必须一样）。"""
    compiled = torch.compile(model, backend=BACKEND)
    compiled(x).pow(2).sum().backward()
    return [p.grad for p in model.parameters()]


def ex5_fused_gelu(x: torch.Tensor) -> torch.Tensor:
    """用逐元素运算手写 tanh 近似的 GELU，并用 torch.compile(backend=BACKEND) 编译后调用
    （对照 F.gelu(x, approximate="tanh")）。Inductor 会把这 9 个逐元素运算（6 次乘、2 次加、1 次 tanh）融合成一个 kernel。"""
    return torch.compile(_gelu_tanh, backend=BACKEND)(x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    return 0.5 * x * (1 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


# =============================================================================
# 参考实现与输入
# =============================================================================
def _branchy(x: torch.Tensor) -> torch.Tensor:
    """ex2 要改写的原函数：Python 的 if 依赖张量的值。"""
    if x.sum() > 0:
        return x * 2
    return x - 1


def _ref_cond(x: torch.Tensor) -> torch.Tensor:
    return torch.cond(x.sum() > 0, lambda t: t * 2, lambda t: t - 1, (x,))


def _plain(x):
    return (x.sin() + 1).relu()


def _one_break(x):
    y = x.cos() * 2
    dynamo.graph_break()  # 等价于一句 Dynamo 无法追踪的代码（print、numpy……）
    return y.exp() + y


def _two_breaks(x):
    y = x + 1
    dynamo.graph_break()
    y = y * y
    dynamo.graph_break()
    return y.tanh().sum()


def _data_dependent(x):
    y = x.abs()
    if y.sum() > 1:  # Python 的 if 要一个真正的 bool：Dynamo 只好在这里断开
        return y.sqrt()
    return y - 1


_GRAPH_FNS = (_plain, _one_break, _two_breaks, _data_dependent)


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _ref_graph_sizes(fn, x):
    dynamo.reset()
    explanation = dynamo.explain(fn)(x)
    return [
        sum(node.op in ("call_function", "call_method", "call_module") for node in gm.graph.nodes)
        for gm in explanation.graphs
    ]


def _ref_num_compilations(lengths, dynamic):
    calls = []

    def counting_backend(gm, example_inputs):
        calls.append(1)
        return gm.forward

    dynamo.reset()
    compiled = torch.compile(_plain, backend=counting_backend, dynamic=dynamic)
    for n in lengths:
        compiled(torch.randn(n))
    return len(calls)


def _fullgraph(fn):
    """probe：要求整图编译（有 graph break 就报错），再与参考结果比较。"""
    return lambda *args: torch.compile(fn, backend=BACKEND, fullgraph=True)(*args)


def _model(g: torch.Generator):
    # float64：Inductor 融合后运算顺序不同，float32 的梯度与 eager 差 1e-7–4e-6（相对，实测），float64 才能紧密比较
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.LayerNorm(4), nn.Linear(4, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model, torch.randn(5, 3, generator=g, dtype=torch.float64)  # 固定形状：不同 seed 不触发重编译


def _ref_grads(model, x):
    model(x).pow(2).sum().backward()
    return [p.grad for p in model.parameters()]


CHECKS = [
    ("ex1_graph_sizes", _ref_graph_sizes,
     lambda g: (_GRAPH_FNS[_randint(g, 0, len(_GRAPH_FNS))], torch.randn(4, generator=g))),
    ("ex2_branch_free", _ref_cond, lambda g: (torch.randn(4, 3, generator=g),), _fullgraph),
    (
        "ex3_num_compilations",
        _ref_num_compilations,
        lambda g: ([_randint(g, 2, 6) for _ in range(_randint(g, 1, 5))], [None, True, False][_randint(g, 0, 3)]),
    ),
    ("ex4_compiled_grads", _ref_grads, _model),
    ("ex5_fused_gelu", lambda x: F.gelu(x, approximate="tanh"), lambda g: (torch.randn(4, 8, generator=g) * 3,)),
]

PUZZLE_ALLOWED = {"ex2_branch_free": {"torch.where", ".sum"}}


def demo() -> None:
    if not dynamo.is_dynamo_supported():
        print("torch.compile 在这个 Python / 平台上不可用（torch._dynamo.is_dynamo_supported() 为 False），"
              "今天的自检会全部失败：请换用 torch 支持的 Python 版本（见 PyTorch 的安装说明）")
        return
    x = torch.randn(4)
    for fn in _GRAPH_FNS:
        dynamo.reset()
        e = dynamo.explain(fn)(x)
        print(f"{fn.__name__:16s} 抓到 {e.graph_count} 张图，{e.graph_break_count} 处 graph break")
    try:
        torch.compile(_branchy, backend="eager", fullgraph=True)(torch.randn(2, 3))
    except Exception as err:  # Dynamo 的报错类型随版本变，这里只演示"fullgraph 会拒绝"
        print(f"fullgraph=True 编译 _branchy：{type(err).__name__}: {str(err).splitlines()[0][:90]}")
    if not USE_INDUCTOR:
        print("（Inductor 演示已跳过：它在 CPU 上要现场编译 C++，首次要几十秒；加 --inductor 运行可看融合后的提速）")
        return
    n = 1 << 16 if is_smoke() else 1 << 22
    big = torch.randn(n)
    dynamo.reset()
    try:
        with time_block("Inductor 首次编译", verbose=False) as t:
            fused = torch.compile(_gelu_tanh, backend="inductor")
            fused(big)
    except Exception as err:  # 最常见：没有 C++ 编译器（CPU 后端要用 g++/clang 编译生成的代码）
        print(f"（Inductor 在本机编译失败，跳过演示：{type(err).__name__}: {str(err).splitlines()[0][:100]}；"
              f"自检用的 aot_eager 后端不需要编译器）")
        return
    eager_ms, fused_ms = benchmark_interleaved([lambda: _gelu_tanh(big), lambda: fused(big)])
    eager_out = _gelu_tanh(big)
    top = eager_out.abs().max()
    ulp = (torch.nextafter(top, torch.tensor(float("inf"))) - top).item()  # 输出最大处 float32 的间距
    measured = ("SMOKE 的 2¹⁶ 个元素装得进缓存，省下的内存流量少：本机一次实测 1.6×" if is_smoke()
                else "默认的 2²² 个元素：本机一次实测 4.1×")
    print(f"Inductor：首次编译 {t.ms / 1000:.1f} s；{n} 个元素的手写 GELU eager {eager_ms:.2f} ms → 融合后 {fused_ms:.2f} ms"
          f"（{eager_ms / fused_ms:.1f}×：eager 的 9 个算子各把全长数组读写一遍，融合后只读 x、写 y 各一次；{measured}），"
          f"最大误差 {(fused(big) - eager_out).abs().max().item():.1e}（输出最大 {top.item():.2f}，"
          f"float32 在那里的间距 {ulp:.1e}：只差最后一两位）")
    print(timing_note())


# =============================================================================
# 自检：框架在 utils/exercises.py（28 天共用）——每道练习在几组随机输入上与 PyTorch 内置实现逐一对比
# =============================================================================
def run_checks(verbose: bool = True, seeds=None) -> tuple[int, int]:
    """逐题自检：每题打印一行 ✓/✗，最后打印 `N/M passed`；返回 (N, M)。"""
    return exercises.run_checks(globals(), verbose=verbose, seeds=seeds)


def main() -> None:
    exercises.run_day(globals())


if __name__ == "__main__":
    if lesson_args(__doc__, _parser()).inductor:
        USE_INDUCTOR, BACKEND = True, "inductor"
    main()
