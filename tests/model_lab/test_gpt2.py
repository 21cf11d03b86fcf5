"""GPT-2 与 transformers.GPT2LMHeadModel 逐项对照：logits、loss、全部参数的梯度、贪心生成、
KV cache、padding 掩码、save/load 双向往返、参数量与 FLOPs 计数、初始化、错误信息。"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model_lab import GPT2, GPT2Config, build_gpt2_hf_reference

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)

# 几种结构：默认形状；n_inner 设为奇数、3 个头、另一种 GELU；HF 的可选开关全开且不共享 lm_head；
# 不缩放的注意力 + ReLU。attn 是 HF 那边用的注意力实现。
CONFIGS = {
    "base": (dict(vocab_size=97, n_positions=48, n_embd=32, n_layer=2, n_head=4), "sdpa"),
    "odd_inner": (dict(vocab_size=101, n_positions=40, n_embd=48, n_layer=3, n_head=3, n_inner=50,
                       activation_function="gelu_pytorch_tanh", layer_norm_epsilon=1e-6), "sdpa"),
    "hf_switches": (dict(vocab_size=64, n_positions=40, n_embd=32, n_layer=3, n_head=2, n_inner=72,
                         activation_function="gelu", scale_attn_by_inverse_layer_idx=True,
                         reorder_and_upcast_attn=True, tie_word_embeddings=False), "eager"),
    "unscaled_relu": (dict(vocab_size=80, n_positions=40, n_embd=24, n_layer=2, n_head=6,
                           activation_function="relu", scale_attn_weights=False, initializer_range=0.05), "eager"),
}


def make_pair(name: str, seed: int = 0):
    kwargs, attn = CONFIGS[name]
    torch.manual_seed(seed)
    model = GPT2(GPT2Config(**kwargs, **NO_DROPOUT)).eval()
    hf = build_gpt2_hf_reference(model, attn_implementation=attn)
    return model, hf


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    return make_pair(request.param)


# ---------------------------------------------------------------------------
# 前向、损失、梯度
# ---------------------------------------------------------------------------
def test_state_dict_names_and_shapes_equal_hf(pair):
    model, hf = pair
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert ours == theirs


@pytest.mark.parametrize("T", [1, 7, 13])
def test_logits_match_hf(pair, T):
    model, hf = pair
    ids = torch.randint(0, model.config.vocab_size, (3, T))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(ids).logits
    assert ours.shape == (3, T, model.config.vocab_size)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_logits_match_hf_at_full_context(pair):
    model, hf = pair
    ids = torch.randint(0, model.config.vocab_size, (2, model.config.n_positions))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_and_all_gradients_match_hf(name):
    model, hf = make_pair(name, seed=1)
    model.train()  # dropout 都是 0：train 模式也是确定的
    hf.train()
    B, T = 3, 11
    labels = torch.randint(0, model.config.vocab_size, (B, T))
    labels[0, 4:] = -100  # 一部分位置不计入损失
    ids = labels.clamp(min=0)
    # nanoGPT 约定的 targets = HF 的 labels 左移一位、末尾补 -100
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    logits, loss = model(ids, targets)
    out = hf(ids, labels=labels)
    torch.testing.assert_close(loss, out.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=0)
    loss.backward()
    out.loss.backward()
    theirs = dict(hf.named_parameters())
    ours = dict(model.named_parameters())
    assert ours.keys() == theirs.keys()
    for key, p in ours.items():
        assert p.grad is not None, key
        torch.testing.assert_close(p.grad, theirs[key].grad, atol=1e-5, rtol=1e-4, msg=key)


def test_padding_mask_matches_hf():
    model, hf = make_pair("base", seed=2)
    ids = torch.randint(0, model.config.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # 右 padding
    mask[1, :3] = 0  # 左 padding
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = hf(ids, attention_mask=mask).logits
        alone = model(ids[:1, :6])  # 右 padding 不影响真实 token：等于单独跑那 6 个 token
    real = mask.bool()
    assert torch.isfinite(ours).all()  # 左 padding 那几行全被禁止，也不能出 NaN
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[0, :6], alone[0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------
# KV cache 与生成
# ---------------------------------------------------------------------------
def test_kv_cache_decoding_equals_full_recomputation(pair):
    model, _ = pair
    ids = torch.randint(0, model.config.vocab_size, (2, 15))
    with torch.no_grad():
        full = model(ids)
        cache = model.make_kv_cache(batch_size=2)
        chunks = [ids[:, :5], ids[:, 5:6], ids[:, 6:9], ids[:, 9:10], ids[:, 10:]]  # prefill、单步与多 token 混合
        pieces = [model(chunk, kv_cache=cache) for chunk in chunks]
    assert cache.seq_len == 15
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_kv_cache_with_attention_mask_matches_full():
    model, _ = make_pair("odd_inner", seed=3)
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = model.make_kv_cache(batch_size=2, max_seq_len=10)
        head = model(ids[:, :6], kv_cache=cache, attention_mask=mask[:, :6])
        tail = model(ids[:, 6:], kv_cache=cache, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(torch.cat([head, tail], dim=1)[real], full[real], atol=1e-5, rtol=0)


def test_greedy_generate_matches_hf(pair):
    model, hf = pair
    prompt = torch.randint(0, model.config.vocab_size, (2, 5))
    ours = model.generate(prompt, max_new_tokens=32, temperature=0.0)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False,
                         pad_token_id=0)
    assert ours.shape == (2, 37)
    assert torch.equal(ours, theirs)


def test_generate_sampling_is_reproducible_and_top_k_1_is_greedy():
    model, _ = make_pair("base", seed=4)
    prompt = torch.randint(0, model.config.vocab_size, (2, 3))
    a = model.generate(prompt, 12, temperature=1.3, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 12, temperature=1.3, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(a[:, :3], prompt)
    greedy = model.generate(prompt, 12, temperature=0.0)
    assert torch.equal(model.generate(prompt, 12, temperature=0.8, top_k=1), greedy)


def test_left_padded_batch_generate_matches_hf():
    """左 padding 的批量生成：与 HF 一样按 attention_mask 推出位置（从第一个真实 token 记 0），逐 token 相同。"""
    model, hf = make_pair("base", seed=12)
    prompt = torch.randint(1, model.config.vocab_size, (3, 6))
    mask = torch.ones_like(prompt)
    prompt[0, :2], mask[0, :2] = 0, 0
    prompt[2, :5], mask[2, :5] = 0, 0
    ours = model.generate(prompt, 10, temperature=0.0, attention_mask=mask)
    theirs = hf.generate(prompt, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    alone = model.generate(prompt[2:, 5:], 10, temperature=0.0)  # 去掉 padding 单独生成：结果相同
    assert torch.equal(ours[2, 6:], alone[0, 1:])


def test_generate_eos_padding_and_no_cache_path():
    model, hf = make_pair("odd_inner", seed=13)
    prompt = torch.randint(0, model.config.vocab_size, (2, 3))
    greedy = model.generate(prompt, 10, temperature=0.0)
    eos = int(greedy[0, 5])
    out = model.generate(prompt, 10, temperature=0.0, eos_token_id=eos)
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                      eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(out, ref)
    row0 = out[0, 3:].tolist()
    assert all(tok == eos for tok in row0[row0.index(eos):])
    a = model.generate(prompt, 8, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 8, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(1),
                       use_cache=False)
    assert torch.equal(a, b)


def test_attention_and_residual_dropout_equal_hf_eager():
    """train 模式、dropout 全开：同一个种子下与 HF eager 逐位一致（dropout 的位置与随机数消耗顺序都相同）。"""
    torch.manual_seed(14)
    model = GPT2(GPT2Config(**CONFIGS["base"][0], attn_pdrop=0.2, resid_pdrop=0.1, embd_pdrop=0.1,
                            bos_token_id=None, eos_token_id=None, attn_implementation="eager")).train()
    hf = build_gpt2_hf_reference(model).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    torch.manual_seed(0)
    ours = model(ids)
    torch.manual_seed(0)
    theirs = hf(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.manual_seed(1)
    assert not torch.allclose(model(ids), ours)  # dropout 真的起作用


# ---------------------------------------------------------------------------
# 保存 / 加载
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["base", "hf_switches"])
def test_hf_loads_what_we_save(name, tmp_path):
    model, _ = make_pair(name, seed=5)
    model.save_pretrained(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # 原子写入不留临时文件
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=0)
    assert GPT2.from_pretrained(tmp_path).config == model.config


@pytest.mark.parametrize("name", ["base", "hf_switches"])
def test_we_load_what_hf_saves(name, tmp_path):
    _, hf = make_pair(name, seed=6)
    hf.save_pretrained(tmp_path)
    model = GPT2.from_pretrained(tmp_path).eval()
    assert (model.lm_head.weight is model.transformer.wte.weight) == model.config.tie_word_embeddings
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=0)


def test_dtype_policy_keeps_file_dtype_unless_asked(tmp_path):
    """与 Llama 相同：dtype=None 保持文件里的 dtype，给了 dtype 才转换。"""
    model, _ = make_pair("base", seed=15)
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    again = GPT2.from_pretrained(tmp_path)
    assert again.transformer.wte.weight.dtype == torch.bfloat16 and not again.training
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert GPT2.from_pretrained(tmp_path, dtype=torch.float32).lm_head.weight.dtype == torch.float32
    assert GPT2.from_pretrained(tmp_path, attn_implementation="eager").config.attn_implementation == "eager"


def test_we_load_sharded_hf_checkpoint(tmp_path):
    _, hf = make_pair("odd_inner", seed=11)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = GPT2.from_pretrained(tmp_path)
    for key, value in hf.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0, msg=key)


def test_loads_old_style_checkpoint_with_mask_buffers_and_no_prefix(tmp_path):
    # 老 checkpoint：只存了 GPT2Model（键没有 "transformer."），并带着 attn.bias / attn.masked_bias 掩码 buffer
    model, _ = make_pair("base", seed=7)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    T = model.config.n_positions
    old = {k.removeprefix("transformer."): v for k, v in state.items()}
    for i in range(model.config.n_layer):
        old[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
        old[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = GPT2.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_load_errors_name_the_problem(tmp_path):
    model, _ = make_pair("base", seed=8)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight"):
        GPT2.from_pretrained(tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type='llama'"):
        GPT2.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "rotary_dim": 8}))
    with pytest.raises(ValueError, match="rotary_dim"):
        GPT2.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT2.from_pretrained(tmp_path / "nowhere")


def test_load_rejects_wrong_shapes(tmp_path):
    model, _ = make_pair("base", seed=9)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_inner": 64}))
    with pytest.raises(ValueError, match=r"mlp\.c_fc\.(weight|bias) 的形状"):
        GPT2.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------
# 计数与初始化
# ---------------------------------------------------------------------------
def test_parameter_count_matches_hf(pair):
    model, hf = pair
    assert model.num_parameters() == hf.num_parameters() == sum(p.numel() for p in hf.parameters())
    embed = model.transformer.wpe.weight.numel() + model.transformer.wte.weight.numel()
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - embed


def test_gpt2_small_has_124m_parameters():
    with torch.device("meta"):  # 不分配内存，只数形状
        model = GPT2(GPT2Config())
    assert model.num_parameters() == 124_439_808


def test_flops_per_token_matches_torch_flop_counter(pair):
    from torch.utils.flop_counter import FlopCounterMode

    # CPU 上 SDPA 的 kernel 没有在 FlopCounterMode 里登记（计为 0），所以用 eager 后端的同结构模型来数：
    # 那条路径的 q·kᵀ 与 att·v 是普通 matmul，计数器看得见
    model = GPT2(dataclasses.replace(pair[0].config, attn_implementation="eager"))
    B, T = 2, 12
    ids = torch.randint(0, model.config.vocab_size, (B, T))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids)
    assert counter.get_total_flops() == B * T * model.flops_per_token(T, backward=False)
    assert model.flops_per_token(T) == 3 * model.flops_per_token(T, backward=False)


def test_init_follows_gpt2_scheme():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=512, n_positions=256, n_embd=256, n_layer=8, n_head=4)
    model = GPT2(config)
    scaled = 0.02 / math.sqrt(2 * config.n_layer)
    for i, block in enumerate(model.transformer.h):
        assert block.attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05), i
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05), i
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05), i
        assert torch.count_nonzero(block.attn.c_attn.bias) == 0
        assert torch.equal(block.ln_1.weight, torch.ones(config.n_embd))
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.lm_head.weight is model.transformer.wte.weight


# ---------------------------------------------------------------------------
# 错误信息
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_embd=100, n_head=3), "n_embd=100 不能被 n_head=3 整除"),
        (dict(n_layer=0), "n_layer=0"),
        (dict(n_inner=-4), "n_inner=-4"),
        (dict(activation_function="swiglu"), "activation_function='swiglu'"),
        (dict(attn_pdrop=1.0), "attn_pdrop=1.0"),
        (dict(layer_norm_epsilon=0), "layer_norm_epsilon=0"),
        (dict(tie_word_embeddings="yes"), "tie_word_embeddings='yes'"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPT2Config(**kwargs)


def test_config_from_dict_rejects_unknown_keys():
    assert GPT2Config.from_dict({"n_embd": 64, "n_head": 4}).n_embd == 64
    with pytest.raises(ValueError, match="n_embed"):
        GPT2Config.from_dict({"n_embed": 64})


def test_bad_inputs_get_clear_errors():
    model, _ = make_pair("base", seed=10)
    V, P = model.config.vocab_size, model.config.n_positions
    with pytest.raises(ValueError, match=f"超过 n_positions={P}"):
        model(torch.zeros(1, P + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=f"vocab_size={V}"):
        model(torch.tensor([[1, V]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"\(B, T\) 的 torch.long"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="targets 形状"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask 形状"):
        model(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=f"n_positions={P}"):
        model.generate(torch.zeros(1, 10, dtype=torch.long), max_new_tokens=P)
    cache = model.make_kv_cache(1, max_seq_len=4)
    model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="max_seq_len=4"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=cache)


@pytest.mark.slow
def test_runs_as_module_with_smoke(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = {**os.environ, "SMOKE": "1", "PYTHONPATH": str(REPO_ROOT), "LLM_CHECKPOINTS_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "model_lab.02_architectures.gpt2"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "与 HF generate 一致：True" in proc.stdout
    assert (tmp_path / "figures" / "gpt2_kv_cache.png").is_file()


# ---------------------------------------------------------------------------
# 练习模式（utils/exercise_parts/model_lab.py）：零件单独对照 HF，挖空后失败的位置一眼看得出来
# ---------------------------------------------------------------------------
def test_new_gelu_equals_hf_new_gelu_activation_bitwise():
    import importlib

    from transformers.activations import NewGELUActivation

    gpt2 = importlib.import_module("model_lab.02_architectures.gpt2")
    x = torch.cat([torch.linspace(-12, 12, 241), torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3])
    ours = gpt2._new_gelu(x)
    assert torch.equal(ours, NewGELUActivation()(x))  # 同一个 tanh 近似公式、同一串算子：逐位相同
    torch.testing.assert_close(ours, F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-6)
    assert (ours - F.gelu(x)).abs().max() > 1e-5  # 与精确的 erf 版 GELU 不是同一个函数


def test_conv1d_equals_hf_conv1d_bitwise():
    import importlib

    from transformers.pytorch_utils import Conv1D as HFConv1D

    gpt2 = importlib.import_module("model_lab.02_architectures.gpt2")
    torch.manual_seed(0)
    ours = gpt2.Conv1D(6, 10)
    torch.nn.init.normal_(ours.weight)
    torch.nn.init.normal_(ours.bias)
    theirs = HFConv1D(10, 6)  # HF 的参数顺序是 (nf = 输出, nx = 输入)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 5, 6)  # 多个前导维
    y = ours(x)
    assert y.shape == (2, 3, 5, 10)
    assert torch.equal(y, theirs(x))
    torch.testing.assert_close(y, x @ ours.weight + ours.bias)  # 权重是 (in, out)：x @ W，不是 x @ Wᵀ
