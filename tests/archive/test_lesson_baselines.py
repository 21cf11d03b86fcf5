"""课程打印的"多少算好"（基线与参考值）、图的修正与注释里的数字：

- Let's build GPT：评估步总含最后一步、默认评估点足够多；基线（均匀 / unigram / bigram 计数）算得对、被打印；
  按 stage 的默认学习率；结束时的结论行。
- word2vec：学习率线性衰减到 starting_alpha·1e-4（word2vec.c）；PCA 图的标签互不重叠。
- 第 10 讲：线性分类器基线。
- 第 13 天：float32 在 ε=1e-6 时中心差分的误差是 ~1e-2，float64 是 ~1e-10。
"""

from __future__ import annotations

import collections
import itertools
import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT, load_script

LBG = REPO_ROOT / "archive" / "Let's_build_GPT" / "let's_build_gpt.py"
W2V = REPO_ROOT / "archive" / "Introductory learning" / "03_Transformer" / "03_word2vec.py"
STEP_LINE = re.compile(r"^step\s+(\d+): train loss [\d.]+, val loss [\d.]+$")


@pytest.fixture(scope="module")
def lbg():
    return load_script(LBG)


@pytest.fixture(scope="module")
def w2v():
    return load_script(W2V)


# ----------------------------------------------------------------------------- Let's build GPT：评估点
@pytest.mark.parametrize("max_iters,interval,expected", [
    (500, None, list(range(0, 501, 50))),  # README 的旧命令 --max_iters 500：11 个点，不再是两点"曲线"
    (5000, None, list(range(0, 5001, 500))),  # 默认配置：与以前的 eval_interval=500 完全相同
    (60, 30, [0, 30, 60]),
    (7, 5, [0, 5, 7]),  # 最后一步不是 interval 的倍数也要评估
    (3, 10, [0, 3]),  # interval 比整个训练还长：起点与终点
    (7, None, list(range(8))),
])
def test_eval_steps_always_include_the_last_step(lbg, max_iters, interval, expected):
    assert lbg.eval_steps(max_iters, interval) == expected


@pytest.mark.parametrize("max_iters", [1, 9, 10, 11, 19, 99, 101, 1234])
def test_default_eval_schedule_has_enough_points(lbg, max_iters):
    steps = lbg.eval_steps(max_iters, None)
    assert steps[0] == 0 and steps[-1] == max_iters and steps == sorted(set(steps))
    assert min(max_iters + 1, lbg.MIN_EVAL_INTERVALS + 1) <= len(steps) <= 2 * lbg.MIN_EVAL_INTERVALS + 1


# ----------------------------------------------------------------------------- Let's build GPT：基线
def brute_force_baselines(train: list[int], val: list[int], vocab: int) -> dict[str, float]:
    """同样的定义，用最直白的计数写一遍（加 1 平滑）。"""
    uni = collections.Counter(train)
    pairs = collections.Counter(zip(train, train[1:]))
    row = collections.Counter(train[:-1])
    p_uni = {c: (uni[c] + 1) / (len(train) + vocab) for c in range(vocab)}
    unigram = -sum(math.log(p_uni[c]) for c in val) / len(val)
    bigram = -sum(math.log((pairs[(a, b)] + 1) / (row[a] + vocab)) for a, b in zip(val, val[1:])) / (len(val) - 1)
    return {"uniform": math.log(vocab), "unigram": unigram, "bigram": bigram}


def test_char_baselines_match_brute_force_counts(lbg):
    gen = torch.Generator().manual_seed(0)
    # 有结构的序列：下一个字符大多是 (当前 + 1) mod V，bigram 应远好于 unigram
    seq = [0]
    for _ in range(3000):
        seq.append((seq[-1] + 1) % 7 if torch.rand((), generator=gen) < 0.8 else int(torch.randint(7, (), generator=gen)))
    data = torch.tensor(seq)
    train, val = data[:2700], data[2700:]
    ours = lbg.char_baselines(train, val, 7)
    ref = brute_force_baselines(train.tolist(), val.tolist(), 7)
    for key in ("uniform", "unigram", "bigram"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-12), key
    assert ours["bigram"] < ours["unigram"] - 0.5 < ours["uniform"]


def test_run_prints_baselines_every_eval_and_a_verdict(lbg, capsys, tmp_path):
    gen = torch.Generator().manual_seed(1)
    words = ["the cat", "a dog", "sat on", "the mat", "ran to", "a hat"]
    text = " ".join(words[i] for i in torch.randint(len(words), (3000,), generator=gen).tolist()) + "\n"
    path = tmp_path / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    result = lbg.main(["--data", str(path), "--max_iters", "20", "--eval_iters", "2", "--batch_size", "8",
                       "--n_layer", "1", "--warmup_iters", "2", "--sample_tokens", "5", "--device", "cpu"])
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    # 没给 --eval_interval：20 // 10 = 2，评估 0, 2, ..., 20 共 11 次，最后一次正是第 20 步
    steps = [int(m.group(1)) for m in map(STEP_LINE.match, lines) if m]
    assert steps == list(range(0, 21, 2))
    # 开头的基线行与返回值里的基线一致，且就是对这份数据现算的
    tok = lbg.CharTokenizer(text)
    train, val = lbg.split_train_val(tok.encode(text), 8)
    expected = lbg.char_baselines(train, val, tok.vocab_size)
    assert result["baselines"] == pytest.approx(expected)
    head = next(line for line in lines if line.startswith("初始 loss 的理论值"))
    assert f"ln(V) = {expected['uniform']:.4f}" in head and f"bigram {expected['bigram']:.4f}" in head
    # 结尾：val loss 与基线、参考值并排，然后是一行结论，最后一行仍是 final:
    assert lines[-1].startswith("final: ")
    assert lines[-3].startswith(f"val loss {result['val_loss']:.4f} | 基线") and "参考：stage=blocks 默认配置 2.12" in lines[-3]
    assert lines[-2][0] in "✓…✗"


