"""采样的边角：top-p 的累计概率恰好落在 1 − p 上（平局）、bf16 的 logits 必须先升到 fp32 再过滤和采样。

随机的 logits 几乎不会让累计概率恰好等于 1 − p，所以 `<=` 写成 `<` 时随机测试照样通过；
这里用概率是 2 的负幂（fp32 里精确）的 logits 把累计和精确地放到边界上，逐位对照 HF 的 TopPLogitsWarper。
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from model_lab.generation import apply_top_p, sample_next_token


def hf_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    return TopPLogitsWarper(top_p)(None, logits.clone())


def test_four_equal_logits_top_p_half_keeps_two_like_hf():
    # 升序累计概率 0.25, 0.5, 0.75, 1.0（fp32 精确）；删掉累计 <= 1 − 0.5 的两个，恰好保留 2 个
    logits = torch.zeros(1, 4)
    out = apply_top_p(logits, 0.5)
    torch.testing.assert_close(out, hf_top_p(logits, 0.5), rtol=0, atol=0)
    assert torch.isfinite(out).sum() == 2


@pytest.mark.parametrize("k", range(1, 8))
def test_top_p_on_exact_boundaries_keeps_k_of_eight(k):
    # 8 个相等的 logits：每个概率 1/8，升序累计 j/8 精确；top_p = k/8 时 1 − p = (8−k)/8 也精确，
    # 累计值恰好等于 1 − p 的那个 token 要删（<=），所以恰好保留 k 个
    logits = torch.zeros(3, 8)
    out = apply_top_p(logits, k / 8)
    torch.testing.assert_close(out, hf_top_p(logits, k / 8), rtol=0, atol=0)
    assert torch.isfinite(out).sum(-1).tolist() == [k] * 3


@pytest.mark.parametrize("top_p", [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 0.3, 0.9])
def test_top_p_with_random_ties_matches_hf(top_p):
    # 每行是 {0, −ln 2, −2 ln 2} 里的随机值：概率是 2 的负幂之比，许多 token 并列，累计和常常精确落在边界上；
    # 并列的 token 谁先被删取决于排序——两边用同一个 torch.sort，结果也必须逐位相同
    g = torch.Generator().manual_seed(0)
    logits = -torch.randint(0, 3, (64, 8), generator=g).float() * torch.log(torch.tensor(2.0))
    torch.testing.assert_close(apply_top_p(logits, top_p), hf_top_p(logits, top_p), rtol=0, atol=0)


def _fp32_reference_sample(logits: torch.Tensor, top_p: float, seed: int) -> torch.Tensor:
    """HF 的做法：升到 fp32 → TopPLogitsWarper → softmax → multinomial。"""
    probs = hf_top_p(logits.float(), top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(-1)


def test_bf16_logits_are_filtered_and_sampled_in_fp32():
    # logits (0, −0.5) 在 bf16 里精确。小的那个概率：fp32 里 0.377541，bf16 里舍入成 0.376953。
    # top_p = 0.6227 → 1 − p = 0.3773 正好夹在两者之间：fp32 两个都保留，bf16 只留一个。
    # 于是 fp32 路径约 38% 的次数抽到小的那个，bf16 路径永远抽不到——没升精度一定会被抓到
    top_p = 0.6227
    logits = torch.tensor([[0.0, -0.5], [-0.5, 0.0]] * 2, dtype=torch.bfloat16)
    bf16_kept = torch.isfinite(hf_top_p(logits, top_p))
    fp32_kept = torch.isfinite(hf_top_p(logits.float(), top_p))
    assert fp32_kept.all() and bf16_kept.sum().item() == 4  # 对照：两种精度的截断确实不同
    differs = False
    for seed in range(32):
        ours = sample_next_token(logits, 1.0, top_p=top_p, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(ours, _fp32_reference_sample(logits, top_p, seed))
        bf16_probs = hf_top_p(logits, top_p).float().softmax(-1)
        bf16 = torch.multinomial(bf16_probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(-1)
        differs |= not torch.equal(ours, bf16)
    assert differs  # 同一个种子下，在 bf16 里过滤会抽出别的 token

