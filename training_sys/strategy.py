"""训练步的"策略"接口：分布式训练要改的每一处都是这里的一个钩子，训练循环本身一行不用分叉。

`training_sys.pretrain.train(cfg, strategy=...)` 只通过 `TrainStrategy` 的钩子碰"设备之间怎么协作"这件事；
单卡用默认的 `SingleDevice`（每个钩子都是最直接的单进程写法）。心里的模型是 torch DDP 与 picotron：

    DDP(model)                     → wrap_model：前向走包装后的模型，反向时它按桶 all-reduce 梯度
    for mb in micro_batches: ...   → forward_backward：一步的前向 + 反向；默认是梯度累积（pretrain.accumulate_step），
                                     流水线并行换成 1F1B / GPipe 调度，上下文并行先把每条序列切给各 rank
    with ddp.no_sync(): ...        → no_sync：梯度累积时，前 K-1 个 micro-batch 只在本地累加，最后一个才同步
    loss.backward()                → backward：DeepSpeed / fp16 loss scaling 会换成自己的 backward
    dist.all_reduce(tokens)        → global_tokens / reduce_loss：日志里的 loss 与 token 数是全体 rank 的
    clip_grad_norm_(...)           → clip_grad_norm：ZeRO-2/3、FSDP 的梯度是切片，范数要先各算平方和再 all-reduce
    if rank == 0: save / log       → is_main_process / runs_evaluation：谁写文件、谁打印、谁做评估
    FSDP.state_dict_type(FULL)     → full_state / load_full_state：checkpoint 存的总是完整（未切分）的权重与优化器状态
    评估前把权重收齐               → eval_models：流水线并行的每个 rank 只训练自己那一段，评估前要先把各段收到 rank 0

为什么不把这些写成循环里的 `if distributed:`？因为每多一种并行（DDP、ZeRO-1/2、FSDP、TP、PP），这样的分支就多一套，
循环很快变成没人敢改的样子；picotron 也是"每种并行一个包装器，训练循环只有一份"。新的并行方式在
`training_sys/distributed/` 里继承 `SingleDevice`、只覆盖它真正要改的钩子即可。

每个钩子的语义都按"所有 rank 同时调用"来写：凡是内部做了集合通信（all-reduce、gather）的钩子，
每个 rank 都必须在同一个位置调用它，否则会互相等待（死锁）。训练循环保证这一点。
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["STRATEGY_HOOKS", "SingleDevice", "TrainStrategy"]


@runtime_checkable
class TrainStrategy(Protocol):
    """训练循环依赖的全部钩子（结构化类型：任何实现了这些方法与属性的对象都可以传给 train）。

    data_parallel_size：梯度在多少份数据之间做平均（DDP 的 world size；TP 组内的 rank 看同一份数据，不算）。
    data_parallel_rank：本 rank 在数据并行维上的序号：每步的全局 batch 按它切片，第 r 份归第 r 个数据并行 rank。
    """

    data_parallel_size: int
    data_parallel_rank: int

    @property
    def is_main_process(self) -> bool: ...

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer: ...

    @property
    def runs_evaluation(self) -> bool: ...

    def wrap_model(self, model: nn.Module) -> nn.Module: ...

    def forward_backward(self, model: nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                         autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                         sync_model: nn.Module | None = None) -> torch.Tensor: ...

    def eval_models(self, model: nn.Module, fwd_model: nn.Module
                    ) -> contextlib.AbstractContextManager[tuple[nn.Module, nn.Module]]: ...

    def no_sync(self, model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def global_tokens(self, local_tokens: int) -> int: ...

    def reduce_loss(self, loss: torch.Tensor) -> float: ...

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor: ...

    def stop_requested(self, local: bool) -> bool: ...

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                   ) -> contextlib.AbstractContextManager[tuple[nn.Module, dict[str, Any]]]: ...

    def load_full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                        model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any], strict: bool) -> None: ...


# 协议里的全部名字（报错时列出缺了哪些）；Python 3.12 才有 __protocol_attrs__，这里自己数
STRATEGY_HOOKS = tuple(sorted({*TrainStrategy.__annotations__, *(n for n in vars(TrainStrategy) if not n.startswith("_"))}))


class SingleDevice:
    """单进程、单设备：每个钩子都是最直接的写法。分布式策略继承它，只覆盖要改的钩子。"""

    data_parallel_size = 1
    data_parallel_rank = 0

    @property
    def is_main_process(self) -> bool:
        """是否由本 rank 写文件（metrics.jsonl、checkpoint、loss.png、config.json）、打印与显示进度条。

        为什么需要：N 个 rank 同时写同一个文件会互相覆盖；DDP 里各 rank 的权重完全相同，只需 rank 0 写一份。
        """
        return True

    @property
    def runs_evaluation(self) -> bool:
        """本 rank 是否做评估（estimate_loss 与生成样例）。

        为什么与 is_main_process 分开：DDP 里每个 rank 都有完整权重，只让 rank 0 评估就够了；
        FSDP / ZeRO-3 / TP 的前向本身要所有 rank 一起参与（参数是切开的，要 all-gather），
        这时每个 rank 都得返回 True，只是只有主进程写日志。
        """
        return self.is_main_process

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """模型建好（已在设备上）之后、优化器建立之前调用一次，返回之后训练用的模型。

        为什么在优化器之前：优化器记住的是参数对象。张量并行把每个 Linear 换成只含本 rank 切片的版本、
        ZeRO-3 / FSDP 把参数换成扁平的切片——优化器必须建在换过之后的参数上，否则它更新的是早已不用的张量。
        DDP 在这里把 rank 0 的参数广播给所有 rank（各 rank 从同一份初始权重出发）。单卡原样返回。
        """
        return model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """优化器建好之后调用一次，返回之后训练用的优化器。ZeRO-1/2 在这里把它换成只维护本 rank 那一片状态的版本。"""
        return optimizer

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """返回前向用的模型。单卡原样返回；DDP 返回 DistributedDataParallel(model)（它在反向里挂了 all-reduce 的钩子）。

        训练循环只对包装后的模型做前向，而保存、加载、裁剪、优化器都用原始模型：
        包装器会给参数名加前缀（DDP 的 "module."），checkpoint 必须存成不带前缀的 HF 名字。
        """
        return model

    def forward_backward(self, model: nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                         autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                         sync_model: nn.Module | None = None) -> torch.Tensor:
        """一步训练的前向 + 反向：梯度累加进 .grad，返回本 rank 的这一步 loss（0-d，已 detach，交给 reduce_loss）。

        默认就是梯度累积 `training_sys.pretrain.accumulate_step`（按有效 token 数归一化，K 个 micro-batch 依次前向、反向），
        它在每个 micro-batch 上调用本策略的 global_tokens / no_sync / backward 钩子，所以 DDP / ZeRO / FSDP / TP 不必覆盖它。
        为什么仍是钩子：流水线并行的一步不是"K 次完整的前向 + 反向"，而是各段按 1F1B / GPipe 调度交错执行、彼此收发激活；
        上下文并行要先把每条序列切成本 rank 的那几块、换上 ring attention。两者都只换掉这一处，循环不变。
        model：前向用的模型（wrap_model 之后、可能 torch.compile 过）；sync_model：交给 no_sync 的包装模型。
        """
        from training_sys.pretrain import accumulate_step  # 唯一的实现在训练循环旁边；这里延迟导入，免得循环导入

        return accumulate_step(model, micro_batches, self, autocast, sync_model=sync_model)

    @contextlib.contextmanager
    def eval_models(self, model: nn.Module, fwd_model: nn.Module) -> Iterator[tuple[nn.Module, nn.Module]]:
        """评估时所有 rank 都进入；产出 (估计 loss 用的模型, 生成样例用的模型)，只有 runs_evaluation 的 rank 用它们。

        默认：loss 用前向的模型 fwd_model（可能编译过），样例用原始模型（生成时序列每步变长，编译版会反复重编译；
        包装器也不该参与生成）。为什么是钩子：流水线并行里每个 rank 只更新自己那一段，别的段在本 rank 上是旧的——
        评估前要先把各段的权重收到 rank 0（集合通信，所以所有 rank 都要进来）。
        """
        yield fwd_model, model

    def no_sync(self, model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """包住一个 micro-batch 的前向与反向；last_micro_batch=False 时应当不做梯度同步。

        为什么：梯度累积的 K 个 micro-batch 只需要在最后一个之后同步一次，前 K-1 次 all-reduce 全是浪费
        （torch DDP 的 `with model.no_sync():`，picotron 的 `require_backward_grad_sync = False`）。
        前向也必须在上下文里：DDP 在前向时就决定了这次反向要不要挂同步。单卡没有同步，什么也不做。
        """
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """对一个 micro-batch 的（已归一化的）loss 求梯度，累加进 .grad。

        为什么是钩子：fp16 要先乘 loss scale 再反向；DeepSpeed 之类的引擎要求调用它自己的 engine.backward，
        以便在反向过程中把梯度分桶、切片（ZeRO-2）。
        """
        loss.backward()

    def global_tokens(self, local_tokens: int) -> int:
        """本 rank 这一步的有效 token 数 → 全体数据并行 rank 的总数（DDP：all_reduce SUM）。

        为什么：token 归一化的梯度 = ∇(Σ 全体 rank 的逐 token loss / 全体有效 token 数)；SFT 把提示词标成 -100 后，
        每个 rank 的有效 token 数各不相同，只用本地的数做分母会给 token 少的 rank 过大的权重。
        """
        return local_tokens

    def reduce_loss(self, loss: torch.Tensor) -> float:
        """本 rank 的 loss（0-d 张量）→ 日志里记录的全局 loss（DDP：all_reduce 平均，再 .item()）。

        每个 rank 的 loss 已经按"全局 token 数 / data_parallel_size"归一化，与梯度同步同样求平均，
        得到的正是全体 token 的加权平均 loss——日志里的数就是梯度所对应的那个目标函数。
        这里的 .item() 是每步唯一一次把 loss 读回 CPU 的同步点（发散检查也用它）。
        """
        return loss.item()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """按全局范数裁剪梯度，返回裁剪前的总范数。

        为什么是钩子：ZeRO-2/3 与 FSDP 里每个 rank 只持有梯度的一个切片，本地算出的范数只是一部分；
        正确做法是各自求平方和、all_reduce SUM 后再开根号（Megatron / FSDP.clip_grad_norm_），
        所有 rank 用同一个系数缩放自己的切片。DDP 同步后每个 rank 的梯度相同，本地计算即可。
        """
        from training_sys.optimization import clip_grad_norm

        return clip_grad_norm(model.parameters(), max_norm)

    def stop_requested(self, local: bool) -> bool:
        """本 rank 想停（Ctrl-C、on_step 返回 True）→ 是否全体一起停（DDP：all_reduce MAX）。

        为什么：Ctrl-C 往往只送到一个进程；若它独自去保存，其余 rank 会在下一次 all-reduce 里永远等下去。
        """
        return local

    @contextlib.contextmanager
    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                   ) -> Iterator[tuple[nn.Module, dict[str, Any]]]:
        """给 checkpoint 用：产出 (state_dict() 是完整权重的模型, 完整的优化器 state_dict)。所有 rank 都要进入。

        为什么是上下文：FSDP / ZeRO-3 的完整权重只在 gather 之后临时存在（FSDP.state_dict_type(FULL_STATE_DICT)），
        退出时释放；ZeRO-1/2 的优化器状态是切片，要先 gather 到主进程。checkpoint 的格式因而与并行方式无关：
        单卡存的可以用 DDP 续训，反之亦然。
        """
        yield model, optimizer.state_dict()

    def load_full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                        model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any], strict: bool) -> None:
        """续训：把完整的权重与优化器状态装回来（full_state 的逆操作；ZeRO / FSDP 在这里切片、只留本 rank 的部分）。"""
        model.load_state_dict(model_state, strict=strict)
        optimizer.load_state_dict(optimizer_state)  # 状态会被搬到参数所在的设备：CPU 存的也能在 GPU 上续
