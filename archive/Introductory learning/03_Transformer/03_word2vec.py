"""Word2Vec：skip-gram + 负采样（SGNS）从零实现，梯度手推（与 autograd 对照），在莎士比亚语料上训练。

想法（分布假说）：出现在相似上下文里的词意思相近。skip-gram 让每个"中心词" c 去预测窗口里的"上下文词" o：
每个词有两套向量——作为中心词时的 v_w（输入嵌入 V），作为上下文词时的 u_w（输出嵌入 U）。

完整 softmax 的代价：p(o | c) = exp(u_o·v_c) / Σ_{w∈词表} exp(u_w·v_c)，分母对整个词表求和，每个样本 O(|V|)。
负采样（Mikolov et al. 2013）把"在 |V| 个词里选对 o"换成 K+1 个二分类："(c, o) 是真实搭配吗？"
正样本是真实的 (c, o)，负样本是从噪声分布 P_n 里抽的 K 个词 n_1..n_K：

    L = −log σ(u_o·v_c) − Σ_k log σ(−u_{n_k}·v_c)

手推梯度（用到 dσ(x)/dx = σ(x)(1−σ(x))，所以 d/dx[−log σ(x)] = σ(x) − 1，d/dx[−log σ(−x)] = σ(x)）：

    ∂L/∂v_c     = (σ(u_o·v_c) − 1) u_o + Σ_k σ(u_{n_k}·v_c) u_{n_k}
    ∂L/∂u_o     = (σ(u_o·v_c) − 1) v_c
    ∂L/∂u_{n_k} = σ(u_{n_k}·v_c) v_c

直观理解：正样本的分数 u_o·v_c 被往上推（σ−1 < 0，沿梯度反方向走就是加大点积），负样本的分数被往下压。
每一步只更新 K+2 个向量，代价 O(K·D)，与词表大小无关。

噪声分布 P_n(w) ∝ count(w)^0.75：0.75 次方把分布"压扁"——高频词（the、and）被抽到的概率比按频率低，
低频词比按频率高，实验上比 unigram（指数 1）和均匀分布（指数 0）都好。
高频词下采样：词 w 以概率 min(1, sqrt(t / f(w))) 保留（f 是词频），"the" 这类词大量出现却几乎不带信息，
丢掉一部分既加速训练，又让窗口覆盖更多有意义的词。

学习率：原版 word2vec.c 每处理 10,000 个词更新一次 alpha = starting_alpha · (1 − 已处理词数 / (iter · 总词数 + 1))，
并且不低于 starting_alpha · 1e-4——线性衰减到几乎为 0。这里按 batch 计步，公式相同。

多少算好：U 初始化为 0 时所有分数为 0，每个样本的损失正好是 (K+1)·ln 2（K=5 时 4.16）——这是"什么都没学"的基线；
默认配置（D=100、5 个 epoch，2 核 CPU 上约 40 s 计算）各 epoch 平均损失 3.10 → 2.66 → 2.65 → 2.65 → 2.65。
损失只说明二分类在变容易，词向量好不好还得看最近邻：实测 king → edward / henry / richard（历史剧里的国王名），
thou → art / hast / dost（与 thou 搭配的动词变位），这才算学到了；SMOKE=1 的小语料上近邻基本是噪声。

    python "archive/Introductory learning/03_Transformer/03_word2vec.py"

图：checkpoints/figures/word2vec_pca.png（部分词向量 PCA 投影到二维；标签自动错开，不互相压住）。
"""

from __future__ import annotations

import collections
import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.nn import functional as F

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed, time_block

