"""CUDA C 内核（inference_engine/kernels/cuda_kernels.py）的测试，按机器能做到的阶段分层：

(a) 有 nvcc 就跑：每个 .cu 单独编译、load_inline 会用的拼接版本也能编译，目标文件里有内核与启动函数的符号，
    ptxas 为 sm_80 生成了机器码且 报告没有寄存器溢出；binding.cpp 对着 torch 的头文件能通过 C++ 语法检查（慢）。
(a') 有 g++ 就跑：同一份 .cu 源码（只把 <<<>>> 启动语法机械地改写）在 CPU 线程模拟器上执行，结果与 PyTorch 对照——
     没有 GPU 也证明了每个内核的下标、掩码、同步与归约逻辑（模拟器见 cuda_emu/cuda_runtime.h）。
(b) 有 CUDA 版 torch + nvcc + ninja：load_inline 真的构建出扩展模块。
(c) 有 GPU：每个内核与 PyTorch 参考逐元素对照。
(d) 任何机器：坏输入在碰 CUDA 之前就被拒绝（ValueError）；没有 GPU / CPU 版 torch 时包装函数抛出说明替代方案的错误。
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from inference_engine.kernels import cuda_kernels as ck

NVCC = ck.find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA toolkit) to compile the .cu sources")
BUILD_REASON = ck.build_unavailable_reason()
RUN_REASON = ck.run_unavailable_reason()
needs_build = pytest.mark.skipif(BUILD_REASON is not None, reason=f"load_inline cannot build here: {BUILD_REASON}")
needs_gpu = pytest.mark.skipif(RUN_REASON is not None, reason=f"CUDA kernels cannot run here: {RUN_REASON}")


def _max_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return (ours.double() - ref.double()).abs().max().item()


# ---------------------------------------------------------------------------------------------------
# (a) nvcc
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, object]:
    """每个 .cu 单独编译（并行），同时在后台把 load_inline 会编译的拼接文件也编一遍。整个模块只编一次。"""
    out = tmp_path_factory.mktemp("nvcc")
    combined = out / "combined.cu"
    combined.write_text("\n".join(ck.cuda_sources()), encoding="utf-8")
    combined_proc = subprocess.Popen(
        [NVCC, f"-arch={ck.DEFAULT_ARCH}", "-I", str(ck.CUDA_DIR), "-c", str(combined), "-o", str(out / "combined.o")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    objects = ck.compile_sources_with_nvcc(out)
    _, combined_err = combined_proc.communicate(timeout=240)
    return {"dir": out, "objects": objects, "combined_rc": combined_proc.returncode, "combined_err": combined_err}


@needs_nvcc
def test_every_cu_compiles_and_defines_its_kernel_and_launcher(compiled):
    objects = compiled["objects"]
    assert [p.name for p in objects] == [f"{name}.o" for name in ck.CUDA_SOURCES]
    nm = shutil.which("nm")
    for name, obj in zip(ck.CUDA_SOURCES, objects, strict=True):
        data = obj.read_bytes()
        kernel, launcher = ck.KERNEL_SYMBOLS[name]
        # 内核名出现在修饰名里（设备端代码与主机端的启动桩），启动函数是 extern "C" 的原名
        assert kernel.encode() in data, f"{name}.o 里没有内核 {kernel}"
        assert launcher.encode() in data, f"{name}.o 里没有启动函数 {launcher}"
        if nm:
            defined = subprocess.run([nm, "-g", "--defined-only", str(obj)], capture_output=True, text=True,
                                     check=True).stdout
            # "T launch_x"：这个目标文件**定义**了它（不只是引用），链接时 binding.cpp 的调用能找到它
            assert re.search(rf"\sT {launcher}$", defined, re.MULTILINE), defined


@needs_nvcc
def test_concatenated_sources_compile_as_one_translation_unit(compiled):
    # load_inline 把 cuda_sources 首尾相接成一个 cuda.cu：名字冲突、头文件重复定义只有在这里才暴露
    assert compiled["combined_rc"] == 0, compiled["combined_err"]
    data = (compiled["dir"] / "combined.o").read_bytes()
    for kernel, launcher in ck.KERNEL_SYMBOLS.values():
        assert kernel.encode() in data and launcher.encode() in data


@needs_nvcc
def test_ptxas_reports_no_register_spills_and_the_designed_shared_memory(compiled):
    usage = {}
    for name in ck.CUDA_SOURCES:
        log = (compiled["dir"] / f"{name}.ptxas.txt").read_text(encoding="utf-8")
        # ptxas 真的为 sm_80 生成了机器码（SASS），不只是 PTX
        assert f"for '{ck.DEFAULT_ARCH}'" in log, log
        report = ck.parse_ptxas_report(log)
        kernel = ck.KERNEL_SYMBOLS[name][0]
        matches = [u for mangled, u in report.items() if kernel in mangled]
        assert len(matches) == 1, report
        usage[kernel] = matches[0]
    for kernel, u in usage.items():
        assert 0 < u.registers <= 255, (kernel, u)
        # 溢出到 local memory 会让 FlashAttention 的寄存器累加器 acc[16] 变成显存读写——设计上必须为 0
        assert u.spill_store_bytes == 0 and u.spill_load_bytes == 0, (kernel, u)
    assert usage["matmul_tiled_kernel"].shared_bytes == 2 * 32 * 32 * 4  # sA、sB 两个 32×32 的 fp32 子块
    assert usage["softmax_row_kernel"].shared_bytes == 32 * 4  # 跨 warp 归约的 scratch[32]
    assert usage["rms_norm_kernel"].shared_bytes == 32 * 4
    assert usage["matmul_naive_kernel"].shared_bytes == 0
    assert usage["flash_attention_forward_kernel"].shared_bytes == 0  # 全部是动态共享内存（按 head_dim 在启动时给）


@needs_nvcc
def test_nvcc_failure_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="nvcc 编译 softmax.cu 失败"):
        ck.compile_sources_with_nvcc(tmp_path, arch="sm_10", names=["softmax"])


def test_compile_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="sm_80"):
        ck.compile_sources_with_nvcc(tmp_path, arch="80")
    with pytest.raises(ValueError, match="没有这些 CUDA 源文件"):
        ck.compile_sources_with_nvcc(tmp_path, names=["gemm"])


def test_parse_ptxas_report():
    text = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'
ptxas info    : Function properties for _Z3fooPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 8192 bytes smem, 388 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3barv' for 'sm_80'
ptxas info    : Function properties for _Z3barv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers, 372 bytes cmem[0]
"""
    usage = ck.parse_ptxas_report(text)
    assert usage == {
        "_Z3fooPf": ck.PtxasUsage(registers=40, shared_bytes=8192, stack_bytes=8, spill_store_bytes=4,
                                  spill_load_bytes=12),
        "_Z3barv": ck.PtxasUsage(registers=10, shared_bytes=0, stack_bytes=0, spill_store_bytes=0, spill_load_bytes=0),
    }


