// 一个简单的 FlashAttention 前向（fp32）：O = softmax(scale · Q Kᵀ [+ 因果掩码]) V，从不把 T × S 的分数矩阵写进显存。
//
// 朴素注意力先算 S = Q Kᵀ（T × S 个 float 写进 HBM）、再 softmax（读一遍写一遍）、再乘 V（再读一遍）：
// 显存流量 O(T·S)，长序列时它远大于 Q/K/V/O 本身的 O((T + S)·D)。FlashAttention 把 K/V 切成小块流过片上共享内存，
// 用 online softmax 边走边合并，分数矩阵只在共享内存里存在一个 BLOCK_M × BLOCK_N 的小块。
//
// online softmax（与 Triton / PyTorch 分块版本同一个推导）：一行 query 已经看过若干 key 块，维护
//   m = 目前为止的最大分数，l = Σ exp(s - m)，acc = Σ exp(s - m) · v。
// 来了新的一块分数 s_j：m_new = max(m, max_j s_j)，α = exp(m - m_new)（旧的量全部按新的最大值重新缩放），
//   p_j = exp(s_j - m_new)，l ← α·l + Σ_j p_j，acc ← α·acc + Σ_j p_j · v_j。
// 全部 key 走完后 O = acc / l——与先算完整 softmax 再乘 V 在数学上逐项相同。
//
// 线程组织：
//   grid = (ceil(seq_q / BLOCK_M), batch·heads)：每个 block 负责一个 (batch·head, 16 行 query 的小块)。
//   block = 128 个线程 = 4 个 warp。循环 K/V 的每一块（BLOCK_N = 32 个 key）做四步，步与步之间 __syncthreads：
//   1. 搬运：全 block 把 K、V 子块读进共享内存——线性下标 idx → (key c, 维 d = idx % D)，
//      相邻线程读相邻的 d，合并访存。
//   2. 分数：S[r][c] = scale · Σ_d Q[r][d]·K[c][d]。16 × 32 = 512 个分数分给 128 个线程，每个 warp 一次算同一行 r 的
//      32 个 c：Q[r][d] 全 warp 同一地址（广播），K[c][d] 是 32 个相隔一行的地址。
//      **bank conflict**：若 K 子块的行长是 D（64、128 都是 32 的倍数），K[c][d] 的字地址 c·D + d 对 32 取模
//      全都相同 → 32 个线程挤同一个 bank，串行 32 次。把行长填成 D + 1，地址变成 c·(D+1) + d，
//      bank = (c + d) % 32 互不相同 → 无冲突。只多用 BLOCK_N 个 float 的共享内存。
//   3. online softmax：一行 32 个分数正好一个 warp（BLOCK_N == WARP_SIZE 是有意选的），warp w 处理第 w, w+4, … 行：
//      每个 lane 拿一个分数，warp_reduce_max 得块内最大值、warp_reduce_sum 得 Σp（__shfl_xor_sync，不经共享内存），
//      p 写回原位，m、l、α 存进共享内存供第 4 步用。
//   4. 累加：acc ← α·acc + P V。O 子块（16 × D）留在寄存器里：线程 t 负责 O 的线性下标 t, t + 128, …，
//      最多 16 × 128 / 128 = 16 个寄存器。V[c][d] 相邻线程相邻 d → 连续 bank；P[r][c] 广播。
//      这个数组只用编译期常量下标访问（循环全展开），才会留在寄存器而不是被挪到慢的 local memory——
//      测试用 ptxas -v 检查 "0 bytes spill stores"。
//   全部 key 块走完，O = acc / l 写回显存（只写 seq_q 以内的行）。
//
// 因果掩码（左上角对齐，与 SDPA 的 is_causal 相同）：第 i 个 query 只看 key j ≤ i。
//   块级跳过：这个 block 的最后一行是 q_start + BLOCK_M - 1，之后的 key 块整块被掩掉，循环只走到那里——
//   因果注意力因此只做约一半的计算。块内逐元素置 -inf。
// NaN 保护：m 的初值是 -inf；若一整块都被掩掉，m_new 仍是 -inf，exp(-inf - (-inf)) = NaN。
//   所以 m_new == -inf 时令 p = 0、α = 1（这一块什么都不贡献）。实际上每行在第一块就至少看到 key 0，
//   保护只是让内核对任何掩码都不产生 NaN。
//
// 共享内存（动态，按 D 计算）：Q 16·D + K 32·(D+1) + V 32·D + P 16·32 + m/l/α 3·16 个 float；
// D = 128 时 43,328 字节，低于不需要额外申请的 48 KB 上限。
// 这是教学版：一个线程一个分数、没有 Tensor Core、没有流水线化的异步拷贝；FlashAttention-2 / 3 的真正速度来自
// 把 Q Kᵀ 和 P V 交给 mma / wgmma 指令、用 cp.async / TMA 预取下一块——见 Triton 版本与 flash-attn 源码。
#include "launchers.h"
#include "warp_reduce.cuh"

