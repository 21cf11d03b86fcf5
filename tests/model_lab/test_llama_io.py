"""Llama 的配置、与 HF 目录互通（save_pretrained / from_pretrained）、以及坏输入的报错。"""

from __future__ import annotations

import importlib
import json

import pytest
import torch
import transformers

from model_lab import Llama, LlamaConfig

llama = importlib.import_module("model_lab.02_architectures.llama")  # 模块私有的 rope_inv_freq

SMALL = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def _hf_model(tied: bool, **extra) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**SMALL, tie_word_embeddings=tied, **extra)
    return transformers.LlamaForCausalLM(cfg).eval()


# ---- 配置 ----

def test_defaults_match_transformers_llama_config():
    ours, ref = LlamaConfig(), transformers.LlamaConfig()
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                 "attention_bias", "mlp_bias", "initializer_range", "bos_token_id", "eos_token_id"):
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.rope_theta == ref.rope_parameters["rope_theta"]


def test_to_dict_from_dict_roundtrip_and_hf_reads_it():
    cfg = LlamaConfig(**SMALL, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    d = cfg.to_dict()
    assert d["architectures"] == ["LlamaForCausalLM"] and d["model_type"] == "llama"
    assert d["rope_parameters"]["rope_type"] == "llama3" and d["rope_parameters"]["rope_theta"] == 10000.0
    assert LlamaConfig.from_dict(d) == cfg
    d.pop("attn_implementation"), d.pop("kernels")
    hf = transformers.LlamaConfig(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    assert LlamaConfig.from_dict(hf.to_dict()) == cfg  # 读回 HF 的 to_dict（含一堆与结构无关的键）


def test_reads_v4_and_v5_rope_forms():
    v4 = {**SMALL, "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    v5 = {**SMALL, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}}
    a, b = LlamaConfig.from_dict(v4), LlamaConfig.from_dict(v5)
    assert a == b and a.rope_theta == 500000.0 and a.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert LlamaConfig.from_dict({**SMALL, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}
                                 ).rope_scaling is None


@pytest.mark.parametrize("rope_scaling", [
    {"rope_type": "linear", "factor": 3.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 16, "beta_slow": 2},
    {"rope_type": "yarn", "factor": 4.0, "mscale": 0.707, "mscale_all_dim": 1.0, "truncate": False},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
])
def test_rope_inv_freq_matches_hf_init_functions(rope_scaling):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(**SMALL, rope_theta=50000.0, rope_scaling=rope_scaling)
    d = cfg.to_dict()
    d.pop("attn_implementation"), d.pop("kernels")
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    ref_freq, ref_scale = ROPE_INIT_FUNCTIONS[rope_scaling["rope_type"]](hf_cfg, "cpu")
    freq, scale = llama.rope_inv_freq(cfg)
    torch.testing.assert_close(freq, ref_freq, rtol=0, atol=0)
    assert scale == pytest.approx(ref_scale, rel=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden_size=50), r"hidden_size=50 is not divisible by num_attention_heads=4"),
    (dict(num_key_value_heads=3), r"num_attention_heads=4 is not divisible by num_key_value_heads=3"),
    (dict(rope_scaling={"rope_type": "ntk-magic", "factor": 2.0}), r"rope_type='ntk-magic'"),
    (dict(rope_scaling={"rope_type": "linear"}), r"缺少字段.*factor"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0, "beta_fast": 3}), r"未知字段.*beta_fast"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 0.5}), r"factor"),
    (dict(head_dim=7), r"head_dim=7"),
    (dict(vocab_size=0), r"vocab_size=0"),
    (dict(hidden_act="gelu"), r"hidden_act='gelu'"),
    (dict(attention_dropout=0.1), r"attention_dropout"),
])
def test_invalid_config_fails_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig(**{**SMALL, **kwargs})


