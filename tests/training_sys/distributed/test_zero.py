"""ZeRO-1 / ZeRO-2：两个 gloo 进程里对照单进程 AdamW（同一全局 batch）与 torch 的 ZeroRedundancyOptimizer。

一次 spawn 做完全部多进程检查（起进程约 3 s），各个 test 只读它交回的结果。模型用 fp64：数据并行把"全局平均梯度"
算成"各 rank 平均梯度的平均"，舍入顺序不同；fp64 下这点差别远小于 rtol 1e-7，比较才有意义。
参数总数是奇数（补齐到 world 的倍数的路径必然被走到），两个参数组（衰减 / 不衰减）。
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from training_sys.distributed import spawn
from training_sys.distributed.zero import ZeroOptimizer, ZeroStrategy
from training_sys.optimization import AdamW, clip_grad_norm, weight_decay_param_groups
from training_sys.pretrain import accumulate_step

WORLD = 2
STEPS = 10
MORE = 3
HP = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
CLIP = 0.05  # 足够小：前几步一定会真的裁剪


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # 5·7+7 + 7+7 + 7·3+3 = 80，再加一个长 3 的向量：总数 83 是奇数
    m = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Tanh(), nn.Linear(7, 3))
    m.register_parameter("extra", nn.Parameter(torch.randn(3)))
    return m.double()


def _forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x) * (1 + m.extra.sum())


def _data(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 5, generator=gen, dtype=torch.float64), torch.randn(8, 3, generator=gen, dtype=torch.float64))
            for _ in range(steps)]


def _groups(m: nn.Module) -> list[dict]:
    return weight_decay_param_groups(m, 0.1)


def _train_step(m, opt, x, y, clip: bool, clip_fn) -> torch.Tensor | None:
    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(_forward(m, x), y).backward()
    norm = clip_fn(CLIP) if clip else None
    opt.step()
    return norm


def _flat(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()]).clone()


def _local(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    b = x.size(0) // world
    return x[rank * b:(rank + 1) * b]


def _single(steps, data, clip_every=2):
    """单进程 AdamW 在全局 batch 上训练 steps 步（与 ZeRO 用同样的数据与裁剪）。"""
    m = _model()
    opt = AdamW(_groups(m), **HP)
    norms = []
    for i, (x, y) in enumerate(data[:steps]):
        norms.append(_train_step(m, opt, x, y, i % clip_every == 0, lambda c: clip_grad_norm(m.parameters(), c)))
    return m, opt, norms


def _zero_checks(rank: int, world: int) -> dict:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    data = _data(STEPS + MORE)
    out: dict = {"numel": sum(p.numel() for p in _model().parameters())}
    for stage in (1, 2):
        m = _model()
        opt = ZeroOptimizer(_groups(m), stage=stage, weight_decay=0.5, **HP)  # 组里的 weight_decay 覆盖默认值
        norms = []
        for i, (x, y) in enumerate(data[:STEPS]):
            norms.append(_train_step(m, opt, _local(x, rank, world), _local(y, rank, world), i % 2 == 0,
                                     opt.clip_grad_norm_))
            if i == 0:  # 第一步之后、zero_grad 之前量实际持有的字节数
                out[f"mem{stage}"] = opt.memory_bytes()
        out[f"params{stage}"] = _flat(m)
        out[f"norms{stage}"] = [None if n is None else n.item() for n in norms]
        out[f"state{stage}"] = opt.state_dict()  # 集合操作：每个 rank 都拿到完整的单进程格式
        out[f"pieces{stage}"] = [(pc.index, pc.numel) for pc in opt.pieces]
        # ZeRO → 单进程：完整状态装进 AdamW，继续 MORE 步
        single = _model()
        single.load_state_dict(m.state_dict())
        adamw = AdamW(_groups(single), **HP)
        # torch 的 load_state_dict 直接沿用 step 张量（之后原地 +1），深拷贝一份，留给测试的那份才不会被改
        adamw.load_state_dict(copy.deepcopy(out[f"state{stage}"]))
        for x, y in data[STEPS:]:
            _train_step(single, adamw, x, y, False, None)
        out[f"to_single{stage}"] = _flat(single)
        # ZeRO 自己也继续 MORE 步（与单进程续训应当相同）
        for x, y in data[STEPS:]:
            _train_step(m, opt, _local(x, rank, world), _local(y, rank, world), False, None)
        out[f"continued{stage}"] = _flat(m)

    # 单进程 → ZeRO：单进程训练 STEPS 步后的 state_dict 由 ZeRO-2 接着训
    ref, ref_opt, _ = _single(STEPS, data)
    m = _model()
    m.load_state_dict(ref.state_dict())
    opt = ZeroOptimizer(_groups(m), stage=2, **HP)
    opt.load_state_dict(ref_opt.state_dict())
    for x, y in data[STEPS:]:
        _train_step(m, opt, _local(x, rank, world), _local(y, rank, world), False, None)
    out["from_single"] = _flat(m)

    # torch 的 ZeroRedundancyOptimizer（按整个参数分给各 rank；梯度要自己先平均）
    m = _model()
    zro = ZeroRedundancyOptimizer(_groups(m), optimizer_class=torch.optim.AdamW, foreach=False, **HP)

    for i, (x, y) in enumerate(data[:STEPS]):
        zro.zero_grad(set_to_none=True)
        nn.functional.mse_loss(_forward(m, _local(x, rank, world)), _local(y, rank, world)).backward()
        for p in m.parameters():
            dist.all_reduce(p.grad)
            p.grad.div_(world)
        if i % 2 == 0:
            torch.nn.utils.clip_grad_norm_(m.parameters(), CLIP)
        zro.step()
    out["zro"] = _flat(m)

    # 错误：load_state_dict 的参数组 / 形状不匹配
    errors = {}
    opt = ZeroOptimizer(_groups(_model()), stage=1, **HP)
    bad = out["state1"]
    for name, sd in (("groups", {"state": bad["state"], "param_groups": bad["param_groups"][:1]}),
                     ("shape", {"state": {**bad["state"], 0: {**bad["state"][0], "exp_avg": torch.zeros(2)}},
                                "param_groups": bad["param_groups"]})):
        try:
            opt.load_state_dict(sd)
        except ValueError as e:
            errors[name] = str(e)
    try:
        ZeroOptimizer.from_optimizer(torch.optim.SGD(_model().parameters(), lr=0.1), stage=1)
    except TypeError as e:
        errors["sgd"] = str(e)
    try:
        ZeroOptimizer([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=torch.float64))], stage=1)
    except TypeError as e:
        errors["dtype"] = str(e)
    out["errors"] = errors
    out.update(_edge_checks(rank, world))
    out.update(_strategy_checks(rank, world))
    return out


def _edge_run(make_opt, rank: int, world: int) -> tuple[torch.Tensor, dict]:
    """amsgrad，且第 0 步不用 extra（它没有梯度：不更新、不建状态，之后它的 step 比别人少 1）。"""
    m = _model()
    opt = make_opt(m)
    for i, (x, y) in enumerate(_data(4)):
        x, y = _local(x, rank, world), _local(y, rank, world)
        opt.zero_grad(set_to_none=True)
        pred = m(x) if i == 0 else _forward(m, x)
        nn.functional.mse_loss(pred, y).backward()
        opt.step()
    return _flat(m), opt.state_dict()


def _edge_checks(rank: int, world: int) -> dict:
    got = _edge_run(lambda m: ZeroOptimizer(_groups(m), stage=2, amsgrad=True, **HP), rank, world)
    want = _edge_run(lambda m: AdamW(_groups(m), amsgrad=True, **HP), 0, 1)
    return {"edge": (got, want)}


def _tiny_llama(seed: int) -> nn.Module:
    from model_lab import Llama, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=31, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                      max_position_embeddings=16, attn_implementation="eager")
    return Llama(cfg).double()


def _llama_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """3 步，每步 2 个 micro-batch（全局 batch 4 条），部分 target 为 -100：各 rank 的有效 token 数不同。"""
    gen = torch.Generator().manual_seed(2)
    steps = []
    for _ in range(3):
        micro = []
        for _ in range(2):
            t = torch.randint(0, 31, (4, 9), generator=gen)
            x, y = t[:, :-1], t[:, 1:].clone()
            y[torch.rand(y.shape, generator=gen) < 0.3] = -100
            micro.append((x, y))
        steps.append(micro)
    return steps


def _llama_step(model, opt, strategy, micro, rank, world) -> tuple[float, float]:
    local = [(_local(x, rank, world), _local(y, rank, world)) for x, y in micro]
    loss = strategy.reduce_loss(accumulate_step(model, local, strategy))
    norm = strategy.clip_grad_norm(model, 0.5)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss, float(norm)


def _strategy_checks(rank: int, world: int) -> dict:
    """ZeroStrategy 的钩子走一遍训练循环的调用顺序（accumulate_step → reduce_loss → clip → step），再存 / 续训。"""
    out: dict = {}
    strategy = ZeroStrategy(stage=2)
    model = strategy.prepare_model(_tiny_llama(seed=rank))  # 种子不同：靠广播变一致
    opt = strategy.prepare_optimizer(AdamW(weight_decay_param_groups(model, 0.1), lr=3e-3, foreach=True))
    out["llama_groups"] = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    out["dp"] = (strategy.data_parallel_size, strategy.data_parallel_rank, strategy.is_main_process)
    out["tokens"] = strategy.global_tokens(rank + 1)
    out["stop"] = (strategy.stop_requested(rank == 1), strategy.stop_requested(False))
    batches = _llama_batches()
    out["llama_log"] = [_llama_step(model, opt, strategy, micro, rank, world) for micro in batches[:2]]
    with strategy.full_state(model, opt) as (full_model, opt_state):
        saved_model = {k: v.clone() for k, v in full_model.state_dict().items()}
        saved_opt = opt_state
    out["llama_saved"] = (saved_model, saved_opt)
    # 续训：新的 ZeRO-1 策略从完整状态恢复，训第 3 步
    strategy1 = ZeroStrategy(stage=1)
    model1 = strategy1.prepare_model(_tiny_llama(seed=5))
    opt1 = strategy1.prepare_optimizer(AdamW(weight_decay_param_groups(model1, 0.1), lr=3e-3))
    strategy1.load_full_state(model1, opt1, saved_model, saved_opt, strict=True)
    out["llama_resumed_log"] = _llama_step(model1, opt1, strategy1, batches[2], rank, world)
    out["llama_resumed"] = {k: v.clone() for k, v in model1.state_dict().items()}
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return spawn(_zero_checks, WORLD, timeout_s=120)


def test_parameter_count_is_odd_and_padding_splits_it():
    assert sum(p.numel() for p in _model().parameters()) % WORLD == 1


def test_zero1_and_zero2_equal_single_process_adamw(ranks):
    ref, _, ref_norms = _single(STEPS, _data(STEPS))
    for r in ranks:
        for stage in (1, 2):
            torch.testing.assert_close(r[f"params{stage}"], _flat(ref), rtol=1e-7, atol=1e-12)
            # 分片裁剪：平方和 all-reduce 后的范数与不切分的 clip_grad_norm 相同，且每个 rank 拿到同一个数
            got = [n for n in r[f"norms{stage}"] if n is not None]
            want = [n.item() for n in ref_norms if n is not None]
            assert got == pytest.approx(want, rel=1e-10)
            assert min(want) > CLIP  # 这些步真的裁剪了


def test_zero_equals_torch_zero_redundancy_optimizer(ranks):
    for r in ranks:
        torch.testing.assert_close(r["params1"], r["zro"], rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(r["params2"], r["zro"], rtol=1e-7, atol=1e-12)


def test_shards_cover_every_parameter_once_and_padding_is_not_a_parameter(ranks):
    numel = ranks[0]["numel"]
    for stage in (1, 2):
        covered = {}
        for r in ranks:
            for index, n in r[f"pieces{stage}"]:
                covered[index] = covered.get(index, 0) + n
        assert sum(covered.values()) == numel
        # 片的编号按参数组的顺序（与单进程 AdamW 的 state_dict 编号相同）
        shapes = [p.numel() for g in _groups(_model()) for p in g["params"]]
        assert covered == dict(enumerate(shapes))


def test_memory_per_rank_is_one_over_world(ranks):
    numel, b = ranks[0]["numel"], 8  # fp64
    shard = -(-numel // WORLD) * b
    for rank, r in enumerate(ranks):
        for stage in (1, 2):
            mem, pieces = r[f"mem{stage}"], r[f"pieces{stage}"]
            assert mem["params"] == numel * b  # ZeRO-1/2 不切参数
            # exp_avg + exp_avg_sq 只有本段里属于参数的坐标（最后一个 rank 的补齐零不算）；每个片一个 4 字节的 step
            owned = min(numel, (rank + 1) * shard // b) - rank * shard // b
            assert sum(n for _, n in pieces) == owned
            assert mem["optimizer"] == 2 * owned * b + 4 * len(pieces)
            assert mem["optimizer"] <= 2 * shard + 4 * len(pieces)  # 单进程 AdamW 是 2·ψ·b：这里 ⌈ψ/world⌉
        assert r["mem1"]["grads"] == -(-numel // WORLD) * WORLD * b  # stage 1：完整的平均梯度（补齐后）
        assert r["mem2"]["grads"] == shard                            # stage 2：只有本段


def test_full_state_is_the_single_process_adamw_state_dict(ranks):
    _, ref_opt, _ = _single(STEPS, _data(STEPS))
    want = ref_opt.state_dict()
    for r in ranks:
        for stage in (1, 2):
            got = r[f"state{stage}"]
            assert [g["params"] for g in got["param_groups"]] == [g["params"] for g in want["param_groups"]]
            assert [g["weight_decay"] for g in got["param_groups"]] == [0.1, 0.0]
            assert sorted(got["state"]) == sorted(want["state"])
            for i, st in want["state"].items():
                assert set(got["state"][i]) == set(st)
                assert got["state"][i]["step"].item() == st["step"].item() == STEPS
                for k in ("exp_avg", "exp_avg_sq"):
                    torch.testing.assert_close(got["state"][i][k], st[k], rtol=1e-7, atol=1e-15)


def test_checkpoint_moves_between_zero_and_single_process(ranks):
    data = _data(STEPS + MORE)
    ref, ref_opt, _ = _single(STEPS, data)
    for x, y in data[STEPS:]:
        _train_step(ref, ref_opt, x, y, False, None)
    for r in ranks:
        for stage in (1, 2):
            torch.testing.assert_close(r[f"to_single{stage}"], _flat(ref), rtol=1e-7, atol=1e-12)
            torch.testing.assert_close(r[f"continued{stage}"], _flat(ref), rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(r["from_single"], _flat(ref), rtol=1e-7, atol=1e-12)


def test_bad_input_raises_clear_errors(ranks):
    errors = ranks[0]["errors"]
    assert "参数组" in errors["groups"]
    assert "exp_avg" in errors["shape"] and "形状" in errors["shape"]
    assert "SGD" in errors["sgd"]
    assert "dtype" in errors["dtype"]
    with pytest.raises(ValueError, match="stage=3"):
        ZeroOptimizer([nn.Parameter(torch.zeros(2))], stage=3)
    with pytest.raises(ValueError, match="stage=0"):
        ZeroStrategy(stage=0)
    with pytest.raises(RuntimeError, match="进程组"):
        ZeroOptimizer([nn.Parameter(torch.zeros(2))], stage=1)
    with pytest.raises(RuntimeError, match="进程组"):
        ZeroStrategy(stage=1)


def test_strategy_hooks_reduce_over_ranks(ranks):
    assert [r["dp"] for r in ranks] == [(2, 0, True), (2, 1, False)]
    assert all(r["tokens"] == 3 for r in ranks)
    assert all(r["stop"] == (True, False) for r in ranks)
    # prepare_optimizer 保留了 AdamW 的参数组与超参数（包括 foreach，续训回单卡时不变）
    groups = ranks[0]["llama_groups"]
    assert [(g["lr"], g["weight_decay"], g["betas"], g["foreach"]) for g in groups] == [
        (3e-3, 0.1, (0.9, 0.999), True), (3e-3, 0.0, (0.9, 0.999), True)]


def test_strategy_training_equals_single_process_and_resumes(ranks):
    """训练循环的钩子顺序下，ZeRO-2 两步 + 存档 + ZeRO-1 续一步 = 单进程在全局 batch 上训三步（loss、范数、权重）。"""
    model = _tiny_llama(seed=0)
    opt = AdamW(weight_decay_param_groups(model, 0.1), lr=3e-3, foreach=True)
    log = []
    for micro in _llama_batches():
        loss = accumulate_step(model, micro).item()
        log.append((loss, float(clip_grad_norm(model.parameters(), 0.5))))
        opt.step()
        opt.zero_grad(set_to_none=True)
    for r in ranks:
        got = [*r["llama_log"], r["llama_resumed_log"]]
        for (gl, gn), (wl, wn) in zip(got, log):
            # Llama 的 RMSNorm 与交叉熵在 fp32 里算（.float()），fp64 模型也只有 fp32 的精度
            assert gl == pytest.approx(wl, rel=1e-6)
            assert gn == pytest.approx(wn, rel=1e-6)
        saved_model, saved_opt = r["llama_saved"]
        assert set(saved_model) == set(model.state_dict())
        assert {len(g["params"]) for g in saved_opt["param_groups"]} == {len(g["params"]) for g in opt.param_groups}
        for k, v in model.state_dict().items():
            torch.testing.assert_close(r["llama_resumed"][k], v, rtol=1e-6, atol=1e-8)


def test_amsgrad_and_a_parameter_without_gradient_match_adamw(ranks):
    for r in ranks:
        (params, state), (want_params, want_state) = r["edge"]
        torch.testing.assert_close(params, want_params, rtol=1e-7, atol=1e-12)
        steps = {i: st["step"].item() for i, st in state["state"].items()}
        assert steps == {i: st["step"].item() for i, st in want_state["state"].items()}
        assert sorted(set(steps.values())) == [3.0, 4.0]  # extra 少走了一步
        for i, st in want_state["state"].items():
            assert set(state["state"][i]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"} == set(st)
            for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                torch.testing.assert_close(state["state"][i][k], st[k], rtol=1e-7, atol=1e-15)
