"""把量化方案装进整个模型：按 HF 名字替换 nn.Linear、收集校准激活、保存与加载量化目录。

读法（自上而下）：1. 方案注册表 SCHEMES → 2. 选层（include / exclude）→ 3. 校准：forward hook 收集每层的输入 →
4. quantize（GPTQ 逐层顺序、其余一遍）→ 5. save_quantized / load_quantized → 6. main()：一个小 Llama 上走一遍。

## 1. 默认量化哪些层，为什么不碰 lm_head 与嵌入
默认只量化解码层里的线性层（`model.layers.N.self_attn.q_proj / k_proj / v_proj / o_proj`、`mlp.gate_proj / up_proj /
down_proj`；GPT-2 是 `transformer.h.N.attn.c_attn / c_proj`、`mlp.c_fc / c_proj`）：
- 它们占了参数与解码时读的字节的绝大部分（Llama-7B：6.5B / 6.7B），量化它们就拿到了几乎全部的省内存与提速；
- **嵌入**是查表不是矩阵乘：每个 token 只读一行，量化它省的是存储、不是带宽；它也不是 nn.Linear；
- **lm_head** 的误差直接落在 logits 上，后面再没有层能把它"平均掉"，而且词表维度上少数 logit 的相对大小
  决定了采样结果——GPTQ、AWQ、bitsandbytes 的论文与实现默认都把它留在 fp16。小模型常把它与嵌入共享
  （tie_word_embeddings）：量化它就得先解开共享、多存一份；
- 还有一个实现上的原因：我们的 Llama 在 forward 里直接读 `lm_head.weight`（KV cache 的 dtype / 设备检查、
  融合的 lm_head + 交叉熵内核都拿它），换成没有 .weight 的量化层模型就跑不起来。
所以点名 lm_head（`include=["lm_head"], exclude=()`）会报错，而不是默默地留一个跑不通的模型。

## 2. 校准激活怎么来
GPTQ、AWQ、SmoothQuant 需要每层在真实数据上看到的输入 X（(N, in)）。做法：在目标层上挂 forward pre-hook，
把 `calib_data`（(B, T) 的 token id）分批喂给模型，hook 记下每次调用的第 0 个参数。共享同一个输入的层
（q/k/v 都吃 input_layernorm 的输出，gate/up 都吃 post_attention_layernorm 的输出）记下的是同一个张量，只存一份。
坑：我们的 Llama 在 token 多时把 q/k/v 三个权重拼成一次 GEMM（Attention.project_qkv 的 fuse_weights），
根本不调用 q_proj.forward。它只在三个投影都是没挂 hook 的普通 nn.Linear 时才拼（llama.py 的 _fusable_linear），
所以挂着校准 hook 的层、换成量化层（没有可拼的 .weight）的层自动走"分开算三个投影"的路径——两条路径数学上相同。

## 3. GPTQ 为什么逐层顺序量化
GPTQ 最小化的是 ||X Wᵀ − X Qᵀ||²，X 是这一层的输入。部署时第 l 层看到的输入来自**已经量化过的**第 0..l−1 层，
带着前面各层的量化误差。论文（Frantar et al. 2022 §4，参考实现 llama.py 的 `llama_sequential`）按解码层依次做：
第 l 层的 X 由"前 l 层已量化"的模型算出来，于是第 l 层的 Hessian 与误差补偿针对的正是它推理时的输入分布，
前面层的误差有一部分被后面的层补偿掉，而不是层层累加。这里的实现：对第 l 个解码层，把校准数据从头跑一遍
（前 l 层已经被换成 GPTQLinear），在第 l 层的目标都收到输入后立刻抛出 _StopForward 截断前向——
代价：第 l 层只跑到第 l 层为止，L 层合计约 (L+1)/2 次完整前向；换来对任何架构都不用知道"层的输入从哪来"。
AWQ、SmoothQuant 只用输入的逐通道统计量（mean|X|、max|X|），对前面层的小误差不敏感，一遍 fp 前向就够。

## 4. 保存格式
一个目录：`model.safetensors`（整个 state_dict：浮点参数 + 量化层的 buffers：码、scale、零点……）+ `config.json`
（模型自己的 save_pretrained 写的，与浮点目录相同）+ `quantization.json`（方案、每个量化层的名字、形状与 options()、
model.safetensors 的 SHA-256）。quantization.json 最后写、写之前先删掉旧的：它就是"这个目录完整"的标记——
保存中途崩溃时目录里没有它，load_quantized 会明确报错，而不是把新权重配上旧方案加载。每个文件都是原子写入。
注意：这不是 transformers 能直接加载的 HF 目录（它会报缺权重并随机初始化）；用 load_quantized。
加载：按 config.json 在 meta 设备上建模型（不分配浮点权重），按记录的名字换上 `cls.empty(**options)`，
核对缺失 / 多余 / 形状 / dtype，再把张量直接装进去（assign）。

## 5. GPT-2 的 Conv1D
GPT-2 的投影是 HF 的 Conv1D：y = x @ W + b，W 是 (in, out)。量化前把它看成权重为 Wᵀ 的 nn.Linear（同一个函数），
量化层的输入输出形状与 Conv1D 相同，直接替换；state_dict 里存的是量化层自己的 buffers，与原布局无关。
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inference_engine.quantization.awq import AWQLinear
from inference_engine.quantization.gptq import GPTQLinear
from inference_engine.quantization.int4 import Int4WeightOnlyLinear
from inference_engine.quantization.int8 import Int8WeightOnlyLinear
from inference_engine.quantization.nf4 import NF4Linear
from inference_engine.quantization.smoothquant import MIN_CALIB_ROWS, SmoothQuantLinear
from model_lab.hf_io import read_hf_config, read_hf_state_dict, tied_parameters
from utils.io import atomic_write, is_smoke
from utils.lesson_cli import lesson_args

__all__ = ["CALIBRATED_SCHEMES", "QUANT_CONFIG_NAME", "SCHEMES", "collect_layer_inputs", "default_targets",
           "load_quantized", "model_nbytes", "quantize", "quantized_modules", "save_quantized", "select_linears",
           "unsupported_layers"]

# ---------------------------------------------------------------------------------------------------
# 1. 方案注册表：名字 -> 替换 nn.Linear 的模块类（接口见各方案文件：from_float / empty / options / dequantize）
# ---------------------------------------------------------------------------------------------------

SCHEMES: dict[str, type[nn.Module]] = {cls.scheme: cls for cls in (
    Int8WeightOnlyLinear, Int4WeightOnlyLinear, GPTQLinear, AWQLinear, SmoothQuantLinear, NF4Linear)}
CALIBRATED_SCHEMES = ("gptq", "awq", "smoothquant")  # 需要校准激活的方案；其余是 RTN / 固定码本，与数据无关
QUANT_CONFIG_NAME = "quantization.json"
FORMAT = "llm-hardcore-quantized"
FORMAT_VERSION = 1
DECODER_LAYER = re.compile(r"^(.*?\.(?:layers|h)\.\d+)\.")  # Llama：model.layers.N.…，GPT-2：transformer.h.N.…


def _scheme_class(scheme: str) -> type[nn.Module]:
    if scheme not in SCHEMES:
        raise ValueError(f"未知的量化方案 {scheme!r}：可用的是 {sorted(SCHEMES)}"
                         "（KV cache 量化不替换线性层：用 kv_cache.quantized_cache_factory 传给 generate）")
    return SCHEMES[scheme]


def _conv1d_type() -> type[nn.Module]:
    return importlib.import_module("model_lab.02_architectures.gpt2").Conv1D


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, _conv1d_type()))


def _as_linear(module: nn.Module) -> nn.Linear:
    """nn.Linear 原样返回；GPT-2 的 Conv1D（y = x @ W + b，W (in, out)）变成权重为 Wᵀ 的 nn.Linear（同一个函数）。"""
    if isinstance(module, nn.Linear):
        return module
    w = module.weight.detach()
    linear = nn.Linear(w.shape[0], w.shape[1], device="meta")  # 不分配内存，下面直接换上真实张量
    linear.weight = nn.Parameter(w.t().contiguous(), requires_grad=False)
    linear.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
    return linear


def _features(module: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, 有无 bias)：nn.Linear、Conv1D 与各量化层都适用。"""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, module.bias is not None
    if isinstance(module, _conv1d_type()):
        return module.weight.shape[0], module.weight.shape[1], True
    return module.in_features, module.out_features, getattr(module, "bias", None) is not None


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """模型里已经量化的层：{名字: 模块}，按模型里的顺序。"""
    kinds = tuple(SCHEMES.values())
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


