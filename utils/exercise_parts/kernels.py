"""练习目录的分册（见 utils/exercise_catalog.py 的说明）：EXERCISES = {仓库相对路径: (Exercise, …)}。

inference_engine/kernels 里 vector_add、softmax、rmsnorm、rope、swiglu 五个内核登记在 utils/exercise_catalog.py
（KERNEL_*）；这里是其余的课：交叉熵、矩阵乘、FlashAttention（纯 PyTorch 与 Triton）、分页注意力。
Triton 内核（@triton.jit 函数）的函数体同样可以是练习：没有 GPU 时测试在 Triton 解释器里跑，桩里的
NotImplementedError 照常抛出。
"""

from __future__ import annotations

from utils.exercise_catalog import E, Exercise, _in

_T_K = "tests/inference_engine/kernels"

# =============================================================================
# cross_entropy.py：一次扫描算 loss 与梯度；分块的 lm_head + 交叉熵
# =============================================================================
_T_CE = f"{_T_K}/test_cross_entropy.py"
KERNEL_CROSS_ENTROPY = (
    E("_cross_entropy_kernel",
      "形状：一个 program 一行：logits 行 (V,)、目标 t → loss[row]（fp32）；COMPUTE_GRAD 时再写梯度行 (V,)（可以就是 logits 本身）\n"
      "公式：第一遍按 BLOCK_V 在线 logsumexp：m' = max(m, max(块))，d ← d·exp(m − m') + Σexp(x − m')；ℓ = log d − (x_t − m)；"
      "第二遍 grad_j = (exp(x_j − m)/d − [j = t])·grad_scale\n"
      "陷阱：x_t 要在第二遍就地覆盖之前读出；target == ignore_index 的行 loss 写 0、梯度写 0；行偏移用 int64；越界列读成 −inf",
      *_in(_T_CE, "test_launcher_in_place_grad_equals_separate_buffer", "test_online_logsumexp_keeps_running_max_across_blocks",
           "test_cross_entropy_loss_and_grad_match_torch")),
    E("CrossEntropyFunction.forward",
      "形状：logits (N, V)、targets (N,) → fp32 标量 loss；ctx 存前向就算好的梯度 (N, V)（compute_grad 为 False 时存 None）\n"
      "公式：n_valid = count_valid_targets(...)；grad = empty_like(logits)，cross_entropy_forward(..., grad=grad, "
      "grad_scale=1/max(n_valid, 1))；loss = Σ 行 loss / n_valid\n"
      "陷阱：全部被忽略时 loss 必须是 0/0 = NaN（与 F.cross_entropy 相同），梯度却是有限的 0——所以只有 grad_scale 用 max(n_valid, 1)；"
      "不要把梯度写进调用方的 logits",
      *_in(_T_CE, "test_cross_entropy_loss_and_grad_match_torch", "test_cross_entropy_all_ignored_is_nan_with_zero_grads_like_torch",
           "test_cross_entropy_without_grad", "test_cross_entropy_scales_by_upstream_grad_and_backward_twice")),
    E("default_chunk_size",
      "形状：(N, C, V) → 每块的行数 int\n"
      "公式：rows = max(1, N·C // V)，chunk = 不超过 rows 的最大 2 的幂（一块 logits ≤ hidden 的大小），再夹到 [MIN_CHUNK, N]\n"
      "陷阱：先取下限 64 再取上限 N（N < 64 时就是 N），结果至少为 1；V = 32000、C = 4096、N = 16384 应得 2048",
      f"{_T_CE}::test_default_chunk_size"),
    E("LinearCrossEntropyFunction.forward",
      "形状：hidden (N, C)、weight (V, C)、targets (N,) → fp32 标量；ctx 存 d hidden (N, C) 与 d weight (V, C)（不需要的存 None）\n"
      "公式：按 chunk_size 行一块：logits_c = h_c Wᵀ；cross_entropy_forward(logits_c, …, grad=logits_c) 就地变成 d logits_c；"
      "d h_c = d logits_c · W，d W += d logits_cᵀ · h_c\n"
      "陷阱：完整的 (N, V) logits 一次也不能出现；d W 在 fp32 累加器里跨块累加、最后转回 W 的 dtype；grad_scale 用全局的 1/n_valid，不是每块的",
      *_in(_T_CE, "test_linear_cross_entropy_matches_torch", "test_linear_cross_entropy_never_materializes_full_logits",
           "test_linear_cross_entropy_partial_requires_grad", "test_linear_cross_entropy_all_ignored")),
)

