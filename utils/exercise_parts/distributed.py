"""练习目录的分册（见 utils/exercise_catalog.py 的说明）：EXERCISES = {仓库相对路径: (Exercise, …)}。

training_sys/distributed 里 ddp.py、zero.py、tensor_parallel.py 登记在 utils/exercise_catalog.py（DDP / ZERO /
TENSOR_PARALLEL）；这里是其余的课：FSDP（ZeRO-3）、流水线并行、上下文并行（ring attention）、进程网格，
以及 parallel.py 里"所有 rank 一起报同一个错"的配置核对。
多进程的测试由 spawn 起 gloo 进程：工作区的副本经 sitecustomize（随 PYTHONPATH）同样换进每个 worker，
所以 worker 里的桩照常抛 NotImplementedError，父进程的测试以 DistributedError（带 worker 的 traceback）失败。
一个测试文件的多进程检查多半合在一次 spawn 里（模块级 fixture），列出的几个测试共用这一次启动。
"""

from __future__ import annotations

from utils.exercise_catalog import E, Exercise, _in

_T_D = "tests/training_sys/distributed"

# =============================================================================
# fsdp.py：扁平切片、用时 all-gather、反向 reduce-scatter、用完即放
# =============================================================================
_T_FSDP = f"{_T_D}/test_fsdp.py"
_FSDP_TESTS = _in(_T_FSDP, "test_fp32_fsdp_equals_single_process_training_bitwise",
                  "test_gradients_live_on_the_shards_with_their_shape_and_dtype",
                  "test_half_precision_compute_matches_mixed_precision_reference")
FSDP = (
    E("FlatParam.__init__",
      "形状：entries（各原参数的形状与在扁平缓冲里的偏移）、params（原参数）→ self.shard：本 rank 的 fp32 切片 nn.Parameter，"
      "矩阵组 (1, s)、向量组 (s,)，s = ⌈Σnumel / N⌉\n"
      "公式：world、rank 取自 group；flat = zeros(s·N, fp32)，每个参数 reshape(-1) 拷进 flat[offset : offset+numel]；"
      "shard = flat[r·s : (r+1)·s].clone()；另记 entries、param_dtype、group、shard_numel、padded_numel，full = None，gathered = False\n"
      "陷阱：向上取整、补零到 N 的倍数（各 rank 等长，集合通信才能直接用）；切片要 clone（否则视图拖着整块 flat）；"
      "矩阵组保持 2-D 形状，优化器按 dim() ≥ 2 才给它 weight decay",
      *_FSDP_TESTS),
    E("FlatParam.gather",
      "形状：self.shard（fp32，s 个元素）→ 完整缓冲 full (N·s,)，dtype = param_dtype\n"
      "公式：full = empty(padded_numel, param_dtype)；切片 detach 后转成 param_dtype，用 self._all_gather_into（all_gather_single）"
      "收进 full；记下 self.full = full、gathered = True 并返回\n"
      "陷阱：先转 param_dtype 再通信（半精度时通信量减半）；每次新分配 full——它是 autograd Function 的输出，"
      "切片的梯度由 _GatherFlat.backward 负责，这里不要让切片进计算图",
      *_FSDP_TESTS),
    E("FlatParam.regather",
      "形状：无返回；把前向后被释放（存储大小为 0）的 self.full 重新填满\n"
      "公式：已经 gathered 或 full 为 None 时直接返回；否则 full.untyped_storage().resize_(padded_numel · element_size)，"
      "再把切片（转 param_dtype）all-gather 进 self.full.data；gathered = True\n"
      "陷阱：必须写回同一块存储（autograd 保存的那些视图指着它），不能新分配；写 full.data 而不是 full——"
      "否则版本计数器加一，反向报“保存的张量被原地修改”",
      *_FSDP_TESTS),
    E("FlatParam.reduce_scatter",
      "形状：grad_full (N·s,)，param_dtype → 本 rank 的梯度切片，fp32，形状同 self.shard\n"
      "公式：out = empty(s, fp32)；reduce_scatter_single(out, grad_full.float())：各 rank 的完整梯度求和，第 r 段留给 rank r；"
      "再除以 N（数据并行取平均）\n"
      "陷阱：先转 fp32 再归约（fp16 里 N 个 rank 相加会溢出或丢尾数）；返回前 view_as(shard)——矩阵组的切片是 (1, s)",
      *_FSDP_TESTS),
    E("_GatherFlat.backward",
      "形状：grad_full（完整缓冲的梯度：autograd 已把各视图的梯度累加好）→ (切片的梯度, None)\n"
      "公式：grad = ctx.flat.reduce_scatter(grad_full)；然后 flat.free() 释放完整参数；返回 (grad, None)\n"
      "陷阱：autograd 在本单元最后一次用到参数之后才调用它，所以这里释放是安全的；第二个输入 FlatParam 不是张量，梯度给 None",
      *_FSDP_TESTS),
    E("_Unit.post_forward",
      "形状：单元模块的 forward hook (module, args, output) → 无返回\n"
      "公式：每个 flat.free() 释放完整参数；对输出里每个 requires_grad 的张量 register_hook(self.pre_backward)："
      "输出的梯度一到，说明本单元的反向要开始了，先 regather\n"
      "陷阱：output 可能是 tuple / list，逐个看；不需要梯度的输出（no_grad 评估）不能挂钩子；"
      "别在这里就 regather——那样两步之间常驻的就不只是切片了",
      *_FSDP_TESTS),
    E("FSDPStrategy.clip_grad_norm",
      "形状：各切片的 .grad（fp32）、max_norm → 全局范数（0-d 张量）；切片梯度原地缩放\n"
      "公式：sq = Σ 本 rank 各切片的 g²（fp32）；all_reduce(sq) 求和；total = √sq；"
      "coef = clamp(max_norm / (total + 1e-6), max=1)；每个切片梯度乘 coef\n"
      "陷阱：先把平方和加起来再开根——各 rank 的范数不能直接相加；max_norm < 0 报 ValueError；所有 rank 用同一个系数",
      *_FSDP_TESTS),
)

