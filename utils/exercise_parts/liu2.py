"""练习目录的分册（见 utils/exercise_catalog.py 的说明）：EXERCISES = {仓库相对路径: (Exercise, …)}。

刘二《PyTorch 深度学习实践》13 讲（archive/liu2_lecture/）：每讲挖空它要教的那几个函数——拟合与损失、手推梯度、
训练循环、softmax/交叉熵、im2col 卷积、RNN/GRU 单元；判分测试在 tests/archive/test_exercises_liu2.py，
每个测试只考一个函数，与 PyTorch / NumPy 的实现或测试里独立写出的计算对照。
"""

from __future__ import annotations

from utils.exercise_catalog import E, Exercise

_L = "archive/liu2_lecture"
_T = "tests/archive/test_exercises_liu2.py"

# =============================================================================
# 01 概述：多项式最小二乘与过拟合
# =============================================================================
LECTURE01 = (
    E("design_matrix",
      "形状：x (N,) ∈ [0, 1]、degree d → Φ (N, d+1) float64\n"
      "公式：先换元 t = 2x − 1 ∈ [−1, 1]，Φ_{ij} = t_i^j，j = 0..d（np.vander 可以做，注意它的 increasing 参数）\n"
      "陷阱：列从 0 次开始、升幂排列（np.vander 默认是降幂）；忘了换元时高次列全挤在 0 附近，条件数大得多",
      f"{_T}::test_l01_design_matrix_is_vandermonde_of_2x_minus_1"),
    E("fit_polynomial",
      "形状：x (N,)、y (N,)、degree d → 系数 w (d+1,)，对应 design_matrix 的列\n"
      "公式：w = argmin ‖Φw − y‖²，用 np.linalg.lstsq(Φ, y, rcond=None) 解（QR/SVD）\n"
      "陷阱：不要解正规方程 inv(ΦᵀΦ)Φᵀy——条件数被平方，高次时几乎奇异；d + 1 > N 时没有唯一解，要报 ValueError",
      f"{_T}::test_l01_fit_polynomial_matches_numpy_polyfit"),
    E("mse",
      "形状：w (d+1,)、x (N,)、y (N,) → Python float\n"
      "公式：mean((Φ(x) w − y)²)，次数 d 从 len(w) − 1 得到\n"
      "陷阱：Φ 要用与拟合时同样的 design_matrix（同样的换元），否则系数对不上；返回 float 而不是 0 维数组",
      f"{_T}::test_l01_mse_of_polynomial_coefficients"),
    E("degree_sweep",
      "形状：训练集、测试集各 (N,)、max_degree → (train_err, test_err) 两个长 max_degree+1 的 list\n"
      "公式：d = 0..max_degree 各拟合一次（只用训练集），分别算训练集与测试集上的 MSE\n"
      "陷阱：包含 0 次（就是预测训练集均值）；测试集只用来评估，绝不参与拟合",
      f"{_T}::test_l01_degree_sweep_matches_polyfit_errors"),
)

# =============================================================================
# 02 线性模型：穷举参数
# =============================================================================
LECTURE02 = (
    E("mse",
      "形状：x (N,)、y (N,)、标量 w、b → Python float\n"
      "公式：mean((x·w + b − y)²)（用 forward 算预测）\n"
      "陷阱：x 与 y 形状不同时要报 ValueError，别让广播悄悄算出 (N, N)",
      f"{_T}::test_l02_mse_with_and_without_bias"),
    E("grid_search_w",
      "形状：x (N,)、y (N,)、网格 ws (K,) → (最优 w: float, losses (K,))\n"
      "公式：losses[k] = MSE(ws[k])，最优 w = ws[argmin losses]\n"
      "陷阱：返回网格上的那个值，不是下标；losses 要全部保留（画曲线用）",
      f"{_T}::test_l02_grid_search_w_returns_argmin_and_every_loss"),
    E("grid_search_wb",
      "形状：x (N,)、ws (K,)、bs (J,) → (w, b, loss (K, J))，loss[i, j] = MSE(ws[i], bs[j])\n"
      "公式：不写循环，广播一次算完：ws 放第 0 维、bs 放第 1 维、样本 x 放最后一维 → pred (K, J, N)，再对样本维求均值\n"
      "陷阱：argmin 给的是展平后的下标，用 np.unravel_index 拆回 (i, j)；轴的顺序是 (w, b)",
      f"{_T}::test_l02_grid_search_wb_equals_double_loop"),
    E("closed_form_w",
      "形状：x (N,)、y (N,) → float w*\n"
      "公式：dMSE/dw = (2/N) Σ x(xw − y) = 0 ⇒ w* = Σxy / Σx²\n"
      "陷阱：这是无偏置模型 ŷ = xw 的解；带 b 时要解 2×2 的正规方程（或 lstsq）",
      f"{_T}::test_l02_closed_form_w_matches_lstsq"),
)

