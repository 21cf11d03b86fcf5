"""GPT-2：一个文件写完整的模型，与 `transformers.GPT2LMHeadModel` 逐个权重、逐个数值对齐。

运行：`python model_lab/02_architectures/gpt2.py` 或 `python -m model_lab.02_architectures.gpt2`（SMOKE=1 几秒跑完）。

结构（Radford et al. 2019，"Language Models are Unsupervised Multitask Learners"）：

    x = wte[ids] + wpe[pos]                          学到的绝对位置编码（不是 RoPE）
    每层 Block（pre-LN）：
        x = x + c_proj(Attention(ln_1(x)))           因果多头自注意力
        x = x + c_proj(GELU_tanh(c_fc(ln_2(x))))     MLP，隐层 n_inner（默认 4 * n_embd）
    logits = ln_f(x) @ wte^T                         lm_head 与 wte 共享权重（weight tying）

与 Llama 相比：LayerNorm（带 bias）而不是 RMSNorm，GELU 而不是 SwiGLU，所有线性层都有 bias，
位置信息靠一张 (n_positions, n_embd) 的表——因此序列长度有硬上限 n_positions。

权重名与 HF 完全相同（transformer.wte / wpe / h.N.ln_1 / attn.c_attn / attn.c_proj / ln_2 /
mlp.c_fc / mlp.c_proj / transformer.ln_f / lm_head），线性层也沿用 HF 的 Conv1D (in, out) 布局，
所以 `state_dict()` 可以直接在两个库之间 load_state_dict，save_pretrained 的目录 HF 能直接加载。
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model_lab.generation import sample_next_token
from utils.io import atomic_path, atomic_write

__all__ = ["Conv1D", "GPT2", "GPT2Config", "KVCache"]


# ---------------------------------------------------------------------------
# 配置
# ---------------------------------------------------------------------------
def _new_gelu(x: Tensor) -> Tensor:
    # OpenAI GPT-2 原版用的 tanh 近似：GELU(x) ≈ 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
    # 精确 GELU 是 x·Φ(x)（Φ 为标准正态 CDF，要算 erf）；2018 年 TF 里 tanh 更快，于是沿用至今。
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


# activation_function 的取值与 HF ACT2FN 的名字一致；只收录与 GPT-2 相关、且数值上逐位对得上的几个
ACTIVATIONS = {
    "gelu_new": _new_gelu,  # GPT-2 的默认值
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),  # 同一个公式的 C++ 实现，更快
    "gelu": F.gelu,  # 精确的 erf 版本
    "relu": F.relu,
    "silu": F.silu,
}


@dataclass
class GPT2Config:
    """字段名与 `transformers.GPT2Config` 相同，默认值就是 124M 的 "gpt2"。"""

    vocab_size: int = 50257
    n_positions: int = 1024  # 位置表的行数 = 能处理的最长序列
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP 隐层宽度；None 表示 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1  # 两条残差支路输出处的 dropout（HF 的 MLP dropout 也用它）
    embd_pdrop: float = 0.1  # wte + wpe 之后的 dropout
    attn_pdrop: float = 0.1  # 注意力概率上的 dropout
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02  # 初始化的标准差
    scale_attn_weights: bool = True  # 分数除以 √head_dim（关掉就是未缩放的点积注意力）
    # 第 i 层（从 0 数）的分数再除以 i + 1；与下一个开关都来自 Stanford CRFM 的 Mistral 训练框架（与 Mistral AI 无关），
    # 用来稳定混合精度训练
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False  # 分数与 softmax 强制用 fp32 算（混合精度训练时防溢出）
    tie_word_embeddings: bool = True  # lm_head.weight 与 transformer.wte.weight 是同一个 Parameter
    bos_token_id: int | None = 50256  # 只随 config.json 往返保存；generate 按 max_new_tokens 生成，不看 eos
    eos_token_id: int | None = 50256

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} 不合法：必须是 >= 1 的整数")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd={self.n_embd} 不能被 n_head={self.n_head} 整除：每个头的维度 head_dim = n_embd / n_head 必须是整数"
            )
        if self.n_inner is not None and (
            not isinstance(self.n_inner, int) or isinstance(self.n_inner, bool) or self.n_inner < 1
        ):
            raise ValueError(f"n_inner={self.n_inner!r} 不合法：必须是 >= 1 的整数，或 None（表示 4 * n_embd）")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"activation_function={self.activation_function!r} 不支持；可选：{', '.join(ACTIVATIONS)}"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} 不合法：dropout 概率必须在 [0, 1) 内")
        for name in ("layer_norm_epsilon", "initializer_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} 不合法：必须是 > 0 的数")
        for name in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                     "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} 不合法：必须是 True 或 False")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name}={value!r} 不合法：必须是 >= 0 的整数或 None")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_dict(cls, d: dict) -> GPT2Config:
        """从普通 dict 构造；拼错的键（如 "n_embed"）直接报错，而不是被悄悄忽略、训出另一个模型。"""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"GPT2Config 不认识这些键：{unknown}；合法的键：{sorted(fields)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# HF 的 config.json 里除了架构字段，还有一堆与前向计算无关的通用元数据（生成参数、版本号、分类头……）。
# 这些键读取时忽略；不在这里、也不是 GPT2Config 字段的键一律报错——宁可拒绝，也不要悄悄算出另一个模型。
_HF_IGNORED_KEYS = frozenset(
    """architectures model_type transformers_version dtype torch_dtype use_cache pad_token_id n_ctx
    summary_type summary_use_proj summary_activation summary_proj_to_labels summary_first_dropout
    task_specific_params _name_or_path output_attentions output_hidden_states return_dict torchscript
    use_bfloat16 tf_legacy_loss pruned_heads chunk_size_feed_forward is_encoder_decoder is_decoder
    cross_attention_hidden_size tie_encoder_decoder finetuning_task id2label label2id tokenizer_class prefix
    sep_token_id decoder_start_token_id problem_type gradient_checkpointing max_length min_length do_sample
    early_stopping num_beams num_beam_groups diversity_penalty temperature top_k top_p typical_p
    repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids
    num_return_sequences output_scores return_dict_in_generate forced_bos_token_id forced_eos_token_id
    remove_invalid_values exponential_decay_length_penalty suppress_tokens begin_suppress_tokens
    add_cross_attention""".split()
)


def config_from_hf_dict(d: dict) -> GPT2Config:
    """HF config.json（dict）-> GPT2Config；不是 GPT-2 或用到了我们没实现的特性时报错。"""
    model_type = d.get("model_type")
    if model_type != "gpt2":
        raise ValueError(
            f"config.json 的 model_type={model_type!r}，architectures={d.get('architectures')}：这不是 GPT-2 的 checkpoint"
            "（GPT2.from_pretrained 只加载 model_type='gpt2'；Llama 请用 Llama.from_pretrained）"
        )
    if d.get("add_cross_attention"):
        raise ValueError("config.json 里 add_cross_attention=True（编码器-解码器用的交叉注意力），本实现只支持纯 decoder 的 GPT-2")
    fields = {f.name for f in dataclasses.fields(GPT2Config)}
    unknown = sorted(set(d) - fields - _HF_IGNORED_KEYS)
    if unknown:
        raise ValueError(f"config.json 里有不认识的键 {unknown}：它们可能改变模型结构，拒绝加载以免算错")
    return GPT2Config(**{k: v for k, v in d.items() if k in fields})


def config_to_hf_dict(config: GPT2Config, dtype: torch.dtype = torch.float32) -> dict:
    """GPT2Config -> HF 的 config.json 内容（transformers.AutoConfig 能读）。"""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        **config.to_dict(),
        "add_cross_attention": False,
        "dtype": str(dtype).removeprefix("torch."),
    }


# ---------------------------------------------------------------------------
# 模块
# ---------------------------------------------------------------------------
class Conv1D(nn.Module):
    """名字叫 Conv1D，其实就是一个线性层 y = x @ W + b，只是 W 的形状是 (in, out)。

    为什么不是 nn.Linear？nn.Linear 存的是 (out, in)，算 y = x @ W^T + b。
    OpenAI 原版 GPT-2 是 TensorFlow 写的，投影函数就叫 `conv1d`：权重变量形状 [1, nx, nf]，
    正是"核宽为 1 的一维卷积"的卷积核布局 [width, in, out]（沿用自 GPT-1 的代码），
    计算时 reshape 成 (nx, nf) 做 matmul(x, w)——TF 习惯的 x @ W，W 天然是 (in, out)。
    Hugging Face 当年把 TF checkpoint 移植到 PyTorch 时，去掉了开头那个 1，但保留了 (in, out) 布局：
    1) 加载 OpenAI 的权重不需要任何转置；2) Hub 上已经有成千上万个按这个布局保存的 GPT-2 checkpoint，
    改成 nn.Linear 会让它们全部失效。于是这个"历史包袱"一直留到今天。
    我们照样保留它，换来的好处是 state_dict 与 HF 一字不差；代价是读 nanoGPT 的人要记住：
    nanoGPT 用 nn.Linear，它的 from_pretrained 必须对 c_attn / c_proj / c_fc 这四类权重做 .t()。
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))  # (in, out)，不是 nn.Linear 的 (out, in)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        # addmm(b, X, W) = b + X @ W，一次 GEMM 把 bias 也加上；先把前面的维度摊平成二维
        out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight)
        return out.view(*x.shape[:-1], self.weight.size(1))