# =============================================================================
# pipeline_parallel.py：阶段间收发激活与梯度、GPipe / 1F1B 调度、时间轴回放与气泡
# =============================================================================
_T_PP = f"{_T_D}/test_pipeline_parallel.py"
_PP_TWO = f"{_T_PP}::test_two_stages_match_single_process_accumulation_torch_pipelining_and_adamw"
_PP_SINGLE = f"{_T_PP}::test_single_stage_schedule_equals_accumulate_step"
_PP_REPLAY = f"{_T_PP}::test_replay_of_textbook_schedules_gives_the_bubble_formula"
PIPELINE_PARALLEL = (
    E("_StepRunner.forward",
      "形状：第 k 个 micro-batch；received 是上一段发来的激活 (B, T, C)（阶段 0 为 None，用 token id (B, T)）→ "
      "本段输出：中间段 (B, T, C)，最后一段是这个 micro-batch 的加权 loss（0-d）\n"
      "公式：非第一段 inp = received.requires_grad_()；out = stage(inp)；最后一段 out = _weighted_loss(out, y, counts[k])，"
      "并把 out.detach() 累加进 self.loss；saved[k] = (inp 或 None, out)；max_live = max(max_live, len(saved))；events 追加 (\"F\", k)\n"
      "陷阱：收到的激活要 requires_grad_，反向后它的 .grad 才是要发回前一段的 ∂L/∂x；self.loss 累加 detach 过的值，别挂住计算图",
      _PP_TWO, _PP_SINGLE),
    E("_StepRunner.backward",
      "形状：grad_out 是后一段发回的 ∂L/∂y (B, T, C)（最后一段为 None）→ 本段输入的梯度 ∂L/∂x (B, T, C)（第一段返回 None）\n"
      "公式：inp, out = saved.pop(k)；最后一段 out.backward()（out 就是 loss），其余 out.backward(grad_out)；"
      "events 追加 (\"B\", k)；返回 inp.grad\n"
      "陷阱：用 pop 而不是读取——出栈才释放这个 micro-batch 的激活（1F1B 省内存全靠它，max_live 也按 len(saved) 算）；"
      "参数的 .grad 跨 micro-batch 累加，不要清零",
      _PP_TWO, _PP_SINGLE),
    E("_StepRunner._exchange",
      "形状：sends [(张量, 对端 rank, tag)]、recvs [(对端 rank, tag)] → 收到的缓冲列表，每个 buffer_shape = (B, T, C)，"
      "本段参数的 dtype 与设备\n"
      "公式：按 buffer_shape 预分配接收缓冲；把所有 dist.isend(t.detach().contiguous(), peer, tag=tag) 与 "
      "dist.irecv(buf, peer, tag=tag) 一起贴出，再逐个 wait()\n"
      "陷阱：不能先阻塞地 send 再 recv——1F1B 稳态里相邻两段同时向对方发，gloo 的 send 要等对端贴出 recv，会死锁；"
      "发送前 detach（通信不进计算图）；tag 区分激活与梯度",
      _PP_TWO),
    E("gpipe_step",
      "形状：stage、m 个同形状的 (x, y) micro-batch → PipelineStepResult（最后一段有 loss，其余 None；max_live = m）；"
      "梯度累加进本段参数的 .grad\n"
      "公式：run = _StepRunner(stage, micro_batches, token_denominator)；k = 0..m−1：send_forward(forward(k, recv_forward()))；"
      "再 k = 0..m−1：send_backward(backward(k, recv_backward()))；返回 run.result()\n"
      "陷阱：反向也按 0..m−1 的顺序（与后一段发回梯度的顺序一致），否则收下的梯度对错了 micro-batch；"
      "GPipe 的每个阶段只朝一个方向发，逐个阻塞收发即可",
      _PP_TWO, f"{_PP_SINGLE}[gpipe_step]"),
    E("one_f_one_b_step",
      "形状：同 gpipe_step；阶段 s 同时活着的激活最多 min(p − s, m) 个\n"
      "公式：w = min(p − s − 1, m) 个预热前向（同 GPipe）；稳态 j = 0..m−w−1：前向 w+j → send_forward_recv_backward "
      "→ 反向 j → 不是最后一次就 send_backward_recv_forward（换来下一个激活），最后一次只 send_backward；"
      "冷却：k = m−w..m−1 依次 recv_backward、反向、send_backward\n"
      "陷阱：进稳态前先 recv_forward 一次（稳态为空时不收）；稳态里的发与收必须用成对贴出的组合函数，拆成阻塞的发再收会与邻居死锁；"
      "反向的是最早还没反向的 micro-batch j，不是刚前向完的那个",
      _PP_TWO, f"{_PP_SINGLE}[one_f_one_b_step]"),
    E("replay_timeline",
      "形状：每段实际执行的事件顺序 [[(\"F\" 或 \"B\", k), …], …]、t_forward、t_backward → 每段 [(kind, k, 开始, 结束), …]\n"
      "公式：反复扫各段：下一个事件的依赖——F(k) 等前一段的 F(k)，B(k) 等后一段的 B(k)（最后一段的 B(k) 等自己的 F(k)）——"
      "已结束就排上：start = max(本段时钟, 依赖的结束时刻)，end = start + t_f 或 t_b\n"
      "陷阱：依赖没就绪就停在这一段、去推进别的段；整轮扫下来没有任何进展 = 死锁，报 ValueError（不能死循环）；"
      "未知的 kind 也报 ValueError",
      _PP_REPLAY, f"{_T_PP}::test_replay_rejects_an_order_that_would_deadlock"),
    E("bubble_fraction",
      "形状：replay_timeline 的时间轴 → 空闲比例 float\n"
      "公式：makespan = 所有事件结束时刻的最大值；busy = 所有事件的 (结束 − 开始) 之和；bubble = 1 − busy / (段数 × makespan)\n"
      "陷阱：分母用整条流水线的总时长，不是各段自己的最后结束时刻；GPipe 与 1F1B 都应得 (p−1)/(m+p−1)，与 t_b/t_f 无关",
      _PP_REPLAY),
)