# =============================================================================
# matmul.py：分块矩阵乘（GROUP_M 的 program 顺序、任意步长、autograd）
# =============================================================================
_T_MM = f"{_T_K}/test_matmul.py"
KERNEL_MATMUL = (
    E("_grouped_tile",
      "形状：pid（标量或向量）、num_pid_m、num_pid_n → (pid_m, pid_n)，逐元素成立\n"
      "公式：一组 = GROUP_M 个行块 × 全部列块：group = pid // (GROUP_M·n_n)，local = pid % (GROUP_M·n_n)，"
      "pid_m = group·GROUP_M + local % 组内行数，pid_n = local // 组内行数\n"
      "陷阱：最后一组可能不满：组内行数 = min(n_m − group·GROUP_M, GROUP_M)；组内是列优先（连续的 pid 先竖着走）",
      *_in(_T_MM, "test_tile_order_is_grouped_and_a_bijection", "test_panels_per_wave_follow_the_derivation")),
    E("_matmul_kernel",
      "形状：一个 program 算 C 的一个 BLOCK_M×BLOCK_N 块；A[i, k] 在 a_ptr + i·stride_am + k·stride_ak（B、C 同理），bias (N,) 可选\n"
      "公式：(pid_m, pid_n) = _grouped_tile(...)；acc (fp32) 沿 K 循环 acc = tl.dot(a, b, acc, input_precision=\"ieee\")，"
      "指针每步前移 BLOCK_K·stride_k；HAS_BIAS 时 acc += bias，再转成 C 的 dtype 写回\n"
      "陷阱：边缘块在 M、N、K 三个方向都要掩码（越界读 0、不写）；块起点 pid·BLOCK 先转 int64 再乘步长；不用 ieee 会走 TF32，误差 1e-3",
      *_in(_T_MM, "test_matches_torch_matmul_fp32", "test_masks_never_let_memory_outside_the_view_in",
           "test_strided_inputs_read_in_place")),
    E("MatmulFunction.backward",
      "形状：dc (M, N) → (dA (M, K) 或 None, dB (K, N) 或 None, dbias (N,) 或 None)\n"
      "公式：dA = dC·Bᵀ，dB = Aᵀ·dC，dbias = Σ_行 dC；两个矩阵乘都用同一个 _launch，喂转置视图（交换步长，不拷贝）\n"
      "陷阱：只算 ctx.needs_input_grad 要的；B 是 Wᵀ 这种列优先视图时算 (dCᵀ·A)ᵀ，让 dB 与 B 同布局（W.grad 连续）；dc 可能是步长 0 的 expand",
      *_in(_T_MM, "test_batched_input_and_gradients_match_torch", "test_triton_linear_matches_F_linear",
           "test_backward_with_expanded_upstream_gradient")),
)

# =============================================================================
# flash_attention_torch.py：FlashAttention-2 的算法，纯 PyTorch 分块
# =============================================================================
_T_FAT = f"{_T_K}/test_flash_attention_torch.py"
FLASH_ATTENTION_TORCH = (
    E("key_block_range",
      "形状：query 块 [i0, i1)、key 数 S → 需要扫的 key 上界（不含）int\n"
      "公式：非 causal 是 S；causal（右下角对齐，query i 看 j ≤ i + offset，offset = S − T）时块里最后一个 query 看到 i1 − 1 + offset，"
      "上界 = i1 + offset，夹到 [0, S]\n"
      "陷阱：T > S 时 offset < 0，上界可能为负，要夹到 0；用块里最后一个 query 而不是第一个",
      f"{_T_FAT}::test_block_ranges_bottom_right"),
    E("query_block_start",
      "形状：key 块起点 j0、block_q → 反向里要扫的第一个 query 块的起点 int\n"
      "公式：causal 时看得到 key j0 的 query 满足 i ≥ j0 − offset，起点 = max(0, j0 − offset) 向下取整到 block_q 的倍数；非 causal 是 0\n"
      "陷阱：要取整到块边界（这一块里只有一部分行看得到，交给掩码处理）",
      f"{_T_FAT}::test_block_ranges_bottom_right"),
    E("_flash_forward",
      "形状：q (B, H, T, D)、k/v (B, H_kv, S, D) → (O (B, H, T, D) 同 q 的 dtype, lse (B, H, T) fp32)\n"
      "公式：q 视作 (B, H_kv, G, T, D)；每个 query 块维护 m、l、acc，逐个 key 块：m' = max(m, rowmax s)，α = exp(m − m')，"
      "l = α·l + Σexp(s − m')，acc = α·acc + exp(s − m')V；O = acc/l，lse = m + log l\n"
      "陷阱：到目前为止整行被遮住时 m' = −inf，exp(−inf − (−inf)) = NaN：基准换成 0；一个 key 都看不到的行输出 0；causal 用 key_block_range 跳过整块",
      *_in(_T_FAT, "test_forward_alone_output_and_logsumexp_match_reference", "test_saves_exactly_output_and_logsumexp")),
    E("_flash_backward",
      "形状：dO、q、O (B, H, T, D)，k/v (B, H_kv, S, D)，lse (B, H, T) → (dq, dk, dv)，在 lse 的 dtype（fp32/fp64）里\n"
      "公式：Δ = rowsum(dO ∘ O)；外层 key 块、内层 query 块：P = exp(s − lse)，dV += Pᵀ dO，dP = dO Vᵀ，dS = P ∘ (dP − Δ)，"
      "dQ += dS K·scale，dK += dSᵀ Q·scale\n"
      "陷阱：lse = −inf 的空行先换成 +inf，P 才是 0 而不是 NaN；GQA 时组内 G 个 query 头的 dK、dV 加到同一个 KV 头上；"
      "causal 从 query_block_start 开始扫",
      *_in(_T_FAT, "test_gradcheck_float64", "test_gqa_matches_sdpa_enable_gqa", "test_cross_lengths_causal_is_bottom_right")),
)

