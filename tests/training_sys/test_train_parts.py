"""训练循环的部件从外面来：步策略的每个钩子都被循环用到、外面建的模型与优化器与按 cfg 建的逐位相同、
按 token 数归一化的梯度累积、样例走 model_lab.generation、一份精度名单、命令行的每个参数都有说明。"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
from torch import nn

from tests.training_sys.test_pretrain import final_params, records_without_timing, tiny_cfg, write_tiny_text
from training_sys.data import load_char_data
from training_sys.optimization import SCHEDULE_KINDS, AdamW, weight_decay_param_groups
from training_sys.pretrain import (
    TrainConfig,
    accumulate_step,
    build_model,
    build_optimizer,
    build_parser,
    config_from_args,
    main,
    sample_text,
    train,
)
from training_sys.strategy import SingleDevice, TrainStrategy
from utils.torch_playground import setup_seed


@pytest.fixture
def text_file(tmp_path):
    return write_tiny_text(tmp_path / "tiny.txt")


# ---------------------------------------------------------------------------
# 步策略
# ---------------------------------------------------------------------------
class CountingWrapper(nn.Module):
    """像 DDP 一样包住模型：前向经过它（数一下），参数仍是原模型的。"""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model
        self.forwards = 0

    def forward(self, *args, **kwargs):
        self.forwards += 1
        return self.module(*args, **kwargs)


class RecordingStrategy(SingleDevice):
    """记下循环调用了哪些钩子、以什么参数；数值行为与 SingleDevice 完全相同。"""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.last_flags: list[bool] = []
        self.wrapper: CountingWrapper | None = None

    def wrap_model(self, model):
        self.calls["wrap_model"] += 1
        self.wrapper = CountingWrapper(model)
        return self.wrapper

    def no_sync(self, model, last_micro_batch):
        assert model is self.wrapper  # 交给 no_sync 的是包装后的模型（DDP 的 no_sync 是包装器的方法）
        self.last_flags.append(last_micro_batch)
        return super().no_sync(model, last_micro_batch)

    def backward(self, loss):
        self.calls["backward"] += 1
        super().backward(loss)

    def global_tokens(self, local_tokens):
        self.calls["global_tokens"] += 1
        return super().global_tokens(local_tokens)

    def reduce_loss(self, loss):
        self.calls["reduce_loss"] += 1
        return super().reduce_loss(loss)

    def clip_grad_norm(self, model, max_norm):
        assert not isinstance(model, CountingWrapper)  # 裁剪、保存用原始模型（参数名不带包装器的前缀）
        self.calls["clip_grad_norm"] += 1
        return super().clip_grad_norm(model, max_norm)

    def stop_requested(self, local):
        self.calls["stop_requested"] += 1
        return super().stop_requested(local)

    def full_state(self, model, optimizer):
        self.calls["full_state"] += 1
        return super().full_state(model, optimizer)

    def load_full_state(self, model, optimizer, model_state, optimizer_state, strict):
        self.calls["load_full_state"] += 1
        super().load_full_state(model, optimizer, model_state, optimizer_state, strict)


def test_loop_goes_through_every_strategy_hook(tmp_path, text_file):
    steps, k, eval_iters = 4, 2, 2
    kw = dict(batch_size=4, grad_accum=k, max_iters=steps, eval_interval=2, eval_iters=eval_iters,
              checkpoint_interval=2)
    plain = train(tiny_cfg(tmp_path, text_file, "plain", **kw))
    strategy = RecordingStrategy()
    assert isinstance(strategy, TrainStrategy)
    cfg = tiny_cfg(tmp_path, text_file, "custom", **kw)
    custom = train(cfg, strategy=strategy)

    n_evals, n_saves = steps // 2, steps // 2
    assert strategy.calls == Counter(wrap_model=1, backward=steps * k, global_tokens=steps, reduce_loss=steps,
                                     clip_grad_norm=steps, stop_requested=steps, full_state=n_saves)
    # 每步 K 个 micro-batch，只有最后一个同步梯度
    assert strategy.last_flags == [False, True] * steps
    # 训练前向与评估前向都经过包装器（评估：train 与 val 各 eval_iters 个 batch）
    assert strategy.wrapper.forwards == steps * k + n_evals * 2 * eval_iters
    # 包装器不改变数值：与默认策略逐位相同；checkpoint 用的是不带前缀的 HF 参数名
    pa, pb = final_params(plain), final_params(custom)
    assert pa.keys() == pb.keys() and all(not name.startswith("module.") for name in pb)
    assert all(torch.equal(pa[name], pb[name]) for name in pa)
    # 续训经 load_full_state 装回状态，结果仍与不中断的运行逐位相同
    cfg = tiny_cfg(tmp_path, text_file, "resumed", **kw)
    train(cfg, on_step=lambda step, record: step == 1)
    cfg.resume = True
    resumer = RecordingStrategy()
    resumed = train(cfg, strategy=resumer)
    assert resumer.calls["load_full_state"] == 1 and resumer.calls["backward"] == (steps - 1) * k
    pc = final_params(resumed)
    assert all(torch.equal(pa[name], pc[name]) for name in pa)


class NotMainRank(SingleDevice):
    """数据并行里 rank ≠ 0 的样子：照样训练，但不写文件、不评估。"""

    @property
    def is_main_process(self) -> bool:
        return False


def test_only_the_main_process_writes_and_evaluates(tmp_path, text_file):
    cfg = tiny_cfg(tmp_path, text_file, max_iters=4, eval_interval=2, checkpoint_interval=2)
    result = train(cfg, strategy=NotMainRank())
    assert result.step == 4 and result.history == []
    assert not result.run_dir.exists()  # 没有 metrics.jsonl、config.json、checkpoint、loss.png


def test_external_model_and_optimizer_equal_cfg_built(tmp_path, text_file):
    kw = dict(max_iters=6, eval_interval=3)
    built = train(tiny_cfg(tmp_path, text_file, "built", **kw))

    cfg = tiny_cfg(tmp_path, text_file, "external", **kw)
    vocab = load_char_data(path=text_file).vocab_size
    setup_seed(cfg.seed)  # 与 train 内部一样：先设种子再建模型，初始化就相同
    model = build_model(cfg, vocab)
    optimizer = AdamW(weight_decay_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                      foreach=True)
    external = train(cfg, model=model, optimizer=optimizer)

    pa, pb = final_params(built), final_params(external)
    assert all(torch.equal(pa[name], pb[name]) for name in pa)
    assert records_without_timing(built.run_dir) == records_without_timing(external.run_dir)
    # 训练的确就是传进去的那个对象（不是内部另建的一份）
    assert all(torch.equal(p.detach(), pb[name]) for name, p in model.state_dict().items())


def test_bad_parts_are_clear_errors(tmp_path, text_file):
    cfg = tiny_cfg(tmp_path, text_file)
    model = build_model(cfg, 30)
    with pytest.raises(ValueError, match="没给 model"):
        train(cfg, optimizer=build_optimizer(cfg, model))
    with pytest.raises(ValueError, match="没给 optimizer"):
        train(cfg, scheduler=torch.optim.lr_scheduler.LambdaLR(build_optimizer(cfg, model), lambda s: 1.0))
    with pytest.raises(TypeError, match=r"缺少钩子 \['backward'"):
        train(cfg, strategy=object())
    with pytest.raises(TypeError, match="save_pretrained"):
        train(cfg, model=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="vocab_size=5"):
        train(cfg, model=build_model(cfg, 5))


# ---------------------------------------------------------------------------
# 按有效 token 数归一化的梯度累积
# ---------------------------------------------------------------------------
def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def test_accumulation_normalizes_by_valid_tokens():
    setup_seed(0)
    vocab = 23
    model = build_model(TrainConfig(n_layer=1, n_head=2, n_embd=16, block_size=8), vocab)
    x = torch.randint(0, vocab, (6, 8))
    y = torch.randint(0, vocab, (6, 8))
    # 三个 micro-batch 的有效 token 数各不相同（SFT 把提示词标成 -100 的样子）：11、16、2
    y[0, :5] = -100
    y[4, :] = -100
    y[5, 2:] = -100
    micro = [(x[i:i + 2], y[i:i + 2]) for i in (0, 2, 4)]
    assert [int((m[1] != -100).sum()) for m in micro] == [11, 16, 2]

    model.zero_grad()
    _, big_loss = model(x, y)  # 大 batch：所有有效 token 的平均 loss
    big_loss.backward()
    reference = grads(model)

    model.zero_grad()
    step_loss = accumulate_step(model, micro)
    ours = grads(model)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # 记录的 loss = token 加权平均 = 大 batch 的平均 loss
    assert step_loss.item() == pytest.approx(big_loss.item(), rel=1e-6)

    # 旧的规则"每个 micro-batch 的平均 loss 除以 K"在 token 数不等时给出另一个梯度：上面的容差分得开两者
    model.zero_grad()
    for xm, ym in micro:
        (model(xm, ym)[1] / len(micro)).backward()
    naive_diff = max((a - b).abs().max().item() for a, b in zip(grads(model), reference))
    assert naive_diff > 100 * (1e-7 + 1e-5 * max(g.abs().max().item() for g in reference))


def test_accumulation_with_an_all_masked_micro_batch():
    setup_seed(0)
    model = build_model(TrainConfig(n_layer=1, n_head=2, n_embd=16, block_size=8), 11)
    x, y = torch.randint(0, 11, (4, 8)), torch.randint(0, 11, (4, 8))
    y[2:] = -100  # 第二个 micro-batch 没有一个有效 token：贡献为 0，而不是 0/0 = NaN
    model.zero_grad()
    model(x, y)[1].backward()
    reference = grads(model)
    model.zero_grad()
    loss = accumulate_step(model, [(x[:2], y[:2]), (x[2:], y[2:])])
    assert torch.isfinite(loss)
    for a, b in zip(grads(model), reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="没有可学习的 token"):
        accumulate_step(model, [(x[2:], y[2:])])


# ---------------------------------------------------------------------------
# 用库：权重衰减分组、采样、精度名
# ---------------------------------------------------------------------------
def test_adamw_groups_decay_exactly_the_matrices():
    cfg = TrainConfig(n_layer=2, n_head=2, n_embd=16, block_size=8)
    model = build_model(cfg, 20)
    decay, no_decay = build_optimizer(cfg, model).param_groups
    assert decay["weight_decay"] == cfg.weight_decay and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters() if p.dim() == 2}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in model.parameters() if p.dim() == 1}
    assert all(name.endswith("norm.weight") for name, p in model.named_parameters() if p.dim() == 1)


def test_samples_are_deterministic_and_crop_the_context(text_file):
    # 生成的长度超过 block_size：上下文只保留最后 block_size 个 token，否则 RoPE 的位置超出训练时的范围
    data = load_char_data(path=text_file)
    cfg = TrainConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, sample_tokens=20, seed=5)
    setup_seed(0)
    model = build_model(cfg, data.vocab_size)
    device = torch.device("cpu")
    text = sample_text(model, data, cfg, device)
    assert len(text) == 20 and text == sample_text(model, data, cfg, device)
    # 同一个种子的手写参照（temperature 0.8、top-k 50 > 词表大小，即不截断）：与库的采样逐个 token 相同
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    prompt = data.encode("\n") or [0]  # 语料里没有换行符时从 id 0 开始（与 sample_text 相同）
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(cfg.sample_tokens):
            probs = torch.softmax(model(ids[:, -cfg.block_size:])[:, -1, :] / 0.8, dim=-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], dim=1)
    assert text == data.decode(ids[0, len(prompt):].tolist())


def test_dtype_names_are_the_shared_vocabulary():
    assert TrainConfig(dtype="bf16").dtype == "bfloat16"  # 简写明确地换成正式名字，config.json 里也是正式名字
    assert TrainConfig(dtype="fp32").to_dict()["dtype"] == "float32"
    assert config_from_args(["--dtype", "bf16"]).dtype == "bfloat16"
    with pytest.raises(ValueError, match="float16 需要动态 loss scaling"):
        TrainConfig(dtype="fp16").validate()
    with pytest.raises(ValueError, match=r"'half' 不支持.*bf16 = bfloat16"):
        TrainConfig(dtype="half").validate()


# ---------------------------------------------------------------------------
# 命令行说明
# ---------------------------------------------------------------------------
def test_every_cli_flag_explains_itself(capsys):
    parser = build_parser()
    actions = [a for a in parser._actions if a.option_strings]
    fields = {f"--{name.replace('_', '-')}" for name in TrainConfig.__dataclass_fields__}
    assert fields <= {s for a in actions for s in a.option_strings}
    for action in actions:
        flag = action.option_strings[-1]
        text = action.help or ""
        body = re.sub(r"（默认 [^（）]*）$", "", text)
        # 一句真正的中文说明（不只是"(默认 X)"），加上默认值（--help 本身没有默认值）
        assert len(body) >= 8 and re.search(r"[\u4e00-\u9fff]", body), (flag, text)
        assert flag == "--help" or text.endswith("）") and "（默认 " in text, (flag, text)
    # 有固定选项的参数把选项列出来
    helps = {a.option_strings[-1]: a.help for a in actions}
    assert "bfloat16" in helps["--dtype"] and helps["--dtype"].endswith("（默认 float32）")
    assert all(kind in helps["--lr-schedule"] for kind in SCHEDULE_KINDS)
    assert "adamw" in helps["--optimizer"] and "muon" in helps["--optimizer"]
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in fields) and "上下文长度" in out



# ---------------------------------------------------------------------------
# 练习模式（utils/exercise_parts/training.py）：评估用固定的窗口、eval 模式、不碰训练的随机数
# ---------------------------------------------------------------------------
def test_estimate_loss_averages_fixed_eval_batches_in_eval_mode(text_file):
    import contextlib

    from training_sys.data import get_batch
    from training_sys.pretrain import estimate_loss

    data = load_char_data(path=text_file)
    cfg = TrainConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=3, eval_iters=3, seed=7)
    setup_seed(0)
    model = build_model(cfg, data.vocab_size)
    modes, entered = [], []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x, y):
            modes.append(self.training)
            return self.inner(x, y)

    @contextlib.contextmanager
    def autocast():
        entered.append(True)
        yield

    spy = Spy().train()
    global_rng = torch.get_rng_state()
    out = estimate_loss(spy, data, cfg, torch.device("cpu"), autocast)
    assert set(out) == {"train", "val"} and all(isinstance(v, float) for v in out.values())
    assert modes == [False] * (2 * cfg.eval_iters) and entered  # 评估在 eval 模式、在 autocast 里
    assert spy.training and model.training  # 评估完切回训练模式
    assert torch.equal(torch.get_rng_state(), global_rng)  # 不消耗全局随机数：评估与否不改变训练本身
    # 手写参照：train 用种子 seed + 1、val 用 seed + 2 的专用 Generator 抽 eval_iters 个 batch，loss 取平均
    with torch.no_grad():
        for offset, (split, arr) in enumerate((("train", data.train), ("val", data.val)), start=1):
            gen = torch.Generator().manual_seed(cfg.seed + offset)
            losses = [model(*get_batch(arr, cfg.batch_size, cfg.block_size, gen))[1].item()
                      for _ in range(cfg.eval_iters)]
            assert out[split] == pytest.approx(sum(losses) / len(losses), rel=1e-6), split
    assert estimate_loss(spy, data, cfg, torch.device("cpu"), autocast) == out  # 每次评估都是同一批窗口
