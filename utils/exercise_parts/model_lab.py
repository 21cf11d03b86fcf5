"""练习目录的分册（见 utils/exercise_catalog.py 的说明）：EXERCISES = {仓库相对路径: (Exercise, …)}。

model_lab 的零件（01_components）与 Llama 登记在 utils/exercise_catalog.py；这里是 GPT-2、两种 KV cache 与打包元数据、
采样与生成循环、HF 目录的读写。
"""

from __future__ import annotations

from utils.exercise_catalog import E, Exercise, _in

_T_ML = "tests/model_lab"

# =============================================================================
# 02_architectures/gpt2.py：一个文件写完整的 GPT-2，与 transformers.GPT2LMHeadModel 逐个数值对齐
# =============================================================================
_T_GPT2 = f"{_T_ML}/test_gpt2.py"
GPT2 = (
    E("_new_gelu",
      "形状：x 任意形状 → 同形状同 dtype\n"
      "公式：GELU 的 tanh 近似 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))\n"
      "陷阱：照公式一个算子一个算子写（x³ 用 torch.pow(x, 3.0)），才与 HF 的 NewGELUActivation 逐位相同；"
      "F.gelu(approximate=\"tanh\") 差 1 ulp，F.gelu 默认是精确的 erf 版，不是同一个函数",
      *_in(_T_GPT2, "test_new_gelu_equals_hf_new_gelu_activation_bitwise", "test_logits_match_hf")),
    E("Conv1D.forward",
      "形状：x (..., in)、weight (in, out)、bias (out,) → (..., out)\n"
      "公式：y = b + X W：前导维摊平成二维 X (N, in)，torch.addmm(bias, X, weight) 一次 GEMM 连 bias 一起加，再 view 回 (..., out)\n"
      "陷阱：权重是 TF 留下的 (in, out) 布局，是 x @ W 而不是 nn.Linear 的 x @ Wᵀ；输出最后一维是 weight.size(1)",
      *_in(_T_GPT2, "test_conv1d_equals_hf_conv1d_bitwise", "test_logits_match_hf")),
    E("CausalSelfAttention.forward",
      "形状：x (B, T, C) → (B, T, C)；c_attn(x) 拆成 (B, T, 3, nh, hs) 再 unbind 出 q/k/v；"
      "打包批量（attn_metadata）时 B = 1，用 (N, nh, hs) 的 varlen 布局交给 packed_attention\n"
      "公式：(B, T) 批量：q/k/v 转成 (B, nh, T, hs) → kv_cache.update 拿回整段历史 → 注意力后端（scale = self.scale）→ "
      "转回 (B, T, C) → c_proj → resid_dropout\n"
      "陷阱：只有 mask is None 且 T > 1 时 is_causal=True（解码一步 T = 1 要看见全部 key）；dropout_p 只在 self.training 时生效；"
      "reorder_and_upcast_attn 先经 _maybe_upcast，输出再 .to(x.dtype)",
      *_in(_T_GPT2, "test_logits_match_hf", "test_kv_cache_decoding_equals_full_recomputation",
           "test_attention_and_residual_dropout_equal_hf_eager"),
      f"{_T_ML}/test_packed.py::test_paged_prefill_then_decode_equals_dense_cache_and_hf[gpt2-sdpa]"),
    E("MLP.forward",
      "形状：x (B, T, C) → (B, T, C)，中间 (B, T, inner_dim)\n"
      "公式：dropout(c_proj(act(c_fc(x))))，act 是配置里选的激活（默认 gelu_new）\n"
      "陷阱：dropout 在 c_proj 之后（概率是 resid_pdrop，与 HF 的 GPT2MLP 相同）；激活用 self.act，不要写死某个 GELU",
      *_in(_T_GPT2, "test_logits_match_hf", "test_attention_and_residual_dropout_equal_hf_eager")),
    E("Block.forward",
      "形状：x (B, T, C) → (B, T, C)\n"
      "公式：pre-LN 残差：x = x + attn(ln_1(x), mask, kv_cache, attn_metadata)；x = x + mlp(ln_2(x))\n"
      "陷阱：残差加的是未归一化的 x；LayerNorm 只在支路里，干路上不归一化",
      *_in(_T_GPT2, "test_logits_match_hf", "test_loss_and_all_gradients_match_hf")),
    E("GPT2.reset_parameters",
      "形状：原地初始化全部参数，无返回值\n"
      "公式：Conv1D / Embedding / Linear 的权重 N(0, initializer_range)，Conv1D 的 bias 为 0，LayerNorm 为 (1, 0)；"
      "每层的 attn.c_proj 与 mlp.c_proj 再重抽为 N(0, std/√(2·n_layer))\n"
      "陷阱：残差流 x_L = x_0 + 2·n_layer 条支路之和，方差相加——不缩放这两个输出投影，残差流的方差随深度线性增长；"
      "构造函数就调用它，它没写好之前所有建模型的测试都会停在这里",
      f"{_T_GPT2}::test_init_follows_gpt2_scheme"),
    E("GPT2.flops_per_token",
      "形状：seq_len T、backward → 每个 token 的矩阵乘 FLOPs（int）\n"
      "公式：前向 = 2·N_matmul + 4·n_layer·T·n_embd，N_matmul = lm_head 权重 + 所有 Conv1D 权重的元素数；训练（backward=True）乘 3\n"
      "陷阱：嵌入查表、LayerNorm、bias 不是 GEMM、不算；q·kᵀ 与 p·v 按满 T 算（不因因果掩码减半），与 torch 的 FlopCounterMode 一致",
      f"{_T_GPT2}::test_flops_per_token_matches_torch_flop_counter"),
    E("GPT2.forward_hidden",
      "形状：input_ids (B, T)、position_ids (B 或 1, T) → 最后的隐状态 (B, T, C)（ln_f 之后）\n"
      "公式：x = drop(wte(ids) + wpe(pos))；mask = make_attention_mask(T, past, attention_mask, device)（打包批量时为 None）；"
      "逐层 block(x, mask, kv_cache, attn_metadata)；最后 ln_f\n"
      "陷阱：past 取自稠密缓存的 seq_len（打包批量不用它）；所有层写完缓存之后才 dense_cache.advance(T)，每层前进一次位置就乱了",
      *_in(_T_GPT2, "test_logits_match_hf", "test_kv_cache_decoding_equals_full_recomputation",
           "test_padding_mask_matches_hf")),
)

