"""inference_engine/quantization/kv_cache.py：int8 KV cache（K 按通道、V 按 token、全精度窗口）。

证明的事：逐元素误差 ≤ scale/2；窗口边界（prompt 比窗口短/长、恰好一组）与写入切分无关；量化恰好无损时与 fp
KVCache 逐位相同；在训练过的小 Llama 上 teacher-forced top-1 一致率 ≥ 99%（256 步 × 4 条），而一个坏掉的反量化
会被同一指标抓到；bytes/token 比 fp32 小 ≥ 3.5×；GPT-2 同样可用；generate 默认行为不变；坏选项报 ValueError。
"""

from __future__ import annotations

import pytest
import torch

from inference_engine.quantization import kv_cache as kq
from inference_engine.quantization.kv_cache import (
    QuantizedKVCache,
    dequantize_keys,
    dequantize_values,
    greedy_agreement,
    make_quantized_kv_cache,
    quantize_keys_per_channel,
    quantize_values_per_token,
    quantized_cache_factory,
    teacher_forced_logits,
    tiny_peaked_llama,
)
from model_lab import GPT2, GPT2Config, KVCache, Llama, LlamaConfig
from tests.conftest import requires_cuda

L, B, H, D = 2, 2, 3, 16


def _kv(t: int, seed: int = 0, outliers: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, t, D) 的随机 K/V；K 的前两个通道是固定的离群通道（大且同号，像真实模型的 key）。"""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, H, t, D, generator=g)
    v = torch.randn(B, H, t, D, generator=g)
    if outliers:
        k[..., :2] = k[..., :2] * 15 + 20
    return k, v


def _cache(max_len: int = 64, **opts) -> QuantizedKVCache:
    return QuantizedKVCache(L, B, H, max_len, D, **{"window": 8, "group_size": 4, **opts})


@pytest.fixture(scope="module")
def peaked_llama():
    return tiny_peaked_llama()


@pytest.fixture(scope="module")
def prompts():
    return torch.tensor([list(kq.DEMO_TEXT[i:i + 16].encode()) for i in (0, 20, 40, 60)])


# ---- 1. 量化函数：误差界 ----


def test_key_error_within_half_scale_per_channel_group():
    k, _ = _kv(48)
    k[0, 1, 8:16, 5] = 3.25  # 一组里某通道是常数：scale = 0，必须恰好无误差
    codes, scale, kmin = quantize_keys_per_channel(k, 8)
    assert codes.dtype == torch.uint8 and codes.shape == k.shape
    assert scale.shape == kmin.shape == (B, H, 6, D)  # 每 (b, h, 组, 通道) 一个 scale 与 min
    err = (dequantize_keys(codes, scale, kmin) - k).abs()
    bound = scale.repeat_interleave(8, dim=-2) / 2
    assert (err <= bound * (1 + 1e-5) + 1e-6).all()
    assert float(err.max()) > 0  # 确实是有损的
    assert torch.equal(dequantize_keys(codes, scale, kmin)[0, 1, 8:16, 5], k[0, 1, 8:16, 5])
    # 每个（组，通道）的 min 与 max 恰好落在码 0 与 255 上：用满 256 级
    grouped = codes.unflatten(-2, (6, 8))
    assert (grouped.amin(-2)[scale > 0] == 0).all() and (grouped.amax(-2)[scale > 0] == 255).all()


def test_value_error_within_half_scale_per_token():
    _, v = _kv(20)
    v[1, 2, 7] = 0.0  # 全零的 token：scale = 0，恰好无误差
    codes, scale = quantize_values_per_token(v)
    assert codes.dtype == torch.int8 and scale.shape == (B, H, 20)
    err = (dequantize_values(codes, scale) - v).abs()
    assert (err <= scale.unsqueeze(-1) / 2 * (1 + 1e-5) + 1e-7).all()
    assert float(err.max()) > 0
    assert int(codes.abs().amax(-1)[scale > 0].min()) == 127  # 每个 token 的最大幅值映到 ±127
    assert torch.equal(dequantize_values(codes, scale)[1, 2, 7], v[1, 2, 7])


def test_per_channel_beats_per_token_on_outlier_keys():
    """KIVI 的论据：K 有固定的离群通道时，按 token 量化让普通通道失去精度，按通道量化不会。"""
    k, _ = _kv(64)
    per_channel = dequantize_keys(*quantize_keys_per_channel(k, 16))
    per_token = dequantize_values(*quantize_values_per_token(k))
    normal = slice(2, None)
    e_ch = float((per_channel - k)[..., normal].norm() / k[..., normal].norm())
    e_tok = float((per_token - k)[..., normal].norm() / k[..., normal].norm())
    assert e_ch * 5 < e_tok


# ---- 2. 缓存：窗口边界、切分无关、读回的误差界 ----


def _assert_read_back(cache: QuantizedKVCache, k: torch.Tensor, v: torch.Tensor) -> None:
    """read() 的每个位置：窗口里的与写入的逐位相同，量化区的误差 ≤ 它自己的 scale/2
    （bf16 缓存再加上反量化结果舍入到 bf16 的一次误差 ≤ |x̂|·2⁻⁸，这里留 2 倍余量）。"""
    nq, g = cache.num_quantized, cache.group_size
    rounding = 2.0**-8 if cache.dtype == torch.bfloat16 else 0.0
    for layer in range(L):
        kk, vv = cache.read(layer)
        assert kk.shape == vv.shape == (B, H, cache.seq_len, D)
        assert torch.equal(kk[:, :, nq:], k[:, :, nq:]) and torch.equal(vv[:, :, nq:], v[:, :, nq:])
        k_bound = cache.k_scale[layer, :, :, :nq // g].repeat_interleave(g, dim=-2) / 2
        v_bound = cache.v_scale[layer, :, :, :nq].unsqueeze(-1) / 2
        kq_, vq_ = k[:, :, :nq].float(), v[:, :, :nq].float()
        assert ((kk[:, :, :nq] - kq_).abs() <= k_bound * (1 + 1e-5) + 1e-6 + kq_.abs() * 2 * rounding).all()
        assert ((vv[:, :, :nq] - vq_).abs() <= v_bound * (1 + 1e-5) + 1e-6 + vq_.abs() * 2 * rounding).all()


def _write(cache: QuantizedKVCache, k: torch.Tensor, v: torch.Tensor, chunks: list[int]) -> list:
    returned, start = [], cache.seq_len
    for n in chunks:
        outs = [cache.update(layer, k[:, :, start:start + n], v[:, :, start:start + n]) for layer in range(L)]
        cache.advance(n)
        returned.append(outs)
        start += n
    return returned


@pytest.mark.parametrize(("prompt_len", "expected_nq"), [
    (5, 0),  # 比窗口 R = 8 短
    (8, 0),  # 恰好等于窗口
    (11, 0),  # R + G − 1：窗口最满，还没有整组溢出
    (12, 4),  # R + G：恰好一组溢出，窗口剩下恰好 R 个
    (23, 12),  # 比窗口长很多：量化 3 组，窗口 11 个
])
def test_window_boundaries(prompt_len, expected_nq):
    cache = _cache()
    k, v = _kv(prompt_len + 6, seed=prompt_len)
    (prefill,) = _write(cache, k, v, [prompt_len])
    assert cache.num_quantized == expected_nq
    window = cache.seq_len - cache.num_quantized
    assert window == prompt_len if prompt_len < 8 else 8 <= window < 8 + 4
    for layer in range(L):  # prefill 这次前向里，本次写入的 token 以全精度参与注意力（KIVI 的 prefill）
        assert torch.equal(prefill[layer][0], k[:, :, :prompt_len]) and torch.equal(prefill[layer][1],
                                                                                       v[:, :, :prompt_len])
    _assert_read_back(cache, k[:, :, :prompt_len], v[:, :, :prompt_len])
    steps = _write(cache, k, v, [1] * 6)  # 之后逐 token 解码：边界每 G 个 token 前进一组
    assert cache.num_quantized == cache.quantized_len(prompt_len + 6)
    last_k, last_v = steps[-1][0]
    assert last_k.shape == (B, H, prompt_len + 6, D)
    q0 = cache.quantized_len(cache.seq_len - 1)  # 最后一步之前已量化的部分：返回的是它们的反量化值
    assert torch.equal(last_k[:, :, :q0], cache.read(0)[0][:, :, :q0])
    assert torch.equal(last_k[:, :, q0:], k[:, :, q0:])  # 其余（含这一步刚量化的组）在这次前向里是全精度
    _assert_read_back(cache, k, v)


def test_state_does_not_depend_on_how_writes_are_chunked():
    """组按绝对位置对齐、只量化满组：一次 prefill 与不规则的分块写入，存下的码、scale、窗口逐位相同。"""
    k, v = _kv(45, seed=3)
    one, many = _cache(), _cache()
    _write(one, k, v, [45])
    _write(many, k, v, [3, 1, 10, 1, 1, 9, 20])
    for name in ("k_codes", "k_scale", "k_min", "v_codes", "v_scale"):
        assert torch.equal(getattr(one, name), getattr(many, name)), name
    w = one.seq_len - one.num_quantized
    assert torch.equal(one.k_window[:, :, :, :w], many.k_window[:, :, :, :w])
    _assert_read_back(many, k, v)


def test_lossless_inputs_reproduce_the_fp_cache_exactly():
    """K 的每个（组，通道）取遍 0..255、V 每个 token 的最大幅值为 127 的整数：量化恰好无损，
    于是每次 update 返回的 K/V 必须与 fp KVCache 逐位相同——窗口、拼接、组的位置都对。"""
    g = torch.Generator().manual_seed(0)
    t, group = 40, 4
    k = torch.randint(0, 256, (B, H, t, D), generator=g).float()
    k[:, :, 0::group], k[:, :, 1::group] = 0.0, 255.0  # 每组每通道都含 0 与 255：scale = 1，min = 0
    v = torch.randint(-127, 128, (B, H, t, D), generator=g).float()
    v[..., 0] = 127.0  # 每个 token 的最大幅值 127：scale = 1
    ours, ref = _cache(t, group_size=group), KVCache(L, B, H, t, D)
    start = 0
    for n in (13, 1, 1, 2, 5, 1, 17):
        for layer in range(L):
            got = ours.update(layer, k[:, :, start:start + n], v[:, :, start:start + n])
            want = ref.update(layer, k[:, :, start:start + n], v[:, :, start:start + n])
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        ours.advance(n)
        ref.advance(n)
        start += n
    assert ours.num_quantized == 32  # n_q(40) = ⌊(40 − 8)/4⌋·4


def test_bf16_cache_keeps_the_models_dtype():
    cache = _cache(dtype=torch.bfloat16)
    k, v = (x.bfloat16() for x in _kv(30))
    out = _write(cache, k, v, [20, 10])[-1][0]
    assert out[0].dtype == out[1].dtype == torch.bfloat16 and cache.k_codes.dtype == torch.uint8
    _assert_read_back(cache, k, v)


def test_seq_len_moves_only_inside_the_window():
    cache = _cache()
    k, v = _kv(20)
    _write(cache, k, v, [14])  # n_q = 4，窗口是位置 4..13
    cache.seq_len = 13  # 在窗口里回退：可以（位置 4..12 仍在窗口里）
    cache.seq_len = 12
    with pytest.raises(ValueError, match="量化边界"):
        cache.seq_len = 11  # 会跨回量化边界（n_q(11) = 0）：那些 token 已经不在窗口里了
    with pytest.raises(ValueError, match="量化边界"):
        cache.seq_len = 16  # 向前跳过一组从未写入的 token
    cache.reset()
    assert cache.seq_len == 0 and cache.num_quantized == 0


# ---- 3. 在模型里：一致率、内存、GPT-2、generate ----


def test_greedy_top1_agreement_on_a_trained_llama(peaked_llama, prompts):
    """4 条 prompt × 256 步 teacher-forced 的 top-1 一致率 ≥ 99%，两种窗口/组大小。"""
    for window, group in ((32, 64), (8, 16)):
        r = greedy_agreement(peaked_llama, prompts, 256, quantized_cache_factory(peaked_llama, window=window,
                                                                                 group_size=group))
        assert r["fp_self_agreement"] == 1.0  # 流程本身：fp 缓存在 teacher forcing 下复现了 generate
        assert r["num_quantized"] == QuantizedKVCache(1, 1, 1, 272, 1, window=window,
                                                      group_size=group).quantized_len(16 + 256 - 1)
        assert r["max_logit_err"] > 0  # 量化确实在起作用
        assert r["agreement"] >= 0.99, r


def test_agreement_metric_catches_a_broken_dequantizer(peaked_llama, prompts, monkeypatch):
    """同一个指标能失败：反量化 K 时漏掉每通道的 min（一个看似合理的 bug），一致率掉到 99% 以下很多。"""
    monkeypatch.setattr(kq, "dequantize_keys", lambda codes, scale, kmin: dequantize_keys(codes, scale,
                                                                                           torch.zeros_like(kmin)))
    r = greedy_agreement(peaked_llama, prompts[:2], 128, quantized_cache_factory(peaked_llama, window=8,
                                                                                 group_size=16))
    assert r["agreement"] < 0.9


def test_bytes_per_token(peaked_llama):
    cache = make_quantized_kv_cache(peaked_llama, 1, 4096)  # 默认 R = 32，G = 64
    d, g = cache.head_dim, cache.group_size
    per_head = (d + 8 * d / g) + (d + 4)  # K：码 + (scale, min) 摊到 G 个 token；V：码 + 1 个 scale
    assert cache.bytes_per_token() == cache.num_layers * cache.num_kv_heads * per_head
    fp32, bf16 = cache.dense_bytes_per_token(torch.float32), cache.dense_bytes_per_token(torch.bfloat16)
    assert fp32 == peaked_llama.make_kv_cache(1, 1).k.nbytes * 2
    assert fp32 / cache.bytes_per_token() >= 3.5  # D = 64：3.66×
    assert bf16 / cache.bytes_per_token() == pytest.approx(4 * d / (2 * d + 8 * d / g + 4))  # 1.83×
    # 实际分配（含常数的全精度窗口）在长上下文下也接近渐近值
    dense = peaked_llama.make_kv_cache(1, 4096)
    assert (dense.k.nbytes + dense.v.nbytes) / cache.nbytes() >= 3.4


def test_gpt2_uses_the_same_layout():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=97, n_positions=160, n_embd=64, n_layer=2, n_head=2, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)).eval()
    ids = torch.randint(0, 97, (2, 120))
    fp = teacher_forced_logits(model, ids, 10, model.make_kv_cache(2, 120))
    q = teacher_forced_logits(model, ids, 10, make_quantized_kv_cache(model, 2, 120, window=8, group_size=16))
    rel = float((q - fp).abs().max() / fp.abs().max())
    assert 0 < rel < 1e-2
    exact = model.generate(ids[:, :10], 20, temperature=0)  # 窗口装得下全部 token：与 fp 缓存逐位相同
    assert torch.equal(model.generate(ids[:, :10], 20, temperature=0,
                                      cache_factory=quantized_cache_factory(model, window=64)), exact)


def test_generate_default_is_unchanged_and_factory_is_used(peaked_llama, prompts):
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    default = peaked_llama.generate(prompts, 40, temperature=1.0, top_k=20, generator=g1)
    explicit = peaked_llama.generate(prompts, 40, temperature=1.0, top_k=20, generator=g2,
                                     cache_factory=peaked_llama.make_kv_cache)
    assert torch.equal(default, explicit)
    made = []

    def factory(b: int, n: int) -> QuantizedKVCache:
        made.append(make_quantized_kv_cache(peaked_llama, b, n, window=100))
        return made[-1]

    out = peaked_llama.generate(prompts, 40, temperature=0, cache_factory=factory)
    assert len(made) == 1 and made[0].max_seq_len == 56 and made[0].seq_len == 55  # 最后一个 token 不必写入
    assert torch.equal(out, peaked_llama.generate(prompts, 40, temperature=0))  # 窗口装得下：与 fp 相同


# ---- 4. 坏输入 ----


@pytest.mark.parametrize(("opts", "match"), [
    (dict(window=0), "window"), (dict(window=-4), "window"), (dict(group_size=0), "group_size"),
    (dict(group_size=2.0), "group_size"), (dict(bits=4), "bits"), (dict(bits=16), "bits"),
    (dict(dtype=torch.int8), "dtype"),
])
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        _cache(**opts)


def test_bad_inputs(peaked_llama, prompts):
    k, _ = _kv(10)
    with pytest.raises(ValueError, match="整数倍"):
        quantize_keys_per_channel(k, 4)  # 10 个 token 不是整组
    with pytest.raises(ValueError, match="bits"):
        quantized_cache_factory(peaked_llama, bits=4)  # 在造 factory 时就报，而不是解码开始时
    with pytest.raises(ValueError, match="use_cache"):
        peaked_llama.generate(prompts, 4, cache_factory=quantized_cache_factory(peaked_llama), use_cache=False)
    with pytest.raises(ValueError, match="batch_size"):  # factory 不按传入的批大小分配
        peaked_llama.generate(prompts, 4, cache_factory=lambda b, n: make_quantized_kv_cache(peaked_llama, 1, n))
    with pytest.raises(ValueError, match="max_seq_len"):
        peaked_llama.generate(prompts, 4, cache_factory=lambda b, n: make_quantized_kv_cache(peaked_llama, b, n - 1))
    with pytest.raises(ValueError, match="KVCache"):
        peaked_llama.generate(prompts, 4, cache_factory=lambda b, n: peaked_llama.make_paged_kv_cache(8))
    bf16 = QuantizedKVCache(2, 4, 2, 30, 64, dtype=torch.bfloat16)  # 与 fp32 的模型不一致：前向一开始就报
    with pytest.raises(ValueError, match="dtype"):
        peaked_llama(prompts, kv_cache=bf16)
    small = make_quantized_kv_cache(peaked_llama, 4, 20)
    with pytest.raises(ValueError, match="容量"):
        peaked_llama(torch.cat([prompts, prompts], 1), kv_cache=small)
    with pytest.raises(ValueError, match="make_kv_cache"):
        make_quantized_kv_cache(torch.nn.Linear(2, 2), 1, 8)
    with pytest.raises(ValueError, match="dtype"):  # 形状、dtype、设备跟着模型走，不是选项
        make_quantized_kv_cache(peaked_llama, 1, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="window"):
        quantized_cache_factory(peaked_llama, windows=8)  # 拼错的选项名


# ---- 5. GPU ----


@requires_cuda
def test_cuda_bf16_llama_decodes_with_the_quantized_cache():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512)
    model = Llama(cfg).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(0, 256, (2, 200), device="cuda")
    cache = make_quantized_kv_cache(model, 2, 200, window=16, group_size=32)
    assert cache.k_codes.is_cuda and cache.k_window.dtype == torch.bfloat16
    fp = teacher_forced_logits(model, ids, 8, model.make_kv_cache(2, 200))
    q = teacher_forced_logits(model, ids, 8, cache)
    assert float((q - fp).abs().max() / fp.abs().max()) < 5e-2
