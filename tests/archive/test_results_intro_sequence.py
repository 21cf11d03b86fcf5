"""入门序列（RNN → char LSTM → word2vec → 注意力 → seq2seq → 因果 LM → Let's build GPT）的"结果说明"：

- 每课打印的指标旁边的基线是对同一份数据现算的：这里用独立的暴力计数（Python 循环）重算并比较；
- 打印的那一行同时带着基线和默认配置的实测范围；
- 图的坐标轴有标签，横轴从该从的地方开始（t = 1 / step 1 / 更新次数 0）；
- 文档里学习者会依赖的数值说法：RNN/LSTM 梯度每步衰减的倍数、float32 正弦位置编码的误差量级
  （默认配置下恒等式必须用 float64 检查）、GPT 式小初始化的初始损失 ≈ ln V、默认语料的三条基线 4.26/3.30/2.49。
"""

from __future__ import annotations

import math
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from tests.conftest import load_script
from utils.torch_playground import setup_seed

INTRO = "archive/Introductory learning"
rnn = load_script(f"{INTRO}/03_Transformer/01_rnn_lstm_gru.py")
lm = load_script(f"{INTRO}/03_Transformer/02_char_lstm_lm.py")
att = load_script(f"{INTRO}/03_Transformer/04_attention_mechanisms.py")
s2s = load_script(f"{INTRO}/03_Transformer/05_transformer_seq2seq.py")
llm = load_script(f"{INTRO}/04_LLMs/01_causal_lm_and_sampling.py")
lbg = load_script("archive/Let's_build_GPT/let's_build_gpt.py")


def brute_force_char_baselines(train: list[int], pairs: list[tuple[int, int]], V: int) -> dict[str, float]:
    """Laplace 平滑的 unigram / bigram 在 (前一个, 目标) 对上的平均 NLL，用 Counter 与循环算。"""
    uni = Counter(train)
    big = Counter(zip(train[:-1], train[1:]))
    row = Counter(train[:-1])
    nll_uni = [-math.log((uni[b] + 1) / (len(train) + V)) for _, b in pairs]
    nll_big = [-math.log((big[(a, b)] + 1) / (row[a] + V)) for a, b in pairs]
    return {"uniform": math.log(V), "unigram": sum(nll_uni) / len(nll_uni), "bigram": sum(nll_big) / len(nll_big)}


def markov_ids(n: int, V: int, seed: int) -> torch.Tensor:
    """一条有一阶结构的 token 序列（下一个多半是 上一个 + 1），让 bigram 明显好于 unigram。"""
    g = torch.Generator().manual_seed(seed)
    ids = [0]
    for r in torch.rand(n - 1, generator=g).tolist():
        ids.append((ids[-1] + 1) % V if r < 0.7 else int(r * 1000) % V)
    return torch.tensor(ids)


def close(fig) -> None:
    plt.close(fig)


# ----------------------------------------------------------------------------- 01 RNN / LSTM / GRU
def test_rnn_per_step_factor_is_the_geometric_mean_decay():
    g = 0.7 ** torch.arange(9, -1, -1, dtype=torch.float64)  # ‖∂L/∂x_t‖ = 0.7^(T−t)：每往回一步乘 0.7
    assert rnn.per_step_factor(g) == pytest.approx(0.7, rel=1e-12)
    with pytest.raises(ValueError, match="2 个时间步"):
        rnn.per_step_factor(torch.ones(1))


