"""练习目录的分册（见 utils/exercise_catalog.py 的说明）：EXERCISES = {仓库相对路径: (Exercise, …)}。

量化（inference_engine/quantization/）：RTN 网格、int8 / int4 weight-only、GPTQ、AWQ、SmoothQuant、NF4、KV cache、整模型替换。
测试大多与 torchao / bitsandbytes 逐位对照，所以提示里的"陷阱"多是运算顺序与舍入（乘倒数还是除、在哪个 dtype 里算）。
"""

from __future__ import annotations

from utils.exercise_catalog import E, Exercise, _in

_Q = "inference_engine/quantization"
_TQ = "tests/inference_engine/quantization"

_T_BASICS = f"{_TQ}/test_basics.py"
BASICS = (
    E("choose_qparams",
      "形状：x 浮点；per-tensor → scale/zero 全 1 的 keepdim 形状；axis=a → 除第 a 维外都是 1；group_size=g → (*x.shape[:-1], K/g)；scale fp32、zero int32\n"
      "公式：min⁻ = min(x_min, 0)，max⁺ = max(x_max, 0)；对称 s = max(−min⁻, max⁺) / ((q_max − q_min)/2)、z = 0；非对称 s = (max⁺ − min⁻)/(q_max − q_min)、z = q_min − round(min⁻/s)\n"
      "陷阱：int8 对称的分母是 127.5 不是 127（torchao 的取法）；s 在 x 的 dtype 里算、clamp 到 ≥ fp32 的 eps 之后才转 fp32；用 _grouped 拿到视图与 reduce 维，per-group 最后 squeeze(-1)",
      *_in(_T_BASICS, "test_matches_torchao_affine_primitives", "test_all_zero_group_gets_the_eps_scale",
           "test_clamping_to_the_code_range")),
    E("quantize_with_qparams",
      "形状：x (..., K)，scale/zero 是 choose_qparams 给出的形状 → 码 (..., K)：对称 int8，非对称 uint8\n"
      "公式：q = clamp(round(x · (1/s)) + z, q_min, q_max)；per-group 时 x reshape 成 (..., K/g, g)、scale/zero unsqueeze(-1)\n"
      "陷阱：乘倒数 x·(1/s) 而不是 x/s——最后一位不同时落在 .5 上的元素会 round 到另一个码，与 torchao 就不再逐位相同；组大小用 _broadcast_qparams 从 scale 的形状推出",
      *_in(_T_BASICS, "test_clamping_to_the_code_range", "test_values_on_the_grid_round_trip_exactly",
           "test_matches_torchao_affine_primitives")),
    E("dequantize",
      "形状：codes int8/uint8/int32 (..., K)，scale/zero 同上 → (..., K)，dtype 参数（默认 fp32）\n"
      "公式：x̂ = s · (q − z)，在 fp32 里算，最后转成 dtype；分组方式用 _broadcast_qparams 从 scale 的形状推出\n"
      "陷阱：码先转 fp32 再减 z（uint8 直接相减会回绕）；per-group 要 reshape 成 (..., K/g, g)、scale/zero unsqueeze(-1)，算完还原成 codes 的形状",
      *_in(_T_BASICS, "test_values_on_the_grid_round_trip_exactly", "test_asymmetric_zero_is_exactly_representable",
           "test_error_never_exceeds_half_a_step")),
    E("sqnr",
      "形状：ref、approx 同形状的张量 → Python float（dB）\n"
      "公式：SQNR = 10·log10(Σ ref² / Σ (ref − approx)²)\n"
      "陷阱：先 detach 并转 float64 再求平方和；误差为 0 时返回 float('inf')，不要除以 0",
      *_in(_T_BASICS, "test_sqnr_by_hand", "test_six_db_per_bit_on_uniform_data")),
)

