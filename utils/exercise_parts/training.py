"""练习目录的分册（见 utils/exercise_catalog.py 的说明）：EXERCISES = {仓库相对路径: (Exercise, …)}。

training_sys/optimization 与 distributed 登记在 utils/exercise_catalog.py；这里是预训练循环本身的几课：
数据（字符编码、随机窗口）、评估的数学（bits/byte、unigram 基线）、训练步（按 token 数归一化的梯度累积、固定窗口的评估、
样例），以及精确续训要的 checkpoint（随机数状态、先写完整目录再改 latest、哈希校验）。
training_sys/strategy.py 是钩子接口（单卡的每个钩子都是一行），不出练习。
"""

from __future__ import annotations

from utils.exercise_catalog import E, Exercise, _in

_T_PRE = "tests/training_sys/test_pretrain.py"
_T_PARTS = "tests/training_sys/test_train_parts.py"
_T_EVAL = "tests/training_sys/test_evaluation.py"

# =============================================================================
# data.py：字符级编码与随机窗口采样
# =============================================================================
DATA = (
    E("char_encode_array",
      "形状：text（str）、chars（排好序的字符表，list[str]）→ 一维 id 数组，len(chars) ≤ 65535 时 uint16，否则 uint32\n"
      "公式：把文本当作 UTF-32 码点数组（np.frombuffer(text.encode(\"utf-32-le\"), uint32)），"
      "在升序的码点表里 np.searchsorted，下标就是 id\n"
      "陷阱：searchsorted 对表里没有的字符也返回一个位置（可能等于 len(chars)）——先 clip 再回查 table[idx] == codes，"
      "不等就报 DataError 并说出是哪个字符；逐字符查字典的 Python 循环慢十倍",
      f"{_T_PRE}::test_char_encode_array_is_the_index_in_the_sorted_charset"),
    E("get_batch",
      "形状：data 一维整数数组（可以是 memmap）、B、T、generator → (x, y)，都是 (B, T) int64，放到 device 上\n"
      "公式：starts = torch.randint(N − T, (B,), generator=generator)；窗口 data[s : s + T + 1] 一次 fancy indexing 取出 (B, T+1)，"
      "x = 前 T 个，y = 后 T 个（右移一位）\n"
      "陷阱：起点 ∈ [0, N − T)（窗口要 T + 1 个 token，N = T + 1 时恰好一个窗口）；N ≤ T 时报 DataError；"
      "只从传进来的 generator 抽一次——它的状态就是“数据读到哪了”，续训靠它",
      *_in(_T_PRE, "test_get_batch_draws_window_starts_from_the_generator_like_nanogpt",
           "test_batches_are_deterministic_windows")),
)

# =============================================================================
# evaluation.py：nats/token 与 bits/byte、两条基线、整个验证集上的评估
# =============================================================================
EVALUATION = (
    E("bits_per_byte",
      "形状：loss（nats/token，float）、每 token 的平均字节数 → bits/byte（float）\n"
      "公式：bpb = loss / ln 2 / bytes_per_token（nats → bits，再从每 token 折算到每字节）\n"
      "陷阱：是除以字节数/token，不是乘；折算之后才与分词器无关、能和字符级模型比较",
      *_in(_T_EVAL, "test_bits_per_byte_of_a_known_loss", "test_unigram_entropy_of_a_known_distribution")),
    E("unigram_log_probs",
      "形状：train 一维 token 数组、vocab_size V → (V,) float64 的 log p(t)\n"
      "公式：加一平滑 p(t) = (count(t) + 1) / (N + V)，count 用 np.bincount(train, minlength=V)\n"
      "陷阱：先用 _check_ids 检查越界 id；minlength=V，训练集里没出现的 token 也要有 1/(N+V) 的概率（否则验证集上是 −log 0）",
      *_in(_T_EVAL, "test_unigram_entropy_of_a_known_distribution", "test_out_of_range_ids_are_a_clear_error")),
    E("unigram_loss",
      "形状：train、targets（一维 token 数组）、V → 交叉熵（nats/token，float）\n"
      "公式：−mean(unigram_log_probs(train, V)[targets])\n"
      "陷阱：targets 也要检查越界；targets 为空时报 ValueError（不是返回 nan）",
      *_in(_T_EVAL, "test_unigram_entropy_of_a_known_distribution", "test_out_of_range_ids_are_a_clear_error")),
    E("evaluate",
      "形状：model((B, T) → logits (B, T, V))、val、train、V、block_size、max_tokens、decode_bytes → 结果 dict"
      "（tokens、bytes_per_token、model/unigram/uniform 的 loss 与 bpb、两个 perplexity）\n"
      "公式：W = min(max_tokens, len(val) − 1) // T 个不重叠窗口，x = val[:W·T]、y = val[1:W·T+1]；"
      "按 batch_size 切批，累加 cross_entropy(reduction=\"sum\")，loss = Σ / (W·T)；bytes_per_token = len(decode_bytes(y)) / (W·T)\n"
      "陷阱：logits 先 .float() 再交叉熵；三行的 bpb 用同一个换算系数（被预测的那些 token 的字节数）；一个窗口都切不出时报 ValueError",
      *_in(_T_EVAL, "test_evaluate_unigram_model_equals_unigram_baseline", "test_evaluate_by_hand_on_tiny_windows")),
)

