"""分布式训练：从 torch.distributed 的集合通信原语搭起 DDP、ZeRO、FSDP、张量 / 流水线 / 上下文并行。

每种并行一个文件（picotron 的做法），朴素版在前、真正用的版本在后，都附中文推导；
`launch.py` 起进程、建进程组（课程与测试用 spawn，真正训练用 torchrun），`mesh.py` 把 rank 排成 pp × dp × cp × tp 的网格。
"""

from __future__ import annotations

from utils.lazy import lazy_exports

_EXPORTS = {
    "DistributedError": "training_sys.distributed.launch",
    "default_backend": "training_sys.distributed.launch",
    "init_from_env": "training_sys.distributed.launch",
    "spawn": "training_sys.distributed.launch",
    "ParallelMesh": "training_sys.distributed.mesh",
    "ZeroOptimizer": "training_sys.distributed.zero",
    "ZeroStrategy": "training_sys.distributed.zero",
    "held_bytes": "training_sys.distributed.zero",
    "DDPStrategy": "training_sys.distributed.ddp",
    "DataParallelBucketed": "training_sys.distributed.ddp",
    "DataParallelNaive": "training_sys.distributed.ddp",
    "PARALLEL_CHOICES": "training_sys.distributed.parallel",
    "build_strategy": "training_sys.distributed.parallel",
    "check_same_config": "training_sys.distributed.parallel",
    "ColumnParallelLinear": "training_sys.distributed.tensor_parallel",
    "ParallelAttention": "training_sys.distributed.tensor_parallel",
    "ParallelMLP": "training_sys.distributed.tensor_parallel",
    "RowParallelLinear": "training_sys.distributed.tensor_parallel",
    "SequenceParallelRMSNorm": "training_sys.distributed.tensor_parallel",
    "TensorParallelLlama": "training_sys.distributed.tensor_parallel",
    "TensorParallelStrategy": "training_sys.distributed.tensor_parallel",
    "VocabParallelEmbedding": "training_sys.distributed.tensor_parallel",
    "apply_tensor_parallel": "training_sys.distributed.tensor_parallel",
    "vocab_parallel_cross_entropy": "training_sys.distributed.tensor_parallel",
    "RingWork": "training_sys.distributed.context_parallel",
    "chunk_ids": "training_sys.distributed.context_parallel",
    "merge_sequence": "training_sys.distributed.context_parallel",
    "planned_work": "training_sys.distributed.context_parallel",
    "ring_attention": "training_sys.distributed.context_parallel",
    "split_sequence": "training_sys.distributed.context_parallel",
    "FSDPStrategy": "training_sys.distributed.fsdp",
    "ShardedModel": "training_sys.distributed.fsdp",
    "shard_model": "training_sys.distributed.fsdp",
    "LlamaStage": "training_sys.distributed.pipeline_parallel",
    "PipelineStepResult": "training_sys.distributed.pipeline_parallel",
    "bubble_fraction": "training_sys.distributed.pipeline_parallel",
    "gpipe_step": "training_sys.distributed.pipeline_parallel",
    "one_f_one_b_step": "training_sys.distributed.pipeline_parallel",
    "plot_schedules": "training_sys.distributed.pipeline_parallel",
    "replay_timeline": "training_sys.distributed.pipeline_parallel",
    "PipelineStrategy": "training_sys.distributed.pipeline_parallel",
    "ContextParallelStrategy": "training_sys.distributed.context_parallel",
    "ring_attention_backend": "training_sys.distributed.context_parallel",
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
