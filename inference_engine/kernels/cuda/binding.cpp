// 唯一一个认识 torch 的源文件：检查张量（在 GPU 上、连续、fp32、形状对得上），分配输出，取当前 CUDA stream，
// 调用 launchers.h 里的裸指针启动函数，把 cudaError_t 转成 Python 异常。
//
// 为什么把 torch 挡在 .cu 之外：内核文件因此是纯 CUDA C，可以单独用 `nvcc -c` 编译（没有 GPU、没有 CUDA 版 torch
// 的机器也能证明它们能编译），读者也看得到内核本身不依赖任何框架。Python 包装（cuda_kernels.py）在调用前已经
// 做过同样的检查并给出中文的 ValueError；这里的 TORCH_CHECK_VALUE（→ Python ValueError）是第二道防线：
// 绕过包装直接调用扩展模块时，也绝不会把错误的指针交给内核。
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>

#include "launchers.h"

namespace {

constexpr const char* kFallback =
    "（不用 CUDA C 内核时：Triton 内核 kernels='triton'，或 PyTorch 实现 attn_implementation='sdpa' / kernels='torch'）";

void check_input(const torch::Tensor& t, const char* name, int64_t dim) {
    TORCH_CHECK_VALUE(t.is_cuda(), name, " 必须是 CUDA 张量，收到 ", t.device(), kFallback);
    TORCH_CHECK_VALUE(t.scalar_type() == torch::kFloat32, name, " 必须是 float32，收到 ", t.scalar_type(), kFallback);
    TORCH_CHECK_VALUE(t.is_contiguous(), name, " 必须是连续张量，请先调用 .contiguous()");
    TORCH_CHECK_VALUE(t.dim() == dim, name, " 必须是 ", dim, " 维张量，收到 ", t.dim(), " 维");
}

int to_int(int64_t v, const char* what) {
    TORCH_CHECK_VALUE(v <= INT_MAX, what, "=", v, " 超过 int 范围（内核用 32 位下标）");
    return static_cast<int>(v);
}

void check_launch(cudaError_t err, const char* what) {
    TORCH_CHECK(err == cudaSuccess, what, " 启动失败：", cudaGetErrorString(err));
}

torch::Tensor matmul_impl(const torch::Tensor& a, const torch::Tensor& b, bool tiled) {
    check_input(a, "a", 2);
    check_input(b, "b", 2);
    TORCH_CHECK_VALUE(a.device() == b.device(), "a 与 b 必须在同一块 GPU 上");
    TORCH_CHECK_VALUE(a.size(1) == b.size(0), "a 的列数 ", a.size(1), " 必须等于 b 的行数 ", b.size(0));
    const c10::cuda::CUDAGuard guard(a.device());
    auto c = torch::empty({a.size(0), b.size(1)}, a.options());
    if (c.numel() == 0) return c;
    if (a.size(1) == 0) return c.zero_();  // K = 0：空和为 0
    const int m = to_int(a.size(0), "M"), n = to_int(b.size(1), "N"), k = to_int(a.size(1), "K");
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const float* pa = a.data_ptr<float>();
    const float* pb = b.data_ptr<float>();
    float* pc = c.data_ptr<float>();
    if (tiled) {
        check_launch(launch_matmul_tiled(pa, pb, pc, m, n, k, stream), "matmul_tiled");
    } else {
        check_launch(launch_matmul_naive(pa, pb, pc, m, n, k, stream), "matmul_naive");
    }
    return c;
}

}  // namespace

torch::Tensor matmul_naive(torch::Tensor a, torch::Tensor b) { return matmul_impl(a, b, false); }

torch::Tensor matmul_tiled(torch::Tensor a, torch::Tensor b) { return matmul_impl(a, b, true); }

// x: (rows, cols)，按最后一维做 softmax
torch::Tensor softmax(torch::Tensor x) {
    check_input(x, "x", 2);
    const c10::cuda::CUDAGuard guard(x.device());
    auto y = torch::empty_like(x);
    if (y.numel() == 0) return y;
    check_launch(launch_softmax(x.data_ptr<float>(), y.data_ptr<float>(), to_int(x.size(0), "rows"),
                                to_int(x.size(1), "cols"), c10::cuda::getCurrentCUDAStream()),
                 "softmax");
    return y;
}

// x: (rows, cols)，w: (cols,)
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
    check_input(x, "x", 2);
    check_input(w, "weight", 1);
    TORCH_CHECK_VALUE(x.device() == w.device(), "x 与 weight 必须在同一块 GPU 上");
    TORCH_CHECK_VALUE(w.size(0) == x.size(1), "weight 的长度 ", w.size(0), " 必须等于 x 的最后一维 ", x.size(1));
    TORCH_CHECK_VALUE(eps >= 0.0, "eps=", eps, " 不能是负数");
    const c10::cuda::CUDAGuard guard(x.device());
    auto y = torch::empty_like(x);
    if (y.numel() == 0) return y;
    check_launch(launch_rms_norm(x.data_ptr<float>(), w.data_ptr<float>(), y.data_ptr<float>(),
                                 to_int(x.size(0), "rows"), to_int(x.size(1), "cols"), static_cast<float>(eps),
                                 c10::cuda::getCurrentCUDAStream()),
                 "rms_norm");
    return y;
}

// q: (BH, T, D)，k/v: (BH, S, D)；Python 包装把 (B, H, T, D) 展平成 (B·H, T, D)
torch::Tensor flash_attention_forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, bool causal) {
    check_input(q, "q", 3);
    check_input(k, "k", 3);
    check_input(v, "v", 3);
    TORCH_CHECK_VALUE(q.device() == k.device() && q.device() == v.device(), "q、k、v 必须在同一块 GPU 上");
    TORCH_CHECK_VALUE(k.sizes() == v.sizes(), "k 与 v 的形状必须相同，收到 ", k.sizes(), " 与 ", v.sizes());
    TORCH_CHECK_VALUE(q.size(0) == k.size(0) && q.size(2) == k.size(2), "q ", q.sizes(), " 与 k ", k.sizes(),
                      " 的 batch·heads 维和 head_dim 必须相同");
    TORCH_CHECK_VALUE(q.size(2) >= 1 && q.size(2) <= 128, "head_dim=", q.size(2), " 不受支持（1..128）", kFallback);
    TORCH_CHECK_VALUE(k.size(1) >= 1, "k/v 至少要有一个 key（seq_k=0 时 softmax 没有定义）");
    const c10::cuda::CUDAGuard guard(q.device());
    auto o = torch::empty_like(q);
    if (o.numel() == 0) return o;
    check_launch(launch_flash_attention_forward(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                                                o.data_ptr<float>(), to_int(q.size(0), "batch*heads"),
                                                to_int(q.size(1), "seq_q"), to_int(k.size(1), "seq_k"),
                                                static_cast<int>(q.size(2)), static_cast<float>(scale),
                                                causal ? 1 : 0, c10::cuda::getCurrentCUDAStream()),
                 "flash_attention_forward");
    return o;
}