def test_rnn_gradient_decay_matches_the_docstring_numbers():
    # 文档：T=50 时每步 ×0.48（RNN）、×0.65（LSTM）、×0.975（遗忘门偏置 3），比值 1.5e−16 / 5e−10 / 0.29
    setup_seed()
    flows = {mode: rnn.gradient_flow(mode, 50) for mode in ("rnn_tanh", "gru", "lstm")}
    flows["lstm_b3"] = rnn.gradient_flow("lstm", 50, forget_bias=3.0)
    factor = {k: rnn.per_step_factor(g) for k, g in flows.items()}
    assert factor["rnn_tanh"] == pytest.approx(0.48, abs=0.01)
    assert factor["lstm"] == pytest.approx(0.65, abs=0.01)
    assert factor["lstm_b3"] == pytest.approx(0.975, abs=0.005)
    ratio_b3 = (flows["lstm_b3"][0] / flows["lstm_b3"][-1]).item()
    assert 0.2 < ratio_b3 < 0.4 and ratio_b3 > 3 * torch.sigmoid(torch.tensor(3.0)).item() ** 49  # 比 f^(T−1) 慢


def test_rnn_gradient_flow_figure_starts_at_t_1_with_labelled_axes():
    g = torch.linspace(0.1, 1.0, 7)
    fig = rnn.plot_gradient_flow({"a": g, "b": g * 2})
    ax = fig.axes[0]
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [1, 1]
    assert list(ax.get_lines()[0].get_xdata())[-1] == 7
    assert ax.get_xlabel().startswith("time step t") and "dL/dx_t" in ax.get_ylabel() and ax.get_yscale() == "log"
    close(fig)


# ----------------------------------------------------------------------------- 02 char LSTM LM
def test_char_lstm_baselines_match_brute_force_on_the_evaluated_targets():
    ids = markov_ids(3000, 9, seed=0)
    train, val_streams = ids[:2400], lm.batchify(ids[2400:], 4)
    ours = lm.char_baselines(train, val_streams, 9)
    pairs = [(a, b) for row in val_streams.tolist() for a, b in zip(row[:-1], row[1:])]  # evaluate() 的目标
    ref = brute_force_char_baselines(train.tolist(), pairs, 9)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], rel=1e-12), key
    assert ours["bigram"] < ours["unigram"] - 0.5


