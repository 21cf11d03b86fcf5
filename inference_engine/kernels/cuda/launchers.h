// 每个 .cu 文件导出的主机端启动函数（launcher）：只收裸指针与尺寸，不依赖 torch 的任何头文件。
//
// 为什么单独一个头文件、而且用 extern "C"：
// - 绑定代码（binding.cpp，由 C++ 编译器编译）和内核文件（.cu，由 nvcc 编译）是两个编译单元，
//   两边对同一个函数的声明必须完全一致，否则要到加载 .so 时才报 "undefined symbol"——而这台没有 GPU 的机器
//   根本走不到链接那一步。每个 .cu 都 #include 这个头文件：C++ 里同名函数换了参数只会变成"重载"、悄悄通过编译，
//   extern "C" 的函数却不允许重载，定义与声明不一致就是编译错误。于是 "nvcc -c 每个 .cu" 这个测试
//   就顺带证明了两边的签名对得上。
// - 返回 cudaError_t：内核启动是异步的，配置错误（grid 过大、共享内存超限）由 cudaGetLastError() 报告；
//   启动函数把它原样返回，由绑定代码转成 Python 异常，而不是在这里打印或 abort。
#pragma once

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

// C[m, n] = A[m, k] @ B[k, n]，行主序、连续、fp32。一个线程算一个输出元素。
cudaError_t launch_matmul_naive(const float* a, const float* b, float* c, int m, int n, int k, cudaStream_t stream);

// 同上，共享内存分块（TILE × TILE）版本。
cudaError_t launch_matmul_tiled(const float* a, const float* b, float* c, int m, int n, int k, cudaStream_t stream);

// y[r, :] = softmax(x[r, :])，x/y 形状 (rows, cols)，连续、fp32。
cudaError_t launch_softmax(const float* x, float* y, int rows, int cols, cudaStream_t stream);

// y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w，x/y 形状 (rows, cols)，w 形状 (cols,)。
cudaError_t launch_rms_norm(const float* x, const float* w, float* y, int rows, int cols, float eps,
                            cudaStream_t stream);

// o = softmax(scale · q kᵀ [+ 因果掩码]) v。q/o: (batch_heads, seq_q, head_dim)，k/v: (batch_heads, seq_k, head_dim)，
// 连续、fp32，1 ≤ head_dim ≤ 128。causal != 0 时第 i 个 query 只看 key j ≤ i（左上角对齐，与 SDPA 的 is_causal 相同）。
cudaError_t launch_flash_attention_forward(const float* q, const float* k, const float* v, float* o, int batch_heads,
                                           int seq_q, int seq_k, int head_dim, float scale, int causal,
                                           cudaStream_t stream);

#ifdef __cplusplus
}
#endif
