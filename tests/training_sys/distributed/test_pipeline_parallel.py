"""流水线并行：GPipe 与 1F1B 在 2 个（以及 3 个）gloo 进程里的 loss、梯度、AdamW 步与单进程梯度累积相同，
活着的激活数（GPipe = m，1F1B = p - stage），回放出的气泡比例等于 (p-1)/(m+p-1)，与 torch.distributed.pipelining 相同；
切分与调度的错误输入。"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model_lab import Llama, LlamaConfig
from training_sys.distributed import ParallelMesh, spawn
from training_sys.distributed.pipeline_parallel import (
    LlamaStage,
    bubble_fraction,
    gpipe_step,
    one_f_one_b_step,
    plot_schedules,
    replay_timeline,
)
from training_sys.optimization import AdamW
from training_sys.pretrain import accumulate_step
from utils.torch_playground import setup_seed

SCHEDULES = {"gpipe": gpipe_step, "1f1b": one_f_one_b_step}
ADAMW_STEPS = 3


def _config(layers: int = 4, **kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32, **kw)


def _micro_batches(m: int, config: LlamaConfig, masked: bool, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """m 个 (2, 6) 的 micro-batch；masked=True 时各 micro-batch 的有效 token 数不同，其中一个全是 -100（贡献 0）。"""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(m):
        x = torch.randint(0, config.vocab_size, (2, 6), generator=gen)
        y = torch.randint(0, config.vocab_size, (2, 6), generator=gen)
        if masked:
            y[:, : k + 1] = -100
            if k == 1:
                y[:] = -100
        out.append((x, y))
    return out


def _numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    # spawn 交回的张量要按值传：torch 的共享内存句柄在子进程退出后就失效了
    return {k: v.detach().numpy().copy() for k, v in tensors.items()}


def _pipeline_worker(rank: int, world: int, config: LlamaConfig, batches: dict, with_torch: bool) -> dict:
    setup_seed(0)
    model = Llama(config)
    stage = LlamaStage.from_mesh(model, ParallelMesh(pp=world))
    out = {"names": [n for n, _ in stage.named_parameters()]}
    for name, step in SCHEDULES.items():
        stage.zero_grad(set_to_none=True)
        res = step(stage, batches["masked"])
        out[name] = {"loss": None if res.loss is None else res.loss.item(), "live": res.max_live_activations,
                     "events": res.events, "grads": _numpy({n: p.grad for n, p in stage.named_parameters()})}
        # m < p：1F1B 的预热在前几段就吃掉了全部 micro-batch，没有稳态
        stage.zero_grad(set_to_none=True)
        step(stage, batches["short"])
        out[f"{name}_short"] = _numpy({n: p.grad for n, p in stage.named_parameters()})
    if with_torch:
        from training_sys.distributed.pipeline_parallel import _torch_pipelining_grads

        for name, step in SCHEDULES.items():
            stage.zero_grad(set_to_none=True)
            step(stage, batches["plain"])
            ours = {n: p.grad.clone() for n, p in stage.named_parameters()}
            theirs = _torch_pipelining_grads(stage, batches["plain"], name)
            out[f"torch_{name}"] = max((ours[n] - torch.from_numpy(g)).abs().max().item() for n, g in theirs.items())
    # 几步 AdamW：每段只更新自己的参数（逐元素的优化器，分段更新 = 整体更新），两种调度交替使用
    opt = AdamW(stage.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for i in range(ADAMW_STEPS):
        opt.zero_grad(set_to_none=True)
        res = (gpipe_step if i % 2 else one_f_one_b_step)(stage, batches["steps"][i])
        losses.append(None if res.loss is None else res.loss.item())
        opt.step()
    out["adamw"] = {"losses": losses, "params": _numpy(dict(stage.named_parameters()))}
    return out


def _reference(config: LlamaConfig, batches: dict) -> dict:
    """单进程：同一份初始权重上的梯度累积（训练循环的 accumulate_step）与同样几步 AdamW。"""
    setup_seed(0)
    model = Llama(config)
    loss = accumulate_step(model, batches["masked"]).item()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    accumulate_step(model, batches["short"])
    short = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for i in range(ADAMW_STEPS):
        opt.zero_grad(set_to_none=True)
        losses.append(accumulate_step(model, batches["steps"][i]).item())
        opt.step()
    return {"loss": loss, "grads": grads, "short": short, "losses": losses, "params": dict(model.named_parameters())}


def _merged(per_rank: list[dict], pick) -> dict[str, torch.Tensor]:
    merged = {}
    for out in per_rank:
        part = pick(out)
        assert not set(part) & set(merged), "两个阶段持有同一个参数"
        merged.update({n: torch.from_numpy(v) for n, v in part.items()})
    return merged


def _assert_close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], what: str) -> None:
    assert ours.keys() == ref.keys(), f"{what}：各段参数名拼起来应等于完整模型的 HF 参数名"
    for n, r in ref.items():
        assert (ours[n] - r.detach()).abs().max().item() < 1e-5, f"{what}：{n}"


def _check_pipeline(world: int, m: int, with_torch: bool) -> list[dict]:
    config = _config(layers=2 * world)
    batches = {"masked": _micro_batches(m, config, masked=True),
               "plain": _micro_batches(m, config, masked=False, seed=2),
               "short": _micro_batches(world - 1, config, masked=True, seed=3),
               "steps": [_micro_batches(m, config, masked=i == 1, seed=10 + i) for i in range(ADAMW_STEPS)]}
    per_rank = spawn(_pipeline_worker, world, config, batches, with_torch, timeout_s=150)
    ref = _reference(config, batches)
    formula = (world - 1) / (m + world - 1)
    for name in SCHEDULES:
        assert [out[name]["loss"] for out in per_rank[:-1]] == [None] * (world - 1)  # loss 只在最后一段
        assert abs(per_rank[-1][name]["loss"] - ref["loss"]) < 1e-5, name
        _assert_close(_merged(per_rank, lambda out, name=name: out[name]["grads"]), ref["grads"], name)
        _assert_close(_merged(per_rank, lambda out, name=name: out[f"{name}_short"]), ref["short"], f"{name} m < p")
        # 每段 m 个前向、m 个反向，每个 micro-batch 各一次
        for out in per_rank:
            assert sorted(out[name]["events"]) == sorted([(kind, k) for kind in "FB" for k in range(m)])
        timeline = replay_timeline([out[name]["events"] for out in per_rank])
        assert bubble_fraction(timeline) == pytest.approx(formula), name
    assert [out["gpipe"]["live"] for out in per_rank] == [m] * world
    assert [out["1f1b"]["live"] for out in per_rank] == [min(world - s, m) for s in range(world)]
    assert max(out["1f1b"]["live"] for out in per_rank) <= world < m
    # 1F1B 的稳态：最后一段每个前向之后紧跟它的反向
    assert per_rank[-1]["1f1b"]["events"] == [(kind, k) for k in range(m) for kind in "FB"]
    assert per_rank[0]["gpipe"]["events"] == [("F", k) for k in range(m)] + [("B", k) for k in range(m)]
    assert per_rank[-1]["adamw"]["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    _assert_close(_merged(per_rank, lambda out: out["adamw"]["params"]), ref["params"], "AdamW")
    if with_torch:
        for name in SCHEDULES:
            assert all(out[f"torch_{name}"] < 1e-5 for out in per_rank), f"torch.distributed.pipelining {name}"
    return per_rank


def test_two_stages_match_single_process_accumulation_torch_pipelining_and_adamw(tmp_path):
    per_rank = _check_pipeline(world=2, m=4, with_torch=True)
    assert per_rank[0]["names"][0] == "model.embed_tokens.weight"
    assert per_rank[1]["names"][-2:] == ["model.norm.weight", "lm_head.weight"]
    timelines = {name: replay_timeline([out[name]["events"] for out in per_rank]) for name in SCHEDULES}
    path = plot_schedules(timelines, tmp_path / "pp.png", {n: [o[n]["live"] for o in per_rank] for n in SCHEDULES})
    assert path.stat().st_size > 0


def test_three_stages_with_a_middle_stage_match_single_process():
    # 中间一段既收激活又发激活、既收梯度又发梯度：两个方向的配对都要对（3 个进程是有中间段的最小流水线）
    _check_pipeline(world=3, m=5, with_torch=False)


# ---- 单进程就能检查的部分 ----


@pytest.mark.parametrize("schedule", SCHEDULES.values())
def test_single_stage_schedule_equals_accumulate_step(schedule):
    config = _config(layers=2)
    batches = _micro_batches(3, config, masked=True)
    setup_seed(0)
    ref = Llama(config)
    ref_loss = accumulate_step(ref, batches)
    setup_seed(0)
    stage = LlamaStage(Llama(config), 0, 1)
    res = schedule(stage, batches)
    assert torch.equal(res.loss, ref_loss)
    assert res.max_live_activations == (3 if schedule is gpipe_step else 1)
    grads = dict(stage.named_parameters())
    for n, p in ref.named_parameters():
        assert torch.equal(grads[n].grad, p.grad), n
    # 给定分母（数据并行时的全局 token 数 / dp）：分母翻倍，loss 与梯度都减半
    n_tokens = sum(int((y != -100).sum()) for _, y in batches)
    stage.zero_grad(set_to_none=True)
    res = schedule(stage, batches, token_denominator=2 * n_tokens)
    assert torch.allclose(res.loss, ref_loss / 2, atol=1e-6)
    for n, p in ref.named_parameters():
        assert torch.allclose(grads[n].grad, p.grad / 2, atol=1e-7), n
    # 本地一个有效 token 都没有、但全局有（别的 DP rank 上有）：贡献 0，不报错
    empty = [(x, torch.full_like(y, -100)) for x, y in batches]
    assert schedule(stage, empty, token_denominator=5.0).loss.item() == 0.0


def test_stages_hold_disjoint_layers_with_hf_names():
    model = Llama(_config(layers=4))
    stages = [LlamaStage(model, s, 2) for s in range(2)]
    assert [list(s.layer_range) for s in stages] == [[0, 1], [2, 3]]
    names = [set(s.state_dict()) for s in stages]
    assert not names[0] & names[1]
    assert names[0] | names[1] == set(model.state_dict())
    assert stages[0].prev_rank is None and stages[0].next_rank == 1 and stages[1].prev_rank == 0
    assert LlamaStage(model, 1, 2, prev_rank=5).prev_rank == 5


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_stages": 3}, ValueError, "不能被 num_stages=3 整除"),
    ({"num_stages": 8}, ValueError, "空阶段"),
    ({"num_stages": 2, "stage": 2}, ValueError, r"stage=2 超出范围"),
    ({"num_stages": 0}, ValueError, "num_stages=0"),
    ({"num_stages": 2.0}, TypeError, "必须是整数"),
    ({"num_stages": 2, "tie_word_embeddings": True}, ValueError, "tie_word_embeddings"),
])
def test_split_rejects_bad_input(kwargs, error, match):
    kwargs = {"stage": 0, **kwargs}
    config = _config(layers=4, tie_word_embeddings=kwargs.pop("tie_word_embeddings", False))
    with pytest.raises(error, match=match):
        LlamaStage(Llama(config), kwargs["stage"], kwargs["num_stages"])


def test_split_rejects_a_model_that_is_not_llama():
    with pytest.raises(TypeError, match="Llama"):
        LlamaStage(nn.Linear(2, 2), 0, 1)


def test_schedules_reject_bad_micro_batches_before_communicating():
    config = _config(layers=2)
    stage = LlamaStage(Llama(config), 0, 2)
    good = _micro_batches(2, config, masked=False)
    with pytest.raises(ValueError, match="为空"):
        gpipe_step(stage, [])
    with pytest.raises(ValueError, match="同形状"):
        one_f_one_b_step(stage, [good[0], (good[1][0][:, :4], good[1][1][:, :4])])
    with pytest.raises(ValueError, match="没有可学习的 token"):
        gpipe_step(stage, [(x, torch.full_like(y, -100)) for x, y in good])
    with pytest.raises(ValueError, match="token_denominator=0"):
        gpipe_step(stage, good, token_denominator=0)
    with pytest.raises(RuntimeError, match="spawn"):  # 两段却没有进程组
        one_f_one_b_step(stage, good)
    with pytest.raises(TypeError, match="LlamaStage"):
        gpipe_step(Llama(config), good)


def test_replay_rejects_an_order_that_would_deadlock():
    # 阶段 0 先等 B0，而 B0 要等阶段 1 的 B0 ← 阶段 1 的 F0 ← 阶段 0 的 F0：永远等不到
    with pytest.raises(ValueError, match="死锁"):
        replay_timeline([[("B", 0), ("F", 0)], [("F", 0), ("B", 0)]])



# ---- 追加（练习模式）：replay_timeline / bubble_fraction 的单进程检查——教科书里的两种调度顺序，不起进程 ----


def _textbook_orders(p: int, m: int) -> dict[str, list[list[tuple[str, int]]]]:
    """按定义写出每段的事件顺序：GPipe 全前向再全反向；1F1B 预热 w = min(p-s-1, m) 个前向、稳态一前一后、冷却。"""
    gpipe = [[("F", k) for k in range(m)] + [("B", k) for k in range(m)] for _ in range(p)]
    one_f_one_b = []
    for s in range(p):
        w = min(p - s - 1, m)
        events = [("F", k) for k in range(w)]
        for j in range(m - w):
            events += [("F", w + j), ("B", j)]
        one_f_one_b.append(events + [("B", k) for k in range(m - w, m)])
    return {"gpipe": gpipe, "1f1b": one_f_one_b}


def test_replay_of_textbook_schedules_gives_the_bubble_formula():
    # p = 2、m = 2 的 1F1B，t_f = 1、t_b = 2，逐格手算：阶段 1 的 F1 要等它自己的 B0 做完（4），
    # 阶段 0 的 B1 要等阶段 1 的 B1（7）——总时长 (m+p-1)(t_f+t_b) = 9
    timeline = replay_timeline(_textbook_orders(2, 2)["1f1b"])
    assert timeline == [[("F", 0, 0.0, 1.0), ("F", 1, 1.0, 2.0), ("B", 0, 4.0, 6.0), ("B", 1, 7.0, 9.0)],
                        [("F", 0, 1.0, 2.0), ("B", 0, 2.0, 4.0), ("F", 1, 4.0, 5.0), ("B", 1, 5.0, 7.0)]]
    assert bubble_fraction(timeline) == pytest.approx(1 - 12 / (2 * 9))
    # 一般情形：两种调度的总时长都是 (m+p-1)(t_f+t_b)，气泡都是 (p-1)/(m+p-1)，与 t_b/t_f 无关（m < p 时也成立）
    for p, m in [(2, 1), (3, 5), (4, 2), (4, 8)]:
        for t_b in (1.0, 2.0, 3.0):
            for name, orders in _textbook_orders(p, m).items():
                timeline = replay_timeline(orders, 1.0, t_b)
                assert max(ev[3] for stage in timeline for ev in stage) == (m + p - 1) * (1.0 + t_b), (name, p, m)
                assert bubble_fraction(timeline) == pytest.approx((p - 1) / (m + p - 1)), (name, p, m, t_b)
    with pytest.raises(ValueError, match="未知的事件"):
        replay_timeline([[("X", 0)]])