_T_INT8 = f"{_TQ}/test_int8.py"
INT8 = (
    E("quantize_int8_weight",
      "形状：weight (N, K) 浮点 → (码 (N, K) int8, scale (N,) fp32)\n"
      "公式：ŵ_jk = s_j · q_jk，s_j = max_k |W_jk| / 127.5：对称 int8、每个输出通道（行）一个 scale——basics.quantize 已经是 RTN，选对粒度即可\n"
      "陷阱：粒度是 axis=0（每行一组），按列分 scale 就提不到求和号外；先 detach；scale 从 (N, 1) 拍平成 (N,)；不是二维张量报 ValueError",
      *_in(_T_INT8, "test_codes_and_scales_equal_torchao", "test_sqnr_on_gaussian_weight")),
    E("linear_int8_reference",
      "形状：x (M, K) 浮点，qweight (N, K) int8，scales (N,)，bias (N,) 或 None → (M, N)，dtype 同 x\n"
      "公式：y = (x · qᵀ) ⊙ s + b：先用码（转成 x 的 dtype）做矩阵乘，再每个输出列乘 s_j——s_j 提到了求和号外\n"
      "陷阱：scales、bias 也转成 x 的 dtype（bf16 进 bf16 出）；先 matmul 后乘 s，不要先物化浮点权重 q·s（torchao 的 weight-only 也是先乘后缩放）",
      *_in(_T_INT8, "test_bf16_input_path", "test_kernel_is_not_used_when_in_features_is_not_a_multiple_of_16",
           "test_outputs_match_torchao_linear")),
    E("Int8WeightOnlyLinear.forward",
      "形状：x (..., K) 浮点 → (..., N)，dtype 同 x\n"
      "公式：展平成 x2d (M, K)；self.use_kernel(x2d) 为真走 linear_int8_kernel，否则走 linear_int8_reference；再 reshape 回 (..., N)\n"
      "陷阱：先检查 x（浮点、最后一维 = in_features、与 qweight 同设备，否则 ValueError）；M 是展平后的 token 数——内核只在小 M、bf16、K % 16 == 0 时划算（use_kernel 已经判断好）",
      *_in(_T_INT8, "test_outputs_match_torchao_linear", "test_sqnr_on_gaussian_weight",
           "test_state_dict_round_trip_through_safetensors")),
)

_T_INT4 = f"{_TQ}/test_int4.py"
INT4 = (
    E("int4_qparams",
      "形状：weight (N, K)，group_size g，dtype（默认 bf16）→ scales、zeros 都是 (N, K/g)、dtype 为 dtype\n"
      "公式：每组 s = max((max − min)/15, 1e-6)，z = min + 8·s（z 是码 8——网格中点——代表的值，浮点零点）\n"
      "陷阱：在权重的 dtype 里算，z 用还没舍入的 s，最后才把 s、z 各自转成 dtype（顺序一变就与 torchao 差最后一位）；先 _check_weight",
      *_in(_T_INT4, "test_codes_scales_zeros_equal_torchao")),
    E("int4_quantize",
      "形状：weight (N, K)，scales/zeros (N, K/g) → 码 (N, K) uint8（未打包，0..15）\n"
      "公式：w_min = z − 8·s（码 0 代表的值）；q = clamp(round((w − w_min) / s), 0, 15)\n"
      "陷阱：用已经转成 qparams dtype 的 s、z 算 w_min 与码（码与存下的参数自洽）；这里是除以 s（tinygemm 约定），不是乘倒数；先 _check_weight 并核对 scales/zeros 的形状",
      *_in(_T_INT4, "test_codes_scales_zeros_equal_torchao", "test_output_matches_the_cpu_kernel")),
    E("int4_dequantize",
      "形状：codes (N, K) 未打包，scales/zeros (N, K/g) → (N, K)，dtype 参数（默认 fp32）\n"
      "公式：ŵ = (q − 8)·s + z，每组 g 列共用一对 (s, z)\n"
      "陷阱：全程在 fp32 里算（s、z 先转 fp32），只在最后舍入一次到 dtype；码先转浮点再减 8（uint8 会回绕）",
      *_in(_T_INT4, "test_codes_scales_zeros_equal_torchao", "test_dequantized_weight_sqnr_on_gaussian")),
    E("pack_int4",
      "形状：codes (N, K)，值在 0..15 → (N, K/2) uint8\n"
      "公式：byte = q[:, 2i] | (q[:, 2i+1] << 4)：低 4 位放偶数列、高 4 位放奇数列（小端序\"低位在前\"）\n"
      "陷阱：顺序与 _groupwise / bitsandbytes 相反；先检查：列数为奇数报 ValueError（信息含\"偶数\"），码超出 [0, 15] 报 ValueError（信息含\"[0, 15]\"）；移位前转 uint8",
      *_in(_T_INT4, "test_pack_unpack_round_trip_and_nibble_order", "test_state_dict_round_trip_through_safetensors")),
    E("unpack_int4",
      "形状：packed (N, K/2) uint8 → (N, K) uint8\n"
      "公式：每个字节拆成 (b & 0xF, b >> 4)——先低后高，得到列 0, 1, 2, …\n"
      "陷阱：stack 在最后一维再 reshape(N, −1)；用 cat 会把所有偶数列排到前面",
      *_in(_T_INT4, "test_pack_unpack_round_trip_and_nibble_order", "test_output_matches_the_cpu_kernel")),
    E("linear_int4_reference",
      "形状：x (M, K)，qweight (N, K/2) uint8，scales/zeros (N, K/g)，bias (N,) 或 None → (M, N)，dtype 同 x\n"
      "公式：解包 → 反量化成 x 的 dtype 的 (N, K) 权重 → F.linear(x, ŵ, b)\n"
      "陷阱：反量化时直接给 dtype=x.dtype（fp32 里算完只舍入一次），别让 F.linear 混用 dtype；bias 也转成 x 的 dtype",
      *_in(_T_INT4, "test_output_matches_the_cpu_kernel", "test_bf16_kernel_path_and_cache")),
)

