"""`--parallel pp` 与 `--parallel cp` 接进训练循环：torchrun 端到端与单进程逐步对照，外加策略钩子、报错与参数传递。

- torchrun 2 进程的流水线（1F1B，4 个 micro-batch）与上下文并行（每条序列 zigzag 切两半、ring attention）：
  每步 loss 与单进程用同一个全局 batch 训练的相差 ≤ 1e-5；评估（val loss、样例）与单进程相同；checkpoint 是一个
  HF 目录（流水线：各段权重收到 rank 0），优化器状态是单进程格式、与单进程的逐项 allclose。
- 流水线中断后续训（同样的 2 个 rank）：每步 loss 与最后的权重都与不中断的那次逐位相同。
- 上下文并行的一步在 target 带 -100、两个 rank 有效 token 数不同（有的 micro-batch 在某个 rank 上一个也没有）时，
  loss 与梯度仍等于单进程在整条序列上的梯度累积（分母是整组的 token 数，梯度在组内求和）。
- GPipe 调度经 `train(cfg, strategy=PipelineStrategy("gpipe"))` 走同一个循环（spawn 的 2 个进程，省掉 torchrun 的启动），
  与单进程相同；层数不整除段数、段数多于层数、序列长不被 2·cp 整除：清楚的 ValueError。
- `TrainConfig` 的 pp_schedule / tp_size 经 build_strategy 传给策略的构造参数。
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

from tests.training_sys.distributed.test_torchrun import (
    PER_RANK_BATCH,
    TINY,
    cli,
    run_all,
    torchrun,
    torchrun_env,
    train_losses,
    weights,
)
from training_sys.pretrain import TrainConfig, read_metrics, train

# 流水线要 ≥ 2 层（每段一层）与几个 micro-batch；样例也生成几个 token（流水线的样例由收齐权重后的 rank 0 生成）
EXTRA = dict(n_layer=2, grad_accum=4, sample_tokens=4)


def evals(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "eval"]


def assert_same_curve(ours: Path, ref: Path, tol: float = 1e-5) -> None:
    a, b = train_losses(ours), train_losses(ref)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) <= tol, (a, b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """torchrun 2 进程的 pp 与 cp 同时跑 4 步（第 2、4 步存 checkpoint），以及单进程的同样训练（各 rank 看同一份数据，
    所以全局 batch 就是 batch_size）。"""
    tmp = tmp_path_factory.mktemp("pp_cp")
    run_all([[*torchrun(), "--standalone", "--nproc_per_node", "2", *cli(tmp / name, parallel=name, **EXTRA)]
             for name in ("pp", "cp")], torchrun_env(tmp))
    single = train(TrainConfig(**{**TINY, **EXTRA}, batch_size=PER_RANK_BATCH, out_dir=str(tmp / "single")))
    return tmp, single


@pytest.mark.parametrize("name", ["pp", "cp"])
def test_torchrun_equals_single_process(runs, name):
    tmp, single = runs
    assert_same_curve(tmp / name, single.run_dir)
    ours, ref = evals(tmp / name), evals(single.run_dir)
    assert [r["step"] for r in ours] == [r["step"] for r in ref] == [4]
    for key in ("train_loss", "val_loss"):
        assert abs(ours[0][key] - ref[0][key]) <= 1e-5, (ours, ref)
    assert ours[0]["sample"] == ref[0]["sample"]  # rank 0 的完整模型与单进程的相同：同一个种子生成同样的样例
    # 一个 HF 目录，只有 rank 0 写；流水线的各段权重已经收齐
    assert (tmp / name / "latest").read_text().strip() == "step_000004"
    mine, theirs = weights(tmp / name / "step_000004"), weights(single.checkpoint_dir)
    assert mine.keys() == theirs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k], rtol=1e-4, atol=1e-5, msg=k)
    # 优化器状态是单进程格式：同样的参数编号、同样的状态（流水线：两段的状态合并在一起）
    a = torch.load(tmp / name / "step_000004" / "training_state.pt", weights_only=False)["optimizer"]
    b = torch.load(single.checkpoint_dir / "training_state.pt", weights_only=False)["optimizer"]
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"]) == list(range(len(theirs)))
    for i in b["state"]:
        for key, value in b["state"][i].items():
            torch.testing.assert_close(a["state"][i][key], value, rtol=1e-4, atol=1e-6, msg=f"{i}.{key}")


def test_torchrun_pp_resumes_exactly(runs):
    tmp, _ = runs
    straight, resumed = tmp / "pp", tmp / "pp_resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "step_000004")
    (resumed / "latest").write_text("step_000002\n")  # 等价于：第 2 步存好之后进程被杀
    outputs = run_all([[*torchrun(), "--standalone", "--nproc_per_node", "2",
                        *cli(resumed, parallel="pp", resume=True, **EXTRA)]], torchrun_env(tmp))
    assert "从第 2 步续训" in outputs[0]
    assert train_losses(resumed) == train_losses(straight)  # 浮点数逐个相等
    a, b = weights(resumed / "step_000004"), weights(straight / "step_000004")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------
# spawn：同一个循环里的 GPipe，与几种配置错误
# ---------------------------------------------------------------------------------------------------


def _spawned(rank: int, world: int, out_dir: str) -> dict:
    from model_lab import Llama, LlamaConfig
    from training_sys.distributed.context_parallel import ContextParallelStrategy
    from training_sys.distributed.pipeline_parallel import PipelineStrategy
    from training_sys.pretrain import accumulate_step
    from utils.torch_playground import setup_seed

    out: dict = {}
    cfg = TrainConfig(**{**TINY, **EXTRA, "sample_tokens": 0}, batch_size=PER_RANK_BATCH, out_dir=out_dir)
    out["val_loss"] = train(cfg, strategy=PipelineStrategy("gpipe")).val_loss  # 只有 rank 0 评估，其余是 nan
    for layers in (3, 1):  # 3 层切不成 2 段等长的；1 层不够 2 段
        try:
            PipelineStrategy().prepare_model(Llama(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                                               num_hidden_layers=layers, num_attention_heads=2)))
        except ValueError as e:
            out[f"layers{layers}"] = str(e)
    # 上下文并行的 token 归一化：target 里的 -100 让两个 rank 的有效 token 数不同（rank 0 拿小块 0、3，rank 1 拿 1、2），
    # 第二个 micro-batch 在 rank 0 上一个有效 token 也没有；loss 与梯度仍要等于单进程在整条序列上的梯度累积
    setup_seed(0)
    model = Llama(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16))
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(3)
    micro = []
    for masked in (slice(0, 5), slice(0, 4)):
        x = torch.randint(0, 32, (2, 16), generator=gen)
        y = torch.randint(0, 32, (2, 16), generator=gen)
        y[:, masked] = -100
        micro.append((x, y))
    micro[1][1][:, 12:] = -100  # 第二个 micro-batch 只剩小块 1、2 里的 token：全在 rank 1 上
    strategy = ContextParallelStrategy()
    strategy.prepare_model(model)
    out["cp_loss"] = strategy.reduce_loss(strategy.forward_backward(model, micro))
    out["ref_loss"] = accumulate_step(ref, micro).item()
    out["cp_grad_err"] = max((p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), ref.parameters()))
    x = torch.randint(0, 32, (2, 6))
    try:
        strategy.forward_backward(model, [(x, x)])
    except ValueError as e:
        out["cp_block"] = str(e)
    out["attn_after"] = model.config.attn_implementation
    return out


def test_gpipe_through_the_loop_and_bad_shapes(runs, tmp_path):
    from training_sys.distributed import spawn

    per_rank = spawn(_spawned, 2, str(tmp_path / "gpipe"), timeout_s=180)
    _, single = runs  # 同样的配置（样例不影响训练与评估的数）
    assert_same_curve(tmp_path / "gpipe", single.run_dir)
    assert abs(per_rank[0]["val_loss"] - single.val_loss) <= 1e-5
    for out in per_rank:
        assert "--parallel pp 有 2 个 rank" in out["layers3"] and "不能被 num_stages=2 整除" in out["layers3"]
        assert "num_stages=2 > num_hidden_layers=1" in out["layers1"]
        assert abs(out["cp_loss"] - out["ref_loss"]) <= 1e-6 and out["cp_grad_err"] <= 1e-6, out
        assert "block_size=6 不能被 2·cp = 4 整除" in out["cp_block"]
        assert out["attn_after"] == "sdpa"  # 训练步之外仍是原来的注意力


def test_config_options_reach_the_strategy(monkeypatch):
    from training_sys.distributed import parallel

    built = {}

    class Fake:
        def __init__(self, **kwargs):
            built.update(kwargs)

    monkeypatch.setattr(parallel, "init_from_env", lambda: None)
    monkeypatch.setattr(parallel.importlib, "import_module", lambda name: type("M", (), {
        "PipelineStrategy": Fake, "TensorParallelStrategy": Fake}))
    parallel.build_strategy("pp", TrainConfig(parallel="pp", pp_schedule="gpipe").to_dict())
    assert built == {"schedule": "gpipe"}
    built.clear()
    parallel.build_strategy("tp", TrainConfig(parallel="tp", tp_size=2).to_dict())
    assert built == {"tp_size": 2}
    built.clear()
    parallel.build_strategy("tp", TrainConfig(parallel="tp").to_dict())  # 不给 = 类的默认值（整个 world）
    assert built == {}
    with pytest.raises(ValueError, match="pp_schedule='zigzag' 未知"):
        TrainConfig(parallel="pp", pp_schedule="zigzag").validate()
    with pytest.raises(ValueError, match="tp_size=2 只对 --parallel tp 有意义"):
        TrainConfig(parallel="ddp", tp_size=2).validate()
    with pytest.raises(ValueError, match="tp_size=0 必须是正整数"):
        TrainConfig(parallel="tp", tp_size=0).validate()
