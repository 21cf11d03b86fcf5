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

读法（自上而下）：GPT2Config 与 HF config.json 的互转 → 模块（Conv1D、CausalSelfAttention、MLP、Block）→
GPT2（初始化、计数、forward：(B, T) 批量或打包批量、generate、from_pretrained / save_pretrained）→ main() 与 HF 对照。
与 Llama 共用的基础设施在可按名字导入的模块里：注意力后端注册表与 bool 掩码约定（model_lab/attention_backends.py）、
KVCache / PagedKVCache / AttnMetadata（model_lab/kv_cache.py）、HF 目录读写（model_lab/hf_io.py）、
采样与生成循环（model_lab/generation.py）。
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model_lab.attention_backends import get_attention_backend, make_attention_mask, packed_attention
from model_lab.generation import check_max_new_tokens, generate
from model_lab.hf_io import load_hf_directory, save_hf_directory
from model_lab.kv_cache import (
    AttnMetadata,
    KVCache,
    PagedKVCache,
    check_cache,
    check_logits_positions,
    resolve_positions,
)
from utils.lesson_cli import lesson_args

__all__ = ["Conv1D", "GPT2", "GPT2Config", "build_gpt2_hf_reference"]


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
    bos_token_id: int | None = 50256  # 只随 config.json 往返保存；generate 只看调用时传入的 eos_token_id
    eos_token_id: int | None = 50256
    attn_implementation: str = "sdpa"  # 本仓库的运行时选择（注意力后端名，见 attention_backends），不写进 config.json

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
        if not isinstance(self.attn_implementation, str):
            raise ValueError(f"attn_implementation={self.attn_implementation!r} 必须是注意力后端的名字（字符串）")

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
    """GPT2Config -> HF 的 config.json 内容（transformers.AutoConfig 能读）；attn_implementation 是运行时选择，不写。"""
    d = config.to_dict()
    d.pop("attn_implementation")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        **d,
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


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)  # q, k, v 三个投影拼成一次 GEMM
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.config = config
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.upcast = config.reorder_and_upcast_attn
        # 分数缩放：1/√hs 让 q·k 的方差不随 head_dim 增长（否则 softmax 饱和、梯度消失）
        self.scale = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= float(layer_idx + 1)

    def forward(self, x: Tensor, mask: Tensor | None, kv_cache: KVCache | PagedKVCache | None,
                attn_metadata: AttnMetadata | None) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)  # 3 × (B, T, nh, hs)
        dropout_p = self.attn_pdrop if self.training else 0.0
        backend = self.config.attn_implementation
        if attn_metadata is not None:  # 打包批量：B = 1，T = N，直接用 (N, nh, hs) 的 varlen 布局
            k_ctx, v_ctx = k[0], v[0]
            if kv_cache is not None:  # 写进块池，拿回整个块池 (num_blocks, block_size, nh, hs)
                k_ctx, v_ctx = kv_cache.update(self.layer_idx, k[0], v[0], attn_metadata.slot_mapping)
            q, k_ctx, v_ctx = self._maybe_upcast(q[0], k_ctx, v_ctx)
            y = packed_attention(backend, q, k_ctx, v_ctx, attn_metadata=attn_metadata, scale=self.scale,
                                 dropout_p=dropout_p)  # (N, nh, hs)
            return self.resid_dropout(self.c_proj(y.to(x.dtype).reshape(B, T, C)))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, S, hs)，S = 之前的长度 + T
        # mask=None 只有两种情形（见 attention_backends.make_attention_mask）：没有前缀与 padding 的纯因果
        # （is_causal=True，内核可跳过上三角），或解码一步（T=1，新 token 能看见全部 key，不要掩码）
        is_causal = mask is None and T > 1
        q, k, v = self._maybe_upcast(q, k, v)
        y = get_attention_backend(backend).fn(q, k, v, is_causal=is_causal, attn_mask=mask, scale=self.scale,
                                              dropout_p=dropout_p)  # (B, nh, T, hs)
        y = y.to(x.dtype).transpose(1, 2).reshape(B, T, C)  # (B, T, C)：把各头拼回去
        return self.resid_dropout(self.c_proj(y))

    def _maybe_upcast(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """reorder_and_upcast_attn=True：注意力整个在 fp32 里算（fp16 下 q·k 的点积可能超过 65504 而溢出成 inf），
        之后输出转回原 dtype。HF 只把分数与 softmax 升到 fp32、概率再降回 v 的 dtype 去乘 v；
        这里连 p·v 也在 fp32 里，于是能交给任何注册的后端。fp32 模型下两者完全相同。"""
        if not self.upcast:
            return q, k, v
        return q.float(), k.float(), v.float()


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

    def forward(self, x: Tensor, mask: Tensor | None, kv_cache: KVCache | PagedKVCache | None,
                attn_metadata: AttnMetadata | None) -> Tensor:
        # pre-LN：LayerNorm 在支路里、残差干路上不做归一化——梯度可以沿干路直达底层，深层也好训
        x = x + self.attn(self.ln_1(x), mask, kv_cache, attn_metadata)
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
        get_attention_backend(config.attn_implementation)  # 名字拼错在构造时就报错，而不是第一次前向时
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
        """为 (B, T) 批量的增量解码新建一个空的 KVCache（与模型同 device、同 dtype），max_seq_len 默认 n_positions。"""
        max_seq_len = self.config.n_positions if max_seq_len is None else max_seq_len
        if not 1 <= max_seq_len <= self.config.n_positions:
            raise ValueError(f"max_seq_len={max_seq_len} 必须在 [1, n_positions={self.config.n_positions}] 内")
        weight = self.transformer.wte.weight
        return KVCache(self.config.n_layer, batch_size, self.config.n_head, max_seq_len, self.config.head_dim,
                       device=weight.device, dtype=weight.dtype)

    def make_paged_kv_cache(self, num_blocks: int, block_size: int = 16) -> PagedKVCache:
        """为打包批量分配分页 KV cache（vLLM 布局，与模型同 device、同 dtype）。"""
        weight = self.transformer.wte.weight
        return PagedKVCache(self.config.n_layer, num_blocks, block_size, self.config.n_head, self.config.head_dim,
                            device=weight.device, dtype=weight.dtype)

    def _check_input_ids(self, input_ids: Tensor) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            desc = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, Tensor) else type(input_ids)
            raise ValueError(f"input_ids 应为 (B, T) 的 torch.long 张量，收到 {desc}；单条序列请用 ids[None]")
        if input_ids.size(1) == 0:
            raise ValueError("input_ids 的长度 T=0：至少要有一个 token")

    def _check_length_and_vocab(self, input_ids: Tensor, end: int, parts: str) -> None:
        """end：本次涉及的最大序列长度；parts 说明它由哪几部分组成。"""
        if end > self.config.n_positions:
            raise ValueError(f"序列长度 {end}（{parts}）超过 n_positions={self.config.n_positions}："
                             "GPT-2 的位置表只有这么多行；请截断输入，或用更大的 n_positions")
        if torch.compiler.is_compiling():
            return  # 读回 Python 的检查会打断 torch.compile 的图；编译时跳过
        # 越界 id 在 CPU 上是 IndexError，在 GPU 上是难以定位的 device-side assert；提前检查（GPU 上多一次同步，值得）
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"input_ids 的取值范围 [{lo}, {hi}] 超出词表 [0, vocab_size={self.config.vocab_size})")

    def forward(self, input_ids: Tensor, targets: Tensor | None = None, *, position_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, kv_cache: KVCache | PagedKVCache | None = None,
                attn_metadata: AttnMetadata | None = None, logits_positions: Tensor | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        """input_ids (B, T) -> logits (B, T, vocab)；给了 targets 则返回 (logits, loss)。与 Llama.forward 同一个接口。

        targets 按 nanoGPT 的约定已经对齐：targets[:, t] 是 input_ids[:, t] 之后的那个 token，-100 不计入损失。
        （HF 的 labels 是"没移位"的：labels = input_ids，由模型内部左移一位。两者的换算：
        targets = labels[:, 1:] 右侧补一个 -100。）
        (B, T) 批量：position_ids 默认 past..past+T-1（与 HF 的 forward 相同；左 padding 的生成由 generate 按
        attention_mask 推出位置）；attention_mask (B, past + T)，1 = 真实 token，0 = padding；kv_cache 是 KVCache。
        打包批量（attn_metadata）：input_ids (1, N)，几条序列首尾相接、互不可见；kv_cache 只能是 PagedKVCache。
        logits_positions：(K,) 扁平下标，只在这些位置算 lm_head，返回 (K, vocab)；不能与 targets 同时给。
        """
        self._check_input_ids(input_ids)
        B, T = input_ids.shape
        c, weight = self.config, self.transformer.wte.weight
        check_cache(kv_cache, attn_metadata, batch_size=B, new_tokens=T, num_layers=c.n_layer, num_kv_heads=c.n_head,
                    head_dim=c.head_dim, dtype=weight.dtype, device=weight.device)
        position_ids, length, what = resolve_positions(input_ids, position_ids, attention_mask, kv_cache, attn_metadata)
        self._check_length_and_vocab(input_ids, length, what)
        if targets is not None:
            if tuple(targets.shape) != (B, T):
                raise ValueError(f"targets 形状应与 input_ids 相同 {(B, T)}，收到 {tuple(targets.shape)}")
            valid = targets[targets != -100]
            if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.config.vocab_size):
                raise ValueError(f"targets 只能是 [0, vocab_size={self.config.vocab_size}) 内的 id 或 -100（忽略）")
        h = self.forward_hidden(input_ids, position_ids, kv_cache, attention_mask, attn_metadata)  # (B, T, C)
        if logits_positions is not None:
            h = h.flatten(0, 1)[check_logits_positions(logits_positions, B * T, targets)]  # (K, C)
        logits = self.lm_head(h)  # (B, T, vocab) 或 (K, vocab)
        if targets is None:
            return logits
        # 交叉熵在 fp32 里算：低精度 logits 的 log-softmax 在大词表上误差明显
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def forward_hidden(self, input_ids: Tensor, position_ids: Tensor, kv_cache: KVCache | PagedKVCache | None = None,
                       attention_mask: Tensor | None = None, attn_metadata: AttnMetadata | None = None) -> Tensor:
        """嵌入 + 全部 Block + ln_f，返回最后的隐状态 (B, T, C)；不做输入检查（generate 与推理引擎自己检查过）。"""
        B, T = input_ids.shape
        # position_ids (B 或 1, T)：绝对位置，(B, T) 批量默认从 cache 里已有的长度接着数
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(position_ids))  # (B, T, C)
        dense_cache = kv_cache if attn_metadata is None else None
        past = dense_cache.seq_len if dense_cache is not None else 0
        mask = None if attn_metadata is not None else make_attention_mask(T, past, attention_mask, input_ids.device)
        for block in self.transformer.h:
            x = block(x, mask, kv_cache, attn_metadata)
        if dense_cache is not None:
            dense_cache.advance(T)
        return self.transformer.ln_f(x)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, *, generator: torch.Generator | None = None,
                 eos_token_id: int | None = None, attention_mask: Tensor | None = None,
                 use_cache: bool = True, cache_factory: Callable[[int, int], KVCache] | None = None) -> Tensor:
        """自回归生成：返回 (B, T + 生成的长度)，前 T 个就是 input_ids。循环在 model_lab.generation.generate（与 Llama 共用）。

        先对整个 prompt 做一次前向（prefill）填满 KV cache，之后每步只喂 1 个新 token（decode）。
        GPT-2 的位置表有上限，所以 T + max_new_tokens 不能超过 n_positions（nanoGPT 会裁掉最早的上下文
        重新计算，但那样 KV cache 就整个作废了；这里选择直接报错，让调用方自己决定怎么截断）。
        eos_token_id：某行生成 eos 后，之后填 eos；attention_mask：左侧 padding 的批量生成，位置编号与 HF 的
        GPT-2 generate 相同（从第一个真实 token 记 0）。调用前请 model.eval()，否则 dropout 会让生成结果随机。
        cache_factory：(batch_size, max_seq_len) -> 空的 KVCache（例如量化的 KV cache），None = make_kv_cache。
        """
        check_max_new_tokens(max_new_tokens)
        self._check_input_ids(input_ids)
        T = input_ids.size(1)
        self._check_length_and_vocab(input_ids, T + max_new_tokens, f"prompt 长度 {T} + max_new_tokens {max_new_tokens}")
        return generate(self, input_ids, max_new_tokens, temperature, top_k, top_p, generator=generator,
                        eos_token_id=eos_token_id, attention_mask=attention_mask, use_cache=use_cache,
                        cache_factory=cache_factory)

    # ---- 与 Hugging Face 目录互相读写（model_lab/hf_io.py） ----
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, attn_implementation: str = "sdpa") -> GPT2:
        """加载 `transformers.GPT2LMHeadModel.save_pretrained` 写的目录（config.json + safetensors）。

        dtype=None 时保持文件里的 dtype（与 Llama 相同）。处理 HF 目录的几种常见情形：lm_head.weight 因为与 wte
        共享而没存；老 checkpoint 里有 attn.bias / attn.masked_bias 掩码 buffer；只存了 GPT2Model（键没有
        "transformer." 前缀）；分片保存（model.safetensors.index.json）。
        """
        def add_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
            if "wte.weight" in state and "transformer.wte.weight" not in state:
                return {(k if k.startswith("lm_head.") else f"transformer.{k}"): v for k, v in state.items()}
            return state

        def build(raw: dict) -> GPT2:
            return cls(dataclasses.replace(config_from_hf_dict(raw), attn_implementation=attn_implementation))

        return load_hf_directory(path, model_type="gpt2", architectures=("GPT2LMHeadModel", "GPT2Model"), build=build,
                                 device=device, dtype=dtype, rename_keys=add_prefix,
                                 ignored_suffixes=_IGNORED_CHECKPOINT_SUFFIXES)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """写一个 `transformers.AutoModelForCausalLM.from_pretrained` 能加载的目录；先写权重、最后写 config.json，
        每个文件都原子写入；共享的 lm_head 不写（HF 也只存 wte，加载时再绑回去）。"""
        return save_hf_directory(self, path, config_to_hf_dict(self.config))


