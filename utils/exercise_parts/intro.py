"""练习目录的分册（见 utils/exercise_catalog.py 的说明）：EXERCISES = {仓库相对路径: (Exercise, …)}。

入门课里 utils/exercise_catalog.py 还没登记的四个文件：numpy 张量自动微分引擎（各算子的反向规则与拓扑序反向传播）、
字符级 LSTM 语言模型（截断 BPTT）、编码器–解码器 Transformer（注意力、两种 LN 放法、贪心解码）、Kaggle 式实验
（分层 k 折、交叉验证、PyTorch 表格 MLP）。新写的判分测试在 tests/archive/test_exercises_intro.py，每个只考一个函数。
"""

from __future__ import annotations

from utils.exercise_catalog import E, Exercise, _in

_INTRO = "archive/Introductory learning"
_T = "tests/archive/test_exercises_intro.py"

# =============================================================================
# 02_MLP/02_tensor_autograd.py：numpy 张量自动微分引擎
# =============================================================================
_T_TA = "tests/archive/test_intro_mlp_tensor_autograd.py"
TENSOR_AUTOGRAD = (
    E("_unbroadcast",
      "形状：grad（广播后的形状）、目标 shape → 形状恰为 shape 的数组\n"
      "公式：广播 = 一个元素被多处使用，梯度要把各处加起来：先把多出来的前导维 sum 掉，再对原来是 1 的维 sum(keepdims=True)\n"
      "陷阱：原来是 1 的维要保留（keepdims），不能 squeeze 掉；原来就是 0 维（标量）时要把全部维度加掉",
      f"{_T}::test_autograd_unbroadcast_matches_torch_expand_backward"),
    E("Tensor.__mul__",
      "形状：self、other（先 _lift 成 Tensor）两个可广播的形状 → 广播后的形状\n"
      "公式：前向 a ⊙ b；反向 self 收到 g ⊙ b，other 收到 g ⊙ a（用 _accumulate，它会 _unbroadcast 缩回各自的形状）\n"
      "陷阱：先用 broadcast_shape 检查形状；反向闭包里用前向时的 a、b 数据（不是梯度）；用 _make 建节点",
      f"{_T}::test_autograd_mul_with_broadcasting_matches_torch",
      *_in(_T_TA, "test_reflected_ops_with_numbers_and_ndarrays", "test_binary_ops_with_broadcasting")),
    E("Tensor.__matmul__",
      "形状：A (..., m, k) @ B (..., k, n) → (..., m, n)；一维的 A (k,) 看成 (1, k)、B (k,) 看成 (k, 1)\n"
      "公式：dA = G Bᵀ，dB = Aᵀ G（转置最后两维）；batch 维按广播处理，结果再 _unbroadcast、reshape 回输入的形状\n"
      "陷阱：一维输入时输出少了一维，反向要先在 G 里补回那一维；0 维输入和 k 不匹配要报 ValueError",
      f"{_T_TA}::test_matmul_batched_and_vector_cases"),
    E("Tensor.sum",
      "形状：x (...)、axis（None / int / 元组，可负）、keepdims → 去掉（或保留为 1）这些轴的形状\n"
      "公式：y = Σ_i x_i ⇒ ∂y/∂x_i = 1：反向把 g 沿被求和的轴复制回去（np.broadcast_to 到 x 的形状）\n"
      "陷阱：keepdims=False 时先 np.expand_dims(g, axes) 把被求和的轴补回为 1 再广播；轴号先用 _normalize_axes 规整",
      f"{_T_TA}::test_sum_and_mean_over_axes"),
    E("Tensor.__getitem__",
      "形状：x[idx]（切片、整数数组、Tensor 下标都行）→ 取出的形状\n"
      "公式：反向是散射：建一个与 x 同形的 0 数组，把 g 加回被取到的位置\n"
      "陷阱：重复下标（x[[0, 0, 2]]）要累加，用 np.add.at(full, idx, g)；full[idx] += g 遇到重复下标只加一次",
      f"{_T_TA}::test_fancy_indexing_with_repeated_indices_accumulates"),
    E("Tensor.softmax",
      "形状：x (...)、axis → 同形状，沿 axis 和为 1\n"
      "公式：s = exp(x − max) / Σ exp(x − max)；反向 dx = s ⊙ (g − Σ_j g_j s_j)（Jacobian diag(s) − s sᵀ 乘 g）\n"
      "陷阱：先减沿 axis 的最大值（keepdims=True）防溢出；反向里的求和也沿同一个 axis、keepdims",
      f"{_T}::test_autograd_softmax_family_matches_torch[softmax]"),
    E("Tensor.log_softmax",
      "形状：x (...)、axis → 同形状\n"
      "公式：y = x − max − log Σ exp(x − max)；反向 dx = g − softmax(x) · Σ_j g_j\n"
      "陷阱：不要写成 log(softmax(x))——概率下溢成 0 时得到 −inf；反向里乘的是 softmax（exp(y)），不是 y",
      *_in(_T, "test_autograd_softmax_family_matches_torch[log_softmax]"),
      f"{_T_TA}::test_cross_entropy_matches_pytorch"),
    E("Tensor.backward",
      "形状：从本张量出发（标量时 grad 默认为 1；非标量不给同形的 grad 就报 RuntimeError），把 .grad 填到所有需要梯度的祖先\n"
      "公式：后序 DFS 得到拓扑序；中间节点的 grad 清零、叶子的 grad 累加；self.grad = grad，按逆拓扑序调用每个节点的 _backward(node.grad)\n"
      "陷阱：用显式栈（几千层的链会撞上递归上限）；每个节点只访问一次，且要等它所有的使用者都反向完才调用它的 _backward",
      *_in(_T, "test_autograd_backward_on_a_deep_chain_and_a_diamond"),
      f"{_T_TA}::test_leaf_grads_accumulate_across_backward_calls_like_pytorch"),
)