class KVCache:
    """增量解码用的 KV cache：每层预分配 (B, nh, max_seq_len, hs) 的 K 与 V。

    为什么要缓存：自回归生成第 t 个 token 时，前 t-1 个位置的 K、V 与第 t 步完全无关（因果掩码），
    重新算一遍是纯浪费。缓存之后每步只算 1 个新位置：注意力从 O(t²) 降到 O(t)，线性层从 t 行降到 1 行。
    预分配（而不是每步 torch.cat）避免了反复申请内存与拷贝，vLLM 等推理引擎的 paged cache 是它的进阶版。
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, max_seq_len: int, head_dim: int, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        shape = (num_layers, batch_size, num_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.batch_size, self.max_seq_len = batch_size, max_seq_len
        self.seq_len = 0  # 已经写入（模型已经"看过"）的位置数，也就是下一个 token 的位置

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """把本步的 k, v (B, nh, T, hs) 写到 [seq_len, seq_len + T)，返回该层到目前为止的全部 K, V。"""
        end = self.seq_len + k.size(2)
        self.k[layer_idx, :, :, self.seq_len:end] = k
        self.v[layer_idx, :, :, self.seq_len:end] = v
        return self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]  # (B, nh, end, hs)

    def advance(self, n_tokens: int) -> None:
        """所有层都写完之后由模型调用一次：把新位置计入 seq_len。"""
        self.seq_len += n_tokens


def manual_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float,
                     dropout_p: float = 0.0, is_causal: bool = False) -> Tensor:
    """教科书写法 softmax(q kᵀ · scale + mask) v，参数语义与 F.scaled_dot_product_attention 相同，
    但分数与 softmax 固定用 fp32 计算。

    reorder_and_upcast_attn=True 时走这条路：fp16 下 q·k 的点积可能超过 65504 而溢出成 inf，先升到 fp32 再乘就不会。
    """
    att = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, nh, T, S)
    if is_causal:
        T, S = att.shape[-2:]
        causal = torch.ones(T, S, dtype=torch.bool, device=att.device).tril()  # 左上角对齐，与 SDPA 相同
        att = att.masked_fill(~causal, float("-inf"))
    if mask is not None:
        att = att + mask
    att = F.dropout(att.softmax(dim=-1), p=dropout_p).to(v.dtype)
    return att @ v  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)  # q, k, v 三个投影拼成一次 GEMM
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.upcast = config.reorder_and_upcast_attn
        # 分数缩放：1/√hs 让 q·k 的方差不随 head_dim 增长（否则 softmax 饱和、梯度消失）
        self.scale = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= float(layer_idx + 1)

    def forward(self, x: Tensor, mask: Tensor | None, kv_cache: KVCache | None) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 × (B, T, C)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, S, hs)，S = 之前的长度 + T
        dropout_p = self.attn_pdrop if self.training else 0.0
        # mask=None 只有两种情形（见 GPT2._build_mask）：
        # ① 没有 padding、cache 为空：纯因果，is_causal=True 让 SDPA 自己处理下三角（可走 flash kernel，省掉掩码张量）；
        # ② 解码一步（T=1）：新 token 能看见全部 key，不要掩码。这时不能也写 is_causal=True——
        #    SDPA 的因果掩码是左上角对齐的，T=1 时它只让 query 看见第 0 个 key。
        is_causal = mask is None and T > 1
        if self.upcast:
            y = manual_attention(q, k, v, mask, self.scale, dropout_p, is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                                               scale=self.scale)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)：把各头拼回去
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, config.inner_dim)
        self.act = ACTIVATIONS[config.activation_function]
        self.c_proj = Conv1D(config.inner_dim, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, mask: Tensor | None, kv_cache: KVCache | None) -> Tensor:
        # pre-LN：LayerNorm 在支路里、残差干路上不做归一化——梯度可以沿干路直达底层，深层也好训
        x = x + self.attn(self.ln_1(x), mask, kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


# ---------------------------------------------------------------------------
# 模型
# ---------------------------------------------------------------------------
# 老版本 HF 把注意力的因果掩码存成了 buffer（attn.bias / attn.masked_bias），会出现在旧 checkpoint 里；
# 它们不是参数，我们在前向里现算掩码，加载时直接跳过。
_IGNORED_CHECKPOINT_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config 应为 GPT2Config，收到 {type(config).__name__}；可用 GPT2Config.from_dict(d)")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token 嵌入，也是输出层
            wpe=nn.Embedding(config.n_positions, config.n_embd),  # 学到的绝对位置嵌入
            drop=nn.Dropout(config.embd_pdrop),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            # weight tying（Press & Wolf 2017）：输入嵌入与输出投影共用一个 (V, C) 矩阵，
            # 124M 模型里省下 38.6M 参数；"token 的表示"与"预测该 token 的方向"本来就该相近
            self.lm_head.weight = self.transformer.wte.weight
        self.reset_parameters()

    # ---- 初始化 ----
    def reset_parameters(self) -> None:
        """GPT-2 的初始化：所有矩阵 N(0, 0.02)，bias 为 0，LayerNorm 为 (1, 0)；
        残差支路的输出投影（attn.c_proj、mlp.c_proj）的 std 再乘 1/√(2·n_layer)。

        为什么缩放：残差流 x_L = x_0 + Σ 支路输出，共 2·n_layer 条支路（每层注意力 + MLP 各一条）。
        独立同分布时方差相加，Var(x_L) ≈ 2·n_layer · σ²；把每条支路的 σ 除以 √(2·n_layer)，
        初始时残差流的方差就与深度无关。
        """
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (Conv1D, nn.Embedding, nn.Linear)):  # 共享时 lm_head 就是 wte，重抽一次无妨
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, Conv1D):
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))

    # ---- 计数 ----
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """参数个数（parameters() 已对共享的 lm_head 去重，只算一次）。

        exclude_embeddings=True 是 Kaplan 等人 scaling law 的口径：去掉词嵌入 wte 与位置嵌入 wpe。
        注意 nanoGPT 的 get_num_params 只去掉 wpe（它认为共享后的 wte 也是输出层）；两种口径在 124M 上差 38.6M。
        不共享时 lm_head 是独立的矩阵，照算。
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int, backward: bool = True) -> int:
        """序列长 seq_len 时每个 token 的矩阵乘 FLOPs（一次乘加 = 2 FLOPs）。

        前向：2·N_matmul + 4·n_layer·seq_len·n_embd
          - 2·N_matmul：每个矩阵参数（c_attn、c_proj、c_fc、lm_head）对每个 token 做一次乘加；
            嵌入查表、LayerNorm、GELU、bias 不计（它们不是 GEMM，占比 < 1%）；
          - 4·n_layer·T·C：每层 q·kᵀ 与 att·v 各 2·T·C。按 PaLM 附录 B 的口径算满 T（不因因果掩码减半），
            与 torch.utils.flop_counter 对注意力矩阵乘的计法一致（tests/model_lab/test_gpt2.py 用它核对）。
        backward=True（训练）时乘 3：反向对激活、对权重各要一次与前向等量的 GEMM；backward=False 只算前向（推理）。
        """
        T = seq_len
        n_matmul = self.lm_head.weight.numel() + sum(
            m.weight.numel() for m in self.modules() if isinstance(m, Conv1D)
        )
        forward = 2 * n_matmul + 4 * self.config.n_layer * T * self.config.n_embd
        return 3 * forward if backward else forward

    # ---- 前向 ----
    def make_kv_cache(self, batch_size: int, max_seq_len: int | None = None) -> KVCache:
        """为增量解码新建一个空的 KVCache（与模型同 device、同 dtype），max_seq_len 默认 n_positions。"""
        max_seq_len = self.config.n_positions if max_seq_len is None else max_seq_len
        if not 1 <= max_seq_len <= self.config.n_positions:
            raise ValueError(f"max_seq_len={max_seq_len} 必须在 [1, n_positions={self.config.n_positions}] 内")
        weight = self.transformer.wte.weight
        return KVCache(self.config.n_layer, batch_size, self.config.n_head, max_seq_len, self.config.head_dim,
                       device=weight.device, dtype=weight.dtype)

    def _check_inputs(self, input_ids: Tensor, targets: Tensor | None, kv_cache: KVCache | None,
                      attention_mask: Tensor | None) -> int:
        """检查输入，返回已缓存的长度 past。错误信息说清楚哪里不对、该怎么改。"""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            desc = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, Tensor) else type(input_ids)
            raise ValueError(f"input_ids 应为 (B, T) 的 torch.long 张量，收到 {desc}；单条序列请用 ids[None]")
        B, T = input_ids.shape
        if T == 0:
            raise ValueError("input_ids 的长度 T=0：至少要有一个 token")
        past = kv_cache.seq_len if kv_cache is not None else 0
        if past + T > self.config.n_positions:
            raise ValueError(
                f"序列长度 {past + T}（cache 里 {past} + 本次 {T}）超过 n_positions={self.config.n_positions}："
                "GPT-2 的位置表只有这么多行；请截断输入，或用更大的 n_positions"
            )
        # 越界 id 在 CPU 上是 IndexError，在 GPU 上是难以定位的 device-side assert；提前检查（GPU 上多一次同步，值得）
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"input_ids 的取值范围 [{lo}, {hi}] 超出词表 [0, vocab_size={self.config.vocab_size})")
        if kv_cache is not None:
            if kv_cache.batch_size != B:
                raise ValueError(f"kv_cache 的 batch_size={kv_cache.batch_size} 与 input_ids 的 B={B} 不一致")
            if past + T > kv_cache.max_seq_len:
                raise ValueError(
                    f"kv_cache 只能放 max_seq_len={kv_cache.max_seq_len} 个位置，已有 {past}，再放 {T} 个放不下"
                )
        if attention_mask is not None and tuple(attention_mask.shape) != (B, past + T):
            raise ValueError(
                f"attention_mask 形状应为 (B, past + T) = {(B, past + T)}（1 = 真实 token，0 = padding），"
                f"收到 {tuple(attention_mask.shape)}"
            )
        if targets is not None:
            if tuple(targets.shape) != (B, T):
                raise ValueError(f"targets 形状应与 input_ids 相同 {(B, T)}，收到 {tuple(targets.shape)}")
            valid = targets[targets != -100]
            if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.config.vocab_size):
                raise ValueError(f"targets 只能是 [0, vocab_size={self.config.vocab_size}) 内的 id 或 -100（忽略）")
        return past

    def _build_mask(self, B: int, T: int, past: int, attention_mask: Tensor | None, dtype: torch.dtype,
                    device: torch.device) -> Tensor | None:
        """加性掩码 (B 或 1, 1, T, past + T)：允许的位置 0，禁止的位置 dtype 的最小值。

        第 i 个新 token 的绝对位置是 past + i，它能看见绝对位置 j <= past + i 的 key（因果）；
        attention_mask 为 0 的 key（padding）谁也看不见。用 finfo.min 而不是 -inf：
        左 padding 时 padding 位置自己那一行全被禁止，-inf 会让 softmax 得到 0/0 = NaN 并顺着梯度传开；
        finfo.min 只会得到一行均匀分布，而那一行的输出本来就没人用。
        """
        if attention_mask is None and past == 0:
            return None  # 纯因果：交给 SDPA 的 is_causal
        if attention_mask is None and T == 1:
            return None  # 解码一步：唯一的新 token 本来就能看见全部 past + 1 个位置
        key_pos = torch.arange(past + T, device=device)
        query_pos = torch.arange(past, past + T, device=device)
        allowed = (key_pos[None, :] <= query_pos[:, None])[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            allowed = allowed & attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, T, S)
        zero = torch.zeros((), dtype=dtype, device=device)
        return zero.masked_fill(~allowed, torch.finfo(dtype).min)

    def forward(self, input_ids: Tensor, targets: Tensor | None = None, *, kv_cache: KVCache | None = None,
                attention_mask: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """input_ids (B, T) -> logits (B, T, vocab)；给了 targets 则返回 (logits, loss)。

        targets 按 nanoGPT 的约定已经对齐：targets[:, t] 是 input_ids[:, t] 之后的那个 token，-100 不计入损失。
        （HF 的 labels 是"没移位"的：labels = input_ids，由模型内部左移一位。两者的换算：
        targets = labels[:, 1:] 右侧补一个 -100。）
        kv_cache：增量解码时传入；本次的 K/V 写进 cache，位置编号从 cache.seq_len 接着往后数。
        attention_mask：(B, past + T)，1 = 真实 token，0 = padding（与 HF 相同）。
        """
        past = self._check_inputs(input_ids, targets, kv_cache, attention_mask)
        logits = self.lm_head(self._trunk(input_ids, past, kv_cache, attention_mask))  # (B, T, vocab)
        if targets is None:
            return logits
        # 交叉熵在 fp32 里算：低精度 logits 的 log-softmax 在大词表上误差明显
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def _trunk(self, input_ids: Tensor, past: int, kv_cache: KVCache | None,
               attention_mask: Tensor | None) -> Tensor:
        """嵌入 + 全部 Block + ln_f，返回最后的隐状态 (B, T, C)（输入已检查过）。"""
        B, T = input_ids.shape
        device = input_ids.device
        pos = torch.arange(past, past + T, device=device)  # (T,)：绝对位置从 cache 里已有的长度接着数
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(pos))  # (B, T, C)
        # 掩码要与注意力分数同一 dtype：upcast 路径的分数是 fp32
        score_dtype = torch.float32 if self.config.reorder_and_upcast_attn else x.dtype
        mask = self._build_mask(B, T, past, attention_mask, score_dtype, device)
        for block in self.transformer.h:
            x = block(x, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.transformer.ln_f(x)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
        """自回归生成：返回 (B, T + max_new_tokens)，前 T 个就是 input_ids。temperature=0 为贪心解码。

        先对整个 prompt 做一次前向（prefill）填满 KV cache，之后每步只喂 1 个新 token（decode）。
        GPT-2 的位置表有上限，所以 T + max_new_tokens 不能超过 n_positions（nanoGPT 会裁掉最早的上下文
        重新计算，但那样 KV cache 就整个作废了；这里选择直接报错，让调用方自己决定怎么截断）。
        调用前请 model.eval()，否则 dropout 会让生成结果随机。
        """
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} 必须是 >= 0 的整数")
        self._check_inputs(input_ids, None, None, None)
        B, T = input_ids.shape
        if T + max_new_tokens > self.config.n_positions:
            raise ValueError(
                f"prompt 长度 {T} + max_new_tokens {max_new_tokens} = {T + max_new_tokens} "
                f"超过 n_positions={self.config.n_positions}；请缩短 prompt 或减少 max_new_tokens"
            )
        if max_new_tokens == 0:
            return input_ids
        cache = self.make_kv_cache(B, max_seq_len=T + max_new_tokens)
        # 只有最后一个位置的 logits 有用：prefill 时只对它做 lm_head，省下 (T-1)·V·C 次乘加（大词表时很可观）
        logits = self.lm_head(self._trunk(input_ids, 0, cache, None)[:, -1, :])  # prefill：(B, vocab)
        out = [input_ids]
        for step in range(max_new_tokens):
            next_id = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B,)
            out.append(next_id[:, None])
            if step + 1 < max_new_tokens:
                # decode：新 token 来自采样，必在词表内，长度也已在上面检查过，跳过 _check_inputs 的同步开销
                logits = self.lm_head(self._trunk(next_id[:, None], cache.seq_len, cache, None)[:, -1, :])
        return torch.cat(out, dim=1)

    # ---- 与 Hugging Face 目录互相读写 ----
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> GPT2:
        """加载 `transformers.GPT2LMHeadModel.save_pretrained` 写的目录（config.json + safetensors）。

        处理 HF 目录的几种常见情形：lm_head.weight 因为与 wte 共享而没存；老 checkpoint 里有
        attn.bias / attn.masked_bias 掩码 buffer；只存了 GPT2Model（键没有 "transformer." 前缀）；
        分片保存（model.safetensors.index.json）。
        """
        from safetensors.torch import load_file

        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} 不存在：from_pretrained 需要 HF 格式的目录（config.json + model.safetensors）")
        config = config_from_hf_dict(json.loads(config_file.read_text(encoding="utf-8")))

        index_file = path / "model.safetensors.index.json"
        if (path / "model.safetensors").is_file():
            state = load_file(path / "model.safetensors")
        elif index_file.is_file():
            shards = sorted(set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values()))
            state = {k: v for shard in shards for k, v in load_file(path / shard).items()}
        else:
            raise FileNotFoundError(
                f"{path} 里没有 model.safetensors 或 model.safetensors.index.json；"
                "旧的 pytorch_model.bin 请先用 transformers 加载再 save_pretrained 转成 safetensors"
            )
        if "wte.weight" in state and "transformer.wte.weight" not in state:
            state = {(k if k.startswith("lm_head.") else f"transformer.{k}"): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_CHECKPOINT_SUFFIXES)}

        model = cls(config)
        expected = model.state_dict()
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # 与 wte 是同一个张量，加载 wte 时一并到位
            expected.pop("lm_head.weight")
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{path} 的权重与 GPT-2 结构对不上：缺少 {missing[:8]}{' …' if len(missing) > 8 else ''}，"
                             f"多出 {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(f"{name} 的形状是 {tuple(tensor.shape)}，按 config.json 应为 {tuple(expected[name].shape)}")
        with torch.no_grad():
            for name, tensor in state.items():
                expected[name].copy_(tensor)  # state_dict() 的张量与参数共享存储，copy_ 即写入模型
        return model.to(device=device, dtype=dtype)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """写一个 `transformers.AutoModelForCausalLM.from_pretrained` 能加载的目录；每个文件都原子写入。"""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        if self.config.tie_word_embeddings:
            # safetensors 不允许两个键共享存储；HF 也只存 wte，加载时再绑回去
            state.pop("lm_head.weight")
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        with atomic_path(path / "model.safetensors") as tmp:
            save_file(state, tmp, metadata={"format": "pt"})  # HF 要求 metadata 里标明 format=pt
        dtype = self.transformer.wte.weight.dtype
        atomic_write(path / "config.json", json.dumps(config_to_hf_dict(self.config, dtype), indent=2) + "\n")
        return path


