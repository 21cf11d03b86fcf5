"""训练 checkpoint：Hugging Face 模型目录 + 训练状态文件，原子写入，可以一位不差地续训。

一次运行的目录（checkpoints/<run>/）：

    latest                    一行文字：最新完整 checkpoint 的子目录名（例如 step_000500）
    step_000500/
        model.safetensors     权重（Llama.save_pretrained 写出；AutoModelForCausalLM.from_pretrained 可直接加载）
        config.json           transformers 的 LlamaConfig
        training_state.pt     优化器、学习率调度器、所有随机数状态、数据采样器状态、步数、训练配置
        char_vocab.json / tokenizer.json   解码需要的词表（有则写）

为什么是"子目录 + latest 指针"，而不是每次覆盖同一个目录：一个 checkpoint 由几个文件组成，
每个文件单独原子写入（临时文件 + rename）还不够——写到一半崩溃时，目录里会是新权重配旧优化器状态。
先把新 checkpoint 完整地写进一个新子目录，最后一步才原子地改写 latest；崩溃在任何时刻发生，
latest 指向的都是一个完整的、自洽的 checkpoint（Megatron-LM 的 latest_checkpointed_iteration.txt 也是这么做的）。

训练状态里记下 model.safetensors 的 SHA-256：恢复时对一遍，权重文件被截断或被换过会立刻报错。
"""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.io import atomic_path, atomic_write

STATE_FILE = "training_state.pt"
WEIGHTS_FILE = "model.safetensors"
LATEST_FILE = "latest"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """checkpoint 缺失、被截断或与当前配置不兼容。"""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# 随机数状态
# ---------------------------------------------------------------------------
def capture_rng_state(data_generator: torch.Generator) -> dict[str, Any]:
    """所有会影响训练的随机源。numpy 的状态转成张量和整数，这样 torch.load(weights_only=True) 能读。"""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_cached)),
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": data_generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], data_generator: torch.Generator) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_name, np_keys, np_pos, np_has_gauss, np_cached = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_cached))
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available() and state["torch_cuda"]:
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    data_generator.set_state(state["data"])


def _as_tuple(x: Any) -> Any:
    # random.setstate 要求嵌套的 tuple；保险起见把 list 转回 tuple
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------
# 写
# ---------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, model: torch.nn.Module, state: dict[str, Any],
                    extra_files: dict[str, str] | None = None, keep: int = 2) -> Path:
    """写出 run_dir/step_XXXXXX/（完整后才更新 latest），只保留最近 keep 个；返回新目录。

    state 至少要有 "step"；model 要有 save_pretrained（本项目的 Llama）。
    """
    run_dir = Path(run_dir)
    step = int(state["step"])
    ckpt_dir = run_dir / step_dir_name(step)
    if ckpt_dir.exists():
        pointer = run_dir / LATEST_FILE
        if pointer.is_file() and pointer.read_text(encoding="utf-8").strip() == ckpt_dir.name:
            raise CheckpointError(f"{ckpt_dir} 已经是 latest 指向的完整 checkpoint，不能原地覆盖")
        shutil.rmtree(ckpt_dir)  # 上次写到一半崩溃留下的残骸（latest 从没指向它）
    model.save_pretrained(ckpt_dir)
    for name, content in (extra_files or {}).items():
        atomic_write(ckpt_dir / name, content)
    payload = dict(state, format_version=FORMAT_VERSION, weights_sha256=sha256_file(ckpt_dir / WEIGHTS_FILE))
    with atomic_path(ckpt_dir / STATE_FILE) as tmp:
        torch.save(payload, tmp)
    atomic_write(run_dir / LATEST_FILE, ckpt_dir.name + "\n")  # 提交点：此刻之前崩溃，latest 仍指向旧的完整 checkpoint
    _prune(run_dir, keep, ckpt_dir.name)
    return ckpt_dir


def _prune(run_dir: Path, keep: int, latest: str) -> None:
    old = sorted(p for p in run_dir.glob("step_*") if p.is_dir() and p.name != latest)
    for p in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------
# 读
# ---------------------------------------------------------------------------
def latest_checkpoint(run_dir: Path) -> Path | None:
    """latest 指向的目录；没有 latest 返回 None。"""
    pointer = Path(run_dir) / LATEST_FILE
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    ckpt = Path(run_dir) / name
    if not name or not ckpt.is_dir():
        raise CheckpointError(f"{pointer} 指向 {name!r}，但这个目录不存在：checkpoint 被删掉或移动了")
    return ckpt


def load_checkpoint(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """读出 (模型权重 state_dict, 训练状态)，逐项检查完整性；任何问题都是 CheckpointError。"""
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    weights, state_file = ckpt_dir / WEIGHTS_FILE, ckpt_dir / STATE_FILE
    for f in (weights, state_file):
        if not f.is_file():
            raise CheckpointError(f"{f} 不存在：{ckpt_dir} 不是完整的训练 checkpoint")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as e:  # 截断的 zip、错误的格式……
        raise CheckpointError(f"{state_file} 读不出来（{type(e).__name__}: {str(e)[:200]}）：文件被截断或损坏；"
                              "删掉这个 step 目录并把 latest 改成上一个 checkpoint，或从头训练") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{state_file} 不是本训练循环（格式版本 {FORMAT_VERSION}）写出的训练状态")
    if sha256_file(weights) != state["weights_sha256"]:
        raise CheckpointError(f"{weights} 的 SHA-256 与训练状态里记录的不一致：权重文件被截断或替换过")
    try:
        tensors = load_file(str(weights))
    except Exception as e:
        raise CheckpointError(f"{weights} 读不出来（{type(e).__name__}: {e}）：文件损坏") from None
    return tensors, state


__all__ = ["CheckpointError", "capture_rng_state", "latest_checkpoint", "load_checkpoint", "restore_rng_state",
           "save_checkpoint", "sha256_file", "step_dir_name"]