# =============================================================================
# context_parallel.py：zigzag 切序列、因果块的取舍、ring attention 的在线 softmax 合并与反向
# =============================================================================
_T_CP = f"{_T_D}/test_context_parallel.py"
_CP_SPLIT = f"{_T_CP}::test_zigzag_split_equals_torch_head_tail_and_merge_inverts_split"
_CP_PLAN = f"{_T_CP}::test_planned_work_balanced_for_zigzag_and_cp_times_skewed_for_contiguous"
_CP_RING = f"{_T_CP}::test_ring_attention_cp2_equals_full_sdpa_outputs_and_grads"
CONTEXT_PARALLEL = (
    E("chunk_ids",
      "形状：rank、cp、layout → 本 rank 持有的两个小块编号 (a, b)（整条序列切成 2·cp 个小块）\n"
      "公式：zigzag：(r, 2cp − 1 − r)，一头一尾；contiguous：(2r, 2r + 1)\n"
      "陷阱：先用 _check_layout、_check_cp 检查 layout 与 0 ≤ rank < cp；zigzag 的最后一个 rank 拿的是中间相邻的两块 cp−1 与 cp",
      _CP_SPLIT, _CP_PLAN),
    E("split_sequence",
      "形状：x 第 dim 维长 T → 同样的形状，但第 dim 维长 T/cp\n"
      "公式：(a, b) = chunk_ids(rank, cp, layout)；chunks = x.chunk(2cp, dim)；cat([chunks[a], chunks[b]], dim)\n"
      "陷阱：T 不被 2·cp 整除时报 ValueError（chunk 会悄悄切出不等长的块）；位置也要这样切：split_sequence(arange(T), …, dim=0) "
      "是本地 token 的全局位置",
      _CP_SPLIT),
    E("merge_sequence",
      "形状：cp 个 parts[r]（第 dim 维长 T/cp）→ 整条序列（第 dim 维长 T）\n"
      "公式：cp = len(parts)；每个 parts[r] 沿 dim 对半分成两小块，按 chunk_ids(r, cp, layout) 放回 2cp 个位置，再按编号顺序 cat\n"
      "陷阱：每段的长度必须是偶数（否则 ValueError）；zigzag 时 rank r 的第二块属于位置 2cp−1−r，不是紧挨着第一块",
      _CP_SPLIT),
    E("_block_plan",
      "形状：q 的两个小块号、K/V 的两个小块号、causal → (要算的 q 小块 range, 要算的 K/V 小块 range, 要不要掩码)；"
      "整块都在未来时返回 None\n"
      "公式：非因果：(range(2), range(2), False)；因果：可见 ⇔ kv 块号 ≤ q 块号；行 = 至少看得见一块的 q 小块，"
      "列 = 至少被一行看见的 K/V 小块，各取首到尾的连续范围；矩形里只要有一对 kv 块号 ≥ q 块号（对角或未来）就要掩码\n"
      "陷阱：对角块（块号相等）也要掩码——块内只有下三角可见；行、列返回连续的 range（调用方按 slice 取），不是挑出来的下标列表",
      _CP_PLAN, _CP_RING),
    E("_RingAttention.forward",
      "形状：q (B, H, T_l, D)、k/v (B, H_kv, T_l, D) 是本 rank 的一段 → 输出 (B, H, T_l, D)（q 的 dtype）；"
      "ctx 存 q、k、v、out（fp32）、lse (B, H, T_l)\n"
      "公式：lse = −∞、o = 0（fp32）；cp 步里第 step 步手里是 rank (r − step) mod cp 的 K/V：按 _block_plan 取块、GQA 展开，"
      "s = q·kᵀ·scale（要掩码时按全局位置 pos_k ≤ pos_q），块内 lse_b = logsumexp(s)、o_b = exp(s − lse_b)·v；"
      "lse' = logaddexp(lse, lse_b)，o = e^{lse−lse'}·o + e^{lse_b−lse'}·o_b；同时用 _Ring.shift 把 K/V 传给下一个 rank\n"
      "陷阱：先发起 shift 再算这一块、换块前 wait（最后一步不再传）；work 不为 None 时累计块数与分数个数（测试会数）；"
      "ctx 还要记 ring、causal、scale、layout、work 给反向",
      _CP_RING),
    E("_RingAttention.backward",
      "形状：dout (B, H, T_l, D) → (dq, dk, dv, 其余 5 个 None)；dq 同 q 的形状，dk/dv 同 k/v（H_kv 个头），都转回输入的 dtype\n"
      "公式：δ = Σ_d dO·o；每块重算 p = exp(s − lse)（用保存的全局 lse，掩码处置 0），dp = dO·vᵀ，ds = p·(dp − δ)；"
      "dq += ds·k·scale 留在本地；dK += dsᵀ·q·scale、dV += pᵀ·dO（GQA 按组求和）加进跟着 K/V 一起转的 fp32 累加器\n"
      "陷阱：dK/dV 累加器每步加完本 rank 的贡献再 shift 给下一个 rank，共 cp 次，正好回到 K/V 的主人手里（K/V 只转 cp−1 次）；"
      "work 记的反向块数要与前向一样",
      _CP_RING),
)

