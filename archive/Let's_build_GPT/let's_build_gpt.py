"""Let's build GPT：从零搭一个字符级 GPT，顺序跟 Karpathy 的讲座 "Let's build GPT: from scratch, in code, spelled out" 一致。

文件从上到下就是讲座的顺序，每一步都能单独训练（--stage）：

    0. 数据：字符级 tokenizer、train/val 切分、随机取 batch
    1. bigram 基线：只看当前字符猜下一个字符                       --stage bigram
    2. "数学小技巧"：用下三角矩阵做"对过去取加权平均"
    3. 单头因果自注意力：为什么要 mask、为什么除以 sqrt(d)           --stage single_head
    4. 多头注意力：几个小头并行，各看各的                            --stage multi_head
    5. 前馈网络：注意力负责"交流"，FFN 负责每个位置自己"思考"         --stage ffn
    6. 残差 + (pre-)LayerNorm 的 Block 堆叠，再加 dropout = 完整 GPT --stage blocks（默认）

完整模型与 nanoGPT 的 model.py 同构（GELU 4x MLP、pre-LN、weight tying、GPT-2 的初始化含残差投影的缩放），
训练配方也与 nanoGPT 相同（AdamW 只对 2 维权重做 weight decay、warmup + cosine、梯度裁剪），
所以用 nanoGPT 的 CPU 配方能复现它在 tiny-shakespeare 上的 val loss（约 1.89）：

    python "archive/Let's_build_GPT/let's_build_gpt.py"                        # 学习者的小模型（默认，约 1–2 分钟）
    python "archive/Let's_build_GPT/let's_build_gpt.py" --stage bigram         # 只训练 bigram 基线
    python "archive/Let's_build_GPT/let's_build_gpt.py" --corpus tinyshakespeare \\
        --n_layer 4 --n_head 4 --n_embd 128 --block_size 64 --batch_size 12 --max_iters 2000 \\
        --eval_iters 20                                                        # nanoGPT 的 CPU 配方

多少算"学会了"（val loss，单位 nats/字符；默认语料 = 内置莎士比亚全集，词表 71 个字符）：

    均匀分布 ln(V)                   4.26   （随机初始化时的 loss；tiny-shakespeare 的 V=65 时是 4.17）
    unigram（只按字符频率猜）         3.30
    bigram（按训练集计数，最优）      2.49   （bigram 模型最多到这里；低于它才说明用上了"更早的字符"）
    各 stage 默认配置，5000 步：bigram 2.50 → single_head 2.41 → multi_head 2.25 → ffn 2.20 → blocks 2.12
                                     （blocks 换种子在 2.11–2.12 之间；CPU 上约 1 分钟的计算量）
    nanoGPT CPU 配方（tiny-shakespeare，0.8M 参数，2000 步）  1.88；nanoGPT 的 GPU 配方（10.7M 参数）约 1.47

运行时脚本会从数据里现算前三条基线，结束时把 val loss 和它们、和上表的参考值放在一起打印。
最后一行输出固定为 `final: train_loss=<x> val_loss=<y>`，方便脚本解析；损失曲线存到
checkpoints/lets_build_gpt/loss.png。SMOKE=1 时只跑几步。
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from data_pipeline.corpora import CORPORA, load_corpus
from utils.io import is_smoke, output_path, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import get_device, setup_seed, time_block

STAGES = ("bigram", "single_head", "multi_head", "ffn", "blocks")
DEFAULT_CORPUS = "shakespeare"
# 各 stage 用默认超参（默认语料、5000 步、种子 1337）训练后的 val loss，实测值，结束时与你的结果并排打印。
# blocks 换种子 1 / 2 是 2.110 / 2.118：第二位小数上的差别是噪声。换了语料、步数或模型尺寸，这些数字只是数量级上的参考。
REFERENCE_VAL_LOSS = {"bigram": 2.50, "single_head": 2.41, "multi_head": 2.25, "ffn": 2.20, "blocks": 2.12}
NANOGPT_RECIPE_VAL_LOSS = 1.88  # nanoGPT CPU 配方在 tiny-shakespeare 上（benchmarks/archive_lets_build_gpt.py 实测 1.884）


# =============================================================================
# 0. 数据：字符级 tokenizer
# =============================================================================
def load_text(path: str | None, corpus: str = DEFAULT_CORPUS) -> str:
    """读训练文本：给了 --data 就读那个文件，否则读语料注册表里的 corpus（缓存在 data/）。

    默认的 shakespeare 离线构建；tinyshakespeare 第一次用时下载，离线时报错会写明文件该放到哪里。
    """
    if path is None:
        return load_corpus(corpus)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"--data {path}: 文件不存在；给一个 UTF-8 纯文本文件的路径，或去掉 --data 使用内置的莎士比亚语料"
        )
    return file.read_text(encoding="utf-8")


class CharTokenizer:
    """字符级 tokenizer：词表 = 文本里出现过的所有字符，按码位排序，id = 在词表中的下标。

    讲座里写的是 `stoi = {ch: i for i, ch in enumerate(chars)}; encode = lambda s: [stoi[c] for c in s]`，
    这里做的是同一件事的向量化版本：把字符串转成 Unicode 码位数组（utf-32 每个字符正好 4 字节），
    再用 searchsorted 在排好序的词表里查下标——内置语料 4.8M 个字符，Python 循环（dict 查表再 torch.tensor）
    约 0.8 s CPU，这样连建词表约 0.26 s（实测，快约 3 倍）。
    """

    def __init__(self, text: str):
        if not text:
            raise ValueError("训练文本是空的；--data 需要一个非空的文本文件")
        self.codepoints = np.unique(self._codes(text))  # 已排序，等价于 sorted(set(text))
        self.chars = [chr(c) for c in self.codepoints]

    @staticmethod
    def _codes(text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        codes = self._codes(text)
        ids = np.searchsorted(self.codepoints, codes)
        known = (ids < self.vocab_size) & (self.codepoints[np.minimum(ids, self.vocab_size - 1)] == codes)
        if not known.all():
            bad = chr(int(codes[~known][0]))
            raise ValueError(f"字符 {bad!r} 不在词表里；字符级模型只认识训练文本中出现过的字符")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def split_train_val(data: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """前 90% 训练、后 10% 验证（与 nanoGPT 的 prepare.py 相同）。

    不随机打乱：验证集是"没见过的一段连续文本"，这才能测出模型是否学会了语言，而不是背下了训练句子。
    """
    n = int(0.9 * len(data))
    train, val = data[:n], data[n:]
    if len(val) <= block_size:
        raise ValueError(
            f"文本太短：{len(data)} 个字符，验证集（后 10%）只有 {len(val)} 个，"
            f"至少要比 block_size={block_size} 多 1 个；换更长的文本或减小 --block_size"
        )
    return train, val


def char_baselines(train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """三条"不用神经网络"的基线：验证集上每个字符的平均交叉熵（nats）。模型的 val loss 要和它们比才有意义。

    uniform：每个字符概率 1/V，loss = ln V（随机初始化的模型就在这里）。
    unigram：p(c) = 训练集里 c 的频率，只知道"e 比 z 常见"。
    bigram：p(c | 前一个字符) = 训练集里的二元计数按行归一化——这正是 --stage bigram 那张 V×V 表在训练集上的最优解
            （交叉熵的最小值点就是经验条件分布），所以它是 bigram 模型能达到的 val loss。
    两者都加 1 平滑（Laplace）：验证集里出现训练集没见过的字符对时，概率不至于是 0、loss 不至于是无穷大。
    """
    V = vocab_size
    tr, va = train.numpy(), val.numpy()
    uni = np.bincount(tr, minlength=V) + 1.0
    uni /= uni.sum()
    pair = np.bincount(tr[:-1] * V + tr[1:], minlength=V * V).reshape(V, V) + 1.0  # pair[a, b] = 计数(a 后面是 b)
    pair /= pair.sum(axis=1, keepdims=True)
    return {
        "uniform": math.log(V),
        "unigram": float(-np.log(uni[va]).mean()),
        "bigram": float(-np.log(pair[va[:-1], va[1:]]).mean()),
    }


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, device: torch.device):
    """随机取 batch_size 段长度为 block_size 的文本：x 是输入，y 是 x 整体右移一位（每个位置的"下一个字符"）。

    一段长度 T 的样本其实包含 T 个训练样例：用 x[:1] 预测 y[0]，用 x[:2] 预测 y[1]……
    这也让模型习惯从 1 个到 block_size 个字符的各种上下文长度（生成时就是从 1 个字符开始的）。
    """
    ix = torch.randint(len(data) - block_size, (batch_size,))
    offsets = ix[:, None] + torch.arange(block_size)  # (B, T)：每行是一段连续下标
    x = data[offsets]
    y = data[offsets + 1]
    return x.to(device), y.to(device)


# =============================================================================
# 配置
# =============================================================================
@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 8  # 上下文长度：最多看前面多少个字符
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 32
    dropout: float = 0.0
    # nanoGPT 的 train.py 默认 bias=False：LayerNorm 与 Linear 都不带偏置，效果略好、也更快
    bias: bool = False
    stage: str = "blocks"

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r} 不认识；可选 {', '.join(STAGES)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} 必须是正整数")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}："
                f"每个头的维度 head_size = n_embd / n_head 必须是整数，请调整 --n_embd 或 --n_head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} 必须在 [0, 1) 之间")


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """交叉熵 = -log p(正确的下一个字符) 的平均。F.cross_entropy 要 (N, C)，所以把 (B, T) 摊平成 N = B*T。

    随机初始化时每个字符的概率约 1/V，所以初始 loss ≈ ln(V)（V=65 时约 4.17，默认语料 V=71 时约 4.26）
    ——这是第一个健全性检查。
    """
    B, T, V = logits.shape
    return F.cross_entropy(logits.view(B * T, V), targets.view(B * T))


# =============================================================================
# 1. bigram 基线
# =============================================================================
class BigramLanguageModel(nn.Module):
    """最简单的语言模型：一张 V×V 的表，第 i 行就是"当前字符为 i 时下一个字符的 logits"。

    它完全不看更早的字符——后面所有改进都是为了让每个位置能"看到"过去：val loss 从 bigram 的 ~2.5
    降到默认小模型的 ~2.1、nanoGPT CPU 配方的 ~1.88（更大的模型约 1.47）。
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.token_embedding_table(idx)  # (B, T, V)
        loss = None if targets is None else lm_loss(logits, targets)
        return logits, loss


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0) -> torch.Tensor:
    """自回归采样：每次只取最后一个位置的分布，抽一个字符接到末尾，再喂回去。

    上下文超过 block_size 时只保留最后 block_size 个字符：位置嵌入表只有 block_size 行，
    因果 mask 也只有这么大。
    """
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block_size:])
        probs = F.softmax(logits[:, -1, :] / temperature, dim=-1)  # (B, V)
        idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1)：按概率抽样，而不是取最大（那样会不停重复）
        idx = torch.cat((idx, idx_next), dim=1)  # (B, T+1)
    return idx


