"""archive/Let's_build_GPT/let's_build_gpt.py 的测试：模型构建、训练确实降低 loss、各 stage 可运行、
因果 mask、注意力的三种写法与 PyTorch SDPA 一致、完整模型与 transformers 的 GPT-2 逐位一致、
学习率与优化器分组、以及错误输入的报错。"""

from __future__ import annotations

import math
import re

import pytest
import torch

from tests.conftest import REPO_ROOT, load_script
from utils.io import output_path

SCRIPT = REPO_ROOT / "archive" / "Let's_build_GPT" / "let's_build_gpt.py"
FINAL_LINE = re.compile(r"^final: train_loss=(\d+\.\d{4}) val_loss=(\d+\.\d{4})$")


@pytest.fixture(scope="module")
def lbg():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """一段有规律的小文本：词表小（约 20 个字符），几十步就能学到明显低于 ln(V) 的 loss。"""
    gen = torch.Generator().manual_seed(0)
    words = ["the cat", "a dog", "sat on", "the mat", "ran to", "a hat"]
    picks = torch.randint(len(words), (3000,), generator=gen).tolist()
    text = "".join(words[i] + (".\n" if k % 5 == 4 else " ") for k, i in enumerate(picks))
    path = tmp_path_factory.mktemp("lbg") / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    return path


def run_main(lbg, capsys, *argv):
    result = lbg.main([*map(str, argv), "--device", "cpu"])
    out = capsys.readouterr().out
    return result, out.rstrip("\n").splitlines()


def small_config(lbg, stage="blocks", **kw):
    base = dict(vocab_size=17, block_size=8, n_layer=2, n_head=4, n_embd=32, stage=stage)
    return lbg.GPTConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- 构建与训练
def test_builds_model_with_learner_defaults(lbg):
    args = lbg.build_parser().parse_args([])
    assert (args.batch_size, args.block_size, args.n_embd, args.n_head, args.stage) == (32, 8, 32, 4, "blocks")
    torch.manual_seed(0)
    config = lbg.GPTConfig(vocab_size=65)
    model = lbg.build_model(config)
    assert isinstance(model, lbg.GPT)
    assert model.wte.weight is model.lm_head.weight  # weight tying
    idx, targets = torch.randint(65, (2, 16, 8))
    logits, loss = model(idx, targets)
    assert logits.shape == (16, 8, 65)
    # GPT-2 初始化下 logits 接近 0，对随机目标的初始 loss ≈ ln(V)
    # （目标若取 idx 本身会偏低：weight tying 让输入 token 自己的 logit 略高）
    assert abs(loss.item() - math.log(65)) < 0.05


def test_nanogpt_config_has_nanogpt_param_count(lbg):
    # nanoGPT 在 tiny-shakespeare 的 CPU 配方上报告 "number of parameters: 0.80M"（不含 wpe）
    model = lbg.GPT(lbg.GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    assert model.num_params() == 4 * (128 * 384 + 128 * 128 + 2 * 128 * 512 + 2 * 128) + 65 * 128 + 128


def test_training_lowers_loss_and_prints_final_line(lbg, capsys, text_file):
    png = output_path("lets_build_gpt", "loss.png")
    png.unlink(missing_ok=True)
    result, lines = run_main(
        lbg, capsys, "--data", text_file, "--max_iters", 60, "--eval_interval", 30, "--eval_iters", 5,
        "--lr", 1e-2, "--min_lr", 1e-3, "--warmup_iters", 5, "--batch_size", 16, "--n_layer", 2,
        "--sample_tokens", 20,
    )
    vocab = len(set(text_file.read_text(encoding="utf-8")))
    match = FINAL_LINE.match(lines[-1])
    assert match, lines[-1]
    train_loss, val_loss = map(float, match.groups())
    assert (train_loss, val_loss) == (round(result["train_loss"], 4), round(result["val_loss"], 4))
    assert val_loss < 0.6 * math.log(vocab), (val_loss, math.log(vocab))
    assert png.stat().st_size > 1000  # 损失曲线写到了 output_path（测试里是临时目录）


@pytest.mark.parametrize("stage", ["bigram", "single_head", "multi_head", "ffn", "blocks"])
def test_each_stage_runs(lbg, capsys, text_file, stage):
    result, lines = run_main(
        lbg, capsys, "--data", text_file, "--stage", stage, "--max_iters", 3, "--eval_interval", 2,
        "--eval_iters", 1, "--warmup_iters", 1, "--n_layer", 1, "--sample_tokens", 5, "--dropout", 0.1,
    )
    assert FINAL_LINE.match(lines[-1]), lines[-1]
    assert math.isfinite(result["val_loss"])


# ----------------------------------------------------------------------------- 因果 mask 与注意力
@pytest.mark.parametrize("stage", ["bigram", "single_head", "multi_head", "ffn", "blocks"])
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_future_tokens_do_not_change_earlier_logits(lbg, stage, use_sdpa):
    torch.manual_seed(1)
    model = lbg.build_model(small_config(lbg, stage)).eval()
    for m in model.modules():
        if isinstance(m, lbg.CausalSelfAttention):
            m.use_sdpa = use_sdpa
    idx = torch.randint(17, (2, 8))
    t = 5
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 17
    with torch.no_grad():
        before, after = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=0)
    assert not torch.allclose(after[:, t], before[:, t])  # 位置 t 自己确实看到了变化


def test_mask_is_a_buffer_not_a_parameter(lbg):
    head = lbg.Head(32, 8, block_size=8)
    assert "tril" in dict(head.named_buffers())
    assert "tril" not in dict(head.named_parameters())
    assert torch.equal(head.tril, torch.tril(torch.ones(8, 8, dtype=torch.bool)))


