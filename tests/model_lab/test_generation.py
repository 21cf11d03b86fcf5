"""model_lab/generation.py：采样与 HF 的 logits warper 逐位对齐。"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from model_lab.generation import apply_top_k, apply_top_p, process_logits, sample_next_token


def _logits(b: int = 4, v: int = 50, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, generator=g) * 3


def _hf_process(logits, temperature, top_k, top_p):
    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(float(temperature)))
    if top_k is not None:
        procs.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    return procs(torch.zeros(logits.size(0), 1, dtype=torch.long), logits.clone())


@pytest.mark.parametrize("top_k", [1, 5, 49, 50, 80])
def test_top_k_matches_hf(top_k):
    logits = _logits()
    expected = TopKLogitsWarper(top_k)(None, logits.clone())
    torch.testing.assert_close(apply_top_k(logits, top_k), expected, rtol=0, atol=0)


def test_top_k_keeps_ties_like_hf():
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    expected = TopKLogitsWarper(2)(None, logits.clone())
    out = apply_top_k(logits, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.isfinite(out).sum() == 3  # 三个并列第一全部保留


@pytest.mark.parametrize("top_p", [1e-6, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_top_p_matches_hf(top_p):
    logits = _logits(b=6, v=37, seed=1)
    expected = TopPLogitsWarper(top_p)(None, logits.clone())
    out = apply_top_p(logits, top_p)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert (torch.isfinite(out).sum(-1) >= 1).all()


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = apply_top_p(probs.log(), 0.75)
    # 0.5 < 0.75，0.5+0.3 = 0.8 >= 0.75：恰好保留前两个
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, None, None), (0.7, None, None), (1.3, 10, None), (0.8, None, 0.9), (0.5, 20, 0.8)]
)
def test_process_logits_matches_hf_chain(temperature, top_k, top_p):
    logits = _logits(b=3, v=64, seed=2)
    expected = _hf_process(logits, temperature, top_k, top_p)
    torch.testing.assert_close(process_logits(logits, temperature, top_k, top_p), expected, rtol=0, atol=0)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.9, 8, 0.95), (1.0, None, None), (2.0, None, 0.5)])
def test_sample_matches_hf_sampling_with_same_generator(temperature, top_k, top_p):
    logits = _logits(b=5, v=40, seed=3)
    for seed in range(5):
        ours = sample_next_token(logits, temperature, top_k, top_p, generator=torch.Generator().manual_seed(seed))
        probs = _hf_process(logits, temperature, top_k, top_p).softmax(-1)
        ref = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(-1)
        assert ours.dtype == torch.long and ours.shape == (5,)
        assert torch.equal(ours, ref)


def test_samples_stay_inside_filtered_set():
    logits = _logits(b=2, v=30, seed=4)
    allowed = torch.isfinite(process_logits(logits, 1.0, 5, 0.6))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        tok = sample_next_token(logits, 1.0, 5, 0.6, generator=g)
        assert allowed[torch.arange(2), tok].all()


def test_temperature_zero_is_greedy():
    logits = _logits()
    assert torch.equal(sample_next_token(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, temperature=0.0, top_k=3, top_p=0.5), logits.argmax(-1))


def test_top_k_one_is_greedy():
    logits = _logits()
    assert torch.equal(sample_next_token(logits, temperature=1.0, top_k=1), logits.argmax(-1))


def test_bf16_logits_are_sampled_in_fp32():
    logits = _logits().bfloat16()
    tok = sample_next_token(logits, 0.8, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert tok.dtype == torch.long


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_next_token(_logits(), **kwargs)


def test_wrong_logits_shape():
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        sample_next_token(torch.randn(2, 3, 10))


# ---------------------------------------------------------------------------
# 练习模式（utils/exercise_parts/model_lab.py）：左 padding 批量生成的位置编号，手算对照
# ---------------------------------------------------------------------------
def test_generation_position_ids_count_from_the_first_real_token():
    from model_lab.generation import generation_position_ids

    cpu = torch.device("cpu")
    assert generation_position_ids(None, 4, cpu).tolist() == [[0, 1, 2, 3]]  # 没有 padding：(1, T) 的 0..T-1
    mask = torch.tensor([[0, 0, 1, 1, 1],
                         [1, 1, 1, 1, 1],
                         [0, 0, 0, 0, 1]])
    pos = generation_position_ids(mask, 5, cpu)
    # 真实 token 从 0 数起（HF generate 的 cumsum(mask) - 1）；padding 位置谁也看不见，取 0
    assert pos.tolist() == [[0, 0, 0, 1, 2],
                            [0, 1, 2, 3, 4],
                            [0, 0, 0, 0, 0]]
    # 生成几步之后 mask 在右边补 1：位置接着数，不受左边 padding 个数的影响
    grown = torch.cat([mask, torch.ones(3, 2, dtype=torch.long)], dim=1)
    assert generation_position_ids(grown, 7, cpu)[:, -2:].tolist() == [[3, 4], [5, 6], [1, 2]]
