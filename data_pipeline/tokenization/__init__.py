"""data_pipeline.tokenization：从零实现的字节级 BPE，与 tiktoken / Hugging Face tokenizers 逐 id 一致。

    from data_pipeline.tokenization import train_bpe, Tokenizer
    vocab, merges = train_bpe("data/corpora/shakespeare.txt", 8192, ["<|endoftext|>"])
    tok = Tokenizer(vocab, merges, ["<|endoftext|>"])

课程顺序（每课多一个想法，都能从仓库根目录直接运行）：
1. basic.py       —— 原始字节上的朴素 BPE（为什么用字节）
2. regex_bpe.py   —— GPT-2 / GPT-4 正则预分词、特殊 token，朴素参考训练器 train_bpe_naive
3. fast_train.py  —— 快速训练器 train_bpe：并行预分词、增量 pair 计数、惰性删除堆
   tokenizer.py   —— Tokenizer：编码 / 解码 / 流式编码 / 保存加载 / 导出 tiktoken 与 HF
   __main__.py    —— 命令行：python -m data_pipeline.tokenization train|encode

名字按需导入（PEP 562 的模块级 __getattr__，见 utils/lazy.py）：`import data_pipeline.tokenization` 本身不加载任何子模块，
`python -m data_pipeline.tokenization.fast_train` 这样运行一课时也不会出现"模块已被导入"的警告。
"""

from __future__ import annotations

from utils.lazy import lazy_exports

_EXPORTS = {
    "train_bpe": "fast_train",
    "train_bpe_naive": "regex_bpe",
    "GPT2_PATTERN": "regex_bpe",
    "GPT4_PATTERN": "regex_bpe",
    "Tokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, relative=True)