# =============================================================================
# 03 梯度下降：GD 与 SGD
# =============================================================================
LECTURE03 = (
    E("cost",
      "形状：x (N,)、y (N,)、标量 w → float\n"
      "公式：cost(w) = mean((x·w − y)²)\n"
      "陷阱：求均值而不是求和（梯度与学习率的尺度都跟着它）",
      f"{_T}::test_l03_cost_is_mse"),
    E("gradient",
      "形状：x (N,)、y (N,)、标量 w → float\n"
      "公式：∂cost/∂w = mean(2x(xw − y))（链式法则：外层平方给 2(xw − y)，内层给 x）\n"
      "陷阱：别漏了因子 2 和内层的 x；对均值求导也是均值",
      f"{_T}::test_l03_gradient_matches_autograd"),
    E("gradient_descent",
      "形状：x、y (N,)、初值 w、lr、epochs → (最终 w, history)，history 有 epochs + 1 项\n"
      "公式：先 check_lr；每个 epoch：记下当前 cost，再 w ← w − lr·gradient(w)；循环结束后再记一次 cost\n"
      "陷阱：history[0] 是训练前、最后一项是训练完的 cost；每个 epoch 只用全部样本更新一次",
      f"{_T}::test_l03_gradient_descent_equals_autograd_full_batch_steps"),
    E("stochastic_gradient_descent",
      "形状：同 gradient_descent：(最终 w, history)，history 有 epochs + 1 项（整批 cost）\n"
      "公式：每个 epoch 先记整批 cost，再按顺序对每个样本 w ← w − lr·2x_i(x_i w − y_i)；最后再记一次 cost\n"
      "陷阱：一个 epoch 更新 N 次，每次只用一个样本的梯度，而且用的是刚更新过的 w；不要打乱顺序（与参照逐步对照）",
      f"{_T}::test_l03_stochastic_gradient_descent_equals_autograd_per_sample_steps"),
)