# ---------------------------------------------------------------------------
# 演示：与 HF 对照
# ---------------------------------------------------------------------------
def build_gpt2_hf_reference(model: GPT2, attn_implementation: str | None = None):
    """用同一份 config 与权重构造 transformers.GPT2LMHeadModel（eval 模式、同 dtype；测试、基准、main 共用）。

    attn_implementation：HF 那边的注意力实现（"eager" / "sdpa"）；None 时跟随我们的 config（注册的其他后端对应 "sdpa"）。
    """
    import transformers

    if attn_implementation is None:
        ours = model.config.attn_implementation
        attn_implementation = ours if ours in ("eager", "sdpa") else "sdpa"
    hf_config = transformers.GPT2Config(**config_to_hf_dict(model.config), attn_implementation=attn_implementation)
    hf = transformers.GPT2LMHeadModel(hf_config)
    hf.load_state_dict(model.state_dict())  # 名字与 Conv1D 布局一致：不需要任何改名或转置
    return hf.to(model.transformer.wte.weight.dtype).eval()


def decode_cost_figure(positions: list[int], with_cache: list[float], without_cache: list[float]):
    """上下文长 t 时生成下一个 token 的耗时（毫秒，对数纵轴）：无 cache 全部重算 vs 有 KV cache。返回 Figure。"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(positions, without_cache, marker="o", label="no cache: recompute all t + 1 tokens")
    ax.plot(positions, with_cache, marker="o", label="KV cache: 1 new token")
    ax.set_xlabel("context length t (tokens already generated or prompted)")
    ax.set_ylabel("ms per generated token (log scale)")
    ax.set_yscale("log")
    ax.set_title("GPT-2 decode step cost")
    ax.legend()
    fig.tight_layout()
    return fig


@torch.no_grad()
def decode_step_ms(model: GPT2, t: int) -> tuple[float, float]:
    """上下文已有 t 个 token 时，生成下一个 token 的一次前向耗时（毫秒）：(有 KV cache, 无 cache 全部重算)。"""
    from utils.torch_playground import benchmark_interleaved

    seq = torch.randint(0, model.config.vocab_size, (1, t + 1))
    cache = model.make_kv_cache(1, max_seq_len=t + 1)
    model(seq[:, :-1], kv_cache=cache)  # prefill 前 t 个

    def decode_one() -> None:
        cache.seq_len = t  # 回到"已缓存 t 个"的状态，重复测同一步（每次写入同一个位置）
        model(seq[:, -1:], kv_cache=cache)

    with_cache, without_cache = benchmark_interleaved([decode_one, lambda: model(seq)], warmup=1, reps=5)
    return with_cache, without_cache


def main() -> None:
    import transformers

    from utils.io import is_smoke, save_figure
    from utils.lesson_cli import timing_note
    from utils.torch_playground import benchmark, setup_seed

    transformers.logging.set_verbosity_error()  # 随机小模型的 config 会触发几条无关的提示
    smoke = is_smoke()
    setup_seed()
    # dropout 设 0 才能与 HF 逐位比较；eos 设 None：随机权重下 HF generate 不会因为碰到 eos 提前停
    config = GPT2Config(vocab_size=512, n_positions=128 if smoke else 512, n_embd=64 if smoke else 128,
                        n_layer=2 if smoke else 4, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None)
    model = GPT2(config).eval()
    hf = build_gpt2_hf_reference(model)
    print(f"GPT-2 config: n_layer={config.n_layer} n_embd={config.n_embd} n_head={config.n_head} "
          f"vocab={config.vocab_size} n_positions={config.n_positions}")
    print(f"参数量 {model.num_parameters():,}（HF {hf.num_parameters():,}），"
          f"不含嵌入 {model.num_parameters(exclude_embeddings=True):,}")
    T = 64
    n_matmul = model.lm_head.weight.numel() + sum(  # 参与矩阵乘的参数：lm_head（共享的 wte）+ 所有 Conv1D
        m.weight.numel() for m in model.modules() if isinstance(m, Conv1D))
    attn_share = 4 * config.n_layer * T * config.n_embd / model.flops_per_token(T, backward=False)
    print(f"每 token FLOPs（T={T}）：前向 {model.flops_per_token(T, backward=False):,}，"
          f"训练 {model.flops_per_token(T):,}（常用的 6N 近似只算参数矩阵乘：6·{n_matmul:,} = {6 * n_matmul:,}；"
          f"差的就是注意力的 q·kᵀ、p·v，这里占前向的 {attn_share:.1%}）")

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
          f"{out.loss.item():.6f}，全部参数梯度最大差 {max_grad:.2e}（期望全为 0：同名权重、同一串算子）")
    print(f"随机初始化的 loss 应接近均匀分布的 ln V = ln {config.vocab_size} = {math.log(config.vocab_size):.4f}"
          f"（std 0.02 的初始化让 logits 很小、分布近乎均匀，只略高于它；实测 6 个种子：默认配置 6.26~6.30，"
          f"SMOKE 6.24~6.27）")
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
    tokens_per_s = B * T / ms * 1000
    print(f"前向+反向：{tokens_per_s:,.0f} tokens/s（B={B}, T={T}, fp32, {torch.get_num_threads()} 线程），"
          f"按上面的训练 FLOPs 折合 {tokens_per_s * model.flops_per_token(T) / 1e9:.1f} GFLOP/s"
          f"（小矩阵乘喂不饱 CPU，远低于单核 fp32 的峰值）")

    # 4) 图：上下文长 t 时生成下一个 token 的耗时。无 cache 要把 t 个 token 全部重算（∝ t），有 cache 只算 1 个
    positions = [8, 32, 64, 96, 127] if smoke else list(range(16, config.n_positions, 48)) + [config.n_positions - 1]
    with_cache, without_cache = zip(*(decode_step_ms(model, t) for t in positions))
    print(f"上下文 t={positions[-1]} 时生成一个 token：KV cache {with_cache[-1]:.2f} ms，全部重算 {without_cache[-1]:.2f} ms"
          f"（{without_cache[-1] / with_cache[-1]:.0f} 倍；重算的代价随 t 线性增长，cache 只多读 t 个 K/V，"
          f"所以倍数大致随 t 增长，上限约 t + 1）")
    print(timing_note("benchmarks/model_lab_gpt2.py"))
    fig_path = save_figure(decode_cost_figure(positions, list(with_cache), list(without_cache)), "gpt2_kv_cache.png",
                           dpi=120)
    print(f"图已保存：{fig_path}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
