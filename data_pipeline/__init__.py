"""data_pipeline：语料（corpora.py）、清洗（cleaning/）与分词（tokenization/）。

本文件不做任何导入，保证 `import data_pipeline` 很便宜；请直接导入子模块，例如
`from data_pipeline.corpora import load_corpus`。
"""