# =============================================================================
# 03_Transformer/02_char_lstm_lm.py：字符级 LSTM 语言模型与截断 BPTT
# =============================================================================
_T_RNN = "tests/archive/test_intro_transformer_rnn.py"
CHAR_LSTM_LM = (
    E("batchify",
      "形状：data (N,) long、batch_size B → (B, N // B)，第 b 行是语料里连续的第 b 段\n"
      "公式：n = N // B，丢掉除不尽的尾巴，data[: n·B].view(B, n)\n"
      "陷阱：是 view(B, n) 不是 view(n, B)（后者每行是跳着取的字符，隐状态没法“接着读”）；n < 2 时报 ValueError",
      f"{_T_RNN}::test_batchify_makes_contiguous_streams"),
    E("CharLSTM.forward",
      "形状：idx (B, T) long、state None 或 (h, c) 各 (num_layers, B, H) → (logits (B, T, V), (h, c))\n"
      "公式：embed → self.lstm(…, state)（batch_first）→ head，逐位置输出下一个字符的 logits\n"
      "陷阱：把 LSTM 返回的新状态一起返回（下一块要接着用）；idx 不是 2 维时报 ValueError",
      f"{_T}::test_char_lstm_forward_is_embed_lstm_head_and_carries_state"),
    E("train_step",
      "形状：streams (B, N)、起点 pos、块长 bptt、上一块的 state → (loss: float, 新 state)\n"
      "公式：x = streams[:, pos : pos+bptt]，目标 y 右移一位 streams[:, pos+1 : pos+1+bptt]；交叉熵 → backward → clip_grad_norm_(clip) → step\n"
      "陷阱：返回的状态要 detach（截断 BPTT：否则下一块的 backward 会穿回这一块）；先 zero_grad；loss 用 .item() 返回",
      *_in(_T, "test_char_lstm_train_step_shifts_targets_clips_and_updates"),
      f"{_T_RNN}::test_truncated_bptt_state_is_detached_and_carried"),
    E("evaluate",
      "形状：streams (B, N)、bptt、max_blocks → 平均每字符 NLL（float，nat）\n"
      "公式：按顺序每次读 bptt 个字符（最后一块可以短），状态跨块传递；Σ cross_entropy(reduction='sum') / 目标总数\n"
      "陷阱：目标只到 N − 1（最后一个字符没有下一个）；用 sum 再除以总数，不是各块均值的均值；eval() 进、train() 出",
      f"{_T}::test_char_lstm_evaluate_equals_one_pass_over_each_stream"),
    E("sample",
      "形状：prompt str、length、temperature > 0、generator → prompt + length 个新字符的 str\n"
      "公式：先把 prompt 整段读进隐状态；每步 probs = softmax(logits[:, -1] / temperature)，torch.multinomial(probs, 1, generator=…)\n"
      "陷阱：之后每步只喂新抽到的那个字符和状态（不要重新喂整个前缀）；temperature ≤ 0 报 ValueError；结束时恢复 train()",
      f"{_T}::test_char_lstm_sample_matches_recomputing_the_whole_prefix"),
)