# ---------------------------------------------------------------------------------------------------
# 2. 选层：include / exclude 按 HF 名字匹配
# ---------------------------------------------------------------------------------------------------


def _matches(name: str, pattern: str) -> bool:
    """pattern 匹配 name：完整名字、最后几段（"q_proj"、"mlp.down_proj"）或 fnmatch 通配（"model.layers.0.*"）。"""
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def default_targets(model: nn.Module) -> list[str]:
    """默认目标：解码层（model.layers.N / transformer.h.N）里的全部线性层，按模型里的顺序。"""
    return [name for name, m in model.named_modules() if _is_linear(m) and DECODER_LAYER.match(name)]


def select_linears(model: nn.Module, include: Iterable[str] | None = None,
                   exclude: Iterable[str] = ("lm_head",)) -> dict[str, nn.Module]:
    """按名字选出要量化的线性层 {名字: 模块}。include=None：default_targets；给了就逐个模式匹配。

    一个模式"点名"了（完整名字或后缀匹配）非线性层 → 报错；一个模式一层线性层都没匹配到 → 报错（多半是拼错了）。
    """
    if isinstance(include, str) or isinstance(exclude, str):
        raise ValueError("include / exclude 是名字模式的列表，例如 include=['q_proj']、exclude=('lm_head',)：单个字符串请放进列表")
    exclude = tuple(exclude or ())
    modules = dict(model.named_modules())
    already = quantized_modules(model)
    if include is None:
        names = default_targets(model)
        if not names and not already:
            raise ValueError(f"{type(model).__name__} 里找不到解码层的线性层（名字形如 model.layers.N.… 或 transformer.h.N.…）："
                             "用 include=[...] 显式给出要量化的层名")
    else:
        names = []
        for pattern in include:
            hit = [n for n, m in modules.items() if n and _matches(n, pattern)]
            named = [n for n in hit if n == pattern or n.endswith("." + pattern)]
            for n in named:
                if n in already:
                    raise ValueError(f"{n} 已经量化成 {type(modules[n]).__name__}：不能再量化一次（从浮点模型重新开始）")
                if not _is_linear(modules[n]):
                    raise ValueError(f"include 的 {pattern!r} 点名了 {n}，它是 {type(modules[n]).__name__}，不是 nn.Linear / Conv1D："
                                     "量化方案只替换线性层（嵌入、归一化层请保持浮点）")
            linear_hits = [n for n in hit if _is_linear(modules[n])]
            if not linear_hits:
                sample = [n for n, m in modules.items() if _is_linear(m)][:6]
                raise ValueError(f"include 的 {pattern!r} 没有匹配到任何线性层：检查拼写，线性层的名字形如 {sample}")
            names += [n for n in linear_hits if n not in names]
    targets = {n: modules[n] for n in names if not any(_matches(n, p) for p in exclude)}
    for n in targets:
        if n.rpartition(".")[2] == "lm_head":
            raise ValueError(f"{n} 不能量化：模型的 forward 直接读 lm_head.weight（KV cache 的 dtype / 设备、融合的交叉熵），"
                             "而且 logits 对它的误差最敏感——保持它浮点（默认 exclude=('lm_head',)，见 apply.py 说明第 1 点）")
    if not targets:
        raise ValueError(f"include / exclude 之后没有要量化的层（exclude={exclude}）")
    return targets


