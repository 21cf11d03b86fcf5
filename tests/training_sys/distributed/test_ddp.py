"""数据并行（training_sys/distributed/ddp.py）：2 个 gloo 进程里对照 torch DDP（逐位）、单进程全局 batch（allclose），
梯度累积、冻结参数、共享权重、通信与反向的重叠、DDPStrategy 的钩子、各 rank 配置核对与报错。

一次 spawn 做完所有多进程检查（每次起进程约 3 s），结果交回父进程再逐项断言。
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from training_sys.distributed import DistributedError, spawn
from training_sys.distributed.ddp import DataParallelBucketed, DataParallelNaive, DDPStrategy, bucket_assignment
from training_sys.optimization import AdamW
from utils.torch_playground import setup_seed

PER_RANK, SEQ, STEPS, WORLD = 2, 8, 5, 2


def tiny_model() -> nn.Module:
    """共享嵌入与 lm_head（同一个 Parameter 出现两次）、最终 norm 冻结：两种特殊参数都在里面。"""
    from model_lab import Llama, LlamaConfig

    setup_seed(0)
    model = Llama(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=SEQ, tie_word_embeddings=True))
    model.model.norm.weight.requires_grad_(False)
    return model


def batch(step: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, 32, (rows, SEQ), generator=g), torch.randint(0, 32, (rows, SEQ), generator=g)


def caps_for_bucket_counts(counts: tuple[int, ...]) -> dict[int, float]:
    """找出恰好分成 1、2、3 个桶的 bucket_cap_mb（按与包装器相同的规则：逆序、MB → 字节取整）。"""
    params = [p for p in tiny_model().parameters() if p.requires_grad][::-1]
    total = sum(p.numel() * p.element_size() for p in params)
    found: dict[int, float] = {}
    for k in range(1, 400):
        cap_mb = total / k / 1024 / 1024
        n = len(bucket_assignment(params, int(cap_mb * 1024 * 1024)))
        if n in counts and n not in found:
            found[n] = cap_mb
    assert set(found) == set(counts), found
    return found


def train_params(kind: str, rank: int, cap_mb: float) -> dict[str, torch.Tensor]:
    """5 步 AdamW：kind ∈ naive / bucketed / torch（DistributedDataParallel）/ single（单进程，整个全局 batch）。"""
    model = tiny_model()
    if kind == "naive":
        wrapped = DataParallelNaive(model)
    elif kind == "bucketed":
        wrapped = DataParallelBucketed(model, cap_mb)
    elif kind == "torch":
        wrapped = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=cap_mb)
    else:
        wrapped = model
    opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for step in range(STEPS):
        x, y = batch(step, PER_RANK * WORLD)
        if kind != "single":
            x, y = x[rank * PER_RANK:(rank + 1) * PER_RANK], y[rank * PER_RANK:(rank + 1) * PER_RANK]
        _, loss = wrapped(x, y)
        loss.backward()
        if kind == "naive":
            wrapped.sync_gradients()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class _RecordAllReduce:
    """替换 dist.all_reduce，记下每次调用（是否异步）到 events 里，再交给真正的 all_reduce。"""

    def __init__(self, events: list) -> None:
        self.events, self.real = events, dist.all_reduce

    def __call__(self, tensor, *args, **kwargs):
        self.events.append(("all_reduce", bool(kwargs.get("async_op")), tensor.numel()))
        return self.real(tensor, *args, **kwargs)


def _checks(rank: int, world: int, caps: dict[int, float]) -> dict:
    from training_sys.distributed.parallel import check_same_config

    out: dict = {"equal_torch": {}, "params": {}, "n_buckets": {}}
    # 1. 朴素版与分桶版（1/2/3 个桶）对照同样 bucket_cap_mb 的 torch DDP
    runs = [("naive", 25.0)] + [("bucketed", caps[k]) for k in sorted(caps)]
    for kind, cap in runs:
        ours, theirs = train_params(kind, rank, cap), train_params("torch", rank, cap)
        key = f"{kind}-{cap:.6f}"
        out["equal_torch"][key] = all(torch.equal(ours[n], theirs[n]) for n in ours)
        out["params"][key] = ours
        if kind == "bucketed":
            out["n_buckets"][key] = len(DataParallelBucketed(tiny_model(), cap).buckets)

    # 2. 梯度累积：第一个 micro-batch 在 no_sync 里（不通信），两个 micro-batch 的梯度 = 一个两倍大的 batch
    events: list = []
    real = dist.all_reduce
    accum = DataParallelBucketed(tiny_model(), caps[3])
    x, y = batch(0, 2 * PER_RANK * world)
    mine = slice(rank * 2 * PER_RANK, (rank + 1) * 2 * PER_RANK)
    xs, ys = x[mine], y[mine]
    dist.all_reduce = _RecordAllReduce(events)
    try:
        with accum.no_sync():
            (accum(xs[:PER_RANK], ys[:PER_RANK])[1] * 0.5).backward()
        out["no_sync_calls"] = len(events)
        accum(xs[PER_RANK:], ys[PER_RANK:])[1].mul(0.5).backward()
        out["sync_calls"] = len(events) - out["no_sync_calls"]
    finally:
        dist.all_reduce = real
    big = DataParallelBucketed(tiny_model(), caps[3])
    big(xs, ys)[1].backward()
    out["accum_grads"] = {n: p.grad.clone() for n, p in accum.module.named_parameters() if p.grad is not None}
    out["big_grads"] = {n: p.grad.clone() for n, p in big.module.named_parameters() if p.grad is not None}
    out["frozen_grad_is_none"] = big.module.model.norm.weight.grad is None
    out["tied_counted_once"] = sum(len(b.params) for b in big.buckets) == sum(
        1 for p in big.module.parameters() if p.requires_grad)

    # 3. 重叠：第一个桶的 all-reduce 在反向算到第 0 层的输入梯度之前就已发起（异步），反向返回前所有桶都已发起
    events = []
    model = DataParallelBucketed(tiny_model(), caps[3])
    layer0 = model.module.model.layers[0]

    def probe(mod, args) -> None:  # 前向预钩子返回 None：不改第 0 层的输入
        args[0].register_hook(lambda g: events.append(("layer0_input_grad",)))

    hook = layer0.register_forward_pre_hook(probe)
    dist.all_reduce = _RecordAllReduce(events)
    try:
        model(*batch(1, PER_RANK))[1].backward()
    finally:
        dist.all_reduce = real
        hook.remove()
    events.append(("backward_returned",))
    out["events"] = events

    # 4. DDPStrategy 的钩子
    strategy = DDPStrategy(bucket_cap_mb=caps[2])
    model = strategy.prepare_model(tiny_model())
    out["strategy"] = {
        "sizes": (strategy.data_parallel_size, strategy.data_parallel_rank, strategy.is_main_process),
        "tokens": strategy.global_tokens(rank + 1),
        "loss": strategy.reduce_loss(torch.tensor(float(rank + 1))),
        "stop_one": strategy.stop_requested(rank == 1),
        "stop_none": strategy.stop_requested(False),
        "wrapped": type(strategy.wrap_model(model)).__name__,
    }
    try:
        strategy.no_sync(model, last_micro_batch=False)
    except TypeError as e:
        out["strategy"]["no_sync_error"] = str(e)

    # 5. 各 rank 不一致时：每个 rank 都报同一个清楚的错误，而不是挂死
    errors = {}
    for name, fn in {
        "model": lambda: DataParallelBucketed(nn.Linear(4, 4 + rank)),
        "frozen": lambda: DataParallelNaive(nn.Linear(4, 4).requires_grad_(False)),
        "config": lambda: check_same_config({"lr": 1e-3 * (1 + rank), "seed": 1}),
    }.items():
        try:
            fn()
        except ValueError as e:
            errors[name] = str(e)
    check_same_config({"lr": 1e-3, "seed": 1})  # 相同的配置：不报错
    out["errors"] = errors
    return out


@pytest.fixture(scope="module")
def results():
    caps = caps_for_bucket_counts((1, 2, 3))
    return caps, spawn(_checks, WORLD, caps, timeout_s=120)


def test_equal_to_torch_ddp_bitwise_and_ranks_agree(results):
    caps, per_rank = results
    r0, r1 = per_rank
    assert len(r0["equal_torch"]) == 4
    assert all(r0["equal_torch"].values()) and all(r1["equal_torch"].values()), r0["equal_torch"]
    assert sorted(r0["n_buckets"].values()) == [1, 2, 3]
    for key, params in r0["params"].items():
        assert all(torch.equal(params[n], r1["params"][key][n]) for n in params), key


def test_equal_to_single_process_on_the_global_batch(results):
    _, (r0, _) = results
    single = train_params("single", 0, 25.0)
    start = {n: p.detach() for n, p in tiny_model().named_parameters()}
    for key, params in r0["params"].items():
        for n, p in params.items():
            torch.testing.assert_close(p, single[n], rtol=1e-5, atol=1e-6, msg=f"{key} {n}")
        moved = [n for n in params if not torch.equal(params[n], start[n])]
        assert "model.norm.weight" not in moved  # 冻结的参数没有被同步出梯度、没有被更新
        assert "lm_head.weight" in moved or "model.embed_tokens.weight" in moved


def test_accumulation_with_no_sync_equals_one_big_batch(results):
    _, per_rank = results
    for out in per_rank:
        assert out["no_sync_calls"] == 0
        assert out["sync_calls"] == 3  # 3 个桶，每个一次 all-reduce
        assert out["accum_grads"].keys() == out["big_grads"].keys()
        for n, g in out["accum_grads"].items():
            torch.testing.assert_close(g, out["big_grads"][n], rtol=1e-5, atol=1e-7, msg=n)
        assert out["frozen_grad_is_none"] and out["tied_counted_once"]
        assert "model.norm.weight" not in out["big_grads"]


def test_bucket_all_reduce_overlaps_the_backward(results):
    _, per_rank = results
    for out in per_rank:
        events = out["events"]
        launches = [i for i, e in enumerate(events) if e[0] == "all_reduce"]
        assert len(launches) == 3 and all(events[i][1] for i in launches)  # 3 个桶，都是 async_op=True
        layer0 = events.index(("layer0_input_grad",))
        assert launches[0] < layer0  # 第一个桶在反向还没算到第 0 层时就发出去了
        assert launches[-1] < events.index(("backward_returned",))


def test_ddp_strategy_hooks(results):
    _, per_rank = results
    for rank, out in enumerate(per_rank):
        s = out["strategy"]
        assert s["sizes"] == (2, rank, rank == 0)
        assert s["tokens"] == 3 and s["loss"] == 1.5
        assert s["stop_one"] is True and s["stop_none"] is False  # 一个 rank 想停，全体一起停
        assert s["wrapped"] == "DataParallelBucketed"
        assert "DataParallelBucketed" in s["no_sync_error"]


def test_rank_mismatches_are_clear_errors_on_every_rank(results):
    _, per_rank = results
    for out in per_rank:
        assert "rank [1] 的模型与 rank 0 不同" in out["errors"]["model"]
        assert "没有 requires_grad=True 的参数" in out["errors"]["frozen"]
        assert "rank 1（lr: rank 0=0.001 本 rank=0.002）" in out["errors"]["config"]


def test_bucket_assignment_reverse_order_and_caps():
    sizes = [torch.empty(n) for n in (10, 10, 30, 5, 5)]  # 4 字节 / 元素
    assert bucket_assignment(sizes, 80) == [[0, 1], [2], [3, 4]]
    assert bucket_assignment(sizes, 10_000) == [[0, 1, 2, 3, 4]]
    assert bucket_assignment([torch.empty(4), torch.empty(4, dtype=torch.float64)], 1000) == [[0], [1]]
    with pytest.raises(ValueError, match="bucket_cap_bytes"):
        bucket_assignment(sizes, 0)


def test_needs_a_process_group_and_valid_arguments():
    assert not dist.is_initialized()
    with pytest.raises(DistributedError, match="init_from_env"):
        DataParallelBucketed(nn.Linear(2, 2))
    with pytest.raises(DistributedError, match="spawn"):
        DDPStrategy()
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        DataParallelBucketed(nn.Linear(2, 2), bucket_cap_mb=0)