# =============================================================================
# 2. 数学小技巧：用矩阵乘法对"过去"取加权平均
# =============================================================================
def attention_trick_demo(B: int = 2, T: int = 5, C: int = 3) -> torch.Tensor:
    """讲座里的三种写法，结果完全相同：让位置 t 得到 x[0..t] 的平均（只看过去，不看未来）。

    版本 1：双重循环，最直白，但慢。
    版本 2：wei = 下三角矩阵按行归一化，out = wei @ x —— 一次矩阵乘法。
    版本 3：wei 先是全 0 的"亲和度"，把未来位置填成 -inf，再 softmax。
           exp(-inf) = 0，所以未来位置的权重正好是 0，每行仍然加起来等于 1。
           自注意力就是版本 3，只是亲和度不再是常数 0，而是由数据算出来的 q·k。
    返回版本 3 的权重矩阵（一个下三角、每行和为 1 的矩阵）。
    """
    x = torch.randn(B, T, C)
    v1 = torch.stack([torch.stack([x[b, : t + 1].mean(0) for t in range(T)]) for b in range(B)])
    tril = torch.tril(torch.ones(T, T))
    v2 = (tril / tril.sum(1, keepdim=True)) @ x  # (T, T) @ (B, T, C) → (B, T, C)：广播到每个 batch
    wei = torch.zeros(T, T).masked_fill(tril == 0, float("-inf")).softmax(dim=-1)
    v3 = wei @ x
    torch.testing.assert_close(v2, v1)
    torch.testing.assert_close(v3, v1)
    return wei