def unsupported_layers(model: nn.Module, scheme: str, include: Iterable[str] | None = None,
                       exclude: Iterable[str] = ("lm_head",), **options) -> dict[str, str]:
    """这些选项下方案做不了的层 {名字: 原因}（例如组大小不整除 in_features）。命令行用它把这些层留在浮点。"""
    cls = _scheme_class(scheme)
    options = {k: v for k, v in options.items() if k != "min_tokens"}
    bad = {}
    for name, module in select_linears(model, include, exclude).items():
        in_f, out_f, bias = _features(module)
        try:
            with torch.device("meta"):
                cls.empty(in_f, out_f, bias, **options)
        except ValueError as e:
            bad[name] = str(e)
    return bad


# ---------------------------------------------------------------------------------------------------
# 3. 校准：forward pre-hook 收集每个目标层的输入
# ---------------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """目标层都拿到输入之后截断前向：后面的层与 lm_head 不用算。"""


def _check_calib_data(calib_data: Tensor | None, scheme: str, targets: dict[str, nn.Module], options: dict) -> Tensor:
    if calib_data is None:
        raise ValueError(f"{scheme} 需要校准数据 calib_data：(B, T) 的 token id（几百到几千个 token 的真实文本），"
                         "模型在上面跑一遍，每层记下自己的输入激活")
    if not isinstance(calib_data, Tensor) or calib_data.dim() != 2 or calib_data.is_floating_point() \
            or calib_data.dtype == torch.bool or calib_data.is_complex():
        what = f"{tuple(calib_data.shape)} {calib_data.dtype}" if isinstance(calib_data, Tensor) else type(calib_data).__name__
        raise ValueError(f"calib_data 应为 (B, T) 的整数 token id 张量，收到 {what}："
                         "一维的 token 流请先 reshape 成 (B, T)（T ≤ 模型的最大长度）")
    if scheme == "gptq":
        need = options.get("min_tokens") or max(_features(m)[0] for m in targets.values())
        why = "GPTQ 的 Hessian 是 in×in 的，token 少于最宽一层的 in_features 时它是奇异的"
    elif scheme == "awq":
        need, why = options.get("min_tokens", 64), "AWQ 的逐通道 mean|X| 与 α 搜索需要足够的样本"
    else:
        need, why = MIN_CALIB_ROWS, "SmoothQuant 的逐通道 max|X| 由太少的 token 决定时不可靠"
    if calib_data.numel() < need:
        raise ValueError(f"校准数据只有 {calib_data.numel()} 个 token（{tuple(calib_data.shape)}），{scheme} 至少要 {need} 个"
                         f"（{why}）：多给一些校准文本")
    return calib_data.long()