# =============================================================================
# 03_Transformer/05_transformer_seq2seq.py：编码器–解码器 Transformer
# =============================================================================
_T_S2S = "tests/archive/test_intro_transformer_seq2seq.py"
TRANSFORMER_SEQ2SEQ = (
    E("MultiheadAttention.forward",
      "形状：query (B, L, E)、key = value (B, S, E)、attn_mask (L, S)、key_padding_mask (B, S) → (B, L, E)（need_weights 时再加权重 (B, h, L, S)）\n"
      "公式：in_proj_weight 按 [E, 2E] 切出 q 与 kv 投影；拆头 (B, h, T, d)；softmax(q kᵀ/√d + mask) v；拼回 (B, L, E) 过 out_proj\n"
      "陷阱：mask 先用 to_additive_mask（布尔 True = 禁止 → −inf）；padding mask 广播成 [:, None, None, :]；整行被禁止时报 ValueError",
      f"{_T}::test_seq2seq_multihead_attention_matches_nn_with_masks_and_weights"),
    E("EncoderLayer.forward",
      "形状：src (B, S, E)（batch_first=False 时 (S, B, E)，先经 self._check 转成 (B, S, E)）→ 同形状\n"
      "公式：pre-LN（norm_first）：x = x + SA(LN₁(x))，x = x + FF(LN₂(x))；post-LN：x = LN₁(x + SA(x))，x = LN₂(x + FF(x))\n"
      "陷阱：SA 用 self._sa（带 dropout），FF 用 self._ff；最后按 batch_first 转回输入的布局",
      *_in(_T, "test_seq2seq_encoder_layer_matches_nn_outputs_and_grads"),
      f"{_T_S2S}::test_dropout_is_active_in_train_mode_only"),
    E("DecoderLayer.forward",
      "形状：tgt (B, T, E)、memory (B, S, E)（或 seq-first）→ 与 tgt 同形状\n"
      "公式：三个子层：带 tgt_mask 的自注意力 → 交叉注意力（Q 来自解码器，K/V = memory，用 memory_mask 与 memory_key_padding_mask）→ FFN；pre-LN / post-LN 同编码器，三个 LN 依次 norm1、norm2、norm3\n"
      "陷阱：交叉注意力用 self.multihead_attn，不是 self_attn；tgt 与 memory 的 batch 不同要报 ValueError",
      *_in(_T_S2S, "test_decoder_layer_with_all_masks_float_and_bool", "test_layers_match_torch")),
    E("causal_mask",
      "形状：T → (T, T) bool\n"
      "公式：上三角（不含对角线）为 True：M[i, j] = j > i，即 ones(T, T).triu(1)\n"
      "陷阱：nn.Transformer 的约定是 True = 禁止（与“True = 可见”的 tril 写法相反）；对角线自己可见",
      f"{_T_S2S}::test_causal_mask_blocks_future"),
    E("make_batch",
      "形状：→ src、tgt_in、tgt_out 各 (B, max_len + 1) long，右侧补 PAD\n"
      "公式：长度 L ~ U{min_len..max_len}；src = 数字 + EOS；tgt_in = BOS + 反转（teacher forcing 的输入）；tgt_out = 反转 + EOS（右移一位的目标）\n"
      "陷阱：反转只反有效的前 L 位（PAD 不参与）；数字 token 是 N_SPECIAL..N_SPECIAL+9；min_len ≤ 0 或 > max_len 要报 ValueError",
      f"{_T_S2S}::test_make_batch_builds_reversal_pairs"),
    E("Seq2SeqTransformer.greedy_decode",
      "形状：src (B, S)、max_new → (B, ≤ max_new) long，不含开头的 BOS\n"
      "公式：encode 一次得到 memory；out 从 BOS 开始，每步 decode(out, memory, src_pad)[:, -1].argmax 接到末尾\n"
      "陷阱：编码器只算一次；每一行都生成过 EOS 就提前停；返回时去掉开头的 BOS",
      f"{_T}::test_seq2seq_greedy_decode_matches_recomputing_each_step"),
)

