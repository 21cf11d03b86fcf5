"""model_lab：Transformer 组件（01_components/）与完整模型（02_architectures/）。

目录名以数字开头，import 语句写不出来，所以这里是模型实验室的"门面"：
其他阶段只写 `from model_lab import Llama, LlamaConfig, GPT2, GPT2Config`，
由本文件用 importlib 去加载编号目录里的模块。

导入 model_lab 本身很便宜：真正的模块在第一次访问某个名字时才加载（PEP 562 的模块级 __getattr__，见 utils/lazy.py）。
"""

from __future__ import annotations

from utils.lazy import lazy_exports

# 公开名字 -> 定义它的模块
_EXPORTS = {
    "Llama": "model_lab.02_architectures.llama",
    "LlamaConfig": "model_lab.02_architectures.llama",
    "build_llama_hf_reference": "model_lab.02_architectures.llama",
    "GPT2": "model_lab.02_architectures.gpt2",
    "GPT2Config": "model_lab.02_architectures.gpt2",
    "build_gpt2_hf_reference": "model_lab.02_architectures.gpt2",
    "ATTENTION_BACKENDS": "model_lab.attention_backends",
    "AttentionBackend": "model_lab.attention_backends",
    "eager_attention": "model_lab.attention_backends",
    "get_attention_backend": "model_lab.attention_backends",
    "register_attention_backend": "model_lab.attention_backends",
    "sdpa_attention": "model_lab.attention_backends",
    "KERNEL_BACKENDS": "model_lab.kernel_backends",
    "KernelBackend": "model_lab.kernel_backends",
    "get_kernel_backend": "model_lab.kernel_backends",
    "register_kernel_backend": "model_lab.kernel_backends",
    "AttnMetadata": "model_lab.kv_cache",
    "KVCache": "model_lab.kv_cache",
    "PagedKVCache": "model_lab.kv_cache",
    "pack_sequences": "model_lab.kv_cache",
    "generate": "model_lab.generation",
    "process_logits": "model_lab.generation",
    "sample_next_token": "model_lab.generation",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