@torch.no_grad()
def collect_layer_inputs(model: nn.Module, modules: dict[str, nn.Module], calib_data: Tensor, *, batch_size: int = 8,
                         stop_early: bool = False) -> dict[str, Tensor]:
    """把 calib_data (B, T) 分批跑过模型，返回每个目标层见到的输入 {名字: (B·T, in)}。

    stop_early=True：每批在所有目标都拿到输入后就截断前向（GPTQ 逐层时用，后面的层不必算）。
    同一个张量喂给几个层时（q/k/v）只存一份、只拼接一次。q/k/v 在目标里时，挂上的 hook 让注意力模块自动走分开的
    三个投影（模块说明第 2 点），hook 才收得到。
    """
    seen: dict[str, list[Tensor]] = {name: [] for name in modules}
    stored: dict[int, tuple[Tensor, Tensor]] = {}  # id(原始输入) -> (原始输入（保活，id 不会被复用）, 展平的副本)
    fired: set[str] = set()

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if id(x) not in stored:
                stored[id(x)] = (x, x.detach().reshape(-1, x.shape[-1]))
            seen[name].append(stored[id(x)][1])
            fired.add(name)
            if stop_early and len(fired) == len(modules):
                raise _StopForward
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in modules.items()]
    try:
        for chunk in calib_data.split(batch_size):
            fired.clear()
            stored.clear()
            try:
                model(chunk)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, xs in seen.items() if not xs]
    if missing:
        raise ValueError(f"这些层在前向里没有被调用，收集不到校准激活：{missing[:6]}——它们不参与这个模型的计算，"
                         "请用 exclude 去掉")
    out, cat_cache = {}, {}
    for name, xs in seen.items():
        key = tuple(id(x) for x in xs)
        if key not in cat_cache:
            cat_cache[key] = torch.cat(xs)
        out[name] = cat_cache[key]
    return out


# ---------------------------------------------------------------------------------------------------
# 4. quantize：选层 → （校准）→ 逐个替换
# ---------------------------------------------------------------------------------------------------


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)


def _quantize_one(cls: type[nn.Module], name: str, module: nn.Module, calib_inputs: Tensor | None,
                  options: dict) -> nn.Module:
    try:
        return cls.from_float(_as_linear(module), calib_inputs=calib_inputs, **options)
    except ValueError as e:
        raise ValueError(f"量化 {name}（{cls.scheme}）失败：{e}") from e


def _units(names: list[str]) -> list[list[str]]:
    """GPTQ 的顺序单元：同一个解码层的目标一组，按模型顺序；不在解码层里的（lm_head）各自一组。"""
    units: dict[str, list[str]] = {}
    for name in names:
        m = DECODER_LAYER.match(name)
        units.setdefault(m.group(1) if m else name, []).append(name)
    return list(units.values())


