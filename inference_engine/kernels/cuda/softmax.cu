// 按行 softmax：y[r, j] = exp(x[r, j] - m_r) / Σ_j' exp(x[r, j'] - m_r)，m_r = max_j x[r, j]。
//
// 减去行最大值不改变结果（分子分母同乘 exp(-m)），但保证 exp 的参数 ≤ 0、不会上溢成 inf——数值稳定的标准写法。
//
// 线程组织：一个 block 处理一行（grid = rows 个 block），block 内 threads 个线程按步长 threads 扫这一行：
// 线程 t 处理列 t, t + threads, t + 2·threads, …。同一时刻一个 warp 的 32 个线程读 32 个连续 float → 合并访存。
// 三步：
//   1. 每个线程求自己那几列的局部最大值 → block_reduce_max（warp 内 __shfl_xor_sync 蝶形归约，再跨 warp）；
//   2. 每个线程求 Σ exp(x - m) 的局部和 → block_reduce_sum；
//   3. 写 y = exp(x - m) / sum。
// 每行从全局内存读 3 次、写 1 次：12·cols 字节读 + 4·cols 字节写。一行不大时（≤ 几万列）后两次读大多命中 L1/L2；
// 极致的写法把整行留在寄存器或共享内存里只读一次（Triton 的融合 softmax 就是整行一个 block 装进寄存器）。
// 无论哪种，都比 PyTorch 逐个算子（max、sub、exp、sum、div 各读写一遍显存）的 ~5 读 + 4 写少得多——这就是"融合"。
//
// 一行全是 -inf 时 m = -inf，x - m = NaN，结果整行 NaN——与 torch.softmax 的行为相同（这种行在注意力里由
// 掩码构造时避免，见 model_lab/attention_backends.py）。
#include "launchers.h"
#include "warp_reduce.cuh"

constexpr int SOFTMAX_MAX_THREADS = 512;

__global__ void softmax_row_kernel(const float* __restrict__ x, float* __restrict__ y, int cols) {
    __shared__ float scratch[WARP_SIZE];
    const size_t row = blockIdx.x;
    const float* x_row = x + row * cols;
    float* y_row = y + row * cols;

    float m = -INFINITY;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, x_row[j]);
    m = block_reduce_max(m, scratch);

    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += expf(x_row[j] - m);
    s = block_reduce_sum(s, scratch);

    const float inv_s = 1.0f / s;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) y_row[j] = expf(x_row[j] - m) * inv_s;
}

extern "C" cudaError_t launch_softmax(const float* x, float* y, int rows, int cols, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return cudaErrorInvalidValue;
    // 线程数取"列数向上取整到 warp 的倍数"，封顶 512：短行不浪费空线程，长行每个线程多扫几列。
    int threads = (cols + WARP_SIZE - 1) / WARP_SIZE * WARP_SIZE;
    if (threads > SOFTMAX_MAX_THREADS) threads = SOFTMAX_MAX_THREADS;
    // grid.x 上限 2^31 - 1，rows 是 int，不会超
    softmax_row_kernel<<<rows, threads, 0, stream>>>(x, y, cols);
    return cudaGetLastError();
}
