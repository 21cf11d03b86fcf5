"""MoE 混合专家 FFN：Mixtral 的 softmax top-k 路由、DeepSeek-V3 的 sigmoid + 偏置校正 + 分组路由与共享专家、
Switch 负载均衡损失、无辅助损失的偏置更新、容量与丢 token。

运行：python model_lab/01_components/moe.py   或   python -m model_lab.01_components.moe

一、为什么要 MoE
    稠密 FFN 里每个 token 都要乘完整的权重。MoE 把 FFN 换成 E 个小 FFN（专家），每个 token 只走其中 k 个：
    参数量约是 E 倍，每 token 的计算量只有 k 倍（k ≪ E）。Mixtral-8x7B：E=8、k=2；DeepSeek-V3：E=256、k=8，
    外加 1 个所有 token 都走的共享专家。每个专家都是一个 SwiGLU：FFN_e(x) = W_down,e (silu(W_gate,e x) ⊙ W_up,e x)。
二、路由公式（N 个 token，s = x W_gᵀ 是 (N, E) 的路由 logits）
    Mixtral：      p = softmax(s)，取 p 最大的 k 个，g_i = p_i / Σ_{j∈topk} p_j = e^{s_i} / Σ_{j∈topk} e^{s_j}
                   （所以"先 softmax 再取 top-k 再归一化"与"先取 top-k 的 logits 再 softmax"是同一个东西）
    DeepSeek-V3：  σ = sigmoid(s)；用 σ + b 挑专家（b = e_score_correction_bias），但权重用 σ 本身：
                   g_i = γ · σ_i / Σ_{j∈topk} σ_j（γ = routed_scaling_factor）
    输出           y = Σ_{i∈topk} g_i · FFN_i(x)  +  FFN_shared(x)
    为什么 sigmoid：softmax 让专家互相"抢"同一份概率，E=256 时每个 p 都很小；sigmoid 给每个专家独立的亲和度，
    归一化只在选出来的 k 个里做，γ 再把权重放大回合适的量级。
    为什么偏置只用于"挑"：b 是负载均衡的控制器，不是模型参数——它不进入输出、不吃梯度，
    所以均衡不会像辅助损失那样和语言模型的 loss 抢梯度（见第五节）。
    分组限制：专家分成 n_group 组（V3 中一组就是一台机器），组分数 = 组内最高两个分数之和，每个 token 只在
    topk_group 个组里挑专家，于是一个 token 最多发往 topk_group 台机器，跨机 all-to-all 的流量有上界。
三、按专家排序分发（而不是"每个专家算全部 token"）
    稠密写法让 E 个专家都算全部 N 个 token、再乘 0/1 掩码，算力是 N·E 份；真正需要的只有 N·k 份。
    我们把 N·k 个 (token, 第 j 选择) 槽位按专家编号做一次稳定排序，每个专家拿到连续的一段，
    只对这一段做两次矩阵乘，再用 index_add 按 token 加回去。循环只有 E 次，总算力 N·k 份。
    GPU 上会把这 E 次小矩阵乘合成一个 grouped GEMM（torch._grouped_mm、MegaBlocks），道理相同。
四、Switch 负载均衡辅助损失
    L_aux = E · Σ_i f_i · P_i，f_i = 分给专家 i 的槽位数 / N，P_i = 专家 i 的平均路由概率。
    f 来自 argmax，没有梯度；梯度只流过 P，把概率从"接得多"的专家推向"接得少"的专家。
    完全均衡时 f_i = k/E、P_i = 1/E，L_aux = k。陷阱：Mixtral 的 k=1 时 g = p/p ≡ 1，路由器从输出拿不到任何梯度，
    只能靠辅助损失学习。
五、无辅助损失的均衡（DeepSeek-V3）：每步之后 b_i ← b_i + u · sign(mean(load) − load_i)
    接得多的专家偏置变小、接得少的变大；只看符号，步长与负载的大小无关。
六、容量与丢 token（Switch / GShard）
    为了让每个专家的缓冲区大小固定，容量 C = ⌈cf · N · k / E⌉。按 token 先后"先到先得"
    （GShard 还让所有 token 的第一选择优先于第二选择；这里用最简单的按位置），
    每个专家只收前 C 个槽位，其余丢弃：被丢的槽位贡献 0，所有槽位都被丢的 token 的 MoE 输出为 0，
    它只靠外面的残差连接 x + MoE(x) 原样通过。
七、权重布局（与 transformers 5.x 同名同形，可以直接 load_state_dict）
    gate.weight (E, H)；experts.gate_up_proj (E, 2I, H) = 每个专家的 [gate_proj; up_proj] 沿第 1 维拼接；
    experts.down_proj (E, H, I)；DeepSeek 另有 gate.e_score_correction_bias (E,) 与
    shared_experts.{gate,up,down}_proj.weight（中间维 = I · n_shared_experts）。
    旧版 / 原始 checkpoint 把专家存成列表：Mixtral 的 experts.{e}.w1 (gate)、w3 (up)、w2 (down)，DeepSeek 的
    experts.{e}.gate_proj / up_proj / down_proj。对应关系：gate_up_proj[e] = cat([w1, w3], 0)，down_proj[e] = w2。
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed


@dataclass
class MoEConfig:
    hidden_size: int = 64
    intermediate_size: int = 128  # 每个路由专家的 SwiGLU 中间维（DeepSeek 叫 moe_intermediate_size）
    num_experts: int = 8
    top_k: int = 2
    router: str = "softmax"  # "softmax"（Mixtral）或 "sigmoid"（DeepSeek-V3）
    norm_topk_prob: bool = True  # 在选中的 k 个里重新归一化
    routed_scaling_factor: float = 1.0
    n_group: int = 1  # 分组限制路由（只用于 sigmoid）
    topk_group: int = 1
    n_shared_experts: int = 0
    capacity_factor: float | None = None  # None：不限容量、不丢 token

    def __post_init__(self):
        e, g = self.num_experts, self.n_group
        if self.router not in ("softmax", "sigmoid"):
            raise ValueError(f"router={self.router!r} 不认识：请用 'softmax'（Mixtral）或 'sigmoid'（DeepSeek-V3）")
        if not 1 <= self.top_k <= e:
            raise ValueError(f"top_k={self.top_k} 必须在 1 到 num_experts={e} 之间：每个 token 最多只能选全部专家")
        if g < 1 or e % g != 0:
            raise ValueError(f"num_experts={e} 不能被 n_group={g} 整除：分组路由要求每组专家数相同，请换一个 n_group")
        if g > 1 and self.router != "sigmoid":
            raise ValueError(f"n_group={g} 的分组路由只为 router='sigmoid'（DeepSeek-V3）实现；softmax 路由请用 n_group=1")
        if not 1 <= self.topk_group <= g:
            raise ValueError(f"topk_group={self.topk_group} 必须在 1 到 n_group={g} 之间")
        if self.router == "sigmoid" and e // g < 2:
            raise ValueError(f"每组只有 num_experts/n_group={e // g} 个专家；组分数取组内最高两个之和，每组至少要 2 个")
        if self.top_k > self.topk_group * (e // g):
            raise ValueError(
                f"top_k={self.top_k} 超过了选中的组里的专家总数 topk_group*(num_experts/n_group)="
                f"{self.topk_group * (e // g)}：请增大 topk_group 或减小 top_k"
            )
        cf = self.capacity_factor
        if cf is not None and not (isinstance(cf, (int, float)) and math.isfinite(cf) and cf > 0):
            raise ValueError(f"capacity_factor={cf!r} 必须是正数（常用 1.0~2.0），或者 None 表示不丢 token")


# ---------------------------------------------------------------------------
# 1. 路由器：logits -> (权重, 专家编号)
# ---------------------------------------------------------------------------
class TopKRouter(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.randn(cfg.num_experts, cfg.hidden_size) * 0.02)
        if cfg.router == "sigmoid":  # 控制器的状态而非可学习参数：不吃梯度，所以是 buffer
            self.register_buffer("e_score_correction_bias", torch.zeros(cfg.num_experts))

    def forward(self, x: torch.Tensor):
        cfg = self.cfg
        # 路由在 fp32 里算：bf16 下两个接近的分数可能随舍入换位，选中的专家就变了
        logits = F.linear(x.float(), self.weight.float())  # (N, E)
        if cfg.router == "softmax":
            scores = choice = logits.softmax(dim=-1)
        else:
            scores = logits.sigmoid()
            choice = scores + self.e_score_correction_bias  # 偏置只影响"挑谁"
            if cfg.n_group > 1:
                choice = self._limit_groups(choice)
        idx = choice.topk(cfg.top_k, dim=-1).indices  # (N, k)
        weights = scores.gather(1, idx)  # (N, k) 权重取未加偏置的分数
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return logits, weights * cfg.routed_scaling_factor, idx

    def _limit_groups(self, choice: torch.Tensor) -> torch.Tensor:
        n, g = choice.shape[0], self.cfg.n_group
        grouped = choice.view(n, g, -1)  # (N, G, E/G)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (N, G) 组内最高两个之和：不被单个离群值左右
        keep = group_scores.topk(self.cfg.topk_group, dim=-1).indices  # (N, topk_group)
        mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        return grouped.masked_fill(~mask[..., None], float("-inf")).view(n, -1)  # 落选组的专家永远不会被选


# ---------------------------------------------------------------------------
# 2. 分发：把 N·k 个槽位按专家排序（可选容量截断）
# ---------------------------------------------------------------------------
def dispatch_by_expert(idx: torch.Tensor, num_experts: int, capacity: int | None = None):
    """返回 (slots, load, kept, slot_kept)。

    槽位 s = token·k + j 表示"token 的第 j 个选择"。slots：保留下来的槽位，按专家编号排好、同一专家内按 token 先后；
    load (E,)：每个专家被分到的槽位数；kept (E,)：容量截断后真正计算的槽位数；slot_kept (N, k)：哪些槽位保留了。
    """
    flat = idx.reshape(-1)  # (N·k,)
    order = flat.argsort(stable=True)  # stable：同一专家内保持 token 原来的先后，"先到先得"
    load = torch.bincount(flat, minlength=num_experts)  # (E,)
    if capacity is None:
        return order, load, load, torch.ones_like(idx, dtype=torch.bool)
    start = load.cumsum(0) - load  # (E,) 每个专家的段在排序后数组里的起点
    rank = torch.arange(flat.numel(), device=flat.device) - start.repeat_interleave(load)  # 在本专家队列里的名次
    keep = rank < capacity
    slot_kept = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, order[keep], True)
    return order[keep], load, load.clamp(max=capacity), slot_kept.view_as(idx)


# ---------------------------------------------------------------------------
# 3. 专家：E 个 SwiGLU，权重存成 3-D 张量（transformers 5.x 布局）
# ---------------------------------------------------------------------------
class Experts(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * i, h) * 0.02)  # [gate; up] 拼起来：一次矩阵乘算两个
        self.down_proj = nn.Parameter(torch.randn(e, h, i) * 0.02)

    def forward(self, x, token, weight, counts):
        """x (N, H)；token/weight (S,) 是排好序的槽位对应的 token 与路由权重；counts (E,) 每个专家的段长。"""
        xs = x[token]  # (S, H) 把 token 复制到各自专家的段里
        # 陷阱：循环里写 self.gate_up_proj[e]，反向时每次索引都要造一个 (E, 2I, H) 的全零梯度再累加，
        # 代价是 E² 份参数量；unbind 一次切成 E 片，反向只拼接一次。
        w_gate_up, w_down = self.gate_up_proj.unbind(0), self.down_proj.unbind(0)
        outs = []
        for e, xe in enumerate(xs.split(counts.tolist())):  # tolist 是一次同步：段长决定形状
            if xe.shape[0] == 0:
                continue
            gate, up = F.linear(xe, w_gate_up[e]).chunk(2, dim=-1)  # (n_e, I) ×2
            outs.append(F.linear(F.silu(gate) * up, w_down[e]))  # (n_e, H)
        ys = (torch.cat(outs) if outs else x[:0]) * weight[:, None].to(x.dtype)  # (S, H) 乘路由权重 g
        return torch.zeros_like(x).index_add_(0, token, ys)  # 同一 token 的 k 份输出在这里相加


class SwiGLU(nn.Module):
    """共享专家：一个普通的 SwiGLU FFN，所有 token 都走。"""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class RoutingInfo:
    router_logits: torch.Tensor  # (N, E)，喂给 load_balancing_loss
    topk_idx: torch.Tensor  # (N, k)
    topk_weights: torch.Tensor  # (N, k)
    load: torch.Tensor  # (E,) 每个专家被分到的槽位数（截断前）
    kept: torch.Tensor  # (E,) 截断后真正计算的槽位数
    slot_kept: torch.Tensor  # (N, k) bool
    capacity: int | None

    @property
    def dropped_tokens(self) -> int:
        """所有 k 个槽位都被丢掉的 token 数：它们的 MoE 输出为 0（只剩共享专家）。"""
        return int((~self.slot_kept.any(dim=-1)).sum())


# ---------------------------------------------------------------------------
# 4. 整个 MoE 层
# ---------------------------------------------------------------------------
class MoE(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = TopKRouter(cfg)
        self.experts = Experts(cfg)
        n_shared = cfg.n_shared_experts
        self.shared_experts = SwiGLU(cfg.hidden_size, cfg.intermediate_size * n_shared) if n_shared else None

    def capacity(self, num_tokens: int) -> int | None:
        cfg = self.cfg
        if cfg.capacity_factor is None:
            return None
        # 平均每个专家应接 N·k/E 个槽位；cf > 1 给不均衡留余量
        return max(1, math.ceil(cfg.capacity_factor * num_tokens * cfg.top_k / cfg.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingInfo]:
        cfg = self.cfg
        if x.shape[-1] != cfg.hidden_size:
            raise ValueError(
                f"输入最后一维是 {x.shape[-1]}，与 hidden_size={cfg.hidden_size} 不符；输入应为 (..., hidden_size)"
            )
        flat = x.reshape(-1, cfg.hidden_size)  # (N, H)：路由对每个 token 独立，批与序列的结构无关
        logits, weights, idx = self.gate(flat)
        cap = self.capacity(flat.shape[0])
        slots, load, kept, slot_kept = dispatch_by_expert(idx, cfg.num_experts, cap)
        y = self.experts(flat, slots // cfg.top_k, weights.reshape(-1)[slots], kept)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        return y.view_as(x), RoutingInfo(logits, idx, weights, load, kept, slot_kept, cap)

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor, speed: float = 1e-3) -> None:
        """无辅助损失的均衡：b_i ← b_i + u · sign(mean(load) − load_i)，每个训练步之后调用一次。"""
        if self.cfg.router != "sigmoid":
            raise ValueError("update_bias 只用于 router='sigmoid'：softmax 路由没有 e_score_correction_bias")
        load = load.float()
        self.gate.e_score_correction_bias += speed * torch.sign(load.mean() - load)


def dense_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """反面教材（也是独立的对照）：E 个专家都算全部 token，未选中的权重为 0。结果相同、算力 E/k 倍；不支持容量。"""
    flat = x.reshape(-1, moe.cfg.hidden_size)
    _, weights, idx = moe.gate(flat)
    dense_w = weights.new_zeros(flat.shape[0], moe.cfg.num_experts).scatter(1, idx, weights)  # (N, E)
    gate, up = torch.einsum("nh,efh->enf", flat, moe.experts.gate_up_proj).chunk(2, dim=-1)  # (E, N, I) ×2
    per_expert = torch.einsum("eni,ehi->enh", F.silu(gate) * up, moe.experts.down_proj)  # (E, N, H)
    y = torch.einsum("ne,enh->nh", dense_w.to(x.dtype), per_expert)
    if moe.shared_experts is not None:
        y = y + moe.shared_experts(flat)
    return y.view_as(x)


def load_balancing_loss(router_logits, top_k: int) -> torch.Tensor:
    """Switch 辅助损失 L = E · Σ_i f_i · P_i。router_logits：(N, E)，或每层一个的列表（等价于拼起来）。"""
    if isinstance(router_logits, (list, tuple)):
        router_logits = torch.cat(list(router_logits), dim=0)
    probs = router_logits.float().softmax(dim=-1)  # (N, E)
    n, e = probs.shape
    idx = probs.topk(top_k, dim=-1).indices  # (N, k)
    f = torch.bincount(idx.reshape(-1), minlength=e).float() / n  # (E,) Σ f = k，不可导
    p = probs.mean(dim=0)  # (E,) 梯度从这里流回路由器
    return e * (f * p).sum()


def max_violation(load: torch.Tensor) -> float:
    """MaxVio = (max load − mean load) / mean load：0 表示完全均衡。"""
    load = load.float()
    return float((load.max() - load.mean()) / load.mean())


def random_routing_baseline(num_tokens: int, num_experts: int, top_k: int, capacity: int, trials: int = 200,
                            seed: int = 0) -> tuple[float, float]:
    """"不看输入"的路由器的均衡程度：每个 token 等概率挑 k 个不同的专家，返回 (平均 MaxVio, 平均丢弃槽位数)。

    期望负载正好是 N·k/E，剩下的只是多项分布的抽样噪声（每个专家的负载标准差约 √(N·k/E·(1 − k/E))）。
    路由器看输入、又要把相似的 token 送到同一个专家，所以负载均衡做得再好，也大致停在这个噪声水平附近；
    MaxVio 远高于它说明路由真的偏了。丢弃槽位按容量 capacity 截断计数（与 dispatch_by_expert 相同）。
    """
    if not 1 <= top_k <= num_experts or num_tokens < 1 or capacity < 1 or trials < 1:
        raise ValueError(f"需要 1 ≤ top_k={top_k} ≤ num_experts={num_experts}，num_tokens={num_tokens}、"
                         f"capacity={capacity}、trials={trials} 都 ≥ 1")
    gen = torch.Generator().manual_seed(seed)
    vios, drops = [], []
    for _ in range(trials):
        idx = torch.rand(num_tokens, num_experts, generator=gen).topk(top_k, dim=-1).indices  # 随机排列的前 k 个
        load = torch.bincount(idx.reshape(-1), minlength=num_experts)
        vios.append(max_violation(load))
        drops.append(int((load - load.clamp(max=capacity)).sum()))
    return sum(vios) / trials, sum(drops) / trials


def expert_load_figure(before: torch.Tensor, after: torch.Tensor, capacity: int, history: list[float],
                       random_vio: float):
    """左：偏置更新前后每个专家接到的槽位数与容量线；右：MaxVio 随偏置更新步数的变化，返回 Figure。

    history[s] 是已经做了 s 次偏置更新时（s = 0 即还没更新）测得的 MaxVio，所以横轴从 0 开始。
    """
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    experts = torch.arange(before.numel())
    ax1.bar(experts - 0.2, before.numpy(), width=0.4, label="bias = 0")
    ax1.bar(experts + 0.2, after.numpy(), width=0.4, label=f"after {len(history)} bias updates")
    ax1.axhline(capacity, color="k", ls="--", label="capacity C (cf = 1.0)")
    ax1.set(xlabel="expert index", ylabel="slots routed (token x choice)", title="expert load histogram")
    ax1.set_ylim(0, 1.5 * max(int(before.max()), int(after.max()), capacity))  # 顶部留白给图例，不压住柱子
    ax1.legend(fontsize=8, loc="upper left")
    ax2.plot(range(len(history)), history, label="sigmoid router + bias")
    ax2.axhline(random_vio, color="gray", ls="--", label=f"uniform random router ({random_vio:.2f})")
    ax2.axhline(0.0, color="k", lw=0.5)
    ax2.set(xlabel="bias updates applied (0 = none yet)", ylabel="MaxVio = (max - mean) / mean",
            title="aux-loss-free balancing")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# 5. 与 transformers 对照：同一份权重装进 MixtralSparseMoeBlock / DeepseekV3MoE
# ---------------------------------------------------------------------------
def hf_reference(moe: MoE) -> nn.Module:
    """按 moe.cfg 建出 transformers 的对应模块，并装入 moe 的权重（名字、形状都相同，strict 加载）。"""
    from transformers import DeepseekV3Config, MixtralConfig
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = moe.cfg
    if cfg.capacity_factor is not None:
        raise ValueError("transformers 的 Mixtral / DeepSeek-V3 不丢 token：对照时请用 capacity_factor=None")
    common = dict(hidden_size=cfg.hidden_size, num_experts_per_tok=cfg.top_k, experts_implementation="eager")
    if cfg.router == "softmax":
        if not cfg.norm_topk_prob or cfg.routed_scaling_factor != 1.0 or cfg.n_shared_experts:
            raise ValueError("Mixtral 总是重新归一化、不缩放、没有共享专家：请用默认的 norm/scaling/n_shared_experts")
        hf_cfg = MixtralConfig(intermediate_size=cfg.intermediate_size, num_local_experts=cfg.num_experts, **common)
        ref = MixtralSparseMoeBlock(hf_cfg)
    else:
        if cfg.n_shared_experts < 1:
            raise ValueError("DeepseekV3MoE 总有共享专家：对照时请设 n_shared_experts ≥ 1")
        hf_cfg = DeepseekV3Config(
            moe_intermediate_size=cfg.intermediate_size, n_routed_experts=cfg.num_experts,
            n_group=cfg.n_group, topk_group=cfg.topk_group, n_shared_experts=cfg.n_shared_experts,
            norm_topk_prob=cfg.norm_topk_prob, routed_scaling_factor=cfg.routed_scaling_factor, **common,
        )  # fmt: skip
        ref = DeepseekV3MoE(hf_cfg)
    ref.load_state_dict(moe.state_dict(), strict=True)
    return ref


def _check_against_hf(moe: MoE, x: torch.Tensor) -> tuple[float, float]:
    """同一输入、同一随机投影的 loss：返回 (输出最大误差, 输入与全部参数梯度的最大误差)。"""
    ref, g = hf_reference(moe), torch.randn_like(x)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = moe(xa)[0], ref(xb)
    ((out_a * g).sum() + (out_b * g).sum()).backward()  # 两张计算图互不相连：一次 backward 各算各的梯度
    ref_params = dict(ref.named_parameters())
    errs = [(p.grad - ref_params[n].grad).abs().max().item() for n, p in moe.named_parameters()]
    return (out_a - out_b).abs().max().item(), max(errs + [(xa.grad - xb.grad).abs().max().item()])


def main() -> None:
    smoke = is_smoke()
    setup_seed()
    n_tok, steps, reps = (64, 60, 2) if smoke else (512, 300, 5)
    mixtral = MoEConfig(hidden_size=32, intermediate_size=64, num_experts=8, top_k=2)
    deepseek = MoEConfig(
        hidden_size=32, intermediate_size=16, num_experts=16, top_k=4, router="sigmoid", n_group=4, topk_group=2,
        n_shared_experts=1, routed_scaling_factor=2.5,
    )  # fmt: skip
    print("== 1. 与 transformers 对照（fp32，同一份权重）==")
    for name, cfg in (("Mixtral", mixtral), ("DeepSeek-V3", deepseek)):
        moe = MoE(cfg)
        if cfg.router == "sigmoid":  # 随机偏置：连"偏置只管挑选"也一起对照
            moe.gate.e_score_correction_bias.normal_(std=0.05)
        out_err, grad_err = _check_against_hf(moe, torch.randn(4, n_tok // 4, cfg.hidden_size))
        print(f"{name:12s} 输出最大误差 {out_err:.2e}，梯度最大误差 {grad_err:.2e}")
        if max(out_err, grad_err) > 1e-5:
            raise RuntimeError(f"{name}：与 transformers 不一致")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    logits = [torch.randn(n_tok, 8) for _ in range(3)]  # 3 层的路由 logits
    ours, theirs = load_balancing_loss(logits, top_k=2).item(), load_balancing_loss_func(tuple(logits), 8, 2).item()
    print(f"Switch 辅助损失：ours {ours:.6f}，transformers {theirs:.6f}（完全均衡时 = k = 2；"
          f"N(0,1) 的随机 logits 只比它大一点，默认配置 2.001，SMOKE 2.007）")
    if abs(ours - theirs) > 1e-6:
        raise RuntimeError("load_balancing_loss 与 transformers 不一致")

    print("== 2. 无辅助损失的偏置更新 + 容量：负载越均衡，丢得越少 ==")
    moe, capped = MoE(deepseek), MoE(replace(deepseek, capacity_factor=1.0))
    skew = torch.randn(deepseek.hidden_size)  # 输入带一个公共方向 -> 某些专家系统性地更受欢迎

    def batch() -> torch.Tensor:
        return torch.randn(n_tok, deepseek.hidden_size) + 2 * skew

    def probe(tag: str) -> RoutingInfo:
        capped.load_state_dict(moe.state_dict())  # 同一组权重与偏置，只多了容量限制
        with torch.no_grad():
            _, info = capped(batch())
        print(f"{tag}：MaxVio {max_violation(info.load):.2f}；cf=1.0（C={info.capacity}）丢弃槽位 "
              f"{int((info.load - info.kept).sum())}/{int(info.load.sum())}，整个被丢的 token {info.dropped_tokens}")  # fmt: skip
        return info

    cap = capped.capacity(n_tok)
    rand_vio, rand_drop = random_routing_baseline(n_tok, deepseek.num_experts, deepseek.top_k, cap)
    print(f"基线：完全均衡 MaxVio 0、丢 0；均匀随机路由（只剩抽样噪声）MaxVio {rand_vio:.2f}、"
          f"丢弃槽位 {rand_drop:.0f}/{n_tok * deepseek.top_k}。"
          f"默认配置（N=512，6 个种子实测）：更新前 MaxVio 1.9~2.8、丢 750~1300，300 步后 0.12~0.26、丢 64~120"
          f"——与随机路由的噪声相当")
    before, history = probe("偏置更新前"), []
    with torch.no_grad():
        for _ in range(steps):
            _, info = moe(batch())
            history.append(max_violation(info.load))
            moe.update_bias(info.load, speed=1e-3)  # DeepSeek-V3 的 u；u 越大收敛越快，但 b 在平衡点附近抖得越厉害
    after = probe(f"{steps} 步偏置更新后")

    print("== 3. 计时（fwd+bwd 中位数，E=16、k=2）==")
    big = MoEConfig(hidden_size=32 if smoke else 128, intermediate_size=64 if smoke else 256, num_experts=16, top_k=2)
    moe_big = MoE(big)
    ref_big = hf_reference(moe_big)
    x = torch.randn(4, n_tok // 4, big.hidden_size, requires_grad=True)
    rows = (("按专家排序（ours）", lambda: moe_big(x)[0]), ("稠密：每个专家算全部 token", lambda: dense_moe(moe_big, x)),
            ("transformers MixtralSparseMoeBlock", lambda: ref_big(x)))  # fmt: skip
    times = benchmark_interleaved([lambda fn=fn: fn().sum().backward() for _, fn in rows], warmup=1, reps=reps)
    for (name, _), ms in zip(rows, times):
        print(f"{name:36s} {ms:8.2f} ms")
    print(timing_note("benchmarks/model_lab_moe.py"))

    fig = expert_load_figure(before.load, after.load, after.capacity, history, rand_vio)
    print(f"图已保存：{save_figure(fig, 'moe_expert_load.png', dpi=120)}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