# =============================================================================
# 04 反向传播：计算图上手推梯度
# =============================================================================
LECTURE04 = (
    E("quadratic_forward_backward",
      "形状：标量 x、y、w1、w2、b → (loss, ∂L/∂w1, ∂L/∂w2, ∂L/∂b) 四个 float\n"
      "公式：ŷ = w1·x² + w2·x + b，r = ŷ − y，L = r²；g = 2r，∂L/∂w1 = g·x²，∂L/∂w2 = g·x，∂L/∂b = g\n"
      "陷阱：加法节点把上游梯度原样分给每个输入；乘法节点给一边的是 g 乘另一边的值",
      f"{_T}::test_l04_quadratic_forward_backward_matches_autograd"),
    E("train_quadratic",
      "形状：epochs、lr → (history: 每 epoch 一项, (w1, w2, b))；w1、w2、b 都从 1.0 开始，float64\n"
      "公式：逐样本 SGD：loss = (w1x² + w2x + b − y)²，loss.backward()，在 no_grad 下 p -= lr·p.grad，再 p.grad.zero_()；"
      "history 记该 epoch 3 个样本 loss（各自更新前算的）的平均\n"
      "陷阱：不清零梯度会累加成几步之和；更新要放在 torch.no_grad()（或 .data）里，不能进计算图",
      f"{_T}::test_l04_train_quadratic_equals_autograd_per_sample_sgd"),
    E("two_layer_manual",
      "形状：x (N, in)、y (N, O)、W1 (H, in)、b1 (H,)、W2 (O, H)、b2 (O,) → (L, dW1, db1, dW2, db2)\n"
      "公式：h = σ(xW1ᵀ + b1)，ŷ = hW2ᵀ + b2，L = mean((ŷ − y)²)；g = 2(ŷ − y)/numel，dW2 = gᵀh，db2 = Σ_N g，"
      "g_z = (gW2)·h(1 − h)，dW1 = g_zᵀx，db1 = Σ_N g_z\n"
      "陷阱：mean 的 1/numel 是所有元素个数 N·O，不是 N；偏置在 batch 上广播，梯度要沿 batch 求和",
      f"{_T}::test_l04_two_layer_manual_matches_autograd"),
    E("quadratic_epoch_map",
      "形状：lr、样本 xs（默认 X_DATA）→ M (3, 3) np.ndarray\n"
      "公式：φ = (x², x, 1)，一个样本的更新让误差 e ← (I − 2α φφᵀ) e；按样本顺序连乘 M = A_N ⋯ A_1\n"
      "陷阱：矩阵乘的顺序：后处理的样本乘在左边（M = A_i @ M）；A 里是 2α（loss 是平方，不是 ½ 平方）",
      f"{_T}::test_l04_quadratic_epoch_map_equals_one_sgd_epoch"),
)

# =============================================================================
# 05 用 PyTorch 实现线性回归：损失、一步 SGD、训练循环
# =============================================================================
LECTURE05 = (
    E("mse",
      "形状：pred、target 同形状 (N, 1) → 0 维张量\n"
      "公式：(pred − target)² 按 reduction 求 mean 或 sum\n"
      "陷阱：课上的 size_average=False 就是 'sum'：梯度是 mean 的 N 倍；其它 reduction 要报 ValueError",
      f"{_T}::test_l05_mse_matches_mseloss_values_and_grads"),
    E("manual_sgd_step",
      "形状：model（参数的 .grad 已由 backward 填好）、lr → None，原地更新\n"
      "公式：对每个参数 θ ← θ − lr·θ.grad\n"
      "陷阱：放在 torch.no_grad() 里原地减（p -= …）；写成 p = p − … 只是换了局部变量，参数没变",
      f"{_T}::test_l05_manual_sgd_step_equals_torch_sgd"),
    E("train",
      "形状：优化器名、epochs、seed → (model, history)，history 有 epochs + 1 项（sum-MSE）\n"
      "公式：torch.manual_seed(seed) 后建 LinearModel，按 OPTIMIZERS[name] 建优化器；closure 里 zero_grad → "
      "loss = MSELoss(sum) → backward → return loss；每步 history.append(opt.step(closure).item())，最后无梯度再算一次 loss\n"
      "陷阱：LBFGS 必须传 closure（它一步里要多次重算 loss）；step(closure) 返回的是更新前的 loss",
      f"{_T}::test_l05_train_loop_equals_reference_loop"),
)

# =============================================================================
# 06 逻辑回归：sigmoid 与 BCE
# =============================================================================
LECTURE06 = (
    E("sigmoid",
      "形状：z 任意形状 → 同形状，值在 [0, 1]\n"
      "公式：z ≥ 0 时 1/(1 + e^{−z})，z < 0 时 e^{z}/(1 + e^{z})——两支都只对 −|z| 取 exp\n"
      "陷阱：朴素的 1/(1 + exp(−z)) 在 z 很负时 exp 溢出成 inf，结果是 0，小概率的相对精度全丢了",
      f"{_T}::test_l06_sigmoid_matches_torch_without_overflow"),
    E("bce",
      "形状：p、y 同形状（p ∈ [0, 1]）→ 0 维张量（mean 或 sum）\n"
      "公式：−[y·log p + (1 − y)·log(1 − p)]，两个 log 都截断到 ≥ −100（与 nn.BCELoss 相同）\n"
      "陷阱：p = 0 或 1 时 log 0 = −inf，0·(−inf) = nan——先截断 log 再乘；log(1 − p) 用 torch.log1p(−p)",
      f"{_T}::test_l06_bce_matches_bceloss_with_clamp_and_grads"),
    E("bce_with_logits",
      "形状：logit z、标签 y 同形状 → 0 维张量（mean）\n"
      "公式：把 log σ(z) = −softplus(−z) 代进 BCE：mean(softplus(z) − y·z)\n"
      "陷阱：不要先算 sigmoid 再取 log（|z| 大时得 log 0）；softplus 用 F.softplus，它内部对大 z 直接返回 z",
      f"{_T}::test_l06_bce_with_logits_is_stable_for_huge_logits"),
)