def test_char_lstm_split_streams_matches_train():
    text = "to be or not to be " * 200
    cfg = lm.Config(batch_size=4, bptt=8, max_chars=3000)
    vocab, train, train_streams, val_streams = lm.split_streams(text, cfg)
    assert train.numel() == 2700 and vocab.decode(train[:5]) == "to be"
    assert torch.equal(train_streams.reshape(-1), train[: train_streams.numel()])
    assert val_streams.shape == (4, 300 // 4)


def test_char_lstm_report_line_shows_baselines_and_measured_range():
    base = {"uniform": 4.26, "unigram": 3.30, "bigram": 2.47}
    line = lm.report_line(1.5, base, smoke=False)
    lo, hi = lm.DEFAULT_RUN_VAL_NLL
    assert "均匀 ln V 4.26" in line and "unigram 3.30" in line and "bigram 2.47" in line
    assert f"默认配置实测 {lo:.2f}–{hi:.2f}" in line and 1.0 < lo <= hi < base["bigram"]
    assert "SMOKE" in lm.report_line(3.5, base, smoke=True)


def test_char_lstm_loss_figure_has_both_baselines_and_labels():
    fig = lm.plot_history([(10, 3.0, 2.9), (20, 2.5, 2.4), (30, 2.2, 2.1)], {"unigram": 3.3, "bigram": 2.5})
    ax = fig.axes[0]
    assert ax.get_xlabel() and "nat / char" in ax.get_ylabel()
    ys = sorted(line.get_ydata()[0] for line in ax.get_lines() if len(line.get_ydata()) == 2)  # axhline
    assert ys == [2.5, 3.3]
    close(fig)


# ----------------------------------------------------------------------------- 04 attention
def test_attention_default_size_pe_identities_need_float64():
    # 默认配置（T=128, d=64）曾经以 float32 检查恒等式，误差 1.6e−5 超过 1e−5 的断言而崩溃
    T, d = 128, 64
    pe64 = att.sinusoidal_positional_encoding(T, d, dtype=torch.float64)
    assert max(att.pe_identity_errors(pe64)) < 1e-10
    pe32 = att.sinusoidal_positional_encoding(T, d)
    assert pe32.dtype == torch.float32
    err32 = (pe32.double() - pe64).abs().max().item()
    assert 2.0**-24 < err32 <= 2 * T * 2.0**-24  # 角度 p·ω 的舍入误差 ~p·2^−24
    assert max(att.pe_identity_errors(pe32.double())) > 1e-5


def test_attention_lowest_frequency_is_base_to_the_minus_d_minus_2_over_d():
    d = 64
    pe = att.sinusoidal_positional_encoding(2, d, dtype=torch.float64)
    omega_last = math.atan2(pe[1, d - 2].item(), pe[1, d - 1].item())  # PE[1] = (sin ω, cos ω)
    assert omega_last == pytest.approx(10000.0 ** (-(d - 2) / d), rel=1e-9)
    assert 1 / omega_last == pytest.approx(7499, abs=1)  # 不是 1/base = 1/10000


def test_attention_scaled_softmax_is_independent_of_d():
    g = torch.Generator().manual_seed(0)
    peaks = {}
    for dim in (16, 1024):
        q, k = torch.randn(256, dim, generator=g), torch.randn(256, 32, dim, generator=g)
        s = torch.einsum("nd,ntd->nt", q, k)
        assert s.var().item() == pytest.approx(dim, rel=0.1)  # Var(q·k) = d
        peaks[dim] = (s.softmax(-1).max(-1).values.mean().item(),
                      (s / math.sqrt(dim)).softmax(-1).max(-1).values.mean().item())
    assert peaks[1024][0] > 0.9 > peaks[16][0] > 1 / 32  # 不缩放：d 越大越接近 one-hot
    assert peaks[1024][1] == pytest.approx(peaks[16][1], abs=0.02)  # 缩放后与 d 无关


def test_attention_pe_figure_labels_and_legend_position():
    fig = att.plot_positional_encoding(att.sinusoidal_positional_encoding(32, 16, dtype=torch.float64))
    heat, curve, cbar = fig.axes  # colorbar 的坐标轴最后加进来
    assert heat.get_xlabel().startswith("position p") and heat.get_ylabel().startswith("dimension index")
    assert cbar.get_ylabel() == "PE value"
    assert curve.get_xlabel().startswith("position q") and curve.get_ylabel() == "PE[16] . PE[q]"
    assert curve.get_lines()[0].get_xdata()[0] == 0  # 位置从 0 编号，与公式 PE[p] 一致
    close(fig)


# ----------------------------------------------------------------------------- 05 seq2seq reversal
def test_seq2seq_baselines_match_brute_force():
    src, _, tgt_out = s2s.make_batch(400, 1, 12, torch.Generator().manual_seed(3))
    base = s2s.reversal_baselines(src, tgt_out)
    lengths, copy_hits, copy_exact, digits = [], 0, 0, 0
    for s, t in zip(src.tolist(), tgt_out.tolist()):
        L = s.index(s2s.EOS)
        seq = s[:L]
        assert t[:L] == seq[::-1]
        lengths.append(L)
        copy_hits += sum(seq[i] == seq[L - 1 - i] for i in range(L))
        copy_exact += seq == seq[::-1]
        digits += L
    assert base["chance"]["digit_acc"] == 0.1
    assert base["chance"]["exact"] == pytest.approx(sum(10.0**-L for L in lengths) / len(lengths), rel=1e-9)
    assert base["copy"]["digit_acc"] == pytest.approx(copy_hits / digits, rel=1e-12)
    assert base["copy"]["exact"] == pytest.approx(copy_exact / len(lengths), rel=1e-12)
    perfect = s2s.score_predictions(tgt_out, tgt_out)
    assert perfect == {"exact": 1.0, "digit_acc": 1.0}


def test_seq2seq_score_ignores_tokens_after_eos_but_not_a_wrong_eos():
    tgt = torch.tensor([[5, 4, s2s.EOS, s2s.PAD], [6, 7, 8, s2s.EOS]])
    pred = torch.tensor([[5, 4, s2s.EOS, 9], [6, 7, s2s.EOS, s2s.PAD]])
    score = s2s.score_predictions(pred, tgt)
    assert score["exact"] == 0.5 and score["digit_acc"] == pytest.approx(4 / 5)


def test_seq2seq_target_unigram_entropy_matches_the_closed_form():
    cfg = s2s.Config()
    mean_len = (cfg.min_len + cfg.max_len) / 2
    p_eos = 1 / (mean_len + 1)
    p_digit = (1 - p_eos) / 10
    closed = -(p_eos * math.log(p_eos) + 10 * p_digit * math.log(p_digit))  # ≈ 2.39
    assert s2s.target_unigram_entropy(cfg) == pytest.approx(closed, abs=0.01)
    assert closed < math.log(cfg.vocab_size)


def test_seq2seq_report_shows_baselines_and_measured_ranges():
    scores = {"exact": 0.995, "digit_acc": 0.999}
    base = {"chance": {"exact": 0.0093, "digit_acc": 0.1}, "copy": {"exact": 0.102, "digit_acc": 0.169}}
    loss_base = {"vocab": 13, "uniform": math.log(13), "unigram": 2.39}
    lines = s2s.report_lines(scores, base, (100, 0.004), loss_base, 2000, smoke=False)
    assert "整句精确匹配 99.50%（瞎猜 0.93%，照抄不反转 10.20%；默认配置实测" in lines[0]
    assert "数字位准确率 99.90%（瞎猜 10.00%，照抄不反转 16.90%；默认配置实测" in lines[1]
    assert "最后 100 步的平均训练损失 4.0e-03" in lines[2] and "ln 13 = 2.56" in lines[2] and "unigram 2.39" in lines[2]
    lo, hi = s2s.DEFAULT_RUN["exact"]
    assert 0.99 <= lo <= hi <= 1.0 and f"默认配置实测 {s2s.format_range(lo, hi, '.1%')}）" in lines[0]
    assert s2s.format_range(1.0, 1.0, ".1%") == "100.0%" and s2s.format_range(0.99, 1.0, ".1%") == "99.0%–100.0%"
    assert all("SMOKE" in line for line in s2s.report_lines(scores, base, (20, 2.5), loss_base, 200, smoke=True))


def test_seq2seq_figure_axes():
    history = [(step, 2.5 / step) for step in range(1, 51)]
    fig = s2s.plot_training(history, {"vocab": 13, "uniform": 2.56, "unigram": 2.39}, 0.5, torch.rand(6, 7))
    loss_ax, attn_ax = fig.axes[:2]
    assert loss_ax.get_lines()[0].get_xdata()[0] == 1  # 第 1 步的损失 = 初始化时的模型
    assert "nat / token" in loss_ax.get_ylabel() and loss_ax.get_xlabel().startswith("training step")
    assert attn_ax.get_xlabel().startswith("source position") and attn_ax.get_ylabel() == "target position"
    assert fig.axes[2].get_ylabel() == "attention weight"
    close(fig)


# ----------------------------------------------------------------------------- 04_LLMs causal LM
def test_causal_lm_baselines_match_brute_force_on_the_evaluated_windows():
    ids = markov_ids(2000, 11, seed=1)
    train, val = ids[:1600], ids[1600:]
    windows = llm.eval_windows(val, 16, 10)
    assert windows.shape == (10, 16) and torch.equal(windows.reshape(-1), val[:160])
    ours = llm.char_baselines(train, windows, 11)
    pairs = [(a, b) for row in windows.tolist() for a, b in zip(row[:-1], row[1:])]  # 每个窗口第 2..T 个字符
    ref = brute_force_char_baselines(train.tolist(), pairs, 11)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], rel=1e-12), key