# =============================================================================
# 3. 单头因果自注意力
# =============================================================================
class Head(nn.Module):
    """一个自注意力头。每个位置发出 query（"我在找什么"）、key（"我有什么"）、value（"我愿意分享什么"）；
    位置 t 对位置 s 的关注度 = q_t · k_s，softmax 后对 v_s 加权求和。

    这是 decoder 的"因果"自注意力：去掉 mask 就是 encoder（如 BERT、情感分类）里每个位置都能看全句的版本；
    q 来自本序列、k/v 来自另一个序列（如翻译时的源句子）就是 cross-attention。
    """

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=bias)
        self.query = nn.Linear(n_embd, head_size, bias=bias)
        self.value = nn.Linear(n_embd, head_size, bias=bias)
        # 因果 mask 放进 register_buffer 而不是 nn.Parameter：它不是要学的参数（优化器不该碰它），
        # 但要跟着 model.to(device) 一起搬到 GPU，也要随 state_dict 保存——buffer 正好满足这两点。
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size, dtype=torch.bool)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        k = self.key(x)  # (B, T, hs)
        q = self.query(x)  # (B, T, hs)
        # 为什么乘 1/sqrt(hs)：若 q、k 的各分量均值 0、方差 1，q·k 是 hs 项之和，方差为 hs。
        # 不缩放的话 hs 越大 logits 越极端，softmax 收敛成 one-hot：每个位置只盯一个位置，梯度几乎为 0。
        # 除以 sqrt(hs) 把方差拉回 1，初始化时注意力是"弥散"的，训练才能慢慢学出该看哪里。
        wei = q @ k.transpose(-2, -1) * k.size(-1) ** -0.5  # (B, T, hs) @ (B, hs, T) → (B, T, T)
        # 为什么要 mask：训练时 y[t] 就是 x[t+1]。如果位置 t 能看到 t+1，模型直接"抄答案"，loss 很低，
        # 但生成时根本没有未来可看。把未来位置填成 -inf，softmax 后权重恰好为 0（见 attention_trick_demo）。
        # 只取 [:T, :T]：生成时序列可能比 block_size 短。
        wei = wei.masked_fill(~self.tril[:T, :T], float("-inf"))
        wei = F.softmax(wei, dim=-1)  # 每行和为 1
        wei = self.dropout(wei)  # 随机切断一些"交流"通道（见第 6 节）
        v = self.value(x)  # (B, T, hs)
        return wei @ v  # (B, T, T) @ (B, T, hs) → (B, T, hs)