SMOKE = is_smoke()
VOCAB_SIZE = 500 if SMOKE else 5000  # 只保留最常见的这么多个词，其余丢弃
DIM = 16 if SMOKE else 100
WINDOW = 5  # 最大窗口半径；每个中心词实际用 1..WINDOW 之间的随机半径（近的词被用到的次数更多）
NEGATIVES = 5  # K
EPOCHS = 1 if SMOKE else 5
BATCH = 1024
LR = 0.025 if SMOKE else 0.01  # 初始学习率，线性衰减到 LR·1e-4（原版 word2vec.c 的下限 starting_alpha * 0.0001）
MIN_LR_FRACTION = 1e-4
REFERENCE_FINAL_LOSS = 2.65  # 默认配置（非 SMOKE）最后一个 epoch 的平均损失，实测
SUBSAMPLE_T = 1e-4
MAX_CHARS = 200_000 if SMOKE else None
QUERIES = ("king", "queen", "love", "night", "sword", "father", "thou", "death")
TOKEN_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")


# =============================================================================
# 1. 数据：分词、词表、噪声分布、下采样、(中心, 上下文) 对
# =============================================================================
def tokenize(text: str) -> list[str]:
    """小写后取字母串（保留 thou'rt 这样的撇号缩写）。莎士比亚的说话人名字全大写，也会被小写进来。"""
    return TOKEN_RE.findall(text.lower())


def build_vocab(tokens: list[str], size: int) -> tuple[list[str], np.ndarray]:
    """返回 (按频率降序的前 size 个词, 它们的计数)。"""
    if size < 2:
        raise ValueError(f"vocab size={size} 太小，至少要 2 个词")
    most = collections.Counter(tokens).most_common(size)
    return [w for w, _ in most], np.array([c for _, c in most], dtype=np.float64)


def noise_distribution(counts, power: float = 0.75) -> torch.Tensor:
    """P_n(w) = count(w)^power / Σ count^power。"""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("counts 必须非负且不全为 0")
    weights = counts.pow(power)
    return (weights / weights.sum()).float()


