"""注意力的边角：左侧 padding 的批量在每个后端（eager、sdpa）上与 HF 一致；bf16 下注意力很尖时与 HF 几乎逐位相同。

这些测试各自守着一个曾经"改坏了也没有测试失败"的地方：
- 左 padding 的 query 行一个 key 都看不到（全被掩码），eager 的 softmax 会得到 0/0 = NaN；
  以前只有 sdpa 跑过左 padding，去掉掩码里的兜底（`mask | ~mask.any(...)`）没人发现。
- 随机初始化的小模型注意力几乎是均匀分布，RoPE 转错方向（−θ）对 logits 的影响小于 bf16 的容差；
  把 q/k 权重放大后注意力变尖，位置信息才真正传到 logits。
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

llama = importlib.import_module("model_lab.02_architectures.llama")
gpt2 = importlib.import_module("model_lab.02_architectures.gpt2")

ARCHS = ["llama", "gpt2"]
BACKENDS = ["eager", "sdpa"]
VOCAB = 97


def make_pair(arch: str, backend: str, seed: int = 0, **overrides):
    """同权重的 (ours, HF)，两边用同名的注意力后端；归一化层的权重随机扰动（初始化的 1 测不出乘错位置）。"""
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=96,
                   attn_implementation=backend)
        model = llama.Llama(llama.LlamaConfig(**{**cfg, **overrides})).eval()
    else:
        cfg = dict(vocab_size=VOCAB, n_positions=64, n_embd=48, n_layer=2, n_head=4, resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=backend)
        model = gpt2.GPT2(gpt2.GPT2Config(**{**cfg, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    # HF 默认 sdpa；eager 要显式指定，两边才比的是同一种算法
    build = llama.build_llama_hf_reference if arch == "llama" else gpt2.build_gpt2_hf_reference
    return model, build(model, attn_implementation=backend)


def left_padded(pads: list[int], t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask)：第 i 行左侧 pads[i] 个 padding（id 0，mask 0）。"""
    ids = torch.randint(1, VOCAB, (len(pads), t), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for row, n in enumerate(pads):
        ids[row, :n], mask[row, :n] = 0, 0
    return ids, mask


def hf_position_ids(mask: torch.Tensor) -> torch.Tensor:
    """HF generate 的位置规则：从第一个真实 token 记 0，padding 位置填 1（forward 不会替你算，要自己传）。"""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_left_padded_forward_matches_hf_and_stays_finite(arch, backend):
    model, hf = make_pair(arch, backend, seed=1)
    ids, mask = left_padded([3, 0, 1], t=9, seed=2)
    pos = hf_position_ids(mask)
    with torch.no_grad():
        ours = model(ids, position_ids=pos, attention_mask=mask)
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
    # padding 行的输出没人用，两边各自定义（HF 用 dtype 最小值、我们让它看全部），只比真实位置；
    # 但哪里都不许有 NaN：第 1 层 padding 行的 NaN 会经 v 传进第 2 层所有 query（0 × NaN = NaN）
    assert torch.isfinite(ours).all()
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_left_padded_loss_and_gradients_match_hf(arch, backend):
    model, hf = make_pair(arch, backend, seed=3)
    model.train()
    hf.train()
    ids, mask = left_padded([2, 0], t=8, seed=4)
    pos = hf_position_ids(mask)
    # 不计损失的位置：padding 本身，以及"从 padding 行预测第一个真实 token"（padding 行的输出两边各自定义）
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # HF 在内部左移；等价的 nanoGPT 式 targets
    _, loss = model(ids, targets, position_ids=pos, attention_mask=mask)
    ref = hf(ids, attention_mask=mask, position_ids=pos, labels=labels)
    torch.testing.assert_close(loss, ref.loss, rtol=1e-6, atol=1e-6)
    loss.backward()
    ref.loss.backward()
    hf_params = dict(hf.named_parameters())
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name  # padding 行的 NaN 会在反向里污染所有梯度
        torch.testing.assert_close(p.grad, hf_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampling", [False, True])
def test_left_padded_generate_matches_hf(arch, backend, sampling):
    """prefill（padding 行全被掩码）+ KV cache 逐 token 解码，贪心与同一随机种子下的采样都与 HF generate 相同。"""
    model, hf = make_pair(arch, backend, seed=5)
    ids, mask = left_padded([3, 0, 1], t=7, seed=6)
    kw = dict(temperature=0.9, top_p=0.9) if sampling else dict(temperature=0)
    torch.manual_seed(11)
    ours = model.generate(ids, 12, attention_mask=mask, **kw)
    torch.manual_seed(11)
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=sampling, eos_token_id=None,
                      pad_token_id=0, **({"temperature": 0.9, "top_p": 0.9, "top_k": None} if sampling else {}))
    assert ours.shape == (3, 19)
    assert torch.equal(ours, ref)


def _peaked_bf16_pair(backend: str):
    """q/k 权重放大 8 倍：分数放大 64 倍，注意力从近似均匀变成集中在少数几个 key 上，RoPE 的方向才影响 logits。"""
    model, hf = make_pair("llama", backend, seed=7, hidden_size=64, intermediate_size=96, num_attention_heads=4)
    with torch.no_grad():
        for m in (model, hf):
            for layer in m.model.layers:
                layer.self_attn.q_proj.weight.mul_(8)
                layer.self_attn.k_proj.weight.mul_(8)
    return model.bfloat16(), hf.bfloat16()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_peaked_attention_matches_hf_within_two_ulps(backend):
    model, hf = _peaked_bf16_pair(backend)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ours, ref = model(ids).float(), hf(ids).logits.float()
        # 对照实验：HF 用负的位置号 = 每个角度取反，正是"bf16 分支转了 −θ"的那个 bug 的效果
        mirrored = hf(ids, position_ids=-torch.arange(24)[None]).logits.float()
    # RoPE 本身与 HF 逐位相同；整个模型不是：q/k 的特征交错后 q·k 的 fp32 累加顺序不同，bf16 舍入偶尔差 1 ulp。
    # |logits| < 1，bf16 在 [0.5, 1) 的 ulp 是 2^-8，容差取 2 ulp
    ulp = 2.0**-8
    assert ref.abs().max() < 1
    torch.testing.assert_close(ours, ref, rtol=0, atol=2 * ulp)
    # 这个容差确实分得清 RoPE 的方向：转错方向的差距是容差的十倍以上
    assert (mirrored - ref).abs().max() > 20 * ulp
