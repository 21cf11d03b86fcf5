"""分词器命令行背后的函数 API（train_tokenizer / encode_corpus）与每个参数的中文帮助。"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from data_pipeline.tokenization import Tokenizer
from data_pipeline.tokenization.__main__ import InputError, build_parser, encode_corpus, main, train_tokenizer

TEXT = "".join(f"line {k}: to be, or not to be, that is the question 生存还是毁灭\n" for k in range(300))


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_functions_write_what_the_cli_writes(tmp_path, src):
    out = train_tokenizer(src, tmp_path / "fn", vocab_size=300, processes=1, progress=False)
    assert out == tmp_path / "fn"
    meta = encode_corpus(out, src, out, val_fraction=0.2, progress=False)
    assert meta == json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["vocab_size"] == 300 and meta["bytes"] == src.stat().st_size

    cli = tmp_path / "cli"
    main(["train", "--input", str(src), "--vocab-size", "300", "--out", str(cli), "--processes", "1"])
    main(["encode", "--input", str(src), "--tokenizer", str(cli), "--out", str(cli), "--val-fraction", "0.2"])
    for name in ("bpe.json", "tokenizer.json", "train.bin", "val.bin"):
        assert (out / name).read_bytes() == (cli / name).read_bytes(), name
    tok = Tokenizer.load(out / "bpe.json")
    ids = np.concatenate([np.fromfile(out / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")])
    assert tok.decode(ids.tolist()) == TEXT


def test_bad_input_is_an_input_error_in_code_and_a_one_line_exit_on_the_cli(tmp_path, src):
    with pytest.raises(InputError, match="找不到分词器"):
        encode_corpus(tmp_path / "none", src, tmp_path)
    assert issubclass(InputError, ValueError)
    train_tokenizer(src, tmp_path, vocab_size=260, processes=1, progress=False)
    with pytest.raises(InputError, match=r"--val-fraction=1\.5 必须在开区间"):
        encode_corpus(tmp_path, src, tmp_path, val_fraction=1.5)
    with pytest.raises(InputError, match="--input 文件不存在"):
        encode_corpus(tmp_path, tmp_path / "missing.txt", tmp_path)
    with pytest.raises(InputError, match="未知的预分词正则 'gpt5'"):
        train_tokenizer(src, tmp_path, pattern="gpt5")
    # 命令行：同样的信息，SystemExit 退出，不是 traceback
    with pytest.raises(SystemExit, match="--input 文件不存在"):
        main(["train", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="必须在开区间"):
        main(["encode", "--input", str(src), "--tokenizer", str(tmp_path), "--out", str(tmp_path),
              "--val-fraction", "0"])


def option_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((name, a) for a in sub._actions if a.option_strings)
        elif action.option_strings:
            yield "", action


def test_every_flag_has_chinese_help():
    actions = list(option_actions(build_parser()))
    flags = {(cmd, s) for cmd, a in actions for s in a.option_strings}
    for cmd, flag in [("train", "--vocab-size"), ("train", "--special-tokens"), ("train", "--pattern"),
                      ("train", "--processes"), ("encode", "--tokenizer"), ("encode", "--val-fraction"),
                      ("encode", "--out"), ("train", "--corpus"), ("", "--help")]:
        assert (cmd, flag) in flags
    for cmd, action in actions:
        assert action.help and action.help != argparse.SUPPRESS, (cmd, action.option_strings)
        assert re.search(r"[\u4e00-\u9fff]", action.help), (cmd, action.option_strings, action.help)
