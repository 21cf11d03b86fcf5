"""archive/Introductory learning/04_LLMs/01_causal_lm_and_sampling.py：因果 LM 损失、困惑度、采样 vs HF warper。"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from tests.conftest import load_script

llm = load_script("archive/Introductory learning/04_LLMs/01_causal_lm_and_sampling.py")


@pytest.mark.parametrize("B,T,V", [(1, 2, 5), (3, 9, 50), (2, 17, 300)])
def test_causal_lm_loss_matches_cross_entropy(B, T, V):
    torch.manual_seed(B * T)
    logits = (torch.randn(B, T, V) * 4).requires_grad_()
    ids = torch.randint(V, (B, T))
    if T > 3:
        ids[0, -2:] = llm.IGNORE_INDEX
    ours = llm.causal_lm_loss(logits, ids)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1), ignore_index=llm.IGNORE_INDEX)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(ref, logits)[0])
    assert llm.perplexity(ours) == pytest.approx(math.exp(ref.item()), rel=1e-6)


def test_causal_lm_loss_matches_hf_gpt2_internal_shift():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    x = torch.randint(40, (2, 10))
    labels = x.clone()
    labels[1, 7:] = -100
    with torch.no_grad():
        out = model(x, labels=labels)
    assert llm.causal_lm_loss(out.logits, labels).item() == pytest.approx(out.loss.item(), abs=1e-5)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    for V in (2, 65, 1000):
        loss = llm.causal_lm_loss(torch.zeros(2, 6, V), torch.randint(V, (2, 6)))
        assert llm.perplexity(loss) == pytest.approx(V, rel=1e-5)


def logits_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(6, 64, generator=g) * 3
    z[0, :8] = 1.5  # 并列分数
    z[1] = 0.0  # 整行相同
    z[2, 5] = 50.0  # 一个 token 占几乎全部概率
    return z


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_temperature_matches_hf(seed, t):
    z = logits_with_ties(seed)
    torch.testing.assert_close(llm.apply_temperature(z, t), TemperatureLogitsWarper(t)(None, z))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 3, 8, 64, 100])
def test_top_k_matches_hf(seed, k):
    z = logits_with_ties(seed)
    assert torch.equal(llm.top_k_filter(z, k), TopKLogitsWarper(k)(None, z))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999, 1.0])
def test_top_p_matches_hf(seed, p):
    z = logits_with_ties(seed)
    assert torch.equal(llm.top_p_filter(z, p), TopPLogitsWarper(p)(None, z))


def test_top_p_keeps_smallest_set_reaching_p():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = ~torch.isinf(llm.top_p_filter(z, 0.75))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 ≤ 0.5 + 0.3
    kept = ~torch.isinf(llm.top_p_filter(z, 0.81))
    assert kept.tolist() == [[True, True, True, False]]


def test_sampling_special_cases_and_frequencies():
    torch.manual_seed(1)
    z = torch.randn(3, 20)
    assert torch.equal(llm.sample_next_token(z, temperature=0), z.argmax(-1, keepdim=True))
    assert torch.equal(llm.sample_next_token(z, top_k=1), z.argmax(-1, keepdim=True))
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    draws = llm.sample_next_token(probs.log().expand(20000, 4), top_k=3, generator=g).squeeze(1)
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    # top-k=3 之后在前三个上重新归一化：0.5/0.95, 0.3/0.95, 0.15/0.95, 0
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.015, rtol=0)


def test_tiny_causal_lm_is_causal_and_learns():
    cfg = llm.Config(block_size=16, d_model=32, nhead=2, num_layers=2, batch_size=16, steps=120, lr=5e-3,
                     max_chars=None)
    text = "to be, or not to be, that is the question. " * 40
    model, chars, val_ids = llm.train_lm(text, cfg, verbose=False)
    model.eval()
    x = val_ids[:16].unsqueeze(0)
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % len(chars)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0, :10], model(y)[0, :10])  # 改未来不影响过去
    assert llm.evaluate_nll(model, val_ids) < 1.0  # 均匀分布是 ln(V) ≈ 2.8；重复文本应学得远好于此
    out = model.generate(x[:, :4], 20, temperature=0.8, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 24) and torch.equal(out[:, :4], x[:, :4])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="logits"):
        llm.causal_lm_loss(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="长度至少为 2"):
        llm.causal_lm_loss(torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index"):
        llm.causal_lm_loss(torch.zeros(1, 3, 4), torch.full((1, 3), -100))
    z = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="temperature"):
        llm.apply_temperature(z, 0)
    with pytest.raises(ValueError, match="top_k"):
        llm.top_k_filter(z, 0)
    with pytest.raises(ValueError, match="top_p"):
        llm.top_p_filter(z, 1.5)
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        llm.greedy(torch.zeros(2, 3, 5))
    model = llm.TinyCausalLM(10, llm.Config(block_size=4, d_model=8, nhead=2, num_layers=1))
    with pytest.raises(ValueError, match="block_size=4"):
        model(torch.zeros(1, 5, dtype=torch.long))
