"""从 Transformer 到 decoder-only 语言模型：因果 LM 目标、困惑度、采样（贪心 / temperature / top-k / top-p）。

上一课的编码器–解码器 Transformer 做"翻译"：读完整个源句，再逐个生成目标。语言模型没有源句，
只有一条文本，要学的是 p(x_1..x_T) = ∏_t p(x_t | x_<t)。把编码器和交叉注意力都去掉，只留
"带因果 mask 的自注意力 + FFN"——这就是 GPT 的 decoder-only 结构。（实现上它和"加了因果 mask 的编码器层"
完全相同，所以这里直接用 nn.TransformerEncoderLayer + 因果 mask 搭模型。）

1. 因果 LM 目标：位置 t 的 logits 预测 x_{t+1}。对一条长度 T 的序列，一次前向得到 T−1 个训练信号：

       L = −1/N Σ_{t=1..T−1} log softmax(logits_t)[x_{t+1}]       （N = 不被忽略的目标数）

   实现要点：logits[:, :-1] 与 input_ids[:, 1:] 对齐（"右移一位"）；填充位置的标签设为 ignore_index=−100，
   不计入分子也不计入 N。Hugging Face 的 *ForCausalLM(labels=input_ids) 在模型内部做的正是这件事。

2. 困惑度 PPL = exp(L)。为什么取 exp：L 是平均每 token 的负对数似然，exp(L) = (∏ 1/p(x_t|x_<t))^(1/N)，
   即"正确 token 概率倒数的几何平均"。对词表大小 V 的均匀分布，每个 p = 1/V，PPL = V——
   PPL = k 可以读成"模型平均而言像是在 k 个等可能的 token 里猜"。注意 PPL 依赖分词：字符级与 BPE 的 PPL 不可直接比较。

3. 采样：模型给出 logits z，下一个 token 怎么挑？
   - 贪心：argmax z。确定、保守，但容易陷入重复循环（"the the the ..."）。
   - temperature：softmax(z / τ)。τ→0 趋于贪心，τ=1 是模型原分布，τ>1 更平、更随机。
     推导：p_i ∝ exp(z_i/τ) = (exp z_i)^{1/τ}，即把原分布的每个概率取 1/τ 次方再归一化。
   - top-k：只在概率最高的 k 个 token 里重新归一化采样，砍掉"长尾里的胡言乱语"。缺点是 k 固定：
     分布很尖时 k 个里有不少垃圾，分布很平时又砍掉了合理候选。
   - top-p（nucleus, Holtzman et al. 2019）：取累计概率刚好 ≥ p 的最小 token 集合，集合大小随分布自适应。
   HF generate(do_sample=True) 的顺序是 temperature → top-k → top-p → softmax → multinomial，这里相同，
   并逐个与 transformers 的 TemperatureLogitsWarper / TopKLogitsWarper / TopPLogitsWarper 对照。

多少算好（验证集每字符 NLL，nat）：脚本在同一批验证窗口上现算三条不用神经网络的基线——均匀分布 ln V
（随机初始化的模型就在这里，开训前会打印出来对照）、unigram（只按字符频率猜）、bigram（按训练集的二元计数，
只看前一个字符）；模型要低于 bigram 才说明用上了更早的上下文。默认配置（单线程约 2 分钟 CPU 时间）实测
验证 NLL 1.97–1.98（两个种子），对照 ln V 4.17、unigram 3.27、bigram 2.50；这些记在 DEFAULT_RUN 里，
与基线并排打印。采样的 4-gram 去重率对照同样长度的真实文本（验证集开头 300 个字符是 0.94）：
贪心只有 0.14–0.16（陷进重复），temperature 1.0 / top-k / top-p 在 0.93–0.99。

接下来去哪：
- archive/Let's_build_GPT/let's_build_gpt.py：把这里的小模型一步步从 bigram 搭成完整的 GPT（nanoGPT 同构）；
- model_lab/02_architectures/（gpt2.py、llama.py）：与 Hugging Face 权重互通的工业级模型（RoPE、RMSNorm、SwiGLU、KV cache），
  它们共用的采样函数在 model_lab/generation.py，语义与本课相同。

    python "archive/Introductory learning/04_LLMs/01_causal_lm_and_sampling.py"

图：checkpoints/figures/sampling_distributions.png（同一上下文在四种采样设置下的下一个字符分布）。
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from torch.nn import functional as F

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed, time_block

SMOKE = is_smoke()
IGNORE_INDEX = -100  # 与 F.cross_entropy、Hugging Face 相同的"忽略此标签"记号


# =============================================================================
# 1. 因果 LM 损失与困惑度
# =============================================================================
def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """logits (B, T, V)、input_ids (B, T) -> 平均负对数似然（标量）。位置 t 的 logits 预测 input_ids[t+1]。"""
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(f"需要 logits (B, T, V) 与 input_ids (B, T)，收到 {tuple(logits.shape)} 与 {tuple(input_ids.shape)}")
    if logits.size(1) < 2:
        raise ValueError("序列长度至少为 2：长度 1 的序列没有'下一个 token'可以预测")
    pred = logits[:, :-1]  # (B, T−1, V)：最后一个位置之后没有答案，丢掉
    target = input_ids[:, 1:]  # (B, T−1)：右移一位
    valid = target != ignore_index
    if not valid.any():
        raise ValueError("所有目标都是 ignore_index，没有可以计算损失的位置")
    # log softmax = z − logsumexp(z)：先减最大值再 exp，避免溢出（torch.log_softmax 内部就是这么做的）
    log_probs = pred - pred.logsumexp(-1, keepdim=True)  # (B, T−1, V)
    nll = -log_probs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T−1)；clamp 让 −100 也能当下标
    return (nll * valid).sum() / valid.sum()


def perplexity(mean_nll: torch.Tensor | float) -> float:
    """PPL = exp(平均 NLL)：正确 token 概率倒数的几何平均。"""
    if isinstance(mean_nll, torch.Tensor):
        mean_nll = mean_nll.detach().item()
    return math.exp(mean_nll)


# =============================================================================
# 2. 采样：逐个对齐 HF 的 logits warper
# =============================================================================
def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits 应为 (B, V)（每个序列最后一个位置的分数），收到形状 {tuple(logits.shape)}")


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """z / τ。τ = 0 没有定义（除零），贪心解码请用 greedy()。"""
    _check_logits(logits)
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature={temperature!r} 必须 > 0；想要确定性输出请用 greedy()")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """分数低于第 k 名的位置置 −inf（与第 k 名并列的都保留）；k ≥ V 时不过滤。"""
    _check_logits(logits)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k={k!r} 必须是 >= 1 的整数")
    kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """保留累计概率 ≥ p 的最小集合，其余置 −inf。

    升序排序后累加：要删的是"累计概率 ≤ 1 − p"的低概率尾部，剩下的头部总质量 ≥ p。
    最大概率的 token 排在最后（累计值 = 1），永远保留——集合至少有一个 token。
    """
    _check_logits(logits)
    if not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"top_p={p!r} 必须在 (0, 1] 内")
    sorted_logits, order = logits.sort(dim=-1)  # 升序 (B, V)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove_sorted = cum <= 1 - p
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # 排序位置 → 原词表位置
    return logits.masked_fill(remove, float("-inf"))


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """(B, V) -> (B, 1)：取分数最大的 token。"""
    _check_logits(logits)
    return logits.argmax(-1, keepdim=True)


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) -> (B, 1)。temperature=0 表示贪心；否则按 temperature → top-k → top-p 的顺序处理后采样。"""
    if temperature == 0:
        return greedy(logits)
    z = apply_temperature(logits, temperature)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p is not None:
        z = top_p_filter(z, top_p)
    return torch.multinomial(z.softmax(-1), 1, generator=generator)