# =============================================================================
# flash_attention.py：FlashAttention-2 的 Triton 内核（前向 + 两个反向内核）
# =============================================================================
_T_FA = f"{_T_K}/test_flash_attention.py"
KERNEL_FLASH_ATTENTION = (
    E("_fwd_inner",
      "形状：acc (BM, D) fp32、l/m (BM,)、q (BM, D)；扫 key 块 [lo, hi)，每块 k、v (BN, D) → 更新后的 (acc, l, m)\n"
      "公式：s = q kᵀ·qk_scale（已乘 log2 e）；m' = max(m, rowmax s)，α = exp2(m − m')，p = exp2(s − m')，l = α·l + Σp，acc = α·acc + p·V\n"
      "陷阱：MASKED 时越界列（≥ seqlen_k）与因果不可见的 j > i + diag 置 −inf；越界的 k/v 行读 0；p 先转成 v 的 dtype 再 tl.dot",
      f"{_T_FA}::test_forward_alone_output_and_logsumexp"),
    E("_flash_fwd_kernel",
      "形状：grid (⌈T/BM⌉, B·H)：一个 program 一个 (b, h, Q 块)，读第 h // group 个 KV 头，写 O 块 (BM, D) 与 lse (BM,)\n"
      "公式：diag = S − T；因果时 full_hi = max(min(S, m0 + diag + 1), 0) 向下取整到 BN（无掩码段），masked_hi = min(S, m0 + BM + diag)（之后整块跳过）；"
      "O = acc/l，lse = (m + log2 l)/log2 e\n"
      "陷阱：m 的初值用 −1e30 而不是 −inf（整行被掩时不出 NaN）；l = 0 的行输出 0、lse = +inf；变长时 m0 ≥ 本条序列长度的 program 直接返回",
      *_in(_T_FA, "test_forward_alone_output_and_logsumexp", "test_saves_only_output_and_logsumexp")),
    E("_bwd_preprocess_kernel",
      "形状：O、dO 的一块 (BM, D) → Δ (BM,) fp32，写进与 lse 同布局的 DELTA\n"
      "公式：Δ_i = Σ_d dO_id·O_id（= Σ_j P_ij·dP_ij，softmax 雅可比里的行和）\n"
      "陷阱：先转 fp32 再乘加；越界行不写；变长时行号要加上序列起点 q_start",
      *_in(_T_FA, "test_length_not_a_multiple_of_the_block", "test_varlen_matches_per_sequence_sdpa")),
    E("_bwd_dkdv_inner",
      "形状：一个 K/V 块 k、v (BN, D)；扫 query 块 [lo, hi) → 累加 dk、dv (BN, D) fp32\n"
      "公式：转置着算：Pᵀ = exp2(K Qᵀ·qk_scale − lse·log2 e)；dV += Pᵀ dO；dPᵀ = V dOᵀ；dSᵀ = Pᵀ ∘ (dPᵀ − Δ)；dK += dSᵀ Q（scale 在外面最后乘）\n"
      "陷阱：因果掩码用 tl.where 置 0 而不是乘 0——被掩位置的 exp2 可能溢出成 inf，inf·0 = NaN；越界 query 行读 0，贡献恰好为 0",
      *_in(_T_FA, "test_dense_matches_sdpa", "test_length_not_a_multiple_of_the_block",
           "test_causal_bottom_right_with_fewer_queries_than_keys")),
    E("_flash_bwd_dkdv_kernel",
      "形状：grid (⌈S/BN⌉, B·H_kv)：一个 program 一个 K/V 块，写 dK、dV 块 (BN, D)\n"
      "公式：因果：lo = max(n0 − diag, 0) 向下取整到 BM（更早的 Q 块看不到本块），full_lo = ⌈max(n0 + BN − 1 − diag, 0)/BM⌉·BM；"
      "[lo, min(full_lo, T)) 带掩码、[full_lo, T) 不带；GQA：program 内循环组里的 G 个 query 头\n"
      "陷阱：dK 最后乘 scale；组内求和在寄存器里做、不用原子加（反向要逐位可复现）；越界的 key 行读 0 且不写回",
      *_in(_T_FA, "test_gqa_sums_kv_grads_over_the_group", "test_causal_bottom_right_with_fewer_queries_than_keys",
           "test_causal_rows_without_keys_are_zero", "test_backward_is_deterministic")),
    E("_bwd_dq_inner",
      "形状：一个 Q 块 q、dO (BM, D)，lse2（以 2 为底）、Δ (BM,)；扫 key 块 [lo, hi) → 累加 dq (BM, D) fp32\n"
      "公式：P = exp2(q Kᵀ·qk_scale − lse2)；dP = dO Vᵀ；dS = P ∘ (dP − Δ)；dq += dS K（scale 在外面最后乘）\n"
      "陷阱：MASKED 时越界列与 j > i + diag 的 P 用 tl.where 置 0；越界的 k、v 行读 0",
      *_in(_T_FA, "test_dense_matches_sdpa", "test_causal_bottom_right_with_fewer_queries_than_keys",
           "test_causal_rows_without_keys_are_zero")),
)