_T_GPTQ = f"{_TQ}/test_gptq.py"
GROUPWISE = (
    E("group_qparams",
      "形状：w (..., k)（沿最后一维是一组）→ scale、zero 都是 (...,)，dtype 同 w（调用者传 float64）\n"
      "公式：lo = min(min w, 0)，hi = max(max w, 0)；scale = (hi − lo)/(2^b − 1)，zero = round(−lo/scale)（整数值，以浮点存）\n"
      "陷阱：把 0 包进区间（全正、全负的组里 0 也要精确可表示）；全零的组 span = 0，取 scale = 1（lo = 0 ⇒ zero = 0），不要除以 0",
      *_in(_T_GPTQ, "test_rtn_groupwise_qparams_equal_torchao_asymmetric_and_codes_follow_the_formula",
           "test_rtn_grid_contains_zero_and_error_is_half_step", "test_cholesky_form_equals_naive_obs_elimination")),
    E("quantize_with_qparams",
      "形状：w 与可广播到它的 scale、zero → 与 w 同形状的浮点张量（值是整数）\n"
      "公式：q = clamp(round(w / scale) + zero, 0, 2^b − 1)\n"
      "陷阱：这里除以 scale（GPTQ / AWQ 参考实现的写法）；不要转成整数 dtype——GPTQ 还要拿浮点的 q 算 ŵ = scale·(q − zero)",
      *_in(_T_GPTQ, "test_rtn_groupwise_qparams_equal_torchao_asymmetric_and_codes_follow_the_formula",
           "test_cholesky_form_equals_naive_obs_elimination")),
    E("rtn_groupwise",
      "形状：w (O, I)，bits，group_size（None / −1 = 整行一组）→ codes (O, I) uint8，scales、zeros (O, G) float64\n"
      "公式：gs = resolve_group_size(…)；w 转 float64、reshape 成 (O, G, gs)；group_qparams 得 (O, G)；quantize_with_qparams 时参数 [..., None]\n"
      "陷阱：一定在 float64 里算（H = I 的 GPTQ 要与它逐位相同）；先 detach；码 reshape 回 (O, I) 再转 uint8",
      *_in(_T_GPTQ, "test_rtn_groupwise_qparams_equal_torchao_asymmetric_and_codes_follow_the_formula",
           "test_rtn_grid_contains_zero_and_error_is_half_step", "test_identity_hessian_reduces_exactly_to_rtn")),
    E("dequantize_groupwise",
      "形状：codes (O, I)，scales/zeros (O, G)，group_size → (O, I)，dtype 参数（默认 fp32）\n"
      "公式：ŵ = scale · (q − z)，每组 group_size 列共用 (O, G) 里的一对参数\n"
      "陷阱：码先转 dtype 再减 z（uint8 减法会回绕）；scales/zeros 转成 dtype 后 [..., None] 广播到组内，再 reshape 回 (O, I)",
      *_in(_T_GPTQ, "test_rtn_groupwise_qparams_equal_torchao_asymmetric_and_codes_follow_the_formula",
           "test_rtn_grid_contains_zero_and_error_is_half_step")),
    E("pack_codes",
      "形状：codes (O, I) uint8 → bits ≤ 4 时 (O, I/2) uint8；bits = 8 时原样 (O, I)\n"
      "公式：byte = q[:, 2k] << 4 | q[:, 2k+1]：偶数列在高 4 位、奇数列在低 4 位\n"
      "陷阱：与 int4.py 的 tinygemm 可移植布局相反（那里偶数列在低 4 位）；3 位也按 4 位打包；返回 contiguous 的 uint8",
      *_in(_T_GPTQ, "test_pack_unpack_round_trip_and_nibble_order")),
    E("unpack_codes",
      "形状：packed (O, I/2) uint8 → (O, I) uint8；bits = 8 原样返回\n"
      "公式：每个字节拆成 (b >> 4, b & 0x0F)——先高后低\n"
      "陷阱：stack 在最后一维再 reshape(O, −1)，列才按 0, 1, 2, … 排",
      *_in(_T_GPTQ, "test_pack_unpack_round_trip_and_nibble_order")),
)