# =============================================================================
# 3. 一个小的 decoder-only 字符级语言模型
# =============================================================================
@dataclass
class Config:
    block_size: int = 64
    d_model: int = 128
    nhead: int = 4
    num_layers: int = 3
    batch_size: int = 32
    steps: int = 600
    lr: float = 2e-3
    max_chars: int | None = 1_000_000


SMOKE_CONFIG = Config(block_size=32, d_model=32, nhead=2, num_layers=1, batch_size=8, steps=20, max_chars=50_000)
EVAL_WINDOWS = 50 if SMOKE else 400  # 验证用多少个不重叠的 block_size 窗口（默认配置：400 × 64 ≈ 2.6 万个字符）
# 默认配置（Config()：3 层、d_model 128、block_size 64、600 步）的实测值，种子 0 与 1 各训练一次：
# 验证 NLL（前 400 个窗口）1.978 / 1.969；300 个采样字符的 4-gram 去重率（采样种子 0）见 distinct
DEFAULT_RUN = {"val_nll": (1.969, 1.978),
               "distinct": {"greedy": (0.14, 0.16), "temperature 1.0": (0.97, 0.99),
                            "top-k 10 (T=0.8)": (0.93, 0.95), "top-p 0.9 (T=0.8)": (0.94, 0.95)}}