def test_unknown_keys_in_from_dict():
    with pytest.raises(ValueError, match=r"hidden_sise"):
        LlamaConfig.from_dict({**SMALL, "hidden_sise": 64})
    with pytest.raises(ValueError, match=r"model_type='gpt2'"):
        LlamaConfig.from_dict({**SMALL, "model_type": "gpt2"})


def test_unknown_attention_backend():
    with pytest.raises(ValueError, match=r"attn_implementation='flash9'.*eager.*sdpa"):
        Llama(LlamaConfig(**SMALL, attn_implementation="flash9"))


# ---- 坏输入 ----

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Llama(LlamaConfig(**SMALL)).eval()


def test_too_long_input(tiny):
    with pytest.raises(ValueError, match=r"max_position_embeddings=64"):
        tiny(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"max_position_embeddings=64"):
        tiny.generate(torch.zeros(1, 60, dtype=torch.long), max_new_tokens=5)


@pytest.mark.parametrize("bad", [97, 1000, -1])
def test_token_ids_outside_vocab(tiny, bad):
    ids = torch.tensor([[1, 2, bad]])
    with pytest.raises(ValueError, match=rf"token id {bad} .*\[0, 97\)"):
        tiny(ids)


def test_wrong_input_shapes_and_dtypes(tiny):
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        tiny(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"torch.long"):
        tiny(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"targets"):
        tiny(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


def test_kv_cache_overflow_and_batch_mismatch(tiny):
    cache = tiny.make_kv_cache(batch_size=1, max_seq_len=8)
    tiny(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match=r"kv_cache 容量 8"):
        tiny(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match=r"batch_size=1"):
        tiny(torch.zeros(2, 1, dtype=torch.long), kv_cache=cache)


# ---- 与 HF 目录互通 ----

@pytest.mark.parametrize("tied", [False, True])
def test_load_hf_saved_directory(tmp_path, tied):
    hf = _hf_model(tied, rope_scaling={"rope_type": "linear", "factor": 2.0}, attention_bias=True)
    hf.save_pretrained(tmp_path)
    model = Llama.from_pretrained(tmp_path)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)
    assert model.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("tied", [False, True])
def test_hf_loads_our_saved_directory(tmp_path, tied):
    torch.manual_seed(1)
    model = Llama(LlamaConfig(**SMALL, tie_word_embeddings=tied,
                              rope_scaling={"rope_type": "yarn", "factor": 2.0,
                                            "original_max_position_embeddings": 32})).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # 无残留临时文件
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=1e-5, atol=1e-5)
    assert hf.config.tie_word_embeddings == tied


def test_roundtrip_bf16_and_dtype_override(tmp_path):
    torch.manual_seed(2)
    model = Llama(LlamaConfig(**SMALL)).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    again = Llama.from_pretrained(tmp_path)
    assert again.lm_head.weight.dtype == torch.bfloat16
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    as_fp32 = Llama.from_pretrained(tmp_path, dtype=torch.float32)
    assert as_fp32.lm_head.weight.dtype == torch.float32
    assert as_fp32.model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE 频率不随权重降精度


def test_sharded_hf_checkpoint(tmp_path):
    hf = _hf_model(False)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model = Llama.from_pretrained(tmp_path)
    ids = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"不存在"):
        Llama.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"config.json"):
        Llama.from_pretrained(tmp_path)

    gpt2_dir = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50,
                                                         n_positions=16)).save_pretrained(gpt2_dir)
    with pytest.raises(ValueError, match=r"gpt2.*不是 LlamaForCausalLM"):
        Llama.from_pretrained(gpt2_dir)

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    _hf_model(False).save_pretrained(broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    del state["lm_head.weight"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ValueError, match=r"缺少 \['lm_head.weight', 'model.layers.1.mlp.up_proj.weight'\]"):
        Llama.from_pretrained(broken)

    cfg = json.loads((broken / "config.json").read_text())
    cfg["hidden_sise"] = 3
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"hidden_sise"):
        Llama.from_pretrained(broken)
