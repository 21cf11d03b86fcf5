"""基准：我们的 Llama 与 transformers.LlamaForCausalLM（同配置、同权重、同一进程、同输入）。

1. 训练：前向+反向 tokens/s（CPU fp32、CPU bf16；有 GPU 时再测 GPU bf16），比值 = ours / HF（>= 1 表示不慢于 HF）。
2. 推理：prefill 延迟（整段提示词一次前向）与每 token 解码延迟（KV cache），对比 HF 的 generate（贪心）。

用法：python benchmarks/model_lab_llama.py [--threads N]（SMOKE=1 时缩到几秒、不写 RESULTS.md）。
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine_info, update_results

from model_lab import Llama, LlamaConfig, build_llama_hf_reference
from utils.io import is_smoke
from utils.torch_playground import benchmark_interleaved, setup_seed


def make_models(dtype: torch.dtype, device: str, smoke: bool):
    setup_seed(0)
    if smoke:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    else:
        cfg = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024)
    ours = Llama(cfg).to(device=device, dtype=dtype)
    hf = build_llama_hf_reference(ours).to(device)
    return cfg, ours, hf


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def paired_ms(fn_a, fn_b, reps: int, warmup: int = 1) -> tuple[float, float]:
    """交替计时 a、b，返回两者的中位毫秒数（见 utils.torch_playground.benchmark_interleaved）。"""
    ms_a, ms_b = benchmark_interleaved([fn_a, fn_b], warmup, reps)
    return ms_a, ms_b


def train_row(dtype: torch.dtype, device: str, smoke: bool) -> list[str]:
    cfg, ours, hf = make_models(dtype, device, smoke)
    b, t = (2, 32) if smoke else (4, 128)
    ids = torch.randint(0, cfg.vocab_size, (b, t), device=device)
    targets = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=-100)
    ours.train()
    hf.train()

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(ids, targets)[1].backward()
        sync(device)

    def step_hf():
        hf.zero_grad(set_to_none=True)
        hf(ids, labels=ids).loss.backward()
        sync(device)

    ms_ours, ms_hf = paired_ms(step_ours, step_hf, reps=1 if smoke else 15, warmup=0 if smoke else 2)
    tok = b * t
    name = f"{device} {str(dtype).removeprefix('torch.')}"
    print(f"[train] {name:14s} B={b} T={t}: ours {tok / ms_ours * 1e3:9,.0f} tok/s | HF {tok / ms_hf * 1e3:9,.0f} "
          f"tok/s | ratio {ms_hf / ms_ours:.2f}")
    return [name, f"{b}×{t}", f"{tok / ms_ours * 1e3:,.0f}", f"{tok / ms_hf * 1e3:,.0f}", f"{ms_hf / ms_ours:.2f}"]


def decode_rows(dtype: torch.dtype, device: str, smoke: bool) -> list[list[str]]:
    cfg, ours, hf = make_models(dtype, device, smoke)
    prompt_len, n_new = (16, 8) if smoke else (128, 32)
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len), device=device)

    def gen_ours(n: int):
        out = ours.generate(prompt, n, temperature=0)
        sync(device)
        return out

    def gen_hf(n: int):
        out = hf.generate(prompt, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        sync(device)
        return out

    assert torch.equal(gen_ours(n_new), gen_hf(n_new)), "贪心生成与 HF 不一致"
    reps, warmup = (1, 0) if smoke else (5, 1)
    # prefill = 生成 1 个 token 的耗时；每 token 解码 = (生成 n 个 - 生成 1 个) / (n - 1)
    pre_ours, pre_hf = paired_ms(lambda: gen_ours(1), lambda: gen_hf(1), reps, warmup)
    full_ours, full_hf = paired_ms(lambda: gen_ours(n_new), lambda: gen_hf(n_new), reps, warmup)
    dec_ours, dec_hf = (full_ours - pre_ours) / (n_new - 1), (full_hf - pre_hf) / (n_new - 1)
    name = f"{device} {str(dtype).removeprefix('torch.')}"
    print(f"[infer] {name:14s} prefill {prompt_len}: ours {pre_ours:7.2f} ms | HF {pre_hf:7.2f} ms | "
          f"decode/token: ours {dec_ours:6.2f} ms | HF {dec_hf:6.2f} ms")
    return [[name, f"prefill ({prompt_len} tokens)", f"{pre_ours:.2f}", f"{pre_hf:.2f}", f"{pre_hf / pre_ours:.2f}"],
            [name, f"decode / token (KV cache, {n_new} new)", f"{dec_ours:.2f}", f"{dec_hf:.2f}",
             f"{dec_hf / dec_ours:.2f}"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch 的 CPU 线程数（torch.set_num_threads），ours 与 HF 两边相同；默认不设置，沿用 PyTorch 的默认值"
                             "（通常等于 CPU 核数）。共享的机器上用 1：多线程算子每步都要等最慢的线程，"
                             "别的进程抢走一个核时，计时的抖动会比 ours/HF 的差别还大")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    smoke = is_smoke()
    t0 = time.perf_counter()
    cases = [("cpu", torch.float32), ("cpu", torch.bfloat16)]
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        cases.append(("cuda", torch.bfloat16))
    if smoke:
        cases = cases[:1]
    train = [train_row(dtype, dev, smoke) for dev, dtype in cases]
    infer = [row for dev, dtype in cases for row in decode_rows(dtype, dev, smoke)]

    cfg = make_models(torch.float32, "cpu", smoke)[0]
    md = [f"**Llama vs transformers.LlamaForCausalLM** — {machine_info()}", "",
          f"Config: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_attention_heads}/"
          f"{cfg.num_key_value_heads} (GQA), vocab {cfg.vocab_size}; same weights, same inputs, same process; "
          f"ours and HF timed alternately, median of reps after warm-up. GPU: {'yes' if has_gpu else 'no GPU on this machine'}.", "",
          "| forward+backward | B×T | ours tok/s | HF tok/s | ratio (ours/HF) |", "|---|---|---|---|---|"]
    md += ["| " + " | ".join(r) + " |" for r in train]
    md += ["", "| inference (greedy, B=1) | what | ours ms | HF ms | ratio (HF/ours) |", "|---|---|---|---|---|"]
    md += ["| " + " | ".join(r) + " |" for r in infer]
    update_results("model_lab_llama", "\n".join(md))
    print(f"完成，用时 {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