# =============================================================================
# pretrain.py：训练步的核心（梯度累积）、评估与样例
# =============================================================================
PRETRAIN = (
    E("accumulate_step",
      "形状：fwd_model、micro_batches [(x, y)]（各 (B, T)）、strategy、autocast、sync_model → 这一步的 loss（0 维，已 detach）；梯度累加进 .grad\n"
      "公式：n_k = micro-batch k 里 y ≠ −100 的 token 数，total = strategy.global_tokens(Σ n_k)，denom = total / data_parallel_size；"
      "每个 micro-batch 在 strategy.no_sync(sync_model, last_micro_batch=k 是最后一个) 与 autocast() 里前向，"
      "weighted = loss·n_k/denom，strategy.backward(weighted)；返回 Σ weighted\n"
      "陷阱：不能每份除以 K（n_k 不等时梯度不对）；n_k = 0 的 micro-batch 平均 loss 是 0/0 = NaN，要换成梯度为 0 的反向"
      "（数据并行里每个 micro-batch 都得反向）；total = 0 时报 ValueError",
      *_in(_T_PARTS, "test_accumulation_normalizes_by_valid_tokens", "test_accumulation_with_an_all_masked_micro_batch")),
    E("estimate_loss",
      "形状：model、data、cfg、device、autocast → {\"train\": float, \"val\": float}\n"
      "公式：model.eval()；对 train（种子 cfg.seed + 1）与 val（cfg.seed + 2）各用一个新的 torch.Generator 抽 cfg.eval_iters 个 "
      "get_batch(arr, cfg.batch_size, cfg.block_size, gen, device)，在 autocast() 里取 model(x, y) 的 loss，求平均；最后 model.train()\n"
      "陷阱：每次评估都用同一个种子重新抽（不同步数在同一批窗口上比较）；不能消耗全局随机数或训练的数据 Generator，"
      "否则评估与否会改变训练、续训也不再逐位一致",
      f"{_T_PARTS}::test_estimate_loss_averages_fixed_eval_batches_in_eval_mode"),
    E("sample_text",
      "形状：model、data、cfg、device、temperature、top_k → 生成的文本（str）；不能解码或 sample_tokens = 0 时返回 None\n"
      "公式：从 data.encode(\"\\n\")（为空则 [0]）开始，每步 logits = model(ids[:, −block_size:])[:, −1, :data.vocab_size]，"
      "model_lab.generation.sample_next_token(logits, temperature, top_k, generator) 抽一个拼上；生成器用种子 cfg.seed + 3\n"
      "陷阱：上下文只保留最后 block_size 个（RoPE 没见过更远的位置）；只在数据的词表里抽（模型词表可能补齐过）；"
      "前后切换 eval/train，不碰全局随机数",
      f"{_T_PARTS}::test_samples_are_deterministic_and_crop_the_context",
      f"{_T_PRE}::test_samples_only_ids_the_data_knows_when_the_model_vocab_is_padded"),
)