GPTQ = (
    E("hessian_from_calibration",
      "形状：calib_inputs (..., in) 或一串这样的批 → (H (in, in) float64, 校准 token 数 N)\n"
      "公式：H = 2 · Σ_批 XᵀX / N，X 是每批展平成的 (n_i, in)\n"
      "陷阱：先用 calibration_batches 整理与检查输入；每批转 float64 再累加（addmm_），最后才除以总的 N——不是每批平均再平均；N = 0 报 ValueError",
      *_in(_T_GPTQ, "test_hessian_is_two_xtx_over_n_accumulated_over_batches")),
    E("_inverse_hessian_cholesky",
      "形状：H (in, in) float64，percdamp → (U (in, in) 上三角，λ)\n"
      "公式：λ = percdamp · mean(diag H)；H + λI = LLᵀ；H⁻¹ = cholesky_inverse(L)；U = cholesky(H⁻¹, upper=True)，于是 UᵀU = (H + λI)⁻¹\n"
      "陷阱：要的是 H⁻¹ 的上三角因子，不是 H 的；先 clone，别原地改调用者的 H；用 cholesky_ex 看 info，失败时报 ValueError 并提示增大 percdamp",
      *_in(_T_GPTQ, "test_inverse_hessian_cholesky_is_the_upper_factor_of_the_damped_inverse",
           "test_cholesky_form_equals_naive_obs_elimination")),
    E("gptq_quantize",
      "形状：weight (O, I)，hessian (I, I) → GPTQResult(codes (O, I) uint8，scales/zeros (O, G) float64，loss，damp)\n"
      "公式：逐列 j：q = Q(w_j)，err = (w_j − ŵ_j)/U_jj，W[:, j:] −= err ⊗ U[j, j:]，loss += ½Σerr²；每块 [i1, i2) 结束时 W[:, i2:] −= Err @ U[i1:i2, i2:]\n"
      "陷阱：全程 float64；死通道（H_jj = 0）把 H_jj 置 1、权重列置 0；组参数在组的第一列用此刻（已吸收补偿）的权重求，组跨出当前块时先补上块内欠的补偿；act_order：静态组（置换前求好参数）、按 diag(H) 降序置换 W 与 H，最后把码换回原顺序",
      *_in(_T_GPTQ, "test_identity_hessian_reduces_exactly_to_rtn", "test_block_size_does_not_change_the_result",
           "test_cholesky_form_equals_naive_obs_elimination", "test_accumulated_loss_equals_quadratic_objective",
           "test_act_order_is_not_worse_when_diag_h_varies", "test_dead_input_channels_give_exact_zero_columns")),
)

