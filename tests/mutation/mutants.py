"""变异体清单（数据）：每一条是一个现实中会写出来的单行 bug，以及应该抓到它的测试。

original 必须在 file 里恰好出现一次（带上足够的上下文）；代码重构后 `python -m tests.mutation --check`
会指出哪些条目失效（stale），按新代码改写 original / replacement 即可，不要删掉变异体了事。
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    description: str


ROPE, RMSNORM, SWIGLU = (f"model_lab/01_components/{n}.py" for n in ("rope", "rmsnorm", "swiglu"))
LLAMA, GPT2 = "model_lab/02_architectures/llama.py", "model_lab/02_architectures/gpt2.py"
GENERATION, BACKENDS = "model_lab/generation.py", "model_lab/attention_backends.py"
OPT = "training_sys/optimization"
TOK = "data_pipeline/tokenization"

T_ROPE, T_RMSNORM, T_SWIGLU = "tests/model_lab/test_rope.py", "tests/model_lab/test_rmsnorm.py", "tests/model_lab/test_swiglu.py"
T_LLAMA = ("tests/model_lab/test_llama.py", "tests/model_lab/test_edges_attention.py",
           "tests/model_lab/test_edges_bitwise.py")
T_GPT2 = ("tests/model_lab/test_gpt2.py", "tests/model_lab/test_edges_attention.py",
          "tests/model_lab/test_edges_bitwise.py")
T_GEN = ("tests/model_lab/test_generation.py", "tests/model_lab/test_edges_sampling.py")
T_ADAMW = ("tests/training_sys/optimization/test_adamw.py", "tests/training_sys/optimization/test_edges_adamw.py")
T_TOKENIZER = ("tests/data_pipeline/test_tokenization.py", "tests/data_pipeline/test_tokenization_cache.py",
               "tests/data_pipeline/test_bpe_ties.py")
T_BPE = ("tests/data_pipeline/test_bpe_ties.py", "tests/data_pipeline/test_tokenization.py",
         "tests/data_pipeline/test_tokenization_basic.py")
T_PRETRAIN = ("tests/training_sys/test_pretrain.py", "tests/training_sys/test_train_parts.py")
T_ATTN = ("tests/model_lab/test_edges_attention.py", "tests/model_lab/test_edges_bitwise.py",
          "tests/model_lab/test_llama.py", "tests/model_lab/test_gpt2.py")

MUTANTS: list[Mutant] = [
    # ---- model_lab/01_components：课程里的组件 ----
    Mutant("rope_rotate_half_sign", ROPE,
           "return torch.cat((-x2, x1), dim=-1)", "return torch.cat((x2, -x1), dim=-1)",
           (T_ROPE,), "rotate_half 转了 −90°（RoPE 方向反了）"),
    Mutant("rope_inv_freq_offset", ROPE,
           "return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))",
           "return 1.0 / (theta ** (torch.arange(1, head_dim, 2, dtype=torch.float32) / head_dim))",
           (T_ROPE,), "频率指数从 1 开始：θ_i = base^{-(2i+1)/D}"),
    Mutant("rope_llama3_band_flipped", ROPE,
           "out = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)",
           "out = torch.where(wavelen < low_freq_wavelen, inv_freq / factor, inv_freq)",
           (T_ROPE,), "llama3 缩放把高频而不是低频除以 factor"),
    Mutant("rope_interleaved_sign", ROPE,
           "return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)",
           "return torch.stack((a * c + b * s, b * c - a * s), dim=-1).flatten(-2)",
           (T_ROPE,), "交错布局的复数乘法用了共轭（转 −θ）"),
    Mutant("rmsnorm_eps_outside_rsqrt", RMSNORM,
           "x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)",
           "x = x * (torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) + self.eps)",
           (T_RMSNORM,), "RMSNorm 的 ε 加在 rsqrt 外面"),
    Mutant("rmsnorm_weight_before_cast", RMSNORM,
           "return self.weight * x.to(input_dtype)  # 先转回输入 dtype 再乘 γ（Llama 的约定）",
           "return (self.weight * x).to(input_dtype)",
           (T_RMSNORM,), "先乘 γ 再转回 bf16（与 HF 的舍入顺序不同）"),
    Mutant("layernorm_uncentered_variance", RMSNORM,
           "var = (x - mean).pow(2).mean(-1, keepdim=True)  # 第二个归约（有偏方差）",
           "var = x.pow(2).mean(-1, keepdim=True)",
           (T_RMSNORM,), "LayerNorm 的方差没有减均值"),
    Mutant("swiglu_gate_up_swapped", SWIGLU,
           "return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))",
           "return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))",
           (T_SWIGLU,), "SwiGLU 的激活函数套在 up_proj 上（gate/up 接反）"),
    Mutant("swiglu_hidden_rounds_down", SWIGLU,
           "return multiple_of * math.ceil(hidden / multiple_of)",
           "return multiple_of * (hidden // multiple_of)",
           (T_SWIGLU,), "Llama 的 FFN 宽度向下而不是向上取到 multiple_of 的倍数"),
    # ---- training_sys/optimization ----
    Mutant("adamw_eps_inside_sqrt", f"{OPT}/adamw.py",
           "denom = (second.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)",
           "denom = (second + eps).sqrt() / math.sqrt(1 - beta2**step)",
           T_ADAMW, "AdamW 单张量路径：ε 放进根号 sqrt(v̂ + ε)"),
    Mutant("adamw_eps_before_bias_correction", f"{OPT}/adamw.py",
           "        torch._foreach_div_(denom, bc2_sqrt)\n        torch._foreach_add_(denom, eps)",
           "        torch._foreach_add_(denom, eps)\n        torch._foreach_div_(denom, bc2_sqrt)",
           T_ADAMW, "AdamW foreach 路径：ε 加在偏差修正之前 (sqrt(v)+ε)/sqrt(1−β2^t)"),
    Mutant("adamw_no_first_moment_correction", f"{OPT}/adamw.py",
           "step_size = lr / (1 - beta1**step)", "step_size = lr",
           T_ADAMW, "AdamW 漏了一阶矩的偏差修正"),
    Mutant("adamw_decay_ignores_lr", f"{OPT}/adamw.py",
           "param.mul_(1 - lr * weight_decay)", "param.mul_(1 - weight_decay)",
           T_ADAMW, "解耦权重衰减没乘学习率"),
    Mutant("clip_coef_min_instead_of_max", f"{OPT}/clipping.py",
           "clip_coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)",
           "clip_coef = torch.clamp(max_norm / (total_norm + 1e-6), min=1.0)",
           ("tests/training_sys/optimization/test_clipping.py",), "梯度裁剪把小梯度放大而不是把大梯度缩小"),
    Mutant("clip_ignores_norm_type", f"{OPT}/clipping.py",
           "norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]",
           "norms = [torch.linalg.vector_norm(g, 2.0) for g in grads]",
           ("tests/training_sys/optimization/test_clipping.py",), "逐参数范数总用 2-范数，忽略 norm_type"),
    Mutant("cosine_half_period", f"{OPT}/schedules.py",
           "cosine = 0.5 * (1.0 + math.cos(math.pi * 2.0 * self.num_cycles * progress))",
           "cosine = 0.5 * (1.0 + math.cos(math.pi * self.num_cycles * progress))",
           ("tests/training_sys/optimization/test_schedules.py",), "余弦调度只走了半个周期（降到 0.5 而不是 0）"),
    Mutant("warmup_off_by_one", f"{OPT}/schedules.py",
           "return step / max(1, warmup_steps)", "return (step + 1) / max(1, warmup_steps)",
           ("tests/training_sys/optimization/test_schedules.py",), "线性预热差一步（f(0) ≠ 0）"),
    Mutant("wsd_warmup_ignores_min_lr", f"{OPT}/schedules.py",
           "return _warmup(step, self.warmup_steps) * (1.0 - lo) + lo",
           "return _warmup(step, self.warmup_steps)",
           ("tests/training_sys/optimization/test_schedules.py",), "WSD 预热从 0 而不是从 min_lr 开始"),
    Mutant("cross_entropy_mean_counts_ignored", f"{OPT}/cross_entropy_loss.py",
           "return loss.sum() / valid.sum()", "return loss.mean()",
           ("tests/training_sys/optimization/test_cross_entropy.py",), "mean 把 ignore_index 的位置也算进分母"),
    Mutant("cross_entropy_z_loss_grad", f"{OPT}/cross_entropy_loss.py",
           "grad.mul_(1.0 + 2.0 * z * (m + log_s)[:, None])", "grad.mul_(1.0 + z * (m + log_s)[:, None])",
           ("tests/training_sys/optimization/test_cross_entropy.py",), "z-loss 的梯度漏了因子 2"),
    Mutant("cross_entropy_smoothing_grad", f"{OPT}/cross_entropy_loss.py",
           "grad.sub_(eps / logits.shape[-1])", "grad.sub_(eps)",
           ("tests/training_sys/optimization/test_cross_entropy.py",), "label smoothing 的梯度没除以类别数"),
    # ---- training_sys：checkpoint、数据 ----
    Mutant("checkpoint_keeps_one_too_many", "training_sys/checkpoint.py",
           "for p in old[:max(0, len(old) - (keep - 1))]:", "for p in old[:max(0, len(old) - keep)]:",
           T_PRETRAIN, "checkpoint 轮换多留了一个旧目录（keep 没把最新的那个算进去）"),
    Mutant("checkpoint_skips_sha_check", "training_sys/checkpoint.py",
           'if sha256_file(weights) != state["weights_sha256"]:', "if False:",
           T_PRETRAIN, "加载 checkpoint 时不校验权重的 SHA-256"),
    Mutant("get_batch_targets_not_shifted", "training_sys/data.py",
           "x, y = xy[:, :-1], xy[:, 1:]  # (B, T)", "x, y = xy[:, 1:], xy[:, :-1]  # (B, T)",
           T_PRETRAIN, "get_batch 的 x / y 对调（模型学着预测上一个 token）"),
    # ---- data_pipeline ----
    Mutant("bpe_fast_prefix_tie", f"{TOK}/fast_train.py",
           "return tuple(255 - c for c in token) + (256,)", "return tuple(255 - c for c in token)",
           T_BPE, "快速训练器的逆序键漏了终止符：前缀平局时选了较短的 token"),
    Mutant("bpe_fast_neighbour_count", f"{TOK}/fast_train.py",
           "pair_counts[(b, right)] -= f", "pair_counts[(b, right)] -= 1",
           T_BPE, "增量更新右邻 pair 时减 1 而不是减词频"),
    Mutant("bpe_naive_tie_concatenated", f"{TOK}/regex_bpe.py",
           "key=lambda p: (pair_counts[p], vocab[p[0]], vocab[p[1]])",
           "key=lambda p: (pair_counts[p], vocab[p[0]] + vocab[p[1]])",
           T_BPE, "朴素训练器平局时比较拼接后的字节而不是 bytes 元组"),
    Mutant("bpe_basic_tie_by_ids", f"{TOK}/basic.py",
           "return max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))",
           "return max(counts, key=lambda p: (counts[p], p))",
           T_BPE, "第 1 课的训练器平局时比较 id 而不是字节"),
    Mutant("bpe_basic_overlapping_merge", f"{TOK}/basic.py",
           "            out.append(new_id)\n            i += 2",
           "            out.append(new_id)\n            i += 1",
           T_BPE, "合并时不跳过第二个元素（'aaa' 的重叠 pair 被合并两次）"),
    Mutant("tokenizer_stale_right_rank", f"{TOK}/tokenizer.py",
           "            if i < len(ranks):\n                ranks[i] = get((new, parts[i + 1]), never)",
           "            if i + 1 < len(ranks):\n                ranks[i] = get((new, parts[i + 1]), never)",
           T_TOKENIZER, "编码时合并后不更新右边 pair 的 rank（在词尾附近）"),
    Mutant("corpus_split_truncates", "data_pipeline/corpora.py",
           "n_val = round(n * val_fraction)", "n_val = int(n * val_fraction)",
           ("tests/data_pipeline/test_corpora.py",), "train_val_split 的验证集长度向下取整而不是四舍五入"),
    Mutant("corpus_clean_line_keeps_spaces", "data_pipeline/corpora.py",
           'return " ".join(line.split())  # 去掉行尾硬换行的两个空格、删提示后留下的多余空格',
           "return line.strip()",
           ("tests/data_pipeline/test_corpora.py",), "清洗台词时不合并删掉舞台提示后留下的连续空格"),
    # ---- 正在重构的文件（llama / gpt2 / generation / attention_backends / pretrain / speedrun）：
    #      原文按这次重构之后的代码写的，它们最可能先变成 stale ----
    Mutant("attn_mask_no_nan_guard", BACKENDS,
           "return mask | ~mask.any(dim=-1, keepdim=True)", "return mask",
           T_ATTN, "去掉全被掩码的行的兜底：左 padding 的 padding 行在 eager 上 softmax 得到 NaN"),
    Mutant("eager_scales_q_before_matmul", BACKENDS,
           "scores = torch.matmul(q, k.transpose(-2, -1)) * scale", "scores = torch.matmul(q * scale, k.transpose(-2, -1))",
           T_ATTN, "eager 注意力先把 q 乘 scale 再做矩阵乘（bf16 下与 HF 的舍入不同）"),
    Mutant("repeat_kv_tiles_heads", BACKENDS,
           "return x[:, :, None].expand(b, h_kv, n_rep, s, d).reshape(b, h_kv * n_rep, s, d)",
           "return x.repeat(1, n_rep, 1, 1)",
           T_ATTN, "GQA 复制 KV 头时整组平铺（kv0,kv1,kv0,kv1）而不是逐个重复（kv0,kv0,kv1,kv1）"),
    Mutant("llama_bf16_rope_minus_theta", LLAMA,
           "return torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)",
           "return torch.stack((x0 * cos + x1 * sin, x1 * cos - x0 * sin), dim=-1).flatten(-2)",
           T_LLAMA, "Llama 的 bf16/fp16 RoPE 分支转了 −θ"),
    Mutant("llama_rmsnorm_weight_before_cast", LLAMA,
           "return self.weight * x.to(dtype)", "return (self.weight * x).to(dtype)",
           T_LLAMA, "Llama 的 RMSNorm 先乘 γ 再转回 bf16（与 HF 的舍入顺序不同）"),
    Mutant("llama_residual_init_unscaled", LLAMA,
           "residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)",
           "residual_std = std / math.sqrt(self.config.num_hidden_layers)",
           T_LLAMA, "残差投影的初始化按 sqrt(L) 而不是 sqrt(2L) 缩小"),
    Mutant("gpt2_gelu_constant", GPT2,
           "(x + 0.044715 * torch.pow(x, 3.0))", "(x + 0.0447 * torch.pow(x, 3.0))",
           T_GPT2, "GPT-2 的 tanh-GELU 常数写成 0.0447"),
    Mutant("gpt2_inverse_layer_idx_off_by_one", GPT2,
           "self.scale /= float(layer_idx + 1)", "self.scale /= float(max(layer_idx, 1))",
           T_GPT2, "scale_attn_by_inverse_layer_idx 的层号从 0 数"),
    Mutant("top_p_strict_less", GENERATION,
           "remove_sorted = cum_probs <= (1 - top_p)", "remove_sorted = cum_probs < (1 - top_p)",
           T_GEN, "top-p 在累计概率恰好等于 1 − p 时多保留一个 token（HF 用 <=）"),
    Mutant("sampling_skips_fp32_upcast", GENERATION,
           "logits = process_logits(logits.float(), temperature, top_k, top_p)",
           "logits = process_logits(logits, temperature, top_k, top_p)",
           T_GEN, "bf16 logits 不升到 fp32 就过滤和采样"),
    Mutant("top_k_drops_ties", GENERATION,
           "return logits.masked_fill(logits < kth_value, float(\"-inf\"))",
           "return logits.masked_fill(logits <= kth_value, float(\"-inf\"))",
           T_GEN, "top-k 把第 k 名（及与它并列的）也删掉"),
    Mutant("accumulation_weights_uniform", "training_sys/pretrain.py",
           "weighted = loss if n == denom else loss * (n / denom)", "weighted = loss / len(micro_batches)",
           T_PRETRAIN, "梯度累积每个 micro-batch 除以 K，而不是按有效 token 数加权"),
    Mutant("speedrun_vocab_cap", "training_sys/speedrun.py",
           "return int(min(32768, max(512, 2 ** round(math.log2(max(n_bytes, 1) / 2000)))))",
           "return int(min(65536, max(512, 2 ** round(math.log2(max(n_bytes, 1) / 2000)))))",
           ("tests/training_sys/test_speedrun.py",), "自动词表大小的上限写成 65536"),
]
