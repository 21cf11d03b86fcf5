"""练习目录：每个课程/模块文件里哪些函数是"核心"（练习模式里被挖空）、给什么提示、由哪些参考测试判分。

纯数据：CATALOG[仓库相对路径] = (Exercise(函数名或 "类.方法", 提示, 测试 id…), …)。
- 提示三段：形状（输入输出）、公式（要实现什么）、陷阱（最容易错的地方），一段一行；
- 测试 id 是 pytest 的 node id（`文件::测试函数`），参数化的测试写不带 `[...]` 的名字就匹配它的全部参数组合；
  判分时一个函数的全部测试通过才算 ✓，所以尽量只列专门考这个函数的测试。
- 28 天挑战不在这里逐条登记：它们的练习就是文件里的 `exN_*` 函数（utils/exercises.py 的约定），
  由 `_28days()` 从文件里读出来，测试是那一天的自检（`test_reference_solutions_pass[dayNN_…]`），
  每一题的结论取自检输出里它自己那一行。

tests/utils/test_exercise_workspace.py 守住目录不过期：每个函数都在它的文件里、每个测试 id 都收集得到。
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from functools import cache

from utils.io import REPO_ROOT


@dataclass(frozen=True)
class Exercise:
    name: str  # "apply_rope" 或 "RMSNorm.forward"
    hint: str  # 多行：形状 / 公式 / 陷阱
    tests: tuple[str, ...]  # pytest node id（或它的前缀：参数化测试的全部组合）


def E(name: str, hint: str, *tests: str) -> Exercise:
    return Exercise(name, hint, tests)


def _in(test_file: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{test_file}::{n}" for n in names)


# =============================================================================
# Stage 1（archive/）：入门课里值得亲手写的核心函数（28 天挑战见文件末尾的 _28days）
# =============================================================================
_INTRO = "archive/Introductory learning"
_T_LIN = "tests/archive/test_intro_linear_models.py"
LINEAR_REGRESSION = (
    E("fit_normal_equation",
      "形状：X (N, d)（已加 bias 列）、y (N,) → w (d,)\n"
      "公式：正规方程 XᵀX w = Xᵀy，用 torch.linalg.lstsq / solve 解，不要显式求逆\n"
      "陷阱：inv(XᵀX) 在病态时把条件数平方；lstsq 直接对 X 做分解更稳",
      f"{_T_LIN}::test_four_solvers_agree_and_match_sklearn"),
    E("fit_gradient_descent",
      "形状：X (N, d)、y (N,) → w (d,)\n"
      "公式：L = mean((Xw − y)²)，∇L = 2/N · Xᵀ(Xw − y)；w ← w − lr·∇L，重复 steps 次\n"
      "陷阱：梯度里的 2/N（mean 而不是 sum）；lr 太大会发散",
      *_in(_T_LIN, "test_four_solvers_agree_and_match_sklearn", "test_gradient_formula_matches_autograd")),
)
_T_LOG = _T_LIN
LOGISTIC_REGRESSION = (
    E("bce_with_logits",
      "形状：z (N,) logits、y (N,) ∈ {0,1} → 标量\n"
      "公式：mean(softplus(z) − y·z) = mean(max(z,0) − y·z + log(1 + exp(−|z|)))\n"
      "陷阱：直接 log(sigmoid(z)) 在 |z| 大时得到 log(0) = −inf",
      *_in(_T_LOG, "test_logistic_loss_and_gradient_match_autograd", "test_sigmoid_and_bce_are_stable_for_extreme_logits")),
    E("loss_and_grad",
      "形状：X (N, d)、y (N,)、w (d,) → (loss 标量, grad (d,))\n"
      "公式：grad = Xᵀ(σ(Xw) − y) / N（sigmoid + BCE 的梯度化简成“预测 − 标签”）\n"
      "陷阱：除以 N 与 loss 的 mean 对应",
      f"{_T_LOG}::test_logistic_loss_and_gradient_match_autograd"),
)
_T_MICRO = "tests/archive/test_intro_mlp_micrograd.py"
MICROGRAD = (
    E("Value.__add__",
      "形状：标量节点 + 标量节点（或数字，先 _wrap）→ 新节点 out，_prev = (self, other)\n"
      "公式：前向 a + b；反向 a.grad += out.grad，b.grad += out.grad\n"
      "陷阱：用 +=（同一个节点被用两次时梯度要累加，x + x 的梯度是 2）",
      *_in(_T_MICRO, "test_random_expressions_match_torch_autograd", "test_gradient_accumulates_when_a_node_is_reused")),
    E("Value.__mul__",
      "形状：标量 × 标量 → out\n"
      "公式：反向 a.grad += b.data·out.grad，b.grad += a.data·out.grad\n"
      "陷阱：闭包里用 other.data（不是 other.grad）；别忘了 out._backward = _backward",
      *_in(_T_MICRO, "test_random_expressions_match_torch_autograd", "test_gradient_accumulates_when_a_node_is_reused")),
    E("Value.tanh",
      "形状：标量 → 标量\n"
      "公式：t = tanh(x)；反向 x.grad += (1 − t²)·out.grad\n"
      "陷阱：用前向算好的 t，不要在反向里重新算 tanh",
      f"{_T_MICRO}::test_random_expressions_match_torch_autograd"),
    E("Value.backward",
      "形状：从标量 loss 出发，把 grad 填到所有祖先节点\n"
      "公式：拓扑排序（后序 DFS），self.grad = 1，按逆拓扑序调用每个节点的 _backward\n"
      "陷阱：用显式栈而不是递归——几百层深的图会撞上 Python 的递归上限；每个节点只访问一次",
      *_in(_T_MICRO, "test_random_expressions_match_torch_autograd", "test_gradient_accumulates_when_a_node_is_reused",
           "test_deep_graph_does_not_hit_recursion_limit", "test_mlp_loss_and_gradients_match_pytorch")),
)
_T_BP = "tests/archive/test_intro_mlp_backprop.py"
MANUAL_BACKPROP = (
    E("forward",
      "形状：X (B, d₀)，params [(W (d_{l−1}, d_l), b (d_l,))…] → (logits (B, d_L), cache [H₀…H_{L−1}])\n"
      "公式：Z = H W + b，隐藏层 H = φ(Z)，最后一层不加激活；每层的输入 H 存进 cache\n"
      "陷阱：cache 存的是每层的输入（反向算 W̄ = Hᵀ Z̄ 要用），不是输出",
      *_in(_T_BP, "test_manual_gradients_match_autograd", "test_training_with_manual_gradients_follows_autograd")),
    E("softmax_cross_entropy",
      "形状：logits (B, C)、y (B,) int64 → (loss 标量, P (B, C))\n"
      "公式：log P = Z − logsumexp(Z)，loss = −mean(log P[i, y_i])\n"
      "陷阱：先减每行最大值再 exp，否则大 logits 上溢成 inf",
      *_in(_T_BP, "test_manual_gradients_match_autograd")),
    E("backward",
      "形状：返回与 params 同结构的 [(W̄, b̄)…]\n"
      "公式：Z̄_L = (P − onehot(y))/B；W̄ = Hᵀ Z̄，b̄ = Σ_行 Z̄；H̄ = Z̄ Wᵀ；Z̄ = H̄ ⊙ φ'(Z)，tanh' = 1 − H²，relu' = 1[H>0]\n"
      "陷阱：除以 B（loss 是 mean）；从最后一层往前，输出列表要按层号正序",
      *_in(_T_BP, "test_manual_gradients_match_autograd", "test_training_with_manual_gradients_follows_autograd")),
)
_T_IN = "tests/archive/test_intro_mlp_init_norm.py"
INIT_AND_NORM = (
    E("kaiming_std",
      "形状：张量 → 标准差 float\n"
      "公式：std = gain / sqrt(fan)，fan = fan_in（mode='fan_in'）或 fan_out；relu 的 gain = √2\n"
      "陷阱：卷积核的 fan 要乘上感受野大小（fan_in_and_fan_out 已经算好）",
      *_in(_T_IN, "test_initializers_match_nn_init")),
    E("batchnorm_backward",
      "形状：dy、x̂ (N, C)，rstd (C,) → dx (N, C)\n"
      "公式：dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂))，dx̂ = dy·γ，均值沿 batch 维\n"
      "陷阱：均值沿 batch（dim 0），不是特征维；训练模式用的是有偏方差",
      f"{_T_IN}::test_manual_batchnorm_backward"),
    E("BatchNorm1d.forward",
      "形状：x (N, C) → (N, C)\n"
      "公式：训练：用本 batch 的 mean/有偏 var 归一化，running 统计量按 momentum 更新（用无偏方差）；推理：用 running 统计量\n"
      "陷阱：running_var 用无偏估计（× N/(N−1)），归一化用有偏的；更新 running 统计量不要进计算图",
      f"{_T_IN}::test_batchnorm_matches_pytorch_train_and_eval"),
    E("LayerNorm.forward",
      "形状：x (..., C) → (..., C)\n"
      "公式：y = (x − mean) / sqrt(var + eps) · γ + β，统计量沿最后一维、有偏方差\n"
      "陷阱：eps 在 sqrt 里面；keepdim=True 才能广播回去",
      f"{_T_IN}::test_layernorm_matches_pytorch"),
)
_T_IT = "tests/archive/test_intro_mlp_info_theory.py"
INFORMATION_THEORY = (
    E("entropy",
      "形状：p (..., K) → (...)\n"
      "公式：H(p) = −Σ p log p，约定 0·log 0 = 0（用 _xlogy）\n"
      "陷阱：p = 0 时 p·log p 直接算是 0·(−inf) = NaN",
      *_in(_T_IT, "test_matches_pytorch_references", "test_zero_probability_conventions")),
    E("cross_entropy",
      "形状：p、q (..., K) → (...)\n"
      "公式：H(p, q) = −Σ p log q\n"
      "陷阱：p = 0 的项是 0（即使 q = 0）；p > 0 而 q = 0 时是 +inf",
      *_in(_T_IT, "test_matches_pytorch_references", "test_zero_probability_conventions")),
    E("kl_div",
      "形状：p、q (..., K) → (...)\n"
      "公式：KL(p‖q) = Σ p (log p − log q) = H(p, q) − H(p)\n"
      "陷阱：非对称；≥ 0（Gibbs 不等式），p = q 时为 0",
      *_in(_T_IT, "test_matches_pytorch_references", "test_gibbs_inequality_and_identities")),
)
_T_RNN = "tests/archive/test_intro_transformer_rnn.py"
RNN_LSTM_GRU = (
    E("rnn_cell",
      "形状：x (B, I)、h (B, H)，W_ih (H, I)、W_hh (H, H)、b_ih、b_hh (H,) → h' (B, H)\n"
      "公式：h' = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)\n"
      "陷阱：权重是 (输出, 输入) 的 PyTorch 布局，要转置",
      f"{_T_RNN}::test_cells_match_torch_cells"),
    E("lstm_cell",
      "形状：x (B, I)、(h, c) 各 (B, H)，W_ih (4H, I)、W_hh (4H, H) → (h', c')\n"
      "公式：i, f, g, o = (x W_ihᵀ + b_ih + h W_hhᵀ + b_hh).chunk(4)；c' = σ(f)c + σ(i)tanh(g)，h' = σ(o)tanh(c')\n"
      "陷阱：门的顺序是 PyTorch 的 i, f, g, o（不是 i, f, o, g）",
      f"{_T_RNN}::test_cells_match_torch_cells"),
    E("gru_cell",
      "形状：x (B, I)、h (B, H)，W_ih (3H, I)、W_hh (3H, H) → h' (B, H)\n"
      "公式：r, z 由两边相加过 σ；n = tanh(x 部分 + r ⊙ (h W_hnᵀ + b_hn))；h' = (1 − z) n + z h\n"
      "陷阱：r 乘在 h W_hnᵀ + b_hn 上（包括它的 bias），PyTorch 与原论文写法不同",
      f"{_T_RNN}::test_cells_match_torch_cells"),
)
_T_W2V = "tests/archive/test_intro_transformer_word2vec.py"
WORD2VEC = (
    E("sgns_loss_and_grads",
      "形状：中心词向量 v (B, d)、正例 u_o (B, d)、负例 u_k (B, K, d) → (loss, 三者的梯度)\n"
      "公式：L = −log σ(u_o·v) − Σ_k log σ(−u_k·v)；∂L/∂s = σ(s) − 标签\n"
      "陷阱：log σ(s) 用 −softplus(−s) 写，极端分数才不会得到 log 0",
      *_in(_T_W2V, "test_hand_written_gradients_match_autograd", "test_loss_is_stable_for_extreme_scores")),
)
_T_ATT = "tests/archive/test_intro_transformer_attention.py"
ATTENTION_MECHANISMS = (
    E("scaled_dot_product_attention",
      "形状：q (..., Tq, d)、k (..., Tk, d)、v (..., Tk, dv) → (输出 (..., Tq, dv), 权重 (..., Tq, Tk))\n"
      "公式：softmax(q kᵀ / √d + mask) v\n"
      "陷阱：除以 √d（d 是 q 的最后一维）；mask 为 False 的位置填 −inf 再 softmax",
      *_in(_T_ATT, "test_sdpa_matches_torch", "test_multihead_attention_matches_nn")),
    E("MultiHeadAttention.forward",
      "形状：query (B, Tq, E)、key/value (B, Tk, E) → (B, Tq, E)（与 nn.MultiheadAttention(batch_first=True) 相同）\n"
      "公式：投影后拆成 (B, h, T, E/h)，每个头做缩放点积注意力，拼回 (B, Tq, E) 再过 out_proj\n"
      "陷阱：拆头是 view(B, T, h, d).transpose(1, 2)，不是直接 view(B, h, T, d)",
      *_in(_T_ATT, "test_multihead_attention_matches_nn", "test_multihead_per_head_weights_and_no_weights")),
    E("sinusoidal_positional_encoding",
      "形状：(T, d)\n"
      "公式：PE[p, 2i] = sin(p / 10000^(2i/d))，PE[p, 2i+1] = cos(同一个角度)\n"
      "陷阱：sin 在偶数列、cos 在奇数列（交错），同一对用同一个频率",
      f"{_T_ATT}::test_sinusoidal_encoding_values_and_relative_position_properties"),
)
_T_LLM = "tests/archive/test_intro_llms.py"
CAUSAL_LM = (
    E("causal_lm_loss",
      "形状：logits (B, T, V)、input_ids (B, T) → 标量\n"
      "公式：位置 t 预测 t+1：logits[:, :-1] 对 ids[:, 1:] 做交叉熵（HF 的内部移位）\n"
      "陷阱：移位只做一次；ignore_index 的位置不计入平均",
      *_in(_T_LLM, "test_causal_lm_loss_matches_cross_entropy", "test_causal_lm_loss_matches_hf_gpt2_internal_shift")),
    E("top_k_filter",
      "形状：logits (B, V) → 同形状，第 k 大之外的填 −inf\n"
      "公式：阈值 = topk(logits, k).values[..., -1:]，logits < 阈值 → −inf\n"
      "陷阱：k 大于 V 时夹到 V；并列的值都保留（与 HF 相同用 <）",
      f"{_T_LLM}::test_top_k_matches_hf"),
    E("top_p_filter",
      "形状：logits (B, V) → 同形状\n"
      "公式：按概率降序排，累积概率刚达到 p 的最小集合保留，其余填 −inf，再 scatter 回原顺序\n"
      "陷阱：至少保留概率最大的一个；跨过 p 的那一个 token 也要保留",
      *_in(_T_LLM, "test_top_p_matches_hf", "test_top_p_keeps_smallest_set_reaching_p")),
)
_T_GPT = "tests/archive/test_lets_build_gpt.py"
LETS_BUILD_GPT = (
    E("lm_loss",
      "形状：logits (B, T, V)、targets (B, T) → 标量\n"
      "公式：F.cross_entropy(logits.view(B·T, V), targets.view(B·T))\n"
      "陷阱：cross_entropy 要 (N, C)；初始 loss 应该约为 ln(V)（V=65 时 4.17）",
      *_in(_T_GPT, "test_training_lowers_loss_and_prints_final_line", "test_full_model_matches_transformers_gpt2")),
    E("Head.forward",
      "形状：x (B, T, C) → (B, T, hs)\n"
      "公式：wei = q kᵀ · hs^−0.5，未来位置（~tril[:T, :T]）填 −inf，softmax，dropout，再乘 v\n"
      "陷阱：缩放用 hs（头维）不是 C；mask 只取 [:T, :T]（生成时 T 可能小于 block_size）",
      *_in(_T_GPT, "test_single_head_matches_sdpa", "test_multihead_loop_equals_batched_and_sdpa",
           "test_future_tokens_do_not_change_earlier_logits")),
    E("CausalSelfAttention.forward",
      "形状：x (B, T, C) → (B, T, C)\n"
      "公式：c_attn 一次投影再 split 成 q, k, v；拆成 (B, nh, T, hs)；use_sdpa 时 F.scaled_dot_product_attention(is_causal=True)，否则手写 mask + softmax；拼回 (B, T, C) 过 c_proj\n"
      "陷阱：拼回前 transpose(1, 2).contiguous()；两条路径（SDPA 与手写）都要实现",
      *_in(_T_GPT, "test_multihead_loop_equals_batched_and_sdpa", "test_full_model_matches_transformers_gpt2",
           "test_future_tokens_do_not_change_earlier_logits")),
    E("get_lr",
      "形状：迭代号 it → 学习率 float\n"
      "公式：warmup：lr·(it+1)/(warmup+1)；之后 r = (it − warmup)/(max_iters − warmup)，lr_t = min_lr + ½(1 + cos πr)(lr − min_lr)\n"
      "陷阱：r 要夹到 1（超过 max_iters 后停在 min_lr）；max_iters == warmup 时别除以 0",
      f"{_T_GPT}::test_lr_schedule_warmup_then_cosine"),
)

# =============================================================================
# model_lab/01_components：Transformer 的零件
# =============================================================================
_T_ROPE = "tests/model_lab/test_rope.py"
ROPE = (
    E("default_inv_freq",
      "形状：返回 (D/2,) 的 float32 张量 inv_freq\n"
      "公式：θ_i = theta^(-2i/D)，i = 0..D/2-1（torch.arange(0, D, 2) / D）\n"
      "陷阱：在 float32 里算（HF 也是），用 float64 再转回会差 1 ulp，逐位对比就不相等",
      *_in(_T_ROPE, "test_inv_freq_and_attention_scaling_equal_hf_init_functions",
           "test_dynamic_ntk_follows_sequence_length_like_hf")),
    E("rotate_half",
      "形状：x (..., D) → (..., D)\n"
      "公式：把最后一维切成两半 (x1, x2)，返回 cat(-x2, x1)——每对 (x[i], x[i+D/2]) 乘以复数 i\n"
      "陷阱：负号在前一半（-x2），写成 cat(x2, -x1) 就转成了 -90°",
      *_in(_T_ROPE, "test_cos_sin_and_rotated_qk_equal_hf_with_gradients", "test_bf16_path_equals_hf_in_bf16")),
    E("apply_rope",
      "形状：x (B, nh, T, D)，cos/sin (B, T, D) → (B, nh, T, D)\n"
      "公式：x·cos + rotate_half(x)·sin；cos/sin 先 unsqueeze(1) 让所有 head 共用一张表\n"
      "陷阱：先调用 _check_shapes（形状不对要报清楚的 ValueError）；不要把 cos/sin 转成 fp32——bf16 要与 HF 逐位相同",
      *_in(_T_ROPE, "test_cos_sin_and_rotated_qk_equal_hf_with_gradients", "test_bf16_path_equals_hf_in_bf16",
           "test_score_depends_only_on_relative_position", "test_rope_preserves_norm")),
    E("apply_rope_interleaved",
      "形状：x (B, nh, T, D)，cos/sin (B, T, D)（rotate-half 表，前 D/2 列就是每对的角度）→ (B, nh, T, D)\n"
      "公式：第 i 对 (a, b) = (x[2i], x[2i+1])，输出 (a·c − b·s, a·s + b·c)，再交错放回\n"
      "陷阱：角度取 cos[..., :D/2]；输出要交错（stack 在最后一维再 flatten），不是前后两半",
      *_in(_T_ROPE, "test_interleaved_layout_equals_meta_complex_form")),
)
_T_RMS = "tests/model_lab/test_rmsnorm.py"
RMSNORM = (
    E("RMSNorm.forward",
      "形状：x (..., d) → (..., d)\n"
      "公式：y = γ · x / sqrt(mean(x²) + ε)（torch.rsqrt 一个算子）\n"
      "陷阱：先升到 fp32 求 mean(x²)，归一化后转回输入 dtype 再乘 γ（Llama 的顺序，bf16 才与 HF 逐位相同）；先 _check_last_dim",
      *_in(_T_RMS, "test_outputs_and_gradients_equal_llama_rmsnorm_fp32", "test_bf16_path_upcasts_inside_and_equals_hf_bitwise",
           "test_fp16_large_activation_needs_upcast", "test_equals_torch_builtin_rms_norm")),
    E("LayerNorm.forward",
      "形状：x (..., d) → (..., d)\n"
      "公式：y = (x − mean) / sqrt(var + ε) · γ + β，有偏方差，两次归约\n"
      "陷阱：bias 可能是 None（bias=False）",
      f"{_T_RMS}::test_layernorm_equals_torch"),
    E("rms_norm_backward",
      "形状：x、grad_out (..., d)，weight (d,) → (dL/dx 同 x 的 dtype, dL/dγ 同 weight 的 dtype)\n"
      "公式：r = (mean(x²)+ε)^(−1/2)，x̂ = x·r，g = grad_out ⊙ γ；dx = r·(g − x̂·mean(g ⊙ x̂))，dγ = Σ_batch grad_out ⊙ x̂\n"
      "陷阱：在至少 fp32 里算；dγ 要把所有 batch 维求和（reshape(-1, d).sum(0)）",
      f"{_T_RMS}::test_hand_derived_backward_matches_autograd"),
)
_T_SWIGLU = "tests/model_lab/test_swiglu.py"
SWIGLU = (
    E("llama_intermediate_size",
      "形状：hidden_size d → int\n"
      "公式：h = int(2·4d/3)，有 ffn_dim_multiplier 时 h = int(multiplier·h)，再向上取整到 multiple_of 的倍数\n"
      "陷阱：先取整再乘 multiplier（Meta 代码的顺序）；d=4096 应得 11008",
      *_in(_T_SWIGLU, "test_intermediate_size_matches_published_llama_configs",
           "test_intermediate_size_is_smallest_multiple_covering_8_thirds", "test_default_intermediate_size_is_llama_rounding")),
    E("GatedMLP.forward",
      "形状：x (..., d) → (..., d)，中间 (..., h)\n"
      "公式：down_proj(act(gate_proj(x)) ⊙ up_proj(x))\n"
      "陷阱：激活只作用在 gate 支路上；先 _check_input",
      *_in(_T_SWIGLU, "test_gated_mlp_equals_llama_mlp_outputs_and_gradients", "test_gated_mlp_bf16_equals_llama_mlp_bf16")),
    E("ReLU2MLP.forward",
      "形状：x (..., d) → (..., d)\n"
      "公式：down_proj(relu(up_proj(x))²)（Nemotron / Primer 的 squared ReLU，没有 gate）\n"
      "陷阱：先 relu 再平方（负数平方后不是 0）",
      f"{_T_SWIGLU}::test_relu2_mlp_equals_nemotron_mlp"),
)
_T_ATTN = "tests/model_lab/test_attention.py"
ATTENTION = (
    E("safe_softmax",
      "形状：scores 任意形状，沿 dim 归一化\n"
      "公式：exp(s − m) / Σ exp(s − m)，m = 行最大值（detach）\n"
      "陷阱：整行都是 −inf（全被掩掉）时 m = −inf，s − m = NaN：把 m 换成 0，分母 0 换成 1，输出全 0",
      *_in(_T_ATTN, "test_safe_softmax_huge_logits", "test_fully_masked_rows_are_zero_like_sdpa_and_have_finite_grads")),
    E("repeat_kv",
      "形状：(B, nkv, T, hs) → (B, nkv·n_rep, T, hs)\n"
      "公式：x[:, :, None].expand(B, nkv, n_rep, T, hs).reshape(...)——第 g 个 KV 头服务 n_rep 个相邻的 query 头\n"
      "陷阱：用 expand + reshape 而不是 repeat（repeat 的顺序是 0,1,0,1，HF 是 0,0,1,1）",
      f"{_T_ATTN}::test_repeat_kv_matches_hf"),
    E("attention_weights",
      "形状：q (B, nh, Tq, hs)、k (B, nkv, Tk, hs) → P (B, nh, Tq, Tk)\n"
      "公式：P = safe_softmax(q kᵀ · scale + M)，scale 默认 1/√hs；GQA 先 repeat_kv\n"
      "陷阱：is_causal 右下对齐（query i 的绝对位置是 Tk − Tq + i，triu 的 diagonal = Tk − Tq + 1）；bool mask True = 可以看，浮点 mask 直接加",
      *_in(_T_ATTN, "test_core_matches_torch_sdpa", "test_fully_masked_rows_are_zero_like_sdpa_and_have_finite_grads",
           "test_property_random_masks_match_sdpa")),
    E("Attention.forward",
      "形状：x (B, T, C) → (B, T, C)；padding_mask (B, T_past+T)\n"
      "公式：q/k/v 投影并拆头 → RoPE（位置从 past 开始）→ KV cache 追加 → 因果（右下对齐）∧ padding 掩码 → 注意力 → 拼头 → o_proj\n"
      "陷阱：有历史 token 或 padding 时要显式 mask（tril(Tk − T)）；use_sdpa 时传 enable_gqa=True",
      *_in(_T_ATTN, "test_matches_hf_llama_attention_outputs_and_grads", "test_kv_cache_decoding_equals_full_recompute",
           "test_sdpa_path_equals_manual_path")),
)
_T_BASICS = "tests/model_lab/test_basics.py"
BASICS = (
    E("LinearFunction.forward",
      "形状：x (..., in)、weight (out, in)、bias (out,) 或 None → (..., out)\n"
      "公式：y = x Wᵀ + b；ctx.save_for_backward 存 x 与 W\n"
      "陷阱：bias 可能是 None",
      *_in(_T_BASICS, "test_linear_equals_nn_linear_outputs_and_gradients",
           "test_hand_written_linear_backward_passes_gradcheck_and_equals_autograd")),
    E("LinearFunction.backward",
      "形状：grad_y (..., out) → (dx (..., in), dW (out, in), db (out,) 或 None)\n"
      "公式：dx = grad_y W，dW = grad_yᵀ x（把 batch 维摊平后相乘），db = Σ_batch grad_y\n"
      "陷阱：只为 ctx.needs_input_grad 为 True 的输入算梯度；多个 batch 维要先 reshape(-1, ·)",
      *_in(_T_BASICS, "test_linear_equals_nn_linear_outputs_and_gradients",
           "test_hand_written_linear_backward_passes_gradcheck_and_equals_autograd")),
    E("SiLUFunction.backward",
      "形状：grad_out 与 x 同形状\n"
      "公式：silu'(x) = σ(x)·(1 + x·(1 − σ(x)))\n"
      "陷阱：σ 用数值稳定的写法（x 很负时 exp(−x) 上溢）",
      *_in(_T_BASICS, "test_silu_equals_torch_outputs_and_gradients_including_extremes",
           "test_silu_hand_derivative_passes_gradcheck_and_bf16_is_bitwise_torch")),
    E("SoftmaxFunction.forward",
      "形状：x 任意形状，沿 dim → 同形状\n"
      "公式：exp(x − max) / Σ exp(x − max)；存输出 y 给反向用\n"
      "陷阱：减最大值防上溢；低精度输入在 fp32 里算再转回",
      *_in(_T_BASICS, "test_softmax_and_log_softmax_equal_torch_outputs_and_gradients",
           "test_naive_softmax_overflows_where_the_safe_one_does_not", "test_softmax_is_shift_invariant_and_sums_to_one")),
    E("SoftmaxFunction.backward",
      "形状：grad_y 与 y 同形状\n"
      "公式：dx = y ⊙ (grad_y − Σ_dim(grad_y ⊙ y))（Jacobian diag(y) − y yᵀ 乘向量，不显式建矩阵）\n"
      "陷阱：Σ 要 keepdim=True",
      *_in(_T_BASICS, "test_hand_written_softmax_backward_passes_gradcheck",
           "test_softmax_and_log_softmax_equal_torch_outputs_and_gradients")),
    E("logsumexp",
      "形状：x 沿 dim 归约\n"
      "公式：m + log Σ exp(x − m)，m = max\n"
      "陷阱：全 −inf 时 m = −inf，要避免 −inf − (−inf) = NaN",
      f"{_T_BASICS}::test_logsumexp_equals_torch_and_its_gradient_is_softmax"),
)
_T_MOE = "tests/model_lab/test_moe.py"
MOE = (
    E("TopKRouter.forward",
      "形状：x (N, d) → 每个 token 的 top-k 专家下标 (N, k) 与权重 (N, k)\n"
      "公式：logits = x Wᵀ；softmax（Mixtral）或 sigmoid（DeepSeek-V3，加 bias 只影响选谁、不影响权重）；取 top-k 并按配置归一化\n"
      "陷阱：无损负载均衡的 bias 只加在“选择”上，权重仍用未加 bias 的分数；分组路由先选组再选专家",
      *_in(_T_MOE, "test_mixtral_matches_hf", "test_deepseek_v3_matches_hf", "test_bias_changes_choice_but_not_weights")),
    E("dispatch_by_expert",
      "形状：专家下标 (N, k) → 按专家排好序的 token 下标与每个专家的 token 数\n"
      "公式：把 (token, 专家) 对按专家号稳定排序（argsort），bincount 得每个专家的负载\n"
      "陷阱：排序要稳定（同一专家内保持 token 顺序，容量截断才是先到先得）",
      *_in(_T_MOE, "test_sorted_dispatch_equals_dense", "test_capacity_drops_tokens_first_come_first_served")),
    E("load_balancing_loss",
      "形状：router 概率 (N, E)、选择 (N, k) → 标量\n"
      "公式：Switch/Mixtral 的辅助损失 E · Σ_e f_e · P_e，f_e = 分到专家 e 的比例，P_e = 平均路由概率\n"
      "陷阱：完全均衡时等于 k（不是 1）；f 不可导，梯度只经过 P",
      *_in(_T_MOE, "test_load_balancing_loss_matches_hf", "test_load_balancing_loss_is_k_when_balanced_and_larger_when_skewed")),
)
_T_MLA = "tests/model_lab/test_mla.py"
MLA = (
    E("MultiHeadLatentAttention.forward",
      "形状：x (B, T, C) → (B, T, C)；缓存只存低秩 latent c_kv (B, T, kv_lora_rank) 与共享的 k_rope (B, T, d_rope)\n"
      "公式：q = 低秩压缩再展开；k = [up(c_kv)_nope ; k_rope]，v = up(c_kv)；absorbed 模式把 W_uk 吸进 q、W_uv 吸进输出\n"
      "陷阱：RoPE 只作用在 d_rope 那一段；缩放用 (d_nope + d_rope)^−0.5（yarn 时再乘 mscale²）",
      *_in(_T_MLA, "test_matches_hf_deepseek_v3_attention_outputs_and_grads", "test_absorbed_equals_naive_outputs_and_grads",
           "test_latent_cache_decoding_equals_full")),
)

# =============================================================================
# model_lab/02_architectures/llama.py：把零件装成 Llama
# =============================================================================
_T_LLAMA = "tests/model_lab/test_llama.py"
LLAMA = (
    E("RMSNorm.forward",
      "形状：x (B, T, C) → (B, T, C)\n"
      "公式：γ · (x / sqrt(mean(x²) + ε))，fp32 里归一化、转回输入 dtype 再乘 γ；配置了 kernels 后端时交给它\n"
      "陷阱：get_kernel_backend(self.config.kernels).rms_norm 不为 None 时直接用它（config 可能是 None）",
      *_in(_T_LLAMA, "test_logits_match_hf", "test_loss_and_all_gradients_match_hf", "test_bf16_forward_close_to_hf")),
    E("rope_table",
      "形状：角度 (B 或 1, T, D/2) → (B 或 1, T, 1, D/2, 2)\n"
      "公式：stack(cos θ, sin θ) · scaling，再在第 2 维插入头维（所有头共用）\n"
      "陷阱：始终 fp32；最后一维 (cos, sin) 正好是复数 e^{iθ} 的 (实部, 虚部)",
      *_in(_T_LLAMA, "test_logits_match_hf", "test_low_precision_rope_is_bitwise_hf")),
    E("interleave_halves",
      "形状：第 dim 维长 D：[0..D/2) 与 [D/2..D) 交错成 0, D/2, 1, D/2+1, …\n"
      "公式：unflatten(dim, (2, D/2)).transpose(dim, dim+1).flatten(dim, dim+1)\n"
      "陷阱：dim 可以是负数，先 dim %= t.dim()",
      *_in(_T_LLAMA, "test_logits_match_hf", "test_qkv_fused_weights_equal_separate_projections",
           "test_interleaved_complex_rope_equals_hf_rotate_half")),
    E("apply_rope",
      "形状：x (B, T, H, D)（每对相邻），rope (B 或 1, T, 1, D/2, 2) → (B, T, H, D)\n"
      "公式：(x₀ + i x₁)(cos θ + i sin θ)；fp32/fp64 eager 用 view_as_complex 的复数乘法，其余用实数写法 (x₀c − x₁s, x₁c + x₀s)\n"
      "陷阱：torch.compile 下（torch.compiler.is_compiling()）不能用复数；bf16/fp16 先把表转成 x 的 dtype，舍入才与 HF 逐位相同",
      *_in(_T_LLAMA, "test_logits_match_hf", "test_interleaved_complex_rope_equals_hf_rotate_half",
           "test_low_precision_rope_is_bitwise_hf", "test_kv_cache_decoding_equals_full_recompute")),
    E("Attention.forward",
      "形状：x (B, T, C) → (B, T, C)；q (B, H, T, D)，k/v (B, H_kv, S, D)\n"
      "公式：project_qkv → RoPE（q 与 k 一起转）→ KV cache 追加 → 注意力后端（is_causal 或模型给的 mask）→ 拼头 → o_proj；打包批量（attn_metadata）走 packed_attention\n"
      "陷阱：有缓存前缀时不能用 is_causal（左上对齐），mask 由模型统一构造；scale 用 self.scale",
      *_in(_T_LLAMA, "test_logits_match_hf", "test_loss_and_all_gradients_match_hf", "test_kv_cache_decoding_equals_full_recompute",
           "test_attention_backends_agree_and_registry_is_used")),
    E("MLP.forward",
      "形状：x (B, T, C) → (B, T, C)\n"
      "公式：down_proj(act_fn(gate_proj(x)) ⊙ up_proj(x))；kernels 后端有 swiglu 且激活是 SiLU 时用融合版\n"
      "陷阱：激活要用 self.act_fn（可替换的模块），不要写死 F.silu",
      *_in(_T_LLAMA, "test_logits_match_hf", "test_mlp_activation_is_a_swappable_module")),
    E("DecoderLayer.forward",
      "形状：x (B, T, C) → (B, T, C)\n"
      "公式：pre-norm 残差：x = x + attn(norm₁(x))；x = x + mlp(norm₂(x))\n"
      "陷阱：残差加的是未归一化的 x",
      *_in(_T_LLAMA, "test_logits_match_hf", "test_loss_and_all_gradients_match_hf")),
)

# =============================================================================
# data_pipeline/tokenization：字节级 BPE
# =============================================================================
_T_BPE_BASIC = "tests/data_pipeline/test_tokenization_basic.py"
BPE_BASIC = (
    E("count_pairs",
      "形状：ids list[int] → {(a, b): 次数}，可累加进已有的 counts（乘 weight）\n"
      "公式：对 zip(ids, ids[1:]) 计数\n"
      "陷阱：counts 为 None 时新建字典，不要用可变默认参数",
      *_in(_T_BPE_BASIC, "test_basic_merges_equal_naive_reference_without_pretokenization")),
    E("merge",
      "形状：ids、pair、new_id → 新的 list[int]\n"
      "公式：从左到右扫描，遇到 pair 就写 new_id 并跳过两个，否则照抄\n"
      "陷阱：不重叠：“aaa” 合并 (a, a) 得 [aa, a]；最后一个元素别越界",
      *_in(_T_BPE_BASIC, "test_basic_merges_equal_naive_reference_without_pretokenization",
           "test_basic_encode_decode_round_trip")),
    E("BasicTokenizer.train",
      "形状：text、vocab_size（≥ 256）→ 填好 self.merges {pair: id} 与 self.vocab {id: bytes}\n"
      "公式：ids = UTF-8 字节；每步数 pair、取最多的（best_pair 处理平局）、merge、记录 new_id = 256, 257, …\n"
      "陷阱：vocab_size < 256 或语料不够合并时报清楚的 ValueError；vocab[new] = vocab[a] + vocab[b]",
      *_in(_T_BPE_BASIC, "test_basic_merges_equal_naive_reference_without_pretokenization",
           "test_basic_encode_decode_round_trip")),
    E("BasicTokenizer.encode",
      "形状：text → list[int]\n"
      "公式：按训练顺序重放：每轮在当前相邻 pair 里挑 merges 中 id 最小（最早学到）的合并，直到没有可合并的\n"
      "陷阱：不能按“出现次数”挑，必须按学到的先后；长度 < 2 时直接返回",
      f"{_T_BPE_BASIC}::test_basic_encode_decode_round_trip"),
)
_T_TOK = "tests/data_pipeline/test_tokenization.py"
BPE_REGEX = (
    E("train_bpe_naive",
      "形状：text、vocab_size、special_tokens → (vocab {id: bytes}, merges [(bytes, bytes)…])\n"
      "公式：正则预分词 → 每个不同的预 token 带次数；每步在所有预 token 里数 pair（乘次数）、取最多的、就地合并\n"
      "陷阱：平局选字节序更大的 pair（与 tiktoken / HF 相同）；pair 不跨预 token、不跨 special token",
      *_in(_T_TOK, "test_fast_trainer_equals_naive", "test_tie_break_merges_lexicographically_greater_pair")),
)
BPE_TOKENIZER = (
    E("Tokenizer._encode_piece",
      "形状：一个预 token 的字节串 → list[int]\n"
      "公式：反复合并 rank 最小（最早学到）的相邻 pair，同 rank 取最左；合并一处只需重算它左右两个 pair 的 rank\n"
      "陷阱：字节到初始 id 的映射不一定是恒等（self._byte_id_is_byte 为假时查 self._byte_ids）",
      *_in(_T_TOK, "test_encode_matches_tiktoken_and_hf", "test_gpt4_pattern_tokenizer_matches_tiktoken_and_hf")),
)

# =============================================================================
# training_sys/optimization：优化器、调度、裁剪、损失
# =============================================================================
_T_ADAMW = "tests/training_sys/optimization/test_adamw.py"
ADAMW = (
    E("adamw_update_",
      "形状：param、grad 同形状，原地更新 param；state 第一次为空：建 step（fp32 标量张量）、exp_avg、exp_avg_sq\n"
      "公式：θ ← θ(1 − lr·λ)；m ← β1·m + (1−β1)·g；v ← β2·v + (1−β2)·g²；θ ← θ − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + ε)\n"
      "陷阱：权重衰减是解耦的（直接乘在 θ 上，不加进梯度）；ε 加在偏差修正之后；amsgrad 用 max(v) 代替 v；maximize 先取 −g",
      *_in(_T_ADAMW, "test_adamw_matches_torch_over_200_steps", "test_adamw_state_dict_interchangeable_with_torch",
           "test_adamw_works_with_lambda_lr_and_skips_params_without_grad")),
)
SGD_ = (
    E("SGD.step",
      "形状：对每个参数组里有梯度的参数原地更新；closure 不为 None 时先在 enable_grad 下调用它并返回 loss\n"
      "公式：g ← g + λθ；动量 b ← μb + (1 − dampening)g（第一步 b = g）；nesterov 时 g ← g + μb，否则 g ← b；θ ← θ − lr·g\n"
      "陷阱：第一步的动量缓冲直接等于 g（不乘 1 − dampening）；maximize 取 −g",
      *_in(_T_ADAMW, "test_sgd_matches_torch_over_200_steps", "test_closure_is_called_and_returned")),
)
_T_LM = "tests/training_sys/optimization/test_lion_muon.py"
LION = (
    E("Lion.step",
      "形状：原地更新；state 里只有 exp_avg\n"
      "公式：c = β1·m + (1−β1)·g；θ ← θ(1 − lr·λ) − lr·sign(c)；m ← β2·m + (1−β2)·g\n"
      "陷阱：更新方向用 β1 插值、动量用 β2 更新（两个 β 不一样）；sign(0) = 0",
      *_in(_T_LM, "test_lion_matches_paper_transcription", "test_lion_first_step_moves_every_coordinate_by_exactly_lr",
           "test_lion_zero_gradient_and_zero_momentum_means_no_move_and_maximize_flips")),
)
MUON = (
    E("zeropower_via_newton_schulz",
      "形状：G (m, n) → 近似正交化的 (m, n)（把奇异值推到 1 附近）\n"
      "公式：X = G / (‖G‖_F + ε)；m > n 时先转置；重复 X ← aX + (bA + cA²)X，A = X Xᵀ，(a, b, c) = (3.4445, −4.7750, 2.0315)\n"
      "陷阱：先除以 Frobenius 范数让谱范数 ≤ 1；转置过的最后要转回来",
      *_in(_T_LM, "test_quintic_newton_schulz_pushes_singular_values_near_one", "test_newton_schulz_keeps_singular_vectors",
           "test_muon_matches_torch_muon")),
)
_T_CLIP = "tests/training_sys/optimization/test_clipping.py"
CLIPPING = (
    E("clip_grad_norm",
      "形状：参数（或单个张量）的梯度原地缩放，返回裁剪前的总范数（0 维张量）\n"
      "公式：total = ‖[‖g₁‖, ‖g₂‖, …]‖_p；coef = max_norm / (total + 1e-6)，coef < 1 时所有梯度乘 coef\n"
      "陷阱：coef 夹到 ≤ 1（用 clamp 而不是 if，免得 GPU 同步）；inf/nan 范数时与 torch 的行为一致",
      *_in(_T_CLIP, "test_matches_torch", "test_nonfinite_matches_torch", "test_params_without_grad_single_tensor_and_empty")),
)
_T_SCHED = "tests/training_sys/optimization/test_schedules.py"
SCHEDULES = (
    E("CosineSchedule.__call__",
      "形状：step → 学习率倍数（乘在基础 lr 上）\n"
      "公式：warmup 内线性 step/warmup；之后 progress = (step − warmup)/(total − warmup)，倍数 = min + (1 − min)·½(1 + cos π·progress)\n"
      "陷阱：progress 夹到 1（超过 total 后停在下限）；与 HF 的 get_cosine_schedule_with_warmup 一致",
      *_in(_T_SCHED, "test_cosine_matches_hf", "test_cosine_stays_at_floor_after_total_steps")),
    E("WSDSchedule.__call__",
      "形状：step → 学习率倍数\n"
      "公式：warmup（线性上升）→ stable（1.0）→ decay（按 decay 形状从 1 降到下限）\n"
      "陷阱：三段的边界（≤ 还是 <）要与 HF 的 get_wsd_schedule 一致",
      f"{_T_SCHED}::test_wsd_matches_hf"),
)
_T_CE = "tests/training_sys/optimization/test_cross_entropy.py"
CROSS_ENTROPY_LOSS = (
    E("CrossEntropyFunction.forward",
      "形状：logits (N, V)、targets (N,) → 标量 loss（对有效 token 取平均）\n"
      "公式：lse = logsumexp(z)；loss_i = lse_i − z_{i, y_i}（+ z_loss·lse²）；忽略 ignore_index；存 softmax 需要的量给反向\n"
      "陷阱：在 fp32 里算；全部被忽略时结果是 NaN（与 F.cross_entropy 相同）",
      *_in(_T_CE, "test_matches_f_cross_entropy", "test_z_loss_matches_transcription", "test_gradcheck_fp64",
           "test_extreme_logits_stay_finite_and_all_ignored_is_nan")),
    E("CrossEntropyFunction.backward",
      "形状：grad_out 标量 → dlogits (N, V)\n"
      "公式：dz = (softmax(z) − onehot(y)) · grad_out / n_valid（z_loss 再加 2·z_loss·lse·softmax）；被忽略的行梯度为 0\n"
      "陷阱：除以有效 token 数而不是 N；dtype 转回 logits 的 dtype",
      *_in(_T_CE, "test_matches_f_cross_entropy", "test_gradcheck_fp64", "test_bf16_logits_match_fp32_reference_on_upcast")),
)
_T_AC = "tests/training_sys/optimization/test_accumulation_checkpointing.py"
GRAD_ACCUMULATION = (
    E("accumulate_gradients",
      "形状：模型、micro-batch 列表 → 梯度累加在 .grad 里，返回整步的 loss\n"
      "公式：每个 micro-batch 的 loss 用“整步的有效 token 总数”归一化（sum / N_total），backward 累加\n"
      "陷阱：不能对每个 micro-batch 先取 mean 再平均——padding 不均时与大 batch 不相等",
      *_in(_T_AC, "test_accumulation_equals_large_batch", "test_accumulation_with_loss_scaler_unscales_to_large_batch")),
)
ACTIVATION_CHECKPOINTING = (
    E("CheckpointFunction.backward",
      "形状：返回 (None, None, *每个输入的梯度)\n"
      "公式：恢复前向时的 RNG 状态与 autocast 状态，在 enable_grad 下用 detach 过的输入重算一遍，再 torch.autograd.backward\n"
      "陷阱：dropout 要与前向同一个随机数（保存/恢复 RNG）；不需要梯度的输入返回 None",
      *_in(_T_AC, "test_checkpoint_outputs_and_grads_equal_with_dropout", "test_checkpoint_recompute_respects_autocast_and_multiple_args")),
)
_T_MP = "tests/training_sys/optimization/test_mixed_precision.py"
MIXED_PRECISION = (
    E("DynamicLossScaler.update",
      "形状：一步结束时调用，更新 scale\n"
      "公式：这一步发现 inf/nan：scale ← scale·backoff_factor，计数清零；否则计数 +1，连续 growth_interval 步后 scale ← scale·growth_factor\n"
      "陷阱：与 torch.amp.GradScaler 逐步相同（包括 scale 的 dtype 与 fp32 上溢时停止增长）",
      *_in(_T_MP, "test_matches_grad_scaler_step_by_step_with_injected_inf", "test_growth_stops_at_fp32_overflow")),
)

# =============================================================================
# training_sys/distributed：数据并行、ZeRO、张量并行（测试用 gloo 起多个进程，每个几秒）
# =============================================================================
_T_DDP = "tests/training_sys/distributed/test_ddp.py"
DDP = (
    E("bucket_assignment",
      "形状：参数列表（反向时梯度就绪的顺序）、bucket_cap_bytes → 每个桶的参数下标 list[list[int]]\n"
      "公式：按 (dtype, device) 各开一个桶，累计字节数 ≥ 上限就封口；循环结束把没封口的桶也加上\n"
      "陷阱：比上限还大的张量自己占一个桶；不同 dtype 不能进同一块连续缓冲区",
      f"{_T_DDP}::test_bucket_assignment_reverse_order_and_caps"),
    E("DataParallelNaive.sync_gradients",
      "形状：每个参数的 .grad 原地变成所有 rank 的平均\n"
      "公式：dist.all_reduce(p.grad)（求和）再除以 world_size\n"
      "陷阱：没有梯度的参数按 0 参与——各 rank 的集合通信次数必须相同，否则死锁",
      *_in(_T_DDP, "test_equal_to_single_process_on_the_global_batch")),
)
_T_ZERO = "tests/training_sys/distributed/test_zero.py"
ZERO = (
    E("ZeroOptimizer.reduce_gradients",
      "形状：本地梯度拍平成一块 flat（padding 到 world 的倍数）→ stage 1：完整平均梯度；stage 2：只留本 rank 那一段\n"
      "公式：stage 1 all_reduce 后除以 world；stage 2 reduce_scatter 到 shard 再除以 world，释放完整梯度\n"
      "陷阱：哪些参数这一步有梯度要在所有 rank 上取并集（all_reduce MAX），各 rank 一致地决定更新谁；已归约过就直接返回",
      *_in(_T_ZERO, "test_zero1_and_zero2_equal_single_process_adamw", "test_amsgrad_and_a_parameter_without_gradient_match_adamw")),
)
_T_TP = "tests/training_sys/distributed/test_tensor_parallel.py"
_TP_LAYERS = f"{_T_TP}::test_parallel_layers_and_mapping_ops_match_single_process_and_dtensor"
TENSOR_PARALLEL = (
    E("_CopyToTP.forward",
      "形状：x 原样返回（Megatron 的 f 算子）\n"
      "公式：前向恒等；记下 ctx.group 给反向用\n"
      "陷阱：返回 x.view_as(x)（新的张量对象），autograd 才会为它记录这个 Function",
      _TP_LAYERS),
    E("_CopyToTP.backward",
      "形状：grad → (all_reduce 后的 grad, None)\n"
      "公式：f 的反向是所有 rank 的梯度求和\n"
      "陷阱：先 contiguous().clone() 再原地 all_reduce，别改坏 autograd 交给你的 grad",
      _TP_LAYERS),
    E("_ReduceFromTP.forward",
      "形状：各 rank 的部分和 → 完整和（Megatron 的 g 算子）\n"
      "公式：all_reduce(sum)\n"
      "陷阱：同样先 clone 再原地 all_reduce",
      _TP_LAYERS),
    E("_ReduceFromTP.backward",
      "形状：grad → (grad, None)\n"
      "公式：g 的反向是恒等（每个 rank 拿到同样的完整梯度）\n"
      "陷阱：别在这里再 all_reduce，否则梯度放大 tp 倍",
      _TP_LAYERS),
    E("RowParallelLinear.forward",
      "形状：x (..., in/tp)（input_is_parallel）→ (..., out)\n"
      "公式：partial = x W_rᵀ（部分和）；g 算子 all_reduce 得完整输出，再加 bias；sequence_parallel 时 reduce_scatter 到本段 token\n"
      "陷阱：bias 只能加一次（在归约之后）",
      _TP_LAYERS),
)

# =============================================================================
# inference_engine/kernels：Triton kernel（无 GPU 时在解释器里跑；kernel 函数体同样可以是练习）
# =============================================================================
_T_K = "tests/inference_engine/kernels"
KERNEL_VECTOR_ADD = (
    E("add_kernel",
      "形状：一维 grid，每个 program 处理 BLOCK 个元素：offs = pid·BLOCK + arange(BLOCK)\n"
      "公式：out[offs] = x[offs] + y[offs]，在 fp32 里加、存回时转成 out 的 dtype\n"
      "陷阱：最后一块越界：load/store 都要 mask = offs < n_elements",
      *_in(f"{_T_K}/test_vector_add.py", "test_add_matches_torch_bitwise_fp32", "test_add_keeps_shape_and_fp16_is_bitwise",
           "test_mask_does_not_write_past_the_end")),
)
KERNEL_SOFTMAX = (
    E("softmax_fused_kernel",
      "形状：每个 program 处理 ROWS 行，每行整行（BLOCK ≥ n_cols）在寄存器里：(ROWS, BLOCK)\n"
      "公式：m = max，num = exp(x − m)，out = num / Σnum\n"
      "陷阱：越界列读成 −inf；整行 −inf 时把 m 换成 0；行偏移用 int64；最后一个 program 的越界行不能写",
      *_in(f"{_T_K}/test_softmax.py", "test_fused_path_matches_torch", "test_numerically_stable_for_huge_logits",
           "test_minus_inf_entries_like_torch", "test_many_rows_per_program_and_partial_last_program")),
    E("softmax_online_kernel",
      "形状：每个 program 一整行，按 BLOCK 分块循环（行长任意）\n"
      "公式：第一遍 online：m' = max(m, max(块))，d ← d·exp(m − m') + Σexp(x − m')；第二遍写 exp(x − m)/d\n"
      "陷阱：到目前为止全是 −inf 时基准取 0，避免 −inf − (−inf)",
      *_in(f"{_T_K}/test_softmax.py", "test_online_path_matches_torch", "test_minus_inf_entries_like_torch")),
)
KERNEL_RMSNORM = (
    E("rms_norm_fwd_kernel",
      "形状：每个 program ROWS 行 × BLOCK 列（BLOCK ≥ D），写 y (M, D) 与每行的 rstd (M,)\n"
      "公式：rstd = rsqrt(Σx²/D + ε)；x̂ = x·rstd 在 x 的 dtype 里舍入一次；y = w·x̂\n"
      "陷阱：除以真实的 D（不是 BLOCK）；越界行读最后一行但不写；偏移用 int64",
      *_in(f"{_T_K}/test_rmsnorm.py", "test_matches_torch_nn_rmsnorm", "test_matches_model_rmsnorm_module",
           "test_bf16_input_with_fp32_weight_gives_fp32_like_the_module")),
    E("rms_norm_bwd_kernel",
      "形状：每个 program 若干行：写 dx，并把本 program 的 dw 部分和写进 (programs, D) 的缓冲（之后再归约）\n"
      "公式：g = dy ⊙ w，dx = rstd·(g − x̂·mean(g ⊙ x̂))，dw_partial = Σ_行 dy ⊙ x̂\n"
      "陷阱：dw 不要用原子加（结果不确定）：每个 program 写自己的一行，dw_reduce_kernel 再求和",
      *_in(f"{_T_K}/test_rmsnorm.py", "test_matches_torch_nn_rmsnorm",
           "test_dw_reduction_across_programs_is_deterministic_and_handles_expanded_grad")),
)
KERNEL_ROPE = (
    E("rope_kernel",
      "形状：每个 program 一个 token (b, t) 的全部头；x 最后一维里每对 (x[2j], x[2j+1]) 相邻\n"
      "公式：y₀ = x₀cos − x₁·SIGN·sin，y₁ = x₁cos + x₀·SIGN·sin（SIGN = −1 就是反向：转回去）\n"
      "陷阱：按步长寻址（输入可能是融合投影的非连续切片）；表的 batch 步长可能是 0；地址用 int64",
      *_in(f"{_T_K}/test_rope.py", "test_matches_model_apply_rope", "test_non_contiguous_slice_of_fused_projection",
           "test_saves_only_the_table_and_backward_is_inverse_rotation")),
)
KERNEL_SWIGLU = (
    E("_swiglu_fwd_kernel",
      "形状：逐元素，一维 grid\n"
      "公式：out = silu(gate)·up = gate·σ(gate)·up，全程 fp32\n"
      "陷阱：偏移用 int64（B·T·intermediate 容易超过 2^31）；mask 尾块",
      *_in(f"{_T_K}/test_swiglu.py", "test_matches_silu_times_up_forward_and_grads", "test_low_precision_inputs_compute_in_fp32")),
    E("_swiglu_bwd_kernel",
      "形状：读 dout、gate、up，写 dgate、dup\n"
      "公式：s = σ(x)；dgate = dout·up·s·(1 + x(1 − s))；dup = dout·x·s\n"
      "陷阱：σ 重算而不是从前向存（少存一份激活）；x 极端时 (1 − s) 的精度",
      *_in(f"{_T_K}/test_swiglu.py", "test_matches_silu_times_up_forward_and_grads", "test_backward_formula_at_extreme_gates")),
)


_HAND_WRITTEN: dict[str, tuple[Exercise, ...]] = {
    f"{_INTRO}/01_Linear_Models/01_linear_regression.py": LINEAR_REGRESSION,
    f"{_INTRO}/01_Linear_Models/02_logistic_regression.py": LOGISTIC_REGRESSION,
    f"{_INTRO}/02_MLP/01_micrograd.py": MICROGRAD,
    f"{_INTRO}/02_MLP/03_manual_backprop.py": MANUAL_BACKPROP,
    f"{_INTRO}/02_MLP/04_init_and_norm.py": INIT_AND_NORM,
    f"{_INTRO}/02_MLP/05_information_theory.py": INFORMATION_THEORY,
    f"{_INTRO}/03_Transformer/01_rnn_lstm_gru.py": RNN_LSTM_GRU,
    f"{_INTRO}/03_Transformer/03_word2vec.py": WORD2VEC,
    f"{_INTRO}/03_Transformer/04_attention_mechanisms.py": ATTENTION_MECHANISMS,
    f"{_INTRO}/04_LLMs/01_causal_lm_and_sampling.py": CAUSAL_LM,
    "archive/Let's_build_GPT/let's_build_gpt.py": LETS_BUILD_GPT,
    "model_lab/01_components/basics.py": BASICS,
    "model_lab/01_components/rmsnorm.py": RMSNORM,
    "model_lab/01_components/rope.py": ROPE,
    "model_lab/01_components/swiglu.py": SWIGLU,
    "model_lab/01_components/attention.py": ATTENTION,
    "model_lab/01_components/mla.py": MLA,
    "model_lab/01_components/moe.py": MOE,
    "model_lab/02_architectures/llama.py": LLAMA,
    "data_pipeline/tokenization/basic.py": BPE_BASIC,
    "data_pipeline/tokenization/regex_bpe.py": BPE_REGEX,
    "data_pipeline/tokenization/tokenizer.py": BPE_TOKENIZER,
    "training_sys/optimization/sgd.py": SGD_,
    "training_sys/optimization/adamw.py": ADAMW,
    "training_sys/optimization/lion.py": LION,
    "training_sys/optimization/muon.py": MUON,
    "training_sys/optimization/schedules.py": SCHEDULES,
    "training_sys/optimization/clipping.py": CLIPPING,
    "training_sys/optimization/cross_entropy_loss.py": CROSS_ENTROPY_LOSS,
    "training_sys/optimization/grad_accumulation.py": GRAD_ACCUMULATION,
    "training_sys/optimization/activation_checkpointing.py": ACTIVATION_CHECKPOINTING,
    "training_sys/optimization/mixed_precision.py": MIXED_PRECISION,
    "training_sys/distributed/ddp.py": DDP,
    "training_sys/distributed/zero.py": ZERO,
    "training_sys/distributed/tensor_parallel.py": TENSOR_PARALLEL,
    "inference_engine/kernels/vector_add.py": KERNEL_VECTOR_ADD,
    "inference_engine/kernels/softmax.py": KERNEL_SOFTMAX,
    "inference_engine/kernels/rmsnorm.py": KERNEL_RMSNORM,
    "inference_engine/kernels/rope.py": KERNEL_ROPE,
    "inference_engine/kernels/swiglu.py": KERNEL_SWIGLU,
}


# =============================================================================
# 28 天挑战：exN_* 函数就是练习（从文件里读出，不重复登记）
# =============================================================================
def _puzzle_rules(node: ast.expr, source: str) -> dict[str, str]:
    """PUZZLE_ALLOWED 里逐题写出的白名单 {题名: 源码}；推导式等写法读不出逐题内容，返回空字典。"""
    if not isinstance(node, ast.Dict):
        return {}
    return {k.value: ast.get_source_segment(source, v) for k, v in zip(node.keys, node.values)
            if isinstance(k, ast.Constant)}


def _day_exercises(rel: str) -> tuple[Exercise, ...]:
    path = REPO_ROOT / rel
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    docs = {n.name: (ast.get_docstring(n) or "").strip().splitlines()[0] for n in tree.body
            if isinstance(n, ast.FunctionDef) and n.name.startswith("ex")}
    references, rules, has_puzzles = {}, {}, False
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["CHECKS"]:
            for entry in node.value.elts:
                name = entry.elts[0].value
                references[name] = ast.get_source_segment(source, entry.elts[1])
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["PUZZLE_ALLOWED"]:
            rules, has_puzzles = _puzzle_rules(node.value, source), True
    test = f"tests/archive/test_28days.py::test_reference_solutions_pass[{path.stem}]"
    out = []
    for name in references:  # CHECKS 的顺序就是做题的顺序
        if name in rules:
            rule = f"谜题规则：只许调用 {rules[name]}、len/range/int/float、广播、算术与索引"
        elif has_puzzles:
            rule = "谜题规则：这题若在文件末尾的 PUZZLE_ALLOWED 里，就只许调用那里列出的函数"
        else:
            rule = "可以用任何 PyTorch 函数，但别直接调用参考实现"
        hint = (f"目标：{docs.get(name, '')}\n"
                f"对照：{references[name]}（自检在几组随机输入上比较值、形状与 dtype）\n"
                f"{rule}\n"
                f"陷阱：dtype 也要一致（int64 还是 float、bool 掩码）；不要原地修改输入")
        out.append(E(name, hint, test))
    return tuple(out)


def _28days() -> dict[str, tuple[Exercise, ...]]:
    days = sorted((REPO_ROOT / "archive" / "28days_challenges").glob("day*.py"))
    return {p.relative_to(REPO_ROOT).as_posix(): _day_exercises(p.relative_to(REPO_ROOT).as_posix()) for p in days}


# =============================================================================
# 分册：utils/exercise_parts/*.py 每个文件一个区域（刘二讲义、数据清洗、量化……），各自导出 EXERCISES
# =============================================================================
PARTS = ("intro", "liu2", "model_lab", "cleaning", "training", "distributed", "kernels", "quantization")

# 课程顺序：status 与 check 按它列文件（同一区域内保持登记的顺序）
STAGE_ORDER = ("archive/28days_challenges/", "archive/Introductory learning/", "archive/Let's_build_GPT/",
               "archive/liu2_lecture/", "archive/kaggle/", "model_lab/", "data_pipeline/tokenization/",
               "data_pipeline/", "training_sys/optimization/", "training_sys/distributed/", "training_sys/",
               "inference_engine/kernels/", "inference_engine/quantization/", "inference_engine/")


def _stage(rel: str) -> int:
    return next((i for i, prefix in enumerate(STAGE_ORDER) if rel.startswith(prefix)), len(STAGE_ORDER))


def _parts() -> dict[str, tuple[Exercise, ...]]:
    merged: dict[str, tuple[Exercise, ...]] = {}
    for name in PARTS:  # 函数里导入：分册要 from utils.exercise_catalog import E，顶层导入会成环
        part = importlib.import_module(f"utils.exercise_parts.{name}")
        clash = merged.keys() & part.EXERCISES.keys() | _HAND_WRITTEN.keys() & part.EXERCISES.keys()
        if clash:
            raise ValueError(f"{sorted(clash)} 在练习目录里登记了两次（utils/exercise_parts/{name}.py）：每个文件只登记一处")
        merged.update(part.EXERCISES)
    return merged


@cache
def catalog() -> dict[str, tuple[Exercise, ...]]:
    """全部练习：{仓库相对路径: (Exercise, …)}，按课程顺序（Stage 1 → model_lab → … → kernels → 量化）。"""
    everything = {**_28days(), **_HAND_WRITTEN, **_parts()}
    return dict(sorted(everything.items(), key=lambda item: _stage(item[0])))  # sorted 是稳定的


# =============================================================================
# 不出练习的文件：基础设施（入口、胶水、工具），不是课；新的课程/模块文件要么登记练习，要么在这里写明为什么不
# （tests/utils/test_exercise_workspace.py::test_every_lesson_and_module_has_exercises_or_a_reason 守着）
# =============================================================================
NOT_EXERCISES: dict[str, str] = {
    "utils/exercise_catalog.py": "练习目录本身（数据）",
    "utils/exercise_workspace.py": "练习模式的工具",
    "utils/exercises.py": "练习模式的命令行入口",
    "utils/io.py": "路径与原子写入的小工具",
    "utils/lazy.py": "延迟导入的小工具",
    "utils/lesson_cli.py": "课程脚本的 --help 与参数检查",
    "utils/torch_playground.py": "种子与打印的小工具（课程 API，不是课）",
    "data_pipeline/cleaning/__main__.py": "命令行入口",
    "data_pipeline/tokenization/__main__.py": "命令行入口",
    "inference_engine/quantization/__main__.py": "命令行入口",
    "inference_engine/kernels/runtime.py": "Triton 解释器的开关与张量检查（胶水）",
    "inference_engine/kernels/ops.py": "把 kernel 包成 torch.library 自定义算子的注册（胶水）",
    "inference_engine/backends.py": "把 kernel 注册成模型后端的接线（胶水）",
    "inference_engine/kernels/cuda_kernels.py": "CUDA C 的课在 cuda/*.cu 里（练习模式只挖空 Python 函数）；本文件是 nvcc / load_inline 的构建胶水与输入检查",
    "model_lab/attention_backends.py": "注意力后端的注册表（胶水）",
    "model_lab/kernel_backends.py": "kernel 后端的注册表（胶水）",
    "training_sys/distributed/launch.py": "torchrun / spawn 的启动胶水",
    "training_sys/optimization/_checks.py": "优化器参数的输入检查",
    "training_sys/strategy.py": "训练步策略的钩子接口（单卡的每个钩子一行，forward_backward 转调 pretrain.accumulate_step）",
    "training_sys/speedrun.py": "make run 的入口：把各阶段串起来",
    "training_sys/pipeline.py": "make run 的断点续跑：阶段记录（基础设施）",
    "training_sys/speedrun_report.py": "make run 的中文报告生成",
}