def test_verdict_says_whether_the_bigram_baseline_was_beaten(lbg):
    base = {"uniform": 4.26, "unigram": 3.30, "bigram": 2.49}
    assert lbg.report_against_baselines(2.12, base, "blocks")[1].startswith("✓ 比 bigram 基线低 0.37")
    assert lbg.report_against_baselines(2.50, base, "bigram")[1].startswith("✓ bigram 模型到达了")
    assert lbg.report_against_baselines(2.58, base, "blocks")[1].startswith("… 还没明显超过 bigram 基线")
    assert lbg.report_against_baselines(3.50, base, "blocks")[1].startswith("✗")


def test_default_learning_rate_depends_on_the_stage(lbg, monkeypatch):
    seen = {}

    def fake_train(model, splits, args, device):  # 只看 main() 把学习率解析成了什么，不训练
        seen[args.stage] = (args.lr, args.min_lr)
        raise SystemExit(0)

    monkeypatch.setattr(lbg, "train", fake_train)
    for stage in lbg.STAGES:
        with pytest.raises(SystemExit):
            lbg.main(["--stage", stage, "--device", "cpu", "--data", str(LBG)])
    assert seen == {"bigram": (1e-2, 1e-3), "single_head": (1e-2, 1e-3), "multi_head": (1e-2, 1e-3),
                    "ffn": (1e-2, 1e-3), "blocks": (1e-3, 1e-4)}
    with pytest.raises(SystemExit):
        lbg.main(["--stage", "blocks", "--lr", "3e-3", "--device", "cpu", "--data", str(LBG)])
    assert seen["blocks"] == pytest.approx((3e-3, 3e-4))


def test_unknown_corpus_is_a_command_line_error(lbg, capsys):
    with pytest.raises(SystemExit) as exc:
        lbg.main(["--corpus", "no_such_corpus"])
    assert exc.value.code == 2
    assert "no_such_corpus" in capsys.readouterr().err


# ----------------------------------------------------------------------------- word2vec
def test_word2vec_learning_rate_decays_linearly_to_1e_minus_4(w2v):
    lr, total = 0.025, 1000
    assert w2v.learning_rate(lr, 0, total) == lr
    assert w2v.learning_rate(lr, 500, total) == pytest.approx(lr / 2)
    assert w2v.learning_rate(lr, 999, total) == pytest.approx(lr * 1e-3)
    # word2vec.c：if (alpha < starting_alpha * 0.0001) alpha = starting_alpha * 0.0001
    assert w2v.learning_rate(lr, total, total) == pytest.approx(lr * 1e-4)
    assert w2v.learning_rate(lr, 2 * total, total) == pytest.approx(lr * 1e-4)


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2)
            if min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)]


def test_word2vec_labels_do_not_overlap(w2v):
    rng = np.random.default_rng(0)
    words = ["king", "queen", "prince", "duke", "lord", "lady", "father", "mother", "son", "daughter", "brother",
             "sister", "love", "hate", "night", "day", "sun", "moon", "sword", "blood", "death", "life", "heaven",
             "hell", "god", "one", "two", "three", "four", "thou", "thee", "you", "he", "she", "good", "bad"]
    xy = rng.normal(size=(len(words), 2)) * [1.0, 0.6]
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.scatter(*xy.T, s=10)
    ax.margins(0.12)
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    # 对照：朴素地把标签放在点的右上方，这组点上确实会互相压住（否则这个测试证明不了什么）
    naive = [ax.annotate(w, p, fontsize=9) for w, p in zip(words, xy)]
    assert _overlaps([t.get_window_extent(renderer) for t in naive])
    for t in naive:
        t.remove()
    boxes = w2v.place_labels(ax, xy, words)
    assert len(boxes) == len(words) and not _overlaps(boxes)
    # 每个标签都在坐标轴里（没有被挤出图外）
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    plt.close(fig)


# ----------------------------------------------------------------------------- 第 10 讲
def test_lecture10_linear_baseline_is_the_bar_the_cnn_must_clear():
    m = load_script(REPO_ROOT / "archive" / "liu2_lecture" / "lecture10_basic_cnn.py")
    train_set, test_set, name = m.load_data()
    if not name.startswith("sklearn digits"):
        pytest.skip("装了 MNIST 时基线不同")
    acc = m.linear_baseline(train_set, test_set)
    assert 0.95 < acc < 0.98  # 文档字符串里写的 0.967：CNN 的 0.987 要和它比
    assert acc == pytest.approx(0.967, abs=0.002)


# ----------------------------------------------------------------------------- 第 13 天
def test_day13_finite_difference_error_in_float32_is_about_1e_minus_2():
    day = load_script(REPO_ROOT / "archive" / "28days_challenges" / "day13_custom_autograd_function.py")
    err32 = day.finite_difference_error(torch.float32)
    err64 = day.finite_difference_error(torch.float64)
    # ε_mach·|f|/ε：float32 约 6e-8/1e-6 = 6e-2 的量级（中位数 ~1e-2），远超 gradcheck 的 atol=1e-5
    assert 3e-3 < err32.median().item() < 3e-2 and err32.max().item() > 1e-2
    # float64：1.1e-16/1e-6 ≈ 1e-10
    assert err64.max().item() < 1e-9