# =============================================================================
# mesh.py：rank ↔ 四维坐标，每一维的通信组
# =============================================================================
MESH = (
    E("ParallelMesh.__post_init__",
      "形状：dp、tp、pp、cp 四个正整数（乘积 = world_size）→ 填好 rank、world_size、coords {维: 坐标}、"
      "groups {维: 本 rank 所在的 ProcessGroup}、group_ranks {维: 该组的全局 rank 列表}\n"
      "公式：rank = ((pp_i·dp + dp_i)·cp + cp_i)·tp + tp_i（行优先，tp 变得最快）：grid = arange(world).reshape(pp, dp, cp, tp)；"
      "某一维的组 = 其余坐标固定、只有这一维在变的一条线（把这一维挪到最后再摊平，每行一条）\n"
      "陷阱：dist.new_group 是集合操作——每个 rank 都要按同样顺序为每一条线调用它，包括不含自己的线；"
      "各维不是正整数、乘积与 world_size 不符报 ValueError，进程组没建好报 RuntimeError",
      f"{_T_D}/test_launch_mesh.py::test_mesh_groups_equal_torch_device_mesh"),
)

# =============================================================================
# parallel.py：开训前核对各 rank 的配置（一起报同一个错，而不是有的报错、有的挂死）
# =============================================================================
PARALLEL = (
    E("check_same_config",
      "形状：本 rank 的 config dict、what（报错里的名字）→ 无返回；有 rank 不一致时每个 rank 都抛同一个 ValueError\n"
      "公式：没有进程组或 world = 1 直接返回；broadcast_object_list 拿到 rank 0 的 config；对两边键的并集逐个比较，"
      "得出本 rank 的差异（\"键: rank 0=… 本 rank=…\"）；all_gather_object 收齐各 rank 的差异；任一 rank 有差异就抛 ValueError，"
      "逐个列出 \"rank r（差异…）\"\n"
      "陷阱：不能只让不一致的 rank 报错——其余 rank 会卡在下一次集合通信里永远等；没有差异的 rank 也要参与 all_gather",
      f"{_T_D}/test_ddp.py::test_rank_mismatches_are_clear_errors_on_every_rank"),
)

EXERCISES: dict[str, tuple[Exercise, ...]] = {
    "training_sys/distributed/parallel.py": PARALLEL,
    "training_sys/distributed/mesh.py": MESH,
    "training_sys/distributed/fsdp.py": FSDP,
    "training_sys/distributed/pipeline_parallel.py": PIPELINE_PARALLEL,
    "training_sys/distributed/context_parallel.py": CONTEXT_PARALLEL,
}