# =============================================================================
# kv_cache.py：稠密缓存、打包批量的元数据、分页缓存（vLLM 布局）
# =============================================================================
_T_KV = f"{_T_ML}/test_kv_cache.py"
KV_CACHE = (
    E("KVCache.update",
      "形状：layer_idx、新的 k/v (B, H_kv, T, D) → 这一层到目前为止的 (K, V)，各 (B, H_kv, seq_len + T, D)\n"
      "公式：写进预分配缓冲区 self.k/self.v[layer_idx, :, :, seq_len : seq_len + T]，返回 [:seq_len + T] 的视图\n"
      "陷阱：这里不要改 seq_len——同一步里每层都要写到同一段位置，由模型在所有层写完后调一次 advance(T)；不要 torch.cat（每步复制整段历史）",
      f"{_T_KV}::test_dense_cache_update_returns_history_and_advance_moves_position",
      f"{_T_ML}/test_gpt2.py::test_kv_cache_decoding_equals_full_recomputation"),
    E("AttnMetadata.position_ids",
      "形状：→ (1, N) int64，打包批量里每个新 token 在自己序列中的位置\n"
      "公式：第 b 条序列的新 token 从 context_lens[b] − new_lens[b] 数起：start[seq_idx] + (i − cu_seqlens[seq_idx])\n"
      "陷阱：有缓存时新 token 不从 0 开始（前面还有已缓存的上下文）；用 seq_idx 向量化，不要逐条 Python 循环",
      *_in(_T_KV, "test_metadata_positions_last_tokens_and_mask_by_hand", "test_dense_mask_is_block_diagonal_causal")),
    E("AttnMetadata.dense_mask",
      "形状：→ (N, S) bool，S = Σ context_lens（列是各序列的上下文依次排开）\n"
      "公式：key 的序列号 key_seq = repeat_interleave(arange(B), context_lens)，key 在序列内的位置 = 列号 − 该序列上下文的起点；"
      "mask[i, j] = (seq_idx[i] == key_seq[j]) ∧ (key_pos[j] ≤ position_ids[i])\n"
      "陷阱：分块对角且每块内因果；块内位置要减去每条序列上下文的起点（cumsum(ctx) − ctx），不能用全局列号比较",
      *_in(_T_KV, "test_metadata_positions_last_tokens_and_mask_by_hand", "test_dense_mask_is_block_diagonal_causal")),
    E("AttnMetadata.context_slots",
      "形状：block_size → (S,) int64：每条序列的上下文依次在块池（摊平成 num_blocks·block_size 个槽）里的槽号，与 dense_mask 的列对应\n"
      "公式：对上下文里第 pos 个 token：槽号 = block_tables[seq, pos // block_size] · block_size + pos % block_size\n"
      "陷阱：pos 是序列内的位置（列号减去该序列上下文的起点）；block_tables 要转成 long 再做下标；按 block_size 缓存在 __dict__ 里",
      *_in(_T_KV, "test_paged_allocation_slots_tables_and_free_by_hand",
           "test_paged_update_writes_slots_and_packed_fallback_reads_them")),
    E("PagedKVCache.prepare",
      "形状：seq_ids（B 个）、new_lens（B 个正整数）→ AttnMetadata（cu_seqlens、context_lens、slot_mapping (N,)、block_tables (B, max_blocks)）\n"
      "公式：每条序列已有 o 个 token、再来 n 个：需要 ceil((o + n)/block_size) − 已有块数 个新块，从空闲栈 pop；"
      "第 j 个 token（o ≤ j < o + n）的槽号 = blocks[j // bs]·bs + j % bs；block_tables 用 0 补齐到同一宽度\n"
      "陷阱：分配是原子的——先算总共要几个新块，不够就直接报 ValueError（提到 free(seq_id)），什么也不改；重复的 seq_id、new_lens < 1 要报错",
      *_in(_T_KV, "test_paged_allocation_slots_tables_and_free_by_hand", "test_dense_mask_is_block_diagonal_causal")),
    E("PagedKVCache.update",
      "形状：layer_idx、新的 k/v (N, H_kv, D)、slot_mapping (N,) → 这一层的块池 (k_pool, v_pool)，各 (num_blocks, block_size, H_kv, D)\n"
      "公式：把块池 view 成 (num_blocks·block_size, H_kv, D)，按 slot_mapping 做下标赋值写入新 k/v\n"
      "陷阱：要原地写进 self.k / self.v（view 共享存储），不能写进一份副本；返回整个块池，由注意力按 block_tables 去读",
      *_in(_T_KV, "test_paged_update_writes_slots_and_packed_fallback_reads_them"),
      f"{_T_ML}/test_packed.py::test_paged_prefill_then_decode_equals_dense_cache_and_hf"),
)

