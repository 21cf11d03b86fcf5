"""张量并行：2 个 gloo 进程里，每个并行层、整个 Llama（含序列并行）与几步训练都和单进程对照，MLP 还和 DTensor 对照。

两次 spawn：一次核对各个层与通信算子，一次核对整个模型与训练策略；每个 rank 在本进程里自己算单进程参照
（同一个种子、同一份权重），把差值交回父进程断言。
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from training_sys.distributed import spawn
from training_sys.distributed.tensor_parallel import (
    ColumnParallelLinear,
    ParallelAttention,
    ParallelMLP,
    RowParallelLinear,
    TensorParallelStrategy,
    VocabParallelEmbedding,
    apply_tensor_parallel,
    communication_log,
    copy_to_tensor_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_parallel_region,
    reduce_from_tensor_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_parallel_region,
    tensor_parallel_dims,
    vocab_parallel_cross_entropy,
)

_llama = importlib.import_module("model_lab.02_architectures.llama")


def _config(**kw):
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)
    return _llama.LlamaConfig(**{**base, **kw})


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _chunk(t: torch.Tensor, dim: int, rank: int) -> torch.Tensor:
    return t.chunk(2, dim)[rank]


# ---------------------------------------------------------------------------------------------------
# 各层与通信算子
# ---------------------------------------------------------------------------------------------------


def _mapping_ops_exact(rank: int, group) -> dict[str, bool]:
    """整数值的输入与上游梯度：每个算子的前向与反向都能手算出精确结果（加法没有舍入）。"""
    def x_of(r):  # 第 r 个 rank 的输入：(B, T, C) = (2, 4, 6)
        return torch.arange(48.0).reshape(2, 4, 6) * (r + 1) - 7

    def g_of(r, shape):  # 第 r 个 rank 从上游收到的梯度
        return torch.arange(float(torch.Size(shape).numel())).reshape(shape) % 5 - 2 * r

    both_x = [x_of(r) for r in range(2)]
    ok = {}
    cases = {
        # 名字: (算子, 前向的期望, 给定各 rank 上游梯度 gs 时反向的期望)
        "f": (copy_to_tensor_parallel_region, lambda: both_x[rank], lambda gs: gs[0] + gs[1]),
        "g": (reduce_from_tensor_parallel_region, lambda: both_x[0] + both_x[1], lambda gs: gs[rank]),
        "gather_last": (gather_from_tensor_parallel_region, lambda: torch.cat(both_x, -1),
                        lambda gs: _chunk(gs[rank], -1, rank)),
        "split_last": (scatter_to_tensor_parallel_region, lambda: _chunk(both_x[rank], -1, rank),
                       lambda gs: torch.cat(gs, -1)),
        "gather_seq": (gather_from_sequence_parallel_region, lambda: torch.cat(both_x, 1),
                       lambda gs: _chunk(gs[0] + gs[1], 1, rank)),
        "reduce_scatter_seq": (reduce_scatter_to_sequence_parallel_region,
                               lambda: _chunk(both_x[0] + both_x[1], 1, rank), lambda gs: torch.cat(gs, 1)),
    }
    for name, (op, fwd, bwd) in cases.items():
        x = both_x[rank].clone().requires_grad_(True)
        y = op(x, group)
        gs = [g_of(r, y.shape) for r in range(2)]
        y.backward(gs[rank])
        ok[name] = torch.equal(y, fwd()) and torch.equal(x.grad, bwd(gs))
    return ok


def _layers_worker(rank: int, world: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from utils.torch_playground import setup_seed

    group = dist.group.WORLD
    out: dict = {"mapping": _mapping_ops_exact(rank, group)}
    setup_seed(0)

    # 列并行：前向与完整 Linear 逐位相同；梯度
    lin = nn.Linear(16, 8)
    x = torch.randn(3, 5, 16, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    col = ColumnParallelLinear(lin, group, gather_output=True)
    y, y_ref = col(x), lin(x_ref)
    up = torch.randn_like(y_ref)
    y.backward(up)
    y_ref.backward(up)
    out["column_equal"] = torch.equal(y, y_ref)
    out["column_grads"] = max(_max_diff(x.grad, x_ref.grad), _max_diff(col.weight.grad, _chunk(lin.weight.grad, 0, rank)),
                              _max_diff(col.bias.grad, _chunk(lin.bias.grad, 0, rank)))

    # 行并行（输入是完整的，先切）：bias 只加一次
    lin2 = nn.Linear(16, 8)
    x, x_ref = x.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)
    row = RowParallelLinear(lin2, group, input_is_parallel=False)
    y, y_ref = row(x), lin2(x_ref)
    y.backward(up)
    y_ref.backward(up)
    out["row"] = max(_max_diff(y, y_ref), _max_diff(x.grad, x_ref.grad),
                     _max_diff(row.weight.grad, _chunk(lin2.weight.grad, 1, rank)), _max_diff(row.bias.grad, lin2.bias.grad))

    # SwiGLU MLP（带 bias）：输出、输入梯度、各切片的权重梯度；前向恰好 1 次 all-reduce
    cfg = _config(mlp_bias=True, attention_bias=True)
    mlp = _llama.MLP(cfg)
    pmlp = ParallelMLP(copy.deepcopy(mlp), group)
    x = torch.randn(2, 6, cfg.hidden_size, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    with communication_log() as log:
        y = pmlp(x)
    out["mlp_forward_comm"] = [kind for kind, _ in log]
    y_ref = mlp(x_ref)
    up = torch.randn_like(y_ref)
    y.backward(up)
    y_ref.backward(up)
    out["mlp"] = max(_max_diff(y, y_ref), _max_diff(x.grad, x_ref.grad),
                     _max_diff(pmlp.gate_proj.weight.grad, _chunk(mlp.gate_proj.weight.grad, 0, rank)),
                     _max_diff(pmlp.up_proj.bias.grad, _chunk(mlp.up_proj.bias.grad, 0, rank)),
                     _max_diff(pmlp.down_proj.weight.grad, _chunk(mlp.down_proj.weight.grad, 1, rank)),
                     _max_diff(pmlp.down_proj.bias.grad, mlp.down_proj.bias.grad))

    # 序列并行的 MLP：输入、输出都只是本 rank 那段 token；复制的 down bias 的梯度在反向里加齐
    psp = ParallelMLP(copy.deepcopy(mlp), group, sequence_parallel=True)
    psp.zero_grad(set_to_none=True)  # deepcopy 连 .grad 一起拷了（复制的 bias 沿用原来的 Parameter）
    x_sp = _chunk(x.detach(), 1, rank).clone().requires_grad_(True)
    with communication_log() as log:
        y_sp = psp(x_sp)
    out["mlp_sp_forward_comm"] = [kind for kind, _ in log]
    y_sp.backward(_chunk(up, 1, rank))
    out["mlp_sp"] = max(_max_diff(y_sp, _chunk(y_ref, 1, rank)), _max_diff(x_sp.grad, _chunk(x_ref.grad, 1, rank)),
                        _max_diff(psp.gate_proj.weight.grad, _chunk(mlp.gate_proj.weight.grad, 0, rank)),
                        _max_diff(psp.down_proj.bias.grad, mlp.down_proj.bias.grad))

    # DTensor 的 ColwiseParallel / RowwiseParallel：同一个 MLP、同样的切法
    mesh = init_device_mesh("cpu", (world,))
    dt_mlp = parallelize_module(copy.deepcopy(mlp), mesh, {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(),
                                                           "down_proj": RowwiseParallel()})
    x_dt = x.detach().clone().requires_grad_(True)
    y_dt = dt_mlp(x_dt)
    y_dt.backward(up)
    out["dtensor_shards_equal"] = all(torch.equal(getattr(pmlp, n).weight, getattr(dt_mlp, n).weight.to_local())
                                      for n in ("gate_proj", "up_proj", "down_proj"))
    out["vs_dtensor"] = max(_max_diff(y, y_dt), _max_diff(x.grad, x_dt.grad),
                            *(_max_diff(getattr(pmlp, n).weight.grad, getattr(dt_mlp, n).weight.grad.to_local())
                              for n in ("gate_proj", "up_proj", "down_proj")))

    # GQA 注意力（4 个 q 头、2 个 kv 头，按整头切），RoPE 与因果掩码照常
    attn = _llama.Attention(cfg, 0)
    pattn = ParallelAttention(copy.deepcopy(attn), group)
    rope = _llama.RotaryEmbedding(cfg)(torch.arange(6)[None])
    x, x_ref = x.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)
    y, y_ref = pattn(x, rope, None, None, None), attn(x_ref, rope, None, None, None)
    y.backward(up)
    y_ref.backward(up)
    out["attention_heads"] = (pattn.n_head, pattn.n_kv_head)
    out["attention"] = max(_max_diff(y, y_ref), _max_diff(x.grad, x_ref.grad),
                           *(_max_diff(getattr(pattn, n).weight.grad, _chunk(getattr(attn, n).weight.grad, 0, rank))
                             for n in ("q_proj", "k_proj", "v_proj")),
                           _max_diff(pattn.o_proj.weight.grad, _chunk(attn.o_proj.weight.grad, 1, rank)),
                           _max_diff(pattn.q_proj.bias.grad, _chunk(attn.q_proj.bias.grad, 0, rank)))

    # 词表并行的嵌入：查表逐位相同，梯度只落在本 rank 的行上
    emb = nn.Embedding(20, 8)
    pemb = VocabParallelEmbedding(copy.deepcopy(emb), group)
    ids = torch.randint(0, 20, (3, 7))
    e, e_ref = pemb(ids), emb(ids)
    up_e = torch.randn_like(e_ref)
    e.backward(up_e)
    e_ref.backward(up_e)
    out["embedding_equal"] = torch.equal(e, e_ref)
    out["embedding_grad"] = _max_diff(pemb.weight.grad, _chunk(emb.weight.grad, 0, rank))

    # 词表并行的交叉熵（含 ignore_index）：loss 与 logits 的梯度
    logits = (torch.randn(2, 9, 20) * 3).requires_grad_(True)
    targets = torch.randint(0, 20, (2, 9))
    targets[0, :3] = -100
    local = _chunk(logits.detach(), -1, rank).clone().requires_grad_(True)
    with communication_log() as log:
        loss = vocab_parallel_cross_entropy(local, targets, group)
    loss_ref = F.cross_entropy(logits.view(-1, 20), targets.view(-1), ignore_index=-100)
    loss.backward()
    loss_ref.backward()
    out["ce_comm_elements"] = sum(n for _, n in log)
    out["ce"] = max(abs(loss.item() - loss_ref.item()), _max_diff(local.grad, _chunk(logits.grad, -1, rank)))

    # 坏输入：kv 头数不能被 tp 整除
    errors = {}
    for kw in ({"num_key_value_heads": 1}, {"vocab_size": 63}):
        try:
            apply_tensor_parallel(_llama.Llama(_config(**kw)), group)
        except ValueError as e:
            errors[next(iter(kw))] = str(e)
    out["errors"] = errors
    return out


def test_parallel_layers_and_mapping_ops_match_single_process_and_dtensor():
    per_rank = spawn(_layers_worker, 2, timeout_s=120)
    for rank, out in enumerate(per_rank):
        assert out["mapping"] == dict.fromkeys(out["mapping"], True) and len(out["mapping"]) == 6, (rank, out["mapping"])
        assert out["column_equal"] and out["embedding_equal"], rank
        for key in ("column_grads", "row", "mlp", "mlp_sp", "attention", "embedding_grad", "ce", "vs_dtensor"):
            assert out[key] < 1e-6, (rank, key, out[key])
        assert out["mlp_forward_comm"] == ["all_reduce"]  # 一个 MLP 的前向恰好一次 all-reduce
        assert out["mlp_sp_forward_comm"] == ["all_gather", "reduce_scatter"]  # 序列并行：拆成两半，字节数相同
        assert out["dtensor_shards_equal"], rank
        assert out["attention_heads"] == (2, 1)
        assert out["ce_comm_elements"] == 3 * 18  # max、目标 logit、Σexp：每个 token 3 个数，不 gather logits
        assert "num_key_value_heads=1 is not divisible by tp=2" in out["errors"]["num_key_value_heads"]
        assert "vocab_size=63 is not divisible by tp=2" in out["errors"]["vocab_size"]


# ---------------------------------------------------------------------------------------------------
# 整个 Llama 与训练策略
# ---------------------------------------------------------------------------------------------------


def _gathered_grads(model, group) -> dict[str, torch.Tensor]:
    dims = tensor_parallel_dims(model)
    return {name: gather_from_tensor_parallel_region(p.grad.movedim(dims[name], -1), group).movedim(-1, dims[name])
            if name in dims else p.grad for name, p in model.named_parameters()}


def _train_steps(model, optimizer, strategy, batches, max_norm) -> list[float]:
    from training_sys.pretrain import accumulate_step

    norms = []
    for micro_batches in batches:
        accumulate_step(model, micro_batches, strategy)
        norms.append(float(strategy.clip_grad_norm(model, max_norm)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return norms


def _train_config(data: str, out_dir: str, resume: bool = False):
    from training_sys.pretrain import TrainConfig

    return TrainConfig(data=data, out_dir=out_dir, resume=resume, overwrite=not resume, n_layer=2, n_head=2, n_embd=32,
                       block_size=16, batch_size=4, max_iters=6, warmup_iters=1, eval_interval=2, eval_iters=2,
                       checkpoint_interval=2, sample_tokens=8, grad_clip=0.3, threads=1, progress=False)


def _summary(result) -> tuple:
    return result.step, result.train_loss, result.val_loss, [h.get("sample") for h in result.history]


def _llama_worker(rank: int, world: int, data: str, out_dir: str) -> dict:
    from training_sys.optimization import AdamW, weight_decay_param_groups
    from training_sys.strategy import SingleDevice
    from utils.torch_playground import setup_seed

    group = dist.group.WORLD
    out: dict = {}
    setup_seed(0)
    ids = torch.randint(0, 64, (2, 8))
    targets = torch.randint(0, 64, (2, 8))
    targets[1, :2] = -100
    for name, cfg_kw, sp in (("tp", {}, False), ("sp", {}, True), ("tied_sp", {"tie_word_embeddings": True}, True)):
        ref = _llama.Llama(_config(**cfg_kw))
        model = copy.deepcopy(ref)
        if rank == 1:  # 1 号的权重被打乱：apply_tensor_parallel 先广播 0 号的权重，结果仍与 0 号的模型相同
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        model = apply_tensor_parallel(model, group, sequence_parallel=sp)
        logits_ref, loss_ref = ref(ids, targets)
        loss_ref.backward()
        logits, loss = model(ids, targets)
        loss.backward()
        full_logits = model(ids)  # 不给 targets：all-gather 后的完整 logits
        # T=7 不是 tp 的倍数：序列并行在右侧补齐，真实位置的 logits 与 loss 不变
        with torch.no_grad():
            odd_ref_logits, odd_ref_loss = ref(ids[:, :7], targets[:, :7])
            odd_logits, odd_loss = model(ids[:, :7], targets[:, :7])
            odd_full = model(ids[:, :7], position_ids=torch.arange(3, 10), attention_mask=torch.ones(2, 7))
            odd_full_ref = ref(ids[:, :7], position_ids=torch.arange(3, 10), attention_mask=torch.ones(2, 7))
        grads = _gathered_grads(model, group)
        ref_grads = dict(ref.named_parameters())
        out[name] = {"logits": max(_max_diff(gather_from_tensor_parallel_region(logits, group), logits_ref),
                                   _max_diff(full_logits, logits_ref),
                                   _max_diff(gather_from_tensor_parallel_region(odd_logits, group), odd_ref_logits),
                                   _max_diff(odd_full, odd_full_ref)),
                     "odd_loss": abs(odd_loss.item() - odd_ref_loss.item()),
                     "local_vocab": logits.size(-1), "loss": abs(loss.item() - loss_ref.item()),
                     "grads": max(_max_diff(g, ref_grads[n].grad) for n, g in grads.items()),
                     "names": sorted(grads) == sorted(ref_grads),
                     "full_state_dict": max(_max_diff(v, ref.state_dict()[k])
                                            for k, v in model.full_state_dict().items())}

    # 训练：同样的 AdamW 步（梯度累积 2 个 micro-batch，裁剪生效）与单进程对照；再从完整状态续训一步。
    # eps=1e-6：|g| ~ 1e-8 的元素上 Adam 会把求和顺序带来的舍入差放大成 lr 量级的更新差（见 tensor_parallel.main）
    setup_seed(1)
    batches = [[(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))) for _ in range(2)] for _ in range(4)]
    ref = _llama.Llama(_config())
    tp_model = copy.deepcopy(ref)
    single = SingleDevice()
    ref_opt = AdamW(weight_decay_param_groups(ref, 0.1), lr=1e-3, eps=1e-6)
    ref_norms = _train_steps(ref, ref_opt, single, batches[:3], max_norm=0.5)
    strategy = TensorParallelStrategy(sequence_parallel=True)
    tp_model = strategy.prepare_model(tp_model)
    opt = AdamW(weight_decay_param_groups(tp_model, 0.1), lr=1e-3, eps=1e-6)
    norms = _train_steps(tp_model, opt, strategy, batches[:3], max_norm=0.5)
    out["norms"] = (norms, ref_norms)
    with strategy.full_state(tp_model, opt) as (full_model, full_opt):
        full_sd = {k: v.clone() for k, v in full_model.state_dict().items()}
        out["full_model_type"] = type(full_model).__name__
    ref_opt_sd = ref_opt.state_dict()
    out["weights"] = max(_max_diff(v, ref.state_dict()[k]) for k, v in full_sd.items())
    out["opt_keys"] = (sorted(full_opt["state"]) == sorted(ref_opt_sd["state"])
                       and full_opt["param_groups"] == ref_opt_sd["param_groups"])
    out["opt_state"] = max(_max_diff(st[k], ref_opt_sd["state"][i][k])
                           for i, st in full_opt["state"].items() for k in ("exp_avg", "exp_avg_sq"))
    # 续训：一个新的张量并行模型装回完整状态（无序列并行——checkpoint 与并行方式无关），与单进程再走一步
    strategy2 = TensorParallelStrategy()
    resumed = strategy2.prepare_model(_llama.Llama(_config()))
    opt2 = AdamW(weight_decay_param_groups(resumed, 0.1), lr=1e-3, eps=1e-6)
    strategy2.load_full_state(resumed, opt2, full_sd, full_opt, strict=True)
    _train_steps(resumed, opt2, strategy2, batches[3:], max_norm=0.5)
    _train_steps(ref, ref_opt, single, batches[3:], max_norm=0.5)
    out["resumed"] = max(_max_diff(v, ref.state_dict()[k]) for k, v in resumed.full_state_dict().items())
    out["stop"] = strategy.stop_requested(rank == 1)  # 只有 1 号想停：全体一起停
    # save_pretrained 写出的是完整的 HF 目录（只有 0 号写），普通 Llama 能直接加载
    saved = resumed.save_pretrained(f"{out_dir}_hf")
    dist.barrier()
    loaded = _llama.Llama.from_pretrained(saved)
    out["saved"] = max(_max_diff(v, loaded.state_dict()[k]) for k, v in resumed.full_state_dict().items())

    # 真正的训练循环：张量 + 序列并行训练到第 3 步被打断（保存完整 checkpoint），再续训到第 6 步
    from training_sys.pretrain import train

    first = train(_train_config(data, out_dir), strategy=TensorParallelStrategy(sequence_parallel=True),
                  on_step=lambda step, record: step == 3)
    resumed_run = train(_train_config(data, out_dir, resume=True), strategy=TensorParallelStrategy(sequence_parallel=True))
    out["train"] = (first.step, first.interrupted, _summary(resumed_run))

    from training_sys.optimization import Muon

    errors = {}
    for key, fn in (("generate", lambda: resumed.generate(ids, 2)),
                    ("muon", lambda: strategy2.prepare_optimizer(Muon([{"params": [resumed.lm_head.weight]}]))),
                    ("kv_cache", lambda: resumed(ids, kv_cache=object()))):
        try:
            fn()
        except ValueError as e:
            errors[key] = str(e)
    out["errors"] = errors
    return out


def test_tensor_parallel_llama_and_strategy_match_single_process(tmp_path):
    from training_sys.pretrain import train

    # 64 个不同字符的语料：字符级词表 64 能被 tp=2 整除
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n"
    text = "".join(alphabet[(i * i + 3 * i) % 64] for i in range(6000)) + alphabet
    data = tmp_path / "text.txt"
    data.write_text(text, encoding="utf-8")
    reference = _summary(train(_train_config(str(data), str(tmp_path / "single"))))
    per_rank = spawn(_llama_worker, 2, str(data), str(tmp_path / "tp"), timeout_s=180)
    for rank, out in enumerate(per_rank):
        for name in ("tp", "sp", "tied_sp"):
            d = out[name]
            assert d["names"] and d["local_vocab"] == 32, (rank, name)
            for key in ("logits", "loss", "odd_loss", "grads", "full_state_dict"):
                assert d[key] < 1e-5, (rank, name, key, d[key])
        norms, ref_norms = out["norms"]
        assert norms == pytest.approx(ref_norms, rel=1e-5) and max(ref_norms) > 0.5  # 裁剪真的生效了
        assert out["full_model_type"] == "Llama"
        assert out["weights"] < 1e-5 and out["opt_state"] < 1e-6 and out["opt_keys"], rank
        assert out["resumed"] < 1e-5, rank
        assert out["saved"] == 0.0
        assert out["stop"] is True
        first_step, interrupted, (step, train_loss, val_loss, samples) = out["train"]
        assert (first_step, interrupted, step) == (3, True, 6)
        assert train_loss == pytest.approx(reference[1], abs=1e-5) and val_loss == pytest.approx(reference[2], abs=1e-5)
        assert len(samples) == 2 and all(samples) and samples == reference[3][-2:]  # 续训之后的样例与单进程逐字相同
        assert "full_model()" in out["errors"]["generate"]
        assert "KV cache" in out["errors"]["kv_cache"]
        assert "不支持 Muon" in out["errors"]["muon"]


# ---------------------------------------------------------------------------------------------------
# dp × tp：4 个进程排成 2 × 2 的网格，与单进程用全局 batch 训练对照
# ---------------------------------------------------------------------------------------------------

DP, TP, PER_DP_BATCH = 2, 2, 2


def _dp_tp_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """3 步 × 2 个 micro-batch 的全局 batch（每个 DP·PER_DP_BATCH 条）；第 1 个 dp 组那份里有不少 -100：
    两个 dp 组的有效 token 数不同，按 token 归一化与"各组平均再平均"给出不同的梯度。"""
    gen = torch.Generator().manual_seed(5)
    steps = []
    for _ in range(3):
        micro = []
        for k in range(2):
            x = torch.randint(0, 64, (DP * PER_DP_BATCH, 8), generator=gen)
            y = torch.randint(0, 64, (DP * PER_DP_BATCH, 8), generator=gen)
            y[PER_DP_BATCH:, : 5 + k] = -100
            micro.append((x, y))
        steps.append(micro)
    return steps


def _dp_tp_reference(steps):
    """单进程：同一份初始权重、全局 batch、同样的 AdamW 与裁剪。返回 (权重, 每步 loss, 每步裁剪前的范数, 优化器)。"""
    from training_sys.optimization import AdamW, weight_decay_param_groups
    from training_sys.pretrain import accumulate_step
    from training_sys.strategy import SingleDevice
    from utils.torch_playground import setup_seed

    setup_seed(0)
    model = _llama.Llama(_config())
    opt = AdamW(weight_decay_param_groups(model, 0.1), lr=1e-3, eps=1e-6)
    single, losses, norms = SingleDevice(), [], []
    for micro in steps:
        losses.append(accumulate_step(model, micro, single).item())
        norms.append(float(single.clip_grad_norm(model, 0.5)))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model.state_dict(), losses, norms


def _dp_tp_worker(rank: int, world: int, data: str, out_dir: str) -> dict:
    from training_sys.distributed.mesh import ParallelMesh
    from training_sys.optimization import AdamW, weight_decay_param_groups
    from training_sys.pretrain import accumulate_step, rank_slice, train
    from utils.torch_playground import setup_seed

    out: dict = {}
    strategy = TensorParallelStrategy(tp_size=TP)
    out["dp"] = (strategy.data_parallel_size, strategy.data_parallel_rank)
    setup_seed(0)
    model = _llama.Llama(_config())
    if rank == 2:  # 第 1 个 dp 组的 tp 组 0 号权重被打乱：prepare_model 在 dp 组里再广播一次，所有 rank 仍从 rank 0 的权重出发
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    model = strategy.prepare_model(model)
    out["groups"] = (sorted(dist.get_process_group_ranks(strategy.group)),
                     sorted(dist.get_process_group_ranks(strategy.dp_group)))
    opt = AdamW(weight_decay_param_groups(model, 0.1), lr=1e-3, eps=1e-6)
    losses, norms, tokens = [], [], []
    with communication_log() as log:
        accumulate_step(model, [rank_slice(b, PER_DP_BATCH, strategy.data_parallel_rank) for b in _dp_tp_batches()[0]],
                        strategy)
    model.zero_grad(set_to_none=True)
    # 梯度同步：只在最后一个 micro-batch 之后、每个参数恰好一次（一个 25 MB 的桶装下整个小模型）
    out["grad_sync"] = ([n for kind, n in log if kind == "grad_all_reduce"], sum(p.numel() for p in model.parameters()))
    for micro in _dp_tp_batches():
        mine = [rank_slice(b, PER_DP_BATCH, strategy.data_parallel_rank) for b in micro]
        tokens.append((sum(int((y != -100).sum()) for _, y in mine), strategy.global_tokens(
            sum(int((y != -100).sum()) for _, y in mine))))
        losses.append(strategy.reduce_loss(accumulate_step(model, mine, strategy)))
        norms.append(float(strategy.clip_grad_norm(model, 0.5)))
        opt.step()
        opt.zero_grad(set_to_none=True)
    out["losses"], out["norms"], out["tokens"] = losses, norms, tokens
    with strategy.full_state(model, opt) as (full, full_opt):
        out["weights"] = {k: v.clone() for k, v in full.state_dict().items()}
        out["opt_keys"] = sorted(full_opt["state"])
    out["stop"] = strategy.stop_requested(rank == 3)  # 只有最后一个 rank 想停：整个 world 一起停

    # 真正的训练循环：每个 dp 组 batch_size=2 条，4 个 rank 合起来等于单进程 batch_size=4
    result = train(_dp_tp_train_config(data, out_dir, PER_DP_BATCH), strategy=TensorParallelStrategy(tp_size=TP))
    out["train_ckpt"] = str(result.checkpoint_dir) if rank == 0 else None

    mesh, pp_mesh = ParallelMesh(dp=2, tp=2), ParallelMesh(pp=2, tp=2)  # 所有 rank 同时建组
    from_mesh = TensorParallelStrategy(mesh)
    out["mesh_dp"] = (from_mesh.data_parallel_size, from_mesh.data_parallel_rank)
    errors = {}
    for key, fn in (("world", lambda: TensorParallelStrategy(tp_size=3)),
                    ("zero", lambda: TensorParallelStrategy(tp_size=0)),
                    ("both", lambda: TensorParallelStrategy(mesh, tp_size=2)),
                    ("pp", lambda: TensorParallelStrategy(pp_mesh)),
                    ("heads", lambda: TensorParallelStrategy(tp_size=4).prepare_model(_llama.Llama(_config())))):
        try:
            fn()
        except ValueError as e:
            errors[key] = str(e)
    out["errors"] = errors
    return out


def _dp_tp_train_config(data: str, out_dir: str, batch_size: int):
    from training_sys.pretrain import TrainConfig

    return TrainConfig(data=data, out_dir=out_dir, overwrite=True, n_layer=1, n_head=2, n_embd=16, block_size=16,
                       batch_size=batch_size, grad_accum=2, max_iters=3, warmup_iters=1, eval_interval=3, eval_iters=1,
                       checkpoint_interval=3, sample_tokens=0, grad_clip=0.3, threads=1, progress=False, seed=7)


def _metrics_losses(run_dir) -> list[float]:
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def test_dp_x_tp_strategy_matches_single_process_on_the_global_batch(tmp_path):
    from safetensors.torch import load_file

    from training_sys.pretrain import train

    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n"  # 词表 64：能被 tp=2 整除
    data = tmp_path / "text.txt"
    data.write_text("".join(alphabet[(i * i + 7 * i) % 64] for i in range(4000)) + alphabet, encoding="utf-8")
    steps = _dp_tp_batches()
    ref_weights, ref_losses, ref_norms = _dp_tp_reference(steps)
    per_rank = spawn(_dp_tp_worker, DP * TP, str(data), str(tmp_path / "dp_tp"), timeout_s=180)
    single = train(_dp_tp_train_config(str(data), str(tmp_path / "single"), DP * PER_DP_BATCH))

    total = [sum(int((y != -100).sum()) for _, y in micro) for micro in steps]
    for rank, out in enumerate(per_rank):
        assert out["dp"] == (DP, rank // TP), rank  # tp 在最里层：rank = dp_i·tp + tp_i
        assert out["grad_sync"][0] == [out["grad_sync"][1]], rank
        assert out["groups"] == ([rank // TP * TP, rank // TP * TP + 1], [rank % TP, rank % TP + TP]), rank
        assert [g for _, g in out["tokens"]] == total  # 只在 dp 组里求和：不重复计 tp 次
        assert out["losses"] == pytest.approx(ref_losses, abs=1e-6)
        assert out["norms"] == pytest.approx(ref_norms, rel=1e-5) and max(ref_norms) > 0.5  # 裁剪真的生效了
        assert out["weights"].keys() == ref_weights.keys()
        worst = max(_max_diff(v, ref_weights[k]) for k, v in out["weights"].items())
        assert worst < 1e-5, (rank, worst)
        assert out["opt_keys"] == list(range(len(out["opt_keys"]))) and out["stop"] is True
        assert "world_size=4 is not divisible by tp_size=3" in out["errors"]["world"]
        assert "tp_size=0" in out["errors"]["zero"] and "只能给一个" in out["errors"]["both"]
        assert "pp=2" in out["errors"]["pp"] and out["mesh_dp"] == out["dp"]
        assert "num_key_value_heads=2 is not divisible by tp=4" in out["errors"]["heads"]
    # 两个 dp 组的本地 token 数确实不同（否则 token 归一化没被考验）
    assert per_rank[0]["tokens"][0][0] != per_rank[2]["tokens"][0][0]

    # 训练循环：每步 loss 与单进程全局 batch 的相差 ≤ 1e-5；只有 rank 0 写出一个完整的 HF checkpoint
    ours, ref = _metrics_losses(tmp_path / "dp_tp"), _metrics_losses(single.run_dir)
    assert len(ours) == len(ref) == 3 and ours == pytest.approx(ref, abs=1e-5), (ours, ref)
    mine, theirs = load_file(f"{per_rank[0]['train_ckpt']}/model.safetensors"), load_file(
        str(single.checkpoint_dir / "model.safetensors"))
    assert mine.keys() == theirs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k], rtol=1e-4, atol=1e-5, msg=k)
