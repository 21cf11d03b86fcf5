"""ring attention：cp=2 与 cp=4 个 gloo 进程上，输出与 dq/dk/dv 等于整条序列上的 SDPA；zigzag 切法等于 PyTorch 的 head-tail；
因果时 zigzag 每个 rank 实际算的块数相同、连续切分差 cp 倍；坏输入报清楚的错。"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.tensor.experimental._context_parallel._load_balancer import _HeadTailLoadBalancer

from training_sys.distributed import ParallelMesh, spawn
from training_sys.distributed.context_parallel import (
    LAYOUTS,
    RingWork,
    chunk_ids,
    merge_sequence,
    planned_work,
    ring_attention,
    split_sequence,
)
from utils.torch_playground import setup_seed

TOL = 1e-5


def _check_cases(cp: int, rank: int, group, cases: list[dict]) -> list[dict]:
    """每个 case：整条序列上的 SDPA 作真值（每个 rank 用同一 seed 造同一组数据），本 rank 的 ring attention 对它切出的一段。"""
    results = []
    for case in cases:
        setup_seed(case.get("seed", 0))
        b, h, hk, t, d = case["shape"]
        dtype = case.get("dtype", torch.float32)
        q, k, v, dout = (torch.randn(b, hh, t, d).to(dtype) for hh in (h, hk, hk, h))
        layout, causal, scale = case["layout"], case["causal"], case.get("scale")
        # 真值总在 fp32 里算（bf16 的输入先舍入、再升回 fp32），ring 则直接吃 bf16：检验内部的 fp32 累加
        qf, kf, vf = (x.clone().float().requires_grad_() for x in (q, k, v))
        ref = F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal, scale=scale, enable_gqa=hk != h)
        ref.backward(dout.float())
        ql, kl, vl = (split_sequence(x, cp, rank, layout).requires_grad_() for x in (q, k, v))
        work = RingWork()
        out = ring_attention(ql, kl, vl, group, causal=causal, scale=scale, layout=layout, work=work)
        out.backward(split_sequence(dout, cp, rank, layout))
        assert {x.dtype for x in (out, ql.grad, kl.grad, vl.grad)} == {dtype}
        errs = {name: (ours.float() - split_sequence(theirs, cp, rank, layout)).abs().max().item()
                for name, ours, theirs in (("out", out, ref), ("dq", ql.grad, qf.grad), ("dk", kl.grad, kf.grad),
                                           ("dv", vl.grad, vf.grad))}
        results.append({"case": case, "errs": errs, "work": work, "c": t // (2 * cp)})
    return results


def _ring_worker(rank: int, world: int, cases: list[dict], sub_cases: list[dict]) -> dict:
    """整个 world 当一个 CP 组跑 cases；world=4 时再建 dp=2 × cp=2 的网格，在 CP 子组里跑 sub_cases（检验组内 → 全局 rank 的换算）。"""
    out = {"world": _check_cases(world, rank, None, cases)}
    if sub_cases:
        mesh = ParallelMesh(dp=2, cp=2)
        out["sub"] = _check_cases(2, mesh.local_rank("cp"), mesh.group("cp"), sub_cases)
    return out


def _assert_close(per_rank: list[list[dict]]) -> None:
    for ranks in per_rank:
        for res in ranks:
            for name, err in res["errs"].items():
                assert err < res["case"].get("tol", TOL), f"{res['case']} {name} 误差 {err:.2e}"


def _assert_work(per_rank: list[list[dict]], cp: int) -> None:
    """实际算的 c×c 小块数等于 planned_work；zigzag 因果人人相同，连续切分因果 rank r ∝ r+1；非因果人人 4cp；反向与前向同样多。"""
    for i, res in enumerate(per_rank[0]):
        case, c2 = res["case"], res["c"] ** 2
        works = [ranks[i]["work"] for ranks in per_rank]
        blocks = [w.forward_scores // c2 for w in works]
        assert all(w.forward_scores % c2 == 0 for w in works)
        assert blocks == planned_work(cp, case["layout"], case["causal"])
        assert [(w.backward_blocks, w.backward_scores) for w in works] == [(w.forward_blocks, w.forward_scores)
                                                                          for w in works]
        if not case["causal"]:
            assert blocks == [4 * cp] * cp
        elif case["layout"] == "zigzag":
            assert blocks == [2 * cp + 2] * cp
            assert [w.forward_blocks for w in works] == [cp] * cp  # 每一步都有活干，没有 rank 空等
        else:
            assert blocks == [4 * (r + 1) for r in range(cp)]
            assert [w.forward_blocks for w in works] == [r + 1 for r in range(cp)]
            assert blocks[-1] == cp * blocks[0]


def test_ring_attention_cp2_equals_full_sdpa_outputs_and_grads():
    cases = [{"layout": layout, "causal": causal, "shape": (2, 4, 4, 16, 8)}
             for layout in LAYOUTS for causal in (True, False)]
    cases += [  # GQA（kv 头少一半 / 只有一个）、自定义 scale、较长的序列
        {"layout": "zigzag", "causal": True, "shape": (1, 4, 2, 24, 8), "scale": 0.3, "seed": 1},
        {"layout": "contiguous", "causal": True, "shape": (1, 6, 1, 8, 4), "seed": 2},
        {"layout": "zigzag", "causal": False, "shape": (1, 4, 2, 12, 8), "seed": 3},
        # bf16 输入：只比 bf16 最后一次舍入的误差（相对 2⁻⁸），中间的 softmax 合并在 fp32 里做
        {"layout": "zigzag", "causal": True, "shape": (1, 4, 2, 16, 8), "seed": 5, "dtype": torch.bfloat16,
         "tol": 2e-2},
    ]
    per_rank = [r["world"] for r in spawn(_ring_worker, 2, cases, [], timeout_s=120)]
    _assert_close(per_rank)
    _assert_work(per_rank, 2)


def test_ring_attention_cp4_and_cp_subgroup_equal_full_sdpa():
    cases = [{"layout": layout, "causal": True, "shape": (1, 2, 2, 16, 8)} for layout in LAYOUTS]
    cases.append({"layout": "zigzag", "causal": False, "shape": (1, 4, 2, 8, 4), "seed": 1})
    sub_cases = [{"layout": "zigzag", "causal": True, "shape": (1, 4, 2, 12, 8), "seed": 4}]
    per_rank = spawn(_ring_worker, 4, cases, sub_cases, timeout_s=180)
    _assert_close([r["world"] for r in per_rank])
    _assert_work([r["world"] for r in per_rank], 4)
    _assert_close([r["sub"] for r in per_rank])
    # 两个 dp 副本各自成环，rank (0,1) 与 (2,3) 的结果逐位相同（同一份数据，同一种计算顺序）
    for a, b in ((0, 2), (1, 3)):
        assert per_rank[a]["sub"][0]["errs"] == per_rank[b]["sub"][0]["errs"]


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_zigzag_split_equals_torch_head_tail_and_merge_inverts_split(cp):
    t = 4 * cp
    x = torch.arange(2 * 3 * t).reshape(2, 3, t, 1).float()
    zig = torch.cat([split_sequence(x, cp, r, "zigzag") for r in range(cp)], dim=2)
    idx = _HeadTailLoadBalancer(t, cp, "cpu")._generate_indices()[0].long()
    assert torch.equal(zig, x[:, :, idx])
    contiguous = [split_sequence(x, cp, r, "contiguous") for r in range(cp)]
    assert all(torch.equal(a, b) for a, b in zip(contiguous, x.chunk(cp, dim=2), strict=True))
    for layout in LAYOUTS:
        parts = [split_sequence(x, cp, r, layout) for r in range(cp)]
        assert torch.equal(merge_sequence(parts, layout), x)
    pos = torch.arange(t)
    # 块长 c=2：最后一个 rank 拿中间相邻的两块 cp−1 与 cp（zigzag 的两头在中间相遇）
    assert split_sequence(pos, cp, cp - 1, "zigzag", dim=0).tolist() == [2 * cp - 2, 2 * cp - 1, 2 * cp, 2 * cp + 1]


def test_planned_work_balanced_for_zigzag_and_cp_times_skewed_for_contiguous():
    for cp in range(1, 9):
        assert planned_work(cp, "zigzag") == [2 * cp + 2] * cp
        contiguous = planned_work(cp, "contiguous")
        assert contiguous == [4 * (r + 1) for r in range(cp)]
        assert contiguous[-1] == cp * contiguous[0]
        for layout in LAYOUTS:
            assert planned_work(cp, layout, causal=False) == [4 * cp] * cp
            assert sum(planned_work(cp, layout)) == sum(planned_work(cp, "zigzag"))  # 总量一样，只是分得不同
    assert chunk_ids(1, 4, "zigzag") == (1, 6) and chunk_ids(1, 4, "contiguous") == (2, 3)


def test_bad_input_raises_clear_errors():
    x = torch.zeros(1, 2, 10, 4)
    with pytest.raises(ValueError, match=r"T=10 不能被 2·cp=4 整除"):
        split_sequence(x, 2, 0)
    with pytest.raises(ValueError, match="layout='ring'"):
        split_sequence(x, 1, 0, "ring")
    with pytest.raises(ValueError, match=r"rank=2 不在 \[0, cp=2\)"):
        chunk_ids(2, 2)
    with pytest.raises(ValueError, match="cp=0"):
        planned_work(0)
    with pytest.raises(ValueError, match="不是偶数"):
        merge_sequence([torch.zeros(1, 1, 3, 2)] * 2)
    q = torch.zeros(1, 4, 8, 4)
    with pytest.raises(ValueError, match="头数 4 不能被 k/v 的头数 3 整除"):
        ring_attention(q, torch.zeros(1, 3, 8, 4), torch.zeros(1, 3, 8, 4))
    with pytest.raises(ValueError, match="T_local=5 不是偶数"):
        ring_attention(torch.zeros(1, 4, 5, 4), torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4))
    with pytest.raises(ValueError, match="形状必须相同"):
        ring_attention(q, torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 6, 4))
    with pytest.raises(ValueError, match="batch、本地序列长、head_dim 必须一致"):
        ring_attention(q, torch.zeros(1, 2, 6, 4), torch.zeros(1, 2, 6, 4))
    with pytest.raises(ValueError, match="4 维张量"):
        ring_attention(torch.zeros(4, 8, 4), q, q)
    with pytest.raises(TypeError, match="同一种浮点类型"):
        ring_attention(q, q.double(), q)
    with pytest.raises(ValueError, match="layout='zig'"):
        ring_attention(q, q, q, layout="zig")
    with pytest.raises(TypeError, match="RingWork"):
        ring_attention(q, q, q, work={})
    with pytest.raises(RuntimeError, match="需要先建好进程组"):
        ring_attention(q, q, q)