# =============================================================================
# generation.py：temperature / top-k / top-p 与自回归生成循环（逐条对齐 HF generate）
# =============================================================================
_T_GEN = f"{_T_ML}/test_generation.py"
GENERATION = (
    E("apply_top_k",
      "形状：logits (B, V)、top_k → (B, V)，被过滤的位置为 −inf\n"
      "公式：kth = topk(logits, min(k, V)).values[..., -1:]；masked_fill(logits < kth, −inf)\n"
      "陷阱：与第 k 名并列的全部保留（用 < 判定，不是只留 topk 的下标）；k 大于词表时等于不过滤",
      *_in(_T_GEN, "test_top_k_matches_hf", "test_top_k_keeps_ties_like_hf")),
    E("apply_top_p",
      "形状：logits (B, V)、top_p ∈ (0, 1] → (B, V)，被过滤的位置为 −inf\n"
      "公式：升序排序，cum = cumsum(softmax(sorted))；删掉 cum ≤ 1 − p 的那一段低概率尾巴，再 scatter 回原来的词表位置\n"
      "陷阱：概率最大的那个（升序的最后一个）永远保留；判定式与 HF TopPLogitsWarper 相同（≤ 而不是 <），平局与舍入才逐位一致",
      *_in(_T_GEN, "test_top_p_matches_hf", "test_top_p_keeps_smallest_set_reaching_p"),
      f"{_T_ML}/test_edges_sampling.py::test_top_p_on_exact_boundaries_keeps_k_of_eight"),
    E("process_logits",
      "形状：logits (B, V) → 处理后的 logits (B, V)\n"
      "公式：先 validate_sampling_args；顺序与 HF 相同：logits / temperature → apply_top_k → apply_top_p\n"
      "陷阱：temperature == 0 要报 ValueError（贪心不走这里）；temperature == 1、top_p == 1 时对应步骤直接跳过（HF 也不做）",
      f"{_T_GEN}::test_process_logits_matches_hf_chain"),
    E("sample_next_token",
      "形状：logits (B, V) → 下一个 token (B,) long\n"
      "公式：temperature == 0：argmax；否则 probs = softmax(process_logits(logits.float(), …))，torch.multinomial(probs, 1, generator)\n"
      "陷阱：先在 fp32 里处理（bf16 的累计概率舍入会挪动 top-p 的截断位置）；multinomial 要用传进来的 generator，"
      "同一个种子下才与 HF 抽到同一个 token",
      *_in(_T_GEN, "test_sample_matches_hf_sampling_with_same_generator", "test_temperature_zero_is_greedy",
           "test_top_k_one_is_greedy")),
    E("generation_position_ids",
      "形状：attention_mask (B, L) 或 None、length → (B 或 1, length) 的位置编号\n"
      "公式：没有 mask：arange(length)[None]；有 mask（左侧 padding）：cumsum(mask) − 1，padding 位置填 0\n"
      "陷阱：真实 token 要从每行第一个真实 token 记 0（与 HF generate 相同），不是从第 0 列记 0",
      f"{_T_GEN}::test_generation_position_ids_count_from_the_first_real_token",
      f"{_T_ML}/test_gpt2.py::test_left_padded_batch_generate_matches_hf"),
    E("generate",
      "形状：input_ids (B, T) → (B, T + 生成的长度)，前 T 列就是输入\n"
      "公式：use_cache 时 cache = make_generation_cache(...)，第一步喂整段 prompt（prefill）、之后每步只喂上一步的 1 个 token；"
      "pos = generation_position_ids(mask, 当前总长)[:, −喂入长度:]；h = model.forward_hidden(ids, pos, cache, mask)；"
      "logits = model.lm_head(h[:, −1]).float()；sample_next_token；拼到 seq，mask 右边补 1\n"
      "陷阱：只对最后一个位置做 lm_head；某行生成 eos 后之后都填 pad（没有就填 eos），全部结束提前停；max_new_tokens = 0 直接返回输入",
      *_in(f"{_T_ML}/test_gpt2.py", "test_greedy_generate_matches_hf", "test_generate_eos_padding_and_no_cache_path",
           "test_left_padded_batch_generate_matches_hf")),
)