# =============================================================================
# paged_attention.py：块池 + block table 的注意力（vLLM 布局）
# =============================================================================
_T_PA = f"{_T_K}/test_paged_attention.py"
KERNEL_PAGED_ATTENTION = (
    E("paged_attention_reference",
      "形状：q (N, H, D) 打包的新 token，k/v_cache (num_blocks, block_size, H_kv, D)，cu_seqlens_q (B+1,)、context_lens (B,)、"
      "block_tables (B, max_blocks) → (N, H, D)\n"
      "公式：逐条序列：pos = arange(Lk)，槽号 = block_tables[b, pos // bs]·bs + pos % bs，从 k_cache.flatten(0, 1) 取出 (Lk, H_kv, D)，"
      "再 SDPA（enable_gqa），掩码 ones(Lq, Lk).tril(Lk − Lq)\n"
      "陷阱：右下角对齐——第 i 个新 token 在位置 Lk − Lq + i（不是 SDPA 的 is_causal）；页表只有前 ⌈Lk/bs⌉ 列有意义",
      f"{_T_PA}::test_module_reference_matches_position_by_position_gather"),
    E("_paged_attention_kernel",
      "形状：grid (⌈max Lq/BLOCK_M⌉, B, H_kv)；tile 的第 r 行 = 第 r // GROUP_P 个 token 的第 r % GROUP_P 个头：q (ROWS, D) → 同形状的输出\n"
      "公式：上下文位置 n：page = block_tables[b, n // block_size]，K/V 行在 k_cache[page, n % block_size, kvh]；"
      "可见 n ≤ tok + Lk − Lq；之后是 exp2 的在线 softmax（qk_scale 已乘 log2 e），out = acc/l\n"
      "陷阱：page 先转 int64 再乘步长；n ≥ Lk 的位置不读页表（那几列可能是 −1）；m 初值 −1e30；padding 的头（grp ≥ G）、token 与 head_dim 列不写回",
      *_in(_T_PA, "test_decode_matches_gather_reference", "test_chunked_prefill_matches_gather_reference",
           "test_odd_shapes_and_several_query_blocks")),
)


EXERCISES: dict[str, tuple[Exercise, ...]] = {
    "inference_engine/kernels/cross_entropy.py": KERNEL_CROSS_ENTROPY,
    "inference_engine/kernels/matmul.py": KERNEL_MATMUL,
    "inference_engine/kernels/flash_attention_torch.py": FLASH_ATTENTION_TORCH,
    "inference_engine/kernels/flash_attention.py": KERNEL_FLASH_ATTENTION,
    "inference_engine/kernels/paged_attention.py": KERNEL_PAGED_ATTENTION,
}