constexpr int FA_BLOCK_M = 16;        // 每个 block 的 query 行数
constexpr int FA_BLOCK_N = WARP_SIZE;  // 每块 key 数：一行分数正好一个 warp
constexpr int FA_THREADS = 128;       // 4 个 warp
constexpr int FA_NUM_WARPS = FA_THREADS / WARP_SIZE;
constexpr int FA_MAX_HEAD_DIM = 128;
constexpr int FA_ACC_PER_THREAD = FA_BLOCK_M * FA_MAX_HEAD_DIM / FA_THREADS;  // 每个线程最多负责的 O 元素数 = 16

__global__ void __launch_bounds__(FA_THREADS)
flash_attention_forward_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                               float* __restrict__ o, int seq_q, int seq_k, int head_dim, float scale, int causal) {
    extern __shared__ float smem[];
    const int D = head_dim;
    const int k_row = D + 1;  // K 子块的行长：+1 的填充消除第 2 步的 bank conflict
    float* sQ = smem;                           // [BLOCK_M][D]
    float* sK = sQ + FA_BLOCK_M * D;            // [BLOCK_N][D + 1]
    float* sV = sK + FA_BLOCK_N * k_row;        // [BLOCK_N][D]
    float* sP = sV + FA_BLOCK_N * D;            // [BLOCK_M][BLOCK_N]：先放分数 S，第 3 步原地换成概率 P
    float* sM = sP + FA_BLOCK_M * FA_BLOCK_N;   // [BLOCK_M] 每行目前的最大分数 m
    float* sL = sM + FA_BLOCK_M;                // [BLOCK_M] 每行目前的 l = Σ exp(s - m)
    float* sAlpha = sL + FA_BLOCK_M;            // [BLOCK_M] 这一块的重缩放系数 α

    const int tid = threadIdx.x;
    const int lane = tid % WARP_SIZE;
    const int warp = tid / WARP_SIZE;
    const int q_start = blockIdx.x * FA_BLOCK_M;
    const size_t bh = blockIdx.y;
    const float* q_bh = q + bh * seq_q * D;
    const float* k_bh = k + bh * seq_k * D;
    const float* v_bh = v + bh * seq_k * D;
    float* o_bh = o + bh * seq_q * D;

    // Q 子块只读一次，整个循环里常驻共享内存；seq_q 以外的行填 0（它们的结果不写回）
    for (int idx = tid; idx < FA_BLOCK_M * D; idx += FA_THREADS) {
        const int qi = q_start + idx / D;
        sQ[idx] = qi < seq_q ? q_bh[static_cast<size_t>(qi) * D + idx % D] : 0.0f;
    }
    if (tid < FA_BLOCK_M) {
        sM[tid] = -INFINITY;
        sL[tid] = 0.0f;
    }
    float acc[FA_ACC_PER_THREAD];
#pragma unroll
    for (int i = 0; i < FA_ACC_PER_THREAD; ++i) acc[i] = 0.0f;
    __syncthreads();

    // 因果时本 block 用不到 q_start + BLOCK_M 及以后的 key
    const int kv_end = causal ? min(seq_k, q_start + FA_BLOCK_M) : seq_k;
    for (int kv_start = 0; kv_start < kv_end; kv_start += FA_BLOCK_N) {
        // 1. 搬运 K、V 子块（seq_k 以外填 0，分数在第 2 步置 -inf）
        for (int idx = tid; idx < FA_BLOCK_N * D; idx += FA_THREADS) {
            const int c = idx / D;
            const int d = idx % D;
            const int kj = kv_start + c;
            const bool in_range = kj < seq_k;
            sK[c * k_row + d] = in_range ? k_bh[static_cast<size_t>(kj) * D + d] : 0.0f;
            sV[idx] = in_range ? v_bh[static_cast<size_t>(kj) * D + d] : 0.0f;
        }
        __syncthreads();

        // 2. 分数 S = scale · Q Kᵀ，越界与被因果掩掉的位置为 -inf
        for (int idx = tid; idx < FA_BLOCK_M * FA_BLOCK_N; idx += FA_THREADS) {
            const int r = idx / FA_BLOCK_N;
            const int c = idx % FA_BLOCK_N;
            const int kj = kv_start + c;
            float s = -INFINITY;
            if (kj < seq_k && !(causal && kj > q_start + r)) {
                float dot = 0.0f;
                for (int d = 0; d < D; ++d) dot += sQ[r * D + d] * sK[c * k_row + d];
                s = dot * scale;
            }
            sP[idx] = s;
        }
        __syncthreads();

        // 3. online softmax：一个 warp 一行，lane c 持有分数 S[r][c]
        for (int r = warp; r < FA_BLOCK_M; r += FA_NUM_WARPS) {
            const float s = sP[r * FA_BLOCK_N + lane];
            const float m_old = sM[r];
            const float m_new = fmaxf(m_old, warp_reduce_max(s));
            const float p = m_new == -INFINITY ? 0.0f : expf(s - m_new);
            const float p_sum = warp_reduce_sum(p);
            const float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
            sP[r * FA_BLOCK_N + lane] = p;
            __syncwarp();  // 全部 lane 读完 sM[r] 之后，lane 0 才改写它
            if (lane == 0) {
                sM[r] = m_new;
                sL[r] = alpha * sL[r] + p_sum;
                sAlpha[r] = alpha;
            }
        }
        __syncthreads();

        // 4. acc ← α·acc + P V（acc 只用常量下标 i，全展开后留在寄存器）
#pragma unroll
        for (int i = 0; i < FA_ACC_PER_THREAD; ++i) {
            const int idx = tid + i * FA_THREADS;
            if (idx < FA_BLOCK_M * D) {
                const int r = idx / D;
                const int d = idx % D;
                float pv = 0.0f;
#pragma unroll 8
                for (int c = 0; c < FA_BLOCK_N; ++c) pv += sP[r * FA_BLOCK_N + c] * sV[c * D + d];
                acc[i] = acc[i] * sAlpha[r] + pv;
            }
        }
        __syncthreads();  // 下一轮要覆盖 sK / sV / sP
    }

    // O = acc / l，只写 seq_q 以内的行；相邻线程写相邻的 d，合并访存
#pragma unroll
    for (int i = 0; i < FA_ACC_PER_THREAD; ++i) {
        const int idx = tid + i * FA_THREADS;
        if (idx < FA_BLOCK_M * D) {
            const int qi = q_start + idx / D;
            if (qi < seq_q) o_bh[static_cast<size_t>(qi) * D + idx % D] = acc[i] / sL[idx / D];
        }
    }
}

extern "C" cudaError_t launch_flash_attention_forward(const float* q, const float* k, const float* v, float* o,
                                                      int batch_heads, int seq_q, int seq_k, int head_dim, float scale,
                                                      int causal, cudaStream_t stream) {
    if (batch_heads <= 0 || seq_q <= 0 || seq_k <= 0 || head_dim <= 0 || head_dim > FA_MAX_HEAD_DIM) {
        return cudaErrorInvalidValue;
    }
    if (batch_heads > 65535) return cudaErrorInvalidConfiguration;  // grid 的 y 维上限
    const size_t smem_floats = static_cast<size_t>(FA_BLOCK_M) * head_dim + FA_BLOCK_N * (head_dim + 1) +
                               FA_BLOCK_N * head_dim + FA_BLOCK_M * FA_BLOCK_N + 3 * FA_BLOCK_M;
    const dim3 grid((seq_q + FA_BLOCK_M - 1) / FA_BLOCK_M, batch_heads);
    flash_attention_forward_kernel<<<grid, FA_THREADS, smem_floats * sizeof(float), stream>>>(
        q, k, v, o, seq_q, seq_k, head_dim, scale, causal);
    return cudaGetLastError();
}
