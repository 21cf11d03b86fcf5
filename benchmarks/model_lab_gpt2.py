"""基准：我们的 GPT-2 vs transformers.GPT2LMHeadModel（同一 config、同一份权重、同一进程、同样的输入）。

测两件事（fp32、CPU）：
1. 训练吞吐：一次前向 + 反向的 tokens/s；
2. 贪心生成延迟：prefill 一个 prompt 后逐个生成 max_new_tokens 个 token 的总耗时（两边都用 KV cache）。
两边的输出先核对一致（loss、生成的 token），再计时；预热后取多次的中位数。

运行：python benchmarks/model_lab_gpt2.py（SMOKE=1 时用小模型，几秒结束，不写 RESULTS.md）
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import machine_info, update_results

from model_lab import GPT2, GPT2Config, build_gpt2_hf_reference
from utils.io import is_smoke
from utils.torch_playground import benchmark_interleaved, setup_seed


def interleaved(ours_fn: Callable[[], object], hf_fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """两边轮流各跑一次、重复 reps 轮，各取中位数（毫秒）。

    共享的机器上别的进程时忙时闲：先把一边测完再测另一边，负载的变化会全算到其中一边头上；
    轮流测量让两边经历同样的干扰，比值才可信。
    """
    ours_ms, hf_ms = benchmark_interleaved([ours_fn, hf_fn], warmup=1, reps=reps)
    return ours_ms, hf_ms


def main() -> None:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 默认单线程：在几个进程共用的 2 核机器上，2 个 OpenMP 线程互相等对方被调度（barrier），
    # 一步前向+反向能从 0.3 s 抖到 13 s，测到的是调度噪声；单线程的比值稳定。机器空闲时可用 --threads 2
    parser.add_argument("--threads", type=int, default=1,
                        help="torch 的 CPU 线程数（torch.set_num_threads），ours 与 HF 两边相同；默认 %(default)s："
                             "共享的 2 核机器上单线程的比值最稳定，机器空闲时可以试 2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    smoke = is_smoke()
    setup_seed()
    if smoke:
        name = "tiny (SMOKE)"
        config = GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4)
        B, T, prompt_len, new_tokens, reps = 2, 32, 8, 8, 2
    else:
        name = "gpt2 124M"
        config = GPT2Config()
        B, T, prompt_len, new_tokens, reps = 2, 128, 32, 64, 5
    # 随机权重下 eos 可能被贪心选中而让 HF 提前停止；去掉 eos，两边都生成满 new_tokens 个
    # dropout 关掉：两边的 loss 才能逐位核对
    config = dataclasses.replace(config, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, eos_token_id=None,
                                 bos_token_id=None)
    ours = GPT2(config)
    hf = build_gpt2_hf_reference(ours, attn_implementation="sdpa").train()

    ids = torch.randint(0, config.vocab_size, (B, T))
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)  # 与 HF labels=ids 等价的对齐 targets

    def ours_step() -> torch.Tensor:
        ours.zero_grad(set_to_none=True)
        _, loss = ours(ids, targets)
        loss.backward()
        return loss

    def hf_step() -> torch.Tensor:
        hf.zero_grad(set_to_none=True)
        loss = hf(ids, labels=ids).loss
        loss.backward()
        return loss

    loss_diff = abs(ours_step().item() - hf_step().item())
    assert loss_diff < 1e-4, f"loss 不一致：差 {loss_diff}"
    ours_train_ms, hf_train_ms = interleaved(ours_step, hf_step, reps)

    ours.eval()
    hf.eval()
    prompt = torch.randint(0, config.vocab_size, (1, prompt_len))
    mask = torch.ones_like(prompt)

    def ours_gen() -> torch.Tensor:
        return ours.generate(prompt, new_tokens, temperature=0.0)

    def hf_gen() -> torch.Tensor:
        return hf.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    assert torch.equal(ours_gen(), hf_gen()), "贪心生成的 token 不一致"
    ours_gen_ms, hf_gen_ms = interleaved(ours_gen, hf_gen, reps)

    tok = B * T
    rows = [
        ("fwd+bwd tokens/s", f"{tok / ours_train_ms * 1e3:,.0f}", f"{tok / hf_train_ms * 1e3:,.0f}",
         f"{hf_train_ms / ours_train_ms:.2f}x"),
        (f"greedy generate {new_tokens} tokens (ms)", f"{ours_gen_ms:,.1f}", f"{hf_gen_ms:,.1f}",
         f"{hf_gen_ms / ours_gen_ms:.2f}x"),
        ("ms per generated token", f"{ours_gen_ms / new_tokens:.2f}", f"{hf_gen_ms / new_tokens:.2f}",
         f"{hf_gen_ms / ours_gen_ms:.2f}x"),
    ]
    md = "\n".join([
        "### model_lab GPT-2 vs transformers.GPT2LMHeadModel (fp32)",
        "",
        f"{machine_info()} · transformers {transformers.__version__}",
        "",
        f"Model: {name}, {ours.num_parameters():,} parameters, random weights shared by both. "
        f"Training step: B={B}, T={T}, loss + backward. Generation: batch 1, prompt {prompt_len}, "
        f"{new_tokens} new tokens, greedy, KV cache on both sides (HF attention: sdpa). "
        f"Outputs checked equal first (loss diff {loss_diff:.1e}, identical tokens); "
        f"median of {reps} interleaved runs (ours, HF, ours, HF, …) after warm-up. "
        "Speedup = HF time / our time (>1 means ours is faster).",
        "",
        "| measure | ours | HF | speedup |",
        "|---|---:|---:|---:|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
    ])
    print(md)
    update_results("model_lab_gpt2", md)


if __name__ == "__main__":
    main()