# =============================================================================
# archive/kaggle/breast_cancer_competition.py：Kaggle 式实验
# =============================================================================
_T_KG = "tests/archive/test_kaggle.py"
KAGGLE = (
    E("stratified_kfold",
      "形状：y (N,) 类别标签、n_folds k、seed → [(train_idx, val_idx)] × k（int64 下标数组）\n"
      "公式：每个类别的下标各自打乱，像发牌一样轮流发到 k 折（fold = (序号 + offset) % k，offset 接着上一类）；第 k 折当验证，其余当训练\n"
      "陷阱：各折的 val 不重不漏、每类在各折里的数量最多差 1；k < 2 或某类样本数 < k 要报 ValueError；用 np.random.default_rng(seed)",
      f"{_T_KG}::test_stratified_kfold_disjoint_covering_and_stratified"),
    E("cross_validate",
      "形状：factory（无参，返回有 fit / predict_proba 的新模型）、X (N, d)、y (N,)、folds、name → CVResult（每折一个 auc / acc / logloss）\n"
      "公式：每折 factory().fit(X[tr], y[tr])，p = predict_proba(X[va])[:, 1] 夹到 [1e−6, 1 − 1e−6]；roc_auc_score、accuracy_score(p > 0.5)、log_loss(labels=[0, 1])\n"
      "陷阱：每折都要一个全新的模型（复用上一折拟合过的模型 = 泄漏）；只在验证部分上打分",
      f"{_T}::test_kaggle_cross_validate_matches_sklearn_with_a_fresh_model_per_fold"),
    E("TorchMLPClassifier.fit",
      "形状：X (N, d) float64、y (N,) {0,1} → self；拟合好的标准化器与网络存成 self.scaler、self.model\n"
      "公式：StandardScaler 只在这份 X 上 fit；torch.manual_seed(self.seed) 后建 TabularMLP(d)；全批量 epochs 步 BCE-with-logits + AdamW(lr, weight_decay)\n"
      "陷阱：张量用 float32（y 也是 float）；先 manual_seed 再建网络（初始化才可复现）；训练前 model.train()",
      f"{_T}::test_kaggle_torch_mlp_fit_is_full_batch_adamw_on_standardized_features"),
    E("TorchMLPClassifier.predict_proba",
      "形状：X (M, d) → (M, 2) numpy，列为 [P(良性), P(恶性)]\n"
      "公式：p = sigmoid(self.model(self.scaler.transform(X)))，返回 stack([1 − p, p], axis=1)\n"
      "陷阱：先 self.model.eval() 关掉 dropout、在 no_grad 里算；标准化只 transform，绝不在新数据上重新 fit",
      f"{_T}::test_kaggle_torch_mlp_predict_proba_uses_the_train_scaler_in_eval_mode"),
)

EXERCISES: dict[str, tuple[Exercise, ...]] = {
    f"{_INTRO}/02_MLP/02_tensor_autograd.py": TENSOR_AUTOGRAD,
    f"{_INTRO}/03_Transformer/02_char_lstm_lm.py": CHAR_LSTM_LM,
    f"{_INTRO}/03_Transformer/05_transformer_seq2seq.py": TRANSFORMER_SEQ2SEQ,
    "archive/kaggle/breast_cancer_competition.py": KAGGLE,
}