def test_attention_trick_versions_agree(lbg):
    wei = lbg.attention_trick_demo(B=3, T=6, C=4)
    torch.testing.assert_close(wei, torch.tril(torch.ones(6, 6)) / torch.arange(1, 7)[:, None])


def test_single_head_matches_sdpa(lbg):
    torch.manual_seed(2)
    head = lbg.Head(16, 16, block_size=8, bias=True)
    x = torch.randn(3, 7, 16, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = head(x)
    q, k, v = head.query(x_ref), head.key(x_ref), head.value(x_ref)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_head,n_embd,T", [(4, 32, 8), (1, 16, 5), (8, 64, 3)])
def test_multihead_loop_equals_batched_and_sdpa(lbg, n_head, n_embd, T):
    torch.manual_seed(3)
    cfg = small_config(lbg, n_head=n_head, n_embd=n_embd, bias=True)
    mha, attn = lbg.MultiHeadAttention(cfg), lbg.CausalSelfAttention(cfg)
    torch.nn.init.normal_(attn.c_attn.bias)  # 先弄乱，确认 load_heads_into_batched 真的覆盖了它
    lbg.load_heads_into_batched(mha, attn)
    x = torch.randn(2, T, n_embd)
    outs, grads = [], []
    for module, sdpa in ((mha, None), (attn, False), (attn, True)):
        if sdpa is not None:
            module.use_sdpa = sdpa
        xi = x.clone().requires_grad_(True)
        y = module(xi)
        y.pow(3).sum().backward()
        outs.append(y.detach())
        grads.append(xi.grad)
    for y, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(y, outs[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, grads[0], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- 与 transformers GPT-2 逐位一致
def test_full_model_matches_transformers_gpt2(lbg):
    """完整模型（bias=True 时）就是 GPT-2：把权重搬进 transformers.GPT2LMHeadModel，logits 与梯度一致。"""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(4)
    cfg = small_config(lbg, n_layer=3, bias=True)
    ours = lbg.GPT(cfg)
    for p in ours.parameters():  # 随机化所有参数（含 LayerNorm 与偏置），不让初始化的 0/1 掩盖错误
        torch.nn.init.normal_(p, std=0.2)
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=1e-5, bos_token_id=None, eos_token_id=None,
        )
    ).eval()
    state = {}
    for name, tensor in ours.state_dict().items():
        if name.endswith(".tril") or name == "lm_head.weight":
            continue
        hf_name = "transformer." + re.sub(r"^body\.", "h.", name)
        if re.search(r"(c_attn|c_proj|c_fc)\.weight$", name):
            tensor = tensor.t()  # HF 的 Conv1D 存 (in, out)，nn.Linear 存 (out, in)
        state[hf_name] = tensor
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    ours.eval()

    idx = torch.randint(cfg.vocab_size, (3, cfg.block_size))
    logits, loss = ours(idx, idx)
    out = hf(input_ids=idx)
    ref_loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), idx.flatten())
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)
    loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(ours.wte.weight.grad, hf.transformer.wte.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        ours.body[0].attn.c_attn.weight.grad.t(), hf.transformer.h[0].attn.c_attn.weight.grad, rtol=1e-4, atol=1e-5
    )


# ----------------------------------------------------------------------------- 训练配方
def test_lr_schedule_warmup_then_cosine(lbg):
    lrs = [lbg.get_lr(it, 1e-3, 1e-4, 100, 2000) for it in range(2001)]
    assert lrs[0] == pytest.approx(1e-3 / 101)
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 100
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))
    assert lrs[1050] == pytest.approx(5.5e-4)  # 余弦的中点 = (lr + min_lr) / 2
    assert lrs[2000] == pytest.approx(1e-4)


def test_weight_decay_only_on_matrices(lbg):
    model = lbg.GPT(small_config(lbg, bias=True))
    opt = lbg.configure_optimizer(model, 0.1, 1e-3, (0.9, 0.99))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert sum(p is model.wte.weight for p in decay["params"]) == 1  # 共享权重只出现一次


def test_tokenizer_round_trip_and_unknown_char(lbg):
    tok = lbg.CharTokenizer("hello, 世界!\n")
    assert tok.chars == sorted(set("hello, 世界!\n"))
    ids = tok.encode("hello 界")
    assert ids.tolist() == [tok.chars.index(c) for c in "hello 界"]
    assert tok.decode(ids) == "hello 界"
    with pytest.raises(ValueError, match="不在词表"):
        tok.encode("xyz")


# ----------------------------------------------------------------------------- 错误输入
def cli_error(lbg, capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        lbg.main([*map(str, argv)])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_missing_data_file(lbg, capsys, tmp_path):
    err = cli_error(lbg, capsys, "--data", tmp_path / "nope.txt", "--device", "cpu")
    assert "nope.txt" in err and "文件不存在" in err


def test_n_embd_not_divisible_by_n_head(lbg, capsys, text_file):
    err = cli_error(lbg, capsys, "--data", text_file, "--n_embd", 30, "--n_head", 4, "--device", "cpu")
    assert "n_embd=30 is not divisible by n_head=4" in err
    with pytest.raises(ValueError, match="not divisible"):
        lbg.GPTConfig(vocab_size=10, n_embd=30, n_head=4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_cuda_is_an_error_not_a_fallback(lbg, capsys, text_file):
    err = cli_error(lbg, capsys, "--data", text_file, "--device", "cuda")
    assert "--device cuda 不可用" in err


def test_bad_device_name_and_short_text(lbg, capsys, tmp_path):
    assert "不是合法的设备名" in cli_error(lbg, capsys, "--device", "tpu")
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 3, encoding="utf-8")
    assert "文本太短" in cli_error(lbg, capsys, "--data", short, "--device", "cpu")