# =============================================================================
# 07 多维输入：矩阵形式的批量前向
# =============================================================================
LECTURE07 = (
    E("MultiDimModel.forward",
      "形状：x (N, in) → (N, 1) 概率\n"
      "公式：sigmoid(linear1) → sigmoid(linear2) → sigmoid(linear3)，in → 6 → 4 → 1\n"
      "陷阱：最后一层也要过 sigmoid（训练用的是 nn.BCELoss，吃概率）；输入形状不对时报 ValueError",
      f"{_T}::test_l07_multidim_model_forward_is_three_linear_sigmoid_layers"),
    E("forward_per_sample",
      "形状：model、x (N, in) → (N, 1)\n"
      "公式：对每一行 row (in,)：h = σ(W h + b) 依次过 linear1..3（矩阵乘向量），最后 torch.stack\n"
      "陷阱：单个样本是列向量的写法 W @ h（W 是 (out, in)），不是 h @ W；结果要与整批的矩阵形式一致",
      f"{_T}::test_l07_forward_per_sample_equals_batched_layers"),
    E("split_and_standardize",
      "形状：X (N, F)、y (N,) → (X_tr, y_tr (N_tr, 1), X_te, y_te (N_te, 1)) 四个 float32 张量，N_te = int(N·0.25)\n"
      "公式：perm = default_rng(seed).permutation(N)，前 N_te 个做测试；mean、std 只用训练行算，两边都 (X − mean)/(std + 1e-8)\n"
      "陷阱：用全体或测试集的统计量就是信息泄漏；标签要变成 (N, 1) 列，与模型输出同形状",
      f"{_T}::test_l07_split_and_standardize_uses_training_statistics_only"),
)

# =============================================================================
# 08 Dataset 与 DataLoader：手写加载器、Titanic 特征工程
# =============================================================================
LECTURE08 = (
    E("titanic_features",
      "形状：DataFrame（Sex、Age、SibSp、Parch、Fare、Pclass、Embarked 列）→ (X (N, 12) float32, 列名 list)\n"
      "公式：列依次是 is_female、age/80（缺失填 age_median，默认本表中位数）、age_missing、sibsp、parch、log1p(fare，缺失记 0)、"
      "pclass_1..3、embarked_S/C/Q（缺失填 S）\n"
      "陷阱：舱位、港口是类别要 one-hot，不能当数值；给了 age_median（训练集的）就必须用它",
      f"{_T}::test_l08_titanic_features_columns_and_values"),
    E("make_datasets",
      "形状：df、seed → (train TitanicDataset, test TitanicDataset, 列名)\n"
      "公式：tr, te = split_frame(df, seed)；age_median 只取训练表；两边都用它做 titanic_features，标签是 Survived 列\n"
      "陷阱：测试集不能用自己的中位数填缺失（那是偷看测试集）",
      f"{_T}::test_l08_make_datasets_fills_age_with_the_training_median"),
    E("SimpleDataLoader.__len__",
      "形状：→ int，一个 epoch 的 iteration 数\n"
      "公式：drop_last 时 ⌊N / batch_size⌋，否则 ⌈N / batch_size⌉\n"
      "陷阱：向上取整用 −(−N // bs)，不要用浮点 math.ceil(N / bs)（大数会有舍入）",
      f"{_T}::test_l08_simple_loader_len_equals_dataloader"),
    E("SimpleDataLoader.__iter__",
      "形状：逐个 yield 批次 (x (B, F), y (B, 1))，B = batch_size（最后一批可能更小）\n"
      "公式：shuffle 时 order = torch.randperm(N, generator=self.generator)，否则 0..N−1；按 batch_size 切片，"
      "取出样本后逐字段 torch.stack\n"
      "陷阱：每次 __iter__ 都重新 randperm（每个 epoch 打乱一次）；drop_last 时丢掉不满的最后一批",
      f"{_T}::test_l08_simple_loader_batches_equal_dataloader"),
)