# =============================================================================
# checkpoint.py：精确续训需要的状态与崩溃安全的提交协议
# =============================================================================
CHECKPOINT = (
    E("capture_rng_state",
      "形状：data_generator → dict：python、numpy、torch_cpu、torch_cuda（没有 CUDA 时是 []）、data 五个随机源的状态\n"
      "公式：random.getstate()、np.random.get_state()、torch.get_rng_state()、torch.cuda.get_rng_state_all()、data_generator.get_state()\n"
      "陷阱：checkpoint 用 torch.load(weights_only=True) 读，里面不能有 numpy 数组——把 numpy 状态的 uint32 键数组转成 int64 张量、"
      "其余转成 int/float；旧式 numpy 缓存了一个正态数（has_gauss、cached_gaussian），也要存",
      f"{_T_PRE}::test_rng_state_capture_and_restore_replay_every_source",
      f"{_T_PRE}::test_resume_is_bit_exact[adamw]"),
    E("restore_rng_state",
      "形状：capture_rng_state 的结果（可能经过 torch.save / torch.load）、data_generator → 无返回值，五个随机源回到保存时的状态\n"
      "公式：random.setstate、np.random.set_state（键数组转回 uint32 的 numpy 数组）、torch.set_rng_state、"
      "有 CUDA 且存了时 torch.cuda.set_rng_state_all、data_generator.set_state\n"
      "陷阱：random.setstate 要嵌套的 tuple（序列化后可能变成 list，用 _as_tuple 转回）；漏掉任何一个源，续训就不再逐位一致",
      f"{_T_PRE}::test_rng_state_capture_and_restore_replay_every_source",
      f"{_T_PRE}::test_resume_is_bit_exact[adamw]"),
    E("save_checkpoint",
      "形状：run_dir、model（有 save_pretrained）、state（至少有 step）、extra_files、keep → 新的 run_dir/step_XXXXXX/\n"
      "公式：model.save_pretrained(新目录) → 原子写 extra_files → torch.save 训练状态（加上 format_version 与权重的 sha256_file）"
      "到 training_state.pt（atomic_path）→ 最后 atomic_write(run_dir/latest, 目录名) → _prune\n"
      "陷阱：latest 是提交点，必须最后写（之前崩溃时 latest 仍指向旧的完整 checkpoint）；目录已存在：是 latest 指向的就报 CheckpointError，"
      "否则是上次崩溃的残骸，整个删掉重写",
      f"{_T_PRE}::test_save_checkpoint_writes_latest_last_and_keeps_the_newest"),
    E("_prune",
      "形状：run_dir、keep、latest（目录名）→ 无返回值，删掉多余的 step_* 目录\n"
      "公式：除 latest 以外的 step_* 目录按名字排序（step 补了 6 位零，字典序就是步数顺序），只留最新的 keep − 1 个\n"
      "陷阱：latest 自己算在 keep 里、永远不删；keep = 1 时其余全删",
      f"{_T_PRE}::test_save_checkpoint_writes_latest_last_and_keeps_the_newest",
      f"{_T_PRE}::test_keeps_exactly_the_last_k_checkpoints"),
    E("load_checkpoint",
      "形状：ckpt_dir → (权重 dict[str, Tensor], 训练状态 dict)\n"
      "公式：两个文件都在 → torch.load(training_state.pt, map_location=\"cpu\", weights_only=True) → 核对 format_version → "
      "sha256_file(model.safetensors) 与记录的相同 → safetensors 的 load_file\n"
      "陷阱：任何问题（缺文件、截断读不出、格式不对、哈希不符）都报 CheckpointError 并说明是哪个文件、怎么办；"
      "只翻转一个字节的权重文件照样读得出来，只有哈希能发现",
      f"{_T_PRE}::test_load_checkpoint_returns_weights_and_state_and_checks_the_hash",
      f"{_T_PRE}::test_resume_from_truncated_checkpoint"),
)


EXERCISES: dict[str, tuple[Exercise, ...]] = {
    "training_sys/data.py": DATA,
    "training_sys/evaluation.py": EVALUATION,
    "training_sys/pretrain.py": PRETRAIN,
    "training_sys/checkpoint.py": CHECKPOINT,
}