def test_causal_lm_uniform_baseline_equals_the_loss_of_all_zero_logits():
    windows = markov_ids(200, 7, seed=2)[:192].view(12, 16)
    base = llm.char_baselines(torch.arange(7), windows, 7)
    assert llm.causal_lm_loss(torch.zeros(12, 16, 7), windows).item() == pytest.approx(base["uniform"], rel=1e-6)


def test_causal_lm_small_init_starts_at_ln_v_and_unit_init_far_above():
    # 注释：GPT-2 的 N(0, 0.02²) 让初始损失 ≈ ln V；nn.Embedding 默认的 N(0, 1) 共享给 lm_head 后远大于 ln V
    torch.manual_seed(0)
    V, cfg = 65, llm.Config()
    x = torch.randint(V, (4, cfg.block_size))
    model = llm.TinyCausalLM(V, cfg).eval()
    with torch.no_grad():
        small = llm.causal_lm_loss(model(x), x).item()
        torch.nn.init.normal_(model.wte.weight, std=1.0)
        unit = llm.causal_lm_loss(model(x), x).item()
    assert small == pytest.approx(math.log(V), abs=0.05)
    assert unit > math.log(V) + 3


def test_causal_lm_report_shows_baselines_and_measured_range():
    base = {"uniform": 4.17, "unigram": 3.31, "bigram": 2.47}
    line = llm.nll_report(1.9, base, smoke=False)
    lo, hi = llm.DEFAULT_RUN["val_nll"]
    assert "验证 NLL 1.900 nat/char，PPL 6.69（均匀 ln V 4.17，unigram 3.31，bigram 2.47；" in line
    assert f"默认配置实测 {lo:.2f}–{hi:.2f}" in line and 1.0 < lo <= hi < base["bigram"]
    assert set(llm.DEFAULT_RUN["distinct"]) == set(llm.SAMPLING_SETTINGS)
    assert "SMOKE" in llm.nll_report(3.0, base, smoke=True)