# =============================================================================
# 4. 多头注意力
# =============================================================================
class MultiHeadAttention(nn.Module):
    """n_head 个独立的小头并行，输出在通道维拼起来，再用 c_proj 混合。

    一个 n_embd 维的大头只能给出一种"关注分布"；拆成 n_head 个 head_size = n_embd/n_head 维的小头，
    参数量不变，却能同时关注不同的东西（一个头找元音，一个头找上一个空格……）。
    c_proj 把各头的结果投影回残差流（第 6 节的残差连接要求形状与输入相同）。
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        head_size = config.n_embd // config.n_head
        self.heads = nn.ModuleList(
            Head(config.n_embd, head_size, config.block_size, config.dropout, config.bias) for _ in range(config.n_head)
        )
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)  # n_head 个 (B, T, hs) → (B, T, C)
        return self.dropout(self.c_proj(out))


class CausalSelfAttention(nn.Module):
    """与 MultiHeadAttention 数学上完全相同，但把所有头"批量"算：这是 nanoGPT / GPT-2 的写法。

    - 一个 c_attn 线性层一次算出所有头的 q、k、v（等价于把各头的 query/key/value 权重按行拼起来），
      再 view 成 (B, nh, T, hs)，头维度当作 batch 维，一次矩阵乘法算完所有头：少了 n_head 次小 kernel 调用。
    - 快路径用 F.scaled_dot_product_attention(is_causal=True)（PyTorch 的融合实现，GPU 上是 FlashAttention），
      慢路径就是上面 Head 的写法。两条路径并排放着，main() 和测试检查它们一致。
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.register_buffer("tril", torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool)))
        self.use_sdpa = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 各 (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )  # (B, nh, T, hs)
        else:
            att = q @ k.transpose(-2, -1) * hs**-0.5  # (B, nh, T, T)
            att = att.masked_fill(~self.tril[:T, :T], float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v  # (B, nh, T, T) @ (B, nh, T, hs) → (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # 各头拼回通道维：(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def load_heads_into_batched(mha: MultiHeadAttention, attn: CausalSelfAttention) -> None:
    """把 MultiHeadAttention 的各头权重拼进 CausalSelfAttention，用来验证两种写法等价。

    c_attn 的输出按 [q 的所有头 | k 的所有头 | v 的所有头] 排列，每段内按头的顺序排，
    所以 q 部分的权重就是各头 query 权重按行（输出维）拼接。
    """
    with torch.no_grad():
        for part, name in enumerate(("query", "key", "value")):
            weight = torch.cat([getattr(h, name).weight for h in mha.heads], dim=0)  # (C, C)
            attn.c_attn.weight[part * attn.n_embd : (part + 1) * attn.n_embd] = weight
            if attn.c_attn.bias is not None:
                bias = torch.cat([getattr(h, name).bias for h in mha.heads])
                attn.c_attn.bias[part * attn.n_embd : (part + 1) * attn.n_embd] = bias
        attn.c_proj.load_state_dict(mha.c_proj.state_dict())


# =============================================================================
# 5. 前馈网络
# =============================================================================
class FeedForward(nn.Module):
    """逐位置的两层 MLP：C → 4C → C。

    注意力让 token 之间"交流"（收集信息），FFN 让每个 token 独立地"思考"收集到的信息；
    它对每个位置分别作用，不跨位置混合。隐藏层放大 4 倍沿用 "Attention Is All You Need" / GPT-2。
    讲座里用 ReLU；这里和 GPT-2 / nanoGPT 一样用 GELU：它是平滑的，负半轴也有非零梯度，不会有"死神经元"。
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C) → (B, T, 4C) → (B, T, C)


# =============================================================================
# 6. 残差 + LayerNorm 的 Block，dropout，完整的 GPT
# =============================================================================
class Block(nn.Module):
    """Transformer block：交流（注意力）之后思考（FFN），两处都是 x = x + f(LN(x))。

    为什么要残差：y = x + f(x) 的梯度是 I + f'(x)，恒等项让梯度从 loss 直达最早的层（"梯度高速公路"）；
    刚初始化时 f 的输出很小，整个网络近似恒等映射，深层网络也能从一开始就稳定训练，之后各分支再慢慢"发力"。
    为什么要 LayerNorm：对每个 token 的 C 个特征做归一化（减均值、除标准差，再乘可学的 gain），
    让每层输入的尺度稳定，不随深度和训练漂移。
    为什么是 pre-LN（LN 放在分支里、f 之前）而不是原论文的 post-LN（LN(x + f(x))）：
    pre-LN 让残差主干上没有任何变换，梯度高速公路是畅通的，对学习率和 warmup 不那么敏感；GPT-2 起都用它。
    代价是残差流本身不再被归一化，所以最后输出前要再加一个 ln_f。
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


class GPT(nn.Module):
    """token 嵌入 + 位置嵌入 → 主体（随 stage 变化）→ lm_head 输出下一个字符的 logits。

    主体：single_head = 一个 n_embd 维的头；multi_head = 多头注意力；ffn = 多头注意力 + FFN；
    blocks = n_layer 个 Block + ln_f（完整 GPT，与 nanoGPT 同构）。

    为什么要位置嵌入：注意力只是对集合做加权平均，本身不知道顺序——把序列打乱，每个位置的输出只是跟着换位置。
    所以每个位置加上一个可学习的位置向量 wpe[t]，"我在第几个"才成为输入的一部分。

    dropout（Srivastava 2014）：训练时随机把一部分激活置 0（其余放大 1/(1-p) 保持期望不变），
    相当于每一步训练一个随机子网络、推理时用它们的"集成"，用来抑制过拟合。它放在嵌入之后、
    注意力权重上、以及每个残差分支写回主干之前。model.eval() 时自动关闭。
    小模型、数据相对够多时过拟合不严重，nanoGPT 的这个配方用 dropout=0；模型变大后可试 --dropout 0.2。
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.stage == "bigram":
            raise ValueError("stage='bigram' 请用 BigramLanguageModel（或 build_model）")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        if config.stage == "single_head":
            self.body = Head(config.n_embd, config.n_embd, config.block_size, config.dropout, config.bias)
        elif config.stage == "multi_head":
            self.body = MultiHeadAttention(config)
        elif config.stage == "ffn":
            self.body = nn.Sequential(MultiHeadAttention(config), FeedForward(config))
        else:
            self.body = nn.Sequential(*[Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias) if config.stage == "blocks" else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying（Press & Wolf 2017，GPT-2 也这么做）：wte 把 id 映射成向量，lm_head 把向量打分成 id，
        # 两者共用一个 (V, C) 矩阵——意思相近的字符在输入和输出两端都相近，参数也少 V*C 个。
        self.wte.weight = self.lm_head.weight

        # GPT-2 的初始化：所有 Linear / Embedding 权重 N(0, 0.02)，偏置为 0。
        self.apply(self._init_weights)
        # 残差投影的缩放初始化：每个 Block 往残差流里加两次（attn 与 mlp 的 c_proj），n_layer 层共 2L 次。
        # 独立随机项相加，方差按 2L 累积；把这些层的 std 缩小 sqrt(2L) 倍，残差流的方差就不随深度增长。
        if config.stage == "blocks":
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """参数量（共享的 wte/lm_head 只算一次；与 nanoGPT 一样不计位置嵌入）。"""
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"序列长度 {T} 超过 block_size={self.config.block_size}；生成时先截到最后 block_size 个 token")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C) + (T, C) → (B, T, C)
        x = self.ln_f(self.body(x))  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None if targets is None else lm_loss(logits, targets)
        return logits, loss


def build_model(config: GPTConfig) -> nn.Module:
    return BigramLanguageModel(config) if config.stage == "bigram" else GPT(config)


# =============================================================================
# 训练：AdamW + warmup/cosine + 梯度裁剪（与 nanoGPT 的 train.py 相同）
# =============================================================================
def configure_optimizer(model: nn.Module, weight_decay: float, lr: float, betas: tuple[float, float]):
    """AdamW，只对 2 维及以上的参数（矩阵乘的权重、嵌入表）做 weight decay。

    weight decay 把权重往 0 拉，是对"用大权重死记硬背"的惩罚；偏置和 LayerNorm 的 gain 是 1 维的缩放/平移，
    把它们往 0 拉没有正则化的意义（LayerNorm 的 gain 拉到 0 反而会关掉整层），所以不衰减。
    """
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() 对共享权重只给一次
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def get_lr(it: int, lr: float, min_lr: float, warmup_iters: int, max_iters: int) -> float:
    """线性 warmup，再按余弦从 lr 降到 min_lr。

    warmup：刚开始 Adam 的二阶矩估计还不准、梯度方向也乱，直接用大学习率容易一步跳飞；
    cosine：后期小步长，在最低点附近"精修"。公式：lr_t = min_lr + 0.5 * (1 + cos(pi * r)) * (lr - min_lr)，
    r = (t - warmup) / (max_iters - warmup) ∈ [0, 1]。
    """
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    ratio = min((it - warmup_iters) / max(max_iters - warmup_iters, 1), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


@torch.no_grad()
def estimate_loss(model: nn.Module, splits: dict[str, torch.Tensor], args, device) -> dict[str, float]:
    """在 eval_iters 个随机 batch 上求平均 loss。单个 batch 的 loss 噪声很大，平均后才看得出趋势。

    model.eval() 关掉 dropout，评估的是"推理时"的模型；评完切回 train()。
    """
    model.eval()
    out = {}
    for name, data in splits.items():
        losses = torch.zeros(args.eval_iters)
        for k in range(args.eval_iters):
            x, y = get_batch(data, args.block_size, args.batch_size, device)
            losses[k] = model(x, y)[1].item()
        out[name] = losses.mean().item()
    model.train()
    return out


MIN_EVAL_INTERVALS = 10  # 没指定 --eval_interval 时把训练分成这么多段：曲线上至少 11 个点


def eval_steps(max_iters: int, eval_interval: int | None) -> list[int]:
    """在哪些步评估（步 = 已完成的优化器更新次数）：0、interval 的倍数、以及最后一步 max_iters。

    最后一步总要评估：否则 max_iters 不是 interval 的倍数时，最后那段训练的效果不在曲线上、final 也不是终点的 loss。
    eval_interval=None 时取 max(1, ⌊max_iters / 10⌋)：至少 11 个点（--max_iters 500 是 0, 50, …, 500），
    而不是只有起点和终点两个点的"曲线"。
    """
    if eval_interval is None:
        eval_interval = max(1, max_iters // MIN_EVAL_INTERVALS)
    return sorted({*range(0, max_iters, eval_interval), max_iters})


def train(model: nn.Module, splits: dict[str, torch.Tensor], args, device) -> dict:
    """训练循环；返回损失历史与计时（训练步的 ms/iter 不含评估时间）。"""
    optimizer = configure_optimizer(model, args.weight_decay, args.lr, (args.beta1, args.beta2))
    history = {"step": [], "step_loss": [], "eval_step": [], "train": [], "val": []}
    eval_ms = 0.0

    def evaluate(step: int) -> None:
        nonlocal eval_ms
        with time_block("eval", verbose=False) as t:
            losses = estimate_loss(model, splits, args, device)
        eval_ms += t.ms
        history["eval_step"].append(step)
        history["train"].append(losses["train"])
        history["val"].append(losses["val"])
        tqdm.write(f"step {step:5d}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")

    to_eval = set(eval_steps(args.max_iters, args.eval_interval))
    model.train()
    with time_block("训练", verbose=False) as total:
        bar = tqdm(range(args.max_iters), desc=f"train[{args.stage}]", dynamic_ncols=True)
        for it in bar:
            if it in to_eval:
                evaluate(it)
            lr = get_lr(it, args.lr, args.min_lr, args.warmup_iters, args.max_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(splits["train"], args.block_size, args.batch_size, device)
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # 梯度裁剪：整体梯度范数超过 grad_clip 就等比例缩小，防止偶发的大梯度一步毁掉训练
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            history["step"].append(it)
            history["step_loss"].append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        evaluate(args.max_iters)
    history["train_ms"] = total.ms - eval_ms
    history["eval_ms"] = eval_ms
    return history


def loss_figure(history: dict, title: str):
    """损失曲线的 Figure。横轴是已完成的优化器更新次数：第 it 步的 batch 损失在第 it 次更新之前算，
    评估点 0 是训练前的模型（≈ ln V），最后一个评估点是 max_iters 次更新之后。"""
    # 图上的文字用英文：默认字体 DejaVu Sans 没有中文字形
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["step"], history["step_loss"], color="0.75", lw=0.8, label="train (per-step batch)")
    ax.plot(history["eval_step"], history["train"], "o-", label="train (estimate)")
    ax.plot(history["eval_step"], history["val"], "s-", label="val (estimate)")
    ax.set_xlabel("iteration (optimizer updates done)")
    ax.set_ylabel("cross-entropy loss (nats / char)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def plot_losses(history: dict, title: str) -> Path:
    """画损失曲线并原子地存到 checkpoints/lets_build_gpt/loss.png，返回路径。"""
    return save_figure(loss_figure(history, title), output_path("lets_build_gpt", "loss.png"), dpi=120)


# =============================================================================
# 命令行
# =============================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Let's build GPT：字符级 GPT，从 bigram 一步步搭到完整的 Transformer")
    p.add_argument("--stage", choices=STAGES, default="blocks", help="训练讲座中的哪一步：bigram 基线 → single_head 单头注意力 → multi_head 多头 → ffn 加前馈层"
                        " → blocks 残差 + LayerNorm 的完整 GPT；默认 %(default)s")
    p.add_argument("--corpus", choices=sorted(CORPORA), default=DEFAULT_CORPUS,
                   help="语料注册表（data_pipeline/corpora.py）里的语料：shakespeare 离线构建；tinyshakespeare 是 nanoGPT 用的那份，"
                        "第一次用时下载（离线时报错写明放到哪里）；默认 %(default)s")
    p.add_argument("--data", default=None, help="训练文本：任意 UTF-8 文本文件的路径（按字符建词表），给了就不用 --corpus")
    p.add_argument("--n_layer", type=int, default=4, help="Transformer block 的层数（只在 --stage blocks 时用到）；默认 %(default)s")
    p.add_argument("--n_head", type=int, default=4, help="注意力头数，须整除 --n_embd；默认 %(default)s")
    p.add_argument("--n_embd", type=int, default=32, help="嵌入维度（每个字符的向量长度）；默认 %(default)s")
    p.add_argument("--block_size", type=int, default=8, help="上下文长度：最多看前面多少个字符；默认 %(default)s")
    p.add_argument("--batch_size", type=int, default=32, help="每步多少条长 block_size 的序列；默认 %(default)s")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout 概率，0 表示关闭；默认 %(default)s")
    p.add_argument("--max_iters", type=int, default=5000, help="训练步数（优化器更新次数）；默认 %(default)s，SMOKE=1 时最多 10")
    # 默认学习率按 stage 取（实测，5000 步）：没有残差 + LayerNorm 的浅模型（bigram … ffn）用讲座里 bigram 的 1e-2；
    # 用 1e-3 时它们 5000 步还远没收敛，val loss 2.6–2.8，连 bigram 计数的 2.49 都不如（bigram 的 logits 就是嵌入表，
    # Adam 每步每个 logit 只挪约 lr）。Block 堆叠的完整 GPT 用 nanoGPT CPU 配方的 1e-3（讲座里模型变大后也把学习率调小了）。
    p.add_argument("--lr", type=float, default=None, help="AdamW 的峰值学习率（warmup 结束时达到）；默认 blocks 1e-3、其余 stage 1e-2")
    p.add_argument("--min_lr", type=float, default=None, help="cosine 衰减的终点学习率，须满足 0 < min_lr ≤ lr；默认 lr/10")
    p.add_argument("--warmup_iters", type=int, default=100, help="学习率线性 warmup 的步数；默认 %(default)s")
    p.add_argument("--beta1", type=float, default=0.9, help="AdamW 一阶矩（动量）的衰减率，[0, 1)；默认 %(default)s")
    # 0.99 而不是 Adam 默认的 0.999：每步只有几百个 token，二阶矩用更短的记忆更跟得上（nanoGPT 的注释）
    p.add_argument("--beta2", type=float, default=0.99, help="AdamW 二阶矩的衰减率，[0, 1)；默认 %(default)s")
    p.add_argument("--weight_decay", type=float, default=0.1,
                   help="AdamW 的 weight decay，只作用于 2 维及以上的权重（矩阵、嵌入表）；默认 %(default)s")
    p.add_argument("--grad_clip", type=float, default=1.0, help="全局梯度范数的上限，超过就等比例缩小；0 表示不裁剪；默认 %(default)s")
    p.add_argument("--eval_interval", type=int, default=None,
                   help="每隔多少步评估一次 train / val loss（最后一步总会评估）；默认 max_iters/10，曲线上至少 11 个点")
    p.add_argument("--eval_iters", type=int, default=200,
                   help="每次评估在多少个随机 batch 上求平均 loss（nanoGPT 的 CPU 配方用 20）；默认 %(default)s")
    p.add_argument("--seed", type=int, default=1337, help="随机种子（初始化、取 batch、采样）；默认 %(default)s")
    p.add_argument("--device", default="auto", help="训练设备：auto（CUDA → MPS → CPU）、cpu、cuda、cuda:N、mps；指定的设备不可用时报错；默认 %(default)s")
    p.add_argument("--sample_tokens", type=int, default=500, help="训练后采样生成多少个字符；默认 %(default)s，SMOKE=1 时最多 50")
    return p


def check_args(args) -> None:
    """命令行参数的合法性检查；模型尺寸的检查在 GPTConfig 里。"""
    for name in ("batch_size", "max_iters", "eval_interval", "eval_iters"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name}={getattr(args, name)} 必须 ≥ 1")
    for name in ("warmup_iters", "weight_decay", "grad_clip", "sample_tokens"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name}={getattr(args, name)} 不能是负数")
    if not 0 < args.min_lr <= args.lr:
        raise ValueError(f"需要 0 < --min_lr ≤ --lr，收到 min_lr={args.min_lr}, lr={args.lr}")
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ValueError(f"--{name}={getattr(args, name)} 必须在 [0, 1) 之间")


def resolve_device(name: str) -> torch.device:
    """--device 的解析：auto 按 CUDA → MPS → CPU 自动选；显式指定的设备不可用就报错，绝不悄悄退回 CPU。"""
    if name == "auto":
        return get_device(verbose=True)
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} 不是合法的设备名；可用 auto / cpu / cuda / cuda:0 / mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name} 不可用：torch.cuda.is_available() 为 False（这台机器没有 NVIDIA GPU，"
                f"或装的是 CPU 版 torch）；改用 --device cpu 或 --device auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name} 不存在：只有 {torch.cuda.device_count()} 块 GPU")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"--device {name} 不可用：这台机器没有 Apple MPS；改用 --device cpu 或 --device auto")
    elif device.type != "cpu":
        raise ValueError(f"--device {name!r} 不支持；可用 auto / cpu / cuda / cuda:N / mps")
    print(f"[device] {device}（由 --device 指定）")
    return device


def check_attention_equivalence(config: GPTConfig) -> float:
    """检查：多头的"循环写法"（MultiHeadAttention）= 批量写法的慢路径 = PyTorch 的 SDPA 快路径。返回最大误差。"""
    cfg = replace(config, dropout=0.0, stage="blocks")
    mha, attn = MultiHeadAttention(cfg), CausalSelfAttention(cfg)
    load_heads_into_batched(mha, attn)
    x = torch.randn(2, cfg.block_size, cfg.n_embd)
    with torch.no_grad():
        ref = mha(x)
        attn.use_sdpa = False
        manual = attn(x)
        attn.use_sdpa = True
        fused = attn(x)
    torch.testing.assert_close(manual, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)
    return max((manual - ref).abs().max().item(), (fused - ref).abs().max().item())


def report_against_baselines(val_loss: float, baselines: dict[str, float], stage: str) -> list[str]:
    """把最终的 val loss 放到基线与参考值中间，说清楚"这个数好不好"。"""
    lines = [
        f"val loss {val_loss:.4f} | 基线（这份数据现算）：均匀 {baselines['uniform']:.2f} · unigram {baselines['unigram']:.2f}"
        f" · bigram {baselines['bigram']:.2f} | 参考：stage={stage} 默认配置 {REFERENCE_VAL_LOSS[stage]:.2f}，"
        f"nanoGPT CPU 配方 {NANOGPT_RECIPE_VAL_LOSS:.2f}（tiny-shakespeare）"
    ]
    margin = baselines["bigram"] - val_loss
    if margin > 0.05:
        lines.append(f"✓ 比 bigram 基线低 {margin:.2f}：模型用上了比\"前一个字符\"更多的上下文")
    elif stage == "bigram" and margin > -0.05:
        lines.append("✓ bigram 模型到达了 bigram 计数的最优值：只看前一个字符，最多也就这么好")
    elif val_loss < baselines["unigram"]:
        lines.append(f"… 还没明显超过 bigram 基线（差 {-margin:+.2f}）：多训练一些步（--max_iters）或检查学习率")
    else:
        lines.append("✗ 还不如只按字符频率猜（unigram）：训练太短，或者学习率 / 模型有问题")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = lesson_args(__doc__, parser, argv)
    if args.lr is None:
        args.lr = 1e-3 if args.stage == "blocks" else 1e-2
    if args.min_lr is None:
        args.min_lr = args.lr / 10
    if is_smoke():
        args.max_iters, args.eval_interval, args.eval_iters = min(args.max_iters, 10), 5, 2
        args.sample_tokens = min(args.sample_tokens, 50)
    # 所有"用户输入错了"的情况在这里变成一条清楚的命令行错误（退出码 2），不给一长串 torch 调用栈
    try:
        check_args(args)
        device = resolve_device(args.device)
        text = load_text(args.data, args.corpus)
        tokenizer = CharTokenizer(text)
        config = GPTConfig(
            vocab_size=tokenizer.vocab_size,
            block_size=args.block_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            dropout=args.dropout,
            stage=args.stage,
        )
        data = tokenizer.encode(text)
        train_data, val_data = split_train_val(data, args.block_size)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))

    print(f"数据：{len(text):,} 个字符，词表 {tokenizer.vocab_size} 个字符；train {len(train_data):,} / val {len(val_data):,}")
    baselines = char_baselines(train_data, val_data, tokenizer.vocab_size)
    print(f"初始 loss 的理论值 ln(V) = {baselines['uniform']:.4f}；不用神经网络的基线（val）：unigram {baselines['unigram']:.4f}，"
          f"bigram {baselines['bigram']:.4f}——模型要低于 bigram 才算学到了上下文")
    wei = attention_trick_demo()
    print(f"数学小技巧：三种写法一致 ✓（softmax 后的下三角权重，第 3 行 = {[round(w, 3) for w in wei[2].tolist()]}）")
    if config.stage != "bigram":
        print(f"多头循环写法 / 批量慢路径 / SDPA 快路径 最大差 {check_attention_equivalence(config):.2e} ✓")

    setup_seed(args.seed)
    model = build_model(config).to(device)
    n_params = model.num_params() if isinstance(model, GPT) else sum(p.numel() for p in model.parameters())
    print(f"模型 stage={config.stage}：{n_params / 1e6:.2f}M 参数 | {config}")

    history = train(model, {"train": train_data, "val": val_data}, args, device)
    ms_per_iter = history["train_ms"] / args.max_iters
    print(f"timing: train_s={history['train_ms'] / 1000:.2f} eval_s={history['eval_ms'] / 1000:.2f} ms_per_iter={ms_per_iter:.2f}")

    model.eval()
    context = torch.zeros((1, 1), dtype=torch.long, device=device)
    sample = tokenizer.decode(generate(model, context, args.sample_tokens)[0].tolist())
    print(f"--- 采样 {args.sample_tokens} 个字符 ---\n{sample}\n---")
    path = plot_losses(history, f"Let's build GPT · stage={config.stage}")
    print(f"损失曲线：{path}")
    result = {"train_loss": history["train"][-1], "val_loss": history["val"][-1], "ms_per_iter": ms_per_iter,
              "baselines": baselines}
    print("\n".join(report_against_baselines(result["val_loss"], baselines, config.stage)))
    print(f"final: train_loss={result['train_loss']:.4f} val_loss={result['val_loss']:.4f}")
    return result


if __name__ == "__main__":
    main()