def test_binding_exports_every_function_and_calls_every_launcher():
    binding = (ck.CUDA_DIR / "binding.cpp").read_text(encoding="utf-8")
    header = (ck.CUDA_DIR / "launchers.h").read_text(encoding="utf-8")
    for fn in ck.BINDING_FUNCTIONS:
        assert re.search(rf"^torch::Tensor {fn}\(", binding, re.MULTILINE), fn
    declared = set(re.findall(r"cudaError_t (launch_\w+)\(", header))
    assert declared == {launcher for _, launcher in ck.KERNEL_SYMBOLS.values()}
    for launcher in declared:
        assert f"{launcher}(" in binding, launcher
    # .cu 保持纯 CUDA：不 include 任何 torch 头文件（这样没有 CUDA 版 torch 也能单独编译）
    for name in ck.CUDA_SOURCES:
        assert not re.search(r"#include\s*<(torch|ATen|c10)", (ck.CUDA_DIR / f"{name}.cu").read_text(encoding="utf-8"))


def _cuda_include_dir() -> Path | None:
    roots = [Path(NVCC).resolve().parent.parent] if NVCC else []
    roots += [Path(p) for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if p]
    for root in roots:
        if (root / "include" / "cuda_runtime_api.h").is_file():
            return root / "include"
    return None


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None or _cuda_include_dir() is None,
                    reason="needs g++ and the CUDA headers (cuda_runtime_api.h)")
