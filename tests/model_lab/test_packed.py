"""打包（packed / varlen）前向：几条序列首尾相接成 (1, N)，结果与逐条计算、与 HF 逐条计算相同——
无缓存（训练、SFT）与 PagedKVCache（预填充一批、再逐 token 解码）两种情形，Llama 与 GPT-2，eager 与 sdpa 两个后端；
打包的 loss 与梯度等于逐条序列的；注册的 varlen 实现会被调用；各种不一致的输入报清楚的错。"""

from __future__ import annotations

import pytest
import torch

from model_lab import (
    GPT2,
    AttnMetadata,
    GPT2Config,
    KVCache,
    Llama,
    LlamaConfig,
    build_gpt2_hf_reference,
    build_llama_hf_reference,
    eager_attention,
    get_attention_backend,
    pack_sequences,
    register_attention_backend,
    sdpa_attention,
)
from model_lab.attention_backends import ATTENTION_BACKENDS

V = 97
LENGTHS = (1, 5, 17)
KINDS = ("llama", "gpt2")
BACKENDS = ("eager", "sdpa")


def make_model(kind: str, backend: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    if kind == "llama":
        model = Llama(LlamaConfig(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                  attention_bias=True, attn_implementation=backend))
        with torch.no_grad():  # 初始化时 norm 权重是 1、偏置是 0：扰动一下，才测得出"用错位置/漏加偏置"
            for n, p in model.named_parameters():
                if "norm" in n or n.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.1)
    else:
        model = GPT2(GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                                attn_implementation=backend))
    return model.eval()


def hf_reference(model):
    return build_llama_hf_reference(model) if isinstance(model, Llama) else build_gpt2_hf_reference(model)