_T_AWQ = f"{_TQ}/test_awq.py"
AWQ = (
    E("fake_quantize",
      "形状：weight (O, I)，bits，group_size，max_val (O, G) 或 None → ŵ (O, I) float64\n"
      "公式：reshape 成 (O, G, gs)；给了 max_val 就先截到 [−max_val, max_val]；group_qparams + quantize_with_qparams，ŵ = scale·(q − zero)\n"
      "陷阱：在 float64 里算（α = 0 时要与 rtn_groupwise 逐位相同）；max_val 要 [..., None] 广播到组内",
      *_in(_T_AWQ, "test_fake_quantize_is_rtn_then_dequantize_with_optional_clip",
           "test_grid_is_positively_homogeneous_so_normalizing_s_is_harmless")),
    E("awq_search_scale",
      "形状：weight (O, I)，x (N, I)（这一层的输入）→ AWQSearch(scale (I,) fp32，alpha，alphas，losses)\n"
      "公式：s_x = mean_t |X_tj|（全部 token，float64）；对 α = 0, 1/n, …：s = clamp(s_x^α, 1e-4)，s /= √(max s · min s)；loss = mean((X Wᵀ − X (Q(W·s)/s)ᵀ)²)，取最小者\n"
      "陷阱：loss 在 _subsample(x, max_tokens) 上、fp32 里算；比较用严格小于（并列时保留较小的 α，α = 0 就是 RTN）；给了 alpha 就只试这一个值；组大小先 resolve_group_size",
      *_in(_T_AWQ, "test_search_is_never_worse_than_rtn_on_calibration_tokens", "test_alpha_zero_without_clip_is_rtn_exactly",
           "test_salient_channels_output_error_clearly_below_rtn")),
    E("awq_search_clip",
      "形状：weight (O, I)、x (N, I)（都已经过缩放）→ 每组的截断阈值 max_val (O, G)\n"
      "公式：对 r = 1, 1 − 1/n_grid, …（共 int(max_shrink·n_grid) 个）：max_val = r·max|w_g|；组误差 = mean_t (Σ_k x[t,g,k]·Δw[o,g,k])²；每个 (o, g) 各取误差最小的 r\n"
      "陷阱：每组独立地选（torch.where 逐元素更新最好值，严格小于）；x 先 _subsample 再 reshape 成 (T, G, gs)；按 rows_per_chunk 行分块，避免 (O, T, G) 的误差张量太大",
      *_in(_T_AWQ, "test_clip_search_only_lowers_each_group_error")),
    E("AWQLinear.from_float",
      "形状：nn.Linear (O, I) + calib_inputs (N, I) → AWQLinear（qweight、scales、zeros、bias、input_scale (I,)）\n"
      "公式：search = awq_search_scale(W, X)；W' = W·s（float64）；clip 时 max_val = awq_search_clip(W', X/s)、把 W' 截到 ±max_val；rtn_groupwise(W') → _store；input_scale = s\n"
      "陷阱：先 _check_linear、calibration_batches（拼成一个张量）、check_token_count(min_tokens)；截断搜索用缩放后的输入 X/s；层先 .to(权重的设备) 再 _store；把 search 记到 layer.search",
      *_in(_T_AWQ, "test_alpha_zero_without_clip_is_rtn_exactly", "test_salient_channels_output_error_clearly_below_rtn",
           "test_forward_equals_effective_weight_and_state_dict_round_trip")),
    E("AWQLinear.forward",
      "形状：x (..., I) → (..., O)，dtype 同 x\n"
      "公式：y = (x / s) @ 反量化(Q(W·s))ᵀ + b\n"
      "陷阱：Q(W·s) 用 dequantize_groupwise(self.codes(), …) 得到，不要用 self.dequantize()（它已经除过 s，会除两次）；s、ŵ、bias 都转成 x 的 dtype",
      *_in(_T_AWQ, "test_forward_equals_effective_weight_and_state_dict_round_trip",
           "test_alpha_zero_without_clip_is_rtn_exactly")),
)

_T_SQ = f"{_TQ}/test_smoothquant.py"
SMOOTHQUANT = (
    E("quantize_per_token_int8",
      "形状：x (M, K) → (codes int8 (M, K)，scale fp32 (M, 1))\n"
      "公式：每个 token（行）scale = max_k |x| / 127.5，clamp 到 ≥ fp32 的 eps；q = clamp(round(x · (1/scale)), −128, 127)\n"
      "陷阱：先转 fp32；分母 127.5 不是 127、乘倒数而不是除——否则与 basics.quantize(…, axis=0) 不逐位相同",
      *_in(_T_SQ, "test_per_token_quantizer_equals_basics", "test_forward_is_exactly_the_quantized_product")),
    E("int8_matmul",
      "形状：a (M, K) int8 @ b (K, N) int8 → (M, N) int32；impl ∈ {\"auto\", \"int_mm\", \"float64\"}\n"
      "公式：\"int_mm\" 走 _int_mm_padded（int32 累加）；\"float64\" 转 float64 相乘再转 int32（|部分和| < K·2^14 ≪ 2^53，精确）；\"auto\"：CPU/CUDA 用 int_mm，其他设备用 float64\n"
      "陷阱：不能用 fp32 GEMM（尾数 24 位，K 大时部分和超过 2^24 就丢低位）；b 可能是非连续的转置视图；检查 dtype、形状、impl 与 K ≤ MAX_INT8_MATMUL_K（否则 int32 溢出），不合法报 ValueError",
      *_in(_T_SQ, "test_int8_matmul_exact")),
    E("smoothing_factor",
      "形状：act_absmax (K,)，weight (O, K)，alpha（或 None）→ s (K,) fp32\n"
      "公式：s_j = (max|X_j| + ε)^α / (max_o |W_oj| + ε)^(1−α)，ε = fp32 的 eps；alpha=None 时 s ≡ 1\n"
      "陷阱：W 的第 j 列对应第 j 个输入通道：沿 dim=0 取 absmax；两边都转 fp32；ε 加在取幂之前（全零的通道不出 0 或 inf）",
      *_in(_T_SQ, "test_smoothing_factor_formula", "test_zero_channels_do_not_produce_inf")),
    E("SmoothQuantLinear.from_float",
      "形状：nn.Linear (O, K) + calib_inputs (N, K) → SmoothQuantLinear（weight_codes int8 (O, K)、weight_scales (O,)、smooth (K,)、bias）\n"
      "公式：s = smoothing_factor(max_t |X_t|, W, α)；W' = W·diag(s) 按行（axis=0）对称 int8 量化（basics.quantize）；smooth = s\n"
      "陷阱：先 _check_options 取 alpha（默认 0.5）、检查 nn.Linear、_check_calib；权重转 fp32 并检查有限；在 no_grad 里 copy_ 进 buffer；最后 .to(原权重的设备)",
      *_in(_T_SQ, "test_equals_torchao_smoothquant", "test_smoothing_beats_plain_w8a8_on_outlier_channels",
           "test_zero_channels_do_not_produce_inf")),
    E("SmoothQuantLinear.forward",
      "形状：x (..., K) → (..., O)，dtype 同 x\n"
      "公式：X' = X · (1/s)；(Xq, a) = quantize_per_token_int8(X')；acc = int8_matmul(Xq, Wqᵀ)；y = acc · a_t · w_o + b\n"
      "陷阱：展平成 (M, K) 在 fp32 里算，最后转回 x 的 dtype、reshape 回 (..., O)；乘 1/s 而不是除以 s（与 torchao 逐位相同）；激活 scale 每个 token 动态地算",
      *_in(_T_SQ, "test_equals_torchao_smoothquant", "test_forward_is_exactly_the_quantized_product",
           "test_shapes_dtypes_and_per_token_scales")),
)