def quantize(model: nn.Module, scheme: str, calib_data: Tensor | None = None, *, include: Iterable[str] | None = None,
             exclude: Iterable[str] = ("lm_head",), batch_size: int = 8, **options) -> nn.Module:
    """把模型里选中的线性层就地换成 scheme 的量化层，返回同一个模型（eval 模式）。

    calib_data：(B, T) 的 token id，gptq / awq / smoothquant 必须给（其余方案不用，给了也忽略）；
    include / exclude：名字模式（见 select_linears），默认解码层的全部线性层、不含 lm_head；
    options：传给方案的 from_float（例如 group_size=64、bits=4、alpha=0.5），对所有层相同。
    """
    cls = _scheme_class(scheme)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} 必须是正整数（校准时每次前向的序列数）")
    targets = select_linears(model, include, exclude)
    model.eval()  # 校准与推理都不要 dropout
    if scheme not in CALIBRATED_SCHEMES:
        for name, module in targets.items():
            _replace(model, name, _quantize_one(cls, name, module, None, options))
        return model
    calib = _check_calib_data(calib_data, scheme, targets, options).to(next(model.parameters()).device)
    # GPTQ 逐个解码层：第 l 层的输入由"前 l 层已量化"的模型算出（模块说明第 3 点）；其余方案一遍 fp 前向
    units = _units(list(targets)) if scheme == "gptq" else [list(targets)]
    for unit in units:
        inputs = collect_layer_inputs(model, {n: targets[n] for n in unit}, calib, batch_size=batch_size,
                                      stop_early=scheme == "gptq")
        for name in unit:
            _replace(model, name, _quantize_one(cls, name, targets[name], inputs.pop(name), options))
    return model


def model_nbytes(model: nn.Module) -> int:
    """模型的存储字节数：state_dict 里每个张量一次（共享的 lm_head 只算一次），= model.safetensors 的数据部分。"""
    aliases = tied_parameters(model)
    return sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k not in aliases)


# ---------------------------------------------------------------------------------------------------
# 5. 保存与加载
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Architecture:
    model_type: str
    hf_architectures: tuple[str, ...]
    model_cls: Callable[[], type[nn.Module]]
    build: Callable[[dict, str], nn.Module]  # (config.json 的内容, attn_implementation) -> 模型
    after_load: Callable[[nn.Module, Any], None]  # 重建 meta 上留下的非持久 buffer
    ignored_suffixes: tuple[str, ...] = ()


def _llama_cls():
    from model_lab import Llama
    return Llama


def _gpt2_cls():
    from model_lab import GPT2
    return GPT2


def _build_llama(raw: dict, attn_implementation: str) -> nn.Module:
    from model_lab import Llama, LlamaConfig
    return Llama(LlamaConfig.from_dict({**raw, "attn_implementation": attn_implementation}))


def _build_gpt2(raw: dict, attn_implementation: str) -> nn.Module:
    import dataclasses

    from model_lab import GPT2
    gpt2 = importlib.import_module("model_lab.02_architectures.gpt2")
    return GPT2(dataclasses.replace(gpt2.config_from_hf_dict(raw), attn_implementation=attn_implementation))


ARCHITECTURES = {
    "llama": _Architecture("llama", ("LlamaForCausalLM",), _llama_cls, _build_llama,
                           lambda model, device: model.model.rotary_emb.reset_inv_freq(device), ("rotary_emb.inv_freq",)),
    "gpt2": _Architecture("gpt2", ("GPT2LMHeadModel",), _gpt2_cls, _build_gpt2, lambda model, device: None),
}


