// 共享内存分块矩阵乘：C = A @ B，每个 block 算 C 的一个 TILE × TILE 子块，沿 K 方向每次搬一对 TILE × TILE 的
// A、B 子块进共享内存，block 内所有线程反复使用它们。
//
// 全局内存流量的推导（为什么快 TILE 倍）：
//   朴素版：每个输出元素独立地读 A 的一行、B 的一列 → 读取 2·M·N·K 个 float。
//   分块版：C 的一个 TILE × TILE 子块需要 A 的 TILE 行（TILE × K）和 B 的 TILE 列（K × TILE），每个元素只从全局内存
//           读一次进共享内存，之后被 block 内 TILE 个线程各用一次。子块数 (M/TILE)·(N/TILE)，总读取
//           (M/TILE)·(N/TILE) · 2·TILE·K = 2·M·N·K / TILE。
//   TILE = 32 时全局读取少 32 倍，算术强度从 ~0.25 FLOP/字节升到 ~8 FLOP/字节。（再往上要靠寄存器分块：
//   每个线程算多个输出，Triton 的 matmul 与 cuBLAS 就是这样；这里停在共享内存这一层。）
//
// 线程组织：block = TILE × TILE = 1024 个线程（每个线程一个输出），threadIdx.x 对应列。TILE = 32 时一个 warp
// 恰好是子块的一整行（固定 ty，tx = 0..31）。
//   - 搬运：sA[ty][tx] ← A[row, k0 + tx]、sB[ty][tx] ← B[k0 + ty, col]：一个 warp 读 32 个连续 float，合并访存 ✓。
//   - 共享内存 bank：共享内存分 32 个 bank，每个 4 字节字按地址轮流落到 bank (addr/4) % 32；一个 warp 的 32 个线程
//     若访问同一 bank 的不同地址就要串行（bank conflict）。内层循环里 sA[ty][kk] 全 warp 是同一个地址 → 广播，
//     sB[kk][tx] 是 32 个连续字 → 32 个不同 bank。两者都无冲突，所以这里不需要填充（padding）；
//     需要按列读共享内存时（flash_attention.cu 的 K 子块）才要把行长填成 TILE + 1。
//
// 边界：M、N、K 不是 TILE 的倍数时越界位置填 0（0 对点积没有贡献）。越界线程**不能**提前 return：
// 它们还要参与搬运和 __syncthreads——block 里有线程不到达 __syncthreads 是未定义行为（通常是死锁）。
#include "launchers.h"

constexpr int TILE = 32;

__global__ void matmul_tiled_kernel(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                    int m, int n, int k) {
    __shared__ float sA[TILE][TILE];  // 2 × 32 × 32 × 4 字节 = 8 KB 共享内存
    __shared__ float sB[TILE][TILE];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int row = blockIdx.y * TILE + ty;
    const int col = blockIdx.x * TILE + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < k; k0 += TILE) {
        sA[ty][tx] = (row < m && k0 + tx < k) ? a[static_cast<size_t>(row) * k + k0 + tx] : 0.0f;
        sB[ty][tx] = (k0 + ty < k && col < n) ? b[static_cast<size_t>(k0 + ty) * n + col] : 0.0f;
        __syncthreads();  // 子块搬完，所有线程才能开始读
#pragma unroll
        for (int kk = 0; kk < TILE; ++kk) {
            acc += sA[ty][kk] * sB[kk][tx];
        }
        __syncthreads();  // 所有线程都用完这对子块，下一轮才能覆盖它
    }
    if (row < m && col < n) c[static_cast<size_t>(row) * n + col] = acc;
}

extern "C" cudaError_t launch_matmul_tiled(const float* a, const float* b, float* c, int m, int n, int k,
                                           cudaStream_t stream) {
    if (m <= 0 || n <= 0 || k <= 0) return cudaErrorInvalidValue;
    const dim3 block(TILE, TILE);
    const dim3 grid((n + TILE - 1) / TILE, (m + TILE - 1) / TILE);
    if (grid.y > 65535) return cudaErrorInvalidConfiguration;
    matmul_tiled_kernel<<<grid, block, 0, stream>>>(a, b, c, m, n, k);
    return cudaGetLastError();
}