# =============================================================================
# 09 softmax 分类器：softmax、log-softmax、NLL、交叉熵
# =============================================================================
LECTURE09 = (
    E("softmax",
      "形状：z (..., C) → 同形状，沿 dim 和为 1\n"
      "公式：e = exp(z − max_dim z)，p = e / Σ_dim e（keepdim=True 才能广播）\n"
      "陷阱：不减 max 时 z > 709.78（float64）或 88.72（float32）就溢出成 inf/inf = nan",
      f"{_T}::test_l09_softmax_matches_torch_for_huge_logits"),
    E("log_softmax",
      "形状：z (..., C) → 同形状\n"
      "公式：log p_k = z_k − m − log Σ_j exp(z_j − m)，m = max_dim z\n"
      "陷阱：不要写成 log(softmax(z))：很小的概率会下溢成 0，log 得 −inf",
      f"{_T}::test_l09_log_softmax_matches_torch_for_huge_logits"),
    E("nll_loss",
      "形状：log_probs (N, C)、target (N,) long → 0 维张量\n"
      "公式：−mean_i log_probs[i, y_i]，用 gather(1, target[:, None]) 取每行真实类别那一格\n"
      "陷阱：target 是类别下标不是 one-hot；不要写成 log_probs[:, target]（那是 (N, N)）",
      f"{_T}::test_l09_nll_loss_matches_torch"),
    E("cross_entropy",
      "形状：logits (N, C)、target (N,) → 0 维张量\n"
      "公式：交叉熵 = NLL(log_softmax(logits))，就是 nn.CrossEntropyLoss 的分工\n"
      "陷阱：输入是原始 logit，不要先过 softmax 再传进来（那就算了两次 softmax）",
      f"{_T}::test_l09_cross_entropy_matches_torch"),
    E("cross_entropy_grad",
      "形状：logits (N, C)、target (N,) → ∂L/∂logits (N, C)\n"
      "公式：(softmax(z) − onehot(y)) / N\n"
      "陷阱：损失是 batch 平均，别漏了 1/N；onehot 的 dtype 要与 logits 一致",
      f"{_T}::test_l09_cross_entropy_grad_is_softmax_minus_onehot_over_n"),
)

# =============================================================================
# 10 基础 CNN：尺寸公式、im2col 卷积、课上的网络
# =============================================================================
LECTURE10 = (
    E("conv_output_size",
      "形状：size、kernel、stride、padding、dilation（int）→ 输出边长 int\n"
      "公式：⌊(H + 2p − d(k − 1) − 1) / s⌋ + 1（池化同一个公式，stride 取 kernel）\n"
      "陷阱：膨胀后核覆盖 d(k − 1) + 1 个像素；向下取整；填充后仍比核小时报 ValueError",
      f"{_T}::test_l10_conv_output_size_matches_conv2d_and_maxpool"),
    E("conv2d_unfold",
      "形状：x (N, C, H, W)、weight (O, C, k, k)、bias (O,) 或 None → (N, O, H_out, W_out)\n"
      "公式：cols = F.unfold(x, k, dilation, padding, stride) → (N, C·k·k, L)；out = weight.reshape(O, −1) @ cols + bias[:, None]，"
      "再 reshape 成 (N, O, H_out, W_out)\n"
      "陷阱：H_out、W_out 要分别按公式算（输入不一定是方的）；bias 为 None 时不加；通道数不匹配要报 ValueError",
      f"{_T}::test_l10_conv2d_unfold_matches_conv2d_values_and_grads"),
    E("BasicCNN.forward",
      "形状：x (N, 1, H, W) → (N, 10) logit\n"
      "公式：relu(pool(conv1(x))) → relu(pool(conv2(·))) → flatten(1) → fc\n"
      "陷阱：flatten 从第 1 维开始（保留 batch）；最后不加 softmax（交给 cross_entropy）",
      f"{_T}::test_l10_basic_cnn_forward_is_conv_pool_relu_twice_then_linear"),
)