# ---------------------------------------------------------------------------
# 演示：与 HF 对照
# ---------------------------------------------------------------------------
def hf_model_from_ours(model: GPT2, attn_implementation: str = "sdpa"):
    """用同一份 config 与权重构造 transformers.GPT2LMHeadModel（测试、基准、main 共用）。"""
    import transformers

    hf_config = transformers.GPT2Config(**config_to_hf_dict(model.config), attn_implementation=attn_implementation)
    hf = transformers.GPT2LMHeadModel(hf_config)
    hf.load_state_dict(model.state_dict())  # 名字与 Conv1D 布局一致：不需要任何改名或转置
    return hf.to(model.transformer.wte.weight.dtype)


@torch.no_grad()
def decode_step_ms(model: GPT2, t: int) -> tuple[float, float]:
    """上下文已有 t 个 token 时，生成下一个 token 的一次前向耗时（毫秒）：(有 KV cache, 无 cache 全部重算)。"""
    from utils.torch_playground import benchmark

    seq = torch.randint(0, model.config.vocab_size, (1, t + 1))
    cache = model.make_kv_cache(1, max_seq_len=t + 1)
    model(seq[:, :-1], kv_cache=cache)  # prefill 前 t 个

    def decode_one() -> None:
        cache.seq_len = t  # 回到"已缓存 t 个"的状态，重复测同一步（每次写入同一个位置）
        model(seq[:, -1:], kv_cache=cache)

    return benchmark(decode_one, warmup=1, reps=5), benchmark(lambda: model(seq), warmup=1, reps=5)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import transformers

    from utils.io import is_smoke, output_path
    from utils.torch_playground import benchmark, setup_seed

    transformers.logging.set_verbosity_error()  # 随机小模型的 config 会触发几条无关的提示
    smoke = is_smoke()
    setup_seed()
    # dropout 设 0 才能与 HF 逐位比较；eos 设 None：随机权重下 HF generate 不会因为碰到 eos 提前停
    config = GPT2Config(vocab_size=512, n_positions=128 if smoke else 512, n_embd=64 if smoke else 128,
                        n_layer=2 if smoke else 4, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None)
    model = GPT2(config).eval()
    hf = hf_model_from_ours(model).eval()
    print(f"GPT-2 config: n_layer={config.n_layer} n_embd={config.n_embd} n_head={config.n_head} "
          f"vocab={config.vocab_size} n_positions={config.n_positions}")
    print(f"参数量 {model.num_parameters():,}（HF {hf.num_parameters():,}），"
          f"不含嵌入 {model.num_parameters(exclude_embeddings=True):,}")
    T = 64
    print(f"每 token FLOPs（T={T}）：前向 {model.flops_per_token(T, backward=False):,}，"
          f"训练 {model.flops_per_token(T):,}")

    # 1) logits 与梯度
    B = 4
    x = torch.randint(0, config.vocab_size, (B, T))
    # HF 的 labels 是未移位的（labels = input_ids）；我们的 targets 已对齐：左移一位，末尾补 -100
    y = F.pad(x[:, 1:], (0, 1), value=-100)
    logits, loss = model(x, y)
    loss.backward()
    out = hf(x, labels=x)
    out.loss.backward()
    grads = dict(hf.named_parameters())
    max_grad = max((p.grad - grads[n].grad).abs().max().item() for n, p in model.named_parameters())
    print(f"logits 最大差 {(logits - out.logits).abs().max().item():.2e}，loss {loss.item():.6f} vs HF "
          f"{out.loss.item():.6f}，全部参数梯度最大差 {max_grad:.2e}")
    assert torch.allclose(logits, out.logits, atol=1e-5) and max_grad < 1e-5

    # 2) 贪心生成与 HF generate 一致
    n_new = 8 if smoke else 32
    prompt = x[:1, :8]
    ours_gen = model.generate(prompt, n_new, temperature=0.0)
    hf_gen = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new, do_sample=False,
                         pad_token_id=0)
    print(f"贪心生成 {n_new} 个 token 与 HF generate 一致：{torch.equal(ours_gen, hf_gen)}")
    assert torch.equal(ours_gen, hf_gen)

    # 3) 吞吐（前向 + 反向）
    model.zero_grad(set_to_none=True)

    def train_step() -> None:
        model(x, y)[1].backward()

    ms = benchmark(train_step, warmup=1, reps=3 if smoke else 10)
    print(f"前向+反向：{B * T / ms * 1000:,.0f} tokens/s（B={B}, T={T}, fp32, {torch.get_num_threads()} 线程）")

    # 4) 图：上下文长 t 时生成下一个 token 的耗时。无 cache 要把 t 个 token 全部重算（∝ t），有 cache 只算 1 个
    positions = [8, 32, 64, 96, 127] if smoke else list(range(16, config.n_positions, 48)) + [config.n_positions - 1]
    with_cache, without_cache = zip(*(decode_step_ms(model, t) for t in positions))
    print(f"上下文 t={positions[-1]} 时生成一个 token：KV cache {with_cache[-1]:.2f} ms，全部重算 {without_cache[-1]:.2f} ms")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(positions, without_cache, marker="o", label="no cache: recompute all t + 1 tokens")
    ax.plot(positions, with_cache, marker="o", label="KV cache: 1 new token")
    ax.set_xlabel("context length t")
    ax.set_ylabel("ms per generated token (log scale)")
    ax.set_yscale("log")
    ax.set_title("GPT-2 decode step cost")
    ax.legend()
    fig.tight_layout()
    fig_path = output_path("figures", "gpt2_kv_cache.png")
    fig.savefig(fig_path, dpi=120)
    plt.close(fig)
    print(f"图已保存：{fig_path}")


if __name__ == "__main__":
    main()