def _architecture_of(model: nn.Module) -> _Architecture:
    for arch in ARCHITECTURES.values():
        if isinstance(model, arch.model_cls()):
            return arch
    raise ValueError(f"save_quantized 只支持 {[a.model_cls().__name__ for a in ARCHITECTURES.values()]}，"
                     f"收到 {type(model).__name__}：其他模型请自己保存 state_dict")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_quantized(model: nn.Module, save_dir: str | os.PathLike) -> Path:
    """写出量化目录：model.safetensors + config.json（模型自己的 save_pretrained）+ 最后写 quantization.json。"""
    layers = quantized_modules(model)
    if not layers:
        raise ValueError("模型里没有量化层：先 quantize(model, scheme, ...)；浮点模型请用 model.save_pretrained")
    schemes = sorted({m.scheme for m in layers.values()})
    if len(schemes) > 1:
        raise ValueError(f"一个目录只存一种方案，这个模型混用了 {schemes}：分别量化、分别保存")
    arch = _architecture_of(model)
    save_dir = Path(save_dir)
    (save_dir / QUANT_CONFIG_NAME).unlink(missing_ok=True)  # 先撤掉旧的"完整"标记：中途崩溃时不会新旧混搭
    model.save_pretrained(save_dir)  # 每个文件原子写入；state_dict 里已经是量化层的 buffers
    info = {
        "format": FORMAT, "version": FORMAT_VERSION, "scheme": schemes[0], "model_type": arch.model_type,
        "modules": {name: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
                           "options": m.options()} for name, m in layers.items()},
        "model_safetensors_sha256": _sha256(save_dir / "model.safetensors"),
    }
    atomic_write(save_dir / QUANT_CONFIG_NAME, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return save_dir


def _read_quant_config(load_dir: Path) -> dict:
    path = load_dir / QUANT_CONFIG_NAME
    if not load_dir.is_dir():
        raise FileNotFoundError(f"量化目录 {load_dir} 不存在")
    if not path.is_file():
        raise ValueError(f"{load_dir} 里没有 {QUANT_CONFIG_NAME}：它不是 save_quantized 写出的完整目录"
                         "（保存中断，或者是浮点模型目录——那请用 Llama.from_pretrained / GPT2.from_pretrained）")
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT or info.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} 的格式是 {info.get('format')!r} v{info.get('version')}，这里只认 {FORMAT!r} v{FORMAT_VERSION}")
    return info


def _check_state(state: dict[str, Tensor], expected: dict[str, Tensor], layers: dict[str, nn.Module], scheme: str,
                 load_dir: Path) -> None:
    """缺失 / 多余 / 形状 / dtype：报清楚是哪个量化层、和方案的什么对不上。"""
    def owner(key: str) -> str | None:
        return next((n for n in layers if key.startswith(n + ".")), None)

    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        q_keys = [k for k in missing + unexpected if owner(k)]
        hint = (f"量化层的 buffer 与 quantization.json 记录的方案 {scheme!r} 及其选项不符（例如 {q_keys[:3]}）："
                "这个目录的权重不是用这个方案存的") if q_keys else "浮点部分与 config.json 推出的结构不符"
        raise ValueError(f"{load_dir}：{hint}；缺少 {missing[:6]}，多出 {unexpected[:6]}")
    for key, ref in expected.items():
        got = state[key]
        if got.shape != ref.shape or (owner(key) and got.dtype != ref.dtype):
            raise ValueError(f"{load_dir}：{key} 在文件里是 {tuple(got.shape)} {got.dtype}，按 {scheme!r} 的选项"
                             f"应为 {tuple(ref.shape)} {ref.dtype}：quantization.json 的选项与权重不配套")


