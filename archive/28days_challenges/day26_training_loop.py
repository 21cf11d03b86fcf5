"""第 26 天 综合二：一个完整的训练循环——取 batch、学习率 warmup + 余弦、评估、梯度累加、手写 AdamW、断点续训。

前 25 天的零件拼成 nanoGPT 式的训练循环：

    for step in range(max_steps):
        lr = get_lr(step)                                  # warmup + 余弦退火（第 17 天）
        for micro in range(accum):                         # 梯度累加：k 个小 batch 当一个大 batch
            x, y = get_batch("train")                      # 随机窗口（第 15 天）
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten()) / accum   # 除以 k！
            loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)           # 梯度裁剪（第 17 天）
        optimizer.step(); optimizer.zero_grad(set_to_none=True)
        if step % eval_interval == 0: evaluate()           # eval() + no_grad()，完了切回 train()（第 24 天）
        if step % save_interval == 0: save(model, optimizer, step)   # 断点续训

要点：
1. get_batch：ix = randint(len(data) − T, (B,))，x = data[i : i+T]，y = data[i+1 : i+T+1]。
2. 学习率：前 warmup 步线性升到 max_lr（lr = max_lr·(t+1)/(warmup+1)），之后余弦降到 min_lr：
       lr = min_lr + (max_lr − min_lr)·(1 + cos(π·(t − warmup)/(total − warmup)))/2
   等价于 torch 的 SequentialLR([LinearLR, CosineAnnealingLR])。
3. 梯度累加：loss 是 batch 的**平均**，k 个等大的小 batch 各除以 k 再累加，梯度与一次大 batch 完全相同。
4. 断点续训要存的不只是模型：优化器状态（Adam 的 m、v、step）、学习率调度器、随机数状态、数据位置。
   只存模型参数，续训后 Adam 从零开始估计 m、v，loss 会跳一下。

练习：ex1–ex6；ex5 是"大作业"：不用 torch.optim，手写整个训练循环，与 torch.optim.AdamW 逐位对齐。运行：

    python archive/28days_challenges/day26_training_loop.py
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import exercises
from utils.io import is_smoke
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_get_batch(data: torch.Tensor, block_size: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """随机取 batch_size 个长度为 block_size 的窗口：起点 ix = torch.randint(len(data) − block_size, (batch_size,),
    generator=Generator().manual_seed(seed))，返回 (x, y)，y 是 x 往后挪一位（对照 data.unfold 的滑动窗口）。"""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=torch.Generator().manual_seed(seed))
    x = torch.stack([data[i : i + block_size] for i in ix.tolist()])  # (B, T)
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix.tolist()])  # (B, T)
    return x, y


def ex2_warmup_cosine_lrs(max_lr: float, min_lr: float, warmup: int, total: int, steps: int) -> torch.Tensor:
    """第 0..steps−1 步的学习率（float64 张量）：warmup 步线性升温 max_lr·(t+1)/(warmup+1)，之后余弦降到 min_lr
    （对照 SequentialLR([LinearLR(start_factor=1/(warmup+1)), CosineAnnealingLR(T_max=total−warmup)])）。"""
    lrs = []
    for t in range(steps):
        if t < warmup:
            lrs.append(max_lr * (t + 1) / (warmup + 1))
        else:
            progress = (t - warmup) / (total - warmup)
            lrs.append(min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2)
    return torch.tensor(lrs, dtype=torch.float64)


def ex3_evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, bool]:
    """在 batches（每个 (x, y) 一样大）上求平均交叉熵；评估时关掉 Dropout、不记录梯度，结束后恢复训练模式。
    返回 (平均 loss, 评估后 model.training)。"""
    model.eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()) for x, y in batches]
    model.train()
    return torch.stack(losses).mean(), model.training


def ex4_accumulated_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, accum: int) -> list[torch.Tensor]:
    """把 (x, y) 沿 batch 维切成 accum 个等大的小 batch，逐个 backward 累加梯度，返回每个参数的梯度
    （对照：整个 batch 一次 backward）。"""
    for xb, yb in zip(x.chunk(accum), y.chunk(accum)):
        loss = F.cross_entropy(model(xb).flatten(0, 1), yb.flatten())
        (loss / accum).backward()  # 每个小 batch 的 loss 是它自己的平均：除以 k 才等于大 batch 的平均
    return [p.grad for p in model.parameters()]


def ex5_train(model: nn.Module, data: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """大作业：不用 torch.optim，手写 cfg["steps"] 步训练，返回 (每步的 loss, 训练后的参数)。每一步：
    1. x, y = ex1_get_batch(data, cfg["block_size"], cfg["batch_size"], seed=step)，loss = 交叉熵；
    2. 梯度按全局 L2 范数裁剪到 cfg["clip"]（系数 clip / (范数 + 1e-6)，不超过 1）；
    3. 学习率取 ex2_warmup_cosine_lrs 的第 step 个；
    4. AdamW 更新（betas、eps、weight_decay 见 cfg），对照 torch.optim.AdamW + clip_grad_norm_ + SequentialLR。"""
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2 = cfg["betas"]
    lrs = ex2_warmup_cosine_lrs(cfg["max_lr"], cfg["min_lr"], cfg["warmup"], cfg["steps"], cfg["steps"])
    losses = []
    for step in range(cfg["steps"]):
        x, y = ex1_get_batch(data, cfg["block_size"], cfg["batch_size"], seed=step)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        grads = torch.autograd.grad(loss, params)
        total = torch.stack([g.norm() for g in grads]).norm()
        coef = (cfg["clip"] / (total + 1e-6)).clamp(max=1.0)
        lr, t = float(lrs[step]), step + 1
        with torch.no_grad():
            for p, g, m_i, v_i in zip(params, grads, m, v):
                g = g * coef
                p.mul_(1 - lr * cfg["weight_decay"])  # AdamW：解耦的权重衰减
                m_i.mul_(b1).add_((1 - b1) * g)
                v_i.mul_(b2).add_((1 - b2) * g * g)
                p.sub_(lr * (m_i / (1 - b1**t)) / ((v_i / (1 - b2**t)).sqrt() + cfg["eps"]))
        losses.append(loss.detach())
    return torch.stack(losses), [p.detach() for p in params]


def ex6_resume(make_model, data: torch.Tensor, steps_before: int, steps_after: int) -> list[torch.Tensor]:
    """断点续训：用 make_model() 建模型、torch.optim.AdamW(lr=1e-2) 训练 steps_before 步（每步 _train_step），
    把模型与优化器的 state_dict 用 torch.save 存进内存里的文件（io.BytesIO），再**新建**模型和优化器、
    load 回来，接着训练 steps_after 步。返回最终参数（对照：不中断地连续训练）。"""
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps_before):
        _train_step(model, opt, data, step)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": steps_before}, buffer)

    buffer.seek(0)
    checkpoint = torch.load(buffer)
    model = make_model()  # 新进程里的"全新"模型与优化器
    model.load_state_dict(checkpoint["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt.load_state_dict(checkpoint["optimizer"])  # 少了这一行：Adam 的 m、v、step 从零开始，结果就对不上
    for step in range(checkpoint["step"], checkpoint["step"] + steps_after):
        _train_step(model, opt, data, step)
    return [p.detach() for p in model.parameters()]


# =============================================================================
# 参考实现与输入
# =============================================================================
VOCAB = 11


class TinyLM(nn.Module):
    """最小的语言模型：嵌入 → Dropout → 线性层，输出每个位置的下一个 token 的 logits。"""

    def __init__(self, vocab: int = VOCAB, dim: int = 8, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, dtype=torch.float64)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, vocab, dtype=torch.float64)

    def forward(self, idx):  # (B, T) → (B, T, V)
        return self.head(self.drop(self.embed(idx)))


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, data: torch.Tensor, step: int) -> None:
    x, y = _windows_batch(data, 4, 3, seed=step)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    opt.step()


def _windows_batch(data, block_size, batch_size, seed):
    windows = data.unfold(0, block_size + 1, 1)  # (len − T, T + 1)
    ix = torch.randint(len(windows), (batch_size,), generator=torch.Generator().manual_seed(seed))
    return windows[ix, :-1], windows[ix, 1:]


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _data(g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, VOCAB, (_randint(g, 30, 60),), generator=g)


def _model(g: torch.Generator, dropout: float = 0.0) -> TinyLM:
    model = TinyLM(dropout=dropout)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return model


def _ref_lrs(max_lr, min_lr, warmup, total, steps):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (warmup + 1), total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr),
    ], milestones=[warmup])
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return torch.tensor(lrs, dtype=torch.float64)


def _lr_inputs(g: torch.Generator):
    warmup = _randint(g, 1, 5)
    total = warmup + _randint(g, 1, 10)
    return 0.5 + float(torch.rand((), generator=g)), 0.01, warmup, total, _randint(g, 1, total + 2)


def _eval_inputs(g: torch.Generator):
    data = _data(g)
    return _model(g, dropout=0.5).train(), [_windows_batch(data, 5, 3, seed=s) for s in range(_randint(g, 1, 4))]


def _ref_evaluate(model, batches):
    x = torch.cat([b[0] for b in batches])  # 每个 batch 一样大：平均的平均 = 总平均
    y = torch.cat([b[1] for b in batches])
    head, embed = model.head, model.embed
    logits = F.linear(F.embedding(x, embed.weight), head.weight, head.bias)  # 评估：Dropout 是恒等映射
    return F.cross_entropy(logits.flatten(0, 1), y.flatten()).detach(), True


def _accum_inputs(g: torch.Generator):
    accum = _randint(g, 1, 4)
    x, y = _windows_batch(_data(g), 5, accum * _randint(g, 1, 3), seed=_randint(g, 0, 100))
    return _model(g), x, y, accum


def _ref_accum(model, x, y, accum):
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    return [p.grad for p in model.parameters()]


def _train_inputs(g: torch.Generator):
    steps = 3 if is_smoke() else 5
    cfg = dict(steps=steps, block_size=4, batch_size=3, clip=0.5, max_lr=0.05, min_lr=0.005, warmup=2,
               betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    return _model(g), _data(g), cfg


def _ref_train(model, data, cfg):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["max_lr"], betas=cfg["betas"], eps=cfg["eps"],
                            weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (cfg["warmup"] + 1), total_iters=cfg["warmup"]),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["steps"] - cfg["warmup"], eta_min=cfg["min_lr"]),
    ], milestones=[cfg["warmup"]])
    losses = []
    for step in range(cfg["steps"]):
        x, y = _windows_batch(data, cfg["block_size"], cfg["batch_size"], seed=step)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        opt.step()
        sched.step()
        losses.append(loss.detach())
    return torch.stack(losses), [p.detach() for p in model.parameters()]


def _resume_inputs(g: torch.Generator):
    seed = _randint(g, 0, 10_000)
    return (lambda: _model(torch.Generator().manual_seed(seed))), _data(g), _randint(g, 1, 4), _randint(g, 1, 4)


def _ref_resume(make_model, data, steps_before, steps_after):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps_before + steps_after):
        _train_step(model, opt, data, step)
    return [p.detach() for p in model.parameters()]


CHECKS = [
    (
        "ex1_get_batch",
        _windows_batch,
        lambda g: (_data(g), _randint(g, 1, 8), _randint(g, 1, 5), _randint(g, 0, 10_000)),
    ),
    ("ex2_warmup_cosine_lrs", _ref_lrs, _lr_inputs),
    ("ex3_evaluate", _ref_evaluate, _eval_inputs),
    ("ex4_accumulated_grads", _ref_accum, _accum_inputs),
    ("ex5_train", _ref_train, _train_inputs),
    ("ex6_resume", _ref_resume, _resume_inputs),
]

PUZZLE_ALLOWED: dict[str, set[str]] = {}


def token_baselines(tokens: torch.Tensor, vocab: int) -> dict[str, float]:
    """三个"不用训练"的模型在 tokens 上预测下一个 token 的平均交叉熵（nats/token），都按这段序列本身的频率算：

    - uniform：均匀瞎猜，ln V；
    - unigram：只按每个 token 出现的频率猜（不看上下文），loss = 下一个 token 的熵 H(Y)；
    - bigram：按"当前 token → 下一个 token"的频率表猜，loss = 条件熵 H(Y | X)。TinyLM 的 logits 只取决于当前
      token（嵌入 → 线性层），所以它在这段数据上的 loss 不可能低于这个值——这是它的下限。
    """
    cur, nxt = tokens[:-1], tokens[1:]
    counts = torch.bincount(nxt, minlength=vocab).double()
    p = counts / counts.sum()
    unigram = torch.xlogy(p, 1 / p).sum()  # Σ p·log(1/p)；xlogy(0, ·) = 0：没出现的 token 不贡献
    pairs = torch.bincount(cur * vocab + nxt, minlength=vocab * vocab).double().view(vocab, vocab)
    rows = pairs.sum(1, keepdim=True).clamp_min(1)  # 没出现过的"当前 token"整行是 0，clamp 只为避免 0/0
    bigram = torch.xlogy(pairs, rows / pairs).sum() / pairs.sum()  # Σ c(a,b)·log(c(a)/c(a,b)) / N
    return {"uniform": math.log(vocab), "unigram": unigram.item(), "bigram": bigram.item()}


def _all_windows_loss(model: nn.Module, tokens: torch.Tensor, block_size: int) -> float:
    """tokens 的全部滑动窗口上的平均交叉熵（评估模式、不记梯度，结束后切回训练模式）。"""
    windows = tokens.unfold(0, block_size + 1, 1)
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(windows[:, :-1]).flatten(0, 1), windows[:, 1:].flatten())
    model.train()
    return loss.item()


DEMO_BLOCK, DEMO_BATCH = 8, 16
# demo_training(steps, seed) 跑种子 0–9 实测的范围（默认配置 200 步，SMOKE 30 步）：
# 训练前的 val loss 2.26–2.80（随机初始化的 logits 不全为 0，可以比 ln 11 高也可以低）；
# 最终 val loss 200 步 1.3e-4–2.1e-4、30 步 1.2e-4–2.9e-4——30 步就已到 1e-4 这个量级，之后不再明显下降
DEMO_EXPECTED_INIT = "2.26–2.80"
DEMO_EXPECTED_VAL = {200: "1.3e-4–2.1e-4", 30: "1.2e-4–2.9e-4"}


def demo_data() -> tuple[torch.Tensor, torch.Tensor]:
    """演示用的"文本"：token 按 0, 1, 2, …, 10, 0, 1, … 循环，前 360 个训练、后 40 个验证。"""
    data = torch.arange(400) % VOCAB
    return data[:360], data[360:]


def demo_training(steps: int, seed: int = 0) -> list[tuple[int, float, float]]:
    """用 AdamW 训练 TinyLM(dim=16) steps 步；返回 [(已更新的步数, 训练集 loss, 验证集 loss), …]，
    在第 0 步（训练前）、第 steps // 2 步和最后一步之后评估（全部滑动窗口，评估模式）。"""
    train, val = demo_data()
    with torch.random.fork_rng():  # 只在这里固定初始化的种子，不动调用者的全局随机状态
        torch.manual_seed(seed)
        model = TinyLM(dim=16)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    history = []
    for step in range(steps + 1):
        if step in (0, steps // 2, steps):
            history.append((step, _all_windows_loss(model, train, DEMO_BLOCK), _all_windows_loss(model, val, DEMO_BLOCK)))
        if step == steps:
            break
        x, y = _windows_batch(train, DEMO_BLOCK, DEMO_BATCH, seed=step)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        opt.step()
    return history


def demo() -> None:
    # 一段有规律的"文本"：模型应该学会"下一个 = 当前 + 1"
    train, _ = demo_data()
    base = token_baselines(train, VOCAB)
    print(f"数据：0, 1, …, 10 循环；基线（训练集上，nats/token）：均匀瞎猜 ln {VOCAB} = {base['uniform']:.4f}，"
          f"unigram 熵 {base['unigram']:.4f}，bigram 条件熵 {base['bigram']:.4f}"
          f"（TinyLM 只看当前 token，这是它能到的下限；数据是确定的，所以下限是 0）")
    steps = 30 if is_smoke() else 200
    history = demo_training(steps)
    for step, train_loss, val_loss in history:
        note = f"（随机初始化，种子 0–9 实测 val loss {DEMO_EXPECTED_INIT}，在 ln {VOCAB} 附近）" if step == 0 else ""
        if step == steps:
            note = f"（本配置 {steps} 步、种子 0–9 实测 val loss {DEMO_EXPECTED_VAL[steps]}；下限 {base['bigram']:.4f}）"
        label = "训练前   " if step == 0 else f"第 {step:3d} 步后"
        print(f"  {label}  train loss {train_loss:.4g}  val loss {val_loss:.4g}{note}")


# =============================================================================
# 自检：框架在 utils/exercises.py（28 天共用）——每道练习在几组随机输入上与 PyTorch 内置实现逐一对比
# =============================================================================
def run_checks(verbose: bool = True, seeds=None) -> tuple[int, int]:
    """逐题自检：每题打印一行 ✓/✗，最后打印 `N/M passed`；返回 (N, M)。"""
    return exercises.run_checks(globals(), verbose=verbose, seeds=seeds)


def main() -> None:
    exercises.run_day(globals())


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