def sequences(lengths=LENGTHS, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_packed_logits_equal_per_sequence_and_hf(kind, backend):
    model = make_model(kind, backend)
    hf = hf_reference(model)
    seqs = sequences()
    ids, pos, meta = pack_sequences(seqs)
    with torch.no_grad():
        packed = model(ids, attn_metadata=meta)  # (1, N, V)
        assert torch.equal(model(ids, position_ids=pos, attn_metadata=meta), packed)  # 显式给出一致的位置
        last = model(ids, attn_metadata=meta, logits_positions=meta.last_token_indices)  # (B, V)
        for b, s in enumerate(seqs):
            lo, hi = int(meta.cu_seqlens[b]), int(meta.cu_seqlens[b + 1])
            torch.testing.assert_close(packed[0, lo:hi], model(s[None])[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(packed[0, lo:hi], hf(s[None]).logits[0], rtol=1e-5, atol=1e-5)
    assert packed.shape == (1, sum(LENGTHS), V) and last.shape == (len(seqs), V)
    torch.testing.assert_close(last, packed[0, meta.last_token_indices], rtol=1e-6, atol=1e-6)  # GEMM 的 M 不同，分块不同


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_paged_prefill_then_decode_equals_dense_cache_and_hf(kind, backend):
    """一批长度不同的序列打包预填充进 PagedKVCache（block_size=4，序列跨越多个块），然后分块预填充 / 逐 token 解码，
    每步的 logits 等于每条序列单独用稠密 KVCache 解码的结果，也等于 HF 对整段序列重算的结果。"""
    model = make_model(kind, backend, seed=2)
    hf = hf_reference(model)
    seqs = sequences(seed=3)
    cache = model.make_paged_kv_cache(num_blocks=16, block_size=4)
    dense = [model.make_kv_cache(1, 32) for _ in seqs]
    full = [s.clone() for s in seqs]
    g = torch.Generator().manual_seed(4)
    steps = [list(LENGTHS), [1, 1, 1], [1, 3, 1], [1, 1, 1]]  # 预填充；解码；第 1 条序列再接 3 个 token 的一块；解码
    with torch.no_grad():
        for step, new_lens in enumerate(steps):
            chunks = seqs if step == 0 else [torch.randint(0, V, (n,), generator=g) for n in new_lens]
            meta = cache.prepare([10, 11, 12], new_lens)
            out = model(torch.cat(chunks)[None], kv_cache=cache, attn_metadata=meta,
                        logits_positions=meta.last_token_indices)  # (B, V)
            for b, chunk in enumerate(chunks):
                if step:
                    full[b] = torch.cat([full[b], chunk])
                ref_dense = model(chunk[None], kv_cache=dense[b])[0, -1]
                ref_hf = hf(full[b][None]).logits[0, -1]
                torch.testing.assert_close(out[b], ref_dense, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(out[b], ref_hf, rtol=1e-5, atol=1e-5)
    assert [cache.seq_len(i) for i in (10, 11, 12)] == [len(f) for f in full]


@pytest.mark.parametrize("kind", KINDS)
def test_packed_loss_and_gradients_equal_per_sequence(kind):
    """打包的 loss = 全部计入的 token 的平均，等于逐条序列的 token 加权平均；梯度也相同（SFT 用打包批量训练）。"""
    model = make_model(kind, seed=5).train()  # dropout 都是 0：train 模式也是确定的
    seqs = sequences(seed=6)
    g = torch.Generator().manual_seed(7)
    targets = [torch.randint(0, V, (len(s),), generator=g) for s in seqs]
    targets[2][[0, 3, 16]] = -100
    ids, _, meta = pack_sequences(seqs)
    params = [p for p in model.parameters() if p.requires_grad]
    _, loss = model(ids, torch.cat(targets)[None], attn_metadata=meta)
    packed_grads = torch.autograd.grad(loss, params)

    counts = [int((t != -100).sum()) for t in targets]
    per_seq = sum(model(s[None], t[None])[1] * n for s, t, n in zip(seqs, targets, counts)) / sum(counts)
    ref_grads = torch.autograd.grad(per_seq, params)
    torch.testing.assert_close(loss, per_seq, rtol=1e-6, atol=1e-6)
    for p, a, b in zip(params, packed_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(a.abs().sum() > 0 for a in packed_grads[:3])


def _loop_varlen(q, k, v, *, attn_metadata, scale, dropout_p=0.0):
    """逐条序列的参考 varlen 实现：取出第 b 条序列的 query 与它的上下文，用 eager 的右下对齐因果掩码算。"""
    if attn_metadata.block_tables is not None:  # 块池 -> 各序列上下文首尾相接 (S, H_kv, D)
        slots = attn_metadata.context_slots(k.size(1))
        k, v = k.flatten(0, 1)[slots], v.flatten(0, 1)[slots]
    cu, ctx = attn_metadata.cu_seqlens.tolist(), attn_metadata.context_lens.tolist()
    out, k_start = [], 0
    for b in range(len(ctx)):
        qb = q[cu[b]:cu[b + 1]].transpose(0, 1)[None]  # (1, H, T, D)
        kb = k[k_start:k_start + ctx[b]].transpose(0, 1)[None]  # (1, H_kv, S, D)
        vb = v[k_start:k_start + ctx[b]].transpose(0, 1)[None]
        t, s = qb.size(2), kb.size(2)
        mask = torch.ones(t, s, dtype=torch.bool).tril(s - t)  # 第 i 个 query 在位置 s - t + i
        out.append(eager_attention(qb, kb, vb, is_causal=False, attn_mask=mask, scale=scale)[0].transpose(0, 1))
        k_start += ctx[b]
    return torch.cat(out)


@pytest.mark.parametrize("kind", KINDS)
def test_registered_varlen_backend_is_used_and_agrees_with_fallback(kind):
    calls = []

    def varlen(q, k, v, **kwargs):
        calls.append((tuple(q.shape), tuple(k.shape)))
        return _loop_varlen(q, k, v, **kwargs)

    register_attention_backend("test_varlen", sdpa_attention, packed=varlen)
    try:
        model = make_model(kind, "eager", seed=8)
        seqs = sequences(seed=9)
        ids, _, meta = pack_sequences(seqs)
        with torch.no_grad():
            fallback = model(ids, attn_metadata=meta)
            model.config.attn_implementation = "test_varlen"
            torch.testing.assert_close(model(ids, attn_metadata=meta), fallback, rtol=1e-5, atol=1e-5)
            n_layers = len(calls)
            # 分页缓存：后端拿到的是整个块池 (num_blocks, block_size, H_kv, D)
            cache = model.make_paged_kv_cache(num_blocks=12, block_size=4)
            outs = []
            for name in ("test_varlen", "eager"):
                model.config.attn_implementation = name
                cache = model.make_paged_kv_cache(num_blocks=12, block_size=4)
                meta = cache.prepare([0, 1, 2], list(LENGTHS))
                model(ids, kv_cache=cache, attn_metadata=meta)
                meta = cache.prepare([0, 1, 2], [1, 1, 1])
                outs.append(model(torch.tensor([[3, 4, 5]]), kv_cache=cache, attn_metadata=meta))
            torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    finally:
        del ATTENTION_BACKENDS["test_varlen"]
    assert n_layers == 2 and calls[0][0] == (sum(LENGTHS),) + calls[0][0][1:]
    assert calls[-1][1][:2] == (12, 4)


# ---------------------------------------------------------------------------------------------------
# 坏输入
# ---------------------------------------------------------------------------------------------------


def test_unknown_backend_names_registered_ones_and_the_fix():
    with pytest.raises(ValueError, match=r"'flash9' 未注册.*eager.*sdpa.*register_attention_backend"):
        get_attention_backend("flash9")
    with pytest.raises(ValueError, match=r"attn_implementation='flash9'"):
        GPT2(GPT2Config(vocab_size=V, n_positions=16, n_embd=16, n_layer=1, n_head=2, attn_implementation="flash9"))
    with pytest.raises(ValueError, match=r"可调用"):
        register_attention_backend("broken", "not a function")


@pytest.mark.parametrize("kind", KINDS)
def test_packed_inputs_disagreeing_with_metadata(kind):
    model = make_model(kind)
    ids, pos, meta = pack_sequences(sequences())
    with pytest.raises(ValueError, match=r"position_ids 与 attn_metadata 不一致：第 5 个 token"):
        bad = pos.clone()
        bad[0, 5] += 1
        model(ids, position_ids=bad, attn_metadata=meta)
    with pytest.raises(ValueError, match=r"position_ids 应为 \(1, 23\)"):
        model(ids, position_ids=pos[:, :-1], attn_metadata=meta)
    with pytest.raises(ValueError, match=r"input_ids 应为 \(1, N\) = \(1, 23\)"):
        model(ids[:, :-1], attn_metadata=meta)
    with pytest.raises(ValueError, match=r"input_ids 应为 \(1, N\)"):
        model(ids.expand(2, -1), attn_metadata=meta)
    with pytest.raises(ValueError, match=r"不用 attention_mask"):
        model(ids, attention_mask=torch.ones_like(ids), attn_metadata=meta)
    with pytest.raises(ValueError, match=r"logits_positions 与 targets 不能同时给"):
        model(ids, ids, attn_metadata=meta, logits_positions=meta.last_token_indices)
    with pytest.raises(ValueError, match=r"logits_positions 超出范围 \[0, 23\)"):
        model(ids, attn_metadata=meta, logits_positions=torch.tensor([23]))


@pytest.mark.parametrize("kind", KINDS)
def test_cache_that_does_not_fit_the_model_or_the_batch(kind):
    model = make_model(kind)
    ids, _, meta = pack_sequences(sequences())
    with pytest.raises(ValueError, match=r"打包批量（attn_metadata）要配 PagedKVCache"):
        model(ids, kv_cache=model.make_kv_cache(1, 32), attn_metadata=meta)
    paged = model.make_paged_kv_cache(num_blocks=8, block_size=4)
    with pytest.raises(ValueError, match=r"PagedKVCache 只用于打包批量"):
        model(ids, kv_cache=paged)
    with pytest.raises(ValueError, match=r"PagedKVCache 只用于打包批量"):  # 元数据不是 prepare 出来的：没有槽位
        model(ids, kv_cache=paged, attn_metadata=meta)
    layers, heads = (2, 2) if kind == "llama" else (2, 4)
    head_dim = 12 if kind == "llama" else 8
    wrong_heads = KVCache(layers, 1, heads + 1, 32, head_dim)
    with pytest.raises(ValueError, match=rf"num_kv_heads={heads + 1}（模型需要 {heads}）.*make_kv_cache"):
        model(ids, kv_cache=wrong_heads)
    wrong_dtype = KVCache(layers, 1, heads, 32, head_dim, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"dtype=torch.bfloat16（模型需要 torch.float32）"):
        model(ids, kv_cache=wrong_dtype)
    with pytest.raises(ValueError, match=r"num_layers=3（模型需要 2）"):
        model(ids, kv_cache=KVCache(3, 1, heads, 32, head_dim))
    with pytest.raises(TypeError, match=r"kv_cache 应为"):
        model(ids, kv_cache={"k": None})


def test_metadata_that_contradicts_itself():
    with pytest.raises(ValueError, match=r"必须从 0 开始、严格递增"):
        AttnMetadata(cu_seqlens=torch.tensor([0, 3, 3]), context_lens=torch.tensor([3, 0]))
    with pytest.raises(ValueError, match=r"context_lens=\[2\] 小于"):
        AttnMetadata(cu_seqlens=torch.tensor([0, 3]), context_lens=torch.tensor([2]))
    with pytest.raises(ValueError, match=r"没有分页缓存时 context_lens"):
        AttnMetadata(cu_seqlens=torch.tensor([0, 3]), context_lens=torch.tensor([5]))
    with pytest.raises(ValueError, match=r"要么都给"):
        AttnMetadata(cu_seqlens=torch.tensor([0, 3]), context_lens=torch.tensor([3]), slot_mapping=torch.arange(3))
    with pytest.raises(ValueError, match=r"一维整数张量"):
        AttnMetadata(cu_seqlens=torch.tensor([0.0, 3.0]), context_lens=torch.tensor([3]))
    with pytest.raises(ValueError, match=r"context_lens 的长度是 2，应为 1"):
        AttnMetadata(cu_seqlens=torch.tensor([0, 3]), context_lens=torch.tensor([3, 3]))
