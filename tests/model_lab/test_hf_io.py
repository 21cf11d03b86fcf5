"""model_lab/hf_io.py：两种模型共用的 HF 目录读写——共享权重的识别与重新绑定、写入顺序（权重先、config.json 最后）、
meta 设备上构造、不匹配时的报错。"""

from __future__ import annotations

import json

import pytest
import torch

import model_lab.hf_io as hf_io
from model_lab import GPT2, GPT2Config, Llama, LlamaConfig

LLAMA = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
             max_position_embeddings=32)
GPT = dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=None, eos_token_id=None)


def test_tied_parameters_found_for_both_models():
    assert hf_io.tied_parameters(Llama(LlamaConfig(**LLAMA, tie_word_embeddings=True))) == {
        "lm_head.weight": "model.embed_tokens.weight"}
    assert hf_io.tied_parameters(Llama(LlamaConfig(**LLAMA))) == {}
    assert hf_io.tied_parameters(GPT2(GPT2Config(**GPT))) == {"lm_head.weight": "transformer.wte.weight"}


@pytest.mark.parametrize("make", [lambda: Llama(LlamaConfig(**LLAMA, tie_word_embeddings=True)),
                                  lambda: GPT2(GPT2Config(**GPT))], ids=["llama", "gpt2"])
def test_weights_first_config_last_and_ties_restored(tmp_path, monkeypatch, make):
    model = make().eval()
    seen = []
    real_atomic_write = hf_io.atomic_write

    def spy(path, data, *args, **kwargs):  # 写 config.json 时权重文件必须已经完整落盘
        seen.append(((tmp_path / "model.safetensors").is_file(), path.name))
        return real_atomic_write(path, data, *args, **kwargs)

    monkeypatch.setattr(hf_io, "atomic_write", spy)
    model.save_pretrained(tmp_path)
    assert seen == [(True, "config.json")]
    from safetensors.torch import load_file

    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))  # 共享的 lm_head 不写
    again = type(model).from_pretrained(tmp_path)
    assert set(hf_io.tied_parameters(again)) == {"lm_head.weight"}  # 加载后重新绑定，而不是两份独立的参数
    assert not any(t.is_meta for t in [*again.parameters(), *again.buffers()])
    ids = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)


def test_wrong_architecture_and_missing_weights_name_the_problem(tmp_path):
    GPT2(GPT2Config(**GPT)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*不是 LlamaForCausalLM"):
        Llama.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 2}))
    with pytest.raises(ValueError, match=r"缺少 \['transformer\.h\.1\.attn\.c_attn\.bias'"):
        GPT2.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"没有 model.safetensors"):
        GPT2.from_pretrained(tmp_path)
