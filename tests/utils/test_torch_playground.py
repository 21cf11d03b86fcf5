"""utils.torch_playground 与 utils.io 的测试。"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT
from utils import torch_playground as tp
from utils.io import atomic_path, atomic_write, is_smoke, output_path


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_setup_seed_makes_all_generators_repeat():
    assert tp.setup_seed(123) == 123
    first = _draw()
    tp.setup_seed(123)
    assert _draw() == first
    tp.setup_seed(124)
    assert _draw() != first


def test_setup_seed_default_and_deterministic_mode():
    assert tp.setup_seed() == tp.DEFAULT_SEED == 277527
    try:
        tp.setup_seed(1, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    finally:
        tp.setup_seed(tp.DEFAULT_SEED)
    assert not torch.are_deterministic_algorithms_enabled()


def test_setup_seed_rejects_non_int():
    with pytest.raises(TypeError, match="seed"):
        tp.setup_seed("42")


def test_get_device_on_this_machine(capsys):
    device = tp.get_device(verbose=True)
    out = capsys.readouterr().out
    assert isinstance(device, torch.device)
    if torch.cuda.is_available():
        assert device.type == "cuda" and "compute capability" in out
    else:
        assert device.type in ("cpu", "mps")
        if device.type == "cpu":
            assert "CPU" in out and str(torch.get_num_threads()) in out
    assert tp.get_device(verbose=False) == device
    assert capsys.readouterr().out == ""


def test_get_device_without_cuda_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(tp, "_mps_available", lambda: False)
    assert tp.get_device().type == "cpu"
    assert "CPU" in capsys.readouterr().out


def test_import_fixes_device_and_seed():
    # 导入即固定种子：两个新进程里第一次抽到的随机数相同
    code = "from utils.torch_playground import DEVICE; import torch; print(DEVICE.type, torch.rand(1).item())"
    runs = [
        subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert runs[0].split()[0] in ("cpu", "cuda", "mps")


def test_time_block_reports_elapsed(capsys):
    with tp.time_block("sleepy") as t:
        sum(range(10000))
    assert t.ms > 0 and t.seconds == pytest.approx(t.ms / 1000)
    assert capsys.readouterr().out.startswith("sleepy: ")


def test_time_block_records_time_even_on_error(capsys):
    with pytest.raises(RuntimeError):
        with tp.time_block("boom") as t:
            raise RuntimeError("x")
    assert t.ms >= 0
    assert "boom:" in capsys.readouterr().out


def test_benchmark_counts_calls_and_returns_median():
    calls = []
    ms = tp.benchmark(lambda: calls.append(1), warmup=2, reps=5)
    assert len(calls) == 7 and ms >= 0
    with pytest.raises(ValueError, match="reps"):
        tp.benchmark(lambda: None, reps=0)


def test_inspect_float_tensor_reports_everything(capsys):
    x = torch.tensor([[1.0, float("nan")], [float("inf"), -2.0]], requires_grad=True)
    y = (x * 2).t()
    text = tp.inspect(y, "y")
    assert capsys.readouterr().out.strip() == text
    for fragment in ("[y]", "shape=(2, 2)", "torch.float32", "device=cpu", "requires_grad=True",
                     "grad_fn=TBackward0", "contiguous=False", "stride=(1, 2)", "nan=1", "inf=1",
                     "min=-4", "max=2"):
        assert fragment in text, fragment


def test_inspect_scalar_shows_value_and_int_has_no_stats():
    assert "value=3.5" in tp.inspect(torch.tensor(3.5), verbose=False)
    text = tp.inspect(torch.arange(6).view(2, 3), "ids", verbose=False)
    assert "torch.int64" in text and "mean" not in text and "contiguous=True" in text


@pytest.mark.parametrize("bad", [3, [1.0, 2.0], np.zeros(3)])
def test_inspect_rejects_non_tensor(bad):
    with pytest.raises(TypeError, match="torch.Tensor"):
        tp.inspect(bad)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write(path, "一")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_atomic_path_keeps_old_file_when_writer_crashes(tmp_path):
    path = tmp_path / "ckpt.bin"
    atomic_write(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("crash while writing")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]


def test_output_path_and_smoke_flag(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_CHECKPOINTS_DIR", str(tmp_path))
    p = output_path("figures", "x.png")
    assert p == tmp_path / "figures" / "x.png" and p.parent.is_dir()
    for value, expected in [("1", True), ("yes", True), ("0", False), ("", False)]:
        monkeypatch.setenv("SMOKE", value)
        assert is_smoke() is expected
    monkeypatch.delenv("SMOKE")
    assert is_smoke() is False


def test_script_started_from_another_directory_imports_utils(tmp_path):
    # pip install -e . 之后，从任何目录启动都能导入项目包
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", "import utils.torch_playground, model_lab, data_pipeline; print('ok')"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_atomic_write_gives_normal_permissions(tmp_path):
    path = atomic_write(tmp_path / "f.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_benchmark_interleaved_alternates_and_returns_one_median_per_fn():
    calls = []
    ms = tp.benchmark_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], warmup=1, reps=4)
    assert len(ms) == 2 and all(m >= 0 for m in ms)
    # 预热 a b，然后每轮交替、奇数轮反序：a b | b a | a b | b a
    assert "".join(calls) == "ab" + "ab" + "ba" + "ab" + "ba"
    assert len(tp.benchmark_interleaved([lambda: None], reps=1, cpu_time=True)) == 1
    with pytest.raises(ValueError, match="reps"):
        tp.benchmark_interleaved([lambda: None], reps=0)