def subsample(ids: np.ndarray, counts: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """以概率 min(1, sqrt(t / f(w))) 保留每个词（f = 频率）。"""
    freq = counts / counts.sum()
    keep_prob = np.minimum(1.0, np.sqrt(t / freq))
    return ids[rng.random(ids.size) < keep_prob[ids]]


def skipgram_pairs(ids: np.ndarray, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """所有 (中心, 上下文) 对：位置 i 的随机半径 r_i ~ U{1..window}，取 |j − i| ≤ r_i 的 j ≠ i。

    向量化：对每个偏移 d = ±1..±window 一次性取出所有满足 |d| ≤ r_i 的 i。
    """
    radius = rng.integers(1, window + 1, size=ids.size)
    centers, contexts = [], []
    for d in range(1, window + 1):
        for sign in (1, -1):
            i = np.arange(max(0, -sign * d), ids.size - max(0, sign * d))  # 让 i + sign·d 不越界
            i = i[radius[i] >= d]
            centers.append(ids[i])
            contexts.append(ids[i + sign * d])
    return np.concatenate(centers), np.concatenate(contexts)


# =============================================================================
# 2. 损失与手推梯度
# =============================================================================
def sgns_loss_and_grads(v_c: torch.Tensor, u_o: torch.Tensor, u_neg: torch.Tensor):
    """v_c (B, D), u_o (B, D), u_neg (B, K, D) -> (loss, ∂v_c, ∂u_o, ∂u_neg)，loss 是 batch 平均。

    log σ(x) 用 F.logsigmoid 计算：x 很负时 σ(x) 下溢为 0、log 得 −inf，logsigmoid 则数值稳定。
    梯度都是对"batch 平均损失"求的，所以每项都除以 B。
    """
    if v_c.dim() != 2 or u_o.shape != v_c.shape or u_neg.dim() != 3 or u_neg.shape[::2] != v_c.shape:
        raise ValueError(f"形状应为 v_c (B, D), u_o (B, D), u_neg (B, K, D)；收到 {tuple(v_c.shape)}, "
                         f"{tuple(u_o.shape)}, {tuple(u_neg.shape)}")
    B = v_c.size(0)
    pos = (u_o * v_c).sum(-1)  # (B,)      u_o·v_c
    neg = torch.einsum("bkd,bd->bk", u_neg, v_c)  # (B, K)  u_{n_k}·v_c
    loss = -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()
    # σ(x) − 1 = −σ(−x)：后者在 σ(x) ≈ 1 时不会因两数相减丢掉有效数字
    g_pos = -torch.sigmoid(-pos) / B  # (B,)     d loss / d(u_o·v_c) = σ(u_o·v_c) − 1
    g_neg = torch.sigmoid(neg) / B  # (B, K)   d loss / d(u_{n_k}·v_c)
    grad_v = g_pos[:, None] * u_o + torch.einsum("bk,bkd->bd", g_neg, u_neg)  # (B, D)
    grad_u_o = g_pos[:, None] * v_c  # (B, D)
    grad_u_neg = g_neg[..., None] * v_c[:, None, :]  # (B, K, D)
    return loss, grad_v, grad_u_o, grad_u_neg


class SkipGramNS:
    """两张嵌入表 V（中心词）与 U（上下文词），纯手写的稀疏 SGD 更新（不用 autograd、不用优化器）。"""

    def __init__(self, vocab_size: int, dim: int, generator: torch.Generator | None = None):
        # 原版的初始化：V ~ U(−0.5/D, 0.5/D)，U = 0。U 全零时第一步所有分数为 0、σ = 0.5，u 的梯度仍然非零
        self.V = (torch.rand(vocab_size, dim, generator=generator) - 0.5) / dim
        self.U = torch.zeros(vocab_size, dim)

    def step(self, centers: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor, lr: float) -> float:
        """一个 batch 的前向 + 手推梯度 + SGD。centers/contexts (B,), negatives (B, K)。"""
        v_c, u_o, u_neg = self.V[centers], self.U[contexts], self.U[negatives]
        loss, g_v, g_o, g_neg = sgns_loss_and_grads(v_c, u_o, u_neg)
        B = centers.numel()
        # index_add_：同一个词在 batch 里出现多次时梯度要累加（直接 V[idx] -= ... 会让重复下标互相覆盖）。
        # 乘 B 把"平均损失的梯度"还原成逐样本 SGD 的步长，学习率就与 batch 大小无关（与原版 word2vec 一致）
        self.V.index_add_(0, centers, g_v, alpha=-lr * B)
        self.U.index_add_(0, contexts, g_o, alpha=-lr * B)
        self.U.index_add_(0, negatives.reshape(-1), g_neg.reshape(-1, g_neg.size(-1)), alpha=-lr * B)
        return loss.item()


def learning_rate(lr: float, step: int, total_steps: int) -> float:
    """word2vec.c 的学习率：lr · (1 − 进度)，不低于 lr · 1e-4（MIN_LR_FRACTION）。"""
    return lr * max(1 - step / total_steps, MIN_LR_FRACTION)


def train_word2vec(ids: np.ndarray, counts: np.ndarray, dim: int, epochs: int, lr: float, seed: int = 0,
                   window: int = WINDOW, negatives: int = NEGATIVES, batch: int = BATCH,
                   subsample_t: float | None = SUBSAMPLE_T, verbose: bool = False):
    """返回 (model, 每个 epoch 的平均损失)。ids 是词表下标序列（词表外的词已去掉）。"""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SkipGramNS(len(counts), dim, gen)
    noise = noise_distribution(counts)
    epoch_pairs = [skipgram_pairs(subsample(ids, counts, subsample_t, rng) if subsample_t else ids, window, rng)
                   for _ in range(epochs)]
    total_steps = sum(-(-len(c) // batch) for c, _ in epoch_pairs)
    step, losses = 0, []
    for epoch, (centers, contexts) in enumerate(epoch_pairs):
        perm = rng.permutation(centers.size)
        centers_t, contexts_t = torch.from_numpy(centers[perm]), torch.from_numpy(contexts[perm])
        running = []
        for start in range(0, centers.size, batch):
            c = centers_t[start : start + batch]
            o = contexts_t[start : start + batch]
            neg = torch.multinomial(noise, c.numel() * negatives, replacement=True, generator=gen)
            running.append(model.step(c, o, neg.view(-1, negatives), learning_rate(lr, step, total_steps)))
            step += 1
        losses.append(float(np.mean(running)))
        if verbose:
            print(f"  epoch {epoch + 1}: {centers.size:,} 对，平均损失 {losses[-1]:.4f}")
    return model, losses


# =============================================================================
# 3. 用起来：最近邻与 PCA
# =============================================================================
def nearest_neighbours(emb: torch.Tensor, query: int, k: int = 5) -> list[tuple[int, float]]:
    """先减去全体词向量的均值，再取余弦相似度最高的 k 个词（不含自己）。

    为什么减均值：正样本按词频 f(w) 出现、负样本按 f(w)^0.75 抽取，两者之差对所有中心词都一样，
    于是所有 v 会共同朝一个"高频词方向"漂移——实测（默认配置）不减均值时两两余弦平均 0.999
    （5%–95% 分位 0.997–0.9995），减去均值后平均 0.003，
    真正区分词义的是去掉这个公共分量之后的部分（Mu & Viswanath 2018, "All-but-the-Top"）。
    用余弦而不是点积：去掉向量长度（主要反映词频）的影响。
    """
    centered = emb - emb.mean(0)
    unit = centered / centered.norm(dim=1, keepdim=True).clamp_min(1e-8)
    sims = unit @ unit[query]
    sims[query] = -float("inf")
    top = sims.topk(k)
    return list(zip(top.indices.tolist(), top.values.tolist()))


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, 2)：中心化后做 SVD，取前两个右奇异向量方向（方差最大的两个正交方向）上的投影。"""
    centered = x - x.mean(0)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    return centered @ vh[:2].T


# 候选位置：标签放在点的 8 个方向上、由近到远；对齐方式让文字朝远离点的方向展开
_LABEL_DIRECTIONS = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
_LABEL_RADII = (3, 10, 18, 28, 40)  # 单位：points（1/72 英寸），与坐标轴的缩放无关


def place_labels(ax, xy, labels, fontsize: float = 9) -> list:
    """在散点旁放文字标签，贪心地避开已放好的标签与其他点；返回每个标签在屏幕坐标里的包围盒。

    没有 adjustText 时的小办法：对每个点依次试 8 个方向 × 几个距离的位置，画出来量它的包围盒
    （get_window_extent 用的是真实字体度量），与已放好的标签、以及除自己以外的点都不相交就留下；
    都不行时留下重叠面积最小的那个。离点远的标签用一条细线连回点。调用前坐标轴范围与布局要先定好
    （之后再改，屏幕坐标就变了）。
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    points = ax.transData.transform(np.asarray(xy, dtype=float))  # (N, 2) 屏幕坐标（像素）
    pad = 1.5  # 像素：点本身的半径大致这么大
    placed = []
    for i, (label, (x, y)) in enumerate(zip(labels, np.asarray(xy, dtype=float))):
        others = np.delete(points, i, axis=0)
        best = None
        for r in _LABEL_RADII:
            for dx, dy in _LABEL_DIRECTIONS:
                norm = math.hypot(dx, dy)
                offset = (r * dx / norm, r * dy / norm)
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                text = ax.annotate(label, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va,
                                   fontsize=fontsize,
                                   arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5") if r > _LABEL_RADII[0] else None)
                box = text.get_window_extent(renderer)
                overlap = sum(_overlap_area(box, b) for b in placed)
                inside = ((others[:, 0] > box.x0 - pad) & (others[:, 0] < box.x1 + pad)
                          & (others[:, 1] > box.y0 - pad) & (others[:, 1] < box.y1 + pad)).sum()
                cost = overlap + 50.0 * inside  # 压住一个点按 50 平方像素的重叠算
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, text, box)
                else:
                    text.remove()
                if best[0] == 0:
                    break
            if best[0] == 0:
                break
        placed.append(best[2])
    return placed


def _overlap_area(a, b) -> float:
    """两个屏幕坐标包围盒（matplotlib Bbox）相交部分的面积，不相交为 0。"""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def main() -> None:
    from sklearn.decomposition import PCA

    from data_pipeline.corpora import load_corpus

    setup_seed()
    print("== 1. 手推梯度 vs autograd ==")
    v = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    u = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    un = torch.randn(8, 4, 6, dtype=torch.float64, requires_grad=True)
    loss, *hand = sgns_loss_and_grads(v, u, un)
    auto = torch.autograd.grad(loss, (v, u, un))
    err = max((a - b).abs().max().item() for a, b in zip(hand, auto))
    print(f"  ∂v_c, ∂u_o, ∂u_neg 与 autograd 的最大误差 {err:.1e}（float64）")
    assert err < 1e-12

    text = load_corpus("shakespeare")[:MAX_CHARS]
    tokens = tokenize(text)
    words, counts = build_vocab(tokens, VOCAB_SIZE)
    index = {w: i for i, w in enumerate(words)}
    ids = np.array([index[w] for w in tokens if w in index], dtype=np.int64)
    noise = noise_distribution(counts)
    print(f"\n== 2. 语料：{len(tokens):,} 个词，词表取前 {len(words)} 个（覆盖 {ids.size / len(tokens):.1%}）==")
    print(f"  噪声分布：'{words[0]}' 的频率 {counts[0] / counts.sum():.3f} → P_n {noise[0].item():.3f}；"
          f"'{words[-1]}' 的频率 {counts[-1] / counts.sum():.1e} → P_n {noise[-1].item():.1e}")

    print(f"\n== 3. 训练：D={DIM}，窗口 ≤{WINDOW}，K={NEGATIVES}，{EPOCHS} 个 epoch ==")
    print(f"  基线：U = 0 时每个样本的损失 = (K+1)·ln2 = {(NEGATIVES + 1) * math.log(2):.4f}（什么都没学）")
    with time_block("word2vec", verbose=False) as t:
        model, losses = train_word2vec(ids, counts, DIM, EPOCHS, LR, verbose=True)
    print(f"  用时 {t.seconds:.1f} s；平均损失 {(NEGATIVES + 1) * math.log(2):.2f} → {losses[-1]:.2f}"
          f"（默认配置的参考值：最后一个 epoch 约 {REFERENCE_FINAL_LOSS}）")
    emb = model.V

    print("\n== 4. 最近邻（余弦相似度）==")
    for q in QUERIES:
        if q in index:
            nn_ = nearest_neighbours(emb, index[q], 6)
            print(f"  {q:7s} → " + ", ".join(f"{words[i]} ({s:.2f})" for i, s in nn_))

    show = [w for w in ("king", "queen", "prince", "duke", "lord", "lady", "father", "mother", "son", "daughter",
                        "brother", "sister", "love", "hate", "night", "day", "sun", "moon", "sword", "blood",
                        "death", "life", "heaven", "hell", "god", "one", "two", "three", "four", "thou", "thee",
                        "you", "he", "she", "good", "bad", "sweet", "fair") if w in index]
    # 与最近邻相同的几何：先去掉公共均值、再归一化成单位向量，否则第一主成分只是"词频"
    centered = emb - emb.mean(0)
    unit = centered / centered.norm(dim=1, keepdim=True)
    chosen = unit[[index[w] for w in show]]
    points = pca_2d(chosen)
    ref = PCA(n_components=2).fit_transform(chosen.numpy())
    # PCA 的每个主方向只确定到正负号，比较前先对齐符号
    signs = np.sign((points.numpy() * ref).sum(0))
    pca_err = np.abs(points.numpy() * signs - ref).max()
    print(f"\n  PCA（SVD 实现）与 sklearn.decomposition.PCA 的最大差 {pca_err:.1e}")
    assert pca_err < 1e-4
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.scatter(points[:, 0], points[:, 1], s=10)
    ax.set_title(f"Word2Vec (SGNS) on Shakespeare: PCA of {len(show)} centred unit word vectors")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.margins(0.12)  # 给边缘的标签留地方
    fig.tight_layout()
    fig.canvas.draw()  # 先定下布局，place_labels 量的屏幕坐标才是最终的
    place_labels(ax, points.numpy(), show)
    path = save_figure(fig, "word2vec_pca.png", dpi=120)
    print(f"  图已保存：{path}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