def test_binding_compiles_against_torch_headers(tmp_path):
    """binding.cpp + pybind11 模块定义对着已安装 torch 的头文件做 C++ 语法与类型检查
    （-fsyntax-only：不链接，所以 CPU 版 torch 也行）。

    CPU 版 torch 的轮子缺一个 CUDA 构建时才生成的头文件 c10/cuda/impl/cuda_cmake_macros.h；用 -idirafter 补一个
    与 CUDA 版内容相同的（只有一个宏），真的存在时优先用真的。
    """
    from torch.utils.cpp_extension import include_paths

    shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    # 与 load_inline 生成的 main.cpp 相同：binding.cpp 之后接 functions= 生成的 pybind11 模块定义
    main_cpp = tmp_path / "main.cpp"
    module_def = "\n".join(f'm.def("{fn}", torch::wrap_pybind_function({fn}), "{fn}");' for fn in ck.BINDING_FUNCTIONS)
    main_cpp.write_text(f'#include "binding.cpp"\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {{\n{module_def}\n}}\n')
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-DTORCH_EXTENSION_NAME=llm_cuda_kernels",
           *(f"-I{p}" for p in include_paths()), f"-I{sysconfig.get_paths()['include']}",
           f"-I{_cuda_include_dir()}", f"-I{ck.CUDA_DIR}", "-idirafter", str(tmp_path / "shim"), str(main_cpp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


# ---------------------------------------------------------------------------------------------------
# (a') 没有 GPU 也运行内核：原样的 .cu 用 g++ 编译，在 CPU 线程模拟器（cuda_emu/cuda_runtime.h）上执行
# ---------------------------------------------------------------------------------------------------

EMU_DIR = Path(__file__).resolve().parent / "cuda_emu"
_LAUNCH = re.compile(r"(\w+)<<<(.*?)>>>\((.*?)\);", re.DOTALL)


def emulated_source() -> str:
    """load_inline 会编译的同一份 cuda_sources，只做两处机械改写，让 g++ 能编译：
    `kernel<<<grid, block, smem, stream>>>(args);` → `emu::launch(dim3(grid), dim3(block), smem, [=] { kernel(args); });`，
    `extern __shared__` → `extern`（模拟器里 __shared__ 是 static，不能与 extern 连用）。启动函数本身原样保留。"""

    def launch(m: re.Match) -> str:
        config = [c.strip() for c in m.group(2).split(",")]
        smem = config[2] if len(config) > 2 else "0"
        return f"emu::launch(dim3({config[0]}), dim3({config[1]}), {smem}, [=] {{ {m.group(1)}({m.group(3)}); }});"

    return "\n".join(_LAUNCH.sub(launch, src.replace("extern __shared__", "extern")) for src in ck.cuda_sources())


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to build the CPU emulation of the CUDA kernels")
    source = emulated_source()
    assert source.count("emu::launch(") == len(ck.CUDA_SOURCES)  # 每个启动函数的 <<<>>> 都被改写了
    out = tmp_path_factory.mktemp("cuda_emu")
    (out / "kernels.cpp").write_text(source, encoding="utf-8")
    lib_path = out / "libkernels_emu.so"
    proc = subprocess.run(["g++", "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-Wno-unknown-pragmas",
                           "-I", str(EMU_DIR), "-I", str(ck.CUDA_DIR), str(out / "kernels.cpp"), "-o", str(lib_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lib = ctypes.CDLL(str(lib_path))
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    signatures = {
        "launch_matmul_naive": [p, p, p, i, i, i, p],
        "launch_matmul_tiled": [p, p, p, i, i, i, p],
        "launch_softmax": [p, p, i, i, p],
        "launch_rms_norm": [p, p, p, i, i, f, p],
        "launch_flash_attention_forward": [p, p, p, p, i, i, i, i, f, i, p],
    }
    for name, argtypes in signatures.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = ctypes.c_int
    return lib


def _ptr(t: torch.Tensor) -> int:
    assert t.is_contiguous() and t.dtype == torch.float32
    return t.data_ptr()


@pytest.mark.parametrize("launcher", ["launch_matmul_naive", "launch_matmul_tiled"])
@pytest.mark.parametrize("shape", [(40, 37, 70), (1, 1, 1)], ids=["40x37x70", "1x1x1"])
def test_emulated_matmul_matches_torch(emulated, launcher, shape):
    # 40、37、70 都不是 16 / 32 的倍数：最后一行块、列块与 K 方向的最后一个子块都要靠掩码补 0
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    c = torch.full((m, n), float("nan"))  # 有没写到的输出就会留下 NaN
    assert getattr(emulated, launcher)(_ptr(a), _ptr(b), _ptr(c), m, n, k, None) == 0
    assert _max_err(c, a.double() @ b.double()) < 1e-4


def test_emulated_softmax_matches_torch(emulated):
    for rows, cols in ((5, 1000), (3, 7), (2, 1)):
        x = torch.randn(rows, cols) * 5
        x[0, cols // 2 + 1:] = float("-inf")  # 部分 -inf：那些位置概率为 0
        if rows > 2:
            x[-1] = float("-inf")  # 整行 -inf：torch 给 NaN，内核也是（不是别的什么有限值）
        y = torch.zeros_like(x)
        assert emulated.launch_softmax(_ptr(x), _ptr(y), rows, cols, None) == 0
        ref = torch.softmax(x.double(), dim=-1).float()
        torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-5, equal_nan=True)
        assert y[:-1].isfinite().all() if rows > 2 else y.isfinite().all()


def test_emulated_rms_norm_matches_torch_rmsnorm(emulated):
    for rows, cols in ((6, 1000), (3, 7)):
        x, w = torch.randn(rows, cols) * 3, torch.randn(cols)
        ref_module = torch.nn.RMSNorm(cols, eps=1e-6)
        with torch.no_grad():
            ref_module.weight.copy_(w)
            ref = ref_module(x)
        y = torch.full_like(x, float("nan"))
        assert emulated.launch_rms_norm(_ptr(x), _ptr(w), _ptr(y), rows, cols, 1e-6, None) == 0
        assert _max_err(y, ref) < 1e-5


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [(1, 2, 40, 40, 64), (1, 1, 20, 70, 40), (1, 1, 16, 33, 128)],
                         ids=lambda s: "x".join(map(str, s)))
def test_emulated_flash_attention_matches_sdpa(emulated, shape, causal):
    # 40 行 query = 3 个 16 行的块（最后一块只有 8 行有效）；70 个 key = 3 个 32 列的块（最后一块 6 个有效）；
    # D = 40 不是 2 的幂；D = 128 用满每个线程的 16 个累加寄存器；T ≠ S 时因果是左上角对齐（与 SDPA 相同）
    b, h, t, s, d = shape
    q, k, v = torch.randn(b, h, t, d), torch.randn(b, h, s, d), torch.randn(b, h, s, d)
    o = torch.full_like(q, float("nan"))
    assert emulated.launch_flash_attention_forward(_ptr(q), _ptr(k), _ptr(v), _ptr(o), b * h, t, s, d, d ** -0.5,
                                                   int(causal), None) == 0
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    assert _max_err(o, ref) < 1e-5


def test_emulated_launchers_reject_bad_sizes(emulated):
    x = torch.zeros(4, 4)
    cuda_error_invalid_value = 1
    assert emulated.launch_softmax(_ptr(x), _ptr(x), 0, 4, None) == cuda_error_invalid_value
    assert emulated.launch_rms_norm(_ptr(x), _ptr(x[0]), _ptr(x), 4, 4, -1.0, None) == cuda_error_invalid_value
    q = torch.zeros(1, 1, 129)
    assert emulated.launch_flash_attention_forward(_ptr(q), _ptr(q), _ptr(q), _ptr(q), 1, 1, 1, 129, 1.0, 0,
                                                   None) == cuda_error_invalid_value


# ---------------------------------------------------------------------------------------------------
# (b) load_inline
# ---------------------------------------------------------------------------------------------------


@needs_build
def test_load_inline_builds_the_extension():
    module = ck.load_cuda_kernels()
    for fn in ck.BINDING_FUNCTIONS:
        assert callable(getattr(module, fn))
    assert ck.load_cuda_kernels() is module  # 同一进程只构建一次


# ---------------------------------------------------------------------------------------------------
# (c) GPU：与 PyTorch 参考对照（fp32；参考在 fp64 里算，容差是 fp32 的舍入误差量级）
# ---------------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("fn", [ck.matmul_naive, ck.matmul_tiled], ids=["naive", "tiled"])
@pytest.mark.parametrize("shape", [(129, 67, 255), (1, 1, 1), (64, 32, 96), (33, 300, 17)])
def test_matmul_matches_torch(fn, shape):
    m, k, n = shape
    a, b = torch.randn(m, k, device="cuda"), torch.randn(k, n, device="cuda")
    out = fn(a, b)
    assert out.shape == (m, n) and out.dtype == torch.float32
    # fp32 点积的舍入误差 ~ sqrt(K)·eps·|a||b|：K = 300 时约 1e-5 量级
    assert _max_err(out, a.double() @ b.double()) < 1e-4
    torch.testing.assert_close(out, torch.matmul(a, b), atol=1e-4, rtol=1e-5)  # torch 默认不开 TF32


@needs_gpu
@pytest.mark.parametrize("shape", [(37, 1000), (5, 3, 7), (4, 5000), (2, 1)])
def test_softmax_matches_torch(shape):
    x = torch.randn(*shape, device="cuda") * 5
    out = ck.softmax(x)
    assert out.shape == x.shape
    assert _max_err(out, torch.softmax(x.double(), dim=-1)) < 1e-6
    torch.testing.assert_close(out, torch.softmax(x, dim=-1), atol=1e-6, rtol=1e-5)


@needs_gpu
def test_softmax_keeps_torch_semantics_for_infinities():
    x = torch.randn(3, 40, device="cuda")
    x[0, 5:] = float("-inf")  # 部分 -inf：那些位置概率为 0
    x[1] = float("-inf")  # 整行 -inf：torch 给 NaN，我们也是
    torch.testing.assert_close(ck.softmax(x), torch.softmax(x, dim=-1), equal_nan=True)


@needs_gpu
@pytest.mark.parametrize("shape", [(37, 1000), (2, 3, 64), (4, 4097), (1, 1)])
def test_rms_norm_matches_torch_rmsnorm(shape):
    x = torch.randn(*shape, device="cuda") * 3
    ref_module = torch.nn.RMSNorm(shape[-1], eps=1e-6, device="cuda")
    with torch.no_grad():
        ref_module.weight.copy_(torch.randn(shape[-1]))
        ref = ref_module(x)
    out = ck.rms_norm(x, ref_module.weight.detach(), 1e-6)
    assert out.shape == x.shape
    assert _max_err(out, ref) < 1e-5


@needs_gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [(1, 2, 128, 128, 64), (2, 3, 200, 200, 64), (1, 1, 17, 17, 40),
                                   (1, 2, 70, 150, 128), (1, 2, 150, 70, 32), (1, 1, 1, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_flash_attention_forward_matches_sdpa(shape, causal):
    b, h, t, s, d = shape
    q = torch.randn(b, h, t, d, device="cuda")
    k, v = torch.randn(b, h, s, d, device="cuda"), torch.randn(b, h, s, d, device="cuda")
    out = ck.flash_attention_forward(q, k, v, causal=causal)
    assert out.shape == q.shape
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    assert _max_err(out, ref) < 1e-5
    with sdpa_kernel(SDPBackend.MATH):
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=1e-5, rtol=1e-5)


@needs_gpu
def test_flash_attention_custom_scale():
    q, k, v = (torch.randn(1, 2, 50, 64, device="cuda") for _ in range(3))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.3)
    assert _max_err(ck.flash_attention_forward(q, k, v, scale=0.3), ref) < 1e-5


@needs_gpu
def test_gpu_bad_input_is_a_clear_value_error():
    a = torch.randn(8, 8, device="cuda")
    with pytest.raises(ValueError, match="float32"):
        ck.matmul_tiled(a.half(), a.half())  # 低精度不在这一课：指向 Triton
    with pytest.raises(ValueError, match="连续"):
        ck.matmul_naive(a.t(), a)
    with pytest.raises(ValueError, match="cpu"):
        ck.softmax(torch.randn(4, 4))
    q = torch.randn(1, 1, 8, 16, device="cuda")
    with pytest.raises(ValueError, match="float32"):
        ck.flash_attention_forward(q.bfloat16(), q.bfloat16(), q.bfloat16())


# ---------------------------------------------------------------------------------------------------
# (d) 任何机器：坏输入先被拒绝；没有 GPU 时给出替代方案
# ---------------------------------------------------------------------------------------------------


def test_bad_input_is_rejected_before_touching_cuda():
    a = torch.randn(4, 5)
    with pytest.raises(ValueError, match="内维对不上"):
        ck.matmul_naive(a, torch.randn(4, 5))
    with pytest.raises(ValueError, match="2 维"):
        ck.matmul_tiled(torch.randn(2, 4, 5), torch.randn(5, 3))
    with pytest.raises(ValueError, match="float32"):
        ck.matmul_tiled(a.double(), torch.randn(5, 3).double())
    with pytest.raises(ValueError, match="连续"):
        ck.softmax(torch.randn(6, 4).t())
    with pytest.raises(ValueError, match="torch.Tensor"):
        ck.softmax([1.0, 2.0])
    with pytest.raises(ValueError, match="w 的长度"):
        ck.rms_norm(torch.randn(3, 8), torch.randn(7))
    with pytest.raises(ValueError, match="eps"):
        ck.rms_norm(torch.randn(3, 8), torch.randn(8), eps=-1.0)
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="head_dim=256"):
        big = torch.randn(1, 2, 8, 256)
        ck.flash_attention_forward(big, big, big)
    with pytest.raises(ValueError, match="k 与 v 的形状"):
        ck.flash_attention_forward(q, q, torch.randn(1, 2, 9, 16))
    with pytest.raises(ValueError, match="repeat_kv"):
        kv = torch.randn(1, 1, 8, 16)
        ck.flash_attention_forward(q, kv, kv)
    with pytest.raises(ValueError, match="4 维"):
        ck.flash_attention_forward(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="至少要有一个 key"):
        empty = torch.randn(1, 2, 0, 16)
        ck.flash_attention_forward(q, empty, empty)


@pytest.mark.skipif(RUN_REASON is None, reason="this machine can run the CUDA kernels")
def test_wrappers_without_gpu_raise_a_clear_error_naming_the_fallback():
    x = torch.randn(4, 8)
    q = torch.randn(1, 2, 8, 16)
    calls = {
        "matmul_naive": lambda: ck.matmul_naive(x, x.t().contiguous()),
        "matmul_tiled": lambda: ck.matmul_tiled(x, x.t().contiguous()),
        "softmax": lambda: ck.softmax(x),
        "rms_norm": lambda: ck.rms_norm(x, torch.ones(8)),
        "flash_attention_forward": lambda: ck.flash_attention_forward(q, q, q, causal=True),
    }
    assert set(calls) == set(ck.BINDING_FUNCTIONS)
    for name, call in calls.items():
        with pytest.raises(ck.CudaKernelsUnavailableError) as info:
            call()
        msg = str(info.value)
        assert isinstance(info.value, RuntimeError)
        assert RUN_REASON in msg, (name, msg)
        assert "attn_implementation='sdpa'" in msg and "triton" in msg, (name, msg)


@pytest.mark.skipif(BUILD_REASON is None, reason="this machine can build the extension")
def test_load_without_build_tools_raises_a_clear_error():
    with pytest.raises(ck.CudaKernelsUnavailableError, match="不能构建 CUDA C 内核") as info:
        ck.load_cuda_kernels()
    assert BUILD_REASON in str(info.value)
    if torch.version.cuda is None:
        assert "CPU 版" in str(info.value)


def test_main_runs_and_reports_the_stages(monkeypatch, capsys):
    # SMOKE=1：最多编译一个文件；没有 GPU 时说明缺什么，正常退出
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setattr(sys, "argv", ["cuda_kernels.py"])
    if RUN_REASON is not None:
        ck.main()
        out = capsys.readouterr().out
        assert "1. nvcc 编译每个 .cu" in out and "3. 在 GPU 上运行" in out
        assert ("matmul_tiled_kernel" in out) == (NVCC is not None)
        assert "没有运行内核" in out
    else:
        pytest.skip("covered by the GPU tests and the smoke test on a GPU machine")