_T_NF4 = f"{_TQ}/test_nf4.py"
NF4 = (
    E("nf4_codebook",
      "形状：offset（默认 0.9677083）→ 16 个有序的 fp32，范围 [−1, 1]：7 个负值、精确的 0、8 个正值\n"
      "公式：正半边 Φ⁻¹(linspace(offset, 0.5, 9)[:-1])（8 个），负半边 −Φ⁻¹(linspace(offset, 0.5, 8)[:-1])（7 个），加一个 0，排序后除以最大值\n"
      "陷阱：概率在 fp32 里 linspace、Φ⁻¹（torch.special.ndtri）在 fp64 里算、转 fp32 后再归一化——否则与发布的常数不逐位相同；offset 不在 (0.5, 1) 报 ValueError（信息含 offset）",
      *_in(_T_NF4, "test_codebook_derivation_matches_published_constants")),
    E("dynamic_map_8bit",
      "形状：无输入 → 256 个有序的 fp32（双重量化用的有符号 8 位动态码本）\n"
      "公式：0 与 1，再加 i = 0..6 每一段：把 [0.1, 1] 等分成 2^i 份取每份中点，乘 ±10^(i−6)\n"
      "陷阱：linspace、中点、乘量级都在 fp32 里做（magnitude * 张量），与 bitsandbytes.create_dynamic_map 才逐位相同；最后排序",
      *_in(_T_NF4, "test_codebook_and_dynamic_map_equal_bitsandbytes")),
    E("quantize_blockwise",
      "形状：x 任意形状，code 有序码本，block_size B → (codes (numel,) uint8，absmax (⌈numel/B⌉,) fp32)\n"
      "公式：拉平、补 0 到 B 的倍数、每块 absmax = max|x|；scaled = x · (1/absmax) 截到 [−1, 1]；码 = 码本里最近值的下标（对相邻码的中点 bucketize）\n"
      "陷阱：乘倒数而不是除（与 bitsandbytes 逐位相同）；全零的块 absmax = 0，倒数前 clamp 到极小正数（码落到 0 对应的值）；码截回前 numel 个",
      *_in(_T_NF4, "test_codes_absmax_and_bytes_equal_bitsandbytes", "test_pack_unpack_and_blockwise_helpers")),
    E("dequantize_blockwise",
      "形状：codes (numel,)，absmax (块数,)，code 码本，B → (numel,) fp32\n"
      "公式：x̂ = code[codes] · absmax[块号]\n"
      "陷阱：codes 转 long 再索引；最后一块不满时先补到 B 的倍数再 reshape 乘 absmax，最后截回 numel",
      *_in(_T_NF4, "test_dequantize_and_forward_equal_bitsandbytes", "test_pack_unpack_and_blockwise_helpers")),
    E("pack_4bit",
      "形状：(..., 2m) 个 0..15 的码 → (..., m) uint8\n"
      "公式：byte = q[..., 2i] << 4 | q[..., 2i+1]：偶数下标在高 4 位（bitsandbytes 的顺序）\n"
      "陷阱：最后一维是奇数时报 ValueError（信息含\"偶数\"）；先转 uint8 再移位",
      *_in(_T_NF4, "test_pack_unpack_and_blockwise_helpers", "test_codes_absmax_and_bytes_equal_bitsandbytes")),
    E("unpack_4bit",
      "形状：(..., m) uint8 → (..., 2m) 个码\n"
      "公式：每个字节拆成 (b >> 4, b & 0x0F)——先高后低\n"
      "陷阱：stack 在最后一维再 reshape(*前导维, −1)，前导维保持不变",
      *_in(_T_NF4, "test_pack_unpack_and_blockwise_helpers", "test_codes_absmax_and_bytes_equal_bitsandbytes")),
    E("NF4Linear.from_float",
      "形状：nn.Linear (O, I) → NF4Linear（weight_packed (O, I/2)；absmax，或双重量化时 absmax_codes / absmax_scales / absmax_offset）\n"
      "公式：codes, absmax = quantize_blockwise(W, codebook, block_size)，按行打包；双重量化：offset = mean(absmax)，quantize_blockwise(absmax − offset, dq_code, dq_block_size)\n"
      "陷阱：absmax 全为正，先减均值才能用满有符号的 8 位码；先 _check_options、检查 nn.Linear 与权重有限；no_grad 里 copy_ 进 buffer；最后 .to(原权重的设备)",
      *_in(_T_NF4, "test_codes_absmax_and_bytes_equal_bitsandbytes", "test_double_quant_matches_bitsandbytes_semantics")),
    E("NF4Linear.block_absmax",
      "形状：无输入 → 每块的 absmax (块数,) fp32\n"
      "公式：不做双重量化直接返回 self.absmax；否则 dequantize_blockwise(absmax_codes, absmax_scales, dq_code, dq_block_size) + absmax_offset\n"
      "陷阱：别忘了把减掉的均值加回来；二级块大小是 dq_block_size，不是 block_size",
      *_in(_T_NF4, "test_double_quant_round_trip_error_is_small", "test_double_quant_matches_bitsandbytes_semantics")),
)

