// warp 级与 block 级归约：softmax、RMSNorm、FlashAttention 共用（一个想法只写一处）。
//
// 硬件背景：一个 warp 是 32 个线程，同一条指令一起执行（SIMT）。__shfl_xor_sync(mask, v, offset) 让第 i 号线程
// 直接读到第 (i XOR offset) 号线程寄存器里的 v——不经过共享内存，也不需要 __syncthreads，一条指令、一个周期级的延迟。
//
// 蝶形归约（butterfly）：offset 依次取 16, 8, 4, 2, 1。第一步每个线程与相隔 16 的线程两两合并，
// 之后每个线程手里是 2 个值的结果；再与相隔 8 的合并 → 4 个值……log2(32) = 5 步后，**每个**线程都拿到全部
// 32 个值的归约结果（不像 __shfl_down_sync 的树形归约只有 0 号线程拿到），后面用结果时不必再广播。
//
// block 级归约：先各 warp 内部归约，每个 warp 的 0 号线程把结果写进共享内存 scratch[warp]（最多 1024/32 = 32 个），
// __syncthreads 之后由第 0 个 warp 再做一次 warp 归约，结果写回 scratch[0] 广播给全 block。
#pragma once

#include <cuda_runtime.h>
#include <math.h>

constexpr unsigned FULL_WARP_MASK = 0xffffffffu;  // 32 个线程都参与 shuffle
constexpr int WARP_SIZE = 32;

__device__ __forceinline__ float warp_reduce_max(float v) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(FULL_WARP_MASK, v, offset));
    }
    return v;
}

__device__ __forceinline__ float warp_reduce_sum(float v) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(FULL_WARP_MASK, v, offset);
    }
    return v;
}

// 要求 blockDim.x 是 32 的倍数（≤ 1024），block 内全部线程都调用它（里面有 __syncthreads）。
// scratch 是调用方的 __shared__ float[32]。
template <bool IS_MAX>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int num_warps = blockDim.x / WARP_SIZE;
    v = IS_MAX ? warp_reduce_max(v) : warp_reduce_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        // 多出来的 lane 填归约的单位元：max 的 -inf，sum 的 0
        float w = lane < num_warps ? scratch[lane] : (IS_MAX ? -INFINITY : 0.0f);
        w = IS_MAX ? warp_reduce_max(w) : warp_reduce_sum(w);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    const float result = scratch[0];
    // 第三次同步：下一次归约会改写 scratch[0..]，必须等所有线程都读完这次的结果
    __syncthreads();
    return result;
}

__device__ __forceinline__ float block_reduce_max(float v, float* scratch) { return block_reduce<true>(v, scratch); }
__device__ __forceinline__ float block_reduce_sum(float v, float* scratch) { return block_reduce<false>(v, scratch); }
