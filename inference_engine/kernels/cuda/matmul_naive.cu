// 朴素矩阵乘：C[m, n] = Σ_k A[m, k] · B[k, n]，一个线程算一个输出元素。
//
// 线程组织：block = 16 × 16 = 256 个线程，threadIdx.x 对应输出的列 n，threadIdx.y 对应行 m；
// grid = (ceil(N/16), ceil(M/16)) 个 block 铺满整个 C。线程号线性化为 tid = threadIdx.y * 16 + threadIdx.x，
// 每 32 个连续 tid 组成一个 warp：一个 warp = 同一个 block 里相邻两行 × 16 列。
//
// 合并访存（coalescing）：一个 warp 的一条 load 指令，若 32 个线程访问的地址落在少数几个连续的 32 字节段里，
// 硬件合并成少数几次内存事务。这里同一时刻（同一个 k）：
//   - 读 B[k, n]：16 个相邻的 n → 连续 64 字节，合并 ✓（这就是为什么让 x 维对应列而不是行）；
//   - 读 A[m, k]：同一行的 16 个线程读同一个地址 → 广播，只取一次。
// 若反过来让 threadIdx.x 对应行，B 的读取就变成 32 个相隔 N·4 字节的地址，每个线程一次独立事务，慢一个数量级。
//
// 为什么它慢：每个输出读 2K 个 float（A 的一行 + B 的一列），总共 2·M·N·K 次全局内存读取、做 2·M·N·K 次浮点运算——
// 算术强度 ≈ 1 FLOP / 4 字节。H100 的 HBM 约 3 TB/s，fp32 CUDA core 约 60 TFLOP/s：要喂饱算力需要 ~20 FLOP/字节，
// 这个内核被内存带宽卡在 ~0.75 TFLOP/s 的理论上限（实际靠 L1/L2 缓存命中会好一些，但远达不到算力峰值）。
// matmul_tiled.cu 用共享内存把全局读取减少 TILE 倍。
#include "launchers.h"

constexpr int NAIVE_BLOCK = 16;

__global__ void matmul_naive_kernel(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                    int m, int n, int k) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = blockIdx.y * blockDim.y + threadIdx.y;
    // 最后一行 / 一列 block 会越过矩阵边界（M、N 不是 16 的倍数时）：越界线程直接退出。
    // 这里可以提前 return，因为内核里没有 __syncthreads（分块版本就不行，见 matmul_tiled.cu）。
    if (row >= m || col >= n) return;
    float acc = 0.0f;
    // size_t：M·K 超过 2^31 时 int 乘法会溢出
    const float* a_row = a + static_cast<size_t>(row) * k;
    for (int kk = 0; kk < k; ++kk) {
        acc += a_row[kk] * b[static_cast<size_t>(kk) * n + col];
    }
    c[static_cast<size_t>(row) * n + col] = acc;
}

extern "C" cudaError_t launch_matmul_naive(const float* a, const float* b, float* c, int m, int n, int k,
                                           cudaStream_t stream) {
    if (m <= 0 || n <= 0 || k <= 0) return cudaErrorInvalidValue;
    const dim3 block(NAIVE_BLOCK, NAIVE_BLOCK);
    const dim3 grid((n + NAIVE_BLOCK - 1) / NAIVE_BLOCK, (m + NAIVE_BLOCK - 1) / NAIVE_BLOCK);
    if (grid.y > 65535) return cudaErrorInvalidConfiguration;  // grid 的 y 维上限 65535
    matmul_naive_kernel<<<grid, block, 0, stream>>>(a, b, c, m, n, k);
    return cudaGetLastError();
}