_T_KV = f"{_TQ}/test_kv_cache.py"
KV_CACHE = (
    E("quantize_keys_per_channel",
      "形状：k (..., T, D)，T 是 G 的整数倍 → codes uint8 (..., T, D)，scale、kmin (..., T/G, D)\n"
      "公式：每组 G 个 token、每个通道：s = (max − min)/255，q = round((x − min)/s) ∈ [0, 255]\n"
      "陷阱：min/max 沿 token 维（倒数第二维 unflatten 成 (T/G, G)）取，不是沿通道维；整组某通道是常数时 s = 0，除以 1 代替；T 不是 G 的倍数报 ValueError",
      *_in(_T_KV, "test_key_error_within_half_scale_per_channel_group", "test_per_channel_beats_per_token_on_outlier_keys")),
    E("dequantize_keys",
      "形状：codes (..., T, D)，scale/kmin (..., T/G, D) → fp32 (..., T, D)\n"
      "公式：x̂ = min + s·q，组大小 G = T / (T/G)\n"
      "陷阱：scale、kmin 在组内的 G 个 token 上广播（unsqueeze(-2)），再 flatten 回 (..., T, D)；码先转 fp32",
      *_in(_T_KV, "test_key_error_within_half_scale_per_channel_group", "test_lossless_inputs_reproduce_the_fp_cache_exactly")),
    E("quantize_values_per_token",
      "形状：v (..., T, D) → codes int8 (..., T, D)，scale (..., T)\n"
      "公式：每个 token s = max|v| / 127，q = round(v / s) ∈ [−127, 127]\n"
      "陷阱：对称且不用 −128（正负对称）；全零的 token s = 0，除以 1 代替；先转 fp32",
      *_in(_T_KV, "test_value_error_within_half_scale_per_token", "test_per_channel_beats_per_token_on_outlier_keys")),
    E("dequantize_values",
      "形状：codes (..., T, D)，scale (..., T) → fp32 (..., T, D)\n"
      "公式：x̂ = s·q\n"
      "陷阱：scale 要 unsqueeze(-1) 广播到通道维；码先转 fp32",
      *_in(_T_KV, "test_value_error_within_half_scale_per_token", "test_lossless_inputs_reproduce_the_fp_cache_exactly")),
    E("QuantizedKVCache.quantized_len",
      "形状：n（int，前 n 个 token）→ 其中已量化的个数（int）\n"
      "公式：n_q(n) = max(0, ⌊(n − R)/G⌋) · G，R = self.window，G = self.group_size\n"
      "陷阱：n < R 时 (n − R)//G 是负数（Python 向下取整），要 max(0, …)；结果总是 G 的整数倍（窗口留 [R, R+G) 个）",
      *_in(_T_KV, "test_window_boundaries", "test_seq_len_moves_only_inside_the_window")),
    E("QuantizedKVCache.update",
      "形状：layer_idx，k、v (B, H_kv, T, D) → 这一层位置 [0, seq_len + T) 的 (K, V)，模型的 dtype\n"
      "公式：s0 = seq_len，s1 = s0 + T，q0 = n_q(s0)，q1 = n_q(s1)；尾巴 = 旧窗口[:s0 − q0] + 新 token；返回 cat(反量化[0, q0), 尾巴)；尾巴前 q1 − q0 个按组量化进码区，其余写回窗口开头\n"
      "陷阱：先 _check_capacity；不推进 seq_len（advance 才推进）；本次写入的 token 在这次返回里是全精度；组按绝对位置对齐（k_scale 写到 q0/G..q1/G）",
      *_in(_T_KV, "test_window_boundaries", "test_state_does_not_depend_on_how_writes_are_chunked",
           "test_lossless_inputs_reproduce_the_fp_cache_exactly", "test_bf16_cache_keeps_the_models_dtype")),
    E("QuantizedKVCache.read",
      "形状：layer_idx → 位置 [0, seq_len) 的 (K, V)，各 (B, H_kv, seq_len, D)\n"
      "公式：cat(量化区前 num_quantized 个的反量化, 窗口前 seq_len − num_quantized 个)，沿 token 维\n"
      "陷阱：反量化用 _dequantized（转成模型的 dtype）；只读，不改任何状态",
      *_in(_T_KV, "test_window_boundaries", "test_state_does_not_depend_on_how_writes_are_chunked",
           "test_bf16_cache_keeps_the_models_dtype")),
)

