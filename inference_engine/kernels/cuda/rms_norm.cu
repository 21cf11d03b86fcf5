// RMSNorm：y[r, j] = x[r, j] / sqrt(mean_j(x[r, j]²) + eps) · w[j]（与 torch.nn.RMSNorm 相同）。
//
// 与 softmax.cu 同一个骨架：一个 block 处理一行，线程按步长 blockDim.x 扫这一行（合并访存），
// 只有一次归约——平方和——用 block_reduce_sum（warp 内 __shfl_xor_sync，再跨 warp 经共享内存）。
// 每行读 x 两次（第二次多半命中 L1/L2）、读 w 一次（所有行共用，常驻 L2）、写 y 一次。
//
// rsqrtf 是硬件的倒数平方根（最大误差 2 ulp），与 torch 的 rsqrt 一致到 fp32 舍入误差量级。
#include "launchers.h"
#include "warp_reduce.cuh"

constexpr int RMS_NORM_MAX_THREADS = 512;

__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                                int cols, float eps) {
    __shared__ float scratch[WARP_SIZE];
    const size_t row = blockIdx.x;
    const float* x_row = x + row * cols;
    float* y_row = y + row * cols;

    float sum_sq = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = x_row[j];
        sum_sq += v * v;
    }
    sum_sq = block_reduce_sum(sum_sq, scratch);
    const float rstd = rsqrtf(sum_sq / static_cast<float>(cols) + eps);

    for (int j = threadIdx.x; j < cols; j += blockDim.x) y_row[j] = x_row[j] * rstd * w[j];
}

extern "C" cudaError_t launch_rms_norm(const float* x, const float* w, float* y, int rows, int cols, float eps,
                                       cudaStream_t stream) {
    if (rows <= 0 || cols <= 0 || !(eps >= 0.0f)) return cudaErrorInvalidValue;
    int threads = (cols + WARP_SIZE - 1) / WARP_SIZE * WARP_SIZE;
    if (threads > RMS_NORM_MAX_THREADS) threads = RMS_NORM_MAX_THREADS;
    rms_norm_kernel<<<rows, threads, 0, stream>>>(x, w, y, cols, eps);
    return cudaGetLastError();
}