# =============================================================================
# hf_io.py：Hugging Face 模型目录的读写（所有模型的 from_pretrained / save_pretrained 共用）
# =============================================================================
_T_HFIO = f"{_T_ML}/test_hf_io.py"
HF_IO = (
    E("tied_parameters",
      "形状：model → {别名: 第一次出现的名字}，例如 {\"lm_head.weight\": \"model.embed_tokens.weight\"}\n"
      "公式：遍历 named_parameters(remove_duplicate=False)，按 id(p) 记下第一次出现的名字，后来再遇到同一个对象的就是别名\n"
      "陷阱：默认的 named_parameters() 会去重，共享的那个根本不出现——必须传 remove_duplicate=False；按对象身份比，不是按数值",
      f"{_T_HFIO}::test_tied_parameters_found_for_both_models"),
    E("load_hf_directory",
      "形状：目录（config.json + safetensors）→ eval 模式、装好权重的模型\n"
      "公式：read_hf_config → read_hf_state_dict → rename_keys、丢掉 ignored_suffixes → 在 torch.device(\"meta\") 里 build(raw) → "
      "核对缺失/多余/形状 → 按 device/dtype 转换 → load_state_dict(strict=False, assign=True) → 重新绑定共享权重 → after_load\n"
      "陷阱：assign=True 换掉了主参数对象，别名（lm_head）还指着 meta 上的旧参数，要 setattr 重新绑回去；"
      "dtype 只转浮点张量；缺什么、多什么、哪个形状不对都要在报错里点名",
      *_in(_T_HFIO, "test_weights_first_config_last_and_ties_restored",
           "test_wrong_architecture_and_missing_weights_name_the_problem"),
      f"{_T_ML}/test_gpt2.py::test_we_load_what_hf_saves"),
    E("save_hf_directory",
      "形状：model、save_dir、config（dict）→ save_dir（model.safetensors + config.json）\n"
      "公式：state_dict 去掉 tied_parameters 的别名，detach().contiguous().cpu() 后原子地写 safetensors（metadata={\"format\": \"pt\"}）；"
      "最后原子地写 config.json，并加上权重的 dtype\n"
      "陷阱：config.json 必须最后写（写到一半崩溃时目录里没有 config.json，加载会明确报错而不是读到截断的权重）；"
      "safetensors 不允许两个键共享存储，共享的 lm_head 不写",
      f"{_T_HFIO}::test_weights_first_config_last_and_ties_restored",
      f"{_T_ML}/test_gpt2.py::test_hf_loads_what_we_save"),
)


EXERCISES: dict[str, tuple[Exercise, ...]] = {
    "model_lab/02_architectures/gpt2.py": GPT2,
    "model_lab/kv_cache.py": KV_CACHE,
    "model_lab/generation.py": GENERATION,
    "model_lab/hf_io.py": HF_IO,
}
