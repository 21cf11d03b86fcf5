"""`--kernels triton`：同一个训练循环跑在 inference_engine/kernels 的 Triton 内核上（没有 GPU 时在解释器里），
loss 曲线、最终权重与 PyTorch 写法的训练在 fp32 舍入误差内相同，训练后的样例生成也走内核；
融合交叉熵不返回 logits 时，"整个 micro-batch 都是 -100"的情形仍给出全 0 的贡献。"""

from __future__ import annotations

import pytest
import torch

from tests.training_sys.test_pretrain import final_params, tiny_cfg, train_losses, write_tiny_text
from training_sys.pretrain import TrainConfig, accumulate_step, build_model, model_backends, train
from utils.torch_playground import setup_seed


@pytest.fixture
def text_file(tmp_path):
    return write_tiny_text(tmp_path / "tiny.txt")


def test_triton_kernels_train_like_torch(tmp_path, text_file):
    kw = dict(max_iters=3, n_layer=1, block_size=16, batch_size=2, eval_interval=3, eval_iters=1, sample_tokens=4)
    ref = train(tiny_cfg(tmp_path, text_file, "torch", **kw))
    tri = train(tiny_cfg(tmp_path, text_file, "triton", kernels="triton", **kw))
    ref_losses, tri_losses = train_losses(ref.run_dir), train_losses(tri.run_dir)
    assert [s for s, _ in tri_losses] == [s for s, _ in ref_losses] and len(ref_losses) == 3
    for (_, a), (_, b) in zip(ref_losses, tri_losses):
        assert abs(a - b) < 1e-5
    pa, pb = final_params(ref), final_params(tri)
    for name in pa:
        torch.testing.assert_close(pb[name], pa[name], rtol=1e-4, atol=1e-5, msg=name)
    assert tri.history and tri.history[-1].get("sample")  # 训练后的样例生成也跑在内核上


def test_model_backends_choose_the_attention_too():
    assert model_backends(TrainConfig()) == ("sdpa", "torch")
    assert model_backends(TrainConfig(kernels="triton")) == ("triton_flash", "triton")
    assert model_backends(TrainConfig(kernels="triton", attn_implementation="eager")) == ("eager", "triton")
    with pytest.raises(ValueError, match="kernels='cuda' 未知"):
        TrainConfig(kernels="cuda").validate()


def test_all_masked_micro_batch_with_fused_cross_entropy():
    cfg = TrainConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, kernels="triton")
    setup_seed(0)
    model = build_model(cfg, 11)
    x, y = torch.randint(0, 11, (4, 8)), torch.randint(0, 11, (4, 8))
    y[2:] = -100
    logits, loss = model(x[:2], y[:2])
    assert logits is None  # 融合的 lm_head + 交叉熵
    model.zero_grad()
    loss.backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    step_loss = accumulate_step(model, [(x[:2], y[:2]), (x[2:], y[2:])])
    assert torch.isfinite(step_loss)
    for p, r in zip(model.parameters(), reference):
        torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-7)