class TinyCausalLM(nn.Module):
    """token 嵌入 + 可学习位置嵌入 → N 个 pre-LN 因果自注意力块 → LN → lm_head。"""

    def __init__(self, vocab_size: int, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)  # GPT 用可学习的位置嵌入而不是正弦编码
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.d_model, cfg.nhead, 4 * cfg.d_model, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # 权重共享：输入嵌入与输出投影是同一张表（GPT-2 的做法，省参数）
        # nn.Embedding 默认 N(0, 1)：共享给 lm_head 后 logits 的标准差 ~√d_model，初始损失远大于 ln V。
        # GPT-2 用 N(0, 0.02²)，初始 logits 接近 0、分布接近均匀，初始损失 ≈ ln V
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V)。"""
        if idx.dim() != 2:
            raise ValueError(f"idx 应为 (B, T)，收到 {tuple(idx.shape)}")
        T = idx.size(1)
        if T > self.cfg.block_size:
            raise ValueError(f"序列长度 {T} 超过 block_size={self.cfg.block_size}；生成时请只保留最后 block_size 个 token")
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)  # 上三角 −inf：不许看未来
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """自回归生成：每步把（截断到 block_size 的）上下文整段重新前向，取最后一个位置的 logits 采样。

        每步重算整段是 O(T²) 的浪费；工业实现用 KV cache 只算新 token（见 model_lab 的 llama.py）。
        """
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.cfg.block_size :])[:, -1]  # (B, V)
            idx = torch.cat([idx, sample_next_token(logits, temperature, top_k, top_p, generator)], dim=1)
        return idx


def encode_and_split(text: str, cfg: Config) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """取前 max_chars 个字符，建字符表（按码位排序），前 90% 训练、后 10% 验证。返回 (chars, train_ids, val_ids)。"""
    text = text[: cfg.max_chars] if cfg.max_chars else text
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text])
    n = int(0.9 * len(data))
    train_ids, val_ids = data[:n], data[n:]
    if len(val_ids) <= cfg.block_size:
        raise ValueError(f"文本太短：验证集只有 {len(val_ids)} 个字符，需要多于 block_size={cfg.block_size}")
    return chars, train_ids, val_ids


def train_lm(text: str, cfg: Config, seed: int = 0, verbose: bool = True):
    """字符级训练。返回 (model, chars, val_ids)。"""
    chars, train_ids, val_ids = encode_and_split(text, cfg)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyCausalLM(len(chars), cfg)
    if verbose:  # 健全性检查：GPT-2 式的小初始化让初始 logits 接近 0，初始损失应当 ≈ ln V
        print(f"  step    0  val NLL {evaluate_nll(model, val_ids):.3f}（均匀分布 ln V = {math.log(len(chars)):.3f}）")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    for step in range(1, cfg.steps + 1):
        starts = torch.randint(len(train_ids) - cfg.block_size, (cfg.batch_size,), generator=gen)
        x = torch.stack([train_ids[s : s + cfg.block_size] for s in starts])  # (B, T)
        loss = causal_lm_loss(model(x), x)  # 输入与标签是同一段：移位在损失函数里做
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if verbose and step % max(1, cfg.steps // 8) == 0:
            print(f"  step {step:4d}  train loss {loss.item():.3f}")
    return model, chars, val_ids


def eval_windows(ids: torch.Tensor, block_size: int, max_windows: int) -> torch.Tensor:
    """ids 开头的 n = min(max_windows, ⌊(len−1)/block_size⌋) 个不重叠窗口，形状 (n, block_size)。"""
    n = min(max_windows, (len(ids) - 1) // block_size)
    if n < 1:
        raise ValueError(f"只有 {len(ids)} 个 token，凑不出一个 block_size={block_size} 的窗口")
    return ids[: n * block_size].view(n, block_size)


@torch.no_grad()
def evaluate_nll(model: TinyCausalLM, ids: torch.Tensor, max_windows: int = 50) -> float:
    """把 ids 切成不重叠的 block_size 窗口，返回平均每字符 NLL（每个窗口的第 1 个字符没有上下文，不算目标）。"""
    x = eval_windows(ids, model.cfg.block_size, max_windows)
    return causal_lm_loss(model(x), x).item()


def char_baselines(train_ids: torch.Tensor, windows: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """三条不用神经网络的基线在 windows (n, T) 的目标位置（每个窗口第 2..T 个字符，与 evaluate_nll 相同）上的平均 NLL。

    uniform：每个字符 1/V，NLL = ln V。unigram：训练集字符频率。bigram：训练集二元计数按行归一化，
    即 p(x_t | x_{t−1})——只看前一个字符的模型在训练集上的最优解。计数都加 1（Laplace 平滑），
    验证集里没见过的字符（对）不至于让 NLL 变成无穷大。
    """
    V = vocab_size
    uni = torch.bincount(train_ids, minlength=V).double() + 1
    uni /= uni.sum()
    pair = torch.bincount(train_ids[:-1] * V + train_ids[1:], minlength=V * V).double().view(V, V) + 1
    pair /= pair.sum(1, keepdim=True)
    prev, target = windows[:, :-1].reshape(-1), windows[:, 1:].reshape(-1)
    return {"uniform": math.log(V), "unigram": -uni[target].log().mean().item(),
            "bigram": -pair[prev, target].log().mean().item()}


SAMPLING_SETTINGS = {"greedy": dict(temperature=0), "temperature 1.0": dict(temperature=1.0),
                     "top-k 10 (T=0.8)": dict(temperature=0.8, top_k=10),
                     "top-p 0.9 (T=0.8)": dict(temperature=0.8, top_p=0.9)}


def distinct_ratio(ids: list[int], n: int = 4) -> float:
    """不同 n-gram 数 / n-gram 总数：越低说明重复越多（贪心解码的通病）。"""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def main() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from data_pipeline.corpora import load_corpus

    setup_seed()
    print("== 1. 因果 LM 损失与困惑度 ==")
    logits = torch.randn(3, 9, 50, requires_grad=True)
    ids = torch.randint(50, (3, 9))
    ids[2, 6:] = IGNORE_INDEX  # 第三条序列后面是填充
    ours = causal_lm_loss(logits, ids)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    g_o, g_r = torch.autograd.grad(ours, logits)[0], torch.autograd.grad(ref, logits)[0]
    print(f"  vs F.cross_entropy：损失差 {abs(ours.item() - ref.item()):.1e}，梯度差 {(g_o - g_r).abs().max().item():.1e}；"
          f"PPL {perplexity(ours):.2f} vs exp(CE) {math.exp(ref.item()):.2f}")
    assert abs(ours.item() - ref.item()) < 1e-5 and (g_o - g_r).abs().max() < 1e-6
    uniform = causal_lm_loss(torch.zeros(1, 5, 50), torch.randint(50, (1, 5)))
    print(f"  均匀分布（logits 全 0）的 PPL = {perplexity(uniform):.2f} = 词表大小 50")
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)).eval()
    x = torch.randint(50, (2, 12))
    with torch.no_grad():
        out = hf(x, labels=x)
    hf_err = abs(causal_lm_loss(out.logits, x).item() - out.loss.item())
    print(f"  vs GPT2LMHeadModel(labels=input_ids).loss（HF 在模型内部移位）：差 {hf_err:.1e}")
    assert hf_err < 1e-5

    print("\n== 2. 采样函数 vs transformers 的 logits warper ==")
    z = torch.randn(4, 100) * 3
    z[1, :5] = z[1, 0]  # 造一些并列分数，检查平局处理
    checks = {
        "temperature 0.7": (apply_temperature(z, 0.7), TemperatureLogitsWarper(0.7)(None, z)),
        "top-k 10": (top_k_filter(z, 10), TopKLogitsWarper(10)(None, z)),
        "top-p 0.9": (top_p_filter(z, 0.9), TopPLogitsWarper(0.9)(None, z)),
    }
    for name, (a, b) in checks.items():
        same = torch.equal(torch.isinf(a), torch.isinf(b)) and torch.allclose(a[~torch.isinf(a)], b[~torch.isinf(b)])
        print(f"  {name:16s} 与 HF {'一致' if same else '不一致'}（保留 token 数 {(~torch.isinf(a)).sum(-1).tolist()}）")
        assert same

    cfg = SMOKE_CONFIG if SMOKE else Config()
    print(f"\n== 3. 训练一个 decoder-only 字符级 LM（{cfg.num_layers} 层，d_model={cfg.d_model}，"
          f"block_size={cfg.block_size}，{cfg.steps} 步）==")
    text = load_corpus("shakespeare")
    with time_block("train", verbose=False) as t:
        model, chars, val_ids = train_lm(text, cfg)
    model.eval()
    val_nll = evaluate_nll(model, val_ids, EVAL_WINDOWS)
    _, train_ids, _ = encode_and_split(text, cfg)
    windows = eval_windows(val_ids, cfg.block_size, EVAL_WINDOWS)
    base = char_baselines(train_ids, windows, len(chars))
    print(f"  用时 {t.seconds:.1f} s；词表 {len(chars)} 个字符，验证集前 {windows.numel():,} 个字符")
    print(nll_report(val_nll, base, SMOKE))
    probe = val_ids[: cfg.block_size].unsqueeze(0).clone()
    changed = probe.clone()
    changed[0, -1] = (changed[0, -1] + 1) % len(chars)
    with torch.no_grad():
        causal_err = (model(probe)[0, :-1] - model(changed)[0, :-1]).abs().max().item()
    print(f"  因果性：改动最后一个 token，之前各位置 logits 的最大变化 {causal_err:.1e}（应为 0）")
    assert causal_err < 1e-5

    prompt = "ROMEO:\n"
    idx = torch.tensor([[chars.index(c) for c in prompt]])
    n_new = 40 if SMOKE else 300
    real = distinct_ratio(val_ids[:n_new].tolist())
    print(f"\n  4-gram 去重率的参照：验证集开头 {n_new} 个真实字符是 {real:.2f}；越低说明重复越多")
    for name, kw in SAMPLING_SETTINGS.items():
        out = model.generate(idx, n_new, generator=torch.Generator().manual_seed(0), **kw)[0].tolist()
        sample = "".join(chars[i] for i in out)
        ratio = distinct_ratio(out[len(prompt):])
        ref = "" if SMOKE else "，默认配置实测 {:.2f}–{:.2f}".format(*DEFAULT_RUN["distinct"][name])
        print(f"\n  --- {name}（4-gram 去重率 {ratio:.2f}；真实文本 {real:.2f}{ref}）---\n{sample}")

    context = val_ids[: cfg.block_size].unsqueeze(0)
    with torch.no_grad():
        last = model(context)[:, -1]
    fig = plot_sampling_distributions(last[0], chars)
    path = save_figure(fig, "sampling_distributions.png", dpi=120)
    print(f"\n  图已保存：{path}")


def plot_sampling_distributions(logits: torch.Tensor, chars: list[str], top: int = 20):
    """logits (V,)：四种设置下概率最高的 top 个字符（按 T=1 的概率排序，四幅图同一顺序）的概率柱状图。返回 Figure。"""
    order = logits.argsort(descending=True)[:top]
    z = logits.unsqueeze(0)
    panels = {"T=1": z, "T=0.5": apply_temperature(z, 0.5), "top-k 5": top_k_filter(z, 5),
              "top-p 0.9": top_p_filter(z, 0.9)}
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.8), sharey=True)
    for ax, (name, zz) in zip(axes, panels.items()):
        ax.bar(range(len(order)), zz.softmax(-1)[0, order].numpy())
        ax.set_xticks(range(len(order)), [repr(chars[i])[1:-1] for i in order.tolist()], fontsize=7)
        ax.set_xlabel(f"next character (top {len(order)} at T=1)")
        ax.set_title(name)
    axes[0].set_ylabel("next-char probability")
    fig.suptitle("Next-character distribution under different sampling settings")
    fig.tight_layout()
    return fig


def nll_report(val_nll: float, base: dict[str, float], smoke: bool) -> str:
    """验证 NLL 与 PPL，旁边是同一批窗口上现算的三条基线和默认配置的实测范围。"""
    ref = "SMOKE 规模，不要求" if smoke else "默认配置实测 {:.2f}–{:.2f}".format(*DEFAULT_RUN["val_nll"])
    return (f"  验证 NLL {val_nll:.3f} nat/char，PPL {perplexity(val_nll):.2f}（均匀 ln V {base['uniform']:.2f}，"
            f"unigram {base['unigram']:.2f}，bigram {base['bigram']:.2f}；{ref}）")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