_T_APPLY = f"{_TQ}/test_apply.py"
APPLY = (
    E("_as_linear",
      "形状：nn.Linear 原样返回；GPT-2 的 Conv1D（weight (in, out)，y = x @ W + b）→ 权重 (out, in) 的 nn.Linear\n"
      "公式：Linear.weight = Wᵀ（contiguous），bias 不变：x Wᵀ_lin + b = x W + b，同一个函数\n"
      "陷阱：在 meta 设备上建 nn.Linear(in, out) 再换上真实参数（不白分配、不随机初始化一份权重）；参数 detach、requires_grad=False",
      *_in(_T_APPLY, "test_as_linear_turns_conv1d_into_the_same_function",
           "test_gpt2_conv1d_layers_quantize_and_round_trip")),
    E("collect_layer_inputs",
      "形状：model，modules {名字: 模块}，calib_data (B, T) token id → {名字: (B·T, in)}（每批前向里这一层的输入，按批拼接）\n"
      "公式：每个目标挂 forward pre-hook 记下 args[0].reshape(−1, in)；calib_data.split(batch_size) 逐批 model(chunk)；最后 torch.cat\n"
      "陷阱：同一个输入张量（q/k/v 共用）只存一份、只拼一次，返回同一个张量对象；stop_early 时全部目标都触发后抛 _StopForward 并在循环里接住；finally 里摘掉 hook；有目标没被调用报 ValueError",
      *_in(_T_APPLY, "test_collect_layer_inputs_equals_what_each_layer_sees",
           "test_gptq_quantizes_layer_by_layer_and_awq_in_one_pass")),
    E("quantize",
      "形状：model，scheme，calib_data (B, T) 或 None，include/exclude，options → 同一个模型（原地替换、eval 模式）\n"
      "公式：targets = select_linears；不需校准的方案逐层 _replace(_quantize_one(…, None))；需校准的先 _check_calib_data，GPTQ 按 _units 每个解码层 collect_layer_inputs(stop_early=True) 后量化，其余方案一次 collect 全部目标\n"
      "陷阱：GPTQ 第 l 层的输入要由前 l 层已量化的模型算出——每个单元重新收集，不能一开始就收集全部；先 model.eval()；calib 搬到模型的设备；batch_size 不是正整数报 ValueError",
      *_in(_T_APPLY, "test_scheme_close_to_fp_generates_and_round_trips_bit_identically",
           "test_gptq_quantizes_layer_by_layer_and_awq_in_one_pass", "test_include_and_exclude_by_hf_name")),
)

EXERCISES: dict[str, tuple[Exercise, ...]] = {
    f"{_Q}/basics.py": BASICS,
    f"{_Q}/int8.py": INT8,
    f"{_Q}/int4.py": INT4,
    f"{_Q}/_groupwise.py": GROUPWISE,
    f"{_Q}/gptq.py": GPTQ,
    f"{_Q}/awq.py": AWQ,
    f"{_Q}/smoothquant.py": SMOOTHQUANT,
    f"{_Q}/nf4.py": NF4,
    f"{_Q}/kv_cache.py": KV_CACHE,
    f"{_Q}/apply.py": APPLY,
}
