"""runtime.py：没有 GPU 时自动打开解释器；triton 早于它被导入（环境变量还没设）时也能修好；启动器检查给出清楚的错。"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from inference_engine.kernels.runtime import INTERPRET, KERNEL_DEVICE, check_tensor
from tests.conftest import REPO_ROOT


def test_interpreter_is_on_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("有 GPU：内核编译成 GPU 代码，不用解释器")
    assert INTERPRET and KERNEL_DEVICE.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="只在解释器模式下有意义")
def test_triton_imported_before_the_env_var_still_works():
    """像 torch 的算子那样先 import triton.language（环境变量未设），再导入我们的内核：tl.sum 等仍能在解释器里用。"""
    code = (
        "import triton.language\n"
        "import torch\n"
        "from inference_engine.kernels.rmsnorm import rms_norm\n"
        "x, w = torch.randn(3, 40), torch.randn(40)\n"
        "ref = w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)\n"
        "assert torch.allclose(rms_norm(x, w, 1e-6), ref, atol=1e-5)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_check_tensor_names_the_problem_and_the_fix():
    with pytest.raises(ValueError, match="必须是 torch.Tensor"):
        check_tensor("x", [1.0])
    with pytest.raises(ValueError, match="2 维"):
        check_tensor("x", torch.zeros(3), ndim=2)
    with pytest.raises(ValueError, match="dtype.*sdpa"):
        check_tensor("x", torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous"):
        check_tensor("x", torch.zeros(4, 4).t())
    with pytest.raises(ValueError, match="移到"):
        check_tensor("x", torch.zeros(3, device="meta"))