# =============================================================================
# 11 高级 CNN：1×1 卷积、Inception、残差
# =============================================================================
LECTURE11 = (
    E("conv1x1_as_linear",
      "形状：x (N, C, H, W)、weight (O, C, 1, 1)、bias (O,) → (N, O, H, W)\n"
      "公式：out[n, o, h, w] = Σ_c W[o, c]·x[n, c, h, w] + b[o]（einsum('oc,nchw->nohw')）\n"
      "陷阱：权重先取 [:, :, 0, 0] 变成 (O, C)；bias 要 reshape 成 (O, 1, 1) 才能按通道广播",
      f"{_T}::test_l11_conv1x1_as_linear_matches_conv2d"),
    E("conv_mults",
      "形状：h、w、c_in、c_out、k → 乘法次数 int\n"
      "公式：same 卷积每个输出元素 k·k·c_in 次乘法，共 h·w·c_out 个输出元素\n"
      "陷阱：192→32 的 5×5 直接卷是 120,422,400 次；先 1×1 压到 16 通道再 5×5 只要 12,443,648 次",
      f"{_T}::test_l11_conv_mults_counts_multiplications_of_a_same_conv"),
    E("InceptionA.forward",
      "形状：x (N, C_in, H, W) → (N, 88, H, W)\n"
      "公式：四条分支 branch1x1 | 5x5_1→5x5_2 | 3x3_1→3x3_2→3x3_3 | avg_pool2d(3, stride=1, padding=1)→branch_pool，"
      "torch.cat(dim=1)\n"
      "陷阱：拼接顺序 [1×1, 5×5, 3×3, pool]（后面的层按这个通道顺序学权重）；平均池化要 stride=1、padding=1 才保持 H×W",
      f"{_T}::test_l11_inception_forward_concatenates_four_branches"),
    E("ResidualBlock.forward",
      "形状：x (N, C, H, W) → 同形状\n"
      "公式：y = conv2(relu(conv1(x)))，输出 relu(x + y)\n"
      "陷阱：先加 x 再过最后一个 ReLU（不是 x + relu(y)）；F 的权重全为 0 时输出应恰好是 relu(x)",
      f"{_T}::test_l11_residual_block_adds_the_input_before_the_last_relu"),
)

# =============================================================================
# 12 基础 RNN：一步 RNNCell、多层 nn.RNN
# =============================================================================
LECTURE12 = (
    E("rnn_cell",
      "形状：x (B, input)、h (B, hidden)、W_ih (hidden, input)、W_hh (hidden, hidden)、两个偏置 (hidden,) → h' (B, hidden)\n"
      "公式：h' = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)\n"
      "陷阱：权重是 (out, in) 布局，要转置；两个偏置都要加（nn.RNNCell 有 b_ih 和 b_hh 两份）",
      f"{_T}::test_l12_rnn_cell_matches_nn_rnncell"),
    E("rnn_with_cells",
      "形状：x (T, B, input)、h0 (L, B, hidden)、rnn: nn.RNN → (output (T, B, hidden), h_n (L, B, hidden))\n"
      "公式：第 l 层取 weight_ih_l{l} 等权重，从 h0[l] 出发沿时间步调用 rnn_cell；它的输出序列是第 l+1 层的输入\n"
      "陷阱：同一层所有时间步共享权重；output 是最后一层每一步的 h，h_n 是每一层最后一步的 h",
      f"{_T}::test_l12_rnn_with_cells_matches_nn_rnn"),
    E("CellModel.forward",
      "形状：x (T, B, 4) one-hot → (T, B, hidden) 每步的隐状态（直接当 logit）\n"
      "公式：h = 0 (B, hidden)；对每个 x_t：h = self.cell(x_t, h)，收集后 torch.stack\n"
      "陷阱：h 的 batch 维是 x.shape[1]（时间在第 0 维）；每一步要把新 h 传给下一步，而不是都用 h0",
      f"{_T}::test_l12_cell_model_forward_equals_nn_rnn_from_zero_state"),
)

