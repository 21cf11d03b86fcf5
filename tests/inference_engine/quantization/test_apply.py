"""apply.py 与命令行：每种方案装进小 Llama 后 logits 接近浮点、能 generate、保存加载逐位往返；GPTQ 逐层顺序（后面的层
看到前面已量化的输出）、其余一遍；按名字 include / exclude；GPT-2 的 Conv1D；每种坏输入的报错；命令行出表。

SQNR 门槛（logits，随机初始化的 2 层 Llama，hidden 128，实测）：int8 43 dB、SmoothQuant 40 dB，4 位的 int4 / GPTQ / AWQ / NF4
19–20 dB。依据：int8 对称 per-channel 的权重 SQNR ≈ 10·log10(12·127.5²/9) ≈ 43 dB；4 位少了 4 位 ≈ 24 dB，约 19–20 dB。
随机模型的残差流由嵌入主导，14 个量化层的误差叠加后 logits 的 SQNR 仍接近单层的权重 SQNR。
门槛取 int8 / SmoothQuant > 30 dB、4 位 > 12 dB：比实测低 7–13 dB，换种子不会误报，而码、scale 或替换出错（例如漏了
bias、层接错、组大小错位）都会把 SQNR 打到个位数甚至负数。
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from inference_engine.quantization import apply
from inference_engine.quantization.__main__ import evaluate_bpb, load_eval_data, make_demo_dir
from inference_engine.quantization.__main__ import main as cli_main
from inference_engine.quantization.apply import (
    SCHEMES,
    collect_layer_inputs,
    default_targets,
    load_quantized,
    model_nbytes,
    quantize,
    quantized_modules,
    save_quantized,
    select_linears,
    unsupported_layers,
)
from inference_engine.quantization.basics import sqnr
from inference_engine.quantization.gptq import GPTQLinear
from model_lab import GPT2, GPT2Config, Llama, LlamaConfig
from tests.conftest import REPO_ROOT

MIN_SQNR = {"int8": 30.0, "smoothquant": 30.0, "int4": 12.0, "gptq": 12.0, "awq": 12.0, "nf4": 12.0}
CALIBRATED = ("gptq", "awq", "smoothquant")


def tiny_llama() -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=128)).eval()


@pytest.fixture(scope="module")
def llama():
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 256, (4, 64), generator=g)  # 256 个 token = 最宽一层（down_proj）的 in_features
    x = torch.randint(0, 256, (2, 48), generator=g)
    with torch.no_grad():
        ref = model(x)
    return model, calib, x, ref


def _quantized(llama, scheme: str, **kw):
    model, calib, _, _ = llama
    return quantize(copy.deepcopy(model), scheme, calib if scheme in CALIBRATED else None, **kw)


def test_registry_names_every_scheme():
    assert sorted(SCHEMES) == ["awq", "gptq", "int4", "int8", "nf4", "smoothquant"]
    assert all(cls.scheme == name for name, cls in SCHEMES.items())


@pytest.mark.parametrize("scheme", sorted(MIN_SQNR))
def test_scheme_close_to_fp_generates_and_round_trips_bit_identically(llama, scheme, tmp_path):
    fp, _, x, ref = llama
    model = _quantized(llama, scheme)
    targets = default_targets(fp)
    assert len(targets) == 14 and "lm_head" not in targets  # 2 层 × (q, k, v, o, gate, up, down)
    layers = quantized_modules(model)
    assert list(layers) == targets and all(type(m) is SCHEMES[scheme] for m in layers.values())
    assert type(model.lm_head) is nn.Linear and type(model.model.embed_tokens) is nn.Embedding
    with torch.no_grad():
        out = model(x)
    assert sqnr(ref, out) > MIN_SQNR[scheme]
    assert model_nbytes(model) < 0.7 * model_nbytes(fp)
    prompt = x[:1, :8]
    gen = model.generate(prompt, 6, temperature=0.0)
    assert gen.shape == (1, 14) and torch.equal(gen[:, :8], prompt)

    save_quantized(model, tmp_path / scheme)
    info = json.loads((tmp_path / scheme / "quantization.json").read_text())
    assert info["scheme"] == scheme and sorted(info["modules"]) == sorted(targets)
    back = load_quantized(tmp_path / scheme)
    assert type(back) is Llama and all(type(m) is SCHEMES[scheme] for m in quantized_modules(back).values())
    with torch.no_grad():
        assert torch.equal(back(x), out)  # 逐位相同：码、scale、选项都原样回来
    assert torch.equal(back.generate(prompt, 6, temperature=0.0), gen)


def test_gptq_quantizes_layer_by_layer_and_awq_in_one_pass(llama, monkeypatch):
    """GPTQ：第 1 层拿到的校准输入 = 第 0 层已量化的模型算出的输入（≠ 浮点模型的）；AWQ：全部来自浮点模型。"""
    fp, calib, _, _ = llama
    seen = []
    for cls in (GPTQLinear, SCHEMES["awq"]):
        original = cls.from_float.__func__

        def spy(cls, linear, *, calib_inputs=None, _original=original, **kw):
            seen.append(calib_inputs.clone())
            return _original(cls, linear, calib_inputs=calib_inputs, **kw)

        monkeypatch.setattr(cls, "from_float", classmethod(spy))
    name0, name1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"
    targets = default_targets(fp)
    fp_inputs = collect_layer_inputs(fp, select_linears(fp, [name0, name1]), calib)

    gptq = _quantized(llama, "gptq")
    got = dict(zip(targets, seen))
    after_layer0 = collect_layer_inputs(gptq, {name1: gptq.get_submodule(name1)}, calib)[name1]
    assert torch.equal(got[name0], fp_inputs[name0])
    assert torch.equal(got[name1], after_layer0)
    assert (got[name1] - fp_inputs[name1]).abs().max() > 1e-4  # 真的不同：前一层的量化误差传了下来

    seen.clear()
    _quantized(llama, "awq")
    got = dict(zip(targets, seen))
    assert torch.equal(got[name0], fp_inputs[name0]) and torch.equal(got[name1], fp_inputs[name1])


def test_include_and_exclude_by_hf_name(llama):
    fp, _, x, ref = llama
    only_q = _quantized(llama, "int8", include=["q_proj"])
    assert list(quantized_modules(only_q)) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    layer0 = _quantized(llama, "int4", include=["model.layers.0.*"], exclude=("o_proj", "*.mlp.down_proj"))
    assert list(quantized_modules(layer0)) == [f"model.layers.0.{n}" for n in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")]
    with pytest.raises(ValueError, match="lm_head 不能量化"):
        _quantized(llama, "int8", include=["lm_head"], exclude=())


def test_gpt2_conv1d_layers_quantize_and_round_trip(tmp_path):
    torch.manual_seed(0)
    fp = GPT2(GPT2Config(vocab_size=256, n_positions=128, n_embd=128, n_layer=2, n_head=4)).eval()
    calib = torch.randint(0, 256, (8, 64))  # 512 个 token = mlp.c_proj 的 in_features
    x = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        ref = fp(x)
    for scheme in ("int8", "gptq"):
        model = quantize(copy.deepcopy(fp), scheme, calib)
        assert list(quantized_modules(model)) == [f"transformer.h.{i}.{n}" for i in range(2)
                                                  for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
        with torch.no_grad():
            out = model(x)
        assert sqnr(ref, out) > MIN_SQNR[scheme]
        assert model.generate(x[:1, :4], 4, temperature=0.0).shape == (1, 8)
        back = load_quantized(save_quantized(model, tmp_path / scheme), GPT2)
        with torch.no_grad():
            assert torch.equal(back(x), out)


def test_bad_inputs_raise_clear_errors(llama):
    fp, calib, _, _ = llama
    with pytest.raises(ValueError, match=r"未知的量化方案 'int3'.*'int8'"):
        quantize(copy.deepcopy(fp), "int3")
    with pytest.raises(ValueError, match="gptq 需要校准数据"):
        quantize(copy.deepcopy(fp), "gptq")
    with pytest.raises(ValueError, match=r"\(B, T\) 的整数"):
        quantize(copy.deepcopy(fp), "awq", calib.flatten())
    with pytest.raises(ValueError, match=r"\(B, T\) 的整数"):
        quantize(copy.deepcopy(fp), "smoothquant", calib.float())
    with pytest.raises(ValueError, match="只有 16 个 token.*至少要 256"):
        quantize(copy.deepcopy(fp), "gptq", calib[:1, :16])
    with pytest.raises(ValueError, match="只有 32 个 token.*至少要 64"):
        quantize(copy.deepcopy(fp), "awq", calib[:1, :32])
    with pytest.raises(ValueError, match="RMSNorm"):
        quantize(copy.deepcopy(fp), "int8", include=["model.norm"])
    with pytest.raises(ValueError, match="Embedding"):
        quantize(copy.deepcopy(fp), "int8", include=["embed_tokens"])
    with pytest.raises(ValueError, match="没有匹配到任何线性层"):
        quantize(copy.deepcopy(fp), "int8", include=["qproj"])
    with pytest.raises(ValueError, match="列表"):
        quantize(copy.deepcopy(fp), "int8", include="q_proj")
    with pytest.raises(ValueError, match=r"量化 model\.layers\.0\.self_attn\.q_proj（int4）失败：group_size=256 不能整除"):
        quantize(copy.deepcopy(fp), "int4", group_size=256)
    assert set(unsupported_layers(fp, "int4", group_size=256)) == {n for n in default_targets(fp) if "down_proj" not in n}
    quantized = _quantized(llama, "int8", include=["q_proj"])
    with pytest.raises(ValueError, match="已经量化"):
        quantize(quantized, "int8", include=["q_proj"])
    with pytest.raises(ValueError, match="没有量化层"):
        save_quantized(fp, "unused")


def test_loading_rejects_mismatched_directories(llama, tmp_path):
    d = save_quantized(_quantized(llama, "int4"), tmp_path / "q")
    qjson = d / "quantization.json"
    info = json.loads(qjson.read_text())
    with pytest.raises(ValueError, match="存的是 'int4'.*不是要求的 'int8'"):
        load_quantized(d, scheme="int8")
    with pytest.raises(ValueError, match="不能用 GPT2 加载"):
        load_quantized(d, GPT2)
    with pytest.raises(ValueError, match="不匹配"):  # 浮点的加载器不会把量化目录当成普通 checkpoint
        Llama.from_pretrained(d)

    qjson.write_text(json.dumps({**info, "scheme": "int8"}))  # 记录的方案与它的选项不符
    with pytest.raises(ValueError, match="方案 'int8' 与选项.*对不上：int8 方案没有可调的选项"):
        load_quantized(d)
    int8_modules = {k: {**v, "options": {}} for k, v in info["modules"].items()}
    qjson.write_text(json.dumps({**info, "scheme": "int8", "modules": int8_modules}))  # 方案与权重不符：多出 zeros
    with pytest.raises(ValueError, match=r"方案 'int8'.*多出 \['model\.layers\.0\.mlp\.down_proj\.zeros'"):
        load_quantized(d)
    modules = {k: {**v, "options": {**v["options"], "group_size": 64}} for k, v in info["modules"].items()}
    qjson.write_text(json.dumps({**info, "modules": modules}))  # 选项与权重不符：scales 的形状不同
    with pytest.raises(ValueError, match=r"scales 在文件里是 \(128, 1\).*应为 \(128, 2\)"):
        load_quantized(d)
    qjson.write_text(json.dumps(info))
    state = load_file(d / "model.safetensors")
    state.pop("model.layers.1.mlp.up_proj.zeros")
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="SHA-256"):
        load_quantized(d)
    qjson.unlink()
    with pytest.raises(ValueError, match="没有 quantization.json"):
        load_quantized(d)


def test_missing_keys_are_named_even_with_a_consistent_hash(llama, tmp_path):
    d = save_quantized(_quantized(llama, "nf4"), tmp_path / "q")
    state = load_file(d / "model.safetensors")
    state.pop("model.layers.1.mlp.up_proj.absmax")
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    info = json.loads((d / "quantization.json").read_text())
    info["model_safetensors_sha256"] = apply._sha256(d / "model.safetensors")
    (d / "quantization.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"缺少 \['model\.layers\.1\.mlp\.up_proj\.absmax'\]"):
        load_quantized(d)


class _Uniform(nn.Module):
    """每个位置都输出全 0 的 logits：交叉熵恰好是 ln V。"""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.dummy = vocab, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab)


def test_bits_per_byte_definition():
    ids = torch.arange(1 + 3 * 16) % 50
    result = evaluate_bpb(_Uniform(50), ids, 16, count_bytes=lambda toks: 2 * len(toks), batch_size=2)
    assert result["tokens"] == 48 and result["bytes"] == 96
    assert result["bits_per_byte"] == pytest.approx(48 * math.log2(50) / 96, rel=1e-6)


def test_eval_data_from_a_make_run_directory(tmp_path):
    """make run 的布局：data/val.bin 评估、data/train.bin 校准；没有 tokenizer.json 时按 meta 的平均字节/token 换算。"""
    data = tmp_path / "data"
    data.mkdir()
    np.arange(1000, dtype=np.uint16).tofile(data / "train.bin")
    (np.arange(600, dtype=np.uint16) + 7).tofile(data / "val.bin")
    (data / "meta.json").write_text(json.dumps({"dtype": "uint16", "bytes": 5000, "split_byte": 3800, "val_tokens": 600}))
    got = load_eval_data(tmp_path, None, n_calib=300, n_eval=256, block_size=64)
    assert got.calib.shape == (4, 64) and torch.equal(got.calib.flatten(), torch.arange(256))
    assert torch.equal(got.held_out, torch.arange(257) + 7)
    assert got.count_bytes(list(range(100))) == 200  # (5000 − 3800) / 600 = 2 字节/token
    with pytest.raises(ValueError, match="--text"):
        load_eval_data(tmp_path / "nowhere", None, 300, 256, 64)


def test_cli_prints_a_row_for_every_scheme_and_writes_loadable_directories(tmp_path):
    model_dir, text = make_demo_dir(tmp_path / "model")
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "inference_engine.quantization", str(model_dir), "--text", str(text),
                           "--calib", "256", "--eval-tokens", "512", "--decode-tokens", "4", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["fp32", *SCHEMES]
    assert all(r.split("|")[2].strip() == "14/14" for r in rows[2:])
    back = load_quantized(out / "gptq", scheme="gptq")
    assert (out / "gptq" / "tokenizer.json").is_file() and len(quantized_modules(back)) == 14
    with pytest.raises(SystemExit, match="错误：.*没有 config.json"):
        cli_main([str(tmp_path / "empty"), "--text", str(text)])


# ---------------------------------------------------------------------------------------------------
# 练习模式（utils/exercise_parts/quantization.py）用的专项测试：校准激活的收集与独立记下的输入逐位相同
# ---------------------------------------------------------------------------------------------------


def test_collect_layer_inputs_equals_what_each_layer_sees():
    model = tiny_llama()
    calib = torch.randint(0, 256, (5, 16), generator=torch.Generator().manual_seed(2))  # batch_size=2：3 批，最后一批 1 条
    names = ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.0.mlp.down_proj",
             "model.layers.1.mlp.up_proj"]
    targets = select_linears(model, names)
    got = collect_layer_inputs(model, targets, calib, batch_size=2)
    assert list(got) == names and all(not m._forward_pre_hooks for m in targets.values())  # hook 用完就摘掉
    assert got[names[0]] is got[names[1]]  # q/v 吃同一个张量：只存一份、只拼一次

    # 参照：再按同样的分批跑一遍，用最普通的 hook 记下：q/v 的输入 = input_layernorm 的输出，up 的输入 =
    # post_attention_layernorm 的输出，down_proj 的输入直接在它身上记
    layers, seen = model.model.layers, {n: [] for n in names}
    hooks = [layers[1].input_layernorm.register_forward_hook(lambda m, a, out: seen[names[0]].append(out)),
             layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen[names[2]].append(a[0])),
             layers[1].post_attention_layernorm.register_forward_hook(lambda m, a, out: seen[names[3]].append(out))]
    with torch.no_grad():
        for chunk in calib.split(2):
            model(chunk)
    for h in hooks:
        h.remove()
    seen[names[1]] = seen[names[0]]
    for name in names:
        want = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen[name]])
        assert got[name].shape == (80, targets[name].in_features) and torch.equal(got[name], want), name

    # stop_early：所有目标都拿到输入后截断前向——最后的 norm 与 lm_head 一次也不算，收集到的输入不变
    calls = []
    hook = model.model.norm.register_forward_hook(lambda m, a, out: calls.append(1))
    early = collect_layer_inputs(model, targets, calib, batch_size=2, stop_early=True)
    hook.remove()
    assert not calls and all(torch.equal(early[n], got[n]) for n in names)


def test_as_linear_turns_conv1d_into_the_same_function():
    conv = apply._conv1d_type()(24, 40)  # GPT-2 的 Conv1D：weight (in, out)，y = x @ W + b
    with torch.no_grad():
        conv.weight.normal_(generator=torch.Generator().manual_seed(3))
        conv.bias.normal_(generator=torch.Generator().manual_seed(4))
    lin = apply._as_linear(conv)
    assert type(lin) is nn.Linear and (lin.in_features, lin.out_features) == (24, 40)
    assert lin.weight.shape == (40, 24) and lin.weight.is_contiguous() and not lin.weight.requires_grad
    assert torch.equal(lin.weight, conv.weight.t()) and torch.equal(lin.bias, conv.bias)
    x = torch.randn(3, 5, 24)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), conv(x), rtol=1e-6, atol=1e-6)
    plain = nn.Linear(8, 4)
    assert apply._as_linear(plain) is plain  # nn.Linear 原样返回
