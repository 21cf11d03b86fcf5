"""Hugging Face 模型目录的读写：所有模型的 from_pretrained / save_pretrained 共用这一份。

一个 HF 目录 = config.json + model.safetensors（或分片：model-0000x-of-0000y.safetensors + model.safetensors.index.json）。
读法（自上而下）：
1. read_hf_config —— 读 config.json，核对 model_type / architectures（别把 GPT-2 的目录当 Llama 加载）。
2. read_hf_state_dict —— 读单文件或分片的 safetensors。
3. load_hf_directory —— 在 meta 设备上建模型（不分配内存、不做随机初始化），核对缺失 / 多余 / 形状，
   把读到的张量直接装进去（assign），再把共享的权重（lm_head 与词嵌入）重新绑定。
4. save_hf_directory —— 先原子地写权重，最后写 config.json；共享的 lm_head 不写。

每个模型自己的部分（config 的字段映射、checkpoint 里要忽略的键、键的改名——例如 GPT-2 的旧 checkpoint
没有 "transformer." 前缀）留在模型文件里，作为参数传进来。

dtype 策略（两个模型相同）：from_pretrained(dir, device=None, dtype=None) 在 dtype=None 时保持文件里的 dtype
（bf16 的 checkpoint 加载出来还是 bf16，与 HF 的 dtype="auto" 相同），给了 dtype 才转换浮点张量。

为什么 config.json 最后写：写到一半崩溃时目录里没有 config.json，from_pretrained 会明确报"不是模型目录"，
而不是加载出一份截断的权重。每个文件都经 utils.io.atomic_path（临时文件 + rename）。
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from utils.io import atomic_path, atomic_write

__all__ = ["load_hf_directory", "read_hf_config", "read_hf_state_dict", "save_hf_directory", "tied_parameters"]


def read_hf_config(load_dir: str | os.PathLike, *, model_type: str, architectures: Sequence[str]) -> dict[str, Any]:
    """读 config.json；model_type 不等于 model_type、或 architectures 与允许的类都不相交时报错。"""
    load_dir = Path(load_dir)
    if not load_dir.is_dir():
        raise FileNotFoundError(f"模型目录 {load_dir} 不存在：from_pretrained 需要 HF 格式的目录"
                                "（config.json + model.safetensors）")
    config_file = load_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{load_dir} 里没有 config.json：这不是 save_pretrained 写出的模型目录")
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    archs = raw.get("architectures") or [architectures[0]]
    if raw.get("model_type") != model_type or not set(archs) & set(architectures):
        raise ValueError(f"{load_dir} 是 model_type={raw.get('model_type')!r}、architectures={archs} 的模型，"
                         f"不是 {architectures[0]}（model_type={model_type!r}）：请用对应架构的类加载它")
    return raw


def read_hf_state_dict(load_dir: str | os.PathLike) -> dict[str, Tensor]:
    """model.safetensors，或按 model.safetensors.index.json 读全部分片。"""
    from safetensors.torch import load_file

    load_dir = Path(load_dir)
    single, index = load_dir / "model.safetensors", load_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(load_dir / shard)).items()}
    raise FileNotFoundError(f"{load_dir} 里没有 model.safetensors（或 model.safetensors.index.json）；只支持 safetensors，"
                            "旧的 pytorch_model.bin 请先用 transformers 加载再 save_pretrained 转成 safetensors")


def tied_parameters(model: nn.Module) -> dict[str, str]:
    """共享权重：{别名: 第一次出现的名字}，例如 {"lm_head.weight": "model.embed_tokens.weight"}。"""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _short(names: list[str]) -> str:
    return f"{names[:8]}{'…' if len(names) > 8 else ''}"


def load_hf_directory(load_dir: str | os.PathLike, *, model_type: str, architectures: Sequence[str],
                      build: Callable[[dict[str, Any]], nn.Module], device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None,
                      rename_keys: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
                      ignored_suffixes: tuple[str, ...] = (),
                      after_load: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """读一个 HF 目录并装进模型，返回 eval 模式的模型。

    build(raw_config) 返回一个新模型（在 meta 设备上构造：参数只有形状）；rename_keys 把 checkpoint 的键改成模型的
    键；以 ignored_suffixes 结尾的键（旧 checkpoint 里的掩码 buffer、RoPE 频率之类由 config 决定的东西）被丢弃；
    after_load(model) 重建 meta 上留下的非持久 buffer（它们不在 checkpoint 里）。
    """
    raw = read_hf_config(load_dir, model_type=model_type, architectures=architectures)
    state = read_hf_state_dict(load_dir)
    if rename_keys is not None:
        state = rename_keys(state)
    state = {k: v for k, v in state.items() if not k.endswith(ignored_suffixes)}

    with torch.device("meta"):
        model = build(raw)
    aliases = tied_parameters(model)
    for alias in aliases:
        state.pop(alias, None)  # 共享时 HF 也可能写了一份别名，内容相同；按主名字加载一次
    expected = {k: v for k, v in model.state_dict().items() if k not in aliases}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{load_dir} 的权重与 config 推出的结构不匹配：缺少 {_short(missing)}；多出 {_short(unexpected)}"
                         "（检查 config.json 是否属于这份权重）")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise ValueError(f"权重 {k} 的形状 {tuple(state[k].shape)} 与 config 推出的 {tuple(v.shape)} 不一致")
    state = {k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else None)
             for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    for alias, source in aliases.items():  # assign 换掉了主参数对象，别名还指着 meta 上的旧参数：重新绑定
        owner, _, leaf = alias.rpartition(".")
        setattr(model.get_submodule(owner), leaf, model.get_parameter(source))
    if after_load is not None:
        after_load(model)
    return model.eval()


def save_hf_directory(model: nn.Module, save_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    """写出 HF 目录：model.safetensors（共享权重只写主名字，与 HF 相同）+ config.json（加上权重的 dtype）。"""
    from safetensors.torch import save_file

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    aliases = tied_parameters(model)
    # safetensors 不允许两个键共享存储；HF 加载时由 tie_word_embeddings 重新绑定
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in aliases}
    with atomic_path(save_dir / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})  # HF 要求 metadata 里标明 format=pt
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    config = {**config, "dtype": str(dtype).removeprefix("torch.")}
    atomic_write(save_dir / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    return save_dir
