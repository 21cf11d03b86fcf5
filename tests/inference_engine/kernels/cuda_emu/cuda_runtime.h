// 测试用的 CUDA "模拟器"头文件：让 inference_engine/kernels/cuda/*.cu 里的内核**原样**在 CPU 上用 g++ 编译、运行，
// 在没有 GPU 的机器上也能把内核的下标运算、同步与归约逻辑和 PyTorch 对照。
//
// 做法：一个 block 的每个 CUDA 线程是一个 std::thread；__syncthreads 是全 block 的 std::barrier，
// __syncwarp 是每 32 个线程（按 threadIdx 的线性编号分 warp，与硬件相同）的 std::barrier；
// __shfl_xor_sync 经每个 warp 的交换缓冲区实现（写入 → warp 屏障 → 读伙伴的值 → warp 屏障）；
// __shared__ 数组变成函数内 static（block 按顺序一个接一个执行，同一时刻只有一个 block，所以等价于每个 block 一份）；
// 动态共享内存（extern __shared__）指向全局缓冲区 smem。threadIdx / blockIdx 是 thread_local。
// 测试在编译前把 `kernel<<<grid, block, smem, stream>>>(args)` 机械地改写成 emu::launch(grid, block, smem, lambda)。
//
// 能证明的：每个线程算的下标、边界掩码、共享内存的分工、屏障放的位置（少了屏障，线程调度不同就会读到旧数据——
// 这里线程真的并发执行）、warp 归约的结果。证明不了的：GPU 上的速度、bank conflict、合并访存、寄存器用量
// ——那些由 nvcc 的编译测试（ptxas 报告）和 GPU 上的测试负责。
#pragma once

#include <math.h>

#include <algorithm>
#include <barrier>
#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};

typedef int cudaError_t;
typedef void* cudaStream_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
constexpr cudaError_t cudaErrorInvalidConfiguration = 9;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

using std::max;
using std::min;
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

// 动态共享内存：内核里的 `extern __shared__ float smem[];`（测试改写成 `extern float smem[];`）指向这里
alignas(16) float smem[64 * 1024 / sizeof(float)];

namespace emu {
constexpr size_t kSharedBytes = sizeof(smem);
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<float> shuffle_buffer;  // [warps * 32]
inline cudaError_t last_error = cudaSuccess;

inline unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

// 启动一个 grid：block 逐个执行，每个 block 的线程并发执行
inline void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& kernel) {
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || threads % 32 != 0 || shared_bytes > kSharedBytes || grid.x == 0 ||
        grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
        // 模拟器只支持 32 的倍数个线程（这里的内核都是）；其余情况与硬件一样是配置错误
        last_error = cudaErrorInvalidConfiguration;
        return;
    }
    blockDim = block;
    gridDim = grid;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> block_sync(threads);
                block_barrier = &block_sync;
                warp_barriers.clear();
                for (unsigned w = 0; w < threads / 32; ++w) warp_barriers.emplace_back(new std::barrier<>(32));
                shuffle_buffer.assign(threads, 0.0f);
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx)
                            pool.emplace_back([=, &kernel] {
                                threadIdx = {tx, ty, tz};
                                blockIdx = {bx, by, bz};
                                kernel();
                            });
                for (auto& t : pool) t.join();
            }
}
}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barriers[emu::linear_tid() / 32]->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const unsigned t = emu::linear_tid();
    const unsigned base = t / 32 * 32;
    emu::shuffle_buffer[t] = v;
    __syncwarp();
    const float other = emu::shuffle_buffer[base + ((t % 32) ^ static_cast<unsigned>(lane_mask))];
    __syncwarp();  // 伙伴读完之前不许改写缓冲区
    return other;
}
inline cudaError_t cudaGetLastError() {
    const cudaError_t e = emu::last_error;
    emu::last_error = cudaSuccess;
    return e;
}