# =============================================================================
# 13 高级 RNN：GRU 与补零 + pack 的名字分类器
# =============================================================================
LECTURE13 = (
    E("name_to_codes",
      "形状：非空字符串 → list[int]（ASCII 码）\n"
      "公式：unicodedata.normalize('NFKD') 分解后去掉组合字符（重音），每个字符 ord(c)，≥ 128 的记 ord('?')\n"
      "陷阱：É 分解成 E + 重音符，去掉重音才是 E；空名字要报 ValueError",
      f"{_T}::test_l13_name_to_codes_strips_accents_and_maps_non_ascii_to_question_mark"),
    E("make_batch",
      "形状：names: list[str] → (batch (B, T_max) long, lengths (B,))\n"
      "公式：每个名字 name_to_codes，放在第 i 行开头，其余补 0；lengths 是各自的真实长度\n"
      "陷阱：补的是 0（NUL，名字里不会出现）放在右边；lengths 是去重音之后的码数",
      f"{_T}::test_l13_make_batch_pads_with_zeros_and_returns_lengths"),
    E("gru_cell",
      "形状：x (B, in)、h (B, H)、w_ih (3H, in)、w_hh (3H, H)、b_ih、b_hh (3H,) → h' (B, H)\n"
      "公式：gi = xW_ihᵀ + b_ih、gh = hW_hhᵀ + b_hh 各按 [r, z, n] chunk(3)；r = σ(i_r + h_r)，z = σ(i_z + h_z)，"
      "n = tanh(i_n + r·h_n)，h' = (1 − z)·n + z·h\n"
      "陷阱：r 乘的是 h_n（含 b_hn），不是乘在 h 上再过矩阵（PyTorch/cuDNN 的约定）；z 是保留旧状态的比例",
      f"{_T}::test_l13_gru_cell_matches_nn_grucell"),
    E("NameClassifier.forward",
      "形状：batch (B, T) long、lengths (B,) → (B, n_classes) logit\n"
      "公式：embedding → pack_padded_sequence(lengths.cpu(), batch_first=True, enforce_sorted=False) → gru → "
      "hidden；双向时 cat(hidden[−2], hidden[−1])，单向取 hidden[−1]，再 fc\n"
      "陷阱：不 pack 时短名字的\"最后状态\"是读完一串补零之后的；双向取的是最后一层的正向、反向两份",
      f"{_T}::test_l13_name_classifier_padded_batch_equals_each_name_alone"),
)

EXERCISES: dict[str, tuple[Exercise, ...]] = {
    f"{_L}/lecture01_overview.py": LECTURE01,
    f"{_L}/lecture02_linear_model.py": LECTURE02,
    f"{_L}/lecture03_gradient_descent.py": LECTURE03,
    f"{_L}/lecture04_back_propagation.py": LECTURE04,
    f"{_L}/lecture05_linear_regression_torch.py": LECTURE05,
    f"{_L}/lecture06_logistic_regression.py": LECTURE06,
    f"{_L}/lecture07_multiple_dimension_input.py": LECTURE07,
    f"{_L}/lecture08_dataset_dataloader.py": LECTURE08,
    f"{_L}/lecture09_softmax_classifier.py": LECTURE09,
    f"{_L}/lecture10_basic_cnn.py": LECTURE10,
    f"{_L}/lecture11_advanced_cnn.py": LECTURE11,
    f"{_L}/lecture12_basic_rnn.py": LECTURE12,
    f"{_L}/lecture13_advanced_rnn.py": LECTURE13,
}