def test_causal_lm_sampling_figure_labels_every_panel():
    chars = [chr(ord("a") + i) for i in range(26)]
    fig = llm.plot_sampling_distributions(torch.randn(26), chars)
    assert len(fig.axes) == 4
    assert all(ax.get_xlabel().startswith("next character") for ax in fig.axes)
    assert fig.axes[0].get_ylabel() == "next-char probability"
    close(fig)


# ----------------------------------------------------------------------------- Let's build GPT
def test_lets_build_gpt_docstring_baselines_on_the_default_corpus():
    from data_pipeline.corpora import load_corpus

    text = load_corpus("shakespeare")
    tok = lbg.CharTokenizer(text)
    train, val = lbg.split_train_val(tok.encode(text), 8)
    base = lbg.char_baselines(train, val, tok.vocab_size)
    assert tok.vocab_size == 71 and len(text) == pytest.approx(4.8e6, rel=0.01)
    assert (round(base["uniform"], 2), round(base["unigram"], 2), round(base["bigram"], 2)) == (4.26, 3.30, 2.49)


def test_lets_build_gpt_loss_figure_axes_start_before_training():
    history = {"step": list(range(20)), "step_loss": [4.2 - 0.1 * i for i in range(20)],
               "eval_step": [0, 10, 20], "train": [4.2, 3.0, 2.5], "val": [4.2, 3.1, 2.6]}
    fig = lbg.loss_figure(history, "t")
    ax = fig.axes[0]
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [0, 0, 0]  # 0 = 训练前的模型
    assert ax.get_lines()[1].get_xdata()[-1] == 20  # 最后一次评估在 max_iters 次更新之后
    assert ax.get_xlabel().startswith("iteration") and "nats / char" in ax.get_ylabel()
    close(fig)


def test_lets_build_gpt_plot_losses_writes_the_same_file_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_CHECKPOINTS_DIR", str(tmp_path))
    history = {"step": [0, 1], "step_loss": [4.0, 3.9], "eval_step": [0, 2], "train": [4.0, 3.8], "val": [4.0, 3.9]}
    path = lbg.plot_losses(history, "t")
    assert path == tmp_path / "lets_build_gpt" / "loss.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert not list(path.parent.glob("*.tmp"))