def load_quantized(load_dir: str | os.PathLike, model_cls: type[nn.Module] | None = None, *,
                   scheme: str | None = None, device: torch.device | str | None = None,
                   attn_implementation: str = "sdpa") -> nn.Module:
    """读 save_quantized 写出的目录，返回 eval 模式的量化模型。

    model_cls：Llama / GPT2（None = 按 quantization.json 记录的架构）；scheme：给了就核对目录里的方案是不是它。
    """
    load_dir = Path(load_dir)
    info = _read_quant_config(load_dir)
    recorded, arch = info["scheme"], ARCHITECTURES.get(info.get("model_type"))
    cls = _scheme_class(recorded)
    if scheme is not None and scheme != recorded:
        raise ValueError(f"{load_dir} 存的是 {recorded!r} 量化的模型，不是要求的 {scheme!r}：换目录，或不传 scheme")
    if arch is None:
        raise ValueError(f"{load_dir} 记录的架构 {info.get('model_type')!r} 不支持：只有 {sorted(ARCHITECTURES)}")
    if model_cls is not None and model_cls is not arch.model_cls():
        raise ValueError(f"{load_dir} 是 {arch.model_cls().__name__} 的量化目录，不能用 {model_cls.__name__} 加载")
    sha = _sha256(load_dir / "model.safetensors") if (load_dir / "model.safetensors").is_file() else None
    if sha != info.get("model_safetensors_sha256"):
        raise ValueError(f"{load_dir}/model.safetensors 与 {QUANT_CONFIG_NAME} 不配套（SHA-256 不同或文件缺失）："
                         "文件被改过或换过，请重新 save_quantized")
    raw = read_hf_config(load_dir, model_type=arch.model_type, architectures=arch.hf_architectures)
    with torch.device("meta"):  # 浮点部分只建形状：不分配、不随机初始化
        model = arch.build(raw, attn_implementation)
    modules = dict(model.named_modules())
    layers = {}
    for name, rec in info["modules"].items():
        if name not in modules or not _is_linear(modules[name]):
            raise ValueError(f"{QUANT_CONFIG_NAME} 记录的量化层 {name} 在按 config.json 建出的模型里"
                             f"{'不存在' if name not in modules else '不是线性层'}：两个文件不属于同一个模型")
        in_f, out_f, bias = _features(modules[name])
        if (in_f, out_f, bias) != (rec["in_features"], rec["out_features"], rec["bias"]):
            raise ValueError(f"{name}：{QUANT_CONFIG_NAME} 记录的形状 {(rec['in_features'], rec['out_features'], rec['bias'])} "
                             f"与 config.json 推出的 {(in_f, out_f, bias)} 不同")
        try:
            with torch.device("cpu"):  # 量化层的非持久 buffer（NF4 的码本）要有真实的值，不能留在 meta 上
                layers[name] = cls.empty(in_f, out_f, bias, **rec["options"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{load_dir}：{QUANT_CONFIG_NAME} 给 {name} 记录的方案 {recorded!r} 与选项 {rec['options']} "
                             f"对不上：{e}") from e
        _replace(model, name, layers[name])
    aliases = tied_parameters(model)
    state = {k: v for k, v in read_hf_state_dict(load_dir).items()
             if not k.endswith(arch.ignored_suffixes) and k not in aliases}
    expected = {k: v for k, v in model.state_dict().items() if k not in aliases}
    _check_state(state, expected, layers, recorded, load_dir)
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False, assign=True)
    for alias, source in aliases.items():  # assign 换掉了主参数，别名还指着 meta 上的旧参数：重新绑定
        owner, _, leaf = alias.rpartition(".")
        setattr(model.get_submodule(owner), leaf, model.get_parameter(source))
    arch.after_load(model, device)
    for layer in layers.values():
        layer.to(device)
    left_on_meta = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise ValueError(f"加载后仍有张量没有值（meta）：{left_on_meta[:6]}——这个架构的加载还缺一步重建")
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# 6. 演示：随机小 Llama，每种方案量化、logits SQNR、保存加载往返
# ---------------------------------------------------------------------------------------------------


def main() -> None:
    import copy
    import tempfile

    from inference_engine.quantization.basics import sqnr
    from model_lab import Llama, LlamaConfig
    from utils.torch_playground import setup_seed

    setup_seed(0)
    smoke = is_smoke()
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2 if smoke else 4,
                         num_attention_heads=4, max_position_embeddings=128)
    fp = Llama(config).eval()
    calib = torch.randint(0, 256, (4, 64))
    x = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        ref = fp(x)
    print(f"随机 Llama（{config.num_hidden_layers} 层、hidden 128）：默认量化 {len(default_targets(fp))} 个解码层线性层，"
          f"lm_head 与嵌入保持浮点；fp32 {model_nbytes(fp) / 1024:.0f} KiB")
    print(f"{'方案':<12}{'字节 (KiB)':>12}{'logits SQNR':>14}{'往返逐位相同':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in SCHEMES:
            model = quantize(copy.deepcopy(fp), scheme, calib if scheme in CALIBRATED_SCHEMES else None)
            with torch.no_grad():
                out = model(x)
                back = load_quantized(save_quantized(model, Path(tmp) / scheme))(x)
            print(f"{scheme:<12}{model_nbytes(model) / 1024:>12.0f}{sqnr(ref, out):>13.1f} {str(torch.equal(out, back)):>13}")
    print("（随机权重的模型上 SQNR 只说明实现对不对；真实模型上的 bits/byte 见 python -m inference_engine.quantization"
          " 与 benchmarks/quantization_quality.py）")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
